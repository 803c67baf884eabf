//! Connections to the nodes' funnel ingress, kept open and reused across requests (a reverse
//! proxy's upstream keep-alive).
//!
//! A connection is opened by dialing the node's ingress through the [`Dialer`] and naming the
//! funnel (`MFUNNEL/1 NAME`); after the node's `OK` the stream is one HTTP/1.1 connection to the
//! node's local service, driven by a task of its own. Idle connections are kept per funnel name
//! and node address: one funnel on one node never shares a connection with another, and a route
//! that moves to another node starts on new connections. A node ends its streams of a funnel it
//! closed, so nothing pooled outlives the funnel there.
//!
//! A request without a body (and no upgrade) is written and answered in the requesting task on a
//! connection of the edge's own HTTP/1.1 client ([`super::h1`]); the others go through hyper's.
//! Each kind is kept in a list of its own.
//!
//! A connection goes back to the pool once its response body has been read to the end; a
//! response dropped before that, or one that switched protocols, takes its connection with it.
//! So does a request whose body was still being sent when its response ended ([`Cut`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use meshd::funnel::wire::{self, Parsed, MAX_LINE};
use proto::map::FUNNEL_INGRESS_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::debug;

use super::h1::{self, FetchError, Fetched};
use super::idle::{self, IdleList};
use super::upload::{Cut, Upload};
use super::ProxyOptions;
use crate::dial::{Dialer, Io};
use crate::routes::RouteTable;

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
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a request to a node got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to the node: {0}")]
    Connect(#[from] NodeError),
    #[error("request to the node: {0}")]
    Request(#[from] hyper::Error),
    #[error("request to the node: {0}")]
    Fetch(#[from] FetchError),
}

/// The HTTP/1.1 connections to nodes; request bodies are the clients', streamed.
pub(crate) struct NodePool {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Arc<dyn Dialer>,
    dial_timeout: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    max_buf: usize,
    idle: Mutex<IdleConns>,
}

/// Idle connections by node address, then funnel name.
type IdleConns = HashMap<IpAddr, HashMap<Box<str>, Idle>>;

/// The idle connections of one funnel on one node: hyper's, and the edge's own.
#[derive(Debug, Default)]
struct Idle {
    sends: IdleList<SendRequest<Upload>>,
    conns: IdleList<h1::Conn>,
}

impl Idle {
    fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.conns.is_empty()
    }
}

/// Where a response body returns its connection once read.
pub(crate) type Keep = Box<dyn FnOnce(h1::Conn) + Send>;

impl idle::Conn for SendRequest<Upload> {
    fn is_closed(&mut self) -> bool {
        SendRequest::is_closed(self)
    }
    fn is_ready(&self) -> bool {
        SendRequest::is_ready(self)
    }
}

/// A kind of connection the pool keeps, in a list of its own per funnel and node.
trait Pooled: idle::Conn + Sized {
    fn list(idle: &mut Idle) -> &mut IdleList<Self>;
}

impl Pooled for SendRequest<Upload> {
    fn list(idle: &mut Idle) -> &mut IdleList<Self> {
        &mut idle.sends
    }
}

impl idle::Conn for h1::Conn {
    // No task watches an idle connection of the edge's own: a read that does not wait tells
    // whether the node closed it (or sent something unasked).
    fn is_closed(&mut self) -> bool {
        !self.is_usable()
    }
    fn is_ready(&self) -> bool {
        true
    }
}

impl Pooled for h1::Conn {
    fn list(idle: &mut Idle) -> &mut IdleList<Self> {
        &mut idle.conns
    }
}

impl std::fmt::Debug for NodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePool")
            .field("idle", &self.idle_count())
            .finish_non_exhaustive()
    }
}

