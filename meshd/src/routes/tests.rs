use std::net::IpAddr;

use ipnet::IpNet;

use super::RouteTable;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn longest_prefix_wins_v4_and_v6() {
    let mut t = RouteTable::new();
    t.insert(net("0.0.0.0/0"), 0);
    t.insert(net("10.0.0.0/8"), 1);
    t.insert(net("10.1.0.0/16"), 2);
    t.insert(net("10.1.2.3/32"), 3);
    t.insert(net("fd00::/48"), 4);
    t.insert(net("fd00:0:0:1::/64"), 5);
    t.insert(net("fd00::1:0:0:0:7/128"), 6);
    assert_eq!(t.lookup(ip("10.1.2.3")), Some(3));
    assert_eq!(t.lookup(ip("10.1.2.4")), Some(2));
    assert_eq!(t.lookup(ip("10.200.0.1")), Some(1));
    assert_eq!(t.lookup(ip("192.0.2.1")), Some(0));
    assert_eq!(t.lookup(ip("fd00::1:0:0:0:7")), Some(6));
    assert_eq!(t.lookup(ip("fd00:0:0:1::8")), Some(5));
    assert_eq!(t.lookup(ip("fd00:0:0:2::1")), Some(4));
    assert_eq!(t.lookup(ip("2001:db8::1")), None, "no IPv6 default route");
    assert_eq!(t.len(), 7);
}

#[test]
fn host_bits_are_ignored_and_last_insert_wins() {
    let mut t = RouteTable::new();
    assert_eq!(t.insert(net("10.1.2.3/8"), 'a'), None);
    assert_eq!(t.get(net("10.0.0.0/8")), Some('a'));
    assert_eq!(t.insert(net("10.0.0.0/8"), 'b'), Some('a'));
    assert_eq!(t.lookup(ip("10.9.9.9")), Some('b'));
    assert_eq!(t.len(), 1);
    assert_eq!(t.remove(net("10.255.0.0/8")), Some('b'));
    assert!(t.is_empty());
    assert_eq!(t.lookup(ip("10.9.9.9")), None);
}

#[test]
fn nested_prefix_belongs_to_its_owner_only() {
    // A owns 10.0.0.0/8 and fd00::/32; B owns 10.1.0.0/16 and fd00:0:1::/48 inside them.
    let mut t = RouteTable::new();
    t.insert(net("10.0.0.0/8"), 'A');
    t.insert(net("10.1.0.0/16"), 'B');
    t.insert(net("fd00::/32"), 'A');
    t.insert(net("fd00:0:1::/48"), 'B');
    assert!(
        !t.source_allowed(ip("10.1.2.3"), 'A'),
        "A may not use B's range"
    );
    assert!(t.source_allowed(ip("10.1.2.3"), 'B'));
    assert!(t.source_allowed(ip("10.2.0.1"), 'A'));
    assert!(
        !t.source_allowed(ip("10.2.0.1"), 'B'),
        "B may not use A's wider range"
    );
    assert!(!t.source_allowed(ip("fd00:0:1::5"), 'A'));
    assert!(t.source_allowed(ip("fd00:0:1::5"), 'B'));
    assert!(t.source_allowed(ip("fd00:0:2::5"), 'A'));
    assert!(
        !t.source_allowed(ip("192.0.2.1"), 'A'),
        "unrouted sources come from nobody"
    );
    // When B leaves, its range falls back to A.
    assert_eq!(t.remove_value('B'), 2);
    assert!(t.source_allowed(ip("10.1.2.3"), 'A'));
    assert!(t.source_allowed(ip("fd00:0:1::5"), 'A'));
    assert_eq!(t.len(), 2);
}

#[test]
fn iter_lists_every_prefix_normalized() {
    let mut t = RouteTable::new();
    t.insert(net("100.64.0.7/32"), 7u32);
    t.insert(net("192.168.1.9/24"), 7);
    t.insert(net("::/0"), 9);
    let mut all: Vec<(IpNet, u32)> = t.iter().collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            (net("100.64.0.7/32"), 7),
            (net("192.168.1.0/24"), 7),
            (net("::/0"), 9)
        ]
    );
    t.clear();
    assert_eq!(t.iter().count(), 0);
}

/// Thousands of random prefixes against a brute-force reference.
#[test]
fn agrees_with_brute_force() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = RouteTable::new();
    let mut reference: Vec<(IpNet, u32)> = Vec::new();
    for peer in 0..3000u32 {
        // Addresses in a small space so prefixes nest often.
        let a = 0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff & 0x00f0_f0ff);
        let len = [8, 12, 16, 20, 24, 28, 32][(rnd() % 7) as usize];
        let n = net(&format!("{}/{len}", std::net::Ipv4Addr::from(a))).trunc();
        let six = net(&format!(
            "fd00::{:x}:{:x}/{}",
            a >> 16,
            a & 0xffff,
            len + 96
        ))
        .trunc();
        for n in [n, six] {
            t.insert(n, peer);
            reference.retain(|(r, _)| *r != n);
            reference.push((n, peer));
        }
    }
    for (i, n) in reference.clone().iter().enumerate() {
        if i % 5 == 0 {
            assert_eq!(t.remove(n.0), Some(n.1));
            reference.retain(|r| r.0 != n.0);
        }
    }
    assert_eq!(t.len(), reference.len());
    for _ in 0..5000 {
        let a = 0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff & 0x00f0_f0ff);
        for addr in [
            IpAddr::from(std::net::Ipv4Addr::from(a)),
            ip(&format!("fd00::{:x}:{:x}", a >> 16, a & 0xffff)),
        ] {
            let want = reference
                .iter()
                .filter(|(n, _)| n.contains(&addr))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(addr), want, "{addr}");
        }
    }
}
