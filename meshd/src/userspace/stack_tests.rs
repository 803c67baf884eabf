//! Two stacks wired back to back (no WireGuard, no sockets): connect, accept, transfer with
//! backpressure, half-close, and RST for a port nobody listens on.

#![allow(clippy::unwrap_used)] // test code

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

pub(crate) const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub(crate) const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// Starts two stacks joined by a lossless link; the link runs until the test ends.
pub(crate) fn pair() -> (Stack, Stack) {
    let now = Instant::now();
    let (mut a, sa) = StackCore::new(A, "fd00::1".parse().unwrap(), 1420, now);
    let (mut b, sb) = StackCore::new(B, "fd00::2".parse().unwrap(), 1420, now);
    tokio::spawn(async move {
        let (wa, wb) = (a.waker(), b.waker());
        loop {
            let now = Instant::now();
            a.poll(now);
            b.poll(now);
            let moved = !a.device.tx.is_empty() || !b.device.tx.is_empty();
            while let Some(p) = a.device.tx.pop_front() {
                b.device.push_rx(&p);
            }
            while let Some(p) = b.device.tx.pop_front() {
                a.device.push_rx(&p);
            }
            if !moved {
                tokio::select! {
                    _ = wa.notified() => {}
                    _ = wb.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
    });
    (sa, sb)
}

async fn read_all(r: &mut ConnReader) -> io::Result<Vec<u8>> {
    let mut out = vec![];
    while let Some(c) = r.recv().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn connect_accept_transfer_half_close() {
    bounded(async {
        let (sa, sb) = pair();
        let mut l = sb.listen(80).await.unwrap();
        assert!(sb.listen(80).await.is_err(), "port already taken");
        let remote = SocketAddr::from((B, 80));
        let (client, server) = tokio::join!(sa.connect(remote), l.accept());
        let mut client = client.unwrap();
        let mut server = server.unwrap();
        assert_eq!(server.remote, client.local);
        assert_eq!(client.remote, remote);

        client
            .writer
            .send(Bytes::from_static(b"hello"))
            .await
            .unwrap();
        drop(client.writer); // half-close
        assert_eq!(read_all(&mut server.reader).await.unwrap(), b"hello");
        // The other direction still works after the half-close.
        server
            .writer
            .send(Bytes::from_static(b"world"))
            .await
            .unwrap();
        drop(server.writer);
        assert_eq!(read_all(&mut client.reader).await.unwrap(), b"world");
    })
    .await;
}

#[tokio::test]
async fn large_transfer_with_a_slow_reader() {
    bounded(async {
        let (sa, sb) = pair();
        let mut l = sb.listen(9000).await.unwrap();
        let (client, server) = tokio::join!(sa.connect((B, 9000).into()), l.accept());
        let (client, mut server) = (client.unwrap(), server.unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let mut writer = client.writer;
        let send = tokio::spawn(async move {
            for c in sent.chunks(40_000) {
                writer.send(Bytes::copy_from_slice(c)).await.unwrap();
            }
        });
        let mut got = vec![];
        while let Some(c) = server.reader.recv().await {
            got.extend_from_slice(&c.unwrap());
            if got.len() < 500_000 {
                // Slow at first: the window must close and reopen, nothing lost.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        send.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data);
    })
    .await;
}

#[tokio::test]
async fn no_listener_is_refused_and_reset_reaches_the_reader() {
    bounded(async {
        let (sa, sb) = pair();
        let e = sa.connect((B, 81).into()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let e = sa
            .connect((Ipv4Addr::new(192, 0, 2, 1), 80).into())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrNotAvailable);

        let mut l = sb.listen(82).await.unwrap();
        let (client, server) = tokio::join!(sa.connect((B, 82).into()), l.accept());
        let (mut client, server) = (client.unwrap(), server.unwrap());
        server.writer.reset().await;
        let e = read_all(&mut client.reader).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);

        // A dropped listener stops accepting.
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = sa.connect((B, 82).into()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    })
    .await;
}

#[tokio::test]
async fn ipv6_works() {
    bounded(async {
        let (sa, sb) = pair();
        let mut l = sb.listen(443).await.unwrap();
        let to: SocketAddr = "[fd00::2]:443".parse().unwrap();
        let (client, server) = tokio::join!(sa.connect(to), l.accept());
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert!(server.remote.is_ipv6());
        server.writer.send(Bytes::from_static(b"v6")).await.unwrap();
        drop(server.writer);
        assert_eq!(read_all(&mut client.reader).await.unwrap(), b"v6");
        drop(client.writer);
        assert_eq!(read_all(&mut server.reader).await.unwrap(), b"");
    })
    .await;
}
