//! Registration against the real coord binary: concurrency, single-use keys, idempotent
//! re-registration, expiry and renewal, and every kind of bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{next_msg, Coord};
use keys::PrivateKey;
use meshd::control::ControlError;
use proto::map::MapMessage;

fn api_code(e: &ControlError) -> (u16, String) {
    match e {
        ControlError::Api { status, code, .. } => (*status, code.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_register_concurrently_and_each_map_lists_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let key = coord.authkey(&["--reusable"]);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = coord.client(PrivateKey::generate());
            let key = key.clone();
            tokio::spawn(async move {
                let r = client.register(Some(&key), "node").await.unwrap();
                (client, r)
            })
        })
        .collect();
    let mut clients = vec![];
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let ids: HashSet<_> = clients.iter().map(|(_, r)| r.node.id).collect();
    let v4: HashSet<_> = clients.iter().map(|(_, r)| r.node.ipv4).collect();
    let v6: HashSet<_> = clients.iter().map(|(_, r)| r.node.ipv6).collect();
    let names: HashSet<_> = clients.iter().map(|(_, r)| r.node.name.clone()).collect();
    assert_eq!(
        (ids.len(), v4.len(), v6.len(), names.len()),
        (50, 50, 50, 50)
    );
    assert!(names.contains("node") && names.contains("node-50"));
    for (_, r) in &clients {
        assert!(r.created);
        let o = r.node.ipv4.octets();
        assert!(o[0] == 100 && (64..128).contains(&o[1]), "{}", r.node.ipv4);
        assert_eq!(r.node.ipv6.segments()[0] & 0xff00, 0xfd00);
        assert_eq!(r.node.fqdn, format!("{}.mesh.internal", r.node.name));
    }

    for (client, reg) in &clients {
        let mut stream = client.map_stream().await.unwrap();
        let MapMessage::Full { netmap, .. } = next_msg(&mut stream, Duration::from_secs(5)).await
        else {
            panic!("first line is not the full map");
        };
        assert_eq!(netmap.self_node.id, reg.node.id);
        let peers: HashSet<_> = netmap.peers.iter().map(|p| p.id).collect();
        let mut want = ids.clone();
        want.remove(&reg.node.id);
        assert_eq!(peers, want);
    }
    assert_eq!(coord.nodes().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_key_registers_exactly_one_of_many_concurrent_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let key = coord.authkey(&[]);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = coord.client(PrivateKey::generate());
            let key = key.clone();
            tokio::spawn(async move { client.register(Some(&key), &format!("n{i}")).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(api_code(&e), (403, "auth_key_used".into())),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(coord.nodes().len(), 1);
    let (_, out, _) = coord.cli(&["authkey", "list"]);
    assert!(out.contains("used"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_key_gets_the_same_node_and_expiry_needs_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let node_key = PrivateKey::generate();
    let client = coord.client(node_key.clone());
    let first = client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    let again = coord
        .client(node_key.clone())
        .register(None, "other-name")
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.node, first.node);

    // A peer watches the node go away when its key is expired.
    let peer = coord.client(PrivateKey::generate());
    peer.register(Some(&coord.authkey(&[])), "peer")
        .await
        .unwrap();
    let mut peer_map = peer.map_stream().await.unwrap();
    next_msg(&mut peer_map, Duration::from_secs(5)).await;
    let mut own_map = client.map_stream().await.unwrap();
    next_msg(&mut own_map, Duration::from_secs(5)).await;

    let (ok, out, err) = coord.cli(&["nodes", "expire", "laptop"]);
    assert!(ok, "{err}");
    assert!(out.contains("expired"));
    // Deltas batched before the expiry (the peer coming online) may still come first.
    loop {
        match next_msg(&mut own_map, Duration::from_secs(2)).await {
            MapMessage::Revoked { reason } => {
                assert!(reason.contains("expired"), "{reason}");
                break;
            }
            MapMessage::Delta { .. } => {}
            other => panic!("expected revoked, got {other:?}"),
        }
    }
    loop {
        if let MapMessage::Delta { delta, .. } =
            next_msg(&mut peer_map, Duration::from_secs(2)).await
        {
            if delta.peers_removed.contains(&first.node.id) {
                break;
            }
        }
    }
    let err = client.register(None, "laptop").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "node_expired".into()));
    let err = client.map_stream().await.unwrap_err();
    assert_eq!(api_code(&err), (403, "node_expired".into()));

    // A new auth key renews it: same id and addresses; the peer sees it again.
    let renewed = client
        .register(Some(&coord.authkey(&[])), "laptop")
        .await
        .unwrap();
    assert_eq!(renewed.node.id, first.node.id);
    assert_eq!(renewed.node.ipv4, first.node.ipv4);
    assert!(renewed.node.key_expiry > first.node.key_expiry - 10);
    loop {
        if let MapMessage::Delta { delta, .. } =
            next_msg(&mut peer_map, Duration::from_secs(2)).await
        {
            if delta.peers_upserted.iter().any(|p| p.id == first.node.id) {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_keys_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let client = coord.client(PrivateKey::generate());

    let err = client.register(None, "x").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "auth_key_required".into()));
    let err = client.register(Some("mfk_garbage"), "x").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "auth_key_invalid".into()));
    let real = coord.authkey(&[]);
    let forged = format!("{}{}", &real[..real.len() - 4], "0000");
    let err = client.register(Some(&forged), "x").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "auth_key_invalid".into()));

    let revoked = coord.authkey(&["--reusable"]);
    let id = revoked.split('_').nth(1).unwrap();
    let (ok, _, err) = coord.cli(&["authkey", "revoke", id]);
    assert!(ok, "{err}");
    let err = client.register(Some(&revoked), "x").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "auth_key_revoked".into()));

    let short = coord.authkey(&["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = client.register(Some(&short), "x").await.unwrap_err();
    assert_eq!(api_code(&err), (403, "auth_key_expired".into()));

    // The message says what is wrong and never echoes the secret.
    let msg = err.to_string();
    assert!(msg.contains("expired"), "{msg}");
    assert!(!msg.contains(short.rsplit('_').next().unwrap()));
    assert!(
        coord.nodes().is_empty(),
        "no refused registration created a node"
    );

    let (ok, _, err) = coord.cli(&["authkey", "revoke", "0011223344556677"]);
    assert!(!ok && err.contains("no auth key"), "{err}");
    let (ok, _, err) = coord.cli(&["authkey", "create", "--tag", "Bad Tag"]);
    assert!(!ok && err.contains("invalid tag"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_when_no_server_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = common::cli(dir.path(), &["nodes", "list"]);
    assert!(!ok);
    assert!(err.contains("no coord server is running"), "{err}");
}
