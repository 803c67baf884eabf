//! The data-plane driver in TUN mode: one task owns the UDP socket, the TUN device and the
//! [`Peers`] core, and feeds the core from whichever is ready, timers every 100 ms, and netmap
//! updates as they come. I/O is batched both ways: the TUN device hands over TCP segments up to
//! 64 KiB (offload), split here into packets; encrypted datagrams leave in runs through UDP
//! segmentation offload; datagrams arrive by `recvmmsg` with receive offload, and decrypted TCP
//! segments are merged again before they are written to the device.
//!
//! The loop runs on a thread of its own with a single-threaded runtime ([`spawn`]): a packet
//! wakes the thread that handles it, with no hand-over between threads, and the control plane's
//! work (TLS, large netmaps) never delays a packet.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::api::{DropCounts, PeerStatus, Status};
use super::control_loop::ControlState;
use super::outbox::{Outbox, MAX_GROUP_BYTES};
use super::ping::{self, PingRequest, Pings};
use super::tun_ingress;
use super::udp::{Bound, RecvBufs, Udp};
use crate::packet::PacketInfo;
use crate::userspace::{StackCore, RX_BACKLOG};
use crate::wg::{Peers, Sink};

/// Reads from one source before the loop looks at the others.
const ROUNDS: usize = 8;
const TICK: Duration = Duration::from_millis(100);
/// MTU of the mesh interface: 1500 minus IPv6 (40), UDP (8) and WireGuard (32) overhead.
pub const MTU: u16 = 1420;
/// Room in front of each packet written to the device for its offload header.
const TUN_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Capacity of each buffer of packets for the device: the largest IP packet a merge can make,
/// behind two offload headers (what `send_multiple` checks before it merges into a buffer).
/// At most `IDEAL_BATCH_SIZE` of them are filled before a flush, so they take 8 MiB at most.
const GRO_CAPACITY: usize = 2 * TUN_OFFSET + 65_535;

/// Collects the core's output for the batched writes that follow each round.
struct IoSink {
    outbox: Outbox,
    /// Decrypted packets for the device, each after `TUN_OFFSET` bytes; `tun_len` are in use.
    tun: Vec<Vec<u8>>,
    tun_len: usize,
    gro: GROTable,
    dropped: u64,
    /// `meshd ping`'s replies are taken out here, before the host sees them.
    pings: Pings,
}

impl Sink for IoSink {
    fn send_udp(&mut self, to: std::net::SocketAddr, datagram: &[u8]) {
        self.outbox.push(to, datagram);
    }

    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.tun_len == self.tun.len() {
            // Room for a whole merged segment: receive offload only merges packets into a
            // buffer with capacity for the result (and a second offload header).
            self.tun.push(Vec::with_capacity(GRO_CAPACITY));
        }
        let b = &mut self.tun[self.tun_len];
        // Grown (zeroed) only past what an earlier packet left: most packets are the same size.
        if b.len() < TUN_OFFSET + len {
            b.resize(TUN_OFFSET + len, 0);
        }
        &mut b[TUN_OFFSET..]
    }

    fn deliver(&mut self, len: usize, info: &PacketInfo) {
        if self.pings.intercept(info, Instant::now) {
            return;
        }
        let b = &mut self.tun[self.tun_len];
        b.truncate(TUN_OFFSET + len);
        b[..TUN_OFFSET].fill(0);
        self.tun_len += 1;
    }
}

impl IoSink {
    /// Writes what the last round produced: datagrams first, then packets to the host.
    async fn flush(&mut self, udp: &Udp, dev: &AsyncDevice) {
        if !self.outbox.is_empty() {
            self.dropped += udp.send_all(&mut self.outbox).await;
        }
        if self.tun_len > 0 {
            let n = self.tun_len;
            self.tun_len = 0;
            if dev
                .send_multiple(&mut self.gro, &mut self.tun[..n], TUN_OFFSET)
                .await
                .is_err()
            {
                self.dropped += 1;
            }
        }
    }
}

