//! The funnel across real hosts (DESIGN.md's standard topology): `coord` and `edge` on the public
//! segment, `node-a` behind its NAT router, and `client` standing for the internet. node-a
//! publishes a page on 127.0.0.1 with `meshd funnel`; from `client`, curl with the edge's CA
//! fetches it by name through the edge's public address. The edge (TUN mode) reaches nothing else
//! of node-a: every other port of its mesh addresses stays closed to it.

#![allow(clippy::unwrap_used)]

mod mesh;
mod meshx;

use std::time::Duration;

use mesh::{spawn_ready, Coord, Node};
use meshx::{greeter, tcp_probe};
use netns_tests::plan::{CLIENT_V4, EDGE_V4};
use netns_tests::{require_root, wait_until, StandardTopology};

const DOMAIN: &str = "funnel.example.com";

#[test]
fn a_page_behind_nat_reaches_the_internet_through_the_edge_and_nothing_else_does() {
    if !require_root() {
        return;
    }
    let st = StandardTopology::new().unwrap();
    let coord = Coord::start_with(
        &st.coord,
        8443,
        &["--funnel-domain", DOMAIN, "--funnel-port", "443"],
    );
    // No ACLs: members reach nobody; node-a may funnel port 3000; tag:edge nodes are edges.
    let policy = coord.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"acls": [], "funnel": [{"nodes": ["node-a"], "ports": [3000]}],
            "edges": [{"tag": "tag:edge", "domains": ["funnel.example.com"]}]}"#,
    )
    .unwrap();
    coord.cli(&["policy", "set", policy.to_str().unwrap()]);
    let edge_key = coord.authkey(&["--tag", "edge"]);
    let node_key = coord.authkey(&[]);

    let edge_dir = tempfile::tempdir().unwrap();
    let edge_state = edge_dir.path().join("edge");
    let https = format!("{EDGE_V4}:443");
    let public = EDGE_V4.to_string();
    let (edge, _) = spawn_ready(
        &st.edge,
        "funnel-edge",
        &[
            "run",
            "--state-dir",
            edge_state.to_str().unwrap(),
            "--domain",
            DOMAIN,
            "--https-listen",
            &https,
            "--public-address",
            &public,
            "--coord",
            &coord.url,
            "--coord-fingerprint",
            &coord.fingerprint,
            "--authkey",
            &edge_key,
        ],
        "funnel-edge: serving",
        Duration::from_secs(30),
    );

    let node = Node::up(&st.node_a, &coord, &node_key, "node-a");
    let (_page, _) = spawn_ready(
        &st.node_a,
        "meshd",
        &["sample-page", "--listen", "127.0.0.1:3000"],
        "sample page on ",
        Duration::from_secs(10),
    );
    // Something else on node-a, listening on every address: the edge must not reach it.
    let _other = greeter(&st.node_a, "0.0.0.0", 8080);
    let (ok, out) = node.cli(&["funnel", "3000", "--bg"]);
    assert!(ok, "{out}");
    assert!(out.contains("https://node-a.funnel.example.com/"), "{out}");

    // From the internet: by name, through the edge's public address, trusting only its CA.
    let ca = edge_state.join("ca.pem");
    let resolve = format!("node-a.{DOMAIN}:443:{EDGE_V4}");
    let url = format!("https://node-a.{DOMAIN}/");
    let mut page = String::new();
    wait_until(
        "the page through the funnel",
        Duration::from_secs(30),
        || {
            let out = st.client.output(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    "--cacert",
                    ca.to_str().unwrap(),
                    "--resolve",
                    &resolve,
                    &url,
                ],
                Duration::from_secs(10),
            )?;
            page = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(page.contains("Hello from meshfunnel"))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- edge ---\n{}\n--- node ---\n{}",
            edge.stderr(),
            node.process.stderr()
        )
    });
    // The page saw the real client and the funnel's marks.
    assert!(page.contains(&CLIENT_V4.to_string()), "{page}");
    assert!(page.contains("node-a.funnel.example.com"), "{page}");

    // From the edge itself: every other port of node-a's mesh addresses is closed to it.
    for addr in [&node.ipv4, &node.ipv6] {
        for port in [22, 3000, 8080] {
            let got = tcp_probe(&st.edge, addr, port, 1000);
            assert!(!got.starts_with("ok"), "edge → {addr}:{port}: {got}");
        }
    }
    // While node-a itself serves 8080 (the probe above was refused by policy, not by absence).
    let got = tcp_probe(&st.node_a, "127.0.0.1", 8080, 1500);
    assert!(got.starts_with("ok"), "{got}");

    // Off: the edge answers 404 for the name.
    let (ok, out) = node.cli(&["funnel", "off"]);
    assert!(ok, "{out}");
    wait_until("404 after funnel off", Duration::from_secs(10), || {
        let out = st.client.output(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ],
            Duration::from_secs(10),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout) == "404")
    })
    .unwrap();
}
