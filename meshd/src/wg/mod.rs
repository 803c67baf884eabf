//! The WireGuard peer set: one `boringtun::noise::Tunn` per peer, routing by allowed IPs, the
//! inner-source check and the packet filter. Sans-IO: the driver hands in datagrams read from the
//! UDP socket and packets read from the TUN device or the userspace stack, with the time, and the
//! core answers through a [`Sink`] (send this datagram, deliver this packet). Timers run when the
//! driver calls [`Peers::tick`].
//!
//! Contract with boringtun 0.7.1 (see DESIGN.md): every peer has a unique 24-bit index (a data
//! packet's receiver index `>> 8`); a handshake initiation is matched to a peer by
//! `parse_handshake_anon`; buffers are at least packet + 32 bytes; after a `WriteToNetwork`,
//! `decapsulate(None, &[])` is called until `Done` to flush queued packets; the real UDP source is
//! always passed in; one rate limiter for all peers, reset every second.
//!
//! An initiation from a key the netmap does not list yet (it passed mac1 and its static key
//! decrypted with ours) is counted as `unknown_peer` and kept for up to 3 s (at most 64, latest
//! per key, see `pending`). After [`Peers::set_peers`] the driver calls [`Peers::replay_pending`]
//! at once, which handles those from keys now known as if they had just arrived from their
//! recorded source, so a joining node need not wait for its 5 s retry. [`Peers::tick`] does the
//! same, and forgets kept initiations once they are stale. A peer the netmap adds is greeted
//! with a handshake by the same call, so a node behind NAT opens its mapping to the peer at once.
//!
//! A packet from the host to an address no peer owns is kept a moment (`unrouted`), then
//! dropped, and the host is told with an ICMP "unreachable" through [`Sink::deliver`].

mod peer;
mod pending;
#[cfg(test)]
mod tests;
mod unrouted;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use keys::{PrivateKey, PublicKey};
use proto::Node;
use tracing::{debug, info, trace};

use peer::Peer;
pub use peer::PeerStats;
use pending::PendingInits;
use unrouted::Unrouted;

use crate::filter::{PacketFilter, Verdict};
use crate::packet::{self, PacketInfo};
use crate::routes::RouteTable;
use crate::FastMap;

/// Bytes WireGuard adds to every packet (header 16 + tag 16).
pub const OVERHEAD: usize = 32;
/// Handshake messages accepted per second before cookies are required. Each one is counted
/// twice (our check before `peer_for`, then boringtun's inside `decapsulate`): 200 means 100.
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// Persistent keepalive, so NAT mappings stay open while a peer is idle.
pub const KEEPALIVE_SECS: u16 = 25;

/// Where the core's output goes. The driver implements it over real sockets; tests over queues.
///
/// Data packets are decrypted straight into the sink's own buffer (no copy on the way to the
/// host): the core asks for [`room`](Sink::room), decrypts into it, checks the packet there, and
/// then calls [`deliver`](Sink::deliver) with its length, or leaves the room to the next packet.
pub trait Sink {
    /// Send an encrypted datagram.
    fn send_udp(&mut self, to: SocketAddr, datagram: &[u8]);
    /// The buffer the next packet is decrypted into, at least `len` bytes long. It is the same
    /// buffer, with its contents, until [`deliver`](Sink::deliver).
    fn room(&mut self, len: usize) -> &mut [u8];
    /// Delivers the first `len` bytes of the room to the host (TUN device or userspace stack):
    /// a decrypted, checked packet, and what the packet filter parsed of it (so that the host
    /// need not parse it again).
    fn deliver(&mut self, len: usize, info: &PacketInfo);
}

