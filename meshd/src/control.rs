//! The node's control-plane client: talks to coord's HTTPS API (routes in [`proto::api`]).
//!
//! * Trust in the coordinator is explicit ([`Trust`]): a pinned leaf-certificate fingerprint
//!   (what `coord serve` prints for its self-signed certificate) or a CA file. A pin mismatch is
//!   its own error, [`ControlError::FingerprintMismatch`].
//! * `GET /v1/info` is unauthenticated; it yields the coordinator's key, from which the client
//!   derives the request MAC key ([`proto::auth::RequestKey`]). Every other request is signed
//!   with it: node key, timestamp, fresh nonce, signature headers.
//! * Short requests reuse one idle HTTP/1.1 connection; the map stream gets a connection of its
//!   own for as long as it lives ([`MapStream`]).
//! * Errors are one line a user can act on. Neither the node's private key nor an auth key ever
//!   appears in an error or a log line.

#[cfg(test)]
mod canned_server;
mod conn;
mod stream;
#[cfg(test)]
mod tests;
mod trust;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use proto::api::{
    CoordInfo, EndpointsRequest, FunnelList, FunnelRequest, FunnelResponse, RegisterRequest,
    RegisterResponse,
};
use proto::auth::{RequestKey, SignedParts};
use serde::de::DeserializeOwned;

pub use conn::IDLE_REUSE;
pub use stream::{MapStream, MAX_LINE_BYTES};
pub use trust::{normalize_fingerprint, Trust};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The URL given to [`ControlClient::new`] is not `https://host[:port]`.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    /// A [`Trust::Fingerprint`] that is not a SHA-256 in any accepted form.
    #[error(
        "invalid coordinator certificate fingerprint {value:?}: expected sha256:<64 hex digits>, \
         as `coord serve` prints it"
    )]
    InvalidFingerprint { value: String },
    /// A [`Trust::CaFile`] that cannot be read or holds no usable certificate.
    #[error("cannot use {path} as the coordinator's CA file: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// A [`ControlClient::raw_request`] that cannot be sent (bad method, path or header).
    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },
    /// Name resolution, TCP connect or the whole connect step (10 s) failed.
    #[error("cannot reach the coordinator at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The coordinator's leaf certificate is not the pinned one (both `sha256:<hex>`).
    #[error("coordinator certificate fingerprint mismatch: expected {expected}, got {got}")]
    FingerprintMismatch { expected: String, got: String },
    /// Any other TLS failure: unknown issuer, wrong name, not TLS at all, ...
    #[error("TLS handshake with the coordinator at {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A non-2xx answer; `code` and `message` come from its [`proto::api::ErrorBody`]
    /// (`unexpected_answer` when the body is not one).
    #[error("coordinator refused the request: {message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// A 2xx answer that does not parse, a bad map line, or an answer too large.
    #[error("coordinator sent a bad answer to {what}: {reason}")]
    Protocol { what: String, reason: String },
    /// No answer within 30 s, or 90 s of silence on the map stream.
    #[error("no answer from the coordinator {what} within {}s", .after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    /// The connection broke (reset, closed mid-answer).
    #[error("connection to the coordinator failed: {0}")]
    Io(#[from] io::Error),
}

/// Shorthand for this module's results.
pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Largest answer body read for a request other than the map stream.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A client of one coordinator, acting as one node.
pub struct ControlClient {
    conn: conn::Connector,
    node_key: keys::PrivateKey,
    node_pub: keys::PublicKey,
    /// Derived from the coordinator's key once `GET /v1/info` answered.
    request_key: Mutex<Option<RequestKey>>,
    /// The last `/v1/info` answer.
    info: Mutex<Option<CoordInfo>>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("coordinator", &self.conn.authority())
            .field("node", &self.node_pub)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// A client for the coordinator at `url` (`https://host[:port]`, port 443 by default). No
    /// connection is made yet; a bad URL, fingerprint or CA file is reported here.
    pub fn new(url: &str, trust: Trust, node_key: keys::PrivateKey) -> Result<Self> {
        let config = trust::client_config(&trust)?;
        let conn = conn::Connector::new(url, config)?;
        let node_pub = node_key.public_key();
        Ok(Self {
            conn,
            node_key,
            node_pub,
            request_key: Mutex::new(None),
            info: Mutex::new(None),
        })
    }

