//! The map stream across the real coord: each node's netmap lists exactly the peers the policy
//! allows, and every change reaches every affected stream as a delta within a second.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{next_msg, Coord};
use keys::PrivateKey;
use meshd::control::{ControlClient, MapStream};
use proto::map::{apply, MapMessage, Netmap, NetmapDelta};
use proto::NodeId;

/// A node under test: its client, its stream, and the netmap it built from the stream alone.
struct Watcher {
    client: ControlClient,
    id: NodeId,
    name: String,
    stream: MapStream,
    map: Netmap,
}

impl Watcher {
    fn peer_names(&self) -> BTreeSet<String> {
        self.map.peers.iter().map(|p| p.name.clone()).collect()
    }

    /// Applies deltas until `done(delta)` is true; returns how long that took.
    async fn until(&mut self, start: Instant, done: impl Fn(&NetmapDelta) -> bool) -> Duration {
        loop {
            match next_msg(&mut self.stream, Duration::from_secs(3)).await {
                MapMessage::Delta { delta, .. } => {
                    apply(&mut self.map, &delta).unwrap();
                    if done(&delta) {
                        return start.elapsed();
                    }
                }
                other => panic!("{}: unexpected {other:?}", self.name),
            }
        }
    }
}

async fn join(coord: &Coord, key: &str, name: &str) -> Watcher {
    let client = coord.client(PrivateKey::generate());
    let reg = client.register(Some(key), name).await.unwrap();
    let mut stream = client.map_stream().await.unwrap();
    let MapMessage::Full { netmap, .. } = next_msg(&mut stream, Duration::from_secs(5)).await
    else {
        panic!("no full map first");
    };
    Watcher {
        client,
        id: reg.node.id,
        name: reg.node.name,
        stream,
        map: netmap,
    }
}

