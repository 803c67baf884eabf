//! Tests of the control client against [`super::test_coord`] (no coord needed): trust (pins, CA
//! files), signing, error answers, connection reuse, the map stream.

use std::sync::atomic::Ordering;

use keys::PrivateKey;
use proto::auth;
use proto::map::MapMessage;
use rustls::pki_types::PrivateKeyDer;

use super::test_coord::{
    coord_with_self_signed, fingerprint_of, netmap, node, self_signed, TestCoord,
};
use super::*;

#[test]
fn fingerprint_forms() {
    let hex = "ab".repeat(32);
    let want = format!("sha256:{hex}");
    let colons = vec!["AB"; 32].join(":");
    for form in [
        want.clone(),
        hex.clone(),
        hex.to_uppercase(),
        format!("SHA256:{}", hex.to_uppercase()),
        colons.clone(),
        format!("sha256:{colons}"),
        format!("SHA256 Fingerprint={colons}"),
        format!("  {want}\n"),
    ] {
        assert_eq!(
            normalize_fingerprint(&form).as_deref(),
            Some(&*want),
            "{form}"
        );
    }
    for bad in [
        "",
        "sha256:",
        &hex[..62],
        &"zz".repeat(32),
        &format!("md5:{hex}"),
    ] {
        assert_eq!(normalize_fingerprint(bad), None, "{bad}");
    }
    let err = ControlClient::new(
        "https://127.0.0.1:1",
        Trust::Fingerprint("abc".into()),
        PrivateKey::generate(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ControlError::InvalidFingerprint { .. }),
        "{err}"
    );
}

