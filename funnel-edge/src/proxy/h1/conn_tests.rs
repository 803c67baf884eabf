//! The edge's own client against hyper's HTTP/1.1 server (the usual answers) and against raw
//! sockets that answer exactly the bytes a test needs (the unusual ones), on loopback.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::BodyError;
use super::head::{write_request, Head};
use super::{Conn, FetchError, Fetched};

const MAX: usize = 64 * 1024;

/// hyper serving `/len` (a body with its length), `/chunks` (three chunks a moment apart, so
/// chunked), `/close` (`Connection: close`), on every connection it accepts.
async fn hyper_service() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let resp = match req.uri().path() {
                        "/chunks" => {
                            let (tx, rx) = tokio::sync::mpsc::channel(1);
                            tokio::spawn(async move {
                                for part in ["one ", "two ", "three"] {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    let frame = Frame::data(Bytes::from(part));
                                    let _ = tx.send(Ok::<_, Infallible>(frame)).await;
                                }
                            });
                            let stream = tokio_stream(rx);
                            Response::new(StreamBody::new(stream).boxed_unsync())
                        }
                        "/close" => Response::builder()
                            .header("connection", "close")
                            .body(Full::from("bye").boxed_unsync())
                            .unwrap(),
                        _ => Response::new(Full::from("hello world").boxed_unsync()),
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A receiver as a stream of frames, without a stream crate.
fn tokio_stream<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
{
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn connect(addr: std::net::SocketAddr) -> Conn {
    Conn::new(Box::new(TcpStream::connect(addr).await.unwrap()))
}

fn get(method: Method, path: &str) -> BytesMut {
    let mut headers = HeaderMap::new();
    headers.insert("host", "node".parse().unwrap());
    let mut out = BytesMut::new();
    write_request(&method, path, &headers, &mut out);
    out
}

/// Where a body put its connection back, if it did.
type Kept = Arc<Mutex<Option<Conn>>>;

fn keeper() -> (Kept, impl FnOnce(Conn) + Unpin + Send + 'static) {
    let kept: Kept = Arc::default();
    let k = kept.clone();
    (kept, move |c| *k.lock().unwrap() = Some(c))
}

/// Sends a request on `conn`: the response's head, its body as it arrives, and where the body
/// puts the connection back.
async fn open(
    mut conn: Conn,
    method: Method,
    path: &str,
) -> (Head, Fetched<impl FnOnce(Conn) + Unpin + Send>, Kept) {
    let to_head = method == Method::HEAD;
    let head = conn
        .round_trip(&get(method, path), to_head, MAX)
        .await
        .unwrap();
    let (kept, keep) = keeper();
    let body = Fetched::new(conn, &head, keep);
    (head, body, kept)
}

/// [`open`], with the whole body.
async fn fetch(
    conn: Conn,
    method: Method,
    path: &str,
) -> (StatusCode, Result<Bytes, BodyError>, Kept) {
    let (head, body, kept) = open(conn, method, path).await;
    let bytes = body.collect().await.map(|c| c.to_bytes());
    (head.status, bytes, kept)
}

fn take(kept: &Kept) -> Option<Conn> {
    kept.lock().unwrap().take()
}

#[tokio::test]
async fn lengths_and_chunks_from_hyper_arrive_and_the_connection_is_kept() {
    let addr = hyper_service().await;
    let (status, body, kept) = fetch(connect(addr).await, Method::GET, "/len").await;
    assert_eq!(
        (status, &body.unwrap()[..]),
        (StatusCode::OK, &b"hello world"[..])
    );
    // The same connection serves the next requests.
    let conn = take(&kept).expect("kept after a body with a length");
    let (_, body, kept) = fetch(conn, Method::GET, "/chunks").await;
    assert_eq!(&body.unwrap()[..], b"one two three");
    let mut conn = take(&kept).expect("kept after a chunked body");
    assert!(conn.is_usable());
    let (head, body, kept) = open(conn, Method::HEAD, "/len").await;
    assert_eq!(head.headers["content-length"], "11");
    assert!(hyper::body::Body::is_end_stream(&body));
    assert!(
        take(&kept).is_some(),
        "a HEAD answer gives its connection back at once"
    );
}

#[tokio::test]
async fn connection_close_and_a_closed_idle_connection_are_not_reused() {
    let addr = hyper_service().await;
    let (_, body, kept) = fetch(connect(addr).await, Method::GET, "/close").await;
    assert_eq!(&body.unwrap()[..], b"bye");
    assert!(take(&kept).is_none());

    // A raw server that answers once, then closes while the connection is idle.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
    });
    let (_, body, kept) = fetch(connect(raw).await, Method::GET, "/").await;
    assert_eq!(&body.unwrap()[..], b"ok");
    let mut conn = take(&kept).unwrap();
    let mut usable = true;
    for _ in 0..100 {
        usable = conn.is_usable();
        if !usable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!usable, "the node's close shows on the idle connection");
}

