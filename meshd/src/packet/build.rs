//! Builders of well-formed packets with correct checksums: for tests across the workspace and
//! for the few packets a node originates itself (pings, ICMP errors). They allocate; the parser
//! does not. A payload too long for one packet is cut to fit (IP lengths are 16 bits).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{ipproto, TcpFlags};

/// Time to live / hop limit of built packets.
pub const TTL: u8 = 64;

/// Most bytes of the offending packet an ICMPv4 error quotes (576 minus 28, RFC 1812).
const ICMP4_QUOTE: usize = 548;
/// Most bytes an ICMPv6 error quotes, so the error fits the minimum MTU (RFC 4443).
const ICMP6_QUOTE: usize = 1280 - 40 - 8;

/// The internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (no options, DF set) around `payload`, whose checksums must already be set.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(usize::from(u16::MAX) - 20)];
    let total = (20 + payload.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, TTL, protocol, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = internet_checksum(&[&p]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet (no extension headers) around `payload`, whose checksums must already be set.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(usize::from(u16::MAX))];
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, TTL]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram from `src:sport` to `dst:dport`.
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let seg = udp_segment(sport, dport, payload, 20);
    ipv4(
        src,
        dst,
        ipproto::UDP,
        &checksummed_v4(src, dst, ipproto::UDP, seg, 6),
    )
}

/// A UDP datagram from `[src]:sport` to `[dst]:dport`.
pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let seg = udp_segment(sport, dport, payload, 0);
    ipv6(
        src,
        dst,
        ipproto::UDP,
        &checksummed_v6(src, dst, ipproto::UDP, seg, 6),
    )
}

/// A TCP segment with `flags` (sequence number 1, acknowledgment 1 when ACK is set).
pub fn tcp_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
    payload: &[u8],
) -> Vec<u8> {
    let seg = tcp_segment(sport, dport, flags, payload, 20);
    ipv4(
        src,
        dst,
        ipproto::TCP,
        &checksummed_v4(src, dst, ipproto::TCP, seg, 16),
    )
}

/// A TCP segment with `flags` over IPv6.
pub fn tcp_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
    payload: &[u8],
) -> Vec<u8> {
    let seg = tcp_segment(sport, dport, flags, payload, 0);
    ipv6(
        src,
        dst,
        ipproto::TCP,
        &checksummed_v6(src, dst, ipproto::TCP, seg, 16),
    )
}

/// An ICMPv4 echo request (what `ping` sends).
pub fn icmp_echo_v4(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    icmp_v4(src, dst, 8, 0, &echo_rest(id, seq), payload)
}

/// An ICMPv4 echo reply.
pub fn icmp_echo_reply_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    icmp_v4(src, dst, 0, 0, &echo_rest(id, seq), payload)
}

/// An ICMPv6 echo request.
pub fn icmp_echo_v6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    icmp_v6(src, dst, 128, 0, &echo_rest(id, seq), payload)
}

/// An ICMPv6 echo reply.
pub fn icmp_echo_reply_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    icmp_v6(src, dst, 129, 0, &echo_rest(id, seq), payload)
}

/// An ICMPv4 error (`icmp_type` 3, 11 or 12) quoting `original`, cut to 548 bytes.
pub fn icmp_error_v4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    original: &[u8],
) -> Vec<u8> {
    let quote = &original[..original.len().min(ICMP4_QUOTE)];
    icmp_v4(src, dst, icmp_type, code, &[0; 4], quote)
}

/// An ICMPv6 error (`icmp_type` 1–4) quoting `original`, cut so the error fits 1280 bytes.
pub fn icmp_error_v6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    original: &[u8],
) -> Vec<u8> {
    let quote = &original[..original.len().min(ICMP6_QUOTE)];
    icmp_v6(src, dst, icmp_type, code, &[0; 4], quote)
}

fn echo_rest(id: u16, seq: u16) -> [u8; 4] {
    let (i, s) = (id.to_be_bytes(), seq.to_be_bytes());
    [i[0], i[1], s[0], s[1]]
}

fn icmp_v4(src: Ipv4Addr, dst: Ipv4Addr, t: u8, code: u8, rest: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut msg = icmp_message(t, code, rest, body, 20);
    let sum = internet_checksum(&[&msg]);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, ipproto::ICMP, &msg)
}

fn icmp_v6(src: Ipv6Addr, dst: Ipv6Addr, t: u8, code: u8, rest: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let msg = icmp_message(t, code, rest, body, 0);
    ipv6(
        src,
        dst,
        ipproto::ICMPV6,
        &checksummed_v6(src, dst, ipproto::ICMPV6, msg, 2),
    )
}

fn icmp_message(t: u8, code: u8, rest: &[u8; 4], body: &[u8], ip_header: usize) -> Vec<u8> {
    let body = &body[..body.len().min(usize::from(u16::MAX) - ip_header - 8)];
    let mut msg = vec![t, code, 0, 0];
    msg.extend_from_slice(rest);
    msg.extend_from_slice(body);
    msg
}

fn udp_segment(sport: u16, dport: u16, payload: &[u8], ip_header: usize) -> Vec<u8> {
    let payload = &payload[..payload.len().min(usize::from(u16::MAX) - ip_header - 8)];
    let mut seg = Vec::with_capacity(8 + payload.len());
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    seg
}

fn tcp_segment(sport: u16, dport: u16, flags: TcpFlags, payload: &[u8], ip: usize) -> Vec<u8> {
    let payload = &payload[..payload.len().min(usize::from(u16::MAX) - ip - 20)];
    let ack: u32 = if flags.contains(TcpFlags::ACK) { 1 } else { 0 };
    let mut seg = Vec::with_capacity(20 + payload.len());
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&1u32.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.extend_from_slice(&[5 << 4, flags.0, 0xff, 0xff, 0, 0, 0, 0]);
    seg.extend_from_slice(payload);
    seg
}

/// Sets the checksum at `at` of an upper-layer `seg` over the IPv4 pseudo-header.
fn checksummed_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut seg: Vec<u8>, at: usize) -> Vec<u8> {
    let len = (seg.len() as u16).to_be_bytes();
    let pseudo = [0, proto, len[0], len[1]];
    let mut sum = internet_checksum(&[&src.octets(), &dst.octets(), &pseudo, &seg]);
    if sum == 0 && proto == ipproto::UDP {
        sum = 0xffff; // 0 means "no checksum" in UDP over IPv4
    }
    seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    seg
}

/// Sets the checksum at `at` of an upper-layer `seg` over the IPv6 pseudo-header.
fn checksummed_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, mut seg: Vec<u8>, at: usize) -> Vec<u8> {
    let len = (seg.len() as u32).to_be_bytes();
    let pseudo = [len[0], len[1], len[2], len[3], 0, 0, 0, proto];
    let mut sum = internet_checksum(&[&src.octets(), &dst.octets(), &pseudo, &seg]);
    if sum == 0 && proto == ipproto::UDP {
        sum = 0xffff; // a zero UDP checksum is invalid over IPv6
    }
    seg[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    seg
}