    /// `GET /v1/info` (unauthenticated). Remembers the coordinator's key for signing.
    pub async fn info(&self) -> Result<CoordInfo> {
        let (status, body) = self
            .send(Method::GET, "/v1/info", Vec::new(), Bytes::new())
            .await?;
        let info: CoordInfo = parse_answer("GET /v1/info", status, &body)?;
        let key = RequestKey::derive(
            &self.node_key,
            &info.coord_key,
            &self.node_pub,
            &info.coord_key,
        );
        *self
            .request_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(key);
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = Some(info.clone());
        Ok(info)
    }

    /// The coordinator's last `/v1/info` answer, if one was fetched.
    pub fn coord_info(&self) -> Option<CoordInfo> {
        self.info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `POST /v1/register`: registers this node, or refreshes a known one (`auth_key` may then be
    /// `None`).
    pub async fn register(
        &self,
        auth_key: Option<&str>,
        hostname: &str,
    ) -> Result<RegisterResponse> {
        let req = RegisterRequest {
            version: proto::PROTOCOL_VERSION,
            auth_key: auth_key.map(str::to_owned),
            hostname: hostname.to_owned(),
        };
        self.post_json("/v1/register", &req).await
    }

    /// `POST /v1/endpoints`: the UDP endpoints this node can be reached on.
    pub async fn set_endpoints(&self, endpoints: Vec<SocketAddr>) -> Result<()> {
        let req = EndpointsRequest {
            version: proto::PROTOCOL_VERSION,
            endpoints,
        };
        let _: serde_json::Value = self.post_json("/v1/endpoints", &req).await?;
        Ok(())
    }

    /// `POST /v1/funnels`: opens a funnel for this node, or renews it (same name: port and
    /// expiry are replaced). Refusals are [`ControlError::Api`] with coord's code:
    /// `funnel_not_granted` (403), `funnel_name_taken` (409), `funnel_ttl_too_long` (400), ...
    pub async fn funnel_open(&self, req: &FunnelRequest) -> Result<FunnelResponse> {
        self.post_json("/v1/funnels", req).await
    }

    /// `DELETE /v1/funnels/NAME`: closes one of this node's funnels.
    pub async fn funnel_close(&self, name: &str) -> Result<()> {
        // The name goes into the path: only a DNS label, so it cannot change the route.
        if !proto::policy::is_dns_label(name) {
            return Err(invalid(&format!(
                "funnel name {:?} is not a DNS label",
                one_line(name, 80)
            )));
        }
        let path = format!("/v1/funnels/{name}");
        let headers = self.signed("DELETE", &path, b"").await?;
        let (status, answer) = self
            .send(Method::DELETE, &path, headers, Bytes::new())
            .await?;
        let _: serde_json::Value = parse_answer(&format!("DELETE {path}"), status, &answer)?;
        Ok(())
    }

    /// `GET /v1/funnels`: this node's live funnels, by name.
    pub async fn funnels(&self) -> Result<Vec<FunnelResponse>> {
        let path = "/v1/funnels";
        let headers = self.signed("GET", path, b"").await?;
        let (status, answer) = self.send(Method::GET, path, headers, Bytes::new()).await?;
        let list: FunnelList = parse_answer("GET /v1/funnels", status, &answer)?;
        Ok(list.funnels)
    }

    /// `GET /v1/map`: opens the netmap stream on a connection of its own.
    pub async fn map_stream(&self) -> Result<MapStream> {
        let path = "/v1/map";
        let headers = self.signed("GET", path, b"").await?;
        let req = self.conn.build(Method::GET, path, headers, Bytes::new())?;
        let (response, sender, task) = self.conn.open_stream(req).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body =
                conn::read_body(response.into_body(), MAX_ANSWER_BYTES, "GET /v1/map").await?;
            return Err(api_error(status, &body));
        }
        Ok(MapStream::new(response.into_body(), sender, task))
    }

    /// Sends any request and returns the status and body as they came, whatever the status: for
    /// tests that feed coord bad input. With `sign`, the signature headers are added first and
    /// `headers` may override them. The whole answer is read, so not for `/v1/map`.
    pub async fn raw_request(
        &self,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<(u16, Vec<u8>)> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| invalid("method"))?;
        let mut all = Vec::new();
        if sign {
            all = self.signed(method.as_str(), path, &body).await?;
        }
        for (name, value) in headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid("header name"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| invalid("header value"))?;
            all.retain(|(n, _)| *n != name);
            all.push((name, value));
        }
        let (status, body) = self.send(method, path, all, Bytes::from(body)).await?;
        Ok((status, body.to_vec()))
    }

    /// The four signature headers for a request, with a fresh timestamp and nonce, as
    /// `(name, value)` pairs for [`raw_request`](Self::raw_request) (replay tests, say).
    /// Fetches `/v1/info` first if the coordinator's key is not known yet.
    pub async fn signature_headers(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>> {
        let headers = self.signed(method, path_and_query, body).await?;
        Ok(headers
            .into_iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect())
    }

    async fn signed(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let key = self.request_key().await?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let signature = key.sign(&SignedParts {
            method,
            path: path_and_query,
            timestamp,
            nonce: &nonce,
            body,
        });
        let header = |name: &'static str, value: String| {
            HeaderValue::from_str(&value)
                .map(|v| (HeaderName::from_static(name), v))
                .map_err(|_| invalid("header value"))
        };
        Ok(vec![
            header(proto::auth::HEADER_NODE_KEY, self.node_pub.to_base64())?,
            header(proto::auth::HEADER_TIMESTAMP, timestamp.to_string())?,
            header(proto::auth::HEADER_NONCE, nonce)?,
            header(proto::auth::HEADER_SIGNATURE, signature)?,
        ])
    }

    async fn request_key(&self) -> Result<RequestKey> {
        if let Some(key) = self
            .request_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(key);
        }
        self.info().await?;
        let key = self
            .request_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        key.ok_or_else(|| io::Error::other("coordinator key missing after /v1/info").into())
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        req: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(req).map_err(|e| invalid(&e.to_string()))?;
        let headers = self.signed("POST", path, &body).await?;
        let (status, answer) = self.send(Method::POST, path, headers, body.into()).await?;
        parse_answer(&format!("POST {path}"), status, &answer)
    }

    /// Sends a short request on the shared connection and reads the whole answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        let what = format!("{method} {path}");
        let req = self.conn.build(method, path, headers, body)?;
        self.conn.round_trip(req, MAX_ANSWER_BYTES, &what).await
    }
}

