//! Running the project's own binaries (`coord`, `meshd`, found by `testkit::binary`; `./test.sh`
//! builds them all first) inside test hosts.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use netns_tests::{Host, Spawned};
use tempfile::TempDir;
use testkit::{binary, run_command};

/// Starts the workspace binary `name` with `args` in `host`; returns once it printed a line
/// starting with `prefix` (within `within`): (process, that line).
pub fn spawn_ready(
    host: &Host,
    name: &str,
    args: &[&str],
    prefix: &str,
    within: Duration,
) -> (Spawned, String) {
    let bin = binary(name);
    let mut process = host.spawn(bin.to_str().unwrap(), args).unwrap();
    process.wait_for_output(prefix, within).unwrap();
    let line = process
        .stdout()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap()
        .to_owned();
    (process, line)
}

/// Starts `coord serve` in `host` on the state dir `state`, listening on `listen` with `ip` in its
/// certificate (and `extra` serve options); returns once it printed its certificate fingerprint:
/// (process, fingerprint).
pub fn spawn_coord(
    host: &Host,
    state: &Path,
    listen: &str,
    ip: &str,
    extra: &[&str],
) -> (Spawned, String) {
    let mut args = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "serve",
        "--listen",
        listen,
        "--tls-san",
        ip,
    ];
    args.extend_from_slice(extra);
    let prefix = "TLS certificate fingerprint: ";
    let (process, line) = spawn_ready(host, "coord", &args, prefix, Duration::from_secs(20));
    (process, line[prefix.len()..].to_owned())
}

/// Starts `meshd ARGS` in `host`; returns once it printed its `meshd up: ` line (within
/// `within`): (process, that line).
pub fn spawn_meshd(host: &Host, args: &[&str], within: Duration) -> (Spawned, String) {
    spawn_ready(host, "meshd", args, "meshd up: ", within)
}

/// The mesh addresses in a `meshd up: NAME.DOMAIN is V4 and V6 on DEV (UDP port N)` line.
pub fn up_addresses(line: &str) -> (String, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[4].to_owned(), words[6].to_owned())
}

/// A coordinator running in `host`.
pub struct Coord {
    pub process: Spawned,
    pub dir: TempDir,
    pub url: String,
    pub fingerprint: String,
}

impl Coord {
    pub fn start(host: &Host, port: u16) -> Coord {
        Self::start_with(host, port, &[])
    }

    /// [`Coord::start`] with more `coord serve` options (`--funnel-domain D`, say).
    pub fn start_with(host: &Host, port: u16, extra: &[&str]) -> Coord {
        let dir = tempfile::tempdir().unwrap();
        let ip = host.ipv4().unwrap();
        let listen = format!("{ip}:{port}");
        let state = dir.path().join("coord");
        let (process, fingerprint) = spawn_coord(host, &state, &listen, &ip.to_string(), extra);
        Coord {
            process,
            dir,
            url: format!("https://{listen}"),
            fingerprint,
        }
    }

    /// Runs the coord CLI (the admin socket is a file: no network needed).
    pub fn cli(&self, args: &[&str]) -> String {
        let state = self.dir.path().join("coord");
        testkit::stdout_of(
            std::process::Command::new(binary("coord"))
                .arg("--state-dir")
                .arg(&state)
                .args(args),
        )
    }

    pub fn authkey(&self, extra: &[&str]) -> String {
        let mut args = vec!["authkey", "create", "--reusable"];
        args.extend_from_slice(extra);
        self.cli(&args).trim().to_owned()
    }
}

/// A meshd node running in `host`.
pub struct Node {
    pub process: Spawned,
    pub dir: TempDir,
    pub ipv4: String,
    pub ipv6: String,
}

impl Node {
    pub fn up(host: &Host, coord: &Coord, authkey: &str, name: &str) -> Node {
        Self::up_with(host, coord, authkey, name, &[])
    }

    /// [`Node::up`] with more `meshd up` options (`--userspace`, say).
    pub fn up_with(host: &Host, coord: &Coord, authkey: &str, name: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("meshd");
        let mut args = vec![
            "--state-dir",
            state.to_str().unwrap(),
            "up",
            "--coord",
            &coord.url,
            "--coord-fingerprint",
            &coord.fingerprint,
            "--authkey",
            authkey,
            "--hostname",
            name,
        ];
        args.extend_from_slice(extra);
        let (process, line) = spawn_meshd(host, &args, Duration::from_secs(20));
        let (ipv4, ipv6) = up_addresses(&line);
        Node {
            process,
            dir,
            ipv4,
            ipv6,
        }
    }
}

impl Node {
    /// Runs the meshd CLI against this node's state dir (the local API is a Unix socket).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let state = self.dir.path().join("meshd");
        run_command(
            std::process::Command::new(binary("meshd"))
                .arg("--state-dir")
                .arg(&state)
                .args(args),
        )
    }

    /// `meshd status --json`.
    pub fn status(&self) -> serde_json::Value {
        let (ok, text) = self.cli(&["status", "--json"]);
        assert!(ok, "meshd status: {text}");
        serde_json::from_str(&text).unwrap()
    }
}
