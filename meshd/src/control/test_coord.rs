//! A tiny TLS + HTTP/1.1 stand-in for coord, for the control client's tests: serves `/v1/info`,
//! checks request signatures as coord does, answers register/endpoints, and serves a settable
//! map stream body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keys::{PrivateKey, PublicKey};
use proto::api::{CoordInfo, ErrorBody, ErrorDetail, RegisterRequest, RegisterResponse};
use proto::auth::{self, RequestKey, SignedParts};
use proto::map::{DnsConfig, Netmap};
use proto::node::{Node, NodeId};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{ControlClient, Trust};

/// A stand-in coordinator serving TLS on 127.0.0.1 with a given certificate.
pub(super) struct TestCoord {
    pub(super) addr: SocketAddr,
    pub(super) fingerprint: String,
    pub(super) accepts: Arc<AtomicUsize>,
    /// What `GET /v1/map` answers with.
    pub(super) map_body: Arc<Mutex<Vec<u8>>>,
}

struct State {
    key: PrivateKey,
    map_body: Arc<Mutex<Vec<u8>>>,
}

pub(super) fn self_signed(
    names: &[&str],
) -> (CertificateDer<'static>, PrivateKeyDer<'static>, String) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    (ck.cert.der().clone(), key, ck.cert.pem())
}

pub(super) fn fingerprint_of(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

impl TestCoord {
    pub(super) async fn start(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let map_body = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            key: PrivateKey::generate(),
            map_body: map_body.clone(),
        });
        let counter = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            fingerprint: fingerprint_of(&chain[0]),
            accepts,
            map_body,
        }
    }

    pub(super) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub(super) fn client(&self, trust: Trust) -> ControlClient {
        ControlClient::new(&self.url(), trust, PrivateKey::generate()).unwrap()
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())));
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let detail = ErrorDetail {
        code: code.into(),
        message: message.into(),
    };
    json(status, &ErrorBody { error: detail })
}

/// The node key of a correctly signed request, checked as coord checks it.
fn verify(coord: &PrivateKey, parts: &http::request::Parts, body: &[u8]) -> Option<PublicKey> {
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let node: PublicKey = h(auth::HEADER_NODE_KEY)?.parse().ok()?;
    let timestamp: u64 = h(auth::HEADER_TIMESTAMP)?.parse().ok()?;
    let nonce = h(auth::HEADER_NONCE)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    if !auth::valid_nonce(nonce) || !auth::timestamp_fresh(timestamp, now.as_secs()) {
        return None;
    }
    let key = RequestKey::derive(coord, &node, &node, &coord.public_key());
    let signed = SignedParts {
        method: parts.method.as_str(),
        path: parts.uri.path_and_query()?.as_str(),
        timestamp,
        nonce,
        body,
    };
    key.verify(&signed, h(auth::HEADER_SIGNATURE)?)
        .then_some(node)
}

pub(super) fn node(key: PublicKey, name: &str) -> Node {
    Node {
        id: NodeId(7),
        name: name.into(),
        fqdn: format!("{name}.mesh.test"),
        public_key: key,
        ipv4: "100.64.0.7".parse().unwrap(),
        ipv6: "fd00::7".parse().unwrap(),
        tags: Vec::new(),
        endpoints: Vec::new(),
        online: true,
        key_expiry: 4_000_000_000,
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    if parts.uri.path() == "/v1/info" {
        let info = CoordInfo {
            protocol_version: proto::PROTOCOL_VERSION,
            coord_key: state.key.public_key(),
            domain: "mesh.test".into(),
        };
        return Ok(json(StatusCode::OK, &info));
    }
    let Some(node_key) = verify(&state.key, &parts, &body) else {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "request signature invalid",
        ));
    };
    Ok(match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/v1/register") => {
            let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
            if req.auth_key.as_deref() == Some("mfk_expired") {
                error(
                    StatusCode::FORBIDDEN,
                    "auth_key_expired",
                    "auth key expired",
                )
            } else {
                let node = node(node_key, &req.hostname);
                json(
                    StatusCode::OK,
                    &RegisterResponse {
                        node,
                        created: true,
                    },
                )
            }
        }
        ("POST", "/v1/endpoints") => json(StatusCode::OK, &serde_json::json!({})),
        ("GET", "/v1/map") => Response::new(Full::new(Bytes::from(
            state.map_body.lock().unwrap().clone(),
        ))),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"<html>nope</html>")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    })
}

pub(super) async fn coord_with_self_signed() -> (TestCoord, String) {
    let (cert, key, pem) = self_signed(&["localhost", "127.0.0.1"]);
    (TestCoord::start(vec![cert], key).await, pem)
}

pub(super) fn netmap(self_node: Node) -> Netmap {
    Netmap {
        self_node,
        peers: Vec::new(),
        dns: DnsConfig {
            domain: "mesh.test".into(),
            magic_dns: true,
        },
        packet_filter: Vec::new(),
        funnel_routes: Vec::new(),
    }
}
