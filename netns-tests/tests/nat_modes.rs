//! NAT modes as a peer on the internet sees them: which address and port a node's UDP socket
//! appears with at three destinations. Needs root (see `require_root`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::T;
use netns_tests::{NatMode, StandardTopology};

/// Listens on UDP 9001–9003 at ADDR; prints "PORT from IP:PORT" per datagram and answers it.
const ECHO: &str = r#"
import select, socket, sys
socks = []
for port in (9001, 9002, 9003):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    socks.append(s)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 30)
    for s in ready:
        data, peer = s.recvfrom(100)
        print(f"{s.getsockname()[1]} from {peer[0]}:{peer[1]}", flush=True)
        s.sendto(b"ok", peer)
"#;

/// From one socket bound to port 40000, sends to ADDR:9001–9003 and waits for each answer.
const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
s.settimeout(3)
for port in (9001, 9002, 9003):
    s.sendto(b"hi", (sys.argv[1], port))
    s.recvfrom(100)
print("answered")
"#;

#[test]
fn masquerade_keeps_one_mapping_and_symmetric_nat_does_not() {
    if !netns_tests::require_root() {
        return;
    }
    let std = StandardTopology::with_nat(NatMode::Masquerade, NatMode::Symmetric).unwrap();
    assert_eq!(std.nat_b.mode(), NatMode::Symmetric);
    let client = std.client.ipv4().unwrap().to_string();
    let mut echo = std.client.spawn("python3", &["-c", ECHO, &client]).unwrap();
    echo.wait_for_output("ready", T).unwrap();

    for (node, nat) in [(&std.node_a, &std.nat_a), (&std.node_b, &std.nat_b)] {
        let out = node.run("python3", &["-c", SEND, &client], T).unwrap();
        assert_eq!(out, "answered\n");
        let wan = nat.wan_v4().to_string();
        let seen: Vec<(String, u16)> = echo
            .stdout()
            .lines()
            .filter_map(|l| l.split_once(" from ")?.1.rsplit_once(':'))
            .filter(|(addr, _)| *addr == wan)
            .map(|(addr, port)| (addr.to_owned(), port.parse().unwrap()))
            .collect();
        assert_eq!(seen.len(), 3, "{}", echo.stdout());
        let ports: BTreeSet<u16> = seen.iter().map(|(_, port)| *port).collect();
        match nat.mode() {
            // One mapping for every destination, and Linux keeps the free source port.
            NatMode::Masquerade => assert_eq!(ports, BTreeSet::from([40000])),
            // A fresh random port per destination (three equal draws: about 1 in 2^32).
            NatMode::Symmetric => assert!(ports.len() > 1, "{ports:?}"),
            other => panic!("unexpected mode {other:?}"),
        }
    }
    // The node's own address never reaches the internet.
    assert!(!echo.stdout().contains("172.31."), "{}", echo.stdout());
}
