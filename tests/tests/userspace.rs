//! Userspace networking end to end, unprivileged, on loopback: the real `coord`, two
//! `meshd up --userspace` nodes (no TUN, no root), a real HTTP server behind node B's
//! `--serve-tcp`, and real `curl` through node A's SOCKS5 proxy, by mesh address and by name;
//! and `meshd ping` between two such nodes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::{free_port, Proc};

#[test]
fn curl_through_socks5_to_a_peer_served_by_its_userspace_stack() {
    let coord = start_coord();

    // The service on B's loopback, reachable from the mesh only through B's --serve-tcp.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from node b\n").unwrap();
    let http_port = free_port();
    let _http = Proc::new(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(http_port.to_string())
            .current_dir(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    wait_listening(http_port);

    let forward = format!("8080:127.0.0.1:{http_port}");
    let b = start_node(&coord, "nodeb", &["--serve-tcp", &forward]);
    let a = start_node(&coord, "nodea", &[]);
    assert_ne!(a.ipv4, b.ipv4);

    // By mesh IPv4 address (the first request also waits for the handshake).
    let body = curl_until_ok(
        &a.socks,
        &format!("http://{}:8080/", b.ipv4),
        Duration::from_secs(30),
    );
    assert_eq!(body, "hello from node b\n");
    // By name and by fqdn, resolved from A's netmap.
    let short = b.fqdn.split('.').next().unwrap().to_owned();
    for host in [b.fqdn.clone(), short] {
        let (ok, body, err) = curl(&a.socks, &format!("http://{host}:8080/"));
        assert!(ok, "by name {host}: {err}");
        assert_eq!(body, "hello from node b\n");
    }
    // By mesh IPv6 address.
    let (ok, body, err) = curl(&a.socks, &format!("http://[{}]:8080/", b.ipv6));
    assert!(ok, "by IPv6: {err}");
    assert_eq!(body, "hello from node b\n");
    // A bigger body, to cross many windows.
    let big: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(www.path().join("big.txt"), &big).unwrap();
    let (ok, body, err) = curl(&a.socks, &format!("http://{}:8080/big.txt", b.ipv4));
    assert!(ok, "big body: {err}");
    assert!(body == big, "big body differs ({} bytes)", body.len());

    // Names that are not peers, and ports nobody serves, are errors, not hangs.
    let (ok, _, _) = curl(&a.socks, "http://example.com:8080/");
    assert!(!ok, "a non-mesh name must not resolve");
    let (ok, _, _) = curl(&a.socks, &format!("http://{}:8081/", b.ipv4));
    assert!(!ok, "a port with no listener must be refused");
    // And A's own SOCKS proxy keeps working after those failures.
    let (ok, body, _) = curl(&a.socks, &format!("http://{}:8080/", b.fqdn));
    assert!(ok && body == "hello from node b\n");
}

/// `meshd ping` between two userspace nodes: by name, fqdn and IPv6 address, each way. The answer
/// is the peer's own (its driver answers echo requests, as a kernel does in TUN mode), with the
/// RTT and the peer's endpoint, as `meshd ping` prints in TUN mode (netns-tests `mesh_ping`).
#[test]
fn meshd_ping_between_userspace_nodes() {
    let coord = start_coord();
    let b = start_node(&coord, "pingb", &[]);
    let a = start_node(&coord, "pinga", &[]);

    // The first pings wait for the netmap and the handshake: retry, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = a.cli(&["ping", "pingb", "-c", "1"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "meshd ping kept failing: {text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Status (and so the endpoint `meshd ping` shows) is refreshed on the 100 ms tick.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, text) = a.cli(&["ping", "pingb", "-c", "2"]);
    assert!(ok, "{text}");
    assert_eq!(
        text.matches(&format!(
            "pong from pingb ({}) via 127.0.0.1:{} in ",
            b.ipv4, b.udp_port
        ))
        .count(),
        2,
        "{text}"
    );
    assert!(text.contains(" ms"), "{text}");
    let (ok, text) = a.cli(&["ping", &b.ipv6, "-c", "1"]);
    assert!(
        ok && text.contains(&format!("pong from pingb ({})", b.ipv6)),
        "{text}"
    );
    let (ok, text) = b.cli(&["ping", &a.fqdn, "-c", "1"]);
    assert!(
        ok && text.contains(&format!(
            "pong from pinga ({}) via 127.0.0.1:{}",
            a.ipv4, a.udp_port
        )),
        "{text}"
    );

    // A name that is no peer is a clear error, not a timeout.
    let (ok, text) = a.cli(&["ping", "nobody", "-c", "1"]);
    assert!(!ok && text.contains("no peer named"), "{text}");
    // Nor is the node's own name a peer.
    let (ok, text) = a.cli(&["ping", "pinga", "-c", "1"]);
    assert!(!ok && text.contains("no peer named"), "{text}");
}
