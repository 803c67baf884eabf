//! The node's control client (`meshd::control`) against the real coord binary: what the client
//! promises its callers — requests coord accepts, errors that carry coord's answer, raw and
//! pre-signed requests for tests, one reused connection, the map stream, and trust in coord's
//! certificate by pin or by its `cert.pem`. What coord does with bad input is in `bad_input.rs`,
//! registration rules in `registration.rs`; servers that misbehave are meshd's own unit tests.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{next_msg, Coord};
use keys::PrivateKey;
use meshd::control::{ControlClient, ControlError, Trust, IDLE_REUSE};
use proto::auth;
use proto::map::MapMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SOON: Duration = Duration::from_secs(5);

fn api_error(e: &ControlError) -> (u16, &str) {
    match e {
        ControlError::Api { status, code, .. } => (*status, code.as_str()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn error_code(body: &[u8]) -> String {
    let b: proto::api::ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(body)));
    b.error.code
}

/// The endpoints coord holds for its only node, as `coord nodes list` shows them.
fn stored_endpoints(coord: &Coord) -> Vec<SocketAddr> {
    let nodes = coord.nodes();
    assert_eq!(nodes.len(), 1);
    // An empty list is left out.
    serde_json::from_value::<Option<_>>(nodes[0]["node"]["endpoints"].clone())
        .expect("a list of endpoints")
        .unwrap_or_default()
}

/// A TCP relay to coord that counts the connections made through it; bytes pass unchanged, so
/// the client still talks TLS to coord itself.
struct CountingRelay {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

impl CountingRelay {
    async fn start(to: SocketAddr) -> Self {
        Self::start_with(to, None).await
    }

    /// With `idle_close`, a connection that carries nothing for that long is closed towards
    /// coord, as a server closes an idle connection, but the close is held back from the client
    /// until it sends again: then its connection dies under the request, as when a request
    /// crosses the server's close on the wire.
    async fn start_with(to: SocketAddr, idle_close: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("relay address");
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // If coord is gone, so is the connection: the client sees it closed.
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let Some(idle) = idle_close else {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    };
                    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
                    loop {
                        tokio::select! {
                            r = inbound.read(&mut up) => match r {
                                Ok(n) if n > 0 => {
                                    if outbound.write_all(&up[..n]).await.is_err() {
                                        return;
                                    }
                                }
                                _ => return,
                            },
                            r = outbound.read(&mut down) => match r {
                                Ok(n) if n > 0 => {
                                    if inbound.write_all(&down[..n]).await.is_err() {
                                        return;
                                    }
                                }
                                _ => return,
                            },
                            () = tokio::time::sleep(idle) => break,
                        }
                    }
                    drop(outbound);
                    let _ = inbound.read(&mut up).await;
                });
            }
        });
        Self { addr, accepts }
    }

    fn connections(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// A control client (a new node key) that reaches `coord` through this relay.
    fn client(&self, coord: &Coord) -> ControlClient {
        let url = format!("https://{}", self.addr);
        let trust = Trust::Fingerprint(coord.fingerprint.clone());
        ControlClient::new(&url, trust, PrivateKey::generate()).expect("control client")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_register_and_endpoints_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start_at(dir.path(), "127.0.0.1:0", &["--domain", "client.test"]);
    let node_key = PrivateKey::generate();
    let client = coord.client(node_key.clone());

    let info = client.info().await.unwrap();
    assert_eq!(info.protocol_version, proto::PROTOCOL_VERSION);
    assert_eq!(info.domain, "client.test");
    // Another client hears the same coordinator key.
    let again = coord.client(PrivateKey::generate()).info().await.unwrap();
    assert_eq!(again.coord_key, info.coord_key);

    let reg = client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    assert!(reg.created);
    assert_eq!(reg.node.name, "laptop");
    assert_eq!(reg.node.fqdn, "laptop.client.test");
    assert_eq!(reg.node.public_key, node_key.public_key());

    let endpoints: Vec<SocketAddr> = vec![
        "192.0.2.1:41641".parse().unwrap(),
        "[2001:db8::1]:41641".parse().unwrap(),
    ];
    client.set_endpoints(endpoints.clone()).await.unwrap();
    assert_eq!(stored_endpoints(&coord), endpoints);
    client.set_endpoints(Vec::new()).await.unwrap();
    assert_eq!(stored_endpoints(&coord), []);

    // A client that never asked for /v1/info fetches it itself before signing.
    let fresh = coord.client(node_key);
    let refreshed = fresh.register(None, "laptop").await.unwrap();
    assert!(!refreshed.created);
    assert_eq!(refreshed.node.id, reg.node.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_api_errors_with_coords_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let client = coord.client(PrivateKey::generate());

    // 401 on each kind of request: an unknown node may not report endpoints or open a map.
    let err = client.set_endpoints(Vec::new()).await.unwrap_err();
    assert_eq!(api_error(&err), (401, "unknown_node"));
    let err = client.map_stream().await.unwrap_err();
    assert_eq!(api_error(&err), (401, "unknown_node"));

    // 403, with coord's message in one line, and the auth key not repeated.
    let secret = format!("{}x", coord.authkey(&[]));
    let err = client.register(Some(&secret), "laptop").await.unwrap_err();
    let ControlError::Api {
        status: 403,
        code,
        message,
    } = &err
    else {
        panic!("expected a 403 API error, got {err:?}");
    };
    assert_eq!(code, "auth_key_invalid");
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("coordinator refused the request: {message} (403 auth_key_invalid)")
    );
    assert!(!format!("{err:?}").contains(&secret), "{err:?}");

    // The client is still usable after refusals.
    client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    client.set_endpoints(Vec::new()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_are_signed_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let client = coord.client(PrivateKey::generate());
    client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    let body = b"{\"version\":1,\"endpoints\":[\"192.0.2.7:1\"]}".to_vec();

    let (status, answer) = client
        .raw_request("POST", "/v1/endpoints", vec![], body.clone(), false)
        .await
        .unwrap();
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (401, "unsigned_request")
    );

    // Signed: the signature covers the path with its query, as sent.
    let (status, answer) = client
        .raw_request(
            "POST",
            "/v1/endpoints?x=1&y=%20",
            vec![],
            body.clone(),
            true,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(stored_endpoints(&coord), ["192.0.2.7:1".parse().unwrap()]);

    // A header the caller gives replaces the signed one (no second copy): the signature no
    // longer covers the nonce.
    let nonce = vec![(auth::HEADER_NONCE.to_owned(), "0".repeat(32))];
    let (status, answer) = client
        .raw_request("POST", "/v1/endpoints", nonce, body.clone(), true)
        .await
        .unwrap();
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (401, "bad_signature")
    );
    // Header names are matched without regard to case.
    let nonce = vec![(auth::HEADER_NONCE.to_uppercase(), "1".repeat(32))];
    let (status, answer) = client
        .raw_request("POST", "/v1/endpoints", nonce, body.clone(), true)
        .await
        .unwrap();
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (401, "bad_signature")
    );
    // Other headers ride along with a valid signature.
    let extra = vec![("x-test".to_owned(), "1".to_owned())];
    let (status, _) = client
        .raw_request("POST", "/v1/endpoints", extra, body, true)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Whatever the status, the answer comes back as it came.
    let (status, answer) = client
        .raw_request("GET", "/healthz", vec![], vec![], false)
        .await
        .unwrap();
    assert_eq!((status, &answer[..]), (200, &b"ok\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_headers_are_fresh_and_coord_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let node_key = PrivateKey::generate();
    // No /v1/info yet: signature_headers fetches it.
    let client = coord.client(node_key.clone());
    let auth_key = coord.authkey(&[]);
    let body = format!("{{\"version\":1,\"hostname\":\"pre\",\"auth_key\":\"{auth_key}\"}}");
    let headers = client
        .signature_headers("POST", "/v1/register", body.as_bytes())
        .await
        .unwrap();

    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            auth::HEADER_NODE_KEY,
            auth::HEADER_TIMESTAMP,
            auth::HEADER_NONCE,
            auth::HEADER_SIGNATURE
        ]
    );
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        value(auth::HEADER_NODE_KEY),
        node_key.public_key().to_base64()
    );
    let timestamp: u64 = value(auth::HEADER_TIMESTAMP).parse().unwrap();
    assert!(
        coord::service::unix_now().abs_diff(timestamp) <= 5,
        "{timestamp}"
    );
    assert!(auth::valid_nonce(&value(auth::HEADER_NONCE)));
    let other = client
        .signature_headers("POST", "/v1/register", body.as_bytes())
        .await
        .unwrap();
    assert_ne!(other[2], headers[2], "each call has a fresh nonce");
    assert_ne!(other[3], headers[3]);

    // Sent unsigned with these headers, the request is the node's own.
    let (status, answer) = client
        .raw_request("POST", "/v1/register", headers, body.into_bytes(), false)
        .await
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let reg: proto::api::RegisterResponse = serde_json::from_slice(&answer).unwrap();
    assert_eq!(reg.node.public_key, node_key.public_key());
    assert_eq!(reg.node.name, "pre");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_requests_share_one_connection_and_the_map_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let relay = CountingRelay::start(coord.addr).await;
    let client = relay.client(&coord);
    assert_eq!(
        relay.connections(),
        0,
        "no connection before the first request"
    );

    client.info().await.unwrap();
    let err = client.register(None, "laptop").await.unwrap_err();
    assert_eq!(api_error(&err), (403, "auth_key_required"));
    client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    client.set_endpoints(Vec::new()).await.unwrap();
    let (status, _) = client
        .raw_request("GET", "/nowhere", vec![], vec![], true)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(relay.connections(), 1, "one connection carried all");

    let mut stream = client.map_stream().await.unwrap();
    next_msg(&mut stream, SOON).await;
    assert_eq!(relay.connections(), 2, "the map stream has its own");
    client.set_endpoints(Vec::new()).await.unwrap();
    client.info().await.unwrap();
    drop(stream);
    client.set_endpoints(Vec::new()).await.unwrap();
    assert_eq!(relay.connections(), 2, "short requests stay on the first");
}

