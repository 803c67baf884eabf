use std::net::{Ipv4Addr, Ipv6Addr};

use super::build::{self, internet_checksum};
use super::*;

const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

#[test]
fn checksums_match_reference_values() {
    // The IPv4 header example of RFC 1071-style tutorials (Wikipedia "IPv4 header checksum").
    let hdr = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&[&hdr]), 0xb861);
    // Values below were computed independently with Python's struct module.
    let p = build::udp_v4(A4, B4, 1234, 53, b"hello");
    assert_eq!(&p[10..12], &0x4e95u16.to_be_bytes(), "IPv4 header checksum");
    assert_eq!(&p[26..28], &0xcac3u16.to_be_bytes(), "UDP checksum");
    let p = build::icmp_echo_v6(A6, B6, 7, 1, b"ping");
    assert_eq!(&p[42..44], &0x456bu16.to_be_bytes(), "ICMPv6 checksum");
    // Odd split points give the same sum as one buffer.
    assert_eq!(
        internet_checksum(&[&hdr[..3], &hdr[3..11], &hdr[11..]]),
        0xb861
    );
}

#[test]
fn built_packets_verify_and_parse() {
    let pseudo4 = |p: &[u8]| {
        let len = ((p.len() - 20) as u16).to_be_bytes();
        internet_checksum(&[&p[12..20], &[0, p[9], len[0], len[1]], &p[20..]])
    };
    let pseudo6 = |p: &[u8]| {
        let len = ((p.len() - 40) as u32).to_be_bytes();
        internet_checksum(&[&p[8..40], &len, &[0, 0, 0, p[6]], &p[40..]])
    };
    for p in [
        build::udp_v4(A4, B4, 1, 2, b"odd"),
        build::tcp_v4(A4, B4, 1, 2, TcpFlags::SYN, b""),
    ] {
        assert_eq!(internet_checksum(&[&p[..20]]), 0);
        assert_eq!(pseudo4(&p), 0);
    }
    let p = build::icmp_echo_v4(A4, B4, 9, 3, b"x");
    assert_eq!(internet_checksum(&[&p[20..]]), 0);
    for p in [
        build::udp_v6(A6, B6, 1, 2, b"odd"),
        build::tcp_v6(A6, B6, 1, 2, TcpFlags::ACK, b"data"),
        build::icmp_echo_reply_v6(A6, B6, 1, 2, b""),
    ] {
        assert_eq!(pseudo6(&p), 0);
    }
}

#[test]
fn udp_and_tcp_over_both_versions() {
    let p = parse(&build::udp_v4(A4, B4, 1234, 53, b"hello")).unwrap();
    assert_eq!((p.version(), p.src, p.dst), (4, A4.into(), B4.into()));
    assert_eq!(
        (p.protocol, p.header_len, p.total_len),
        (ipproto::UDP, 20, 33)
    );
    assert_eq!(p.ports(), Some((1234, 53)));
    assert_eq!(p.fragment, Fragment::Unfragmented);

    let p = parse(&build::udp_v6(A6, B6, 5, 6, b"")).unwrap();
    assert_eq!((p.version(), p.src, p.dst), (6, A6.into(), B6.into()));
    assert_eq!(
        (p.header_len, p.total_len, p.ports()),
        (40, 48, Some((5, 6)))
    );

    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    let p = parse(&build::tcp_v6(A6, B6, 443, 50000, syn_ack, b"")).unwrap();
    let Transport::Tcp { flags, .. } = p.transport else {
        panic!("{p:?}")
    };
    assert!(flags.contains(TcpFlags::SYN) && !flags.is_initial_syn());
    let p = parse(&build::tcp_v4(A4, B4, 50000, 22, TcpFlags::SYN, b"")).unwrap();
    assert!(matches!(p.transport, Transport::Tcp { flags, .. } if flags.is_initial_syn()));
    let f = p.flow().unwrap();
    assert_eq!(
        (f.src_port, f.dst_port, f.reversed().src_port),
        (50000, 22, 22)
    );
}

