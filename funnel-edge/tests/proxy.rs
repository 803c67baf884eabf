//! The edge's HTTPS proxy end to end, with real parts: a local HTTP service (hyper), the real
//! node ingress (`meshd::funnel::ingress::Ingress`) on 127.0.0.1 playing "the node", the proxy
//! with the edge's `LocalCa` behind `certs::Gated`, and real clients (`curl`, a rustls client with
//! tokio-tungstenite). Routes point at mesh addresses (100.64.0.x); the test dialer maps them to
//! the ingress on 127.0.0.1 through `TcpDialer`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{checks, curl, Edge};
use funnel_edge::proxy::ProxyOptions;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_over_http1_and_http2() {
    checks::get_over_http1_and_http2(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_headers_are_ours_and_client_copies_are_gone() {
    checks::forwarding_headers(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_upload_streams_through_intact() {
    checks::large_upload(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_the_service_answers_without_reading_ends_with_its_answer() {
    checks::early_answer_to_an_upload(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sent_events_arrive_before_the_response_ends() {
    checks::server_sent_events(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_echo_through_the_funnel() {
    checks::websocket_echo(&Edge::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_pages_for_unknown_expired_refused_and_offline() {
    let edge = Edge::start().await;
    let cases: [(&str, u16, &str); 5] = [
        (
            "nosuch",
            404,
            "There is no funnel at nosuch.funnel.localhost",
        ),
        ("old", 404, "expired"),
        (
            "nofunnel",
            502,
            "no funnel named &quot;nofunnel&quot; on this node",
        ),
        ("down", 502, "offline or not answering"),
        ("slow", 502, "offline or not answering"),
    ];
    for flag in ["--http1.1", "--http2"] {
        for (name, status, text) in cases {
            let out = curl(&edge, &[flag, &edge.url(name, "/x")]).await;
            assert_eq!(out.status, status, "{name} {flag}: {out:?}");
            assert!(out.body.contains(text), "{name} {flag}: {}", out.body);
        }
    }
    // Only the routes' nodes were ever dialed, on the ingress port.
    for addr in edge.dialed() {
        assert_eq!(addr.port(), proto::map::FUNNEL_INGRESS_PORT);
        assert!(addr.ip().to_string().starts_with("100.64.0."), "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misdirected_and_unusual_requests_are_refused_before_routing() {
    let edge = Edge::start().await;
    for flag in ["--http1.1", "--http2"] {
        let other = format!("Host: other.funnel.localhost:{}", edge.port);
        let out = curl(&edge, &[flag, "-H", &other, &edge.url("hello", "/")]).await;
        assert_eq!(out.status, 421, "{flag}: {out:?}");
        assert!(out.body.contains("different host name"), "{}", out.body);
    }
    let out = curl(
        &edge,
        &[
            "--http1.1",
            "-X",
            "OPTIONS",
            "--request-target",
            "*",
            &edge.url("hello", "/"),
        ],
    )
    .await;
    assert_eq!(out.status, 400, "{out:?}");
    assert!(edge.dialed().is_empty(), "nothing was dialed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_updates_take_effect_on_the_next_request() {
    let edge = Edge::start().await;
    assert_eq!(
        curl(&edge, &[&edge.url("hello", "/hello")]).await.status,
        200
    );
    edge.set_routes(vec![]);
    let out = curl(&edge, &[&edge.url("hello", "/hello")]).await;
    assert_eq!(out.status, 404, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_funnel_closes_on_its_way_gets_what_a_new_one_would() {
    let edge = Edge::start().await;
    // Node 3 ("slow") never answers the dial (given up after a second). While the request waits
    // for it, the funnel closes (first round) or expires (second round).
    let now = meshd::funnel::ingress::unix_now();
    let slow = |expires| proto::map::FunnelRoute {
        name: "slow".into(),
        node: proto::NodeId(3),
        port: 3000,
        expires,
    };
    let rounds = [
        (vec![], "There is no funnel at slow"),
        (vec![slow(now - 1)], "expired"),
    ];
    let dialing = || {
        let dialed = edge.dialed();
        dialed
            .iter()
            .filter(|a| a.ip().to_string() == "100.64.0.3")
            .count()
    };
    for (i, (routes, text)) in rounds.into_iter().enumerate() {
        edge.set_routes(vec![slow(now + 3600)]);
        let url = edge.url("slow", "/x");
        let args = [url.as_str()];
        let close = async {
            for _ in 0..500 {
                if dialing() > i {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(dialing(), i + 1, "the request is being dialed");
            edge.set_routes(routes);
        };
        let (out, ()) = tokio::join!(curl(&edge, &args), close);
        assert_eq!(out.status, 404, "{out:?}");
        assert!(out.body.contains(text), "{}", out.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_the_node_is_working_on_ends_when_its_funnel_closes() {
    let edge = Edge::start().await;
    // The service holds the request (for 10 s, then 504); the funnel closes meanwhile.
    let url = edge.url("hello", "/gather/1000000");
    for flag in ["--http1.1", "--http2"] {
        let args = [flag, url.as_str()];
        let close = async {
            for _ in 0..500 {
                if edge.gathered() > usize::from(flag == "--http2") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            edge.set_routes(vec![]);
        };
        let (out, ()) = tokio::join!(curl(&edge, &args), close);
        assert_eq!(out.status, 404, "{flag}: {out:?}");
        assert!(
            out.body.contains("There is no funnel at hello"),
            "{}",
            out.body
        );
        edge.set_routes(common::default_routes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connections_of_a_closed_funnel_are_not_kept() {
    let edge = Edge::start().await;
    let url = edge.url("hello", "/hello");
    assert_eq!(curl(&edge, &[&url]).await.status, 200);
    assert_eq!(edge.dialed().len(), 1);
    // Closed, then open again: the connection kept from before is gone, a new one is dialed. (The
    // edge drops kept connections when it sees the change; if it has not yet, the old one is
    // reused and the round is tried again.)
    for _ in 0..100 {
        edge.set_routes(vec![]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        edge.set_routes(common::default_routes());
        assert_eq!(curl(&edge, &[&url]).await.status, 200);
        if edge.dialed().len() > 1 {
            return;
        }
    }
    panic!(
        "the closed funnel's connection was reused: {:?}",
        edge.dialed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_alive_connection_serves_several_requests() {
    let edge = Edge::start().await;
    let url = edge.url("hello", "/hello");
    let out = curl(&edge, &["-v", "--http1.1", &url, &url, &url]).await;
    assert_eq!(
        out.body.matches("hello from the service").count(),
        3,
        "{out:?}"
    );
    assert_eq!(
        out.stderr.matches("Re-using existing connection").count(),
        2,
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_to_the_node_are_reused_across_client_connections() {
    let edge = Edge::start().await;
    let url = edge.url("hello", "/hello");
    for flag in ["--http1.1", "--http2", "--http1.1", "--http2"] {
        let out = curl(&edge, &[flag, &url]).await;
        assert_eq!(out.status, 200, "{out:?}");
    }
    // Four client connections, one after the other: one stream to the node carried them all.
    assert_eq!(edge.dialed().len(), 1, "{:?}", edge.dialed());
    // Concurrent requests need streams of their own; they are kept for later ones too.
    let args = ["--http1.1", url.as_str()];
    let many: Vec<_> = (0..4).map(|_| curl(&edge, &args)).collect();
    for out in futures_util::future::join_all(many).await {
        assert_eq!(out.status, 200, "{out:?}");
    }
    let after_burst = edge.dialed().len();
    assert!((1..=4).contains(&after_burst), "{after_burst}");
    for _ in 0..3 {
        assert_eq!(curl(&edge, &["--http1.1", &url]).await.status, 200);
    }
    assert_eq!(edge.dialed().len(), after_burst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connections_of_a_burst_are_kept_for_the_next_one() {
    // 100 requests at once (HTTP/2 streams of one client connection), each held by the service
    // until all have arrived: 100 streams to the node. Kept, the next burst of 100 needs none
    // (a pool that kept fewer than it used would open the rest anew on every burst).
    const N: usize = 100;
    let edge = Edge::start().await;
    for until in [N, 2 * N] {
        let url = edge.url("hello", &format!("/gather/{until}"));
        let out = edge
            .curl_command(&["-sS", "--http2", "--parallel", "--parallel-max", "100"])
            .args(vec![url.as_str(); N])
            .output()
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert_eq!(body.matches("gathered").count(), N, "{out:?}");
        assert_eq!(edge.dialed().len(), N, "after the burst to {until}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_funnel_on_a_node_has_connections_of_its_own() {
    let edge = Edge::start().await;
    let mut ports = Vec::new();
    for _ in 0..2 {
        for name in ["hello", "second"] {
            let out = curl(&edge, &["--http1.1", &edge.url(name, "/port")]).await;
            assert_eq!(out.status, 200, "{name}: {out:?}");
            ports.push(out.body);
        }
    }
    // Both funnels are on node 1, each to a service of its own: a kept stream named for one
    // never carries the other's requests.
    assert_ne!(ports[0], ports[1], "{ports:?}");
    assert_eq!(ports[0..2], ports[2..4], "{ports:?}");
    assert_eq!(edge.dialed().len(), 2, "{:?}", edge.dialed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_the_service_closed_or_left_mid_response_is_not_reused() {
    let edge = Edge::start().await;
    let hello = edge.url("hello", "/hello");
    // The service ends the stream after answering: the next request gets a new one.
    let out = curl(&edge, &["--http1.1", &edge.url("hello", "/close")]).await;
    assert_eq!(
        (out.status, out.body.as_str()),
        (200, "closing\n"),
        "{out:?}"
    );
    assert_eq!(curl(&edge, &["--http1.1", &hello]).await.status, 200);
    assert_eq!(edge.dialed().len(), 2, "{:?}", edge.dialed());
    // A client that leaves in the middle of a streamed response: that stream is dropped, the
    // next request is not answered with the rest of the old response.
    let sse = edge.url("hello", "/sse");
    let out = curl(&edge, &["--http1.1", "--max-time", "1", &sse]).await;
    assert!(out.body.contains("data: first"), "{out:?}");
    let out = curl(&edge, &["--http1.1", &hello]).await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.body, "hello from the service\n", "{out:?}");
    assert_eq!(edge.dialed().len(), 3, "{:?}", edge.dialed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slow_connections_are_closed() {
    let edge = Edge::start_with(ProxyOptions {
        idle_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        ..ProxyOptions::default()
    })
    .await;
    // Silent after the TLS handshake: closed.
    let mut idle = edge
        .tls_client("hello.funnel.localhost", &[b"http/1.1"])
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the edge closed the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Half a request header, then nothing: closed too (hyper may answer 408 first).
    let mut slow = edge
        .tls_client("hello.funnel.localhost", &[b"http/1.1"])
        .await;
    half_head_is_closed(
        &mut slow,
        b"GET / HTTP/1.1\r\nHost: hello.funnel.localhost\r\n",
        Duration::from_secs(10),
    )
    .await;
}

/// Writes `head` (an unfinished request head) and waits, at most `within`, for the edge to close
/// the connection without answering it 200.
async fn half_head_is_closed(
    stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin),
    head: &[u8],
    within: Duration,
) {
    stream.write_all(head).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut rest))
        .await
        .expect("the edge closed the connection with the unfinished head")
        .ok();
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}

/// GETs /hello on an HTTP/1.1 connection of hyper's client: the body.
async fn hello(send: &mut hyper::client::conn::http1::SendRequest<String>, edge: &Edge) -> String {
    let req = hyper::Request::get(edge.url("hello", "/hello"))
        .header("host", "hello.funnel.localhost")
        .body(String::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// An edge with a 1 s header timeout (and `idle`), and an HTTP/1.1 connection of hyper's client
/// to it, whose task ends when the connection does.
async fn short_header_timeout<B>(
    idle: Duration,
) -> (
    Edge,
    hyper::client::conn::http1::SendRequest<B>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let edge = Edge::start_with(ProxyOptions {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: idle,
        ..ProxyOptions::default()
    })
    .await;
    let tls = edge
        .tls_client("hello.funnel.localhost", &[b"http/1.1"])
        .await;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    (edge, send, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keep_alive_connection_is_closed_by_the_idle_timeout_not_the_header_one() {
    let (edge, mut send, conn) = short_header_timeout(Duration::from_secs(8)).await;
    assert_eq!(hello(&mut send, &edge).await, "hello from the service\n");
    // Idle between two requests for longer than the header timeout: still open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!conn.is_finished(), "closed after the header timeout");
    assert_eq!(hello(&mut send, &edge).await, "hello from the service\n");

    // A request head begun and not finished is still closed after the header timeout, on a
    // connection that has answered a request before.
    let mut raw = edge
        .tls_client("hello.funnel.localhost", &[b"http/1.1"])
        .await;
    raw.write_all(b"GET /hello HTTP/1.1\r\nHost: hello.funnel.localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("hello from the service") {
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let start = std::time::Instant::now();
    // Closed by the header timeout, before the idle one (8 s).
    half_head_is_closed(
        &mut raw,
        b"GET /hello HTTP/1.1\r\nHost: hel",
        Duration::from_secs(6),
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_slower_than_the_header_timeout_is_not_cut() {
    let (edge, mut send, _conn) = short_header_timeout(ProxyOptions::default().idle_timeout).await;
    let frames = futures_util::stream::iter(0..3).then(|i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
            7u8;
            1000
        ])))
    });
    let req = hyper::Request::post(edge.url("hello", "/upload"))
        .header("host", "hello.funnel.localhost")
        .header("content-length", 3000)
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).ends_with(" 3000\n"),
        "{body:?}"
    );
}
