//! Mutation fuzzing of [`parse`](super::parse) in the style of `proto/tests/mutation_fuzz.rs`:
//! valid packets are flipped, truncated, spliced and grown, and length fields are set to edge
//! values; the parser must answer `Ok` or `Err`, never panic, and what it accepts must be
//! self-consistent. Deterministic (fixed xorshift seed) and bounded.

use std::net::{Ipv4Addr, Ipv6Addr};

use testkit::fuzz::{self, Rng};

use super::build;
use super::*;

/// Bytes that steer the parser into its branches: versions, IHLs, extension-header and
/// protocol numbers, ICMP types, length extremes.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0b, 0x11, 0x2b, 0x2c, 0x33, 0x3a, 0x3b, 0x3c, 0x40,
    0x45, 0x4f, 0x60, 0x80, 0x81, 0xff,
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 => fuzz::flip_bit(rng, &mut v),
            1 => fuzz::truncate(rng, &mut v),
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 if v.len() > 1 => {
                // A 16-bit length-like field set to an edge value.
                let i = rng.below(v.len() - 1);
                let edge = [0u16, 1, 7, 8, 19, 20, 39, 40, 0x7fff, 0xffff][rng.below(10)];
                v[i..i + 2].copy_from_slice(&edge.to_be_bytes());
            }
            4 => fuzz::insert_byte(rng, &mut v),
            5 => fuzz::cut(rng, &mut v),
            _ => {
                let extra = rng.below(64);
                v.extend((0..extra).map(|_| rng.next_u64() as u8));
            }
        }
    }
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let (a4, b4) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
    let (a6, b6) = (
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        Ipv6Addr::LOCALHOST,
    );
    let udp6 = build::udp_v6(a6, b6, 1, 2, b"payload");
    // Hop-by-hop, fragment (first) and destination options before UDP.
    let mut ext = vec![ipproto::FRAGMENT, 0, 0, 0, 0, 0, 0, 0];
    ext.extend_from_slice(&[ipproto::DEST_OPTS, 0, 0, 1, 0, 0, 0, 7]);
    ext.extend_from_slice(&[ipproto::UDP, 0, 0, 0, 0, 0, 0, 0]);
    ext.extend_from_slice(&udp6[40..]);
    vec![
        build::udp_v4(a4, b4, 53, 5353, b"hello"),
        build::tcp_v4(a4, b4, 22, 40000, TcpFlags::SYN, b""),
        build::icmp_echo_v4(a4, b4, 1, 2, b"ping"),
        build::icmp_error_v4(b4, a4, 3, 3, &build::udp_v4(a4, b4, 1, 2, &[0; 40])),
        udp6.clone(),
        build::tcp_v6(a6, b6, 80, 8080, TcpFlags::ACK, b"get"),
        build::icmp_echo_reply_v6(a6, b6, 3, 4, b""),
        build::icmp_error_v6(b6, a6, 1, 4, &udp6),
        build::ipv6(a6, b6, ipproto::HOP_BY_HOP, &ext),
    ]
}

fn check(bytes: &[u8]) -> bool {
    match parse(bytes) {
        Ok(p) => {
            assert!(p.total_len <= bytes.len(), "{p:?}");
            assert!(p.header_len <= p.total_len, "{p:?}");
            assert_eq!(p.src.is_ipv6(), p.dst.is_ipv6());
            let _ = (p.flow(), p.ports(), p.version());
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

#[test]
fn parse_never_panics_on_mutated_packets() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut ok, mut total) = (0, 0);
    for seed in seeds() {
        assert!(check(&seed), "seed parses");
        for _ in 0..20_000 {
            ok += usize::from(check(&mutate(&mut rng, &seed)));
            total += 1;
        }
    }
    // Both outcomes occur: the mutations reach past the first length check.
    assert!(ok > total / 20 && ok < total, "{ok} of {total} parsed");
}

#[test]
fn parse_never_panics_on_random_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(128);
        let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(first) = v.first_mut() {
            *first = [0x45, 0x46, 0x60, *first][rng.below(4)];
        }
        check(&v);
    }
}
