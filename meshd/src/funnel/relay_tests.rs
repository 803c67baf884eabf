#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

const SIZES: Sizes = Sizes {
    request_buf: 8 * 1024,
    response_buf: 64 * 1024,
    linger: Duration::from_millis(300),
};

/// Two ends of a loopback TCP connection.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// The edge's end and the service's end of a relay running in a task.
async fn relayed() -> (TcpStream, TcpStream, JoinHandle<io::Result<()>>) {
    let (edge, mut edge_side) = pair().await;
    let (mut local_side, service) = pair().await;
    let task = tokio::spawn(async move { relay(&mut edge_side, &mut local_side, SIZES).await });
    (edge, service, task)
}

fn response(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sends `total` bytes in 16 KiB writes, then shuts down; stops quietly at the first failure.
async fn upload(mut w: tokio::net::tcp::OwnedWriteHalf, total: usize, pause: Duration) -> usize {
    let chunk = vec![0x55u8; 16 * 1024];
    let mut sent = 0;
    while sent < total {
        if w.write_all(&chunk).await.is_err() {
            return sent;
        }
        sent += chunk.len();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = w.shutdown().await;
    sent
}

#[tokio::test]
async fn a_service_that_answers_without_reading_the_request_still_delivers_its_whole_answer() {
    // Small enough to leave the service's socket before it closes (a bigger answer would be cut
    // by the service's own reset, whatever relays it).
    let want = response(32 * 1024);
    for round in 0..5 {
        let (edge, mut service, task) = relayed().await;
        let (mut edge_r, edge_w) = edge.into_split();
        let sending = tokio::spawn(upload(edge_w, 8 << 20, Duration::ZERO));
        // The service reads a little of the request, answers, and closes with the rest unread
        // (the kernel resets the connection).
        let mut head = [0u8; 1024];
        service.read_exact(&mut head).await.unwrap();
        service.write_all(&want).await.unwrap();
        drop(service);

        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), edge_r.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(
            got == want,
            "round {round}: {} of {} bytes",
            got.len(),
            want.len()
        );
        // The upload was taken to its end (and dropped), and the relay ended without error.
        assert_eq!(sending.await.unwrap(), 8 << 20, "round {round}");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn an_edge_that_goes_on_sending_after_the_answer_is_cut_off_after_the_linger() {
    let (edge, mut service, task) = relayed().await;
    let (mut edge_r, edge_w) = edge.into_split();
    // 16 KiB every 10 ms, for up to 20 s.
    let sending = tokio::spawn(upload(edge_w, 32 << 20, Duration::from_millis(10)));
    let mut head = [0u8; 1024];
    service.read_exact(&mut head).await.unwrap();
    service.write_all(b"early answer").await.unwrap();
    drop(service);
    let mut got = Vec::new();
    edge_r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"early answer");

    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let lingered = answered.elapsed();
    assert!(
        lingered >= Duration::from_millis(250) && lingered < Duration::from_secs(3),
        "{lingered:?}"
    );
    // The relay's end closed the edge's stream: its sending fails long before 32 MiB.
    let sent = tokio::time::timeout(Duration::from_secs(5), sending)
        .await
        .unwrap()
        .unwrap();
    assert!(sent < 32 << 20, "{sent}");
}

#[tokio::test]
async fn each_end_of_stream_is_passed_on_and_a_service_that_reads_everything_gets_it() {
    let (mut edge, mut service, task) = relayed().await;
    let request = response(300 * 1024);
    edge.write_all(&request).await.unwrap();
    edge.shutdown().await.unwrap();
    // The service sees the request and its end, then answers and ends.
    let mut got = Vec::new();
    service.read_to_end(&mut got).await.unwrap();
    assert!(got == request, "{} bytes", got.len());
    service.write_all(b"done").await.unwrap();
    service.shutdown().await.unwrap();
    let mut answer = Vec::new();
    edge.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"done");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_half_closed_service_still_gets_the_request_for_as_long_as_it_takes() {
    // Only a service that stopped reading is cut off after the linger: one that ended its answer
    // and reads on gets everything, however slow the edge.
    let (mut edge, mut service, task) = relayed().await;
    service.write_all(b"first").await.unwrap();
    service.shutdown().await.unwrap();
    let mut answer = Vec::new();
    edge.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"first");
    tokio::time::sleep(SIZES.linger * 2).await;
    edge.write_all(b"late request").await.unwrap();
    edge.shutdown().await.unwrap();
    let mut got = Vec::new();
    service.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"late request");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_edge_that_resets_ends_the_relay_with_the_error() {
    let (edge, mut service, task) = relayed().await;
    edge.set_zero_linger().unwrap();
    drop(edge);
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        // The service keeps answering into a stream whose reader is gone.
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..200 {
            if service.write_all(&chunk).await.is_err() {
                break;
            }
        }
        task.await.unwrap()
    })
    .await
    .unwrap();
    assert!(r.is_err(), "{r:?}");
}
