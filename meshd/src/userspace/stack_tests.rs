//! Two stacks wired back to back (no WireGuard, no sockets): connect, accept, transfer with
//! backpressure, half-close, and RST for a port nobody listens on.

#![allow(clippy::unwrap_used)] // test code

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::userspace::handle::ConnStream;

pub(crate) const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub(crate) const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// Starts two stacks joined by a lossless link; the link runs until the test ends.
pub(crate) fn pair() -> (Stack, Stack) {
    let (sa, sb, _) = counted_pair();
    (sa, sb)
}

/// Packets that crossed the link of a [`counted_pair`]: (A to B, B to A).
type Crossed = Arc<std::sync::Mutex<(usize, usize)>>;

/// [`pair`], counting the packets that cross the link each way.
fn counted_pair() -> (Stack, Stack, Crossed) {
    let now = Instant::now();
    let (mut a, sa) = StackCore::new(A, "fd00::1".parse().unwrap(), 1420, now);
    let (mut b, sb) = StackCore::new(B, "fd00::2".parse().unwrap(), 1420, now);
    let crossed = Crossed::default();
    let counts = crossed.clone();
    tokio::spawn(async move {
        let (wa, wb) = (a.waker(), b.waker());
        loop {
            let now = Instant::now();
            a.poll(now);
            b.poll(now);
            let moved = !a.device.tx.is_empty() || !b.device.tx.is_empty();
            {
                let mut c = counts.lock().unwrap();
                c.0 += a.device.tx.len();
                c.1 += b.device.tx.len();
            }
            while let Some(p) = a.device.tx.pop_front() {
                b.device.push_rx(&p, Segment::parse(&p));
            }
            while let Some(p) = b.device.tx.pop_front() {
                a.device.push_rx(&p, Segment::parse(&p));
            }
            if !moved {
                let delay = [a.poll_delay(now), b.poll_delay(now)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(Duration::from_millis(5))
                    .min(Duration::from_millis(5));
                tokio::select! {
                    _ = wa.notified() => {}
                    _ = wb.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    });
    (sa, sb, crossed)
}

/// A connection from `sa` to port `port` of `sb` (client, server).
async fn connections(sa: &Stack, sb: &Stack, port: u16) -> (Connection, Connection) {
    let mut l = sb.listen(port).await.unwrap();
    let (client, server) = tokio::join!(sa.connect((B, port).into()), l.accept());
    (client.unwrap(), server.unwrap())
}

/// The same as two byte streams.
async fn streams(sa: &Stack, sb: &Stack, port: u16) -> (ConnStream, ConnStream) {
    let (client, server) = connections(sa, sb, port).await;
    (client.into(), server.into())
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

        client.writer.send(b"hello").await.unwrap();
        drop(client.writer); // half-close
        assert_eq!(read_all(&mut server.reader).await.unwrap(), b"hello");
        // The other direction still works after the half-close.
        server.writer.send(b"world").await.unwrap();
        drop(server.writer);
        assert_eq!(read_all(&mut client.reader).await.unwrap(), b"world");
    })
    .await;
}

#[tokio::test]
async fn large_transfer_with_a_slow_reader() {
    bounded(async {
        let (sa, sb) = pair();
        let (client, mut server) = connections(&sa, &sb, 9000).await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let mut writer = client.writer;
        let send = tokio::spawn(async move {
            for c in sent.chunks(40_000) {
                writer.send(c).await.unwrap();
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
        server.writer.reset();
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
        server.writer.send(b"v6").await.unwrap();
        drop(server.writer);
        assert_eq!(read_all(&mut client.reader).await.unwrap(), b"v6");
        drop(client.writer);
        assert_eq!(read_all(&mut server.reader).await.unwrap(), b"");
    })
    .await;
}

#[tokio::test]
async fn an_answer_is_acknowledged_by_the_next_request_not_a_packet_of_its_own() {
    bounded(async {
        let (sa, sb, crossed) = counted_pair();
        let (mut client, mut server) = streams(&sa, &sb, 8080).await;
        let before = *crossed.lock().unwrap();
        const ROUNDS: usize = 50;
        let mut buf = [0u8; 64];
        for _ in 0..ROUNDS {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            let n = client.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\n");
        }
        let after = *crossed.lock().unwrap();
        // One packet per message each way; an ACK of its own for every message (no delayed
        // ACKs) would double that. A few spare for timers that fire on a slow machine.
        let (to_b, to_a) = (after.0 - before.0, after.1 - before.1);
        assert!(to_b <= ROUNDS + 5, "{to_b} packets for {ROUNDS} requests");
        assert!(to_a <= ROUNDS + 5, "{to_a} packets for {ROUNDS} answers");
    })
    .await;
}

#[tokio::test]
async fn a_connection_as_a_byte_stream() {
    bounded(async {
        let (sa, sb) = pair();
        let (mut client, mut server) = streams(&sa, &sb, 7000).await;

        // Larger than the channels and the socket buffers: writes wait for the reader.
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap(); // FIN; the read half stays open
            let mut back = vec![];
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = vec![];
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "{} of {} bytes", got.len(), data.len());
        server.write_all(b"done").await.unwrap();
        drop(server); // FIN the other way
        assert_eq!(writer.await.unwrap(), b"done");
    })
    .await;
}

#[tokio::test]
async fn a_reset_reaches_a_byte_stream_reader_as_an_error() {
    bounded(async {
        let (sa, sb) = pair();
        let (client, server) = connections(&sa, &sb, 7001).await;
        let mut client = ConnStream::from(client);
        server.writer.reset();
        let mut buf = vec![];
        let e = client.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        // Writing to a reset connection fails instead of waiting.
        let e = async {
            for _ in 0..100 {
                client.write_all(b"x").await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, io::Error>(())
        }
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    })
    .await;
}

#[tokio::test]
async fn a_byte_stream_read_takes_every_queued_chunk_and_a_reset_after_them() {
    bounded(async {
        let (sa, sb) = pair();
        let (client, mut server) = connections(&sa, &sb, 7002).await;
        let mut client = ConnStream::from(client);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        server.writer.send(&data).await.unwrap();
        // Delivered by then, in chunks of at most `CHUNK` bytes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut buf = vec![0; 64 * 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, data.len(), "one read takes all that is queued");
        assert!(buf[..n] == data[..]);
        server.writer.send(b"last").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.writer.reset();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The bytes before the reset first, then the reset.
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last");
        let e = client.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    })
    .await;
}

/// One round of two stacks joined back to back: both poll, then their packets cross.
fn step(a: &mut StackCore, b: &mut StackCore) {
    step_at(a, b, Instant::now());
}

/// [`step`] at a given time (for timers that take longer than a test should).
fn step_at(a: &mut StackCore, b: &mut StackCore, now: Instant) {
    a.poll(now);
    b.poll(now);
    while let Some(p) = a.device.tx.pop_front() {
        b.device.push_rx(&p, Segment::parse(&p));
    }
    while let Some(p) = b.device.tx.pop_front() {
        a.device.push_rx(&p, Segment::parse(&p));
    }
}

/// Two stacks stepped by hand (no link task), and `n` connections from `a` to port 80 of `b`:
/// (a, b, clients, servers). The listener is gone once they are accepted.
async fn stepped_pair(n: usize) -> (StackCore, StackCore, Vec<Connection>, Vec<Connection>) {
    let now = Instant::now();
    let (mut a, sa) = StackCore::new(A, "fd00::1".parse().unwrap(), 1420, now);
    let (mut b, sb) = StackCore::new(B, "fd00::2".parse().unwrap(), 1420, now);
    let servers = tokio::spawn(async move {
        let mut l = sb.listen(80).await.unwrap();
        let mut v = vec![];
        for _ in 0..n {
            v.push(l.accept().await.unwrap());
        }
        v
    });
    let clients = tokio::spawn(async move {
        let mut v = vec![];
        for _ in 0..n {
            v.push(sa.connect((B, 80).into()).await.unwrap());
        }
        v
    });
    for _ in 0..10_000 {
        if servers.is_finished() && clients.is_finished() {
            break;
        }
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
    }
    let (servers, clients) = (servers.await.unwrap(), clients.await.unwrap());
    (a, b, clients, servers)
}

#[tokio::test]
async fn a_round_costs_the_connections_that_changed_not_every_open_one() {
    const OPEN: usize = 100;
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(OPEN).await;
    assert_eq!(a.socket_count(), OPEN);
    // Until no timer (delayed ACKs of the handshakes, ...) is left to fire.
    for _ in 0..100 {
        step(&mut a, &mut b);
        if a.egressed() == 0 && b.egressed() == 0 && a.poll_delay(Instant::now()).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (a.egressed(), b.egressed()),
        (0, 0),
        "idle connections were polled"
    );
    assert_eq!(
        (a.pumped(), b.pumped()),
        (0, 0),
        "idle connections were pumped"
    );

    // One request on one of the hundred connections: one socket each side does anything, and
    // one connection each side has its bytes moved.
    clients[7].writer.send(b"GET").await.unwrap();
    step(&mut a, &mut b);
    assert_eq!((a.pumped(), a.egressed()), (1, 1));
    step(&mut a, &mut b);
    assert_eq!((b.pumped(), b.egressed()), (1, 1));
    let got = servers[7].reader.recv().await.unwrap().unwrap();
    assert_eq!(&got[..], b"GET");
    assert!(clients
        .iter()
        .all(|c| c.reader.sock.lock().socket().recv_queue() == 0));

    // The server read three bytes of a mostly empty buffer: the window it advertised is still
    // open, so the read does not wake the driver for a window update.
    step(&mut a, &mut b);
    assert_eq!((a.pumped(), b.pumped()), (0, 0));

    // The server answers: its connection only, then the client's.
    servers[7].writer.send(b"200").await.unwrap();
    step(&mut a, &mut b);
    assert_eq!((b.pumped(), b.egressed()), (1, 1));
    step(&mut a, &mut b);
    assert_eq!((a.pumped(), b.pumped()), (1, 0));
    let got = clients[7].reader.recv().await.unwrap().unwrap();
    assert_eq!(&got[..], b"200");
}

/// A bulk transfer's segments reach the receiving stack joined in runs, and every byte arrives in
/// order: smoltcp takes segments larger than the link's MTU.
#[tokio::test]
async fn a_bulk_transfer_reaches_the_stack_in_joined_runs() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(1).await;
    let (client, mut server) = (clients.remove(0), servers.remove(0));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let mut writer = client.writer;
    let send = tokio::spawn(async move {
        writer.send(&sent).await.unwrap();
        drop(writer);
    });
    let before = b.device.joined;
    let mut segments = 0;
    let mut got = vec![];
    for _ in 0..100_000 {
        a.poll(Instant::now());
        segments += a.device.tx.len();
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
        while let Ok(Some(c)) = tokio::time::timeout(Duration::ZERO, server.reader.recv()).await {
            got.extend_from_slice(&c.unwrap());
        }
        if got.len() == data.len() {
            break;
        }
    }
    send.await.unwrap();
    assert!(got == data, "{} of {} bytes", got.len(), data.len());
    let joined = b.device.joined - before;
    assert!(
        joined as usize > segments / 2,
        "{joined} of {segments} segments joined"
    );
}

/// Segments that arrive joined after a lost one draw the duplicate acknowledgements that make
/// the sender resend at once (two, one per part of a run taken as two, left it to its 1 s
/// retransmission timeout at the end of a response).
#[tokio::test]
async fn a_loss_before_a_joined_run_is_resent_at_once() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(1).await;
    let (mut client, mut server) = (clients.remove(0), servers.remove(0));
    // First a transfer that opens the sender's congestion window.
    let warm = 300_000;
    let mut writer = client.writer;
    let send = tokio::spawn(async move {
        writer.send(&vec![1; warm]).await.unwrap();
        writer
    });
    let mut got = 0;
    for _ in 0..100_000 {
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
        while let Ok(Some(c)) = tokio::time::timeout(Duration::ZERO, server.reader.recv()).await {
            got += c.unwrap().len();
        }
        if got == warm {
            break;
        }
    }
    assert_eq!(got, warm);
    client.writer = send.await.unwrap();
    for _ in 0..20 {
        step(&mut a, &mut b);
    }
    // Then a burst of segments at once (the send buffer fills before `a` polls).
    client.writer.send(&[5; 12_000]).await.unwrap();
    a.poll(Instant::now());
    let mut sent: Vec<Vec<u8>> = a.device.tx.drain(..).collect();
    assert!(sent.len() >= 4, "{} segments", sent.len());
    let lost = sent.remove(0);
    let lost_seq = u32::from_be_bytes(lost[24..28].try_into().unwrap());
    for p in &sent {
        b.device.push_rx(p, Segment::parse(p));
    }
    assert!(
        b.device.joined > 0,
        "the segments after the loss were joined"
    );
    b.poll(Instant::now());
    let dup_acks = b
        .device
        .tx
        .iter()
        .filter(|p| {
            let no_payload = p.len() == 20 + usize::from(p[32] >> 4) * 4;
            no_payload && p[28..32] == lost_seq.to_be_bytes()
        })
        .count();
    // The first segment, three more one by one, the rest but the last, the last.
    assert_eq!(
        dup_acks,
        6.min(sent.len()),
        "duplicate ACKs for the lost segment"
    );
    // The sender resends the lost segment on them, with no time passing.
    let now = Instant::now();
    let acks: Vec<Vec<u8>> = b.device.tx.drain(..).collect();
    for p in &acks {
        a.device.push_rx(p, Segment::parse(p));
    }
    a.poll(now);
    let resent =
        a.device.tx.iter().any(|p| {
            p[24..28] == lost_seq.to_be_bytes() && p.len() > 20 + usize::from(p[32] >> 4) * 4
        });
    assert!(resent, "the lost segment was not resent at once");
}

/// A read that empties a full receive buffer wakes the driver for the window update: in rounds
/// where no time passes (no timer can fire, no probe), the sender gets to send again.
#[tokio::test]
async fn a_reader_that_empties_a_full_window_reopens_it() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(1).await;
    let (mut client, mut server) = (clients.remove(0), servers.remove(0));
    let send = tokio::spawn(async move {
        client
            .writer
            .send(&vec![7u8; 3 * SOCKET_BUFFER])
            .await
            .unwrap();
        client
    });
    let queued = |server: &Connection| server.reader.sock.lock().socket().recv_queue();
    // Until the server's buffer stops filling: the window is closed.
    let (mut last, mut still) = (0, 0);
    for _ in 0..10_000 {
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
        let now = queued(&server);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still == 20 {
            break;
        }
    }
    assert!(last > SOCKET_BUFFER * 3 / 4, "{last} bytes queued");
    let mut got = 0;
    while got < last {
        got += server.reader.recv().await.unwrap().unwrap().len();
    }
    assert_eq!(queued(&server), 0);
    for _ in 0..4 {
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
    }
    assert!(
        queued(&server) > 0,
        "the window stayed closed after the reader emptied the buffer"
    );
    send.abort();
}

/// Bytes still unread when the socket's TIME-WAIT ends (smoltcp then clears its buffer and
/// forgets the FIN) are read all the same, and then the end of the stream, not a reset.
#[tokio::test]
async fn bytes_unread_when_time_wait_ends_are_still_read_then_the_end() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(1).await;
    let (client, mut server) = (clients.remove(0), servers.remove(0));
    let Connection {
        reader: mut unread,
        writer,
        ..
    } = client;
    drop(writer); // the client closes first, so its side ends in TIME-WAIT
    server.writer.send(b"after the close").await.unwrap();
    drop(server);
    let state = |r: &ConnReader| r.sock.lock().socket().state();
    for _ in 0..100 {
        step(&mut a, &mut b);
        if state(&unread) == tcp::State::TimeWait {
            break;
        }
    }
    assert_eq!(state(&unread), tcp::State::TimeWait);
    // Past smoltcp's 10 s TIME-WAIT, before the connection's own timeout.
    let later = Instant::now() + Duration::from_secs(15);
    for _ in 0..4 {
        step_at(&mut a, &mut b, later);
    }
    assert_eq!(state(&unread), tcp::State::Closed, "TIME-WAIT did not end");
    assert_eq!(read_all(&mut unread).await.unwrap(), b"after the close");
}

/// A server that answers without reading the request and goes away: the client's remaining
/// bytes are taken and discarded (or refused), never left waiting for a window that stays shut.
#[tokio::test]
async fn a_writer_is_not_left_waiting_when_the_reader_went_away() {
    bounded(async {
        let (sa, sb) = pair();
        let (client, server) = connections(&sa, &sb, 7003).await;
        let mut client = ConnStream::from(client);
        let mut server = ConnStream::from(server);
        let upload = tokio::spawn(async move {
            let chunk = vec![1u8; 64 * 1024];
            for _ in 0..(20 * 16) {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            client
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(server);
        let mut client = upload.await.unwrap();
        let mut answer = vec![];
        let _ = client.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    })
    .await;
}

/// A connection dropped with bytes unread is reset: the peer's writes fail, instead of going on
/// into a socket nobody reads (the rest of a download whose client left).
#[tokio::test]
async fn a_connection_dropped_with_bytes_unread_is_reset() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(1).await;
    let (client, mut server) = (clients.remove(0), servers.remove(0));
    let download = tokio::spawn(async move {
        let r = server.writer.send(&vec![7u8; 8 * SOCKET_BUFFER]).await;
        (r, server)
    });
    // Until the client's buffer holds part of it.
    let queued = |c: &Connection| c.reader.sock.lock().socket().recv_queue();
    for _ in 0..10_000 {
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
        if queued(&client) > 0 {
            break;
        }
    }
    assert!(queued(&client) > 0);
    drop(client);
    for _ in 0..10_000 {
        if download.is_finished() {
            break;
        }
        step(&mut a, &mut b);
        tokio::task::yield_now().await;
    }
    let (sent, mut server) = download.await.unwrap();
    let e = sent.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    let e = bounded(server.reader.recv()).await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

/// A stopped driver fails its connections' reads and writes instead of leaving them waiting.
#[tokio::test]
async fn a_stopped_stack_fails_reads_and_writes() {
    let (a, _b, mut clients, _servers) = stepped_pair(1).await;
    let mut client = clients.remove(0);
    drop(a);
    let e = bounded(client.reader.recv()).await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    let e = bounded(client.writer.send(b"x")).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}

/// Closed connections give their sockets back, however they end, though a round looks only at
/// the connections that changed: a finished one is removed in the round after its last segment
/// went out, which nothing but that segment's own egress asks for.
#[tokio::test]
async fn closed_connections_give_their_sockets_back() {
    let (mut a, mut b, mut clients, mut servers) = stepped_pair(3).await;
    let settle = |a: &mut StackCore, b: &mut StackCore| {
        for _ in 0..10 {
            step(a, b);
        }
    };
    // A client resets while its server holds on and says nothing: the RST is the client
    // socket's last packet, and nothing comes back to look at it again.
    clients.remove(1).writer.reset();
    settle(&mut a, &mut b);
    assert_eq!(a.socket_count(), 2, "a reset connection kept its socket");
    drop(servers.remove(1));
    // Both sides close; the client closes and the server reads to the end.
    drop((clients.remove(0), servers.remove(0)));
    drop(clients.remove(0));
    let mut last = servers.remove(0);
    for _ in 0..1_000 {
        step(&mut a, &mut b);
        let mut buf = [0u8; 64];
        let read = std::future::poll_fn(|cx| {
            let mut rb = tokio::io::ReadBuf::new(&mut buf);
            let r = last
                .reader
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len());
            std::task::Poll::Ready(r)
        })
        .await;
        match read {
            std::task::Poll::Ready(Ok(0)) => break, // end of stream
            std::task::Poll::Ready(r) => {
                r.unwrap();
            }
            std::task::Poll::Pending => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    drop(last);
    for _ in 0..1_000 {
        if (a.socket_count(), b.socket_count()) == (0, 0) {
            break;
        }
        step(&mut a, &mut b);
        if a.poll_delay(Instant::now()) != Some(Duration::ZERO)
            && b.poll_delay(Instant::now()) != Some(Duration::ZERO)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert_eq!((a.socket_count(), b.socket_count()), (0, 0));
}

#[test]
fn packets_are_matched_to_their_flow() {
    use crate::packet::{build, TcpFlags};
    let flow = |p: &[u8]| Segment::parse(p).map(|s| (s.ends, s.initial_syn));
    let peer = Ipv4Addr::new(100, 64, 0, 9);
    let v4 = |flags: TcpFlags| build::tcp_v4(peer, A, 50000, 80, flags, b"");
    let ours: SocketAddr = (A, 80).into();
    let theirs: SocketAddr = (peer, 50000).into();
    let syn = v4(TcpFlags::SYN);
    assert_eq!(flow(&syn), Some(((ours, theirs), true)));
    let syn_ack = v4(TcpFlags::SYN | TcpFlags::ACK);
    assert_eq!(flow(&syn_ack), Some(((ours, theirs), false)));
    let mut dont_fragment = v4(TcpFlags::ACK);
    dont_fragment[6] = 0x40;
    assert_eq!(flow(&dont_fragment), Some(((ours, theirs), false)));
    let udp = build::udp_v4(peer, A, 50000, 80, b"");
    assert_eq!(flow(&udp), None, "UDP");
    let mut later = syn.clone();
    later[6..8].copy_from_slice(&185u16.to_be_bytes());
    assert_eq!(flow(&later), None, "a later fragment");
    assert_eq!(flow(&syn[..33]), None, "cut short");
    assert_eq!(flow(&[]), None);
    assert_eq!(flow(&[0x4f; 30]), None);

    let (src, dst): (Ipv6Addr, Ipv6Addr) = ("fd00::9".parse().unwrap(), "fd00::1".parse().unwrap());
    let v6 = build::tcp_v6(src, dst, 443, 8443, TcpFlags::SYN, b"");
    let ends = ((dst, 8443).into(), (src, 443).into());
    assert_eq!(flow(&v6), Some((ends, true)));
    let mut not_tcp = v6;
    not_tcp[6] = 59; // "no next header"
    assert_eq!(flow(&not_tcp), None);
}

/// Hands what the stack sends to a WireGuard core and what the core delivers back to the stack.
struct ToStack<'a>(&'a mut QueueDevice);

impl crate::wg::Sink for ToStack<'_> {
    fn send_udp(&mut self, _: SocketAddr, _: &[u8]) {}
    fn room(&mut self, len: usize) -> &mut [u8] {
        self.0.rx_room(len)
    }
    fn deliver(&mut self, len: usize, info: &crate::packet::PacketInfo) {
        self.0.push_room(len, Segment::of(info));
    }
}

#[tokio::test]
async fn a_connect_to_an_address_no_peer_owns_fails_as_unreachable() {
    // The stack in front of a WireGuard core whose netmap lists nobody (B left it, say).
    let now = Instant::now();
    let (mut core, stack) = StackCore::new(A, "fd00::1".parse().unwrap(), 1420, now);
    let filter = crate::filter::PacketFilter::new(crate::filter::FilterLimits::default());
    let mut peers = crate::wg::Peers::new(keys::PrivateKey::generate(), filter);
    tokio::spawn(async move {
        let wake = core.waker();
        loop {
            let now = Instant::now();
            core.poll(now);
            while let Some(p) = core.device.tx.pop_front() {
                peers.handle_outbound(&p, now, &mut ToStack(&mut core.device));
            }
            peers.tick(now, &mut ToStack(&mut core.device));
            if core.device.rx.is_empty() {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    });
    bounded(async {
        for remote in [SocketAddr::from((B, 80)), "[fd00::2]:80".parse().unwrap()] {
            let err = stack.connect(remote).await.err().unwrap();
            assert_eq!(
                err.kind(),
                io::ErrorKind::HostUnreachable,
                "{remote}: {err}"
            );
            assert!(err.to_string().contains("no peer"), "{err}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_connections_is_accepted_beyond_the_ready_listening_sockets() {
    bounded(async {
        let (sa, sb) = pair();
        let mut l = sb.listen(7000).await.unwrap();
        // Far more SYNs in one round than listening sockets are kept ready (the kernel's listen
        // backlog takes such a burst too); nobody accepts until all have connected.
        const N: usize = 200;
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..N {
            let sa = sa.clone();
            connects.spawn(async move { sa.connect((B, 7000).into()).await });
        }
        let mut clients = Vec::new();
        while let Some(r) = connects.join_next().await {
            clients.push(r.unwrap().expect("connected"));
        }
        for _ in 0..N {
            let mut server = l.accept().await.unwrap();
            server.writer.send(b"hi").await.unwrap();
        }
        for c in &mut clients {
            assert_eq!(&c.reader.recv().await.unwrap().unwrap()[..], b"hi");
        }
    })
    .await;
}
