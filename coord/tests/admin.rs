//! The admin side of a running coord: the policy CLI, the privacy of the state dir, keepalives.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{next_msg, Coord};
use keys::PrivateKey;
use proto::map::MapMessage;

#[test]
fn an_invalid_policy_is_refused_by_field_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let (ok, default, _) = coord.cli(&["policy", "get"]);
    assert!(ok);
    assert!(default.contains("\"acls\""), "{default}");

    let good = dir.path().join("good.json");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.example.json"),
        &good,
    )
    .unwrap();
    let (ok, out, err) = coord.cli(&["policy", "set", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("policy updated"));
    let (_, now, _) = coord.cli(&["policy", "get"]);
    assert_eq!(now.trim(), std::fs::read_to_string(&good).unwrap().trim());

    let bad = dir.path().join("bad.json");
    for (text, field) in [
        (
            r#"{"acls": [{"src": ["*"], "dst": ["*"], "ports": ["70000"]}]}"#,
            "acls[0].ports[0]",
        ),
        (
            r#"{"acls": [{"src": ["tag:Bad"], "dst": ["*"]}]}"#,
            "acls[0].src[0]",
        ),
        (
            r#"{"funnel": [{"nodes": ["a"], "ports": []}]}"#,
            "funnel[0].ports",
        ),
        (r#"{"acl": []}"#, "acl"),
        ("{", "."),
    ] {
        std::fs::write(&bad, text).unwrap();
        let (ok, _, err) = coord.cli(&["policy", "set", bad.to_str().unwrap()]);
        assert!(!ok, "{text} was accepted");
        assert!(
            err.contains(&format!("policy is invalid at {field}:")),
            "{text}: {err}"
        );
        let (_, still, _) = coord.cli(&["policy", "get"]);
        assert_eq!(still, now, "a refused policy replaced the old one");
    }
    let (ok, _, err) = coord.cli(&["policy", "set", "/nonexistent/policy.json"]);
    assert!(!ok && err.contains("/nonexistent/policy.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let coord = Coord::start(&state);
    // Make the database write (and so create its WAL files).
    coord
        .client(PrivateKey::generate())
        .register(Some(&coord.authkey(&[])), "n")
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    let mut seen = vec![];
    let mut dirs = vec![state.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                dirs.push(p);
            } else {
                assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
                seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    seen.sort();
    for want in [
        "admin.sock",
        "cert.pem",
        "coord.db",
        "coord.db-wal",
        "coord.key",
        "key.pem",
    ] {
        assert!(
            seen.iter().any(|s| s == want),
            "{want} missing from {seen:?}"
        );
    }
    // Secrets never reach the database in clear: only the key's hash is stored.
    let key = coord.authkey(&[]);
    let secret = key.rsplit('_').next().unwrap().to_owned();
    drop(coord);
    for f in ["coord.db", "coord.db-wal"] {
        let bytes = std::fs::read(state.join(f)).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "auth key secret found in {f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_map_stream_gets_keepalives() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start_at(dir.path(), "127.0.0.1:0", &["--map-keepalive", "1s"]);
    let client = coord.client(PrivateKey::generate());
    client
        .register(Some(&coord.authkey(&[])), "quiet")
        .await
        .unwrap();
    let mut stream = client.map_stream().await.unwrap();
    assert!(matches!(
        next_msg(&mut stream, Duration::from_secs(5)).await,
        MapMessage::Full { .. }
    ));
    let start = Instant::now();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg, Some(MapMessage::Keepalive));
    }
    assert!(start.elapsed() >= Duration::from_millis(1500));
    let (ok, _, err) = common::cli(dir.path(), &["serve", "--map-keepalive", "31s"]);
    assert!(!ok && err.contains("at most 30s"), "{err}");
}
