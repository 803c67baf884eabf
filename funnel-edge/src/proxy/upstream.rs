//! One request to a node, over a pooled connection to its funnel ingress ([`super::nodes`]), as
//! HTTP/1.1. Upgrades (WebSocket) are spliced byte for byte once both sides have switched (that
//! connection leaves the pool); bodies stream both ways.

use std::net::IpAddr;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;
use tracing::debug;

use super::headers::{self, Forwarding};
use super::nodes::{origin_form, NodeError, UpstreamError};
use super::upload::Upload;
use super::{pages, Body, ConnInfo, Shared};

const OFFLINE: &str = "The node serving this funnel is offline or not answering.";

/// Forwards `req` for funnel `name` to the node at `node_ip`; every failure becomes a page.
pub(crate) async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    name: &str,
    node_ip: IpAddr,
    host: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let opts = &shared.opts;
    if !headers::dialable(node_ip) {
        tracing::warn!(funnel = %name, %node_ip, "route to a non-mesh address refused");
        return pages::bad_gateway(
            "This funnel's route points at an address the edge does not dial.",
        );
    }
    let upgrade = headers::is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::rewrite_request_headers(
        &mut parts.headers,
        &Forwarding {
            forwarded_for: &conn.forwarded_for,
            host,
            funnel: name,
            upgrade,
        },
    );
    parts.version = Version::HTTP_11;
    parts.uri = origin_form(parts.uri);
    let (upload, cut) = Upload::new(body);
    let upstream_req = Request::from_parts(parts, upload);

    let request = shared.nodes.request(name, node_ip, upstream_req, cut);
    let mut resp = match timeout(opts.response_timeout, request).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return failed(name, &e),
        Err(_) => {
            return pages::page(
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway timeout",
                "The service behind this funnel did not answer in time.",
            )
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return pages::bad_gateway("The service switched protocols without being asked to.");
        };
        let node_upgrade = hyper::upgrade::on(&mut resp);
        let funnel = name.to_owned();
        tokio::spawn(async move {
            let (client, node) = match tokio::try_join!(client_upgrade, node_upgrade) {
                Ok(v) => v,
                Err(e) => {
                    debug!(%funnel, "upgrade failed: {e}");
                    return;
                }
            };
            let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
                debug!(%funnel, "upgraded stream ended: {e}");
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    headers::rewrite_response_headers(&mut parts.headers, switching);
    Response::from_parts(parts, body.boxed())
}

/// The page for a request the node did not answer.
fn failed(name: &str, e: &UpstreamError) -> Response<Body> {
    match e {
        UpstreamError::Connect(NodeError::Refused(reason)) => {
            debug!(funnel = %name, "node refused: {reason}");
            pages::bad_gateway(&format!("The node refused this funnel: {reason}"))
        }
        UpstreamError::Connect(n) => {
            debug!(funnel = %name, "connecting to the node: {n}");
            pages::bad_gateway(OFFLINE)
        }
        UpstreamError::Request(e) => {
            debug!(funnel = %name, "request to the node: {e}");
            pages::bad_gateway(
                "The service behind this funnel closed the connection without answering.",
            )
        }
    }
}
