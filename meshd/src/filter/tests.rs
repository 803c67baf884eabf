//! Filter tests of verdicts: replies to own flows, rules and selectors, TCP, ICMP.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use proto::map::FilterRule;
use proto::policy::{PortRange, Protocol};
use proto::{Node, NodeId};

use super::*;
use crate::packet::{build, parse, PacketInfo, TcpFlags};

pub(super) const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub(super) const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ME6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0x6440, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0x6440, 2);

pub(crate) fn node(id: u64, name: &str, tags: &[&str]) -> Node {
    Node {
        id: NodeId(id),
        name: name.into(),
        fqdn: format!("{name}.mesh.internal"),
        public_key: keys::PublicKey::from_bytes([id as u8; 32]),
        ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
        ipv6: Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0x6440, id as u16),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        endpoints: vec![],
        online: true,
        key_expiry: 1_900_000_000,
    }
}

pub(crate) fn rule(src: &[&str], proto: Protocol, ports: &[&str]) -> FilterRule {
    FilterRule {
        src: src.iter().map(|s| s.to_string()).collect(),
        proto,
        ports: ports
            .iter()
            .map(|p| p.parse::<PortRange>().unwrap())
            .collect(),
    }
}

pub(super) fn p(bytes: Vec<u8>) -> PacketInfo {
    parse(&bytes).unwrap()
}

pub(super) fn udp_in(sport: u16, dport: u16) -> PacketInfo {
    p(build::udp_v4(PEER, ME, sport, dport, b"x"))
}

fn tcp_in(sport: u16, dport: u16, flags: TcpFlags) -> PacketInfo {
    p(build::tcp_v4(PEER, ME, sport, dport, flags, b""))
}

pub(super) const DROP_NO_RULE: Verdict = Verdict::Drop(DropReason::NoRule);

#[test]
fn replies_to_own_udp_flows_pass_unsolicited_do_not() {
    let (mut f, peer, t0) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "b", &[]),
        Instant::now(),
    );
    assert_eq!(f.inbound(&udp_in(53, 40000), &peer, t0), DROP_NO_RULE);
    f.outbound(&p(build::udp_v4(ME, PEER, 40000, 53, b"q")), t0);
    assert_eq!(f.inbound(&udp_in(53, 40000), &peer, t0), Verdict::Accept);
    assert_eq!(
        f.inbound(&udp_in(54, 40000), &peer, t0),
        DROP_NO_RULE,
        "other source port"
    );
    assert_eq!(
        f.inbound(&udp_in(53, 40001), &peer, t0),
        DROP_NO_RULE,
        "other local port"
    );
    // IPv6 likewise.
    let reply6 = p(build::udp_v6(PEER6, ME6, 443, 5000, b""));
    assert_eq!(f.inbound(&reply6, &peer, t0), DROP_NO_RULE);
    f.outbound(&p(build::udp_v6(ME6, PEER6, 5000, 443, b"")), t0);
    assert_eq!(f.inbound(&reply6, &peer, t0), Verdict::Accept);
    let s = f.stats();
    assert_eq!(
        (s.accepted_tracked, s.dropped(DropReason::NoRule), s.flows),
        (2, 4, 2)
    );
}

#[test]
fn rules_select_by_tag_name_and_star() {
    let mut f = PacketFilter::new(FilterLimits::default());
    f.set_rules(vec![
        rule(&["tag:dev"], Protocol::Tcp, &["22"]),
        rule(&["laptop"], Protocol::Any, &["8000-8100"]),
        rule(&["*"], Protocol::Udp, &["53"]),
        rule(&["*"], Protocol::Icmp, &[]),
        rule(&["NOT A SELECTOR!"], Protocol::Any, &["*"]),
    ]);
    let now = Instant::now();
    let dev = node(2, "dev1", &["tag:dev"]);
    let laptop = node(3, "laptop", &[]);
    let other = node(4, "other", &["tag:web"]);
    let syn = |port| tcp_in(50000, port, TcpFlags::SYN);
    assert_eq!(f.inbound(&syn(22), &dev, now), Verdict::Accept);
    // Same 5-tuple from another peer (an address that moved): not admitted by dev's grant.
    assert_eq!(f.inbound(&syn(22), &laptop, now), DROP_NO_RULE);
    assert_eq!(f.inbound(&syn(8050), &laptop, now), Verdict::Accept);
    assert_eq!(f.inbound(&udp_in(1, 8100), &laptop, now), Verdict::Accept);
    assert_eq!(f.inbound(&syn(8101), &laptop, now), DROP_NO_RULE);
    assert_eq!(f.inbound(&udp_in(1, 53), &other, now), Verdict::Accept);
    assert_eq!(
        f.inbound(&udp_in(1, 22), &dev, now),
        DROP_NO_RULE,
        "tcp rule, udp packet"
    );
    let ping = p(build::icmp_echo_v4(PEER, ME, 9, 1, b""));
    assert_eq!(
        f.inbound(&ping, &other, now),
        Verdict::Accept,
        "echo request is icmp"
    );
    let ping6 = p(build::icmp_echo_v6(PEER6, ME6, 9, 1, b""));
    assert_eq!(f.inbound(&ping6, &other, now), Verdict::Accept);
    assert_eq!(f.stats().accepted_by_rule, 6);

    // The compiled rules decide exactly like `FilterRule::admits`.
    let rules = f.source.clone();
    for peer in [&dev, &laptop, &other] {
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            for port in [0, 22, 53, 7999, 8000, 8100, 8101, 65535] {
                let want = rules.iter().any(|r| r.admits(peer, proto, port));
                let got = f.rules.iter().any(|r| r.admits(peer, proto, port));
                assert_eq!(got, want, "{} {proto:?} {port}", peer.name);
            }
        }
    }
}

