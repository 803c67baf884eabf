//! Peers on a simulated network: real boringtun handshakes and encryption between in-memory
//! nodes, no sockets. Checks delivery both ways (IPv4 and IPv6), the allowed-IPs check, the
//! packet filter, roaming, garbage, and that netmap changes leave unchanged sessions alone.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use keys::PrivateKey;
use proto::map::FilterRule;
use proto::policy::{PortRange, Protocol};
use proto::{Node, NodeId};

use super::*;
use crate::filter::{FilterLimits, PacketFilter};
use crate::packet::{self, build, TcpFlags};

#[derive(Default)]
struct Out {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<Vec<u8>>,
    room: Vec<u8>,
}

impl Sink for Out {
    fn send_udp(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.sent.push((to, datagram.to_vec()));
    }
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.room.len() < len {
            self.room.resize(len, 0);
        }
        &mut self.room
    }
    fn deliver(&mut self, len: usize, info: &PacketInfo) {
        assert_eq!(packet::parse(&self.room[..len]).as_ref(), Ok(info));
        self.delivered.push(self.room[..len].to_vec());
    }
}

struct Host {
    node: Node,
    peers: Peers,
    addr: SocketAddr,
    out: Out,
}

fn allow_all() -> Vec<FilterRule> {
    vec![FilterRule {
        src: vec!["*".into()],
        proto: Protocol::Any,
        ports: vec![PortRange::ALL],
    }]
}

fn host(i: u8, rules: Vec<FilterRule>) -> Host {
    let key = PrivateKey::generate();
    let addr: SocketAddr = format!("192.0.2.{i}:4164{i}").parse().unwrap();
    let node = Node {
        id: NodeId(u64::from(i)),
        name: format!("n{i}"),
        fqdn: format!("n{i}.mesh.internal"),
        public_key: key.public_key(),
        ipv4: Ipv4Addr::new(100, 64, 0, i),
        ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6440, u16::from(i)),
        tags: vec![],
        endpoints: vec![addr],
        online: true,
        key_expiry: u64::MAX,
    };
    let mut filter = PacketFilter::new(FilterLimits::default());
    filter.set_rules(rules);
    Host {
        node,
        peers: Peers::new(key, filter),
        addr,
        out: Out::default(),
    }
}

/// Moves datagrams between hosts until none are in flight. Returns how many moved.
fn pump(hosts: &mut [&mut Host], now: Instant) -> usize {
    let mut moved = 0;
    for _ in 0..100 {
        let mut queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
        for h in hosts.iter_mut() {
            for (to, d) in h.out.sent.drain(..) {
                queue.push_back((h.addr, to, d));
            }
        }
        if queue.is_empty() {
            return moved;
        }
        while let Some((from, to, d)) = queue.pop_front() {
            moved += 1;
            if let Some(h) = hosts.iter_mut().find(|h| h.addr == to) {
                let Host { peers, out, .. } = &mut **h;
                peers.handle_datagram(from, &d, now, out);
            }
        }
    }
    panic!("network did not settle");
}

fn pair() -> (Host, Host) {
    let mut a = host(1, allow_all());
    let mut b = host(2, allow_all());
    a.peers.set_peers(&[b.node.clone()]);
    b.peers.set_peers(&[a.node.clone()]);
    (a, b)
}

