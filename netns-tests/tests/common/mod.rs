//! Helpers shared by the netns integration tests: address parsing, a bounded default timeout,
//! and a web server (`python3 -m http.server`) serving one file inside a host.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use netns_tests::{Host, Ipv4Net, Ipv6Net, Spawned};
use tempfile::TempDir;

/// Time limit for any single step of a test (a command, a wait).
pub const T: Duration = Duration::from_secs(10);

pub fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

pub fn v6(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

/// `python3 -m http.server` inside a host, serving `hello.txt`; killed on drop.
pub struct WebServer {
    pub process: Spawned,
    _dir: TempDir,
}

impl WebServer {
    /// Starts it on `bind:port` (`0.0.0.0` for all addresses) and waits until it listens. A
    /// fixed port is fine: the namespace is fresh and private to the test.
    pub fn start(host: &Host, bind: &str, port: u16, body: &str) -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), body).unwrap();
        let port_arg = port.to_string();
        let dir_arg = dir.path().to_str().unwrap();
        let args = [
            "-m",
            "http.server",
            &port_arg,
            "--bind",
            bind,
            "--directory",
            dir_arg,
        ];
        let process = host.spawn("python3", &args).unwrap();
        host.wait_tcp_listen(port, T).unwrap();
        WebServer { process, _dir: dir }
    }

    /// The access log so far (http.server logs each request to stderr, client address first).
    pub fn log(&self) -> String {
        self.process.stderr()
    }
}

/// `curl` inside `from` for `url`, bounded; returns the curl exit code and its output.
pub fn curl(from: &Host, url: &str) -> (Option<i32>, String) {
    let args = ["-sS", "--connect-timeout", "2", "--max-time", "5", url];
    let out = from.output("curl", &args, T).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
