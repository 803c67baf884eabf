//! Userspace networking (`meshd up --userspace`): no root, no TUN device. A smoltcp TCP/IP stack
//! ([`stack`]) owns the node's mesh addresses; packets from peers go into it and its packets go
//! out through the WireGuard core. Local programs reach peers through a SOCKS5 proxy on loopback
//! ([`socks5`]); inbound TCP is accepted with [`Stack::listen`] (used by `--serve-tcp` here, and
//! later by funnel/serve ingress).
//!
//! The driver has the shape of the TUN data plane (`daemon::dataplane`): one task owns the UDP
//! socket, the [`Peers`] core and the stack, does a bounded batch of work per wake-up, and sleeps
//! until a datagram, an application's request, the stack's next timer (smoltcp `poll_delay`),
//! a `meshd ping` request or the 100 ms WireGuard tick. As in TUN mode, `meshd ping`'s echo
//! replies are taken out of the inbound path before the stack sees them; echo requests to the
//! node are answered by the stack.

mod coalesce;
pub mod device;
pub mod handle;
mod socket;
pub mod socks5;
pub mod stack;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::daemon::outbox::Outbox;
use crate::daemon::udp::{RecvBufs, Udp};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::daemon::api::Status;
use crate::daemon::control_loop::ControlState;
use crate::daemon::dataplane::{apply_netmap, first_change, next_control, snapshot, Wiring};
use crate::daemon::ping::Pings;
use crate::packet::PacketInfo;
use crate::wg::{Peers, Sink};
use device::{QueueDevice, Segment};
pub use handle::{ConnReader, ConnStream, ConnWriter, Connection, Listener, Stack};
pub use stack::StackCore;

/// Batched socket reads per wake-up before the loop looks at its other sources.
const RECV_ROUNDS: usize = 8;
/// Packets waiting for the stack above which the driver stops reading its socket.
pub(crate) const RX_BACKLOG: usize = device::QUEUE / 4;
const TICK: Duration = Duration::from_millis(100);

/// The core's output: datagrams for the UDP socket (sent in batches after each round, as in TUN
/// mode), packets into the stack's device.
struct StackSink<'a> {
    outbox: &'a mut Outbox,
    device: &'a mut QueueDevice,
    /// `meshd ping`'s replies are taken out here, before the stack sees them.
    pings: &'a mut Pings,
}

impl Sink for StackSink<'_> {
    fn send_udp(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.outbox.push(to, datagram);
    }

    fn room(&mut self, len: usize) -> &mut [u8] {
        self.device.rx_room(len)
    }

    fn deliver(&mut self, len: usize, info: &PacketInfo) {
        if self.pings.intercept(info, Instant::now) {
            return;
        }
        self.device.push_room(len, Segment::of(info));
    }
}