/// The kept connection carries requests only while it has been idle for less than
/// `IDLE_REUSE`, well before coord closes it: after that the next request opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_for_long_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let relay = CountingRelay::start(coord.addr).await;
    let client = relay.client(&coord);
    client.info().await.unwrap();
    tokio::time::sleep(IDLE_REUSE / 2).await;
    client.info().await.unwrap();
    assert_eq!(relay.connections(), 1, "reused while young");
    tokio::time::sleep(IDLE_REUSE + Duration::from_millis(200)).await;
    client.info().await.unwrap();
    assert_eq!(relay.connections(), 2, "a new one after IDLE_REUSE");
    client.info().await.unwrap();
    assert_eq!(relay.connections(), 2, "and that one is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_crosses_the_close_of_an_idle_connection_goes_again() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let idle = Duration::from_millis(300);
    let relay = CountingRelay::start_with(coord.addr, Some(idle)).await;
    let client = relay.client(&coord);
    client.info().await.unwrap();
    client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    assert_eq!(relay.connections(), 1);
    // Each request below goes out on the kept connection, which coord has closed meanwhile.
    tokio::time::sleep(idle * 2).await;
    client.info().await.unwrap();
    assert_eq!(relay.connections(), 2);
    // A signed request too: its first copy never reached coord, so the second is no replay.
    tokio::time::sleep(idle * 2).await;
    let endpoint: SocketAddr = "192.0.2.7:41641".parse().unwrap();
    client.set_endpoints(vec![endpoint]).await.unwrap();
    assert_eq!(relay.connections(), 3);
    assert_eq!(stored_endpoints(&coord), vec![endpoint]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_stream_starts_full_then_sends_deltas_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let key = coord.authkey(&["--reusable"]);
    let watcher_key = PrivateKey::generate();
    let watcher = coord.client(watcher_key.clone());
    let me = watcher.register(Some(&key), "watcher").await.unwrap().node;

    let mut stream = watcher.map_stream().await.unwrap();
    let MapMessage::Full { seq, netmap } = next_msg(&mut stream, SOON).await else {
        panic!("the first line is not the full map");
    };
    assert_eq!(netmap.self_node.id, me.id);
    assert_eq!(netmap.self_node.public_key, watcher_key.public_key());
    assert!(netmap.peers.is_empty());
    assert_eq!(netmap.dns.domain, "mesh.internal");
    let mut last = seq;

    // Another node joins, then reports endpoints: two deltas, in order.
    let peer = coord.client(PrivateKey::generate());
    let joined = peer.register(Some(&key), "peer").await.unwrap().node;
    let MapMessage::Delta { seq, delta } = next_msg(&mut stream, SOON).await else {
        panic!("expected a delta");
    };
    assert!(seq > last, "{seq} after {last}");
    last = seq;
    let ids: Vec<_> = delta.peers_upserted.iter().map(|p| p.id).collect();
    assert_eq!(ids, [joined.id]);

    let endpoints: Vec<SocketAddr> = vec!["192.0.2.9:41641".parse().unwrap()];
    peer.set_endpoints(endpoints.clone()).await.unwrap();
    let MapMessage::Delta { seq, delta } = next_msg(&mut stream, SOON).await else {
        panic!("expected a delta");
    };
    assert!(seq > last, "{seq} after {last}");
    let reported = delta
        .peers_patched
        .iter()
        .filter(|p| p.id == joined.id)
        .find_map(|p| p.endpoints.clone())
        .or_else(|| {
            let upserted = delta.peers_upserted.iter().find(|p| p.id == joined.id);
            upserted.map(|p| p.endpoints.clone())
        });
    assert_eq!(reported, Some(endpoints));

    // Removed: the last line says so and the stream then ends cleanly.
    let (ok, _, err) = coord.cli(&["nodes", "remove", "watcher"]);
    assert!(ok, "{err}");
    assert!(matches!(
        next_msg(&mut stream, SOON).await,
        MapMessage::Revoked { .. }
    ));
    let end = tokio::time::timeout(SOON, stream.next()).await.unwrap();
    assert_eq!(end.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_fingerprint_is_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let hex = coord
        .fingerprint
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    for pin in [
        coord.fingerprint.clone(),
        hex.to_uppercase(),
        format!("SHA256 Fingerprint={}", colons.join(":")),
    ] {
        let client = ControlClient::new(
            &coord.url(),
            Trust::Fingerprint(pin.clone()),
            PrivateKey::generate(),
        );
        client
            .unwrap()
            .info()
            .await
            .unwrap_or_else(|e| panic!("{pin}: {e}"));
    }

    // Any other certificate's fingerprint, given in another form, reported normalised.
    let mut wrong = hex.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let client = ControlClient::new(
        &coord.url(),
        Trust::Fingerprint(wrong.to_uppercase()),
        PrivateKey::generate(),
    )
    .unwrap();
    let err = client.info().await.unwrap_err();
    match &err {
        ControlError::FingerprintMismatch { expected, got } => {
            assert_eq!(expected, &format!("sha256:{wrong}"));
            assert_eq!(got, &coord.fingerprint);
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "coordinator certificate fingerprint mismatch: expected sha256:{wrong}, got {}",
            coord.fingerprint
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coords_cert_pem_is_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let cert = dir.path().join("tls").join("cert.pem");
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}", coord.addr.port());
        let client = ControlClient::new(&url, Trust::CaFile(cert.clone()), PrivateKey::generate());
        let client = client.unwrap();
        client
            .info()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        client
            .register(Some(&coord.authkey(&[])), host)
            .await
            .unwrap();
    }

    // Someone else's certificate: an ordinary verification failure, not a pin mismatch.
    let other = dir.path().join("other.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]);
    std::fs::write(&other, ck.unwrap().cert.pem()).unwrap();
    let client = ControlClient::new(&coord.url(), Trust::CaFile(other), PrivateKey::generate());
    let err = client.unwrap().info().await.unwrap_err();
    match &err {
        ControlError::Tls { addr, .. } => assert_eq!(addr, &coord.addr.to_string()),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_is_not_running_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coord::start(dir.path());
    let (addr, fingerprint) = (coord.addr, coord.fingerprint.clone());
    coord.kill9();
    let url = format!("https://{addr}");
    let client = ControlClient::new(
        &url,
        Trust::Fingerprint(fingerprint),
        PrivateKey::generate(),
    )
    .unwrap();
    let err = client.info().await.unwrap_err();
    match &err {
        ControlError::Connect { addr: named, .. } => assert_eq!(named, &addr.to_string()),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach the coordinator at {addr}: ")),
        "{err}"
    );
}
