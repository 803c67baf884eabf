//! coord and three meshd nodes on one segment: every pair pings over the mesh, IPv4 and IPv6,
//! through real TUN devices and the project's own WireGuard data plane.

#![allow(clippy::unwrap_used)]

mod mesh;
mod meshx;

use std::time::Duration;

use mesh::{Coord, Node};
use meshx::{lan, wait_ping};
use netns_tests::{require_root, wait_until, Ipv4Net, Topology};

#[test]
fn every_pair_of_nodes_pings_over_the_mesh() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (hosts, _lan) = lan(&topo, &["coord", "n1", "n2", "n3"]);

    let coord = Coord::start(&hosts[0], 8443);
    let key = coord.authkey(&[]);
    let nodes: Vec<Node> = hosts[1..]
        .iter()
        .enumerate()
        .map(|(i, h)| Node::up(h, &coord, &key, &format!("n{}", i + 1)))
        .collect();

    for (i, from) in hosts[1..].iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            for addr in [&to.ipv4, &to.ipv6] {
                // The first packets wait for the netmap and the handshake: retry, bounded.
                wait_ping(from, addr, 15, &[&nodes[i], to]);
            }
        }
    }
    // And a steady run: 5 pings each way between n1 and n2, none lost.
    let out = hosts[1]
        .run(
            "ping",
            &["-c", "5", "-i", "0.2", "-W", "2", &nodes[1].ipv4],
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(out.contains("5 received"), "{out}");

    // What the user sees in `meshd status`: peers with endpoints on the LAN, recent handshakes,
    // traffic both ways, nothing dropped as spoofed. (Status is refreshed every second.)
    wait_until("status shows traffic", Duration::from_secs(5), || {
        let s = nodes[0].status();
        let peers = s["peers"].as_array().unwrap();
        Ok(peers.len() == 2 && peers.iter().all(|p| p["rx_bytes"].as_u64() > Some(0)))
    })
    .unwrap();
    let s = nodes[0].status();
    assert_eq!(s["coord_connected"], true, "{}", nodes[0].process.stderr());
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{s}");
    for p in peers {
        assert!(
            p["endpoint"].as_str().unwrap().starts_with("203.0.113."),
            "{p}"
        );
        assert!(p["last_handshake_secs"].as_u64().unwrap() < 60, "{p}");
        assert!(p["tx_bytes"].as_u64().unwrap() > 0, "{p}");
    }
    assert_eq!(s["drops"]["spoofed_source"], 0);
    let (ok, ip) = nodes[0].cli(&["ip"]);
    assert!(
        ok && ip.contains(&nodes[0].ipv4) && ip.contains(&nodes[0].ipv6),
        "{ip}"
    );

    // `meshd ping` by name and by IPv6 address: RTT and the endpoint it went through.
    let (ok, text) = nodes[0].cli(&["ping", "n2", "-c", "2"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("pong from n2").count(), 2, "{text}");
    assert!(text.contains("via 203.0.113.12:41641"), "{text}");
    let (ok, text) = nodes[0].cli(&["ping", &nodes[2].ipv6, "-c", "1"]);
    assert!(ok && text.contains("pong from n3"), "{text}");
    let (ok, text) = nodes[0].cli(&["ping", "nobody", "-c", "1"]);
    assert!(!ok && text.contains("no peer named"), "{text}");

    // A mesh address no peer owns: a connect to it fails with "no route to host" (meshd answers
    // the host with ICMP host unreachable, as kernel WireGuard does) instead of sending SYNs for
    // minutes.
    let mut unowned6: std::net::Ipv6Addr = nodes[0].ipv6.parse().unwrap();
    let mut segments = unowned6.segments();
    segments[7] = 0xfffe;
    unowned6 = segments.into();
    for addr in ["100.64.255.254".to_owned(), unowned6.to_string()] {
        let started = std::time::Instant::now();
        // bash's /dev/tcp: a plain connect(2), and its error as the kernel gave it.
        let connect = format!("exec 3<>/dev/tcp/{addr}/8080");
        let out = hosts[1]
            .output(
                "timeout",
                &["20", "bash", "-c", &connect],
                Duration::from_secs(25),
            )
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No route to host"), "{addr}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr}: {:?}",
            started.elapsed()
        );
    }

    // The TUN device queues up to meshd's TX_QUEUE_LEN packets, not the kernel's default 500.
    let link = hosts[1]
        .run("ip", &["link", "show", "mesh0"], Duration::from_secs(5))
        .unwrap();
    assert!(link.contains("qlen 4096"), "{link}");
    // `meshd down` stops it, and its TUN device goes with it.
    let (ok, text) = nodes[0].cli(&["down"]);
    assert!(ok, "{text}");
    let mut n1 = nodes.into_iter().next().unwrap();
    wait_until("meshd exits", Duration::from_secs(5), || {
        Ok(n1.process.try_wait()?.is_some())
    })
    .unwrap();
    assert!(hosts[1]
        .run("ip", &["link", "show", "mesh0"], Duration::from_secs(5))
        .is_err());
    let (ok, text) = n1.cli(&["status"]);
    assert!(!ok && text.contains("meshd is not running"), "{text}");
}