/// Why traffic was dropped, counted for `meshd status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// Datagrams that are not WireGuard or fail to authenticate.
    pub invalid_datagram: u64,
    /// Datagrams for a peer we do not know.
    pub unknown_peer: u64,
    /// Decrypted packets whose inner source is not the sender's (allowed-IPs check).
    pub spoofed_source: u64,
    /// Decrypted packets the packet filter refused.
    pub filtered: u64,
    /// Packets from the host to an address no peer owns, or that do not parse.
    pub no_route: u64,
    /// Packets to a peer that has no endpoint yet.
    pub no_endpoint: u64,
}

/// The WireGuard side of a node.
pub struct Peers {
    secret: PrivateKey,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    peers: FastMap<u32, Peer>,
    by_key: FastMap<PublicKey, u32>,
    routes: RouteTable<u32>,
    filter: PacketFilter,
    next_index: u32,
    last_limiter_reset: Option<Instant>,
    drops: Drops,
    /// Initiations from keys not in the netmap yet, answered if it soon adds them.
    pending: PendingInits,
    /// Packets to addresses no peer owns yet (see `unrouted`).
    unrouted: Unrouted,
    /// Peers added since the last [`Peers::replay_pending`], to be greeted with a handshake.
    greet: Vec<u32>,
    buf: Vec<u8>,
}

/// Who sent a datagram, as far as can be told without decrypting it.
enum Sender {
    /// A peer in the netmap, by index.
    Peer(u32),
    /// A handshake initiation addressed to us (its static key decrypted) from a key that is not
    /// a peer.
    UnknownKey(PublicKey),
    /// Anything else nobody we know sent.
    Unknown,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("public", &self.public)
            .field("peers", &self.peers.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The first byte of a WireGuard transport data message (type 4, little endian).
const DATA_MESSAGE: u8 = 4;

/// Largest datagram handled: a 64 KiB packet plus overhead.
const BUF: usize = 65_536 + OVERHEAD;

impl Peers {
    pub fn new(secret: PrivateKey, filter: PacketFilter) -> Self {
        let public = secret.public_key();
        let limiter_key = boringtun::x25519::PublicKey::from(*public.as_bytes());
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&limiter_key, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            peers: FastMap::default(),
            by_key: FastMap::default(),
            routes: RouteTable::default(),
            filter,
            next_index: 1,
            last_limiter_reset: None,
            drops: Drops::default(),
            pending: PendingInits::default(),
            unrouted: Unrouted::default(),
            greet: Vec::new(),
            buf: vec![0; BUF],
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn drops(&self) -> Drops {
        self.drops
    }

    pub fn filter_mut(&mut self) -> &mut PacketFilter {
        &mut self.filter
    }

    /// Per-peer figures for `meshd status`.
    pub fn stats(&self) -> Vec<PeerStats> {
        let mut v: Vec<_> = self.peers.values().map(Peer::stats).collect();
        v.sort_by_key(|s| s.node.id);
        v
    }

    fn free_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = (self.next_index % 0x00ff_ffff) + 1;
            if !self.peers.contains_key(&i) {
                return i;
            }
        }
    }

    /// Makes the peer set equal `nodes`, touching only what changed: an unchanged peer keeps its
    /// session, so its flows never stall. Returns (added, changed, removed) counts. Call
    /// [`Peers::replay_pending`] right after, to answer initiations that came before the netmap
    /// and send packets that were waiting for it.
    pub fn set_peers(&mut self, nodes: &[Node]) -> (usize, usize, usize) {
        let wanted: HashMap<PublicKey, &Node> = nodes.iter().map(|n| (n.public_key, n)).collect();
        let gone: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| !wanted.contains_key(&p.node.public_key))
            .map(|(i, _)| *i)
            .collect();
        for idx in &gone {
            if let Some(p) = self.peers.remove(idx) {
                info!(peer = %p.node.name, "peer removed");
                self.by_key.remove(&p.node.public_key);
                self.routes.remove_value(*idx);
            }
        }
        let (mut added, mut changed) = (0, 0);
        for node in nodes {
            if node.public_key == self.public {
                continue;
            }
            match self.by_key.get(&node.public_key).copied() {
                Some(idx) => {
                    let Some(p) = self.peers.get_mut(&idx) else {
                        continue;
                    };
                    if p.node != *node {
                        changed += 1;
                        if p.node.allowed_ips() != node.allowed_ips() {
                            self.routes.remove_value(idx);
                            for net in node.allowed_ips() {
                                self.routes.insert(net, idx);
                            }
                        }
                        p.update_node(node.clone());
                    }
                }
                None => {
                    added += 1;
                    let idx = self.free_index();
                    let tunn = Tunn::new(
                        self.secret.as_static_secret().clone(),
                        boringtun::x25519::PublicKey::from(*node.public_key.as_bytes()),
                        None,
                        Some(KEEPALIVE_SECS),
                        idx,
                        Some(self.rate_limiter.clone()),
                    );
                    for net in node.allowed_ips() {
                        self.routes.insert(net, idx);
                    }
                    self.by_key.insert(node.public_key, idx);
                    info!(peer = %node.name, ipv4 = %node.ipv4, "peer added");
                    self.peers.insert(idx, Peer::new(node.clone(), tunn));
                    self.greet.push(idx);
                }
            }
        }
        (added, changed, gone.len())
    }