#[test]
fn url_forms() {
    let trust = || Trust::Fingerprint("ab".repeat(32));
    for good in [
        "https://coord.example",
        "https://127.0.0.1:8443/",
        "https://[::1]:8443",
    ] {
        ControlClient::new(good, trust(), PrivateKey::generate()).unwrap();
    }
    for bad in [
        "http://coord.example",
        "coord.example:443",
        "https://a/b",
        "https://u@h",
        "",
    ] {
        let err = ControlClient::new(bad, trust(), PrivateKey::generate()).unwrap_err();
        assert!(
            matches!(err, ControlError::InvalidUrl { .. }),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn wrong_pin_is_a_fingerprint_mismatch() {
    let (coord, _) = coord_with_self_signed().await;
    let (other, _, _) = self_signed(&["localhost"]);
    let wrong = fingerprint_of(&other);
    // Given in another accepted form; reported normalised.
    let client = coord.client(Trust::Fingerprint(
        wrong.to_uppercase().replace("SHA256:", ""),
    ));
    let err = client.info().await.unwrap_err();
    match &err {
        ControlError::FingerprintMismatch { expected, got } => {
            assert_eq!(expected, &wrong);
            assert_eq!(got, &coord.fingerprint);
        }
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with("coordinator certificate fingerprint mismatch: expected sha256:"));
}

#[tokio::test]
async fn right_pin_signs_and_reuses_one_connection() {
    let (coord, _) = coord_with_self_signed().await;
    let client = coord.client(Trust::Fingerprint(coord.fingerprint.clone()));
    // register fetches /v1/info itself for the coordinator's key.
    let reg = client.register(Some("mfk_good"), "laptop").await.unwrap();
    assert_eq!(reg.node.name, "laptop");
    let info = client.info().await.unwrap();
    assert_eq!(info.domain, "mesh.test");
    client
        .set_endpoints(vec!["192.0.2.1:41641".parse().unwrap()])
        .await
        .unwrap();
    let err = client
        .register(Some("mfk_expired"), "laptop")
        .await
        .unwrap_err();
    match &err {
        ControlError::Api {
            status: 403,
            code,
            message,
        } => assert_eq!(
            (code.as_str(), message.as_str()),
            ("auth_key_expired", "auth key expired")
        ),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(!err.to_string().contains("mfk_expired"), "{err}");
    assert_eq!(
        coord.accepts.load(Ordering::SeqCst),
        1,
        "one connection carried all"
    );

    // Raw requests: unsigned ones are refused, signed ones (query included) pass.
    let (status, body) = client
        .raw_request("POST", "/v1/endpoints", Vec::new(), b"{}".to_vec(), false)
        .await
        .unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (status, _) = client
        .raw_request(
            "POST",
            "/v1/endpoints?x=1",
            Vec::new(),
            b"{}".to_vec(),
            true,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // A header given by the caller replaces the signed one.
    let tamper = vec![(auth::HEADER_NONCE.to_owned(), "0".repeat(32))];
    let (status, _) = client
        .raw_request("POST", "/v1/endpoints", tamper, b"{}".to_vec(), true)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = client
        .raw_request("GET", "/nowhere", Vec::new(), Vec::new(), true)
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (404, &b"<html>nope</html>"[..]));
}

#[tokio::test]
async fn ca_file_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (coord, pem) = coord_with_self_signed().await;
    // The self-signed leaf as its own CA file counts as a pin.
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &pem).unwrap();
    coord.client(Trust::CaFile(leaf)).info().await.unwrap();
    // Someone else's certificate: an ordinary verification failure.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, self_signed(&["localhost"]).2).unwrap();
    let err = coord.client(Trust::CaFile(other)).info().await.unwrap_err();
    assert!(matches!(err, ControlError::Tls { .. }), "{err}");
    // Not a certificate at all: reported before any connection.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let err = ControlClient::new(
        &coord.url(),
        Trust::CaFile(garbage.clone()),
        PrivateKey::generate(),
    )
    .unwrap_err();
    assert!(matches!(err, ControlError::CaFile { .. }), "{err}");
    assert!(
        err.to_string().contains(&*garbage.to_string_lossy()),
        "{err}"
    );

    // A real CA: webpki verification, names included.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let coord = TestCoord::start(vec![leaf_cert.der().clone()], key).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let url = format!("https://localhost:{}", coord.addr.port());
    let client = ControlClient::new(&url, Trust::CaFile(ca.clone()), PrivateKey::generate());
    client.unwrap().info().await.unwrap();
    // The leaf does not name 127.0.0.1.
    let err = coord.client(Trust::CaFile(ca)).info().await.unwrap_err();
    assert!(matches!(err, ControlError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn map_stream_reads_lines() {
    let (coord, _) = coord_with_self_signed().await;
    let client = coord.client(Trust::Fingerprint(coord.fingerprint.clone()));
    let full = MapMessage::Full {
        seq: 1,
        netmap: netmap(node(PrivateKey::generate().public_key(), "a")),
    };
    let revoked = MapMessage::Revoked {
        reason: "removed".into(),
    };
    let mut body = serde_json::to_vec(&full).unwrap();
    body.extend_from_slice(b"\n{\"type\":\"keepalive\"}\r\n\n");
    body.extend_from_slice(&serde_json::to_vec(&revoked).unwrap());
    body.push(b'\n');
    *coord.map_body.lock().unwrap() = body;
    let mut stream = client.map_stream().await.unwrap();
    assert_eq!(stream.next().await.unwrap(), Some(full));
    assert_eq!(stream.next().await.unwrap(), Some(MapMessage::Keepalive));
    assert_eq!(stream.next().await.unwrap(), Some(revoked));
    assert_eq!(stream.next().await.unwrap(), None);

    *coord.map_body.lock().unwrap() =
        b"{\"type\":\"keepalive\"}\n{\"type\":\"nonsense\"}\n".to_vec();
    let mut stream = client.map_stream().await.unwrap();
    assert_eq!(stream.next().await.unwrap(), Some(MapMessage::Keepalive));
    let err = stream.next().await.unwrap_err();
    assert!(matches!(err, ControlError::Protocol { .. }), "{err}");
    assert_eq!(
        stream.next().await.unwrap(),
        None,
        "an error ends the stream"
    );

    *coord.map_body.lock().unwrap() = b"{\"type\":\"keep".to_vec();
    let err = client.map_stream().await.unwrap().next().await.unwrap_err();
    assert!(err.to_string().contains("middle of a line"), "{err}");
}

#[tokio::test]
async fn unreachable_coordinator_names_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("https://{addr}");
    let client = ControlClient::new(
        &url,
        Trust::Fingerprint("ab".repeat(32)),
        PrivateKey::generate(),
    )
    .unwrap();
    let err = client.info().await.unwrap_err();
    assert!(matches!(err, ControlError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn error_answers_that_are_not_json() {
    let err = api_error(502, b"<html>\n<h1>Bad Gateway</h1>\n</html>");
    assert_eq!(
        err.to_string(),
        "coordinator refused the request: <html> <h1>Bad Gateway</h1> </html> (502 unexpected_answer)"
    );
    let err = api_error(503, b"");
    assert!(
        err.to_string()
            .contains("HTTP status 503 without an error body"),
        "{err}"
    );
}