/// Two nodes whose only working path to each other is IPv6: the control plane runs over IPv4,
/// but every IPv4 datagram between the nodes' WireGuard ports is dropped by nftables. The mesh
/// still carries traffic, and the peers' endpoints are IPv6 addresses.
#[test]
fn nodes_reach_each_other_over_an_ipv6_underlay() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (hosts, _ctl) = lan(&topo, &["coord", "n1", "n2"]);
    let wan: Vec<(&netns_tests::Host, Ipv4Net, Option<netns_tests::Ipv6Net>)> = hosts[1..]
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let v4 = format!("198.51.100.{}/24", 11 + i).parse().unwrap();
            let v6 = format!("2001:db8:6::{}/64", 11 + i).parse().unwrap();
            (h, v4, Some(v6))
        })
        .collect();
    let _wan = topo.bridge("wan6", &wan).unwrap();
    for h in &hosts[1..] {
        let rules =
            "table inet v4block {\n chain input {\n  type filter hook input priority 0;\n  \
                     meta nfproto ipv4 udp dport 41641 counter drop\n }\n}\n";
        h.run_with_input(
            "nft",
            &["-f", "-"],
            Some(rules.as_bytes()),
            Duration::from_secs(5),
        )
        .unwrap();
    }

    let coord = Coord::start(&hosts[0], 8443);
    let key = coord.authkey(&[]);
    let n1 = Node::up(&hosts[1], &coord, &key, "n1");
    let n2 = Node::up(&hosts[2], &coord, &key, "n2");
    for (from, to) in [(&hosts[1], &n2), (&hosts[2], &n1)] {
        for addr in [&to.ipv4, &to.ipv6] {
            wait_ping(from, addr, 20, &[&n1, &n2]);
        }
    }
    wait_until(
        "status shows the IPv6 endpoint",
        Duration::from_secs(5),
        || {
            let s = n1.status();
            Ok(s["peers"][0]["endpoint"].as_str() == Some("[2001:db8:6::12]:41641"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", n1.status()));
    // The IPv4 path really was closed: the blocked datagrams were counted. Whichever node
    // initiated first sent its handshake to every candidate endpoint, the IPv4 one included;
    // the other may have answered over IPv6 without ever trying IPv4, so only the sum counts.
    let counters: Vec<String> = hosts[1..]
        .iter()
        .map(|h| {
            h.run(
                "nft",
                &["list", "table", "inet", "v4block"],
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .collect();
    assert!(
        counters.iter().any(|c| !c.contains("packets 0 ")),
        "{counters:?}"
    );
    let (ok, text) = n1.cli(&["ping", "n2", "-c", "1"]);
    assert!(ok && text.contains("via [2001:db8:6::12]:41641"), "{text}");
}
