#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use keys::PublicKey;
use proto::map::{DnsConfig, FunnelRoute, Netmap};
use proto::{Node, NodeId};

use super::*;

const NOW: u64 = 1_800_000_000;

fn node(id: u64) -> Node {
    Node {
        id: NodeId(id),
        name: format!("n{id}"),
        fqdn: format!("n{id}.mesh.internal"),
        public_key: PublicKey::from_bytes([id as u8; 32]),
        ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
        ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, id as u16),
        tags: vec![],
        endpoints: vec![],
        online: true,
        key_expiry: NOW + 86_400,
    }
}

fn route(name: &str, node: u64, port: u16, expires: u64) -> FunnelRoute {
    FunnelRoute {
        name: name.into(),
        node: NodeId(node),
        port,
        expires,
    }
}

fn netmap(routes: Vec<FunnelRoute>) -> Netmap {
    Netmap {
        self_node: node(9),
        peers: vec![node(1), node(2)],
        dns: DnsConfig {
            domain: "mesh.internal".into(),
            magic_dns: true,
        },
        packet_filter: vec![],
        funnel_routes: routes,
    }
}

fn live(name: &str, node: u8, port: u16) -> Lookup {
    Lookup::Live {
        name: name.into(),
        node_ip: IpAddr::V4(Ipv4Addr::new(100, 64, 0, node)),
        port,
    }
}

fn expired(name: &str) -> Lookup {
    Lookup::Expired { name: name.into() }
}

#[test]
fn host_forms_map_to_the_route() {
    let t = RouteTable::from_netmap(
        "Funnel.Example.",
        &netmap(vec![route("hello", 1, 3000, NOW + 60)]),
        NOW,
    )
    .unwrap();
    assert_eq!(t.domain(), "funnel.example");
    for host in [
        "hello.funnel.example",
        "HELLO.Funnel.Example",
        "hello.funnel.example.",
        "hello.funnel.example:443",
        "hello.funnel.example.:8443",
    ] {
        assert_eq!(t.lookup(host, NOW), live("hello", 1, 3000), "{host}");
    }
    for host in [
        "funnel.example",
        "other.funnel.example",
        "a.hello.funnel.example",
        "hellofunnel.example",
        "hello.funnel.example.com",
        "hello.funnel.example:",
        "hello.funnel.example:x",
        "[::1]:443",
        "127.0.0.1",
        "",
        ":443",
        "*.funnel.example",
    ] {
        assert_eq!(t.lookup(host, NOW), Lookup::Unknown, "{host:?}");
    }
    assert!(RouteTable::new("bad_domain").is_err());
}

#[test]
fn a_name_worked_out_once_routes_as_lookup_does() {
    // The proxy works a connection's funnel name out of its TLS name once and routes each
    // request with `live`: the same answer as `lookup` on the host, for every form and time.
    let t = RouteTable::from_netmap(
        "funnel.example",
        &netmap(vec![
            route("hello", 1, 3000, NOW + 60),
            route("web", 2, 8080, NOW + 600),
        ]),
        NOW,
    )
    .unwrap();
    let hosts = [
        "hello.funnel.example",
        "HELLO.Funnel.Example.:443",
        "web.funnel.example",
        "other.funnel.example",
        "a.hello.funnel.example",
        "hello.funnel.example:x",
        "funnel.example",
    ];
    for now in [NOW, NOW + 59, NOW + 60, NOW + 599, NOW + 600] {
        for host in hosts {
            let once = t.funnel_name(host).and_then(|n| t.live(&n, now));
            let each = match t.lookup(host, now) {
                Lookup::Live { node_ip, .. } => Some(node_ip),
                _ => None,
            };
            assert_eq!(once, each, "{host} at NOW + {}", now - NOW);
        }
    }
    let ip = |n| Some(IpAddr::V4(Ipv4Addr::new(100, 64, 0, n)));
    assert_eq!(t.live("hello", NOW + 59), ip(1));
    assert_eq!(t.live("hello", NOW + 60), None);
    assert_eq!(t.live("web", NOW + 60), ip(2));
    assert_eq!(t.live("other", NOW), None);
}