fn invalid(reason: &str) -> ControlError {
    ControlError::InvalidRequest {
        reason: reason.to_owned(),
    }
}

/// A 2xx answer parsed as `T`, or the error the answer carries.
fn parse_answer<T: DeserializeOwned>(what: &str, status: u16, body: &[u8]) -> Result<T> {
    if !(200..300).contains(&status) {
        return Err(api_error(status, body));
    }
    serde_json::from_slice(body).map_err(|e| ControlError::Protocol {
        what: what.to_owned(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// The error a non-2xx answer stands for; tolerates bodies that are not [`proto::api::ErrorBody`]
/// (a proxy's HTML page, say).
fn api_error(status: u16, body: &[u8]) -> ControlError {
    match serde_json::from_slice::<proto::api::ErrorBody>(body) {
        Ok(b) => ControlError::Api {
            status,
            code: one_line(&b.error.code, 64),
            message: one_line(&b.error.message, 300),
        },
        Err(_) => ControlError::Api {
            status,
            code: "unexpected_answer".to_owned(),
            message: match one_line(&String::from_utf8_lossy(body), 200) {
                m if m.is_empty() => format!("HTTP status {status} without an error body"),
                m => m,
            },
        },
    }
}

/// `s` with control characters replaced and cut to `max` characters, so that text from the
/// network stays on one terminal line.
fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.trim().chars().count() > max {
        out.push('…');
    }
    out
}