/// Runs the stack, its peers and their socket until `shutdown` fires or the node is revoked.
pub async fn run(
    mut core: StackCore,
    udp: Arc<Udp>,
    mut peers: Peers,
    wiring: Wiring,
) -> io::Result<()> {
    let Wiring {
        mut control,
        coord_up,
        status,
        shutdown,
        me,
        pings: mut ping_rx,
    } = wiring;
    let mut pings = Pings::default();
    let wake = core.waker();
    let mut urecv = RecvBufs::default();
    let mut outbox = Outbox::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let initial = control.borrow_and_update().clone();
    if let Some(ControlState::Netmap(map)) = initial {
        apply_netmap(&mut peers, &map);
    }
    // One timer and one wake-up registration for the whole loop, not one of each per round: a
    // timer moved later is a store (tokio re-files it only when it fires), one moved earlier is
    // re-filed at once.
    let timer = tokio::time::sleep(TICK);
    tokio::pin!(timer);
    let woken = wake.notified();
    tokio::pin!(woken);
    // The netmap's changes and the shutdown: futures kept across rounds as well (`control`
    // itself stays for the ping resolver to read the current netmap).
    let changed = next_control(control.clone());
    tokio::pin!(changed);
    let stopped = first_change(shutdown);
    tokio::pin!(stopped);
    loop {
        let now = Instant::now();
        core.poll(now);
        flush(&mut core, &mut peers, &mut outbox, &mut pings, now);
        if !outbox.is_empty() {
            // What is not sent is lost, as a full link would lose it; TCP sends it again.
            udp.send_all(&mut outbox).await;
        }
        let delay = if core.device.rx.is_empty() {
            core.poll_delay(Instant::now())
                .map_or(TICK, |d| d.min(TICK))
        } else {
            Duration::ZERO
        };
        timer.as_mut().reset(tokio::time::Instant::now() + delay);
        tokio::select! {
            Some(req) = ping_rx.recv() => {
                let now = Instant::now();
                // Resolved against the latest netmap, as the SOCKS5 resolver does.
                let pkt = match &*control.borrow() {
                    Some(ControlState::Netmap(map)) => pings.request(&me, &map.peers, req, now),
                    _ => pings.request(&me, &[], req, now),
                };
                if let Some(pkt) = pkt {
                    let mut sink = StackSink {
                        outbox: &mut outbox, device: &mut core.device, pings: &mut pings,
                    };
                    peers.handle_outbound(&pkt, now, &mut sink);
                }
            }
            r = udp.readable() => {
                r?;
                let now = Instant::now();
                let mut sink = StackSink {
                    outbox: &mut outbox, device: &mut core.device, pings: &mut pings,
                };
                // Batched reads: the socket has receive offload on, so one buffer may hold
                // several datagrams (a sender's segmentation offload), split here by their size.
                // Reading stops while the stack has a backlog (it takes it at the top of the
                // loop): one read can carry hundreds of packets, and what does not fit the
                // device's queue would be lost while the kernel's socket buffer had room.
                for _ in 0..RECV_ROUNDS {
                    if sink.device.backlog() >= RX_BACKLOG {
                        break;
                    }
                    match udp.try_recv(&mut urecv) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // An ICMP error for an earlier send, say: not fatal.
                        Err(_) => continue,
                    }
                    for (from, d) in urecv.datagrams() {
                        peers.handle_datagram(from, d, now, &mut sink);
                    }
                }
            }
            () = &mut woken => woken.set(wake.notified()),
            () = &mut timer => {}
            _ = tick.tick() => {
                let mut sink = StackSink {
                    outbox: &mut outbox, device: &mut core.device, pings: &mut pings,
                };
                let now = Instant::now();
                peers.tick(now, &mut sink);
                pings.expire(now);
                publish(&status, &peers, &me, &coord_up, &core);
            }
            (state, rx) = &mut changed => {
                let Some(state) = state else {
                    return Ok(());
                };
                changed.set(next_control(rx));
                match state {
                    Some(ControlState::Netmap(map)) => {
                        apply_netmap(&mut peers, &map);
                        let mut sink = StackSink {
                            outbox: &mut outbox, device: &mut core.device, pings: &mut pings,
                        };
                        peers.replay_pending(Instant::now(), &mut sink);
                        // `meshd status` lists a new peer as soon as packets can reach it.
                        publish(&status, &peers, &me, &coord_up, &core);
                    }
                    Some(ControlState::Revoked(_)) => return Ok(()),
                    None => {}
                }
            }
            () = &mut stopped => return Ok(()),
        }
    }
}

/// Replaces what `meshd status` shows with the driver's figures now.
fn publish(
    status: &watch::Sender<Status>,
    peers: &Peers,
    me: &proto::Node,
    coord_up: &watch::Receiver<bool>,
    core: &StackCore,
) {
    let mut s = snapshot(peers, me, *coord_up.borrow());
    s.drops.stack_queue_full = core.device.dropped;
    status.send_replace(s);
}

/// Hands the stack's outgoing packets to the WireGuard core.
fn flush(
    core: &mut StackCore,
    peers: &mut Peers,
    outbox: &mut Outbox,
    pings: &mut Pings,
    now: Instant,
) {
    while let Some(p) = core.device.tx.pop_front() {
        let mut sink = StackSink {
            outbox,
            device: &mut core.device,
            pings,
        };
        peers.handle_outbound(&p, now, &mut sink);
        core.device.recycle(p);
    }
}

/// Resolves names against the latest netmap: a peer's name or fqdn (any case, trailing dot or
/// not) to its IPv4 address.
pub fn netmap_resolver(control: watch::Receiver<Option<ControlState>>) -> socks5::Resolver {
    Arc::new(move |name: &str| {
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(ip);
        }
        let state = control.borrow();
        let Some(ControlState::Netmap(map)) = &*state else {
            return None;
        };
        map.peers
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name) || p.fqdn.eq_ignore_ascii_case(name))
            .map(|p| IpAddr::V4(p.ipv4))
    })
}

/// Copies bytes both ways between a mesh connection and a local TCP stream until both directions
/// are finished. `early` is data the local side sent ahead (after a SOCKS request). A FIN on one
/// side becomes a FIN on the other; a reset on either side resets the other.
pub async fn splice(conn: Connection, mut tcp: TcpStream, early: Vec<u8>) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let (up, down) = pump(conn, &mut tcp, early).await;
    if let Err(e) = &down {
        if e.kind() == io::ErrorKind::ConnectionReset {
            // Pass the peer's reset on: closing with linger 0 sends RST.
            #[allow(deprecated)]
            let _ = tcp.set_linger(Some(Duration::ZERO));
        }
    }
    down.and(up)
}

