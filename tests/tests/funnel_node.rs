//! The node side of funnels, unprivileged, on loopback: the real `coord` with a policy that
//! grants `laptop` a funnel and marks `tag:edge` nodes as edges, three `meshd --userspace` nodes
//! (laptop, an edge, another member), and a local HTTP service on the laptop. The edge reaches the
//! laptop's funnel ingress over the mesh (through its SOCKS5 proxy) and gets the local page; the
//! other member is refused; `meshd funnel off`, a missing grant and a killed foreground
//! `meshd funnel` behave as documented.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use testkit::{binary, spawn_until};

const INGRESS: u16 = 41642;

/// A local HTTP/1.0 service on 127.0.0.1 that answers every request with `body`.
fn local_service(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Through a node's SOCKS5 proxy to `ip:INGRESS`: names the funnel, then sends an HTTP request;
/// returns everything the node answered (`OK\n` and the page, or `ERR …`), or the SOCKS error.
fn through_ingress(socks: &str, ip: &str, funnel: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(socks).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello).map_err(|e| e.to_string())?;
    let octets: Vec<u8> = ip.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec();
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&octets);
    req.extend_from_slice(&INGRESS.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).map_err(|e| e.to_string())?;
    if reply[1] != 0 {
        return Err(format!("SOCKS5 reply {}", reply[1]));
    }
    s.write_all(format!("MFUNNEL/1 {funnel}\n").as_bytes())
        .unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Retries until `ok` accepts the answer, or fails with the last one.
fn until(
    within: Duration,
    mut f: impl FnMut() -> Result<String, String>,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let r = f();
        match &r {
            Ok(text) if ok(text) => return text.clone(),
            _ if Instant::now() >= deadline => panic!("gave up; last answer: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[test]
fn an_edge_reaches_only_the_funnels_a_node_opened() {
    let coord = start_coord();
    let page_port = local_service("hello from the laptop");
    let policy = format!(
        r#"{{"acls": [{{"src": ["*"], "dst": ["*"]}}],
            "funnel": [{{"nodes": ["laptop"], "ports": [{page_port}], "max_ttl": "1h"}}],
            "edges": [{{"tag": "tag:edge"}}]}}"#
    );
    let (ok, out) = coord.cli(&["policy", "set", "-"], Some(&policy));
    assert!(ok, "{out}");
    let (ok, out) = coord.cli(
        &["authkey", "create", "--reusable", "--tag", "edge", "--json"],
        None,
    );
    assert!(ok, "{out}");
    let edge_key = serde_json::from_str::<serde_json::Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    let laptop = start_node(&coord, "laptop", &[]);
    let edge = start_node_with_key(&coord, &edge_key, "edge", &[]);
    let other = start_node(&coord, "other", &[]);

    // No funnel yet: nothing to reach (the coordinator opens the ingress to edges only while the
    // node has a funnel).
    let text = until(
        Duration::from_secs(30),
        || through_ingress(&edge.socks, &laptop.ipv4, "laptop"),
        |t| t.starts_with("ERR"),
    );
    assert!(text.contains("not a funnel edge"), "{text}");

    // A port without a grant: refused, and the message names the missing grant.
    let (ok, text) = laptop.cli(&["funnel", "1", "--bg"]);
    assert!(!ok && text.contains("funnel grant"), "{text}");

    // Published in the background: the URL at once, the page through the ingress.
    let (ok, text) = laptop.cli(&["funnel", &page_port.to_string(), "--bg"]);
    assert!(ok, "{text}");
    assert!(text.contains("https://laptop.funnel.localhost/"), "{text}");
    let text = until(
        Duration::from_secs(20),
        || through_ingress(&edge.socks, &laptop.ipv4, "laptop"),
        |t| t.starts_with("OK\n"),
    );
    assert!(text.contains("hello from the laptop"), "{text}");
    let (ok, text) = laptop.cli(&["funnel", "status"]);
    assert!(
        ok && text.contains("laptop") && text.contains(&page_port.to_string()),
        "{text}"
    );

    // Another member of the mesh is not an edge: refused (by the filter or the ingress).
    let got = through_ingress(&other.socks, &laptop.ipv4, "laptop");
    assert!(
        got.as_ref().map_or(true, |t| !t.contains("hello")),
        "{got:?}"
    );

    // Off: refused again.
    let (ok, text) = laptop.cli(&["funnel", "off", "laptop"]);
    assert!(ok && text.contains("closed laptop"), "{text}");
    let text = through_ingress(&edge.socks, &laptop.ipv4, "laptop").unwrap();
    assert!(text.starts_with("ERR"), "{text}");

    // A foreground funnel lives as long as its command: killed, it is gone.
    let mut cmd = Command::new(binary("meshd"));
    cmd.arg("--state-dir").arg(laptop.dir.path()).args([
        "funnel",
        &page_port.to_string(),
        "--name",
        "demo",
    ]);
    let (fg, lines) = spawn_until(cmd, Duration::from_secs(20), |l| l.starts_with("https://"));
    assert_eq!(lines.last().unwrap(), "https://demo.funnel.localhost/");
    // The coordinator opens the ingress to the edge again with its next delta.
    let text = until(
        Duration::from_secs(10),
        || through_ingress(&edge.socks, &laptop.ipv4, "demo"),
        |t| t.starts_with("OK\n"),
    );
    assert!(text.contains("hello from the laptop"), "{text}");
    drop(fg); // SIGKILL: the local API connection closes with it
    let text = until(
        Duration::from_secs(10),
        || through_ingress(&edge.socks, &laptop.ipv4, "demo"),
        |t| t.starts_with("ERR"),
    );
    assert!(!text.contains("hello"), "{text}");
    let (ok, text) = laptop.cli(&["funnel", "status"]);
    assert!(ok && text.contains("no funnels"), "{text}");
}
