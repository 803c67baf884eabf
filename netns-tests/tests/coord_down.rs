//! Control plane down is not data plane down: coord is killed (SIGKILL) in the middle of an
//! iperf3 run between two nodes and the run completes at full pace; a node restarted while coord
//! is still down comes back from its saved netmap (no auth key) and pings work again; coord
//! restarted on the same state dir and address gets every node back within the reconnect backoff,
//! and a node that joins then is reachable from the old ones.

#![allow(clippy::unwrap_used)]

mod mesh;
mod meshx;

use std::time::{Duration, Instant};

use mesh::{Coord, Node};
use meshx::{lan, node_logs, restart_coord, restart_node, wait_ping};
use netns_tests::{require_root, wait_until, Topology};

/// How long the reconnect backoff (1 s doubling to 30 s, +25% jitter) may take at most.
const RECONNECT: Duration = Duration::from_secs(40);

#[test]
fn nodes_carry_traffic_and_restart_without_coord_then_reconnect() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (hosts, _lan) = lan(&topo, &["coord", "a", "b", "d"]);
    let (a, b, d) = (&hosts[1], &hosts[2], &hosts[3]);
    let mut coord = Coord::start(&hosts[0], 8443);
    let key = coord.authkey(&[]);
    let na = Node::up(a, &coord, &key, "a");
    let mut nb = Node::up(b, &coord, &key, "b");
    wait_ping(a, &nb.ipv4, 15, &[&na, &nb]);
    wait_ping(b, &na.ipv4, 15, &[&na, &nb]);

    // iperf3 from a to b over the mesh, 8 s; coord is killed 2 s in.
    let _server = b
        .spawn("iperf3", &["-s", "-1", "-B", &nb.ipv4, "-p", "5201"])
        .unwrap();
    b.wait_tcp_listen(5201, Duration::from_secs(10)).unwrap();
    let mut client = a
        .spawn(
            "iperf3",
            &["-c", &nb.ipv4, "-p", "5201", "-t", "8", "-i", "1", "-J"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    coord.process.kill();
    let killed_at = Instant::now();
    wait_until("iperf3 to finish", Duration::from_secs(25), || {
        Ok(client.try_wait()?.is_some())
    })
    .unwrap();
    assert!(
        client.try_wait().unwrap().unwrap().success(),
        "iperf3: {}{}\n{}",
        client.stdout(),
        client.stderr(),
        node_logs(&[&na, &nb])
    );
    let report: serde_json::Value = serde_json::from_str(&client.stdout()).unwrap();
    let received = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let per_second: Vec<f64> = report["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap())
        .collect();
    eprintln!(
        "iperf3 a -> b with coord killed 2 s in: {:.0} Mbit/s; per second: {:?}",
        received / 1e6,
        per_second
            .iter()
            .map(|b| (b / 1e6).round())
            .collect::<Vec<_>>()
    );
    // The whole run moved data, and no second of it stalled (coord died during second 3).
    assert!(received > 1e6, "{report}");
    assert!(per_second.len() >= 8, "{report}");
    assert!(
        per_second.iter().all(|b| *b > 0.0),
        "a second without traffic: {per_second:?}"
    );

    // What `meshd status` says meanwhile: the coordinator is gone.
    wait_until("a to notice coord is gone", Duration::from_secs(10), || {
        Ok(na.status()["coord_connected"] == false)
    })
    .unwrap();

    // b restarts while coord is down: no auth key, same state dir, its saved netmap.
    restart_node(b, &mut nb);
    assert!(
        nb.process
            .stderr()
            .contains("starting from the saved netmap"),
        "{}",
        nb.process.stderr()
    );
    assert_eq!(nb.status()["coord_connected"], false);
    wait_ping(b, &na.ipv4, 15, &[&na, &nb]);
    wait_ping(a, &nb.ipv4, 15, &[&na, &nb]);
    wait_ping(a, &nb.ipv6, 15, &[&na, &nb]);

    // coord comes back on its state dir and address: both nodes reconnect within the backoff.
    restart_coord(&hosts[0], &mut coord);
    let restarted_at = Instant::now();
    for (name, node) in [("a", &na), ("b", &nb)] {
        wait_until(&format!("{name} to reconnect"), RECONNECT, || {
            Ok(node.status()["coord_connected"] == true)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&[node])));
    }
    eprintln!(
        "nodes reconnected {:.1?} after coord restarted ({:.1?} after it was killed)",
        restarted_at.elapsed(),
        killed_at.elapsed()
    );

    // A node that joins now is reachable from the old ones, and reaches them.
    let nd = Node::up(d, &coord, &key, "d");
    for (from, to) in [
        (a, &nd.ipv4),
        (b, &nd.ipv4),
        (a, &nd.ipv6),
        (d, &na.ipv4),
        (d, &nb.ipv4),
    ] {
        wait_ping(from, to, 15, &[&na, &nb, &nd]);
    }
    let s = na.status();
    let names: Vec<&str> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"b") && names.contains(&"d"), "{s}");
}