    /// A packet from the host, to be encrypted for the peer that owns its destination.
    pub fn handle_outbound(&mut self, pkt: &[u8], now: Instant, sink: &mut impl Sink) {
        let Ok(info) = packet::parse(pkt) else {
            self.drops.no_route += 1;
            return;
        };
        let Some(idx) = self.routes.lookup(info.dst) else {
            // Kept a moment: the netmap may be about to list the destination's owner.
            trace!(dst = %info.dst, "no peer owns this destination (yet)");
            if let Some(old) = self.unrouted.hold(pkt, now) {
                self.no_route(&old, sink);
            }
            return;
        };
        self.filter.outbound(&info, now);
        let Some(peer) = self.peers.get_mut(&idx) else {
            self.drops.no_route += 1;
            return;
        };
        if pkt.len() + OVERHEAD > self.buf.len() {
            self.drops.no_route += 1;
            return;
        }
        match peer.tunn.encapsulate(pkt, &mut self.buf) {
            TunnResult::WriteToNetwork(out) if !peer.send(out, sink) => {
                self.drops.no_endpoint += 1;
            }
            TunnResult::Err(e) => debug!(peer = %peer.node.name, "encapsulate: {e:?}"),
            _ => {}
        }
    }

    /// Which peer a datagram is for, without decrypting it.
    fn peer_for(&self, datagram: &[u8]) -> Sender {
        let Ok(packet) = Tunn::parse_incoming_packet(datagram) else {
            return Sender::Unknown;
        };
        match packet {
            Packet::HandshakeInit(p) => {
                let public = boringtun::x25519::PublicKey::from(*self.public.as_bytes());
                let Ok(half) = parse_handshake_anon(self.secret.as_static_secret(), &public, &p)
                else {
                    return Sender::Unknown;
                };
                let key = PublicKey::from_bytes(half.peer_static_public);
                match self.by_key.get(&key) {
                    Some(idx) => Sender::Peer(*idx),
                    None => Sender::UnknownKey(key),
                }
            }
            Packet::HandshakeResponse(p) => Sender::Peer(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => Sender::Peer(p.receiver_idx >> 8),
            Packet::PacketData(p) => Sender::Peer(p.receiver_idx >> 8),
        }
    }

    /// Sends the kept packets from the host whose destinations peers own now, and handles the
    /// kept initiations whose keys are peers now (see [`Peers::set_peers`]) as if they had just
    /// arrived from where they came from, so the handshake responses go out. Then greets the
    /// peers added since, that neither of those reached ([`Peer::greet`]). Call right after
    /// `set_peers`; `tick` calls it too.
    pub fn replay_pending(&mut self, now: Instant, sink: &mut impl Sink) {
        self.replay_unrouted(now, sink);
        if !self.pending.is_empty() {
            let by_key = &self.by_key;
            let due = self.pending.take_known(now, |k| by_key.contains_key(k));
            for p in due {
                debug!(from = %p.from, "answering an initiation that came before the netmap");
                self.handle_datagram(p.from, &p.datagram, now, sink);
            }
        }
        for idx in std::mem::take(&mut self.greet) {
            if let Some(peer) = self.peers.get_mut(&idx) {
                peer.greet(&mut self.buf, sink);
            }
        }
    }

    /// Sends the kept packets whose destination a peer now owns; keeps the others as they were.
    fn replay_unrouted(&mut self, now: Instant, sink: &mut impl Sink) {
        if self.unrouted.is_empty() {
            return;
        }
        self.expire_unrouted(now, sink);
        for (at, pkt) in self.unrouted.take() {
            let routed = packet::parse(&pkt).is_ok_and(|i| self.routes.lookup(i.dst).is_some());
            if routed {
                self.handle_outbound(&pkt, now, sink);
            } else if let Some(old) = self.unrouted.hold(&pkt, at) {
                self.no_route(&old, sink);
            }
        }
    }

    fn expire_unrouted(&mut self, now: Instant, sink: &mut impl Sink) {
        for pkt in self.unrouted.expire(now) {
            self.no_route(&pkt, sink);
        }
    }

    /// A packet from the host that no peer owns: counted, and the host told
    /// ([`unrouted::unreachable`]).
    fn no_route(&mut self, pkt: &[u8], sink: &mut impl Sink) {
        self.drops.no_route += 1;
        let Some(icmp) = unrouted::unreachable(pkt) else {
            return;
        };
        if let Ok(info) = packet::parse(&icmp) {
            sink.room(icmp.len())[..icmp.len()].copy_from_slice(&icmp);
            sink.deliver(icmp.len(), &info);
        }
    }

    /// A datagram from the network.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        sink: &mut impl Sink,
    ) {
        // The cheap checks first: mac1 (a keyed hash only someone who knows our public key can
        // make) and, under load, a cookie round trip. Only a datagram that passes them may cost
        // an X25519 to find its peer (`peer_for`). Garbage shaped like handshakes would
        // otherwise burn a core.
        match self
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, &mut self.buf)
        {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(cookie)) => {
                sink.send_udp(from, cookie);
                return;
            }
            Err(_) => {
                self.drops.invalid_datagram += 1;
                return;
            }
        }
        let idx = match self.peer_for(datagram) {
            Sender::Peer(idx) => idx,
            Sender::UnknownKey(key) => {
                // Maybe a node that joined and got its netmap before we got ours: keep it, and
                // answer if `set_peers` adds the key soon.
                self.drops.unknown_peer += 1;
                trace!(%from, "initiation from a key not in the netmap; kept");
                self.pending.insert(key, from, datagram, now);
                return;
            }
            Sender::Unknown => {
                self.drops.unknown_peer += 1;
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&idx) else {
            self.drops.unknown_peer += 1;
            return;
        };
        // Buffers: decapsulate may write up to the datagram's length.
        if self.buf.len() < datagram.len() {
            self.drops.invalid_datagram += 1;
            return;
        }
        if datagram.first() != Some(&DATA_MESSAGE) {
            Self::handshake(&mut self.drops, &mut self.buf, peer, from, datagram, sink);
            return;
        }
        // A data packet: decrypted into the sink's room, delivered from there.
        let (len, src) =
            match peer
                .tunn
                .decapsulate(Some(from.ip()), datagram, sink.room(datagram.len()))
            {
                TunnResult::WriteToTunnelV4(pkt, src) => (pkt.len(), IpAddr::V4(src)),
                TunnResult::WriteToTunnelV6(pkt, src) => (pkt.len(), IpAddr::V6(src)),
                TunnResult::Done => {
                    peer.roam(from);
                    return;
                }
                TunnResult::Err(e) => {
                    self.drops.invalid_datagram += 1;
                    debug!(peer = %peer.node.name, "decapsulate: {e:?}");
                    return;
                }
                TunnResult::WriteToNetwork(out) => {
                    // Not an answer a data packet gets; sent all the same.
                    let out = out.to_vec();
                    sink.send_udp(from, &out);
                    return;
                }
            };
        Self::inbound(
            &mut self.drops,
            &self.routes,
            &mut self.filter,
            idx,
            peer,
            from,
            src,
            now,
            sink,
            len,
        );
    }

    /// A handshake message (or a cookie reply) from a known peer: answered, and what was held
    /// back while the handshake was pending is sent.
    fn handshake(
        drops: &mut Drops,
        buf: &mut [u8],
        peer: &mut Peer,
        from: SocketAddr,
        datagram: &[u8],
        sink: &mut impl Sink,
    ) {
        match peer.tunn.decapsulate(Some(from.ip()), datagram, buf) {
            TunnResult::WriteToNetwork(out) => {
                // A handshake answer, or a cookie when under load. Only an authenticated
                // handshake moves the endpoint (roaming); cookies go back to the source.
                sink.send_udp(from, out);
                if !matches!(
                    Tunn::parse_incoming_packet(datagram),
                    Ok(Packet::PacketCookieReply(_))
                ) {
                    peer.roam(from);
                }
                // Flush packets queued while the handshake was pending.
                while let TunnResult::WriteToNetwork(out) = peer.tunn.decapsulate(None, &[], buf) {
                    peer.send(out, sink);
                }
            }
            TunnResult::Done => peer.roam(from),
            TunnResult::Err(e) => {
                drops.invalid_datagram += 1;
                debug!(peer = %peer.node.name, "decapsulate: {e:?}");
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                // Only data packets carry packets for the host.
                drops.invalid_datagram += 1;
            }
        }
    }

    /// A decrypted packet: allowed-IPs check, then the filter, then delivery.
    #[allow(clippy::too_many_arguments)]
    fn inbound(
        drops: &mut Drops,
        routes: &RouteTable<u32>,
        filter: &mut PacketFilter,
        idx: u32,
        peer: &mut Peer,
        from: SocketAddr,
        src: IpAddr,
        now: Instant,
        sink: &mut impl Sink,
        len: usize,
    ) {
        // The datagram authenticated: the peer is at `from` now.
        peer.roam(from);
        if !routes.source_allowed(src, idx) {
            drops.spoofed_source += 1;
            debug!(peer = %peer.node.name, %src, "dropped: inner source is not the peer's");
            return;
        }
        let Ok(info) = packet::parse(&sink.room(len)[..len]) else {
            drops.filtered += 1;
            return;
        };
        match filter.inbound(&info, &peer.node, now) {
            Verdict::Accept => {
                peer.rx_packets += 1;
                sink.deliver(len, &info);
            }
            Verdict::Drop(reason) => {
                drops.filtered += 1;
                trace!(peer = %peer.node.name, ?reason, "dropped by the packet filter");
            }
        }
    }

    /// Timers: handshakes, keepalives, rekeying. Call every ~100-250 ms.
    pub fn tick(&mut self, now: Instant, sink: &mut impl Sink) {
        if self
            .last_limiter_reset
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.rate_limiter.reset_count();
            self.last_limiter_reset = Some(now);
        }
        for peer in self.peers.values_mut() {
            peer.tick(&mut self.buf, sink);
        }
        self.filter.expire(now);
        // A driver that forgot `replay_pending` after `set_peers` still answers within a tick.
        self.replay_pending(now, sink);
        self.pending.expire(now);
        self.expire_unrouted(now, sink);
    }
}
