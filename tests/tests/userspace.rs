//! Userspace networking end to end, unprivileged, on loopback: the real `coord`, two
//! `meshd up --userspace` nodes (no TUN, no root), a real HTTP server behind node B's
//! `--serve-tcp`, and real `curl` through node A's SOCKS5 proxy, by mesh address and by name.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A binary of this workspace, next to the test executable's directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}, or run ./test.sh)",
        path.display()
    );
    path
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with stdout piped and returns the first line `want` accepts, within `within`.
/// The rest of stdout is drained in the background.
fn spawn_until(
    mut cmd: Command,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> (Proc, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so the child never blocks.
                continue;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut seen = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return (proc, seen);
                }
            }
            Err(_) => panic!("no expected output in time; saw {seen:?}"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    _proc: Proc,
    _dir: tempfile::TempDir,
    fqdn: String,
    ipv4: String,
    ipv6: String,
    socks: String,
}

/// `meshd up: nodeb.mesh.internal is 100.64.0.2 and fd..::2 in userspace (UDP port 1, SOCKS5 on
/// 127.0.0.1:2)`
fn parse_up(line: &str) -> (String, String, String, String) {
    let rest = line.strip_prefix("meshd up: ").unwrap();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let socks = rest
        .split("SOCKS5 on ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_owned();
    (
        words[0].to_owned(),
        words[2].to_owned(),
        words[4].to_owned(),
        socks,
    )
}

fn start_node(url: &str, fingerprint: &str, authkey: &str, name: &str, extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("meshd"));
    cmd.arg("--state-dir")
        .arg(dir.path())
        .args([
            "up",
            "--userspace",
            "--listen-port",
            "0",
            "--socks5",
            "127.0.0.1:0",
        ])
        // The machine may have no interface but loopback: advertise it explicitly.
        .args(["--endpoint", "127.0.0.1"])
        .args(["--coord", url, "--coord-fingerprint", fingerprint])
        .args(["--authkey", authkey, "--hostname", name])
        .args(extra)
        .env("MESHD_LOG", "warn");
    let (proc, lines) = spawn_until(cmd, Duration::from_secs(30), |l| {
        l.starts_with("meshd up: ")
    });
    let (fqdn, ipv4, ipv6, socks) = parse_up(lines.last().unwrap());
    Node {
        _proc: proc,
        _dir: dir,
        fqdn,
        ipv4,
        ipv6,
        socks,
    }
}

/// `curl --socks5-hostname` through `socks`; (success, body, stderr).
fn curl(socks: &str, url: &str) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--socks5-hostname", socks, url])
        .output()
        .expect("running curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Retries `curl` until it succeeds or `within` passes (handshakes take a moment).
fn curl_until_ok(socks: &str, url: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (ok, body, err) = curl(socks, url);
        if ok {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "curl {url} through {socks} kept failing: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "HTTP server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn curl_through_socks5_to_a_peer_served_by_its_userspace_stack() {
    let coord_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("coord"));
    cmd.arg("--state-dir")
        .arg(coord_dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("COORD_LOG", "warn");
    let seen = std::cell::RefCell::new((None::<String>, None::<String>));
    let (_coord, _) = spawn_until(cmd, Duration::from_secs(30), |l| {
        let mut s = seen.borrow_mut();
        if let Some(a) = l.strip_prefix("coord listening on ") {
            s.0 = Some(a.to_owned());
        }
        if let Some(f) = l.strip_prefix("TLS certificate fingerprint: ") {
            s.1 = Some(f.to_owned());
        }
        s.0.is_some() && s.1.is_some()
    });
    let (url, fingerprint) = seen.into_inner();
    let (url, fingerprint) = (url.unwrap(), fingerprint.unwrap());

    let out = Command::new(binary("coord"))
        .arg("--state-dir")
        .arg(coord_dir.path())
        .args(["authkey", "create", "--reusable", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let authkey = v["key"].as_str().unwrap().to_owned();

    // The service on B's loopback, reachable from the mesh only through B's --serve-tcp.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "hello from node b\n").unwrap();
    let http_port = free_port();
    let _http = Proc(
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
    let b = start_node(
        &url,
        &fingerprint,
        &authkey,
        "nodeb",
        &["--serve-tcp", &forward],
    );
    let a = start_node(&url, &fingerprint, &authkey, "nodea", &[]);
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
