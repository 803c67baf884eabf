//! `GET /v1/map`: the long-lived netmap stream. The mesh thread pushes lines into a bounded
//! channel; the body yields them, and a keepalive line when nothing was sent for the configured
//! interval (25 s by default, at most 30 s). When the body is dropped (client gone, server
//! closed it) the mesh thread is told, so the node goes offline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::{Api, Body};
use crate::error::ApiError;
use crate::mesh::StreamId;
use crate::service::{Command, Handle, STREAM_QUEUE};

const KEEPALIVE_LINE: &[u8] = b"{\"type\":\"keepalive\"}\n";

pub(super) async fn open(
    api: &Api,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, _body) = req.into_parts();
    let pq = super::path_and_query(&parts);
    if let Some(q) = parts.uri.query() {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("version=") {
                match v.parse::<u32>() {
                    Ok(proto::PROTOCOL_VERSION) => {}
                    Ok(v) => return Err(ApiError::UnsupportedVersion(v)),
                    Err(_) => return Err(ApiError::BadRequest("version must be a number".into())),
                }
            }
        }
    }
    let node = api.verifier.verify("GET", pq, &parts.headers, b"")?;
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let key = node.key();
    let stream = api
        .handle
        .call(|reply| Command::OpenStream { key, tx, reply })
        .await?;
    debug!(%peer, stream = stream.0, node = %key.short(), "map stream opened");
    let body = MapBody {
        rx,
        keepalive: Box::pin(tokio::time::sleep(api.map_keepalive)),
        every: api.map_keepalive,
        guard: CloseGuard {
            handle: api.handle.clone(),
            stream,
        },
    };
    let mut resp = Response::new(body.boxed());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

struct CloseGuard {
    handle: Handle,
    stream: StreamId,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.handle.send(Command::CloseStream {
            stream: self.stream,
        });
    }
}

struct MapBody {
    rx: mpsc::Receiver<Bytes>,
    keepalive: Pin<Box<Sleep>>,
    every: std::time::Duration,
    #[allow(dead_code)] // held for its Drop
    guard: CloseGuard,
}

impl hyper::body::Body for MapBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(line)) => {
                let next = Instant::now() + self.every;
                self.keepalive.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(line))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.keepalive.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + self.every;
            self.keepalive.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE_LINE)))));
        }
        Poll::Pending
    }
}