#[test]
fn packets_cross_both_ways_after_a_handshake() {
    let (mut a, mut b) = pair();
    let now = Instant::now();
    let ping = build::icmp_echo_v4(a.node.ipv4, b.node.ipv4, 7, 1, b"hello");
    a.peers.handle_outbound(&ping, now, &mut a.out);
    assert_eq!(a.out.sent.len(), 1, "a handshake initiation");
    assert_eq!(a.out.sent[0].0, b.addr);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(
        b.out.delivered,
        vec![ping.clone()],
        "queued packet flushed after handshake"
    );

    let reply = build::icmp_echo_reply_v4(b.node.ipv4, a.node.ipv4, 7, 1, b"hello");
    b.peers.handle_outbound(&reply, now, &mut b.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(a.out.delivered, vec![reply]);

    let v6 = build::udp_v6(a.node.ipv6, b.node.ipv6, 5000, 53, &[0u8; 1200]);
    a.peers.handle_outbound(&v6, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered.last(), Some(&v6));

    let stats = a.peers.stats();
    assert_eq!(stats[0].endpoint, Some(b.addr));
    assert!(stats[0].since_handshake.is_some());
    assert!(stats[0].tx_bytes > 1200 && stats[0].rx_bytes > 0);
    assert_eq!(a.peers.drops(), Drops::default());
}

#[test]
fn a_forged_inner_source_is_dropped_and_counted() {
    let mut a = host(1, allow_all());
    let mut b = host(2, allow_all());
    let c = host(3, allow_all());
    a.peers.set_peers(&[b.node.clone()]);
    b.peers.set_peers(&[a.node.clone(), c.node.clone()]);
    let now = Instant::now();
    // A claims to be C (v4 and v6).
    for forged in [
        build::udp_v4(c.node.ipv4, b.node.ipv4, 1, 2, b"x"),
        build::udp_v6(c.node.ipv6, b.node.ipv6, 1, 2, b"x"),
        build::udp_v4(Ipv4Addr::new(8, 8, 8, 8), b.node.ipv4, 1, 2, b"x"),
    ] {
        a.peers.handle_outbound(&forged, now, &mut a.out);
        pump(&mut [&mut a, &mut b], now);
    }
    assert!(b.out.delivered.is_empty(), "nothing forged was delivered");
    assert_eq!(b.peers.drops().spoofed_source, 3);
    // A's own address still works.
    let ok = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"x");
    a.peers.handle_outbound(&ok, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered, vec![ok]);
}

#[test]
fn the_filter_drops_unsolicited_traffic_but_passes_replies() {
    let mut a = host(1, allow_all());
    let mut b = host(2, vec![]); // B accepts no new inbound flows.
    a.peers.set_peers(&[b.node.clone()]);
    b.peers.set_peers(&[a.node.clone()]);
    let now = Instant::now();
    let unsolicited = build::udp_v4(a.node.ipv4, b.node.ipv4, 1000, 22, b"x");
    a.peers.handle_outbound(&unsolicited, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert!(b.out.delivered.is_empty());
    assert_eq!(b.peers.drops().filtered, 1);

    // B opens a flow to A; A's answer on it gets in.
    let out = build::udp_v4(b.node.ipv4, a.node.ipv4, 3333, 53, b"q");
    b.peers.handle_outbound(&out, now, &mut b.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(a.out.delivered, vec![out]);
    let answer = build::udp_v4(a.node.ipv4, b.node.ipv4, 53, 3333, b"a");
    a.peers.handle_outbound(&answer, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered, vec![answer]);
}

#[test]
fn garbage_datagrams_are_counted_and_change_nothing() {
    let (mut a, mut b) = pair();
    let now = Instant::now();
    let mut x: u32 = 1;
    for len in 0..2000usize {
        let junk: Vec<u8> = (0..len % 300)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        b.peers.handle_datagram(a.addr, &junk, now, &mut b.out);
    }
    // WireGuard-shaped junk too: data packets for a real peer index with bad tags.
    for i in 0..100u32 {
        let mut d = vec![4, 0, 0, 0];
        d.extend_from_slice(&(1u32 << 8 | i).to_le_bytes());
        d.extend_from_slice(&[0u8; 40]);
        b.peers.handle_datagram(a.addr, &d, now, &mut b.out);
    }
    assert!(b.out.delivered.is_empty());
    let drops = b.peers.drops();
    assert!(
        drops.invalid_datagram + drops.unknown_peer >= 2000,
        "{drops:?}"
    );
    // The tunnel still works.
    let p = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"after");
    a.peers.handle_outbound(&p, now, &mut a.out);
    b.out.sent.clear();
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered, vec![p]);
}

#[test]
fn a_peer_that_moves_is_followed() {
    let (mut a, mut b) = pair();
    let now = Instant::now();
    let p = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"1");
    a.peers.handle_outbound(&p, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.peers.stats()[0].endpoint, Some(a.addr));
    // A's NAT mapping changes: its packets now come from elsewhere.
    a.addr = "198.51.100.9:50000".parse().unwrap();
    let p2 = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"2");
    a.peers.handle_outbound(&p2, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered.last(), Some(&p2));
    assert_eq!(b.peers.stats()[0].endpoint, Some(a.addr));
    // B's answers follow A to its new address.
    let back = build::udp_v4(b.node.ipv4, a.node.ipv4, 2, 1, b"3");
    b.peers.handle_outbound(&back, now, &mut b.out);
    assert_eq!(b.out.sent[0].0, a.addr);
}

