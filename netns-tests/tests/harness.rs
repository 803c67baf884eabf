//! The topology harness, checked with the tools a user would use: ping, curl, `ip netns list`.
//! Needs root; with `MESHFUNNEL_SKIP_NETNS=1` and no root every test is skipped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{curl, v4, v6, WebServer, T};
use netns_tests::{cleanup_stale, list_netns, require_root, StandardTopology, Topology};

/// Hosts `a` and `b` joined by one veth, 192.0.2.1/2 and 2001:db8:2::1/2.
fn pair(topo: &Topology) -> (netns_tests::Host, netns_tests::Host) {
    let a = topo.host("a").unwrap();
    let b = topo.host("b").unwrap();
    let v6s = (v6("2001:db8:2::1/64"), v6("2001:db8:2::2/64"));
    let link = topo
        .link(&a, &b, (v4("192.0.2.1/24"), v4("192.0.2.2/24")), Some(v6s))
        .unwrap();
    assert_eq!(
        (link.a.name.as_str(), link.b.name.as_str()),
        ("eth0", "eth0")
    );
    (a, b)
}

fn assert_gone(namespaces: &[String]) {
    let left = list_netns().unwrap();
    for ns in namespaces {
        assert!(!left.contains(ns), "{ns} still exists: {left:?}");
    }
}

#[test]
fn veth_pair_pings_both_ways_over_v4_and_v6() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (a, b) = pair(&topo);
    for (from, to) in [
        (&a, "192.0.2.2"),
        (&b, "192.0.2.1"),
        (&a, "2001:db8:2::2"),
        (&b, "2001:db8:2::1"),
    ] {
        let out = from.run("ping", &["-c", "1", "-W", "2", to], T).unwrap();
        assert!(out.contains("1 received"), "{} -> {to}: {out}", from.name());
    }
}

#[test]
fn node_behind_nat_reaches_client_as_the_routers_wan_address() {
    if !require_root() {
        return;
    }
    let std = StandardTopology::new().unwrap();
    let client = std.client.ipv4().unwrap();
    let server = WebServer::start(
        &std.client,
        &client.to_string(),
        8080,
        "hello from client\n",
    );
    let url = format!("http://{client}:8080/hello.txt");

    for (node, nat) in [(&std.node_a, &std.nat_a), (&std.node_b, &std.nat_b)] {
        let body = node
            .run("curl", &["-sS", "--max-time", "5", &url], T)
            .unwrap();
        assert_eq!(body, "hello from client\n");
        // The access log names the peer address the server saw: the router's, not the node's.
        let wan = nat.wan_v4().to_string();
        let deadline = Instant::now() + T;
        while !server
            .log()
            .lines()
            .any(|l| l.starts_with(&format!("{wan} ")))
        {
            assert!(
                Instant::now() < deadline,
                "no request from {wan}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let node_addr = node.ipv4().unwrap().to_string();
        assert!(!server.log().contains(&node_addr), "{}", server.log());
    }
    let log = server.log();
    let gets: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("GET /hello.txt"))
        .collect();
    assert_eq!(gets.len(), 2, "{log}");
}

#[test]
fn client_cannot_open_a_connection_to_a_node_behind_nat() {
    if !require_root() {
        return;
    }
    let std = StandardTopology::new().unwrap();
    let server = WebServer::start(&std.node_a, "0.0.0.0", 8080, "hello from node-a\n");
    let url = format!("http://{}:8080/hello.txt", std.node_a.ipv4().unwrap());
    // The server is up: node-a itself gets the page at its LAN address.
    assert_eq!(
        curl(&std.node_a, &url),
        (Some(0), "hello from node-a\n".into())
    );

    // From the internet the LAN address is not routed ...
    let (code, out) = curl(&std.client, &url);
    assert_ne!(code, Some(0), "{out}");
    // ... and even a neighbour that routes it at nat-a's WAN address is dropped by the router.
    let lan = std.nat_a.lan_subnet().into();
    std.client
        .add_route(lan, std.nat_a.wan_v4().into())
        .unwrap();
    let (code, out) = curl(&std.client, &url);
    assert_eq!(code, Some(28), "expected a connect timeout: {out}");
    // Only node-a's own request got through.
    let log = server.log();
    let from_node = format!("{} ", std.node_a.ipv4().unwrap());
    let gets: Vec<&str> = log.lines().filter(|l| l.contains("GET")).collect();
    assert!(gets.len() == 1 && gets[0].starts_with(&from_node), "{log}");
}

#[test]
fn drop_removes_namespaces_and_kills_their_processes() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (a, b) = pair(&topo);
    let namespaces = topo.namespaces();
    assert_eq!(namespaces.len(), 2);
    let listed = list_netns().unwrap();
    assert!(
        namespaces.iter().all(|ns| listed.contains(ns)),
        "{listed:?}"
    );
    // One process under a guard, one started by hand: both must die with the topology.
    let mut guarded = b.spawn("sleep", &["600"]).unwrap();
    let mut raw = a.cmd("sleep", &["600"]).spawn().unwrap();

    drop(topo);
    assert_gone(&namespaces);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = raw.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "process in a dropped topology survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    assert!(
        guarded.try_wait().unwrap().is_some(),
        "guarded process survived"
    );
    // Commands on a handle of a dropped topology fail, naming the command.
    let err = a.run("true", &[], T).unwrap_err().to_string();
    assert!(err.contains("ip netns exec"), "{err}");
}

