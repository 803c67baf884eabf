//! The data plane's UDP socket: dual-stack where the host has IPv6 (IPv4 peers appear as
//! v4-mapped addresses on the wire and as plain IPv4 everywhere else), 4 MiB buffers, and
//! batching through quinn-udp: `recvmmsg` with receive offload (one buffer may hold many
//! datagrams of one size) and segmentation offload for runs of equal-size sends.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::outbox::{Group, Outbox};

const SOCKET_BUFFER: usize = 4 << 20;
/// Receive buffers per `recvmmsg`, each large enough for a whole offloaded batch.
const RECV_BUFFERS: usize = 16;
const RECV_BUFFER: usize = 65_536;
/// How long a send waits for room in a full socket buffer before the datagrams are dropped.
const SEND_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Udp {
    sock: UdpSocket,
    state: UdpSocketState,
    v6: bool,
}

/// A bound socket not yet registered with a runtime: the TUN data plane registers it on its own
/// thread's runtime.
#[derive(Debug)]
pub struct Bound {
    sock: std::net::UdpSocket,
    v6: bool,
}

impl Bound {
    /// Binds `[::]:port` for both families, or `0.0.0.0:port` where IPv6 is unavailable.
    pub fn open(port: u16) -> io::Result<Self> {
        let (sock, v6) = match dual_stack(port) {
            Ok(s) => (s, true),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => (ipv4_only(port)?, false),
        };
        sock.set_nonblocking(true)?;
        Ok(Self { sock, v6 })
    }

    pub fn port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    /// Whether IPv6 peers can be reached.
    pub fn ipv6(&self) -> bool {
        self.v6
    }

    /// Registers the socket with the current tokio runtime.
    pub fn into_udp(self) -> io::Result<Udp> {
        let sock = UdpSocket::from_std(self.sock)?;
        let state = UdpSocketState::new((&sock).into())?;
        // Best effort: the kernel caps these at net.core.[rw]mem_max.
        let _ = state.set_recv_buffer_size((&sock).into(), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size((&sock).into(), SOCKET_BUFFER);
        Ok(Udp {
            sock,
            state,
            v6: self.v6,
        })
    }
}

impl Udp {
    /// [`Bound::open`], registered with the current runtime.
    pub fn bind(port: u16) -> io::Result<Self> {
        Bound::open(port)?.into_udp()
    }

    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.sock.local_addr()?.port())
    }

    /// Whether IPv6 peers can be reached.
    pub fn ipv6(&self) -> bool {
        self.v6
    }

    /// Sends everything in `outbox`, in order, and empties it. Returns how many datagrams
    /// could not be sent (no route for the family, a socket error, or a buffer that stayed full).
    pub async fn send_all(&self, outbox: &mut Outbox) -> u64 {
        let mut dropped = 0;
        for g in outbox.groups(self.state.max_gso_segments()) {
            dropped += self.send_group(outbox.data(), &g).await;
        }
        outbox.clear();
        dropped
    }

    async fn send_group(&self, data: &[u8], g: &Group) -> u64 {
        let Some(to) = self.wire_addr(g.to) else {
            return g.count as u64;
        };
        let contents = &data[g.range.clone()];
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (g.count > 1).then_some(g.segment),
            src_ip: None,
        };
        match self.send_one(&t).await {
            Ok(()) => 0,
            // Segmentation offload refused (quinn-udp turns it off for later sends): one by one.
            Err(e) if g.count > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                let mut dropped = 0;
                for piece in contents.chunks(g.segment) {
                    let t = Transmit {
                        contents: piece,
                        segment_size: None,
                        ..t.clone()
                    };
                    if self.send_one(&t).await.is_err() {
                        dropped += 1;
                    }
                }
                dropped
            }
            Err(_) => g.count as u64,
        }
    }

    async fn send_one(&self, t: &Transmit<'_>) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + SEND_WAIT;
        loop {
            let r = self.sock.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), t)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout_at(deadline, self.sock.writable()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(e),
                    }
                }
                r => return r,
            }
        }
    }

    /// Waits until a datagram may be read. Keeps one waker, the last caller's (one task reads
    /// the socket), where tokio's `readable` joins and leaves a list of waiters on every call.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.sock.poll_recv_ready(cx)).await
    }

    /// Reads what is queued, without waiting, into `bufs`; `WouldBlock` when nothing is.
    ///
    /// A read that fills fewer buffers than it had found the queue empty: the socket is then
    /// taken as not readable until the runtime hears of a new datagram, so that the next call
    /// returns `WouldBlock` without asking the kernel again. (The runtime's readiness is edge
    /// triggered: every datagram that arrives after this read is a new event, none is missed.)
    pub fn try_recv(&self, bufs: &mut RecvBufs) -> io::Result<()> {
        bufs.count = 0;
        let RecvBufs { bufs: b, meta, .. } = bufs;
        let mut slices: Vec<IoSliceMut<'_>> = b.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let room = slices.len().min(meta.len()).min(quinn_udp::BATCH_SIZE);
        let mut got = 0;
        let read = self.sock.try_io(Interest::READABLE, || {
            got = self.state.recv((&self.sock).into(), &mut slices, meta)?;
            if got < room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match read {
            Err(e) if !(e.kind() == io::ErrorKind::WouldBlock && got > 0) => return Err(e),
            _ => {}
        }
        bufs.count = got;
        Ok(())
    }

    fn wire_addr(&self, to: SocketAddr) -> Option<SocketAddr> {
        match (to.ip(), self.v6) {
            (IpAddr::V4(v4), true) => Some(SocketAddr::new(v4.to_ipv6_mapped().into(), to.port())),
            (IpAddr::V6(_), false) => None,
            _ => Some(to),
        }
    }
}

/// Buffers for one batched receive, reused across calls.
#[derive(Debug)]
pub struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    count: usize,
}