#[test]
fn netmap_changes_leave_unchanged_sessions_alone() {
    let (mut a, mut b) = pair();
    let now = Instant::now();
    let p = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"1");
    a.peers.handle_outbound(&p, now, &mut a.out);
    pump(&mut [&mut a, &mut b], now);

    // A third peer joins, and B's netmap entry changes only its online state.
    let c = host(3, allow_all());
    let mut b_entry = b.node.clone();
    b_entry.online = false;
    assert_eq!(a.peers.set_peers(&[b_entry, c.node.clone()]), (1, 1, 0));
    // The next packet to B is a data packet (type 4) at once, not a new handshake.
    let p2 = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"2");
    a.peers.handle_outbound(&p2, now, &mut a.out);
    assert_eq!(a.out.sent.len(), 1);
    assert_eq!(a.out.sent[0].1[0], 4, "session kept");
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.out.delivered.last(), Some(&p2));

    // B leaves: its routes go with it.
    assert_eq!(a.peers.set_peers(std::slice::from_ref(&c.node)), (0, 0, 1));
    let p3 = build::udp_v4(a.node.ipv4, b.node.ipv4, 1, 2, b"3");
    a.peers.handle_outbound(&p3, now, &mut a.out);
    assert!(a.out.sent.is_empty());
    // Kept a moment in case the netmap brings B back, then dropped and counted.
    assert_eq!(a.peers.drops().no_route, 0);
    a.peers.tick(now + Duration::from_secs(1), &mut a.out);
    assert_eq!(kinds(&a.out), vec![(c.addr, 1)], "C greeted; nothing for B");
    assert_eq!(a.peers.drops().no_route, 1);
}

