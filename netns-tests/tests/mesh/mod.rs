//! Running the project's own binaries (`coord`, `meshd`) inside test hosts.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use netns_tests::{Host, Spawned};
use tempfile::TempDir;

/// A project binary next to this test's executable (`target/<profile>/NAME`). `./test.sh` builds
/// every binary of the workspace before it runs any test.
pub fn binary(name: &str) -> PathBuf {
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

/// A coordinator running in `host`.
pub struct Coord {
    pub process: Spawned,
    pub dir: TempDir,
    pub url: String,
    pub fingerprint: String,
}

impl Coord {
    pub fn start(host: &Host, port: u16) -> Coord {
        let dir = tempfile::tempdir().unwrap();
        let ip = host.ipv4().unwrap();
        let listen = format!("{ip}:{port}");
        let bin = binary("coord");
        let state = dir.path().join("coord");
        let args = [
            "--state-dir",
            state.to_str().unwrap(),
            "serve",
            "--listen",
            &listen,
            "--tls-san",
            &ip.to_string(),
        ];
        let mut process = host.spawn(bin.to_str().unwrap(), &args).unwrap();
        process
            .wait_for_output("TLS certificate fingerprint: ", Duration::from_secs(20))
            .unwrap();
        let fingerprint = process
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("TLS certificate fingerprint: "))
            .unwrap()
            .to_owned();
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
        let out = std::process::Command::new(binary("coord"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "coord {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
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
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("meshd");
        let bin = binary("meshd");
        let args = [
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
        let mut process = host.spawn(bin.to_str().unwrap(), &args).unwrap();
        process
            .wait_for_output("meshd up: ", Duration::from_secs(20))
            .unwrap();
        let line = process
            .stdout()
            .lines()
            .find(|l| l.starts_with("meshd up: "))
            .unwrap()
            .to_owned();
        // "meshd up: NAME.DOMAIN is V4 and V6 on DEV (UDP port N)"
        let words: Vec<&str> = line.split_whitespace().collect();
        Node {
            process,
            dir,
            ipv4: words[4].to_owned(),
            ipv6: words[6].to_owned(),
        }
    }
}

impl Node {
    /// Runs the meshd CLI against this node's state dir (the local API is a Unix socket).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let state = self.dir.path().join("meshd");
        let out = std::process::Command::new(binary("meshd"))
            .arg("--state-dir")
            .arg(&state)
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

    /// `meshd status --json`.
    pub fn status(&self) -> serde_json::Value {
        let (ok, text) = self.cli(&["status", "--json"]);
        assert!(ok, "meshd status: {text}");
        serde_json::from_str(&text).unwrap()
    }
}