/// Buffers for reading the device: the raw read (offload header and up to 64 KiB of segment)
/// and the packets it splits into.
struct TunRead {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl TunRead {
    fn new() -> Self {
        Self {
            raw: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            bufs: vec![vec![0; usize::from(MTU) + 100]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }
}

/// What the data plane is connected to besides its socket and device.
#[derive(Debug)]
pub struct Wiring {
    pub control: watch::Receiver<Option<ControlState>>,
    /// Whether the map stream to the coordinator is up.
    pub coord_up: watch::Receiver<bool>,
    pub status: watch::Sender<Status>,
    pub shutdown: watch::Receiver<bool>,
    pub me: proto::Node,
    /// `meshd ping` requests from the local API.
    pub pings: mpsc::Receiver<PingRequest>,
}

/// Starts the data plane on a thread of its own, where it runs until `shutdown` fires or the
/// node is revoked; the future resolves then, after the device (and with it its addresses and
/// routes) is closed.
///
/// The handle spawns onto that thread's runtime, for work that belongs beside the loop: the
/// funnel ingress, whose connections are the next hop of the packets the loop writes to the
/// device. On one thread, a request through the node wakes no other thread of meshd on its way.
/// Such tasks end with the loop. (The edge's HTTPS proxy does not belong there: moved onto this
/// thread it cost more CPU per request, not less; docs/BENCHMARKS.md has the runs.)
pub fn spawn(
    dev: tun_rs::SyncDevice,
    udp: Bound,
    peers: Peers,
    stack: StackCore,
    wiring: Wiring,
) -> io::Result<(
    tokio::runtime::Handle,
    impl Future<Output = io::Result<()>> + Send + 'static,
)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("meshd-dataplane".into())
        .spawn(move || {
            let result = rt.block_on(async move {
                let dev = Arc::new(AsyncDevice::new(dev)?);
                let udp = Arc::new(udp.into_udp()?);
                run(dev, udp, peers, stack, wiring).await
            });
            let _ = done_tx.send(result);
        })?;
    let done = async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the data-plane thread panicked")))
    };
    Ok((handle, done))
}

/// Runs until `shutdown` fires or the node is revoked.
async fn run(
    dev: Arc<AsyncDevice>,
    udp: Arc<Udp>,
    mut peers: Peers,
    mut stack: StackCore,
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
    let mut netmap_peers: Vec<proto::Node> = Vec::new();
    let mut urecv = RecvBufs::default();
    let mut tread = TunRead::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink = IoSink {
        outbox: Outbox::default(),
        tun: Vec::new(),
        tun_len: 0,
        gro: GROTable::new(),
        dropped: 0,
        pings: Pings::default(),
    };
    // The saved netmap may already be there.
    let initial = control.borrow_and_update().clone();
    if let Some(ControlState::Netmap(map)) = initial {
        apply_netmap(&mut peers, &map);
        netmap_peers = map.peers;
    }
    // Kept across rounds: no joining and leaving of waiter lists per round.
    let changed = next_control(control);
    tokio::pin!(changed);
    let stopped = first_change(shutdown);
    tokio::pin!(stopped);
    // The ingress stack: woken by its connections' applications, and by its own timers.
    let wake = stack.waker();
    let woken = wake.notified();
    tokio::pin!(woken);
    let timer = tokio::time::sleep(TICK);
    tokio::pin!(timer);
    let mut stack_due = true;
    loop {
        tokio::select! {
            Some(req) = ping_rx.recv() => {
                let now = Instant::now();
                match ping::resolve(&netmap_peers, &req.target) {
                    Some((peer, ip)) => {
                        let pkt = sink.pings.start(&me, peer, ip, now, req.reply);
                        peers.handle_outbound(&pkt, now, &mut diverting(&mut sink, &mut stack));
                    }
                    None => {
                        let _ = req.reply.send(Err(format!(
                            "no peer named or addressed {:?} in the netmap", req.target
                        )));
                    }
                }
            }
            r = udp.readable() => {
                r?;
                for _ in 0..ROUNDS {
                    match udp.try_recv(&mut urecv) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // An ICMP error for an earlier send, say: not fatal.
                        Err(_) => continue,
                    }
                    let now = Instant::now();
                    for (from, d) in urecv.datagrams() {
                        peers.handle_datagram(from, d, now, &mut diverting(&mut sink, &mut stack));
                        // A batch for the device at a time: merging needs 64 KiB per buffer.
                        if sink.tun_len >= IDEAL_BATCH_SIZE {
                            sink.flush(&udp, &dev).await;
                        }
                    }
                    // The stack takes a large backlog at once rather than dropping what would
                    // not fit its queue.
                    if stack.device.backlog() >= RX_BACKLOG {
                        tun_ingress::poll(&mut stack, &mut peers, &mut sink, now);
                    }
                    sink.flush(&udp, &dev).await;
                }
            }
            r = dev.readable() => {
                r?;
                for _ in 0..ROUNDS {
                    let TunRead { raw, bufs, sizes } = &mut tread;
                    let n = match dev.try_recv_multiple(raw, bufs, sizes, 0) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // A segment the splitter refuses: dropped, like any bad packet.
                        Err(_) => { sink.dropped += 1; continue }
                    };
                    let now = Instant::now();
                    for (b, len) in bufs.iter().zip(sizes.iter()).take(n) {
                        peers.handle_outbound(&b[..*len], now, &mut diverting(&mut sink, &mut stack));
                    }
                    // The datagrams of several reads leave together (after the loop): equal-size
                    // runs of different flows then go out as one segmented send, and the peer
                    // receives them as one burst.
                    if sink.outbox.data().len() >= MAX_GROUP_BYTES {
                        sink.flush(&udp, &dev).await;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                peers.tick(now, &mut diverting(&mut sink, &mut stack));
                sink.pings.expire(now);
                status.send_replace(snapshot(&peers, &me, *coord_up.borrow()));
            }
            (state, rx) = &mut changed => {
                let Some(state) = state else {
                    return Ok(());
                };
                changed.set(next_control(rx));
                match state {
                    Some(ControlState::Netmap(map)) => {
                        apply_netmap(&mut peers, &map);
                        let out = &mut diverting(&mut sink, &mut stack);
                        peers.replay_pending(Instant::now(), out);
                        netmap_peers = map.peers;
                        // `meshd status` lists a new peer as soon as packets can reach it, not
                        // up to a tick later.
                        status.send_replace(snapshot(&peers, &me, *coord_up.borrow()));
                    }
                    Some(ControlState::Revoked(_)) => return Ok(()),
                    None => {}
                }
            }
            () = &mut woken => {
                woken.set(wake.notified());
                stack_due = true;
            }
            () = &mut timer => stack_due = true,
            () = &mut stopped => return Ok(()),
        }
        if stack_due || !stack.device.rx.is_empty() {
            stack_due = false;
            let now = Instant::now();
            tun_ingress::poll(&mut stack, &mut peers, &mut sink, now);
            let delay = stack.poll_delay(now).map_or(TICK, |d| d.min(TICK));
            timer.as_mut().reset(tokio::time::Instant::now() + delay);
        }
        sink.flush(&udp, &dev).await;
    }
}

/// The core's output for this round: the ingress port's segments to the stack, the rest to
/// `sink` ([`tun_ingress::Diverting`]).
fn diverting<'a>(
    sink: &'a mut IoSink,
    stack: &'a mut StackCore,
) -> tun_ingress::Diverting<'a, IoSink> {
    tun_ingress::Diverting {
        sink,
        stack: &mut stack.device,
    }
}