#[test]
fn the_host_is_told_when_no_peer_owns_a_destination() {
    let mut a = host(1, allow_all());
    let b = host(2, allow_all());
    a.peers.set_peers(&[]);
    let t0 = Instant::now();
    let syn4 = build::tcp_v4(a.node.ipv4, b.node.ipv4, 40000, 80, TcpFlags::SYN, b"");
    let syn6 = build::tcp_v6(a.node.ipv6, b.node.ipv6, 40001, 80, TcpFlags::SYN, b"");
    // An ICMP error is never answered with one.
    let err = build::icmp_error_v4(a.node.ipv4, b.node.ipv4, 3, 3, &syn4);
    for p in [&syn4, &syn6, &err] {
        a.peers.handle_outbound(p, t0, &mut a.out);
    }
    // Kept while the netmap may still bring the owner.
    a.peers.tick(t0 + Duration::from_millis(100), &mut a.out);
    assert!(a.out.delivered.is_empty());
    a.peers.tick(t0 + Duration::from_millis(600), &mut a.out);
    assert_eq!(a.peers.drops().no_route, 3);
    assert!(a.out.sent.is_empty());
    let got: Vec<_> = a
        .out
        .delivered
        .iter()
        .map(|d| packet::parse(d).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    for (icmp, (syn, want)) in got.iter().zip([(&syn4, (3, 1)), (&syn6, (1, 3))]) {
        let syn = packet::parse(syn).unwrap();
        // From the unreachable address to the sender, about the SYN's flow.
        assert_eq!((icmp.src, icmp.dst), (syn.dst, syn.src));
        let packet::Transport::Icmp(i) = icmp.transport else {
            panic!("{icmp:?}");
        };
        assert_eq!((i.icmp_type, i.code), want);
        let packet::IcmpMessage::Error { original: Some(f) } = i.message else {
            panic!("{i:?}");
        };
        assert_eq!(Some(f), syn.flow());
    }
}

/// Where each datagram `out` sent went, with its WireGuard message type (1 initiation, 2
/// response, 4 data).
fn kinds(out: &Out) -> Vec<(SocketAddr, u8)> {
    out.sent.iter().map(|(to, d)| (*to, d[0])).collect()
}

#[test]
fn a_peer_just_added_is_greeted_with_a_handshake_once() {
    // A is behind NAT: B's handshakes could not reach it before A sent something to B. A does
    // not wait for traffic (or its first keepalive) to send something.
    let (mut a, mut b) = pair();
    let now = Instant::now();
    a.peers.replay_pending(now, &mut a.out);
    assert_eq!(kinds(&a.out), vec![(b.addr, 1)]);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(b.peers.stats()[0].endpoint, Some(a.addr), "B heard from A");
    assert!(
        a.peers.stats()[0].since_handshake.is_some(),
        "the session is up"
    );
    // B's first packet to A is data at once.
    let p = build::udp_v4(b.node.ipv4, a.node.ipv4, 1, 2, b"to a");
    b.peers.handle_outbound(&p, now, &mut b.out);
    assert_eq!(kinds(&b.out), vec![(a.addr, 4)]);
    pump(&mut [&mut a, &mut b], now);
    assert_eq!(a.out.delivered, vec![p]);
    // Greeted once: later rounds and a netmap that changes nothing send nothing.
    a.peers.set_peers(std::slice::from_ref(&b.node));
    a.peers.replay_pending(now, &mut a.out);
    a.peers.tick(now + Duration::from_millis(100), &mut a.out);
    assert!(a.out.sent.is_empty(), "{:?}", kinds(&a.out));
    // B heard from A before its first round: it does not greet.
    b.peers.replay_pending(now, &mut b.out);
    assert!(b.out.sent.is_empty(), "{:?}", kinds(&b.out));
}

#[test]
fn a_packet_sent_just_before_the_netmap_lists_its_peer_goes_when_it_does() {
    // A program on A learned of B (say, the funnel edge's routes) a moment before A's core did.
    let (mut a, mut b) = pair();
    let others: Vec<Node> = vec![];
    a.peers.set_peers(&others);
    let now = Instant::now();
    let syn = build::udp_v4(a.node.ipv4, b.node.ipv4, 40000, 41642, b"first");
    a.peers.handle_outbound(&syn, now, &mut a.out);
    assert!(a.out.sent.is_empty(), "nowhere to send it yet");
    assert_eq!(a.peers.drops().no_route, 0, "kept, not dropped");

    a.peers.set_peers(std::slice::from_ref(&b.node));
    a.peers
        .replay_pending(now + Duration::from_millis(5), &mut a.out);
    assert_eq!(a.out.sent.len(), 1, "the handshake for it goes out at once");
    pump(&mut [&mut a, &mut b], now + Duration::from_millis(5));
    assert_eq!(b.out.delivered, vec![syn], "and the packet after it");
    assert_eq!(a.peers.drops().no_route, 0);
}

/// A handshake initiation to `to` from a node with key `key`, as it would go on the wire.
fn initiation(key: PrivateKey, to: &Node, now: Instant) -> Vec<u8> {
    let mut sender = Peers::new(key, PacketFilter::new(FilterLimits::default()));
    sender.set_peers(std::slice::from_ref(to));
    let mut out = Out::default();
    let p = build::udp_v4(Ipv4Addr::new(100, 64, 9, 9), to.ipv4, 1, 2, b"hi");
    sender.handle_outbound(&p, now, &mut out);
    assert_eq!(out.sent.len(), 1, "one initiation");
    let (_, d) = out.sent.pop().unwrap();
    assert_eq!(d[0], 1, "type 1: handshake initiation");
    d
}

#[test]
fn a_joiner_that_comes_before_the_netmap_is_answered_when_it_arrives() {
    // B joins: its netmap lists A, but A's netmap does not list B yet.
    let mut a = host(1, allow_all());
    let mut b = host(2, allow_all());
    a.peers.set_peers(&[]);
    b.peers.set_peers(&[a.node.clone()]);
    let t0 = Instant::now();
    let ping = build::icmp_echo_v4(b.node.ipv4, a.node.ipv4, 7, 1, b"first contact");
    b.peers.handle_outbound(&ping, t0, &mut b.out);
    pump(&mut [&mut a, &mut b], t0);
    assert!(a.out.sent.is_empty(), "no answer to an unknown key");
    assert_eq!(a.peers.drops().unknown_peer, 1);
    assert_eq!(a.peers.pending.len(), 1);
    // Nothing to replay while the key is still unknown.
    a.peers.replay_pending(t0, &mut a.out);
    assert!(a.out.sent.is_empty());

    // A's netmap delta arrives a few ms later; the driver replays at once.
    let t1 = t0 + Duration::from_millis(5);
    assert_eq!(a.peers.set_peers(&[b.node.clone()]), (1, 0, 0));
    a.peers.replay_pending(t1, &mut a.out);
    assert_eq!(a.out.sent.len(), 1, "{:?}", a.out.sent);
    assert_eq!(a.out.sent[0].0, b.addr, "answered at the recorded source");
    assert_eq!(a.out.sent[0].1[0], 2, "type 2: handshake response");
    assert_eq!(a.peers.pending.len(), 0, "replayed once");
    pump(&mut [&mut a, &mut b], t1);
    assert_eq!(a.out.delivered, vec![ping], "B's queued packet crossed");
    let reply = build::icmp_echo_reply_v4(a.node.ipv4, b.node.ipv4, 7, 1, b"first contact");
    a.peers.handle_outbound(&reply, t1, &mut a.out);
    assert_eq!(a.out.sent[0].1[0], 4, "a data packet, the session is up");
    pump(&mut [&mut a, &mut b], t1);
    assert_eq!(b.out.delivered, vec![reply]);
    assert_eq!(a.peers.stats()[0].endpoint, Some(b.addr));
    a.peers.replay_pending(t1, &mut a.out);
    assert!(a.out.sent.is_empty(), "nothing left to replay");
}

#[test]
fn a_tick_answers_kept_initiations_too() {
    // For a driver that does not call `replay_pending` after `set_peers`.
    let mut a = host(1, allow_all());
    let b = host(2, allow_all());
    let t0 = Instant::now();
    let init = initiation(PrivateKey::from_bytes(b_secret(&b)), &a.node, t0);
    a.peers.handle_datagram(b.addr, &init, t0, &mut a.out);
    a.peers.set_peers(std::slice::from_ref(&b.node));
    assert!(a.out.sent.is_empty());
    a.peers.tick(t0 + Duration::from_millis(100), &mut a.out);
    assert!(
        a.out.sent.iter().any(|(to, d)| *to == b.addr && d[0] == 2),
        "{:?}",
        a.out.sent
    );
}

/// B's private key (tests only: `Peers` keeps it).
fn b_secret(b: &Host) -> [u8; 32] {
    b.peers.secret.as_static_secret().to_bytes()
}

#[test]
fn a_stale_initiation_is_not_replayed() {
    let mut a = host(1, allow_all());
    let b = host(2, allow_all());
    let t0 = Instant::now();
    let init = initiation(PrivateKey::from_bytes(b_secret(&b)), &a.node, t0);
    a.peers.handle_datagram(b.addr, &init, t0, &mut a.out);
    assert_eq!(a.peers.pending.len(), 1);
    // Ticks keep it while fresh and forget it once stale.
    a.peers.tick(t0 + Duration::from_secs(1), &mut a.out);
    assert_eq!(a.peers.pending.len(), 1);
    a.peers.tick(t0 + Duration::from_millis(3_100), &mut a.out);
    assert_eq!(a.peers.pending.len(), 0, "expired on tick");

    // Kept again, then the netmap comes too late: no answer.
    let t1 = t0 + Duration::from_secs(4);
    a.peers.handle_datagram(b.addr, &init, t1, &mut a.out);
    assert_eq!(a.peers.pending.len(), 1);
    a.peers.set_peers(std::slice::from_ref(&b.node));
    a.peers
        .replay_pending(t1 + Duration::from_millis(3_100), &mut a.out);
    assert_eq!(kinds(&a.out), vec![(b.addr, 1)], "a greeting, no response");
    assert_eq!(a.peers.pending.len(), 0);
    assert_eq!(a.peers.drops().unknown_peer, 2);
}

#[test]
fn the_latest_initiation_per_key_wins() {
    let mut a = host(1, allow_all());
    let mut b = host(2, allow_all());
    b.peers.set_peers(&[a.node.clone()]);
    let t0 = Instant::now();
    // An earlier initiation from B's key (an earlier run of B), from another address.
    let old = initiation(PrivateKey::from_bytes(b_secret(&b)), &a.node, t0);
    let elsewhere: SocketAddr = "198.51.100.7:41641".parse().unwrap();
    a.peers.handle_datagram(elsewhere, &old, t0, &mut a.out);
    // Then B's own replaces it.
    let p = build::udp_v4(b.node.ipv4, a.node.ipv4, 1, 2, b"latest");
    b.peers.handle_outbound(&p, t0, &mut b.out);
    let latest = b.out.sent[0].1.clone();
    pump(&mut [&mut a, &mut b], t0);
    assert_eq!(a.peers.pending.len(), 1);
    // A copy of it sent from elsewhere (a replay, WireGuard never resends the same bytes) does
    // not move where the answer goes.
    let t1 = t0 + Duration::from_millis(1);
    a.peers.handle_datagram(elsewhere, &latest, t1, &mut a.out);
    assert_eq!(a.peers.pending.len(), 1);

    a.peers.set_peers(&[b.node.clone()]);
    a.peers.replay_pending(t1, &mut a.out);
    assert_eq!(a.out.sent.len(), 1);
    assert_eq!(a.out.sent[0].0, b.addr);
    pump(&mut [&mut a, &mut b], t1);
    assert_eq!(a.out.delivered, vec![p], "B's session came up");
}

#[test]
fn kept_initiations_are_bounded() {
    let mut a = host(1, allow_all());
    let t0 = Instant::now();
    // More distinct keys than are kept (and fewer than the rate limiter lets through a second).
    let senders: Vec<(Node, SocketAddr)> = (0..150u16)
        .map(|i| {
            let mut n = host(2, allow_all()).node;
            n.ipv4 = Ipv4Addr::new(100, 64, 1, i as u8);
            n.ipv6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6441, i);
            n.name = format!("s{i}");
            n.id = NodeId(100 + u64::from(i));
            (n, SocketAddr::from(([192, 0, 2, 100], 20_000 + i)))
        })
        .collect();
    let mut keys = Vec::new();
    for (i, (node, from)) in senders.iter().enumerate() {
        let key = PrivateKey::generate();
        let mut node = node.clone();
        node.public_key = key.public_key();
        let now = t0 + Duration::from_millis(i as u64);
        let init = initiation(key, &a.node, now);
        a.peers.handle_datagram(*from, &init, now, &mut a.out);
        assert!(a.peers.pending.len() <= pending::MAX_PENDING);
        keys.push(node);
    }
    assert!(a.out.sent.is_empty(), "no cookies: under the rate limit");
    assert_eq!(a.peers.pending.len(), pending::MAX_PENDING);
    assert_eq!(a.peers.drops().unknown_peer, 150);
    // The oldest made room: the first sender's initiation is gone, the last one's is answered.
    let (first, last) = (&keys[0], &keys[149]);
    let now = t0 + Duration::from_millis(200);
    a.peers.set_peers(&[first.clone(), last.clone()]);
    a.peers.replay_pending(now, &mut a.out);
    // The last one answered where it came from; the first one only greeted (at its endpoint).
    let mut got = kinds(&a.out);
    got.sort();
    assert_eq!(got, vec![(first.endpoints[0], 1), (senders[149].1, 2)]);
    assert_eq!(a.peers.pending.len(), pending::MAX_PENDING - 1);
}

