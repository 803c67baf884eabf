//! Segments built and read back by smoltcp's wire module (not by the code under test).

#![allow(clippy::unwrap_used)] // test code

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, TcpTimestampRepr,
};

use super::*;

const SEQ: u32 = 0xffff_f000; // runs wrap around 2^32

fn ends(v6: bool) -> (IpAddress, IpAddress) {
    if v6 {
        (
            "fd7a::2".parse::<std::net::Ipv6Addr>().unwrap().into(),
            "fd7a::1".parse::<std::net::Ipv6Addr>().unwrap().into(),
        )
    } else {
        (
            std::net::Ipv4Addr::new(100, 64, 0, 2).into(),
            std::net::Ipv4Addr::new(100, 64, 0, 1).into(),
        )
    }
}

/// A data segment from port 8080 to 50000 acknowledging 7, with `edit` applied to it.
fn segment(v6: bool, seq: u32, payload: &[u8], edit: impl FnOnce(&mut TcpRepr<'_>)) -> Vec<u8> {
    let mut tcp = TcpRepr {
        src_port: 8080,
        dst_port: 50000,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(7)),
        window_len: 1000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    edit(&mut tcp);
    let (src, dst) = ends(v6);
    let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
    let mut buf = vec![0; ip.buffer_len()];
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut buf[..], &caps);
    let at = ip.header_len();
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[at..]),
        &src,
        &dst,
        &caps,
    );
    buf
}

fn plain(v6: bool, seq: u32, payload: &[u8]) -> Vec<u8> {
    segment(v6, seq, payload, |_| {})
}

/// The TCP segment of a packet, parsed by smoltcp (IPv4's header checksum checked).
fn parsed(packet: &[u8]) -> (u32, u16, TcpControl, Vec<u8>) {
    let (tcp, src, dst) = if packet[0] >> 4 == 4 {
        let ip = Ipv4Packet::new_checked(packet).unwrap();
        assert!(ip.verify_checksum(), "the IPv4 header checksum");
        let (s, d) = (ip.src_addr().into(), ip.dst_addr().into());
        (&packet[20..usize::from(ip.total_len())], s, d)
    } else {
        let ip = Ipv6Packet::new_checked(packet).unwrap();
        let (s, d) = (ip.src_addr().into(), ip.dst_addr().into());
        (&packet[40..40 + usize::from(ip.payload_len())], s, d)
    };
    let seg = TcpPacket::new_checked(tcp).unwrap();
    let repr = TcpRepr::parse(&seg, &src, &dst, &ChecksumCapabilities::ignored()).unwrap();
    (
        repr.seq_number.0 as u32,
        repr.window_len,
        repr.control,
        repr.payload.to_vec(),
    )
}

/// Joins `rest` to `first` one by one, each only if it continues the run.
fn join_all(first: &[u8], rest: &[Vec<u8>]) -> (Vec<u8>, Vec<bool>) {
    let mut head = first.to_vec();
    let mut run = Run::of(&head).unwrap();
    let joined = rest
        .iter()
        .map(|next| {
            let next_run = Run::of(next).unwrap();
            let ok = run.continued_by(&head, next, &next_run);
            if ok {
                run = run.join(&mut head, next, &next_run);
            }
            ok
        })
        .collect();
    assert_eq!(run.len(), head.len());
    run.finish(&mut head);
    (head, joined)
}

#[test]
fn a_run_of_segments_becomes_one_with_its_bytes_in_order() {
    for v6 in [false, true] {
        let first = plain(v6, SEQ, &[1; 1380]);
        let second = segment(v6, SEQ.wrapping_add(1380), &[2; 1380], |t| {
            t.window_len = 2000
        });
        let third = segment(v6, SEQ.wrapping_add(2760), &[3; 700], |t| {
            t.window_len = 3000;
            t.control = TcpControl::Psh;
        });
        let (joined, ok) = join_all(&first, &[second, third]);
        assert_eq!(ok, [true, true], "v6 {v6}");
        let (seq, window, control, payload) = parsed(&joined);
        assert_eq!(seq, SEQ);
        assert_eq!(window, 3000, "the latest window");
        assert_eq!(control, TcpControl::Psh, "a PSH in the run");
        let mut expected = vec![1; 1380];
        expected.extend([2; 1380]);
        expected.extend([3; 700]);
        assert_eq!(payload, expected);
        // The joined run continues where the last segment ended.
        let fourth = plain(v6, SEQ.wrapping_add(3460), &[4; 10]);
        let run = Run::of(&joined).unwrap();
        assert!(run.continued_by(&joined, &fourth, &Run::of(&fourth).unwrap()));
    }
}