/// Reads every stream until it has been quiet for a moment (deltas from nodes coming online).
async fn settle(ws: &mut [Watcher]) {
    for w in ws.iter_mut() {
        while let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_millis(150), w.stream.next()).await
        {
            if let MapMessage::Delta { delta, .. } = msg {
                apply(&mut w.map, &delta).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_streams_follow_policy_endpoints_removal_and_policy_changes() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"acls": [{"src": ["tag:dev"], "dst": ["tag:srv"], "ports": ["22"], "proto": "tcp"}]}"#,
    )
    .unwrap();
    let (ok, _, err) = coord.cli(&["policy", "set", policy.to_str().unwrap()]);
    assert!(ok, "{err}");
    let dev_key = coord.authkey(&["--reusable", "--tag", "dev"]);
    let srv_key = coord.authkey(&["--reusable", "--tag", "srv"]);
    let mut ws = vec![];
    for i in 0..25 {
        ws.push(join(&coord, &dev_key, &format!("dev{i}")).await);
        ws.push(join(&coord, &srv_key, &format!("srv{i}")).await);
    }
    settle(&mut ws).await;

    let devs: BTreeSet<String> = (0..25).map(|i| format!("dev{i}")).collect();
    let srvs: BTreeSet<String> = (0..25).map(|i| format!("srv{i}")).collect();
    for w in &ws {
        let want = if w.name.starts_with("dev") {
            &srvs
        } else {
            &devs
        };
        assert_eq!(&w.peer_names(), want, "{}", w.name);
        let filter = &w.map.packet_filter;
        if w.name.starts_with("srv") {
            assert_eq!(filter.len(), 1, "{}", w.name);
            assert_eq!(filter[0].src, vec!["tag:dev"]);
        } else {
            assert!(filter.is_empty(), "{}", w.name);
        }
    }

    // An endpoint change on srv0 reaches the 25 devs, within a second each.
    let srv0 = ws.iter().position(|w| w.name == "srv0").unwrap();
    let srv0_id = ws[srv0].id;
    let ep: SocketAddr = "198.51.100.10:41641".parse().unwrap();
    let start = Instant::now();
    ws[srv0].client.set_endpoints(vec![ep]).await.unwrap();
    let mut worst = Duration::ZERO;
    for w in ws.iter_mut().filter(|w| w.name.starts_with("dev")) {
        let t = w
            .until(start, |d| d.peers_patched.iter().any(|p| p.id == srv0_id))
            .await;
        worst = worst.max(t);
        let peer = w.map.peers.iter().find(|p| p.id == srv0_id).unwrap();
        assert_eq!(peer.endpoints, vec![ep]);
    }
    assert!(
        worst < Duration::from_secs(1),
        "endpoint delta took {worst:?}"
    );

    // The policy opens up: every stream learns of every node, and the filters change.
    std::fs::write(&policy, r#"{"acls": [{"src": ["*"], "dst": ["*"]}]}"#).unwrap();
    let start = Instant::now();
    let (ok, _, err) = coord.cli(&["policy", "set", policy.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut worst = Duration::ZERO;
    for w in ws.iter_mut() {
        worst = worst.max(w.until(start, |d| d.packet_filter.is_some()).await);
        assert_eq!(w.map.peers.len(), 49, "{}", w.name);
        assert_eq!(w.map.packet_filter[0].src, vec!["*"]);
    }
    assert!(
        worst < Duration::from_secs(1),
        "policy delta took {worst:?}"
    );
    // Every peer it has now carries srv0's endpoint, learnt earlier or with the new entries.
    for w in ws.iter().filter(|w| w.id != srv0_id) {
        let p = w.map.peers.iter().find(|p| p.id == srv0_id).unwrap();
        assert_eq!(p.endpoints, vec![ep], "{}", w.name);
    }

    // A node removed with the CLI disappears from every map.
    let dev7 = ws.iter().position(|w| w.name == "dev7").unwrap();
    let dev7 = ws.remove(dev7);
    let start = Instant::now();
    let (ok, _, err) = coord.cli(&["nodes", "remove", "dev7"]);
    assert!(ok, "{err}");
    let mut worst = Duration::ZERO;
    for w in ws.iter_mut() {
        worst = worst.max(w.until(start, |d| d.peers_removed.contains(&dev7.id)).await);
        assert!(!w.peer_names().contains("dev7"));
    }
    assert!(
        worst < Duration::from_secs(1),
        "removal delta took {worst:?}"
    );
    let mut gone = dev7.stream;
    match next_msg(&mut gone, Duration::from_secs(2)).await {
        MapMessage::Revoked { reason } => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("removed node got {other:?}"),
    }

    // Every stream's netmap, built from deltas alone, equals a fresh full map.
    for w in ws.iter().take(5) {
        let mut fresh = w.client.map_stream().await.unwrap();
        let MapMessage::Full { netmap, .. } = next_msg(&mut fresh, Duration::from_secs(5)).await
        else {
            panic!("no full map");
        };
        let by_id = |m: &Netmap| -> HashMap<NodeId, Vec<SocketAddr>> {
            m.peers
                .iter()
                .map(|p| (p.id, p.endpoints.clone()))
                .collect()
        };
        assert_eq!(by_id(&netmap), by_id(&w.map), "{}", w.name);
        assert_eq!(netmap.packet_filter, w.map.packet_filter);
    }

    // 49 streams: dev7's ended when it was removed, the five fresh ones when dropped (which
    // the server learns a moment later).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = ws[0]
            .client
            .raw_request("GET", "/metrics", vec![], vec![], false)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("coord_nodes 49\n"), "{text}");
        if text.contains("coord_map_streams 49\n") && text.contains("coord_nodes_online 49\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_nodes_are_removed_after_going_offline() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start_at(dir.path(), "127.0.0.1:0", &["--ephemeral-timeout", "2s"]);
    let key = coord.authkey(&["--ephemeral"]);
    let keeper = join(&coord, &coord.authkey(&[]), "keeper").await;
    let w = join(&coord, &key, "ci-runner").await;
    let nodes = coord.nodes();
    assert!(nodes.iter().any(|n| n["ephemeral"] == true));
    // Online, it stays past the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(coord.nodes().len(), 2);
    let Watcher { client, stream, .. } = w;
    drop(stream);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    while coord.nodes().len() != 1 {
        assert!(Instant::now() < deadline, "ephemeral node was not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "removed before its timeout"
    );
    // It is gone for good: its key no longer names a node.
    let err = client.register(None, "ci-runner").await.unwrap_err();
    assert!(err.to_string().contains("auth key is required"), "{err}");
    drop(keeper);
}
