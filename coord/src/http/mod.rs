//! The HTTPS API driver: TLS accept loop, routing, body limits, JSON in and out.
//!
//! Routes are listed in [`proto::api`]. Every signed route calls [`auth::Verifier::verify`]
//! before anything else; errors become a status and a JSON body in [`respond_error`] only.

pub mod auth;
pub mod funnels;
mod map;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use proto::api::{CoordInfo, EndpointsRequest, RegisterRequest, MAX_BODY_BYTES};
use proto::node::MAX_ENDPOINTS;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::service::{Command, Handle};

pub type Body = BoxBody<Bytes, Infallible>;

/// How long a client has to finish the TLS handshake and send its request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
#[derive(Debug)]
pub struct Api {
    pub handle: Handle,
    pub verifier: auth::Verifier,
    pub info: CoordInfo,
    /// A map stream quiet this long gets a keepalive line.
    pub map_keepalive: Duration,
    /// Funnels answer on `https://NAME.<funnel_domain>[:funnel_port]/`.
    pub funnel_domain: String,
    /// The edges' public HTTPS port (left out of URLs when 443).
    pub funnel_port: u16,
}

/// Accepts TLS connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<Api>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(&api, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                debug!(%peer, "connection: {e}");
            }
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    full(status, "application/json", body)
}

/// The one place an [`ApiError`] becomes a response.
pub fn respond_error(e: &ApiError) -> Response<Body> {
    match e {
        ApiError::Internal(detail) => warn!("internal error: {detail}"),
        other => debug!("request refused: {other}"),
    }
    json(e.status(), &e.body())
}

async fn route(api: &Api, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let result = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => Ok(full(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::GET, "/metrics") => Ok(metrics(api)),
        (&Method::GET, "/v1/info") => Ok(json(StatusCode::OK, &api.info)),
        (&Method::POST, "/v1/register") => register(api, req).await,
        (&Method::POST, "/v1/endpoints") => endpoints(api, req).await,
        (&Method::GET, "/v1/map") => map::open(api, peer, req).await,
        (&Method::POST, "/v1/funnels") => funnels::open(api, req).await,
        (&Method::GET, "/v1/funnels") => funnels::list(api, req).await,
        (&Method::DELETE, p) if p.starts_with(funnels::PREFIX) => funnels::close(api, req).await,
        (
            _,
            "/healthz" | "/metrics" | "/v1/info" | "/v1/register" | "/v1/endpoints" | "/v1/map"
            | "/v1/funnels",
        ) => Err(ApiError::MethodNotAllowed),
        (_, p) if p.starts_with(funnels::PREFIX) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    };
    result.unwrap_or_else(|e| respond_error(&e))
}

/// The largest refused body that is still read and thrown away (see [`read_body`]).
const MAX_DISCARD_BYTES: u64 = 1024 * 1024;
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a body of at most [`MAX_BODY_BYTES`]; a larger declared length is refused unread.
async fn read_body(req: Request<Incoming>) -> Result<(http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_BODY_BYTES as u64) {
        // Refused unread. A client still sending would see the connection reset instead of
        // the 413 if it closed with data pending, so a modest body is discarded in the
        // background while the answer goes out; a larger one is cut off.
        if n <= MAX_DISCARD_BYTES {
            tokio::spawn(async move {
                let mut body = body;
                let _ = tokio::time::timeout(DISCARD_TIMEOUT, async {
                    while let Some(Ok(_)) = body.frame().await {}
                })
                .await;
            });
        }
        return Err(ApiError::BodyTooLarge);
    }
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge
            } else {
                ApiError::BadRequest("request body could not be read".into())
            }
        })?
        .to_bytes();
    Ok((parts, bytes))
}

/// Parses a versioned JSON body: the version is checked before the strict parse, so a newer
/// client gets "unsupported version" rather than "unknown field".
fn parse_versioned<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        version: Option<u32>,
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    match probe.version {
        Some(proto::PROTOCOL_VERSION) => {}
        Some(v) => return Err(ApiError::UnsupportedVersion(v)),
        None => return Err(ApiError::MalformedJson("missing field `version`".into())),
    }
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

fn path_and_query(parts: &http::request::Parts) -> &str {
    parts.uri.path_and_query().map_or("/", |p| p.as_str())
}

async fn register(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let node = api
        .verifier
        .verify("POST", path_and_query(&parts), &parts.headers, &body)?;
    let req: RegisterRequest = parse_versioned(&body)?;
    let key = node.key();
    let resp = api
        .handle
        .call(|reply| Command::Register { key, req, reply })
        .await?;
    let status = if resp.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &resp))
}

async fn endpoints(api: &Api, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = read_body(req).await?;
    let node = api
        .verifier
        .verify("POST", path_and_query(&parts), &parts.headers, &body)?;
    let req: EndpointsRequest = parse_versioned(&body)?;
    if req.endpoints.len() > MAX_ENDPOINTS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ENDPOINTS} endpoints may be reported"
        )));
    }
    let key = node.key();
    api.handle
        .call(|reply| Command::Endpoints {
            key,
            endpoints: req.endpoints,
            reply,
        })
        .await?;
    Ok(json(StatusCode::OK, &serde_json::json!({})))
}

fn metrics(api: &Api) -> Response<Body> {
    let m = &api.handle.metrics;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let text = format!(
        "# HELP coord_nodes Registered nodes.\n# TYPE coord_nodes gauge\ncoord_nodes {}\n\
         # HELP coord_nodes_online Nodes with an open map stream.\n# TYPE coord_nodes_online gauge\ncoord_nodes_online {}\n\
         # HELP coord_map_streams Open map streams.\n# TYPE coord_map_streams gauge\ncoord_map_streams {}\n\
         # HELP coord_map_updates_sent_total Map lines (full maps and deltas) sent.\n# TYPE coord_map_updates_sent_total counter\ncoord_map_updates_sent_total {}\n\
         # HELP coord_map_bytes_sent_total Bytes of map lines sent.\n# TYPE coord_map_bytes_sent_total counter\ncoord_map_bytes_sent_total {}\n\
         # HELP coord_map_flushes_total Batches of changes fanned out.\n# TYPE coord_map_flushes_total counter\ncoord_map_flushes_total {}\n",
        g(&m.nodes),
        g(&m.online),
        g(&m.streams),
        g(&m.lines_sent),
        g(&m.bytes_sent),
        g(&m.flushes),
    );
    full(StatusCode::OK, "text/plain; version=0.0.4", text)
}
