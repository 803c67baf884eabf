//! Extra helpers for the mesh data-plane tests (transfer, policy, garbage, coordinator down):
//! a LAN of hosts, restarting coord and meshd on their state dirs, pings, and small TCP
//! probes written in Python (no netcat needed). Every wait here is bounded.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use netns_tests::{wait_until, Host, Ipv4Net, Segment, Spawned, Topology};

use crate::mesh::{spawn_coord, spawn_meshd, up_addresses, Coord, Node};

/// Hosts named `names`, all on one bridge `lan`, at 203.0.113.10, .11, ... in that order.
pub fn lan(topo: &Topology, names: &[&str]) -> (Vec<Host>, Segment) {
    let hosts: Vec<Host> = names.iter().map(|h| topo.host(h).unwrap()).collect();
    let members: Vec<(&Host, Ipv4Net, Option<netns_tests::Ipv6Net>)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h, format!("203.0.113.{}/24", 10 + i).parse().unwrap(), None))
        .collect();
    let seg = topo.bridge("lan", &members).unwrap();
    (hosts, seg)
}

/// Starts coord again in `host` on its old state dir and address (after its process was killed).
/// Its certificate is kept in the state dir, so the fingerprint nodes pinned stays valid.
pub fn restart_coord(host: &Host, coord: &mut Coord) {
    coord.process.kill();
    let listen = coord.url.trim_start_matches("https://").to_owned();
    let ip = host.ipv4().unwrap().to_string();
    let state = coord.dir.path().join("coord");
    let (process, fingerprint) = spawn_coord(host, &state, &listen, &ip, &[]);
    assert_eq!(fingerprint, coord.fingerprint, "coord kept its certificate");
    coord.process = process;
}

/// Kills a node's meshd (SIGKILL) and starts `meshd up` again on the same state dir, with no
/// auth key and no `--coord` (both remembered). Returns once it printed `meshd up: `.
pub fn restart_node(host: &Host, node: &mut Node) {
    node.process.kill();
    // The TUN device goes with the last file descriptor; wait until the kernel removed it.
    wait_until("old mesh0 to go away", Duration::from_secs(10), || {
        let out = host.output("ip", &["link", "show", "mesh0"], Duration::from_secs(5))?;
        Ok(!out.status.success())
    })
    .unwrap();
    let state = node.dir.path().join("meshd");
    let args = ["--state-dir", state.to_str().unwrap(), "up"];
    let (process, line) = spawn_meshd(host, &args, Duration::from_secs(30));
    let (ipv4, ipv6) = up_addresses(&line);
    assert_eq!(ipv4, node.ipv4, "same address after a restart: {line}");
    assert_eq!(ipv6, node.ipv6, "same address after a restart: {line}");
    node.process = process;
}

/// One ping from `from` to `addr` (1 s reply timeout): whether it was answered.
pub fn ping_once(from: &Host, addr: &str) -> bool {
    from.output(
        "ping",
        &["-c", "1", "-W", "1", addr],
        Duration::from_secs(5),
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// Waits (at most `secs`) until `from` gets a ping reply from `addr`; panics with `why` and the
/// logs of `logs` if it never does.
pub fn wait_ping(from: &Host, addr: &str, secs: u64, logs: &[&Node]) {
    let what = format!("{} pings {addr}", from.name());
    if let Err(e) = wait_until(&what, Duration::from_secs(secs), || {
        Ok(ping_once(from, addr))
    }) {
        panic!("{e}\n{}", node_logs(logs));
    }
}

/// `ping -c N -i I` from `from` to `addr`; returns (sent, received, full output).
pub fn ping_count(from: &Host, addr: &str, count: u32, interval: &str) -> (u32, u32, String) {
    let count_arg = count.to_string();
    let out = from
        .output(
            "ping",
            &["-c", &count_arg, "-i", interval, "-W", "1", addr],
            Duration::from_secs(u64::from(count) + 15),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "50 packets transmitted, 50 received, 0% packet loss, time 4904ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let nums: Vec<u32> = line
        .split(',')
        .take(2)
        .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    (nums[0], nums[1], text)
}

/// The stderr logs of `nodes`, for failure messages.
pub fn node_logs(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- meshd {} log ---\n{}", n.ipv4, n.process.stderr()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A TCP server (Python) on `addr:port` inside `host` that greets every connection with
/// `hello from <addr>\n` and closes it. Returns once it listens.
pub fn greeter(host: &Host, addr: &str, port: u16) -> Spawned {
    tcp_service(
        host,
        addr,
        port,
        r#"c.sendall(("hello from %s\n" % addr).encode())"#,
    )
}

/// An HTTP service on `addr:port` that answers every request 413 after reading its first bytes
/// only, and closes with the rest unread (the kernel resets the connection).
pub fn refuser(host: &Host, addr: &str, port: u16) -> Spawned {
    tcp_service(
        host,
        addr,
        port,
        r#"c.recv(65536); c.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 13\r\nConnection: close\r\n\r\nrefused here\n")"#,
    )
}

/// A Python TCP server on `addr:port` that runs `serve` (one line of Python, with the accepted
/// socket `c` and `addr`) for each connection, then closes it.
fn tcp_service(host: &Host, addr: &str, port: u16, serve: &str) -> Spawned {
    let script = format!(
        r#"
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(64)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    try:
        {serve}
    finally:
        c.close()
"#
    );
    let port_arg = port.to_string();
    let mut p = host
        .spawn("python3", &["-c", &script, addr, &port_arg])
        .unwrap();
    p.wait_for_output("listening", Duration::from_secs(10))
        .unwrap();
    p
}

/// What a TCP client in `from` sees when it connects to `addr:port` with a connect timeout of
/// `timeout_ms`: `ok: <greeting>`, `timeout`, `refused`, or `error: ...`.
pub fn tcp_probe(from: &Host, addr: &str, port: u16, timeout_ms: u64) -> String {
    let script = r#"
import socket, sys
addr, port, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(t)
try:
    s.connect((addr, port))
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    print("ok: " + data.decode().strip())
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error: %s" % e)
"#;
    let port_arg = port.to_string();
    let t_arg = timeout_ms.to_string();
    let out = from
        .output(
            "python3",
            &["-c", script, addr, &port_arg, &t_arg],
            Duration::from_millis(timeout_ms) + Duration::from_secs(10),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if text.is_empty() {
        format!("error: {}", String::from_utf8_lossy(&out.stderr))
    } else {
        text
    }
}

/// `sha256sum FILE` run inside `host`: the hex digest.
pub fn sha256(host: &Host, path: &str) -> String {
    let out = host
        .run("sha256sum", &[path], Duration::from_secs(60))
        .unwrap();
    out.split_whitespace().next().unwrap().to_owned()
}

/// A real nginx (one process, no workers, so killing it leaves nothing behind) serving `root`
/// on `127.0.0.1:port` inside `host`, gzip on for text; its config, pid and logs in `dir`.
pub fn nginx(host: &Host, dir: &std::path::Path, root: &std::path::Path, port: u16) -> Spawned {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nuser root root;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d};\n  \
         fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         default_type application/octet-stream;\n  types {{ text/plain txt; }}\n  \
         gzip on; gzip_types text/plain; gzip_min_length 1;\n  \
         server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
        root.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let p = host
        .spawn("nginx", &["-c", path.to_str().unwrap()])
        .unwrap();
    host.wait_tcp_listen(port, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "nginx: {e}\n{}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            )
        });
    p
}
