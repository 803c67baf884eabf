//! Bad input at coord's HTTPS port: every case gets a specific status and a JSON error body,
//! changes nothing, and the server keeps serving.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::Coord;
use keys::PrivateKey;
use proto::api::ErrorBody;
use proto::auth::{RequestKey, SignedParts};

fn code(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(body)))
        .error
        .code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let node_key = PrivateKey::generate();
    let client = coord.client(node_key.clone());
    let info = client.info().await.unwrap();

    let register = |body: &str| body.as_bytes().to_vec();
    // (method, path, body, signed, expected status, expected code)
    type Case = (&'static str, &'static str, Vec<u8>, bool, u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/register",
            register("{\"version\":1,\"hostname\":\"a\"}"),
            false,
            401,
            "unsigned_request",
        ),
        (
            "POST",
            "/v1/register",
            register("{not json"),
            true,
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/register",
            register("[1,2,3]"),
            true,
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/register",
            register("{\"version\":99,\"hostname\":\"a\"}"),
            true,
            400,
            "unsupported_protocol_version",
        ),
        (
            "POST",
            "/v1/register",
            register("{\"version\":1,\"hostname\":\"a\",\"root\":true}"),
            true,
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/register",
            register("{\"version\":1,\"hostname\":\"\"}"),
            true,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/register",
            vec![b'x'; 100_000],
            true,
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/endpoints",
            register("{\"version\":1,\"endpoints\":[]}"),
            true,
            401,
            "unknown_node",
        ),
        ("GET", "/v1/map", vec![], true, 401, "unknown_node"),
        ("GET", "/v1/map", vec![], false, 401, "unsigned_request"),
        (
            "GET",
            "/v1/map?version=7",
            vec![],
            true,
            400,
            "unsupported_protocol_version",
        ),
        ("GET", "/nope", vec![], false, 404, "not_found"),
        (
            "DELETE",
            "/v1/map",
            vec![],
            false,
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, sign, status, want) in cases {
        let (got, answer) = client
            .raw_request(method, path, vec![], body, sign)
            .await
            .unwrap();
        assert_eq!(
            (got, code(&answer)),
            (status, want.to_owned()),
            "{method} {path}"
        );
    }

    // A bad signature, a stale timestamp, a replay.
    let body = b"{\"version\":1,\"hostname\":\"a\"}".to_vec();
    let mut headers = client
        .signature_headers("POST", "/v1/register", &body)
        .await
        .unwrap();
    for (n, v) in headers.iter_mut() {
        if n == proto::auth::HEADER_SIGNATURE {
            *v = "00".repeat(32);
        }
    }
    let (s, a) = client
        .raw_request("POST", "/v1/register", headers, body.clone(), false)
        .await
        .unwrap();
    assert_eq!((s, code(&a).as_str()), (401, "bad_signature"));

    let key = RequestKey::derive(
        &node_key,
        &info.coord_key,
        &node_key.public_key(),
        &info.coord_key,
    );
    let old = coord::service::unix_now() - 3600;
    let nonce = "abcdefabcdefabcdefabcdefabcdef01";
    let sig = key.sign(&SignedParts {
        method: "POST",
        path: "/v1/register",
        timestamp: old,
        nonce,
        body: &body,
    });
    let stale = vec![
        (
            proto::auth::HEADER_NODE_KEY.to_owned(),
            node_key.public_key().to_base64(),
        ),
        (proto::auth::HEADER_TIMESTAMP.to_owned(), old.to_string()),
        (proto::auth::HEADER_NONCE.to_owned(), nonce.to_owned()),
        (proto::auth::HEADER_SIGNATURE.to_owned(), sig),
    ];
    let (s, a) = client
        .raw_request("POST", "/v1/register", stale, body.clone(), false)
        .await
        .unwrap();
    assert_eq!((s, code(&a).as_str()), (401, "stale_timestamp"));

    let auth = coord.authkey(&[]);
    let body = format!("{{\"version\":1,\"hostname\":\"a\",\"auth_key\":\"{auth}\"}}").into_bytes();
    let headers = client
        .signature_headers("POST", "/v1/register", &body)
        .await
        .unwrap();
    let (s, _) = client
        .raw_request("POST", "/v1/register", headers.clone(), body.clone(), false)
        .await
        .unwrap();
    assert_eq!(s, 201);
    let (s, a) = client
        .raw_request("POST", "/v1/register", headers, body, false)
        .await
        .unwrap();
    assert_eq!((s, code(&a).as_str()), (401, "replayed_request"));

    // Too many endpoints.
    let eps: Vec<String> = (0..17)
        .map(|i| format!("\"192.0.2.1:{}\"", 1000 + i))
        .collect();
    let body = format!("{{\"version\":1,\"endpoints\":[{}]}}", eps.join(",")).into_bytes();
    let (s, a) = client
        .raw_request("POST", "/v1/endpoints", vec![], body, true)
        .await
        .unwrap();
    assert_eq!((s, code(&a).as_str()), (400, "bad_request"));

    assert_eq!(
        coord.nodes().len(),
        1,
        "only the one good registration exists"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let mut seed: u32 = 12345;
    for round in 0..200 {
        let Ok(mut s) = TcpStream::connect(coord.addr) else {
            panic!("coord stopped accepting at round {round}");
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let len = 1 + (seed % 3000) as usize;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 16) as u8
            })
            .collect();
        let _ = s.write_all(&junk);
    }
    // Plain HTTP on the TLS port, and a half-open connection that says nothing.
    let mut s = TcpStream::connect(coord.addr).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let _idle = TcpStream::connect(coord.addr).unwrap();

    let client = coord.client(PrivateKey::generate());
    let (status, body) = client
        .raw_request("GET", "/healthz", vec![], vec![], false)
        .await
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
    let (status, body) = client
        .raw_request("GET", "/metrics", vec![], vec![], false)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("coord_nodes 0"));
}
