//! Unit tests of the control client, and tests against [`super::canned_server`] for servers that
//! misbehave in ways the real coord never does. The protocol itself (signing, registration,
//! pins, connection reuse, the map stream) is tested against the real coord in
//! `coord/tests/client.rs`.

use keys::PrivateKey;
use proto::map::MapMessage;
use rustls::pki_types::PrivateKeyDer;

use super::canned_server::CannedServer;
use super::*;

/// A `/v1/info` answer, so that the client can sign (the server checks nothing).
fn info_body() -> Vec<u8> {
    let info = CoordInfo {
        protocol_version: proto::PROTOCOL_VERSION,
        coord_key: PrivateKey::generate().public_key(),
        domain: "mesh.test".into(),
        funnel_domain: None,
    };
    serde_json::to_vec(&info).unwrap()
}

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

#[test]
fn error_bodies_become_one_line() {
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
    // An error body with control characters and a very long message.
    let long = format!("line one\n\x1b[31m{}", "x".repeat(1000));
    let body = serde_json::json!({"error": {"code": "odd\ncode", "message": long}});
    match api_error(400, &serde_json::to_vec(&body).unwrap()) {
        ControlError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!((status, code.as_str()), (400, "odd code"));
            assert!(message.starts_with("line one  [31mxxx"), "{message}");
            assert!(message.ends_with('…'), "{message}");
            assert_eq!(message.chars().count(), 301);
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn answers_that_are_not_json() {
    let server = CannedServer::self_signed().await;
    server.serve("/v1/info", 200, info_body());
    server.serve(
        "/v1/register",
        502,
        &b"<html>\n<h1>Bad Gateway</h1>\n</html>"[..],
    );
    server.serve("/v1/map", 503, Bytes::new());
    server.serve("/v1/endpoints", 200, &b"OK"[..]);
    let client = server.pinned_client();

    let err = client.register(Some("mfk_secret"), "n").await.unwrap_err();
    match &err {
        ControlError::Api {
            status: 502,
            code,
            message,
        } => assert_eq!(
            (code.as_str(), message.as_str()),
            ("unexpected_answer", "<html> <h1>Bad Gateway</h1> </html>")
        ),
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(!err.to_string().contains("mfk_secret"), "{err}");
    let err = client.map_stream().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("HTTP status 503 without an error body"),
        "{err}"
    );
    // A 2xx answer that is not the JSON expected.
    let err = client.set_endpoints(Vec::new()).await.unwrap_err();
    match &err {
        ControlError::Protocol { what, reason } => {
            assert_eq!(what, "POST /v1/endpoints");
            assert!(reason.starts_with("invalid JSON"), "{reason}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // raw_request hands back whatever came.
    let (status, body) = client
        .raw_request("GET", "/v1/register", Vec::new(), Vec::new(), false)
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (502, &b"<html>\n<h1>Bad Gateway</h1>\n</html>"[..])
    );
}

#[tokio::test]
async fn map_stream_tolerates_crlf_and_blank_lines() {
    let server = CannedServer::self_signed().await;
    server.serve("/v1/info", 200, info_body());
    let revoked = MapMessage::Revoked {
        reason: "removed".into(),
    };
    let mut body = b"\n{\"type\":\"keepalive\"}\r\n\r\n  \n".to_vec();
    body.extend_from_slice(&serde_json::to_vec(&revoked).unwrap());
    body.extend_from_slice(b"\r\n\n");
    server.serve("/v1/map", 200, body);
    let mut stream = server.pinned_client().map_stream().await.unwrap();
    assert_eq!(stream.next().await.unwrap(), Some(MapMessage::Keepalive));
    assert_eq!(stream.next().await.unwrap(), Some(revoked));
    assert_eq!(stream.next().await.unwrap(), None);
    assert_eq!(stream.next().await.unwrap(), None, "the end is final");
}

#[tokio::test]
async fn a_bad_map_line_ends_the_stream() {
    let server = CannedServer::self_signed().await;
    server.serve("/v1/info", 200, info_body());
    let client = server.pinned_client();
    for bad in [
        &b"{\"type\":\"nonsense\"}"[..],
        b"not json",
        b"{\"type\":\"keepalive\",\"extra\":[}",
        b"[1,2,3]",
    ] {
        let mut body = b"{\"type\":\"keepalive\"}\n".to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\n{\"type\":\"keepalive\"}\n");
        server.serve("/v1/map", 200, body);
        let mut stream = client.map_stream().await.unwrap();
        assert_eq!(stream.next().await.unwrap(), Some(MapMessage::Keepalive));
        let err = stream.next().await.unwrap_err();
        match &err {
            ControlError::Protocol { what, reason } => {
                assert_eq!(what, "GET /v1/map");
                assert!(reason.starts_with("invalid map message"), "{reason}");
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
        assert_eq!(
            stream.next().await.unwrap(),
            None,
            "an error ends the stream, even with good lines after it"
        );
    }
}

#[tokio::test]
async fn a_map_stream_cut_mid_line_is_an_error() {
    let server = CannedServer::self_signed().await;
    server.serve("/v1/info", 200, info_body());
    server.serve(
        "/v1/map",
        200,
        &b"{\"type\":\"keepalive\"}\n{\"type\":\"keep"[..],
    );
    let mut stream = server.pinned_client().map_stream().await.unwrap();
    assert_eq!(stream.next().await.unwrap(), Some(MapMessage::Keepalive));
    let err = stream.next().await.unwrap_err();
    assert!(matches!(err, ControlError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("middle of a line"), "{err}");
    assert_eq!(stream.next().await.unwrap(), None);
}

#[tokio::test]
async fn ca_file_checks_the_name() {
    let dir = tempfile::tempdir().unwrap();
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
    let server = CannedServer::start(vec![leaf_cert.der().clone()], key).await;
    server.serve("/v1/info", 200, info_body());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();

    // By the name the leaf carries: webpki verification passes.
    let url = format!("https://localhost:{}", server.addr.port());
    let client = ControlClient::new(&url, Trust::CaFile(ca.clone()), PrivateKey::generate());
    client.unwrap().info().await.unwrap();
    // The leaf does not name 127.0.0.1.
    let err = server.client(Trust::CaFile(ca)).info().await.unwrap_err();
    assert!(matches!(err, ControlError::Tls { .. }), "{err}");
}

#[test]
fn unusable_ca_files_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for path in [garbage, missing, broken] {
        let err = ControlClient::new(
            "https://127.0.0.1:1",
            Trust::CaFile(path.clone()),
            PrivateKey::generate(),
        )
        .unwrap_err();
        assert!(matches!(err, ControlError::CaFile { .. }), "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}

#[tokio::test]
async fn raw_request_refuses_what_it_cannot_send() {
    // Nothing listens on port 1: each of these is refused before any connection.
    let client = ControlClient::new(
        "https://127.0.0.1:1",
        Trust::Fingerprint("ab".repeat(32)),
        PrivateKey::generate(),
    )
    .unwrap();
    let header = |n: &str, v: &str| vec![(n.to_owned(), v.to_owned())];
    for (method, path, headers) in [
        ("GE T", "/v1/info", Vec::new()),
        ("GET", "v1/info", Vec::new()),
        ("GET", "/a b", Vec::new()),
        ("GET", "http://elsewhere/v1/info", Vec::new()),
        ("GET", "/v1/info", header("bad name", "1")),
        ("GET", "/v1/info", header("x-test", "a\nb")),
    ] {
        let err = client
            .raw_request(method, path, headers, Vec::new(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ControlError::InvalidRequest { .. }),
            "{method} {path}: {err}"
        );
    }
}
