//! The transport to one coordinator: its URL, TCP + TLS connections, and HTTP/1.1 exchanges over
//! them (hyper's client connection API). One idle connection is kept for the next short request,
//! for at most [`IDLE_REUSE`].

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::{ControlError, Result};

/// The sending half of one HTTP/1.1 connection.
pub(super) type Sender = http1::SendRequest<Full<Bytes>>;

/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A short request, from connect to the last byte of the answer; the map stream's headers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the kept connection may sit idle and still carry the next request: well inside the
/// 10 s after which the coordinator closes an idle connection, so a request seldom crosses that
/// close on the wire (and goes again when it does, see `send_reusing`).
pub const IDLE_REUSE: Duration = Duration::from_secs(5);

pub(super) struct Connector {
    /// `host[:port]` as in the URL: the `Host` header and what errors name.
    authority: String,
    /// The host to resolve, without IPv6 brackets.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    /// The kept connection and when its last answer was read.
    idle: Mutex<Option<(Sender, Instant)>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub(super) fn new(url: &str, config: Arc<rustls::ClientConfig>) -> Result<Self> {
        let bad = |reason| ControlError::InvalidUrl {
            // A URL with user info may hold a password: not repeated in an error.
            url: if url.contains('@') {
                "<not shown>".to_owned()
            } else {
                url.to_owned()
            },
            reason,
        };
        let uri: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("it must start with https://"));
        }
        let auth = uri.authority().ok_or_else(|| bad("it names no host"))?;
        if auth.as_str().contains('@') {
            return Err(bad("it must not contain a user name"));
        }
        if !matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("" | "/")
        ) {
            return Err(bad("it must not have a path: use https://host:port"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| bad("the host is not a valid DNS name or IP address"))?;
        Ok(Self {
            authority: auth.as_str().to_owned(),
            host: host.to_owned(),
            port: auth.port_u16().unwrap_or(443),
            server_name,
            tls: TlsConnector::from(config),
            idle: Mutex::new(None),
        })
    }

    pub(super) fn authority(&self) -> &str {
        &self.authority
    }

    /// A request for `path` (path and query, sent byte for byte as given: it is what the
    /// signature covers). `headers` override the defaults.
    pub(super) fn build(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        let bad = |reason: &str| ControlError::InvalidRequest {
            reason: format!("path {path:?}: {reason}"),
        };
        if !path.starts_with('/') {
            return Err(bad("must start with /"));
        }
        let uri: Uri = path
            .parse()
            .map_err(|_| bad("not a valid request target"))?;
        if uri.path_and_query().map(|p| p.as_str()) != Some(path) {
            return Err(bad("would not be sent as given"));
        }
        let host = HeaderValue::from_str(&self.authority).map_err(|_| bad("bad host"))?;
        let has_body = !body.is_empty();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, host);
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("meshd/", env!("CARGO_PKG_VERSION"))),
        );
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if has_body {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            h.insert(name, value);
        }
        Ok(req)
    }

    /// Sends `req` (on the idle connection if there is one) and reads the whole answer.
    pub(super) async fn round_trip(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
        what: &str,
    ) -> Result<(u16, Bytes)> {
        let exchange = async {
            let (response, sender) = self.send_reusing(req).await?;
            let status = response.status().as_u16();
            let body = read_body(response.into_body(), limit, what).await?;
            // Only a connection whose answer was read in full can carry the next request.
            *self.idle.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((sender, Instant::now()));
            Ok((status, body))
        };
        timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ControlError::Timeout {
                what: "to a request",
                after: ANSWER_TIMEOUT,
            })?
    }

    /// Sends `req` on a new connection and returns once the answer's headers are in; the body is
    /// the caller's to read for as long as it lasts. Dropping the sender and aborting the task
    /// closes the connection.
    pub(super) async fn open_stream(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Sender, JoinHandle<()>)> {
        let (mut sender, task) = self.connect().await?;
        let response = timeout(ANSWER_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| ControlError::Timeout {
                what: "to the map request",
                after: ANSWER_TIMEOUT,
            })?
            .map_err(hyper_error)?;
        Ok((response, sender, task))
    }

    async fn send_reusing(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Sender)> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|(_, since)| since.elapsed() < IDLE_REUSE);
        let mut req = req;
        if let Some((mut sender, _)) = idle {
            if sender.ready().await.is_ok() {
                let again = copy(&req);
                match sender.try_send_request(req).await {
                    Ok(response) => return Ok((response, sender)),
                    Err(mut e) => match e.take_message() {
                        // Not sent (the coordinator closed the idle connection): a new one may
                        // carry it.
                        Some(unsent) => req = unsent,
                        // Sent as the coordinator closed the connection (it closes one that
                        // has been idle for 10 s), and nothing came back: it goes once more,
                        // on a new connection, as browsers do. Requests are signed with a
                        // nonce: had the first arrived after all, the coordinator would refuse
                        // the second as a replay, so nothing is ever done twice.
                        None => {
                            tracing::debug!(error = %e.into_error(), "idle connection lost");
                            req = again;
                        }
                    },
                }
            }
        }
        let (mut sender, _task) = self.connect().await?;
        let response = sender.send_request(req).await.map_err(hyper_error)?;
        Ok((response, sender))
    }

    /// A new connection; its driver task ends when the sender and any answer body are dropped.
    async fn connect(&self) -> Result<(Sender, JoinHandle<()>)> {
        let connect = async {
            let tcp = self.dial().await?;
            // Requests are small and latency matters more than packet count.
            tcp.set_nodelay(true).ok();
            let tls = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| self.tls_error(e))?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(hyper_error)?;
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
            Ok((sender, task))
        };
        timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ControlError::Connect {
                addr: self.authority.clone(),
                source: io::Error::new(io::ErrorKind::TimedOut, "timed out"),
            })?
    }

    /// A TCP connection to the first of the host's addresses that answers.
    async fn dial(&self) -> Result<TcpStream> {
        let fail = |source| ControlError::Connect {
            addr: self.authority.clone(),
            source,
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(fail)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(fail(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the host name has no addresses")
        })))
    }

    fn tls_error(&self, e: io::Error) -> ControlError {
        match super::trust::pin_mismatch(&e) {
            Some((expected, got)) => ControlError::FingerprintMismatch { expected, got },
            None => ControlError::Tls {
                addr: self.authority.clone(),
                source: e,
            },
        }
    }
}

/// The same request again (the body is shared, not copied).
fn copy(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut again = Request::new(req.body().clone());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}

pub(super) fn hyper_error(e: hyper::Error) -> ControlError {
    ControlError::Io(io::Error::other(e))
}

/// Reads a whole body, refusing one larger than `limit` bytes.
pub(super) async fn read_body(mut body: Incoming, limit: usize, what: &str) -> Result<Bytes> {
    let too_large = || ControlError::Protocol {
        what: what.to_owned(),
        reason: format!("answer larger than {limit} bytes"),
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(hyper_error)?.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
