//! The one-machine topology with real processes, no root: `coord`, `funnel-edge run
//! --userspace` and a `meshd up --userspace` node on 127.0.0.1, the node publishing a local
//! service with `meshd funnel`. Every request goes client → TLS at the edge → WireGuard over
//! loopback → the node's userspace stack and funnel ingress → the local service.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{checks, curl, Edge};

/// One topology for all the client checks: starting it takes a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_the_mesh_http1_http2_uploads_sse_websocket_headers() {
    let edge = Edge::start_mesh().await;
    checks::get_over_http1_and_http2(&edge).await;
    checks::forwarding_headers(&edge).await;
    checks::large_upload(&edge).await;
    checks::early_answer_to_an_upload(&edge).await;
    checks::server_sent_events(&edge).await;
    checks::websocket_echo(&edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_expiry_and_missing_grants() {
    let edge = Edge::start_mesh().await;
    let mesh = edge.mesh.as_ref().unwrap();
    // A port the policy does not grant: refused, naming the grant.
    let (ok, out) = mesh.meshd(&["funnel", "1", "--bg", "--name", "nogrant"]);
    assert!(!ok && out.contains("funnel grant"), "{out}");

    // A second funnel of the same node, with a short TTL: both live at once.
    let port = mesh.svc_port.to_string();
    let (ok, out) = mesh.meshd(&["funnel", &port, "--bg", "--name", "brief", "--ttl", "6s"]);
    assert!(ok, "{out}");
    wait_status(&edge, "brief", 200, Duration::from_secs(10)).await;
    wait_status(&edge, "hello", 200, Duration::from_secs(1)).await;

    // Off: the name is unknown at the edge once the netmap says so; the other stays.
    let (ok, out) = mesh.meshd(&["funnel", "off", "hello"]);
    assert!(ok, "{out}");
    wait_status(&edge, "hello", 404, Duration::from_secs(10)).await;
    wait_status(&edge, "brief", 200, Duration::from_secs(1)).await;

    // The short TTL runs out: the edge's "expired" page.
    let body = wait_status(&edge, "brief", 404, Duration::from_secs(15)).await;
    assert!(body.contains("expired"), "{body}");
    // The node drops its own record within a second of the TTL.
    wait_no_funnels(mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_close_or_a_lower_max_ttl_ends_open_funnels() {
    let edge = Edge::start_mesh().await;
    let mesh = edge.mesh.as_ref().unwrap();
    let port = mesh.svc_port.to_string();
    let (ok, out) = mesh.meshd(&["funnel", &port, "--bg", "--name", "extra"]);
    assert!(ok, "{out}");
    wait_status(&edge, "extra", 200, Duration::from_secs(10)).await;

    // The admin sees every live funnel, with its node and URL.
    let (ok, out) = mesh.coord(&["funnels", "list", "--json"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["route"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["extra", "hello"], "{out}");
    assert_eq!(list[0]["node_name"], "laptop");
    assert_eq!(list[0]["url"], edge.url("extra", "/"));
    let (ok, out) = mesh.coord(&["funnels", "list"]);
    assert!(
        ok && out.contains("extra") && out.contains("laptop"),
        "{out}"
    );

    // Closed by the admin: gone at the edge and on the node; the other stays.
    let (ok, out) = mesh.coord(&["funnels", "close", "nosuch"]);
    assert!(!ok && out.contains("no live funnel named"), "{out}");
    let (ok, out) = mesh.coord(&["funnels", "close", "extra"]);
    assert!(ok, "{out}");
    wait_status(&edge, "extra", 404, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out) = mesh.meshd(&["funnel", "status"]);
        assert!(ok, "{out}");
        if !out.contains("extra") {
            assert!(out.contains("hello"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_status(&edge, "hello", 200, Duration::from_secs(1)).await;
    // "hello" was opened for the grant's hour; the grant drops to 3 seconds.
    let (ok, out) = mesh.coord(&["policy", "get"]);
    assert!(ok, "{out}");
    let policy = out.replace("\"1h\"", "\"3s\"");
    assert!(policy.contains("\"3s\""), "{out}");
    let file = edge.dir.path().join("policy-3s.json");
    std::fs::write(&file, policy).unwrap();
    let (ok, out) = mesh.coord(&["policy", "set", file.to_str().unwrap()]);
    assert!(ok, "{out}");

    // The edge shows the expired page about 3 s later; the node drops its record too.
    let body = wait_status(&edge, "hello", 404, Duration::from_secs(15)).await;
    assert!(body.contains("expired"), "{body}");
    wait_no_funnels(mesh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_for_another_domain_than_the_coordinators_refuses_to_start() {
    let edge = Edge::start_mesh().await;
    let mesh = edge.mesh.as_ref().unwrap();
    let key = mesh.authkey(Some("edge"));
    let nodes = || {
        let (ok, out) = mesh.coord(&["nodes", "list", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let before = nodes();
    let state = edge.dir.path().join("edge-other");
    let mut child = std::process::Command::new(testkit::binary("funnel-edge"))
        .args(["run", "--userspace", "--listen-port", "0"])
        .args(["--state-dir", state.to_str().unwrap()])
        .args([
            "--domain",
            "other.localhost",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .args(["--coord", &mesh.coord_url])
        .args(["--coord-fingerprint", &mesh.coord_fingerprint])
        .args(["--authkey", &key])
        .env("FUNNEL_EDGE_LOG", "error")
        .env("MESHD_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; an edge that starts serving instead is killed and fails the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("funnel-edge for another domain kept running");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("serves --domain other.localhost")
            && err.contains(
                "publishes funnels under funnel.localhost: start it with --domain funnel.localhost"
            ),
        "{err}"
    );
    // It stopped before registering: the coordinator has no node more than before.
    assert_eq!(nodes(), before);
}

/// Waits (up to 5 s) until `meshd funnel status` lists no funnels.
async fn wait_no_funnels(mesh: &common::Mesh) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out) = mesh.meshd(&["funnel", "status"]);
        assert!(ok, "{out}");
        if out.contains("no funnels") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries GET https://NAME…/hello until it answers `status`; returns the body.
async fn wait_status(edge: &Edge, name: &str, status: u16, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = curl(edge, &[&edge.url(name, "/hello")]).await;
        if out.status == status {
            return out.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: wanted {status}, last {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
