//! Bulk TCP over the mesh: a 100 MB file of random bytes crosses from one meshd node to another
//! over mesh IPv4 (HTTP: `python3 -m http.server` on the sender's mesh address, `curl` on the
//! receiver) and arrives with the same SHA-256; a smaller one does the same over mesh IPv6.
//! The receiving meshd hands the segments to its TUN device merged (receive offload), not one
//! `write` per packet. A `--userspace` node downloads the smaller file from the same sender
//! through its SOCKS5 proxy (the sender's datagrams leave in segmentation-offload runs, which
//! reach the userspace node's socket coalesced).

#![allow(clippy::unwrap_used)]

mod mesh;
mod meshx;

use std::time::{Duration, Instant};

use mesh::{Coord, Node};
use meshx::{lan, node_logs, sha256, wait_ping};
use netns_tests::{require_root, Topology};

/// Writes `mib` MiB of random bytes to `path` (`head -c NM /dev/urandom`).
fn random_file(path: &std::path::Path, mib: u32) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {mib}M /dev/urandom > '{}'",
            path.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::metadata(path).unwrap().len(), u64::from(mib) << 20);
}

#[test]
fn files_cross_the_mesh_intact_over_ipv4_and_ipv6() {
    if !require_root() {
        return;
    }
    let topo = Topology::new().unwrap();
    let (hosts, _lan) = lan(&topo, &["coord", "a", "b", "c"]);
    let (a, b, c) = (&hosts[1], &hosts[2], &hosts[3]);
    let coord = Coord::start(&hosts[0], 8443);
    let key = coord.authkey(&[]);
    let na = Node::up(a, &coord, &key, "a");
    let nb = Node::up(b, &coord, &key, "b");
    let nc = Node::up_with(
        c,
        &coord,
        &key,
        "c",
        &["--userspace", "--socks5", "127.0.0.1:1080"],
    );
    wait_ping(a, &nb.ipv4, 15, &[&na, &nb]);
    wait_ping(a, &nb.ipv6, 15, &[&na, &nb]);

    // The sender: b serves its directory on its mesh addresses only.
    let serve = tempfile::tempdir().unwrap();
    random_file(&serve.path().join("big.bin"), 100);
    random_file(&serve.path().join("small.bin"), 10);
    let dir = serve.path().to_str().unwrap();
    let mut servers = Vec::new();
    for (addr, port) in [(&nb.ipv4, "8000"), (&nb.ipv6, "8001")] {
        let args = [
            "-m",
            "http.server",
            port,
            "--bind",
            addr,
            "--directory",
            dir,
        ];
        servers.push(b.spawn("python3", &args).unwrap());
        b.wait_tcp_listen(port.parse().unwrap(), Duration::from_secs(10))
            .unwrap();
    }

    let recv = tempfile::tempdir().unwrap();
    let writes_before = write_syscalls(na.process.id());
    for (url, name, limit) in [
        (format!("http://{}:8000/big.bin", nb.ipv4), "big.bin", 90),
        (
            format!("http://[{}]:8001/small.bin", nb.ipv6),
            "small.bin",
            30,
        ),
    ] {
        let out_path = recv.path().join(name);
        let out_arg = out_path.to_str().unwrap();
        let max_time = limit.to_string();
        let started = Instant::now();
        let out = a
            .output(
                "curl",
                &[
                    "-g",
                    "-sS",
                    "--fail",
                    "--max-time",
                    &max_time,
                    "-o",
                    out_arg,
                    "-w",
                    "%{size_download} %{speed_download}",
                    &url,
                ],
                Duration::from_secs(limit + 10),
            )
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "curl {url}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node_logs(&[&na, &nb])
        );
        let sent = serve.path().join(name);
        assert_eq!(
            std::fs::metadata(&out_path).unwrap().len(),
            std::fs::metadata(&sent).unwrap().len(),
            "{url}: size"
        );
        // The digests as each end computes them, in its own host.
        let there = sha256(b, sent.to_str().unwrap());
        let here = sha256(a, out_arg);
        assert_eq!(here, there, "{url}: SHA-256 differs");
        eprintln!(
            "{url}: {} in {took:.1?} (curl: {})",
            name,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // 110 MiB arrived in at least 110 MiB / 1380 bytes ≈ 83,000 packets; merged into segments
    // of up to 64 KiB they take a few thousand writes to the device. One write per packet (no
    // merging) would be more than 83,000.
    let writes = write_syscalls(na.process.id()) - writes_before;
    assert!(
        writes < 20_000,
        "the receiving meshd made {writes} write calls for 110 MiB: packets are not merged"
    );
    eprintln!("receiving meshd: {writes} write calls for 110 MiB");
    // The userspace node: 10 MiB through its SOCKS5 proxy (the first tries wait for the
    // handshake), intact, at a speed no retransmission timeouts could reach.
    let url = format!("http://{}:8000/small.bin", nb.ipv4);
    let out_path = recv.path().join("small-userspace.bin");
    let out_arg = out_path.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let started = Instant::now();
        let out = c
            .output(
                "curl",
                &[
                    "-sS",
                    "--fail",
                    "--socks5",
                    "127.0.0.1:1080",
                    "--max-time",
                    "30",
                    "-o",
                    out_arg,
                    "-w",
                    "%{speed_download}",
                    &url,
                ],
                Duration::from_secs(40),
            )
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            eprintln!("{url} to the userspace node in {:.1?}", started.elapsed());
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        out.status.success(),
        "curl {url} through the userspace node: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node_logs(&[&nb, &nc])
    );
    let speed: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(speed > 2e6, "{speed} bytes/s into the userspace node");
    let sent = serve.path().join("small.bin");
    assert_eq!(sha256(c, out_arg), sha256(b, sent.to_str().unwrap()));
    // None was lost between the node's socket and its stack (the queue's drops are counted).
    let s = nc.status();
    assert_eq!(s["drops"]["stack_queue_full"], 0, "{s}");

    // The bytes went through the tunnel: both peers count them, nothing dropped as spoofed.
    let s = na.status();
    let peer = &s["peers"].as_array().unwrap()[0];
    assert!(peer["rx_bytes"].as_u64().unwrap() > 110 << 20, "{peer}");
    assert_eq!(s["drops"]["spoofed_source"], 0, "{s}");
    drop(servers);
}

/// `syscw` of a process (all its threads): how many write calls it made (`write`, `writev`, …;
/// not socket sends).
fn write_syscalls(pid: u32) -> u64 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "meshd", "pid {pid} is not meshd");
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
