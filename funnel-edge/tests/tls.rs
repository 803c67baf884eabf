//! A real TLS server on 127.0.0.1 built from `tls::server_config` and the edge's `LocalCa`,
//! checked with a rustls client that trusts only `ca.pem` and with the real `curl --cacert`.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use funnel_edge::certs::{CertError, CertSource, LocalCa};
use funnel_edge::tls::server_config;
use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DOMAIN: &str = "funnel.localhost";
const BODY: &str = "hello from the edge\n";

/// Serves TLS with `source` on 127.0.0.1:0; after the handshake, answers one HTTP/1.1 request
/// with `BODY`. Runs until the test's runtime stops.
async fn serve(source: Arc<dyn CertSource>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(source));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                let read_head = async {
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    true
                };
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(10), read_head).await,
                    Ok(true)
                ) {
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn open_ca(dir: &Path) -> Arc<LocalCa> {
    Arc::new(LocalCa::open(dir, DOMAIN).unwrap())
}

fn client(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Connects to `addr` with `server_name` (SNI unless it is an IP address); returns the
/// negotiated (ALPN, version) or the client's error text.
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    server_name: &str,
) -> Result<(Option<Vec<u8>>, ProtocolVersion), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    Ok((
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.protocol_version().unwrap(),
    ))
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn client_trusting_ca_pem_connects_with_alpn_and_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open_ca(dir.path());
    let addr = serve(ca.clone()).await;
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let name = "hello.funnel.localhost";

    let h2 = client(&ca_pem, &[b"h2", b"http/1.1"], BOTH);
    let (alpn, version) = handshake(&h2, addr, name).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(version, ProtocolVersion::TLSv1_3);

    let h1 = client(&ca_pem, &[b"http/1.1"], BOTH);
    let (alpn, _) = handshake(&h1, addr, name).await.unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    let no_alpn = client(&ca_pem, &[], BOTH);
    let (alpn, _) = handshake(&no_alpn, addr, name).await.unwrap();
    assert_eq!(alpn, None);

    let tls12 = client(&ca_pem, &[b"h2", b"http/1.1"], &[&rustls::version::TLS12]);
    let (alpn, version) = handshake(&tls12, addr, name).await.unwrap();
    assert_eq!(version, ProtocolVersion::TLSv1_2);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    let tls13 = client(&ca_pem, &[b"http/1.1"], &[&rustls::version::TLS13]);
    let (_, version) = handshake(&tls13, addr, "Other-App.Funnel.Localhost")
        .await
        .unwrap();
    assert_eq!(version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn names_outside_the_domain_and_missing_sni_fail_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open_ca(dir.path());
    let addr = serve(ca.clone()).await;
    let connector = client(ca.ca_pem(), &[b"h2", b"http/1.1"], BOTH);
    for name in [
        "evil.example.com",
        "a.b.funnel.localhost",
        "funnel.localhost",
        // An IP address as server name: the client sends no SNI at all.
        "127.0.0.1",
    ] {
        let err = handshake(&connector, addr, name).await.unwrap_err();
        // The server refused (an alert; rustls sends access_denied), not our client rejecting
        // a certificate.
        assert!(err.contains("received fatal alert"), "{name}: {err}");
    }
    // Still serving good names afterwards.
    handshake(&connector, addr, "hello.funnel.localhost")
        .await
        .unwrap();
}

/// Serves one fixed certificate whatever the name: lets the test present a certificate the
/// CA signed for a name outside its domain.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl CertSource for Fixed {
    fn certified_key(&self, _: &str) -> Result<Arc<CertifiedKey>, CertError> {
        Ok(self.0.clone())
    }
}

/// Signs a leaf for `name` directly with the CA's key, bypassing `LocalCa`'s name check.
fn sign_with_ca_key(dir: &Path, name: &str) -> Arc<CertifiedKey> {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der).unwrap();
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
}

