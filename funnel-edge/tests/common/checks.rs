//! Checks of the funnel from a client's side, run against the in-process bench (`proxy.rs`) and
//! against the whole one-machine topology (`one_machine.rs`).

#![allow(clippy::unwrap_used, dead_code)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use super::{curl, Edge};

pub async fn get_over_http1_and_http2(edge: &Edge) {
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let url = edge.url("hello", "/hello?token=secret");
        let out = curl(edge, &[flag, &url]).await;
        assert_eq!(out.status, 200, "{out:?}");
        assert_eq!(out.version, version);
        assert_eq!(out.body, "hello from the service\n");
    }
}

pub async fn forwarding_headers(edge: &Edge) {
    for flag in ["--http1.1", "--http2"] {
        let url = edge.url("hello", "/headers");
        let out = curl(
            edge,
            &[
                flag,
                "-H",
                "X-Forwarded-For: 6.6.6.6",
                "-H",
                "X-Forwarded-Host: evil.example",
                "-H",
                "X-Forwarded-Proto: http",
                "-H",
                "Forwarded: for=6.6.6.6",
                "-H",
                "X-Real-IP: 6.6.6.6",
                "-H",
                "X-Meshfunnel-Funnel: other",
                "-H",
                "X-Custom: kept",
                &url,
            ],
        )
        .await;
        assert_eq!(out.status, 200, "{out:?}");
        let host = format!("hello.funnel.localhost:{}", edge.port);
        let b = &out.body;
        assert!(b.contains("x-forwarded-for: 127.0.0.1\n"), "{flag}: {b}");
        assert!(b.contains(&format!("x-forwarded-host: {host}\n")), "{b}");
        assert!(b.contains("x-forwarded-proto: https\n"), "{b}");
        assert!(b.contains("x-meshfunnel-funnel: hello\n"), "{b}");
        assert!(b.contains(&format!("host: {host}\n")), "{b}");
        assert!(b.contains("x-custom: kept\n"), "{b}");
        for forged in [
            "6.6.6.6",
            "evil",
            "forwarded:",
            "x-real-ip",
            "other",
            ": http\n",
        ] {
            assert!(!b.contains(forged), "{flag}: {forged:?} in {b}");
        }
        assert_eq!(b.matches("x-forwarded-for").count(), 1, "{b}");
    }
}

pub async fn large_upload(edge: &Edge) {
    let path = edge.dir.path().join("upload.bin");
    let mut data = vec![0u8; 50 * 1024 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&path, &data).unwrap();
    let want = format!("{} {}", hex::encode(Sha256::digest(&data)), data.len());
    drop(data);
    for flag in ["--http1.1", "--http2"] {
        let url = edge.url("hello", "/upload");
        let file = format!("@{}", path.display());
        let out = curl(
            edge,
            &[
                flag,
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
                &file,
                &url,
            ],
        )
        .await;
        assert_eq!(out.status, 200, "{out:?}");
        assert_eq!(out.body.trim(), want, "{flag}");
    }
    // The service saw the upload arrive in many pieces, not as one buffered block.
    assert!(edge.max_frames_seen() > 10, "{}", edge.max_frames_seen());
}

/// A service that answers an upload without reading it (a 413, or a page that ignores the
/// body): the client gets that answer, whole, and its upload ends at once instead of failing or
/// hanging, on HTTP/1.1 and HTTP/2, every time; what the client sends after the answer is not
/// carried to the node. Then the funnel still serves the next request.
///
/// curl stops sending by itself on an answer of 300 or more; on a 2xx it sends on, which it can
/// over HTTP/1.1 (the edge reads and drops the rest). Over HTTP/2 curl before 8 hangs on a 2xx
/// that ends before its upload, whoever the server is (nginx too), so that case is checked with
/// hyper's client.
pub async fn early_answer_to_an_upload(edge: &Edge) {
    const UPLOAD: usize = 20 << 20;
    let path = edge.dir.path().join("unread.bin");
    std::fs::write(&path, vec![7u8; UPLOAD]).unwrap();
    let file = format!("@{}", path.display());
    let refused = "too large for this service\n";
    let cases = [
        ("--http1.1", "hello", "/refuse", 413, refused),
        ("--http2", "hello", "/refuse", 413, refused),
        (
            "--http1.1",
            "hello",
            "/hello",
            200,
            "hello from the service\n",
        ),
        // The edge's own answer.
        ("--http1.1", "nosuch", "/", 404, "There is no funnel at"),
        ("--http2", "nosuch", "/", 404, "There is no funnel at"),
    ];
    let before = edge.bytes_to_nodes();
    for (flag, name, path, status, body) in cases {
        for round in 0..4 {
            let start = Instant::now();
            let out = curl(edge, &[flag, "--data-binary", &file, &edge.url(name, path)]).await;
            let what = format!("{flag} {name}{path} round {round}: {out:?}");
            assert_eq!((out.exit, out.status), (Some(0), status), "{what}");
            assert!(out.body.contains(body), "{what}");
            // Well within the edge's time for dropping the rest (10 s): nothing waited on it.
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        }
    }
    for round in 0..4 {
        let start = Instant::now();
        let (status, body) = h2_upload(edge, "/hello", UPLOAD).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "hello from the service\n"),
            "round {round}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "round {round}");
    }
    // 16 uploads of 20 MiB to the node: what reached it is a small part (the kernel's and the
    // mesh's buffers fill before an answer comes back).
    if let (Some(before), Some(after)) = (before, edge.bytes_to_nodes()) {
        let sent = after - before;
        assert!(sent < 4 * UPLOAD as u64, "{sent} bytes went to the node");
    }
    get_over_http1_and_http2(edge).await;
}

/// POSTs `len` bytes in 64 KiB frames over HTTP/2 with hyper's client; the status and body.
pub async fn h2_upload(edge: &Edge, path: &str, len: usize) -> (u16, String) {
    let tls = edge.tls_client("hello.funnel.localhost", &[b"h2"]).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let frames =
        (0..len / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let req = Request::post(edge.url("hello", path))
        .header("content-length", len / (64 * 1024) * (64 * 1024))
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn server_sent_events(edge: &Edge) {
    for flag in ["--http1.1", "--http2"] {
        let mut child = edge
            .curl_command(&["-sS", "-N", flag, &edge.url("hello", "/sse")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the first event came while the response was still open")
            .unwrap();
        assert_eq!(first.as_deref(), Some("data: first"));
        // Only now does the service send the rest and end the response.
        edge.sse_go.notify_one();
        let mut rest = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            rest.push(l);
        }
        assert_eq!(rest, ["", "data: second", ""], "{flag}");
        assert!(child.wait().await.unwrap().success());
    }
}

pub async fn websocket_echo(edge: &Edge) {
    let tls = edge
        .tls_client("hello.funnel.localhost", &[b"http/1.1"])
        .await;
    let url = format!("wss://hello.funnel.localhost:{}/ws", edge.port);
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let text = format!("ping {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(text));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}
