//! Helpers shared by the unprivileged end-to-end tests: a coordinator on 127.0.0.1 and
//! `meshd --userspace` nodes, run as child processes through `testkit`.

#![allow(dead_code)] // each test file uses a part

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{binary, run_command, spawn_lines, spawn_until, stdout_of, Proc};

/// A running coordinator and a reusable auth key for it.
pub struct Coord {
    pub _proc: Proc,
    pub _dir: tempfile::TempDir,
    pub url: String,
    pub fingerprint: String,
    pub authkey: String,
}

pub fn start_coord() -> Coord {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("coord"));
    cmd.arg("--state-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("COORD_LOG", "warn");
    let (proc, lines) = spawn_lines(
        cmd,
        &["coord listening on ", "TLS certificate fingerprint: "],
        Duration::from_secs(30),
    );
    let (url, fingerprint) = (lines[0].clone(), lines[1].clone());

    let out = stdout_of(
        Command::new(binary("coord"))
            .arg("--state-dir")
            .arg(dir.path())
            .args(["authkey", "create", "--reusable", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    Coord {
        _proc: proc,
        _dir: dir,
        url,
        fingerprint,
        authkey: v["key"].as_str().unwrap().to_owned(),
    }
}

impl Coord {
    /// Runs the coord CLI on this coordinator's state dir, with `stdin`; (success, output).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write as _;
        let mut child = Command::new(binary("coord"))
            .arg("--state-dir")
            .arg(self._dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

pub struct Node {
    pub _proc: Proc,
    pub dir: tempfile::TempDir,
    pub fqdn: String,
    pub ipv4: String,
    pub ipv6: String,
    pub udp_port: u16,
    pub socks: String,
}

impl Node {
    /// Runs the `meshd` CLI against this node's state dir: (success, stdout and stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        run_command(
            Command::new(binary("meshd"))
                .arg("--state-dir")
                .arg(self.dir.path())
                .args(args),
        )
    }
}

/// `meshd up: nodeb.mesh.internal is 100.64.0.2 and fd..::2 in userspace (UDP port 1, SOCKS5 on
/// 127.0.0.1:2)`: (fqdn, ipv4, ipv6, UDP port, SOCKS5 address).
pub fn parse_up(line: &str) -> (String, String, String, u16, String) {
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

pub fn start_node(coord: &Coord, name: &str, extra: &[&str]) -> Node {
    start_node_with_key(coord, &coord.authkey, name, extra)
}

/// [`start_node`] with another auth key (one that tags the node, say).
pub fn start_node_with_key(coord: &Coord, authkey: &str, name: &str, extra: &[&str]) -> Node {
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
        .args(["--authkey", authkey, "--hostname", name])
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
pub fn curl(socks: &str, url: &str) -> (bool, String, String) {
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
pub fn curl_until_ok(socks: &str, url: &str, within: Duration) -> String {
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

pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "HTTP server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}
