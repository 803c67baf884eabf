//! Durability: a coord restart keeps every node's id and addresses and map streams resume;
//! `kill -9` in the middle of registrations loses no registration that was acknowledged.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{next_msg, Coord};
use keys::PrivateKey;
use proto::map::MapMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identities_and_streams_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = Coord::start(dir.path());
    let addr = coord.addr.to_string();
    let fingerprint = coord.fingerprint.clone();
    let key = coord.authkey(&["--reusable"]);
    let mut nodes = vec![];
    for i in 0..10 {
        let client = coord.client(PrivateKey::generate());
        let reg = client.register(Some(&key), &format!("n{i}")).await.unwrap();
        nodes.push((client, reg.node));
    }
    let mut stream = nodes[0].0.map_stream().await.unwrap();
    let MapMessage::Full { netmap: before, .. } =
        next_msg(&mut stream, Duration::from_secs(5)).await
    else {
        panic!("no full map");
    };

    coord.kill9();
    // The stream notices the server is gone.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await {
                Ok(Some(MapMessage::Keepalive | MapMessage::Delta { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream did not end when coord died");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");

    let coord = Coord::start_at(dir.path(), &addr, &[]);
    assert_eq!(
        coord.fingerprint, fingerprint,
        "same certificate after restart"
    );
    // Reconnect with backoff, as a node does.
    let mut delay = Duration::from_millis(50);
    let mut resumed = None;
    for _ in 0..10 {
        match nodes[0].0.map_stream().await {
            Ok(s) => {
                resumed = Some(s);
                break;
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    let mut stream = resumed.expect("stream did not resume");
    let MapMessage::Full { netmap: after, .. } =
        next_msg(&mut stream, Duration::from_secs(5)).await
    else {
        panic!("no full map after restart");
    };
    assert_eq!(after.self_node.id, before.self_node.id);
    assert_eq!(after.self_node.ipv4, before.self_node.ipv4);
    assert_eq!(after.self_node.ipv6, before.self_node.ipv6);
    let ids = |m: &proto::map::Netmap| {
        m.peers
            .iter()
            .map(|p| (p.id, p.name.clone(), p.ipv4, p.ipv6, p.public_key))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    for (client, node) in &nodes {
        let again = client.register(None, "ignored").await.unwrap();
        assert_eq!(&again.node.id, &node.id);
        assert_eq!(again.node.ipv4, node.ipv4);
    }
    // New nodes never reuse an address.
    let extra = coord.client(PrivateKey::generate());
    let n = extra.register(Some(&key), "late").await.unwrap().node;
    assert!(nodes.iter().all(|(_, o)| o.ipv4 != n.ipv4 && o.id != n.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_registrations_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked_total = 0;
    for round in 0..3u64 {
        let mut coord = Coord::start(dir.path());
        let key = coord.authkey(&["--reusable"]);
        let acked: Arc<Mutex<Vec<proto::Node>>> = Arc::default();
        let url_fp = (coord.url(), coord.fingerprint.clone());
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let acked = acked.clone();
                let key = key.clone();
                let (url, fp) = url_fp.clone();
                tokio::spawn(async move {
                    for i in 0..1000 {
                        let client = meshd::control::ControlClient::new(
                            &url,
                            meshd::control::Trust::Fingerprint(fp.clone()),
                            PrivateKey::generate(),
                        )
                        .unwrap();
                        match client
                            .register(Some(&key), &format!("r{round}w{w}i{i}"))
                            .await
                        {
                            Ok(r) => acked.lock().unwrap().push(r.node),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Kill at a different moment each round.
        let start = Instant::now();
        let want = 10 + 25 * round as usize;
        while acked.lock().unwrap().len() < want && start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        coord.kill9();
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(40), w).await;
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= want,
            "round {round}: only {} registrations",
            acked.len()
        );
        acked_total += acked.len();

        let coord = Coord::start(dir.path());
        let stored: HashMap<u64, serde_json::Value> = coord
            .nodes()
            .into_iter()
            .map(|n| (n["node"]["id"].as_u64().unwrap(), n["node"].clone()))
            .collect();
        for node in &acked {
            let s = stored
                .get(&node.id.0)
                .unwrap_or_else(|| panic!("round {round}: acknowledged node {} lost", node.id));
            assert_eq!(s["name"], node.name.as_str());
            assert_eq!(s["ipv4"], node.ipv4.to_string().as_str());
            assert_eq!(s["ipv6"], node.ipv6.to_string().as_str());
            assert_eq!(s["public_key"], node.public_key.to_base64().as_str());
        }
        assert!(stored.len() >= acked_total, "round {round}");
    }
}