#[tokio::test]
async fn name_constraint_stops_the_ca_key_vouching_for_other_domains() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open_ca(dir.path());
    let connector = client(ca.ca_pem(), &[], BOTH);

    let ours = serve(Arc::new(Fixed(sign_with_ca_key(
        dir.path(),
        "x.funnel.localhost",
    ))))
    .await;
    handshake(&connector, ours, "x.funnel.localhost")
        .await
        .unwrap();

    let theirs = serve(Arc::new(Fixed(sign_with_ca_key(
        dir.path(),
        "evil.example.com",
    ))))
    .await;
    let err = handshake(&connector, theirs, "evil.example.com")
        .await
        .unwrap_err();
    assert!(
        err.contains("invalid peer certificate") && err.contains("NameConstraint"),
        "{err}"
    );
}

/// `openssl s_client` fetches `/` from the test server as `name`, resuming the session saved
/// in `session` when it exists and saving the new one there; returns whether it was resumed.
fn s_client_resumes(port: u16, name: &str, session: &Path) -> bool {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "20",
        "openssl",
        "s_client",
        "-ign_eof",
        "-servername",
        name,
        "-connect",
    ])
    .arg(format!("127.0.0.1:{port}"))
    .arg("-sess_out")
    .arg(session);
    if session.exists() {
        cmd.arg("-sess_in").arg(session);
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    let out = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(request.as_bytes())?;
            child.wait_with_output()
        })
        .expect("running openssl s_client (this test needs openssl installed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(BODY), "no answer: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
        .unwrap_or_else(|| panic!("no session line: {stdout}"));
    line.starts_with("Reused,")
}

/// A client resumes its TLS session (no certificate, no signature) even after many other
/// clients' handshakes: the tickets are stateless, not entries of a bounded server-side cache
/// (rustls's default keeps 256, which 300 handshakes between push the first one out of).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_by_ticket_after_many_other_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open_ca(dir.path());
    let addr = serve(ca).await;
    let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let session = dir.path().join("session.pem");
    let port = addr.port();
    let name = "hello.funnel.localhost";
    let resumed = |session: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || s_client_resumes(port, name, &session))
    };
    assert!(
        !resumed(session.clone()).await.unwrap(),
        "first: a full handshake"
    );
    assert!(resumed(session.clone()).await.unwrap(), "resumed at once");
    for _ in 0..300 {
        // A new client each time: a full handshake and new tickets every time.
        let other = client(&ca_pem, &[b"http/1.1"], BOTH);
        handshake(&other, addr, "other.funnel.localhost")
            .await
            .unwrap();
    }
    assert!(resumed(session).await.unwrap(), "resumed after 300 others");
}

/// Runs curl against `name` on the test server, `name` resolved to 127.0.0.1.
fn curl(port: u16, name: &str, cacert: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http1.1", "--max-time", "20", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"));
    if let Some(ca) = cacert {
        cmd.arg("--cacert").arg(ca);
    }
    cmd.arg(format!("https://{name}:{port}/"));
    cmd.output()
        .expect("running curl (this test needs curl installed)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_cacert_verifies_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = open_ca(dir.path());
    let addr = serve(ca).await;
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let ca_pem = dir.path().join("ca.pem");
    let port = addr.port();

    let out = tokio::task::spawn_blocking({
        let ca_pem = ca_pem.clone();
        move || curl(port, "hello.funnel.localhost", Some(&ca_pem))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), BODY);

    // Without our CA, curl refuses the certificate (exit 60: peer certificate not verified).
    let out = tokio::task::spawn_blocking(move || curl(port, "hello.funnel.localhost", None))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A name two labels below the domain gets no certificate at all (exit 35: TLS handshake).
    let out =
        tokio::task::spawn_blocking(move || curl(port, "a.b.funnel.localhost", Some(&ca_pem)))
            .await
            .unwrap();
    assert_eq!(
        out.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ca_is_reused_after_reopen_and_key_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCa::open(dir.path(), DOMAIN).unwrap();
    let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert_eq!(pem, first.ca_pem());
    drop(first);
    let second = LocalCa::open(dir.path(), DOMAIN).unwrap();
    assert_eq!(second.ca_pem(), pem);
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
}