#[test]
fn garbage_and_initiations_for_other_keys_are_not_kept() {
    let mut a = host(1, allow_all());
    let b = host(2, allow_all());
    let c = host(3, allow_all());
    let now = Instant::now();
    // Junk, including handshake-initiation-shaped junk (type 1, 148 bytes).
    let mut x: u32 = 7;
    for len in [0usize, 1, 4, 32, 147, 148, 148, 148, 149, 300] {
        let mut junk: Vec<u8> = (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        if len >= 4 {
            junk[..4].copy_from_slice(&[1, 0, 0, 0]);
        }
        a.peers.handle_datagram(b.addr, &junk, now, &mut a.out);
    }
    // A real initiation, but for C: its mac1 is keyed to C's public key.
    let for_c = initiation(PrivateKey::from_bytes(b_secret(&b)), &c.node, now);
    a.peers.handle_datagram(b.addr, &for_c, now, &mut a.out);
    assert_eq!(a.peers.drops().invalid_datagram, 11);
    // The same with a mac1 A accepts (as from someone who knows C's public key and forged it):
    // its static key does not decrypt with A's key.
    let c_public = boringtun::x25519::PublicKey::from(*c.node.public_key.as_bytes());
    a.peers.rate_limiter = Arc::new(RateLimiter::new(&c_public, HANDSHAKE_RATE_LIMIT));
    a.peers.handle_datagram(b.addr, &for_c, now, &mut a.out);
    assert_eq!(a.peers.drops().unknown_peer, 1, "passed mac1, then dropped");
    assert_eq!(a.peers.pending.len(), 0);
    assert!(a.out.sent.is_empty());
    // Adding B and C answers nothing: each is only greeted.
    a.peers.set_peers(&[b.node.clone(), c.node.clone()]);
    a.peers.replay_pending(now, &mut a.out);
    let mut got = kinds(&a.out);
    got.sort();
    assert_eq!(got, vec![(b.addr, 1), (c.addr, 1)]);
}
