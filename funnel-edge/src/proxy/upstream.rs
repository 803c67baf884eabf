//! One request to a node: dial its funnel ingress through the [`Dialer`], name the funnel
//! (`MFUNNEL/1 NAME`), then speak HTTP/1.1 over that stream. Upgrades (WebSocket) are spliced
//! byte for byte once both sides have switched; bodies stream both ways.

use std::net::{IpAddr, SocketAddr};

use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshd::funnel::wire::{self, Parsed, MAX_LINE};
use proto::map::FUNNEL_INGRESS_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::headers::{self, Forwarding};
use super::{pages, Body, ConnInfo, Shared};
use crate::dial::Io;

const OFFLINE: &str = "The node serving this funnel is offline or not answering.";

/// Why the node could not be asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("the node spoke something other than the funnel protocol: {0}")]
    Protocol(&'static str),
    #[error("the node closed the connection during the handshake")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Names the funnel and reads the node's one-line answer. Reads byte by byte, so nothing after
/// the line is consumed: the rest of the stream is the HTTP connection.
pub(crate) async fn handshake(mut s: Box<dyn Io>, name: &str) -> Result<Box<dyn Io>, NodeError> {
    s.write_all(&wire::request(name)).await?;
    s.flush().await?;
    let mut line = Vec::with_capacity(16);
    loop {
        match wire::parse_response(&line) {
            Parsed::Done(Ok(()), _) => return Ok(s),
            Parsed::Done(Err(reason), _) => return Err(NodeError::Refused(reason)),
            Parsed::Invalid(why) => return Err(NodeError::Protocol(why)),
            Parsed::Incomplete if line.len() >= MAX_LINE => {
                return Err(NodeError::Protocol("answer line too long"))
            }
            Parsed::Incomplete => {}
        }
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(NodeError::Closed);
        }
        line.push(b[0]);
    }
}

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
    let addr = SocketAddr::new(node_ip, FUNNEL_INGRESS_PORT);
    let stream = match timeout(opts.dial_timeout, shared.dialer.dial(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(funnel = %name, %addr, "dialing the node: {e}");
            return pages::bad_gateway(OFFLINE);
        }
        Err(_) => {
            debug!(funnel = %name, %addr, "dialing the node timed out");
            return pages::bad_gateway(OFFLINE);
        }
    };
    let stream = match timeout(opts.node_handshake_timeout, handshake(stream, name)).await {
        Ok(Ok(s)) => s,
        Ok(Err(NodeError::Refused(reason))) => {
            debug!(funnel = %name, "node refused: {reason}");
            return pages::bad_gateway(&format!("The node refused this funnel: {reason}"));
        }
        Ok(Err(e)) => {
            debug!(funnel = %name, "funnel handshake: {e}");
            return pages::bad_gateway(OFFLINE);
        }
        Err(_) => return pages::bad_gateway(OFFLINE),
    };

    let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
        .max_buf_size(opts.max_header_bytes.max(8192))
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            debug!(funnel = %name, "HTTP/1.1 handshake with the node: {e}");
            return pages::bad_gateway(OFFLINE);
        }
    };
    let funnel = name.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(%funnel, "connection to the node: {e}");
        }
    });

    let upgrade = headers::is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::rewrite_request_headers(
        &mut parts.headers,
        &Forwarding {
            client_ip: conn.peer.ip(),
            host,
            funnel: name,
            upgrade,
        },
    );
    parts.version = Version::HTTP_11;
    parts.uri = origin_form(&parts.uri);
    let upstream_req = Request::from_parts(parts, body);

    let mut resp = match timeout(opts.response_timeout, sender.send_request(upstream_req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(funnel = %name, "request to the node: {e}");
            return pages::bad_gateway(
                "The service behind this funnel closed the connection without answering.",
            );
        }
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

/// `/path?query` of a request target (the client may have sent an absolute URI, and HTTP/2
/// always carries one).
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .and_then(|pq| Uri::try_from(pq.as_str()).ok())
        .unwrap_or_else(|| Uri::from_static("/"))
}