#[test]
fn only_a_segment_that_continues_the_run_joins_it() {
    let ts =
        |v| move |t: &mut TcpRepr<'_>| t.timestamp = Some(TcpTimestampRepr { tsval: v, tsecr: 1 });
    let first = plain(false, SEQ, &[1; 100]);
    let next = SEQ.wrapping_add(100);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("the next bytes", plain(false, next, &[2; 100]), true),
        ("a gap", plain(false, next + 1, &[2; 100]), false),
        ("a resend", plain(false, SEQ, &[1; 100]), false),
        (
            "another port",
            segment(false, next, &[2; 100], |t| t.dst_port = 50001),
            false,
        ),
        (
            "another acknowledgement",
            segment(false, next, &[2; 100], |t| {
                t.ack_number = Some(TcpSeqNumber(8))
            }),
            false,
        ),
        (
            "another address family",
            plain(true, next, &[2; 100]),
            false,
        ),
    ];
    for (name, segment, joins) in cases {
        let (_, ok) = join_all(&first, &[segment]);
        assert_eq!(ok, [joins], "{name}");
    }
    // Another source address, same ports.
    let mut other = plain(false, next, &[2; 100]);
    other[15] = 9;
    assert_eq!(join_all(&first, &[other]).1, [false], "another address");
    // Timestamps: the same value joins, a moved one does not.
    let first = segment(false, SEQ, &[1; 100], ts(5));
    let (_, ok) = join_all(
        &first,
        &[
            segment(false, next, &[2; 100], ts(5)),
            segment(false, next + 100, &[3; 100], ts(6)),
        ],
    );
    assert_eq!(ok, [true, false]);
}

#[test]
fn what_is_not_plain_data_starts_no_run() {
    let data = plain(false, SEQ, &[1; 100]);
    assert!(Run::of(&data).is_some());
    let control = |c| segment(false, SEQ, &[1; 100], |t| t.control = c);
    for (name, packet) in [
        ("SYN", control(TcpControl::Syn)),
        ("FIN", control(TcpControl::Fin)),
        ("RST", control(TcpControl::Rst)),
        ("no payload", plain(false, SEQ, &[])),
        (
            "UDP",
            crate::packet::build::udp_v4([1, 1, 1, 1].into(), [2, 2, 2, 2].into(), 1, 2, &[0; 40]),
        ),
        ("cut short", data[..60].to_vec()),
        ("a header only", data[..30].to_vec()),
        ("nothing", Vec::new()),
        ("not IP", vec![0x20; 200]),
    ] {
        assert_eq!(Run::of(&packet), None, "{name}");
    }
    let edited = |at: usize, byte: u8| {
        let mut p = data.clone();
        p[at] = byte;
        p
    };
    assert_eq!(Run::of(&edited(6, 0x20)), None, "more fragments");
    assert_eq!(Run::of(&edited(7, 1)), None, "a fragment's offset");
    assert_eq!(Run::of(&edited(0, 0x46)), None, "IPv4 options");
    assert_eq!(Run::of(&edited(33, 0x10 | 0x40)), None, "ECE");
    assert_eq!(Run::of(&edited(33, 0x10 | 0x20)), None, "URG");
    let v6 = plain(true, SEQ, &[1; 100]);
    let mut hop_by_hop = v6.clone();
    hop_by_hop[6] = 0;
    assert_eq!(Run::of(&hop_by_hop), None, "an IPv6 extension header");
    // Bytes after the IP length (padding) are not the packet's.
    let mut padded = data.clone();
    padded.extend([0; 12]);
    assert_eq!(Run::of(&padded).unwrap().len(), data.len());
}

#[test]
fn a_run_stops_at_the_largest_ip_packet() {
    for v6 in [false, true] {
        let mss = 1380;
        let first = plain(v6, SEQ, &[0; 1380]);
        let rest: Vec<Vec<u8>> = (1..60u32)
            .map(|i| plain(v6, SEQ.wrapping_add(i * mss), &[i as u8; 1380]))
            .collect();
        let (joined, ok) = join_all(&first, &rest);
        let taken = ok.iter().take_while(|j| **j).count();
        assert!(
            ok[taken..].iter().all(|j| !j),
            "nothing after the first refusal"
        );
        let header = if v6 { 60 } else { 40 };
        assert_eq!(taken, (JOINED_MAX - header) / 1380 - 1, "v6 {v6}");
        assert!(joined.len() <= JOINED_MAX);
        let (_, _, _, payload) = parsed(&joined);
        assert_eq!(payload.len(), (taken + 1) * 1380);
        assert!(payload[1380 * taken..].iter().all(|&b| b == taken as u8));
    }
}
