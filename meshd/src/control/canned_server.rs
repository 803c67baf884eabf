//! A TLS + HTTP/1.1 server on 127.0.0.1 that answers each path with fixed bytes the test gave it:
//! a status and a body, nothing else. It knows nothing of coord's protocol (no signature checks,
//! no registration); it exists to test the control client against servers that misbehave in
//! ways the real coord never does: bad map lines, streams cut mid-line, non-JSON error bodies,
//! certificates coord would not serve. Protocol behaviour is tested against the real coord in
//! `coord/tests/client.rs`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keys::PrivateKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{ControlClient, Trust};

/// What each path answers: status and body.
type Routes = Arc<Mutex<HashMap<String, (u16, Bytes)>>>;

/// A running canned server; it stops with the test's runtime.
pub(super) struct CannedServer {
    pub(super) addr: SocketAddr,
    /// `sha256:<hex>` of the leaf certificate it serves.
    pub(super) fingerprint: String,
    routes: Routes,
}

/// A self-signed certificate for `names`: DER, key, PEM.
pub(super) fn self_signed(
    names: &[&str],
) -> (CertificateDer<'static>, PrivateKeyDer<'static>, String) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    (ck.cert.der().clone(), key, ck.cert.pem())
}

impl CannedServer {
    /// Serves `chain` (leaf first) with `key`. Every path answers 404 with an empty body until
    /// [`serve`](Self::serve) says otherwise.
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
        let routes = Routes::default();
        let shared = routes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, routes) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        std::future::ready(Ok::<_, Infallible>(answer(&routes, &req)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            fingerprint: format!("sha256:{}", hex::encode(Sha256::digest(chain[0].as_ref()))),
            routes,
        }
    }

    /// A server with a fresh self-signed certificate for `localhost` and `127.0.0.1`.
    pub(super) async fn self_signed() -> Self {
        let (cert, key, _) = self_signed(&["localhost", "127.0.0.1"]);
        Self::start(vec![cert], key).await
    }

    /// From now on, requests for `path` (query ignored) get `status` and `body`, byte for byte.
    pub(super) fn serve(&self, path: &str, status: u16, body: impl Into<Bytes>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.into()));
    }

    pub(super) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A client with a fresh node key, by this server's IP address.
    pub(super) fn client(&self, trust: Trust) -> ControlClient {
        ControlClient::new(&self.url(), trust, PrivateKey::generate()).unwrap()
    }

    /// A client that pins this server's certificate.
    pub(super) fn pinned_client(&self) -> ControlClient {
        self.client(Trust::Fingerprint(self.fingerprint.clone()))
    }
}

fn answer(routes: &Routes, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = routes
        .lock()
        .unwrap()
        .get(req.uri().path())
        .cloned()
        .unwrap_or((404, Bytes::new()));
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}
