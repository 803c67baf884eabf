//! The edge's HTTPS reverse proxy: accepts TLS, serves HTTP/1.1 or HTTP/2 (by ALPN) and sends
//! each request over the mesh to the node that opened the funnel.
//!
//! Per request, in this order: the target must be a path ([`headers::check_target`]: no `*`, no
//! CONNECT); every host the request names must be the TLS server name (else 421); the route is
//! looked up from that same name; only then is the route's node dialed, on its mesh address and
//! [`proto::map::FUNNEL_INGRESS_PORT`] and nowhere else. Bodies stream both ways and are never
//! buffered whole; upgraded connections (WebSocket) are spliced.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use activity::{Activity, Due, Tracked};

use crate::dial::Dialer;
use crate::routes::{Lookup, RouteTable};

mod activity;
mod h1;
pub mod headers;
mod idle;
mod nodes;
mod pages;
mod upload;
mod upstream;

/// A response body: the node's, streamed, or one of the edge's own pages.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Why a response body failed (hyper's client, the edge's own, or none).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Limits and timeouts of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// From TCP accept to a finished TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// For a request's header to arrive (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A connection with no bytes either way for this long is closed gracefully (a request in
    /// flight is finished first; after another idle period the connection is dropped).
    pub idle_timeout: Duration,
    /// Largest request header block (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Opening the stream to the node.
    pub dial_timeout: Duration,
    /// How long an idle connection to a node is kept for the next request.
    pub upstream_idle_timeout: Duration,
    /// Idle connections kept per funnel and node. High enough to keep what a burst opened: a
    /// pool smaller than the requests in flight closes a connection after each response and
    /// opens one for the next request (twice the edge's CPU per request at 256 connections
    /// with 64 kept). The pool never holds more than were in use at once, and the idle timeout
    /// closes what a burst left.
    pub upstream_max_idle: usize,
    /// The node's answer to the funnel handshake.
    pub node_handshake_timeout: Duration,
    /// From sending a request to the node until its response header (then the body streams
    /// without limit).
    pub response_timeout: Duration,
    /// Concurrent client connections; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent requests on one HTTP/2 connection.
    pub max_h2_streams: u32,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: 64 * 1024,
            dial_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(90),
            upstream_max_idle: 1024,
            node_handshake_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_h2_streams: 250,
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    routes: watch::Receiver<RouteTable>,
    nodes: nodes::NodePool,
    opts: ProxyOptions,
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    peer: SocketAddr,
    /// The TLS server name (SNI), as the client sent it.
    sni: String,
    /// The funnel the SNI names (`NAME` of `NAME.<domain>`), worked out once per connection:
    /// every request of the connection is routed by it.
    funnel: Option<String>,
    /// `X-Forwarded-For` for every request of the connection.
    forwarded_for: http::HeaderValue,
}

/// Serves the proxy on `listener` until accepting fails for a reason other than a dropped
/// connection or running out of file descriptors. Each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: watch::Receiver<RouteTable>,
    dialer: Arc<dyn Dialer>,
    opts: ProxyOptions,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let shared = Arc::new(Shared {
        routes: routes.clone(),
        nodes: nodes::NodePool::new(dialer, &opts),
        opts,
    });
    shared.nodes.spawn_sweeper(routes);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(()); // never closed
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) if transient(&e) => {
                debug!("accept: {e}");
                // Out of descriptors or buffers: give closing connections a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        tokio::spawn(async move {
            connection(shared, acceptor, tcp, peer).await;
            drop(slot);
        });
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        // EMFILE, ENFILE, ENOBUFS, ENOMEM
        Some(24 | 23 | 105 | 12)
    )
}

