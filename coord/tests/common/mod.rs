//! Test harness: the real `coord` binary as a child process on 127.0.0.1, the real CLI for
//! admin commands, and the node-side control client from meshd. Children are killed on drop.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshd::control::{ControlClient, Trust};
use proto::map::MapMessage;

pub const COORD: &str = env!("CARGO_BIN_EXE_coord");

pub struct Coord {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub fingerprint: String,
}

impl Coord {
    /// Starts coord with a state dir, on `listen` (use port 0 for any), with extra flags.
    pub fn start_at(dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(COORD)
            .arg("--state-dir")
            .arg(dir)
            .args(["serve", "--listen", listen])
            .args(extra)
            .env("COORD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting coord");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut fingerprint = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || fingerprint.is_none() {
            assert!(Instant::now() < deadline, "coord did not start in time");
            let line = lines
                .next()
                .expect("coord exited before it was listening")
                .expect("reading coord output");
            if let Some(a) = line.strip_prefix("coord listening on https://") {
                addr = Some(a.parse().expect("address"));
            }
            if let Some(f) = line.strip_prefix("TLS certificate fingerprint: ") {
                fingerprint = Some(f.to_owned());
            }
        }
        // Keep draining stdout so coord never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            dir: dir.to_owned(),
            addr: addr.expect("address"),
            fingerprint: fingerprint.expect("fingerprint"),
        }
    }

    pub fn start(dir: &Path) -> Self {
        Self::start_at(dir, "127.0.0.1:0", &[])
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn client(&self, key: keys::PrivateKey) -> ControlClient {
        ControlClient::new(
            &self.url(),
            Trust::Fingerprint(self.fingerprint.clone()),
            key,
        )
        .expect("client")
    }

    /// Runs the real CLI against this coord's state dir; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.dir, args)
    }

    /// Creates an auth key with the CLI and returns its secret text.
    pub fn authkey(&self, args: &[&str]) -> String {
        let mut all = vec!["authkey", "create", "--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "authkey create failed: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["key"].as_str().expect("key").to_owned()
    }

    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let (ok, out, err) = self.cli(&["nodes", "list", "--json"]);
        assert!(ok, "nodes list failed: {err}");
        serde_json::from_str(&out).expect("json")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(COORD)
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running coord CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The next non-keepalive message within `within`.
pub async fn next_msg(stream: &mut meshd::control::MapStream, within: Duration) -> MapMessage {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no map message in time")
            .expect("map stream failed")
            .expect("map stream ended");
        if msg != MapMessage::Keepalive {
            return msg;
        }
    }
}