#[test]
fn icmp_echo_and_errors() {
    let req = build::icmp_echo_v4(A4, B4, 77, 1, b"abc");
    let p = parse(&req).unwrap();
    assert!(matches!(
        p.transport,
        Transport::Icmp(Icmp {
            icmp_type: 8,
            message: IcmpMessage::EchoRequest { id: 77, seq: 1 },
            ..
        })
    ));
    let reply = parse(&build::icmp_echo_reply_v4(B4, A4, 77, 1, b"abc")).unwrap();
    assert_eq!(
        reply.flow(),
        p.flow().map(|f| f.reversed()),
        "reply flow is the request's reversed"
    );
    let p6 = parse(&build::icmp_echo_v6(A6, B6, 5, 9, b"")).unwrap();
    assert_eq!(
        p6.flow().map(|f| (f.protocol, f.src_port, f.dst_port)),
        Some((58, 5, 0))
    );

    let sent = build::udp_v4(A4, B4, 4000, 53, &[0; 100]);
    let err = parse(&build::icmp_error_v4(B4, A4, 3, 3, &sent[..28])).unwrap();
    let Transport::Icmp(Icmp {
        message: IcmpMessage::Error { original },
        ..
    }) = err.transport
    else {
        panic!("{err:?}")
    };
    assert_eq!(original, parse(&sent).unwrap().flow());
    assert_eq!(err.flow(), None);

    let sent6 = build::icmp_echo_v6(A6, B6, 42, 1, &[0; 2000]);
    let err6 = parse(&build::icmp_error_v6(B6, A6, 2, 0, &sent6)).unwrap();
    assert_eq!(err6.total_len, 1280);
    let Transport::Icmp(Icmp {
        message: IcmpMessage::Error { original },
        ..
    }) = err6.transport
    else {
        panic!("{err6:?}")
    };
    assert_eq!(original.map(|f| (f.src, f.src_port)), Some((A6.into(), 42)));

    // A quoted header that is garbage, or of the other IP version, is no flow.
    let junk = parse(&build::icmp_error_v4(B4, A4, 11, 0, &[0x45, 1, 2])).unwrap();
    assert!(matches!(
        junk.transport,
        Transport::Icmp(Icmp {
            message: IcmpMessage::Error { original: None },
            ..
        })
    ));
    let cross = parse(&build::icmp_error_v4(B4, A4, 3, 1, &sent6[..48])).unwrap();
    assert!(matches!(
        cross.transport,
        Transport::Icmp(Icmp {
            message: IcmpMessage::Error { original: None },
            ..
        })
    ));
    // ICMP of the wrong family is just another protocol.
    let odd = build::ipv6(A6, B6, ipproto::ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(parse(&odd).unwrap().transport, Transport::Other);
}

#[test]
fn length_checks() {
    let good = build::udp_v4(A4, B4, 1, 2, b"12345678");
    let mut long = good.clone();
    long.extend_from_slice(&[0xee; 10]);
    assert_eq!(
        parse(&long).unwrap().total_len,
        good.len(),
        "trailing bytes ignored"
    );
    assert_eq!(parse(&[]), Err(PacketError::Empty));
    assert_eq!(parse(&[0x55]), Err(PacketError::UnknownVersion(5)));
    assert!(matches!(
        parse(&good[..19]),
        Err(PacketError::TruncatedHeader { need: 20, .. })
    ));
    assert!(matches!(
        parse(&good[..30]),
        Err(PacketError::TotalLengthExceedsBuffer {
            total: 36,
            buffer: 30
        })
    ));
    let mut p = good.clone();
    p[0] = 0x44;
    assert_eq!(parse(&p), Err(PacketError::BadIhl(4)));
    p[0] = 0x4f; // 60-byte header in a 36-byte packet
    assert!(matches!(
        parse(&p),
        Err(PacketError::TotalLengthTooSmall { header: 60, .. })
    ));
    let mut p = good.clone();
    p[3] = 19;
    assert!(matches!(
        parse(&p),
        Err(PacketError::TotalLengthTooSmall { total: 19, .. })
    ));
    let mut p = good.clone();
    p[24..26].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(parse(&p), Err(PacketError::BadUdpLength(7)));
    let short_tcp = build::ipv4(A4, B4, ipproto::TCP, &[0; 12]);
    assert!(matches!(
        parse(&short_tcp),
        Err(PacketError::TruncatedTransport {
            protocol: 6,
            need: 20,
            ..
        })
    ));
    let mut bad_off = build::tcp_v4(A4, B4, 1, 2, TcpFlags::ACK, b"");
    bad_off[32] = 6 << 4;
    assert_eq!(parse(&bad_off), Err(PacketError::BadTcpDataOffset(6)));

    let v6 = build::udp_v6(A6, B6, 1, 2, b"abc");
    assert!(matches!(
        parse(&v6[..39]),
        Err(PacketError::TruncatedHeader { need: 40, .. })
    ));
    assert!(matches!(
        parse(&v6[..50]),
        Err(PacketError::TotalLengthExceedsBuffer { total: 51, .. })
    ));
}

/// An IPv6 packet with extension headers `(type, bytes)` before a UDP datagram.
fn with_extensions(exts: &[(u8, Vec<u8>)], udp_tail: bool) -> Vec<u8> {
    let udp = build::udp_v6(A6, B6, 1000, 2000, b"xy");
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut h = bytes.clone();
        h[0] = exts
            .get(i + 1)
            .map_or(if udp_tail { ipproto::UDP } else { 99 }, |e| e.0);
        body.extend_from_slice(&h);
    }
    body.extend_from_slice(&udp[40..]);
    build::ipv6(A6, B6, exts.first().map_or(ipproto::UDP, |e| e.0), &body)
}