impl NodePool {
    pub(crate) fn new(dialer: Arc<dyn Dialer>, opts: &ProxyOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer,
                dial_timeout: opts.dial_timeout,
                handshake_timeout: opts.node_handshake_timeout,
                idle_timeout: opts.upstream_idle_timeout,
                max_idle: opts.upstream_max_idle,
                max_buf: opts.max_header_bytes.max(8192),
                idle: Mutex::default(),
            }),
        }
    }

    /// Closes idle connections past the idle timeout every half of it, and at every change of
    /// `routes` those of funnels that are no longer live on their node, for as long as the pool
    /// exists. Call from within the runtime.
    pub(crate) fn spawn_sweeper(&self, mut routes: watch::Receiver<RouteTable>) {
        let pool: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut following = true;
            loop {
                let changed = tokio::select! {
                    _ = tick.tick() => false,
                    r = routes.changed(), if following => {
                        following = r.is_ok();
                        following
                    }
                };
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                if changed {
                    // The routes are read apart from the pool's lock: a request holds that lock
                    // only briefly and never reads the routes under it.
                    let kept = pool.kept();
                    let now = crate::unix_now();
                    let gone: Vec<_> = {
                        let table = routes.borrow_and_update();
                        let routed =
                            |(ip, name): &(IpAddr, Box<str>)| table.live(name, now) == Some(*ip);
                        kept.into_iter().filter(|k| !routed(k)).collect()
                    };
                    pool.forget(&gone);
                } else {
                    pool.sweep(Instant::now());
                }
            }
        });
    }

    /// Sends `req` (origin-form, with its Host) to funnel `name` on the node at `node_ip`, on an
    /// idle connection when there is one. A kept connection the node closed meanwhile does not
    /// fail the request when the request was not sent on it: it goes out on the next one. `cut`,
    /// the request body's, goes with the response body (or with a failure).
    pub(crate) async fn request(
        &self,
        name: &str,
        node_ip: IpAddr,
        mut req: Request<Upload>,
        cut: Option<Cut>,
    ) -> Result<Response<Leased>, UpstreamError> {
        loop {
            let (mut send, reused) = match self.inner.take(name, node_ip, Instant::now()) {
                Some(send) => (send, true),
                None => (self.inner.connect(name, node_ip).await?, false),
            };
            match send.try_send_request(req).await {
                Ok(resp) => {
                    let lease = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
                        pool: self.inner.clone(),
                        name: name.into(),
                        node_ip,
                        send,
                    });
                    return Ok(resp.map(|body| Leased { body, lease, cut }));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Sends `request`, a whole bodiless request ([`h1::head::write_request`]), to funnel `name`
    /// on the node at `node_ip` and reads the response head; the body is read as the response is
    /// polled. A kept connection the node closed meanwhile does not fail an idempotent request
    /// when nothing of an answer came on it: the request goes out on the next one.
    pub(crate) async fn fetch(
        &self,
        name: &str,
        node_ip: IpAddr,
        method: &Method,
        request: &[u8],
    ) -> Result<Response<Fetched<Keep>>, UpstreamError> {
        let to_head = *method == Method::HEAD;
        loop {
            let (mut conn, reused) = match self.inner.take(name, node_ip, Instant::now()) {
                Some(conn) => (conn, true),
                None => (h1::Conn::new(self.inner.open(name, node_ip).await?), false),
            };
            match conn.round_trip(request, to_head, self.inner.max_buf).await {
                Ok(head) => {
                    let pool = self.inner.clone();
                    let name: Box<str> = name.into();
                    let keep: Keep = Box::new(move |c| pool.put(name, node_ip, c));
                    let body = Fetched::new(conn, &head, keep);
                    let mut resp = Response::new(body);
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                Err(e) if reused && e.nothing_came() && method.is_idempotent() => {
                    debug!(funnel = %name, "kept connection gone, sending again: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Idle connections kept, over all nodes and funnels.
    pub(crate) fn idle_count(&self) -> usize {
        lock(&self.inner.idle)
            .values()
            .flat_map(HashMap::values)
            .map(|i| i.sends.len() + i.conns.len())
            .sum()
    }
}

impl Inner {
    /// The most recently used idle connection of kind `C` to `name` on `node_ip` that can take a
    /// request ([`IdleList::take`]).
    fn take<C: Pooled>(&self, name: &str, node_ip: IpAddr, now: Instant) -> Option<C> {
        let mut idle = lock(&self.idle);
        C::list(idle.get_mut(&node_ip)?.get_mut(name)?).take(now, self.idle_timeout)
    }

    fn put<C: Pooled>(&self, name: Box<str>, node_ip: IpAddr, c: C) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let conns = C::list(idle.entry(node_ip).or_default().entry(name).or_default());
        conns.put(c, now, self.idle_timeout, self.max_idle);
    }

    /// The (node, funnel) pairs that have idle connections.
    fn kept(&self) -> Vec<(IpAddr, Box<str>)> {
        let idle = lock(&self.idle);
        let pairs = idle
            .iter()
            .flat_map(|(ip, by_name)| by_name.keys().map(|n| (*ip, n.clone())));
        pairs.collect()
    }

    /// Drops the idle connections of these (node, funnel) pairs.
    fn forget(&self, pairs: &[(IpAddr, Box<str>)]) {
        if pairs.is_empty() {
            return;
        }
        let mut idle = lock(&self.idle);
        for (ip, name) in pairs {
            if let Some(by_name) = idle.get_mut(ip) {
                by_name.remove(name);
                if by_name.is_empty() {
                    idle.remove(ip);
                }
            }
        }
    }

    fn sweep(&self, now: Instant) {
        let mut idle = lock(&self.idle);
        for by_name in idle.values_mut() {
            for conns in by_name.values_mut() {
                conns.sends.sweep(now, self.idle_timeout);
                conns.conns.sweep(now, self.idle_timeout);
            }
            by_name.retain(|_, conns| !conns.is_empty());
        }
        idle.retain(|_, by_name| !by_name.is_empty());
    }

    /// Dials the node's ingress and names the funnel: the stream is then the funnel's.
    async fn open(&self, name: &str, node_ip: IpAddr) -> Result<Box<dyn Io>, NodeError> {
        let addr = SocketAddr::new(node_ip, FUNNEL_INGRESS_PORT);
        let s = timeout(self.dial_timeout, self.dialer.dial(addr))
            .await
            .map_err(|_| NodeError::Timeout("dialing the node"))??;
        timeout(self.handshake_timeout, handshake(s, name))
            .await
            .map_err(|_| NodeError::Timeout("the funnel handshake"))?
    }

    /// Opens a stream to the funnel and starts an HTTP/1.1 connection of hyper's on it.
    async fn connect(&self, name: &str, node_ip: IpAddr) -> Result<SendRequest<Upload>, NodeError> {
        let s = self.open(name, node_ip).await?;
        let (send, conn) = http1::Builder::new()
            .max_buf_size(self.max_buf)
            .handshake(TokioIo::new(s))
            .await
            .map_err(io::Error::other)?;
        let funnel = name.to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(%funnel, "connection to the node ended: {e}");
            }
        });
        Ok(send)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The pool's maps stay consistent even if a holder panicked: every change is one call.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A node's response body, holding its connection until the body ends; its end (or its drop)
/// also cuts off the rest of the request body ([`Cut`]).
pub(crate) struct Leased {
    body: Incoming,
    lease: Option<Lease>,
    cut: Option<Cut>,
}

struct Lease {
    pool: Arc<Inner>,
    name: Box<str>,
    node_ip: IpAddr,
    send: SendRequest<Upload>,
}

impl Leased {
    fn release(&mut self) {
        if let Some(l) = self.lease.take() {
            l.pool.put(l.name, l.node_ip, l.send);
        }
    }
}

impl Body for Leased {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.release();
            this.cut = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        // A body read to its declared length (or an empty one) need not have been polled to
        // its end; anything else leaves the connection mid-response, and it goes.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

/// The request target as the node gets it: the path and query of `uri` (HTTP/2 requests and
/// absolute-form ones name scheme and authority too).
pub(crate) fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/') {
        return uri;
    }
    let pq = uri
        .path_and_query()
        .filter(|pq| pq.as_str().starts_with('/'))
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_node_gets_the_path_and_query_only() {
        for (given, want) in [
            ("/a/b?c=d", "/a/b?c=d"),
            ("https://demo.funnel.example/a/b?c=d", "/a/b?c=d"),
            ("https://demo.funnel.example", "/"),
            ("*", "/"),
        ] {
            let uri = origin_form(given.parse().unwrap());
            assert_eq!(uri.to_string(), want, "{given}");
            assert!(uri.authority().is_none() && uri.scheme().is_none());
        }
    }
}