/// A mesh connection as an ordinary byte stream (for code written against `AsyncRead` and
/// `AsyncWrite`, such as an HTTP client or the funnel ingress).
pub fn into_io(conn: Connection) -> ConnStream {
    conn.into()
}

/// The two directions of [`splice`]: (local → mesh, mesh → local).
async fn pump<S>(
    conn: Connection,
    local: &mut S,
    early: Vec<u8>,
) -> (io::Result<()>, io::Result<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Connection {
        mut reader,
        mut writer,
        ..
    } = conn;
    let (mut r, mut w) = tokio::io::split(local);
    let up = async {
        writer.send(&early).await?;
        let mut buf = vec![0; stack::CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return Ok(()), // dropping `writer` sends FIN
                Ok(n) => writer.send(&buf[..n]).await?,
                Err(e) => {
                    writer.reset();
                    return Err(e);
                }
            }
        }
    };
    let down = async {
        tokio::io::copy(&mut reader, &mut w).await?;
        w.shutdown().await
    };
    tokio::pin!(up, down);
    let (mut up_res, mut down_res) = (None, None);
    while up_res.is_none() || down_res.is_none() {
        tokio::select! {
            r = &mut up, if up_res.is_none() => up_res = Some(r),
            r = &mut down, if down_res.is_none() => {
                let failed = r.is_err();
                down_res = Some(r);
                // The peer is gone: stop reading from the local side too.
                if failed {
                    break;
                }
            }
        }
    }
    (up_res.unwrap_or(Ok(())), down_res.unwrap_or(Ok(())))
}

/// `--serve-tcp MESHPORT:LOCAL`: connections to the node's mesh port are forwarded to a local
/// TCP address (e.g. a service on 127.0.0.1). Runs until the stack stops.
pub async fn serve_tcp(stack: Stack, mesh_port: u16, local: SocketAddr) -> io::Result<()> {
    let mut listener = stack.listen(mesh_port).await?;
    info!(mesh_port, %local, "forwarding mesh TCP port to a local address");
    while let Some(conn) = listener.accept().await {
        tokio::spawn(async move {
            let remote = conn.remote;
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(local)).await {
                Ok(Ok(tcp)) => {
                    if let Err(e) = splice(conn, tcp, vec![]).await {
                        debug!(%remote, "serve-tcp: {e}");
                    }
                }
                Ok(Err(e)) => {
                    warn!(%local, "serve-tcp: local service: {e}");
                    conn.writer.reset();
                }
                Err(_) => {
                    warn!(%local, "serve-tcp: local service did not answer");
                    conn.writer.reset();
                }
            }
        });
    }
    Ok(())
}

/// Parses `--serve-tcp MESHPORT:HOST:PORT` (e.g. `8080:127.0.0.1:8000`).
pub fn parse_serve_tcp(s: &str) -> Result<(u16, SocketAddr), String> {
    let (port, local) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected MESHPORT:HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    let local: SocketAddr = local
        .parse()
        .map_err(|_| format!("{local:?} is not an address like 127.0.0.1:8000"))?;
    Ok((port, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_tcp_flags() {
        assert_eq!(
            parse_serve_tcp("8080:127.0.0.1:8000").unwrap(),
            (8080, "127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            parse_serve_tcp("80:[::1]:3000").unwrap(),
            (80, "[::1]:3000".parse().unwrap())
        );
        assert!(parse_serve_tcp("0:127.0.0.1:1").is_err());
        assert!(parse_serve_tcp("8080").is_err());
        assert!(parse_serve_tcp("x:127.0.0.1:1").is_err());
        assert!(parse_serve_tcp("1:localhost:1").is_err());
    }

    #[test]
    fn endpoint_flags() {
        use crate::daemon::parse_endpoint;
        assert_eq!(
            parse_endpoint("127.0.0.1").unwrap(),
            ("127.0.0.1".parse().unwrap(), None)
        );
        assert_eq!(
            parse_endpoint("192.0.2.7:41641").unwrap(),
            ("192.0.2.7".parse().unwrap(), Some(41641))
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]:1").unwrap(),
            ("2001:db8::1".parse().unwrap(), Some(1))
        );
        assert!(parse_endpoint("example.com:1").is_err());
    }
}