async fn connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let opts = &shared.opts;
    let tls = match tokio::time::timeout(opts.tls_handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, server) = tls.get_ref();
    // The certificate resolver refuses handshakes without SNI, so this is always set.
    let Some(sni) = server.server_name().map(str::to_owned) else {
        return;
    };
    let h2 = server.alpn_protocol() == Some(b"h2");
    let funnel = shared.routes.borrow().funnel_name(&sni);
    let info = Arc::new(ConnInfo {
        peer,
        sni,
        funnel,
        forwarded_for: headers::forwarded_for(peer.ip()),
    });

    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tls,
        activity: activity.clone(),
    });
    let svc_shared = shared.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let (shared, info) = (svc_shared.clone(), info.clone());
        // HTTP/1.1: the request is answered until its response body ends (no header timeout
        // meanwhile). HTTP/2 has no header timeout of ours.
        let answering = (!h2).then(|| svc_activity.answering());
        async move {
            let resp = handle(&shared, &info, req).await;
            Ok::<_, Infallible>(match answering {
                Some(a) => resp.map(|body| a.body(body)),
                None => resp,
            })
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Ours instead ([`activity`]): hyper's also ran while a keep-alive connection waited
        // between requests, and closed it after the header timeout instead of the idle one.
        .header_read_timeout(None)
        .max_buf_size(opts.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(opts.max_h2_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let idle = opts.idle_timeout;
    let head_timeout = (!h2).then_some(opts.header_read_timeout);
    let mut closing = false;
    loop {
        let (deadline, _) = activity.due(idle, head_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let (deadline, due) = activity.due(idle, head_timeout);
                if deadline > Instant::now() {
                    continue;
                }
                if due == Due::Head {
                    debug!(%peer, "request head not received in time: closed");
                    return;
                }
                if closing {
                    debug!(%peer, "idle connection dropped");
                    return;
                }
                debug!(%peer, "idle connection: closing");
                conn.as_mut().graceful_shutdown();
                closing = true;
                activity.touch();
            }
        }
    }
}

/// Routes one request; every outcome is a response.
async fn handle(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    if !tracing::enabled!(tracing::Level::INFO) {
        // No request log: nothing of the request is copied for it.
        return route(shared, conn, req).await;
    }
    let start = Instant::now();
    let method = req.method().clone();
    // The path only: query strings carry tokens.
    let path: String = req.uri().path().chars().take(256).collect();
    let version = req.version();
    let resp = route(shared, conn, req).await;
    info!(
        client = %conn.peer.ip().to_canonical(),
        %method,
        host = %conn.sni,
        path,
        ?version,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn route(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let host = match headers::check_target(&req).and_then(|()| headers::check_host(&req, &conn.sni))
    {
        Ok(h) => h,
        Err(r) => {
            let title = r.status.canonical_reason().unwrap_or("Bad request");
            return answered_early(req, pages::page(r.status, title, r.message));
        }
    };
    // Routed from the TLS name, which the request's host was just checked against.
    let now = crate::unix_now();
    if let Some(name) = conn.funnel.as_deref() {
        let live = shared.routes.borrow().live(name, now);
        if let Some(node_ip) = live {
            return upstream::forward(shared, conn, name, node_ip, &host, req).await;
        }
    }
    let lookup = shared.routes.borrow().lookup(&conn.sni, now);
    match lookup {
        Lookup::Live { name, node_ip, .. } => {
            upstream::forward(shared, conn, &name, node_ip, &host, req).await
        }
        other => answered_early(req, not_live(&other, &conn.sni)),
    }
}

/// The edge's own page for a name `lookup` found no live funnel for (`Unknown`: 404;
/// `Expired`: the page saying so).
fn not_live(lookup: &Lookup, sni: &str) -> Response<Body> {
    let shown = crate::routes::normalize_host(sni).unwrap_or_default();
    match lookup {
        Lookup::Expired { .. } => pages::expired(&shown),
        _ => pages::not_found(&shown),
    }
}

/// When a request failed: the page a new request would get if its funnel is no longer live
/// (closed or expired while the request was on its way: the node ends its streams and refuses
/// new ones a moment before the edge's routes follow); `None` if it still is.
fn gone_meanwhile(routes: &RouteTable, conn: &ConnInfo, name: &str) -> Option<Response<Body>> {
    let now = crate::unix_now();
    if routes.live(name, now).is_some() {
        return None;
    }
    Some(not_live(&routes.lookup(&conn.sni, now), &conn.sni))
}

/// Resolves, with the page a new request would get, once funnel `name` is no longer live in the
/// edge's routes. A request waiting for its node ends then: the node has stopped serving it, and
/// once the node leaves the edge's netmap its answer (or its reset) could not even arrive.
async fn until_gone(shared: &Shared, conn: &ConnInfo, name: &str) -> Response<Body> {
    let mut routes = shared.routes.clone();
    loop {
        if let Some(page) = gone_meanwhile(&routes.borrow_and_update(), conn, name) {
            return page;
        }
        if routes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// `resp`, the edge's own answer to `req`, whose body is read and dropped meanwhile.
fn answered_early(req: Request<Incoming>, resp: Response<Body>) -> Response<Body> {
    upload::discard(req.into_body());
    resp
}