impl Default for RecvBufs {
    fn default() -> Self {
        Self {
            bufs: vec![vec![0; RECV_BUFFER]; RECV_BUFFERS],
            meta: vec![RecvMeta::default(); RECV_BUFFERS],
            count: 0,
        }
    }
}

impl RecvBufs {
    /// Every datagram of the last receive with its source.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.bufs[..self.count]
            .iter()
            .zip(&self.meta)
            .flat_map(|(buf, m)| {
                let from = canonical(m.addr);
                let data = &buf[..m.len.min(buf.len())];
                data.chunks(m.stride.max(1)).map(move |d| (from, d))
            })
    }
}

/// An address as the rest of meshd sees it: IPv4 peers as IPv4, not v4-mapped IPv6.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

fn ipv4_only(port: u16) -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn segmented_sends_arrive_as_separate_datagrams_in_order() {
        let a = Udp::bind(0).unwrap();
        let b = Udp::bind(0).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], b.local_port().unwrap()));
        let mut out = Outbox::default();
        let mut sent = Vec::new();
        for i in 0..40u8 {
            let d = vec![i; if i == 39 { 77 } else { 1200 }];
            out.push(to, &d);
            sent.push(d);
        }
        assert_eq!(a.send_all(&mut out).await, 0);
        assert!(out.is_empty());
        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut bufs = RecvBufs::default();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < sent.len() && std::time::Instant::now() < deadline {
            b.readable().await.unwrap();
            match b.try_recv(&mut bufs) {
                Ok(()) => got.extend(bufs.datagrams().map(|(f, d)| (f, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let want_from = SocketAddr::from(([127, 0, 0, 1], a.local_port().unwrap()));
        assert!(got.iter().all(|(f, _)| *f == want_from), "{:?}", got[0].0);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_short_read_ends_the_readiness_until_the_next_datagram_is_heard_of() {
        let a = Udp::bind(0).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = ("127.0.0.1", a.local_port().unwrap());
        let mut bufs = RecvBufs::default();
        let got = |bufs: &RecvBufs| -> Vec<Vec<u8>> {
            bufs.datagrams().map(|(_, d)| d.to_vec()).collect()
        };
        peer.send_to(b"one", to).unwrap();
        a.readable().await.unwrap();
        a.try_recv(&mut bufs).unwrap();
        assert_eq!(got(&bufs), [b"one".to_vec()]);
        // Queued on the socket (loopback delivers within `send_to`), but the runtime has not
        // looked at its events since the short read: not asked for, no system call.
        peer.send_to(b"two", to).unwrap();
        let e = a.try_recv(&mut bufs).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The datagram's own event makes the socket readable again: nothing is missed.
        tokio::time::timeout(Duration::from_secs(5), a.readable())
            .await
            .expect("readable again after a new datagram")
            .unwrap();
        a.try_recv(&mut bufs).unwrap();
        assert_eq!(got(&bufs), [b"two".to_vec()]);
        // A read that fills every buffer leaves the socket readable: the next read asks.
        for i in 0..RECV_BUFFERS + 1 {
            // Different sizes, so that receive offload does not merge them.
            peer.send_to(&vec![7; 10 + i], to).unwrap();
        }
        a.readable().await.unwrap();
        a.try_recv(&mut bufs).unwrap();
        assert_eq!(got(&bufs).len(), RECV_BUFFERS);
        a.try_recv(&mut bufs).unwrap();
        assert_eq!(got(&bufs), [vec![7; 10 + RECV_BUFFERS]]);
    }

    #[tokio::test]
    async fn ipv6_and_ipv4_peers_on_one_socket() {
        let a = Udp::bind(0).unwrap();
        if !a.ipv6() {
            return; // a host without IPv6: the IPv4 path is covered above
        }
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let port = a.local_port().unwrap();
        v4.send_to(b"four", ("127.0.0.1", port)).unwrap();
        v6.send_to(b"six", ("::1", port)).unwrap();
        let mut bufs = RecvBufs::default();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            a.readable().await.unwrap();
            match a.try_recv(&mut bufs) {
                Ok(()) => seen.extend(bufs.datagrams().map(|(f, d)| (f, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        seen.sort();
        assert_eq!(seen[0], (v4.local_addr().unwrap(), b"four".to_vec()));
        assert_eq!(seen[1], (v6.local_addr().unwrap(), b"six".to_vec()));
        let mut out = Outbox::default();
        out.push(v4.local_addr().unwrap(), b"back");
        assert_eq!(a.send_all(&mut out).await, 0);
        let mut buf = [0u8; 64];
        let (n, from) = v4.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from.port()), (&b"back"[..], port));
    }
}