fn opts(len_units: u8) -> Vec<u8> {
    let mut h = vec![0; (usize::from(len_units) + 1) * 8];
    h[1] = len_units;
    h
}

fn frag(offset: u16, more: bool) -> Vec<u8> {
    let v = (offset << 3) | u16::from(more);
    let b = v.to_be_bytes();
    vec![0, 0, b[0], b[1], 0, 0, 0, 1]
}

#[test]
fn ipv6_extension_headers() {
    use ipproto::{DEST_OPTS, FRAGMENT, HOP_BY_HOP, ROUTING};
    let p = parse(&with_extensions(
        &[
            (HOP_BY_HOP, opts(0)),
            (ROUTING, opts(1)),
            (DEST_OPTS, opts(0)),
        ],
        true,
    ))
    .unwrap();
    assert_eq!(
        (p.protocol, p.header_len, p.ports()),
        (ipproto::UDP, 72, Some((1000, 2000)))
    );

    let first = parse(&with_extensions(&[(FRAGMENT, frag(0, true))], true)).unwrap();
    assert_eq!(
        (first.fragment, first.ports()),
        (Fragment::First, Some((1000, 2000)))
    );
    let atomic = parse(&with_extensions(&[(FRAGMENT, frag(0, false))], true)).unwrap();
    assert_eq!(atomic.fragment, Fragment::Unfragmented);
    let later = parse(&with_extensions(&[(FRAGMENT, frag(3, true))], true)).unwrap();
    assert_eq!(
        (later.fragment, later.transport),
        (Fragment::Later { offset: 3 }, Transport::Other)
    );
    assert_eq!((later.protocol, later.flow()), (ipproto::UDP, None));

    let other = parse(&with_extensions(&[(DEST_OPTS, opts(0))], false)).unwrap();
    assert_eq!((other.protocol, other.transport), (99, Transport::Other));
    let nine = vec![(DEST_OPTS, opts(0)); MAX_EXTENSION_HEADERS + 1];
    assert_eq!(
        parse(&with_extensions(&nine, true)),
        Err(PacketError::TooManyExtensionHeaders)
    );
    let eight = vec![(DEST_OPTS, opts(0)); MAX_EXTENSION_HEADERS];
    assert!(parse(&with_extensions(&eight, true)).is_ok());
    assert_eq!(
        parse(&with_extensions(
            &[(DEST_OPTS, opts(0)), (HOP_BY_HOP, opts(0))],
            true
        )),
        Err(PacketError::MisplacedHopByHop)
    );
    let mut truncated = with_extensions(&[(ROUTING, opts(1))], true);
    truncated[41] = 200; // claims 1608 bytes
    assert_eq!(
        parse(&truncated),
        Err(PacketError::TruncatedExtensionHeader(ROUTING))
    );
}

#[test]
fn ipv4_fragments() {
    let mut first = build::udp_v4(A4, B4, 7, 8, b"data");
    first[6] = 0x20; // MF
    assert_eq!(parse(&first).unwrap().fragment, Fragment::First);
    let mut later = build::ipv4(A4, B4, ipproto::TCP, &[1, 2, 3]);
    later[6..8].copy_from_slice(&1u16.to_be_bytes());
    let p = parse(&later).unwrap();
    assert_eq!(
        (p.fragment, p.transport, p.ports()),
        (Fragment::Later { offset: 1 }, Transport::Other, None)
    );
}