/// A server that reads one request and answers `answer` byte for byte, then closes.
async fn raw_service(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        let _ = s.write_all(answer).await;
        let _ = s.shutdown().await;
    });
    addr
}

#[tokio::test]
async fn interim_answers_are_skipped_and_unframed_bodies_read_to_the_close() {
    let addr = raw_service(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\nX-Final: yes\r\n\r\nuntil the end",
    )
    .await;
    let (status, body, kept) = fetch(connect(addr).await, Method::GET, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body.unwrap()[..], b"until the end");
    assert!(take(&kept).is_none(), "read until close: nothing to keep");
}

#[tokio::test]
async fn a_body_cut_short_or_bytes_past_its_end_are_not_taken_for_a_response() {
    let addr = raw_service(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    let (_, body, kept) = fetch(connect(addr).await, Method::GET, "/").await;
    assert!(matches!(body, Err(BodyError::Truncated)), "{body:?}");
    assert!(take(&kept).is_none());

    let addr = raw_service(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel").await;
    let (_, body, _) = fetch(connect(addr).await, Method::GET, "/").await;
    assert!(matches!(body, Err(BodyError::Truncated)), "{body:?}");

    let addr = raw_service(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    let (_, body, _) = fetch(connect(addr).await, Method::GET, "/").await;
    assert!(matches!(body, Err(BodyError::Chunk(_))), "{body:?}");

    // A second response nobody asked for, after the first: that connection is not kept.
    let addr = raw_service(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    )
    .await;
    let (_, body, kept) = fetch(connect(addr).await, Method::GET, "/").await;
    assert_eq!(&body.unwrap()[..], b"ok");
    assert!(take(&kept).is_none());
}

/// How a request fails when the node answers `answer` and closes.
async fn failure(answer: &'static [u8]) -> FetchError {
    let mut conn = connect(raw_service(answer).await).await;
    let r = conn.round_trip(&get(Method::GET, "/"), false, MAX).await;
    r.unwrap_err()
}

#[tokio::test]
async fn no_answer_is_told_apart_from_half_an_answer() {
    let e = failure(b"").await;
    assert!(
        matches!(e, FetchError::Closed { partial: false }) && e.nothing_came(),
        "{e:?}"
    );
    let e = failure(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    assert!(
        matches!(e, FetchError::Closed { partial: true }) && !e.nothing_came(),
        "{e:?}"
    );
    let e = failure(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").await;
    assert!(
        matches!(e, FetchError::Head(_)) && !e.nothing_came(),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
    let addr = hyper_service().await;
    let (_, mut body, kept) = open(connect(addr).await, Method::GET, "/chunks").await;
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "one ");
    drop(body);
    assert!(take(&kept).is_none());
}

#[tokio::test]
async fn a_large_body_streams_in_pieces_and_arrives_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let svc = service_fn(move |_req: Request<Incoming>| {
            let d = Bytes::from(sent.clone());
            async move { Ok::<_, Infallible>(Response::new(Full::new(d))) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let (_, mut body, kept) = open(connect(addr).await, Method::GET, "/").await;
    let (mut got, mut frames) = (Vec::new(), 0);
    while let Some(f) = body.frame().await {
        let d = f.unwrap().into_data().unwrap();
        assert!(d.len() <= 64 * 1024, "a frame of {} bytes", d.len());
        got.extend_from_slice(&d);
        frames += 1;
    }
    assert!(frames > 3 * 1_000_000 / (64 * 1024));
    assert!(got == data, "the body arrived changed");
    assert!(take(&kept).is_some());
}
