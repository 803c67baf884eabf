//! Userspace networking end to end, unprivileged, on loopback: the real `coord`, two
//! `meshd up --userspace` nodes (no TUN, no root), a real HTTP server behind node B's
//! `--serve-tcp`, and real `curl` through node A's SOCKS5 proxy, by mesh address and by name;
//! and `meshd ping` between two such nodes.

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

/// A running coordinator and a reusable auth key for it.
struct Coord {
    _proc: Proc,
    _dir: tempfile::TempDir,
    url: String,
    fingerprint: String,
    authkey: String,
}

fn start_coord() -> Coord {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("coord"));
    cmd.arg("--state-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("COORD_LOG", "warn");
    let seen = std::cell::RefCell::new((None::<String>, None::<String>));
    let (proc, _) = spawn_until(cmd, Duration::from_secs(30), |l| {
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

    let out = Command::new(binary("coord"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["authkey", "create", "--reusable", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Coord {
        _proc: proc,
        _dir: dir,
        url: url.unwrap(),
        fingerprint: fingerprint.unwrap(),
        authkey: v["key"].as_str().unwrap().to_owned(),
    }
}

struct Node {
    _proc: Proc,
    dir: tempfile::TempDir,
    fqdn: String,
    ipv4: String,
    ipv6: String,
    udp_port: u16,
    socks: String,
}

impl Node {
    /// Runs the `meshd` CLI against this node's state dir: (success, stdout and stderr).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(binary("meshd"))
            .arg("--state-dir")
            .arg(self.dir.path())
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// `meshd up: nodeb.mesh.internal is 100.64.0.2 and fd..::2 in userspace (UDP port 1, SOCKS5 on
/// 127.0.0.1:2)`: (fqdn, ipv4, ipv6, UDP port, SOCKS5 address).
fn parse_up(line: &str) -> (String, String, String, u16, String) {
    let rest = line.strip_prefix("meshd up: ").unwrap();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let udp_port = rest
        .split("UDP port ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
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
        udp_port,
        socks,
    )
}

fn start_node(coord: &Coord, name: &str, extra: &[&str]) -> Node {
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
        .args([
            "--coord",
            &coord.url,
            "--coord-fingerprint",
            &coord.fingerprint,
        ])
        .args(["--authkey", &coord.authkey, "--hostname", name])
        .args(extra)
        .env("MESHD_LOG", "warn");
    let (proc, lines) = spawn_until(cmd, Duration::from_secs(30), |l| {
        l.starts_with("meshd up: ")
    });
    let (fqdn, ipv4, ipv6, udp_port, socks) = parse_up(lines.last().unwrap());
    Node {
        _proc: proc,
        dir,
        fqdn,
        ipv4,
        ipv6,
        udp_port,
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
    let coord = start_coord();

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
