//! Connections to the nodes' funnel ingress, kept open and reused across requests (a reverse
//! proxy's upstream keep-alive), with hyper-util's pooling client.
//!
//! A connection is opened by dialing the node's ingress through the [`Dialer`] and naming the
//! funnel (`MFUNNEL/1 NAME`); after the node's `OK` the stream is one HTTP/1.1 connection to the
//! node's local service. The pool keys connections by URI authority, so each request is sent to
//! `http://NAME@NODE_IP:INGRESS_PORT/…` ([`upstream_uri`]): one funnel on one node never shares a
//! connection with another, and a route that moves to another node starts on new connections.
//! A node ends its streams of a funnel it closed, so nothing pooled outlives the funnel there.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshd::funnel::wire::{self, Parsed, MAX_LINE};
use proto::map::FUNNEL_INGRESS_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::ProxyOptions;
use crate::dial::{BoxFuture, Dialer, Io};

/// The pooling HTTP/1.1 client to nodes; request bodies are the clients', streamed.
pub(crate) type NodeClient = Client<Connector, Incoming>;

/// Why a connection to a node could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error("the node refused: {0}")]
    Refused(String),
    #[error("the node spoke something other than the funnel protocol: {0}")]
    Protocol(&'static str),
    #[error("the node closed the connection during the handshake")]
    Closed,
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("not a funnel target: {0}")]
    Target(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl NodeError {
    /// The connector's error inside a client error, if opening the connection is what failed.
    pub(crate) fn of(e: &hyper_util::client::legacy::Error) -> Option<&NodeError> {
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        while let Some(s) = source {
            if let Some(n) = s.downcast_ref::<NodeError>() {
                return Some(n);
            }
            source = s.source();
        }
        None
    }
}

pub(crate) fn client(dialer: Arc<dyn Dialer>, opts: &ProxyOptions) -> NodeClient {
    let connector = Connector {
        dialer,
        dial_timeout: opts.dial_timeout,
        handshake_timeout: opts.node_handshake_timeout,
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(opts.upstream_idle_timeout)
        .pool_max_idle_per_host(opts.upstream_max_idle)
        // The request keeps the Host header the proxy set.
        .set_host(false)
        .http1_max_buf_size(opts.max_header_bytes.max(8192))
        .build(connector)
}

/// The URI that sends a request to funnel `name` on the node at `node_ip`.
pub(crate) fn upstream_uri(name: &str, node_ip: IpAddr, original: &Uri) -> Result<Uri, NodeError> {
    let path = original
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    Uri::builder()
        .scheme("http")
        // A socket address prints an IPv6 host in brackets, as an authority needs.
        .authority(format!(
            "{name}@{}",
            SocketAddr::new(node_ip, FUNNEL_INGRESS_PORT)
        ))
        .path_and_query(path)
        .build()
        .map_err(|e| NodeError::Target(e.to_string()))
}

/// The funnel name and ingress address an [`upstream_uri`] names; nothing else is dialed.
fn target(uri: &Uri) -> Result<(String, SocketAddr), NodeError> {
    let bad = || NodeError::Target(uri.to_string());
    let auth = uri.authority().ok_or_else(bad)?;
    let (name, _) = auth.as_str().split_once('@').ok_or_else(bad)?;
    let host = auth.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().map_err(|_| bad())?;
    if name.is_empty() || auth.port_u16() != Some(FUNNEL_INGRESS_PORT) {
        return Err(bad());
    }
    Ok((name.to_owned(), SocketAddr::new(ip, FUNNEL_INGRESS_PORT)))
}

/// Opens connections for the pool: dial, then the funnel handshake, each with its time limit.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    dialer: Arc<dyn Dialer>,
    dial_timeout: Duration,
    handshake_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = NodeConn;
    type Error = NodeError;
    type Future = BoxFuture<'static, Result<NodeConn, NodeError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NodeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (name, addr) = target(&dst)?;
            let s = timeout(this.dial_timeout, this.dialer.dial(addr))
                .await
                .map_err(|_| NodeError::Timeout("dialing the node"))??;
            let s = timeout(this.handshake_timeout, handshake(s, &name))
                .await
                .map_err(|_| NodeError::Timeout("the funnel handshake"))??;
            Ok(NodeConn(TokioIo::new(s)))
        })
    }
}

/// Names the funnel and reads the node's one-line answer. Reads byte by byte, so nothing after
/// the line is consumed: the rest of the stream is the HTTP connection.
async fn handshake(mut s: Box<dyn Io>, name: &str) -> Result<Box<dyn Io>, NodeError> {
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

/// An open, named stream to a node, as the pool holds it.
pub(crate) struct NodeConn(TokioIo<Box<dyn Io>>);

impl Connection for NodeConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for NodeConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for NodeConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_uris_name_the_funnel_and_the_ingress_only() {
        let orig: Uri = "https://demo.funnel.example/a/b?c=d".parse().unwrap();
        for (ip, want) in [
            ("100.64.0.2", "http://demo@100.64.0.2:41642/a/b?c=d"),
            ("fd00::2", "http://demo@[fd00::2]:41642/a/b?c=d"),
        ] {
            let uri = upstream_uri("demo", ip.parse().unwrap(), &orig).unwrap();
            assert_eq!(uri.to_string(), want);
            let (name, addr) = target(&uri).unwrap();
            assert_eq!(name, "demo");
            assert_eq!(
                addr,
                SocketAddr::new(ip.parse().unwrap(), FUNNEL_INGRESS_PORT)
            );
        }
        let star: Uri = "*".parse().unwrap();
        let uri = upstream_uri("demo", "100.64.0.2".parse().unwrap(), &star).unwrap();
        assert_eq!(uri.path(), "/");
    }

    #[test]
    fn other_targets_are_refused() {
        for bad in [
            "http://100.64.0.2:41642/",
            "http://@100.64.0.2:41642/",
            "http://demo@100.64.0.2:22/",
            "http://demo@100.64.0.2/",
            "http://demo@node.example:41642/",
        ] {
            let uri: Uri = bad.parse().unwrap();
            assert!(matches!(target(&uri), Err(NodeError::Target(_))), "{bad}");
        }
    }
}
