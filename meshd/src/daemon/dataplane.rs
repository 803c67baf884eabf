//! The data-plane driver in TUN mode: one task owns the UDP socket, the TUN device and the
//! [`Peers`] core, and feeds the core from whichever is ready, with a bounded batch per wake-up,
//! timers every 100 ms, and netmap updates as they come.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use tun_rs::AsyncDevice;

use super::api::{DropCounts, PeerStatus, Status};
use super::control_loop::ControlState;
use super::ping::{self, PingRequest, Pings};
use crate::wg::{Peers, Sink};

/// Packets handled per source before the loop looks at the others.
const BATCH: usize = 64;
const TICK: Duration = Duration::from_millis(100);
/// MTU of the mesh interface: 1500 minus IPv6 (40), UDP (8) and WireGuard (32) overhead.
pub const MTU: u16 = 1420;

/// Writes the core's output with non-blocking calls; a full socket or device drops the packet
/// (as a congested link would) and counts it.
struct IoSink<'a> {
    udp: &'a UdpSocket,
    dev: &'a AsyncDevice,
    dropped: u64,
    /// `meshd ping`'s replies are taken out here, before the host sees them.
    pings: Pings,
}

impl Sink for IoSink<'_> {
    fn send_udp(&mut self, to: SocketAddr, datagram: &[u8]) {
        if !to.is_ipv4() || self.udp.try_send_to(datagram, to).is_err() {
            self.dropped += 1;
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        if self.pings.intercept(packet, Instant::now()) {
            return;
        }
        if self.dev.try_send(packet).is_err() {
            self.dropped += 1;
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

/// Runs until `shutdown` fires or the node is revoked.
pub async fn run(
    dev: Arc<AsyncDevice>,
    udp: Arc<UdpSocket>,
    mut peers: Peers,
    wiring: Wiring,
) -> io::Result<()> {
    let Wiring {
        mut control,
        coord_up,
        status,
        mut shutdown,
        me,
        pings: mut ping_rx,
    } = wiring;
    let mut netmap_peers: Vec<proto::Node> = Vec::new();
    let mut ubuf = vec![0u8; 65_536];
    let mut tbuf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink = IoSink {
        udp: &udp,
        dev: &dev,
        dropped: 0,
        pings: Pings::default(),
    };
    // The saved netmap may already be there.
    let initial = control.borrow_and_update().clone();
    if let Some(ControlState::Netmap(map)) = initial {
        apply_netmap(&mut peers, &map);
        netmap_peers = map.peers;
    }
    loop {
        tokio::select! {
            Some(req) = ping_rx.recv() => {
                let now = Instant::now();
                match ping::resolve(&netmap_peers, &req.target) {
                    Some((peer, ip)) => {
                        let pkt = sink.pings.start(&me, peer, ip, now, req.reply);
                        peers.handle_outbound(&pkt, now, &mut sink);
                    }
                    None => {
                        let _ = req.reply.send(Err(format!(
                            "no peer named or addressed {:?} in the netmap", req.target
                        )));
                    }
                }
            }
            r = udp.recv_from(&mut ubuf) => {
                let (n, from) = r?;
                let now = Instant::now();
                peers.handle_datagram(from, &ubuf[..n], now, &mut sink);
                for _ in 1..BATCH {
                    match udp.try_recv_from(&mut ubuf) {
                        Ok((n, from)) => peers.handle_datagram(from, &ubuf[..n], now, &mut sink),
                        Err(_) => break,
                    }
                }
            }
            r = dev.recv(&mut tbuf) => {
                let n = r?;
                let now = Instant::now();
                peers.handle_outbound(&tbuf[..n], now, &mut sink);
                for _ in 1..BATCH {
                    match dev.try_recv(&mut tbuf) {
                        Ok(n) => peers.handle_outbound(&tbuf[..n], now, &mut sink),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                peers.tick(now, &mut sink);
                sink.pings.expire(now);
                status.send_replace(snapshot(&peers, &me, *coord_up.borrow()));
            }
            r = control.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                let state = control.borrow_and_update().clone();
                match state {
                    Some(ControlState::Netmap(map)) => {
                        apply_netmap(&mut peers, &map);
                        netmap_peers = map.peers;
                    }
                    Some(ControlState::Revoked(_)) => return Ok(()),
                    None => {}
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
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