/// The next control state, from a receiver it owns while it waits and hands back with it: a
/// driver keeps one such future across its rounds (and makes the next when it completes), so a
/// round does not join and leave the channel's list of waiters each time (`changed()`'s).
pub(crate) async fn next_control(
    mut rx: watch::Receiver<Option<ControlState>>,
) -> (
    Option<Option<ControlState>>,
    watch::Receiver<Option<ControlState>>,
) {
    let state = match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => None,
    };
    (state, rx)
}

/// Resolves at the first change of `rx` (or once its sender is gone), owning the receiver: for a
/// driver's shutdown signal, kept across its rounds like [`next_control`].
pub(crate) async fn first_change<T>(mut rx: watch::Receiver<T>) {
    let _ = rx.changed().await;
}

/// The figures `meshd status` shows (shared with the userspace driver).
pub(crate) fn snapshot(peers: &Peers, me: &proto::Node, coord_connected: bool) -> Status {
    let d = peers.drops();
    Status {
        name: me.name.clone(),
        fqdn: me.fqdn.clone(),
        addresses: vec![me.ipv4.into(), me.ipv6.into()],
        coord_connected,
        peers: peers
            .stats()
            .into_iter()
            .map(|s| PeerStatus {
                name: s.node.name.clone(),
                addresses: vec![s.node.ipv4.into(), s.node.ipv6.into()],
                endpoint: s.endpoint,
                last_handshake_secs: s.since_handshake.map(|d| d.as_secs()),
                rx_bytes: s.rx_bytes as u64,
                tx_bytes: s.tx_bytes as u64,
                online: s.node.online,
            })
            .collect(),
        drops: DropCounts {
            invalid_datagram: d.invalid_datagram,
            unknown_peer: d.unknown_peer,
            spoofed_source: d.spoofed_source,
            filtered: d.filtered,
            no_route: d.no_route,
            no_endpoint: d.no_endpoint,
            stack_queue_full: 0,
        },
    }
}

pub(crate) fn apply_netmap(peers: &mut Peers, map: &proto::map::Netmap) {
    let (added, changed, removed) = peers.set_peers(&map.peers);
    peers.filter_mut().set_rules(map.packet_filter.clone());
    if added + changed + removed > 0 {
        info!(
            added,
            changed,
            removed,
            total = map.peers.len(),
            "netmap applied"
        );
    }
    if map.peers.iter().all(|p| p.endpoints.is_empty()) && !map.peers.is_empty() {
        warn!("no peer has reported an endpoint yet");
    }
}