#[test]
fn routes_follow_the_netmap_and_skip_bad_entries() {
    let mut t = RouteTable::new("funnel.example").unwrap();
    t.update(
        &netmap(vec![
            route("a", 1, 3000, NOW + 60),
            route("B", 2, 4000, NOW + 600),
            route("ghost", 7, 5000, NOW + 60),
            route("bad.name", 1, 5000, NOW + 60),
            route("", 1, 5000, NOW + 60),
        ]),
        NOW,
    );
    assert_eq!(t.len(), 2);
    assert_eq!(t.lookup("a.funnel.example", NOW), live("a", 1, 3000));
    assert_eq!(t.lookup("b.funnel.example", NOW), live("b", 2, 4000));
    assert_eq!(t.lookup("ghost.funnel.example", NOW), Lookup::Unknown);

    // "a" moves to node 2; "b" is stopped before its expiry: gone, not "expired".
    t.update(&netmap(vec![route("a", 2, 3001, NOW + 120)]), NOW + 1);
    assert_eq!(t.lookup("a.funnel.example", NOW + 1), live("a", 2, 3001));
    assert_eq!(t.lookup("b.funnel.example", NOW + 1), Lookup::Unknown);
}

#[test]
fn expiry_listed_or_removed_is_remembered_for_a_day() {
    let mut t = RouteTable::new("funnel.example").unwrap();
    t.update(
        &netmap(vec![
            route("a", 1, 3000, NOW + 60),
            route("b", 1, 3000, NOW + 60),
            route("old", 1, 3000, NOW - 5),
        ]),
        NOW,
    );
    assert_eq!(t.lookup("old.funnel.example", NOW), expired("old"));
    // Still listed, but past its expiry at lookup time.
    assert_eq!(t.lookup("a.funnel.example", NOW + 60), expired("a"));
    // The coordinator drops "a" and "b" when they expire.
    t.update(&netmap(vec![]), NOW + 61);
    assert!(t.is_empty());
    for name in ["a", "b", "old"] {
        let host = format!("{name}.funnel.example");
        assert_eq!(t.lookup(&host, NOW + 3600), expired(name));
    }
    // A renewed funnel is live again.
    t.update(&netmap(vec![route("a", 1, 3000, NOW + 9000)]), NOW + 100);
    assert_eq!(t.lookup("a.funnel.example", NOW + 100), live("a", 1, 3000));
    // A day later the expired names are forgotten.
    let later = NOW + 61 + EXPIRED_MEMORY;
    assert_eq!(t.lookup("b.funnel.example", later), Lookup::Unknown);
    t.update(&netmap(vec![]), later);
    assert!(t.expired.is_empty() || t.expired.keys().all(|n| n == "a"));
}

#[test]
fn removal_just_before_expiry_counts_as_expired() {
    let mut t = RouteTable::new("funnel.example").unwrap();
    t.update(&netmap(vec![route("a", 1, 3000, NOW + 30)]), NOW);
    t.update(&netmap(vec![]), NOW);
    assert_eq!(t.lookup("a.funnel.example", NOW), expired("a"));
}

#[test]
fn expired_names_are_bounded() {
    let mut t = RouteTable::new("funnel.example").unwrap();
    let n = MAX_EXPIRED + 50;
    let routes = (0..n).map(|i| route(&format!("f{i}"), 1, 1, NOW)).collect();
    t.update(&netmap(routes), NOW);
    t.update(&netmap(vec![]), NOW + 1);
    assert_eq!(t.expired.len(), MAX_EXPIRED);
    assert_eq!(t.expired_order.len(), MAX_EXPIRED);
    // Re-noticing a name must not leave a stale entry in the eviction order.
    t.update(&netmap(vec![route("f1", 1, 1, NOW)]), NOW + 2);
    t.update(&netmap(vec![]), NOW + 3);
    assert_eq!(t.expired.len(), t.expired_order.len());
}