#[test]
fn tcp_replies_need_our_syn() {
    let (mut f, peer, now) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "b", &[]),
        Instant::now(),
    );
    // An ACK we send without a SYN opens nothing: it could be our side of their connection.
    f.outbound(
        &p(build::tcp_v4(ME, PEER, 40000, 22, TcpFlags::ACK, b"")),
        now,
    );
    assert_eq!(
        f.inbound(&tcp_in(22, 40000, TcpFlags::ACK), &peer, now),
        DROP_NO_RULE
    );
    f.outbound(
        &p(build::tcp_v4(ME, PEER, 40000, 22, TcpFlags::SYN, b"")),
        now,
    );
    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    assert_eq!(
        f.inbound(&tcp_in(22, 40000, syn_ack), &peer, now),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(&tcp_in(22, 40000, TcpFlags::ACK), &peer, now),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(&tcp_in(22, 40001, syn_ack), &peer, now),
        DROP_NO_RULE
    );
    // Established: outlives the UDP timeout, unlike a half-open connection.
    f.outbound(
        &p(build::tcp_v4(ME, PEER, 40002, 80, TcpFlags::SYN, b"")),
        now,
    );
    let later = now + UDP_TIMEOUT + Duration::from_secs(1);
    assert_eq!(
        f.inbound(&tcp_in(22, 40000, TcpFlags::ACK), &peer, later),
        Verdict::Accept
    );
    assert_eq!(
        f.inbound(&tcp_in(80, 40002, syn_ack), &peer, later),
        DROP_NO_RULE
    );
    // After RST the connection is short-lived.
    f.inbound(&tcp_in(22, 40000, TcpFlags::RST), &peer, later);
    let after = later + TCP_TRANSITORY_TIMEOUT;
    assert_eq!(
        f.inbound(&tcp_in(22, 40000, TcpFlags::ACK), &peer, after),
        DROP_NO_RULE
    );
}

#[test]
fn icmp_echo_replies_and_errors_about_our_flows() {
    let (mut f, peer, now) = (
        PacketFilter::new(FilterLimits::default()),
        node(2, "b", &[]),
        Instant::now(),
    );
    let reply = p(build::icmp_echo_reply_v4(PEER, ME, 77, 1, b""));
    assert_eq!(
        f.inbound(&reply, &peer, now),
        Verdict::Drop(DropReason::UnsolicitedReply)
    );
    let ping_in = p(build::icmp_echo_v4(PEER, ME, 77, 1, b""));
    assert_eq!(
        f.inbound(&ping_in, &peer, now),
        DROP_NO_RULE,
        "no icmp rule"
    );
    f.outbound(&p(build::icmp_echo_v4(ME, PEER, 77, 1, b"")), now);
    assert_eq!(f.inbound(&reply, &peer, now), Verdict::Accept);
    let wrong_id = p(build::icmp_echo_reply_v4(PEER, ME, 78, 1, b""));
    assert_eq!(
        f.inbound(&wrong_id, &peer, now),
        Verdict::Drop(DropReason::UnsolicitedReply)
    );
    assert_eq!(
        f.inbound(&ping_in, &peer, now),
        DROP_NO_RULE,
        "our ping opens no way in"
    );
    let reply6 = p(build::icmp_echo_reply_v6(PEER6, ME6, 5, 1, b""));
    f.outbound(&p(build::icmp_echo_v6(ME6, PEER6, 5, 1, b"")), now);
    assert_eq!(f.inbound(&reply6, &peer, now), Verdict::Accept);
    let late = now + ICMP_TIMEOUT;
    assert_eq!(
        f.inbound(&reply6, &peer, late),
        Verdict::Drop(DropReason::UnsolicitedReply)
    );

    let sent = build::udp_v4(ME, PEER, 4000, 9999, b"probe");
    let unreachable = p(build::icmp_error_v4(PEER, ME, 3, 3, &sent));
    let unsolicited = Verdict::Drop(DropReason::UnsolicitedIcmpError);
    assert_eq!(f.inbound(&unreachable, &peer, now), unsolicited);
    f.outbound(&parse(&sent).unwrap(), now);
    assert_eq!(f.inbound(&unreachable, &peer, now), Verdict::Accept);
    let sent6 = build::tcp_v6(ME6, PEER6, 4000, 443, TcpFlags::SYN, b"");
    let too_big = p(build::icmp_error_v6(PEER6, ME6, 2, 0, &sent6));
    assert_eq!(f.inbound(&too_big, &peer, now), unsolicited);
    f.outbound(&parse(&sent6).unwrap(), now);
    assert_eq!(f.inbound(&too_big, &peer, now), Verdict::Accept);
    // An error quoting someone else's packet is not about our flow.
    let forged = build::udp_v4(Ipv4Addr::new(100, 64, 0, 9), PEER, 4000, 9999, b"");
    assert_eq!(
        f.inbound(
            &p(build::icmp_error_v4(PEER, ME, 3, 3, &forged)),
            &peer,
            now
        ),
        unsolicited
    );
}
