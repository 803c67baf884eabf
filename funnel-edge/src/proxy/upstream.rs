//! One request to a node, over a pooled connection to its funnel ingress ([`super::nodes`]), as
//! HTTP/1.1. Upgrades (WebSocket) are spliced byte for byte once both sides have switched (that
//! connection leaves the pool); bodies stream both ways.

use std::future::Future;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::timeout;
use tracing::debug;

use super::h1::{self, FetchError};
use super::headers::{self, Forwarding};
use super::nodes::{origin_form, NodeError, UpstreamError};
use super::upload::Upload;
use super::{gone_meanwhile, pages, until_gone, Body, BoxError, ConnInfo, Shared};

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
    if cut.is_none() && !upgrade {
        // No body, no upgrade: the edge's own client, in this task.
        let mut request = BytesMut::new();
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        h1::head::write_request(&parts.method, target, &parts.headers, &mut request);
        let fetch = shared.nodes.fetch(name, node_ip, &parts.method, &request);
        return match until_answered(shared, conn, name, fetch).await {
            Ok(resp) => answer(resp, false),
            Err(page) => page,
        };
    }
    let upstream_req = Request::from_parts(parts, upload);

    let request = shared.nodes.request(name, node_ip, upstream_req, cut);
    let mut resp = match until_answered(shared, conn, name, request).await {
        Ok(r) => r,
        Err(page) => return page,
    };

    // A switch nobody asked for is refused by `answer`.
    let asked = client_upgrade.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS);
    let switching = asked.is_some();
    if let Some(client_upgrade) = asked {
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
    answer(resp, switching)
}

/// Waits for the node's response head to `request` (for funnel `name`) at most the response
/// timeout, and only while the funnel stays live ([`until_gone`]); every other outcome is the
/// edge's page.
async fn until_answered<T>(
    shared: &Shared,
    conn: &ConnInfo,
    name: &str,
    request: impl Future<Output = Result<T, UpstreamError>>,
) -> Result<T, Response<Body>> {
    tokio::select! {
        biased;
        r = timeout(shared.opts.response_timeout, request) => match r {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let routes = shared.routes.borrow();
                Err(gone_meanwhile(&routes, conn, name).unwrap_or_else(|| failed(name, &e)))
            }
            Err(_) => Err(timed_out()),
        },
        page = until_gone(shared, conn, name) => Err(page),
    }
}

/// The node's response for the client: its headers rewritten, its body streamed; a `101` is
/// passed on only when `switching` (the client asked, and both sides are being spliced).
fn answer<B>(resp: Response<B>, switching: bool) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !switching {
        return pages::bad_gateway("The service switched protocols without being asked to.");
    }
    let (mut parts, body) = resp.into_parts();
    headers::rewrite_response_headers(&mut parts.headers, switching);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

fn timed_out() -> Response<Body> {
    pages::page(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway timeout",
        "The service behind this funnel did not answer in time.",
    )
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
        UpstreamError::Fetch(FetchError::Head(e)) => {
            debug!(funnel = %name, "node's answer refused: {e}");
            pages::bad_gateway(
                "The service behind this funnel answered with something that is not HTTP/1.1.",
            )
        }
        UpstreamError::Fetch(e) => {
            debug!(funnel = %name, "request to the node: {e}");
            pages::bad_gateway(
                "The service behind this funnel closed the connection without answering.",
            )
        }
        UpstreamError::Request(e) => {
            debug!(funnel = %name, "request to the node: {e}");
            pages::bad_gateway(
                "The service behind this funnel closed the connection without answering.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use http_body_util::Full;

    use super::*;

    fn switch() -> Response<Full<Bytes>> {
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[test]
    fn a_switch_nobody_asked_for_is_a_bad_gateway_and_an_asked_one_keeps_its_upgrade() {
        let refused = answer(switch(), false);
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        let passed = answer(switch(), true);
        assert_eq!(passed.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(passed.headers()["upgrade"], "websocket");
        assert_eq!(passed.headers()["connection"], "upgrade");
        let ok = answer(Response::new(Full::new(Bytes::from("x"))), false);
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