#[test]
fn panic_inside_a_test_still_removes_everything() {
    if !require_root() {
        return;
    }
    let mut namespaces = Vec::new();
    let mut pid = 0;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let std = StandardTopology::new().unwrap();
        namespaces = std.topo.namespaces();
        let guard = std.node_a.spawn("sleep", &["600"]).unwrap();
        pid = guard.id();
        panic!("deliberate panic with the standard topology up");
    }));
    assert!(result.is_err());
    // 7 hosts, the internet segment and two LAN segments.
    assert_eq!(namespaces.len(), 10, "{namespaces:?}");
    assert_gone(&namespaces);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} survived"
    );
}

#[test]
fn two_topologies_at_once_do_not_collide() {
    if !require_root() {
        return;
    }
    // Same host names and addresses in both, built and used concurrently: each client must see
    // its own server.
    let run = |tag: &str| {
        let topo = Topology::new().unwrap();
        let (a, b) = pair(&topo);
        let server = WebServer::start(&b, "192.0.2.2", 8080, tag);
        let (code, body) = curl(&a, "http://192.0.2.2:8080/hello.txt");
        assert_eq!((code, body.as_str()), (Some(0), tag));
        drop(server);
        (topo.prefix().to_owned(), topo.namespaces())
    };
    let (one, two) = std::thread::scope(|s| {
        let one = s.spawn(|| run("one"));
        let two = s.spawn(|| run("two"));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_ne!(one.0, two.0);
    let first: BTreeSet<_> = one.1.iter().collect();
    assert!(
        two.1.iter().all(|ns| !first.contains(ns)),
        "{one:?} {two:?}"
    );
    assert_gone(&one.1);
    assert_gone(&two.1);
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !require_root() {
        return;
    }
    // A pid that has exited stands for a test run killed before its Drop ran.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    let stale = format!("mfnt{}x0-leftover", dead.id());
    let add = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(add.success());
    let mut inside = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .spawn()
        .unwrap();
    // Wait until it runs inside (or has failed: a concurrent test may have cleaned up first).
    let deadline = Instant::now() + T;
    let entered = || {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &stale])
            .output()
            .unwrap();
        !pids.stdout.is_empty()
    };
    while !entered() && inside.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sleep never entered {stale}");
        std::thread::sleep(Duration::from_millis(20));
    }

    cleanup_stale().unwrap();
    assert_gone(std::slice::from_ref(&stale));
    let deadline = Instant::now() + T;
    while inside.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "process in a stale namespace survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
