//! Standard WireGuard peers: a host running wireguard-go (configured by `wg` from the config
//! `coord nodes add-external` printed) exchanges traffic with meshd nodes, and cannot use a
//! mesh node's address as its inner source.

#![allow(clippy::unwrap_used)]

mod mesh;

use std::net::Ipv6Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh::{Coord, Node};
use netns_tests::{require_root, wait_until, Host, Segment, Topology};

const T: Duration = Duration::from_secs(10);

/// coord, two meshd nodes and a wireguard-go host on one LAN, the wireguard-go host joined
/// through `coord nodes add-external`.
struct Setup {
    // Field order is drop order: processes before the topology.
    wg_go: netns_tests::Spawned,
    nodes: Vec<Node>,
    coord: Coord,
    hosts: Vec<Host>,
    _lan: Segment,
    /// The wireguard-go host's mesh addresses.
    wg_v4: String,
    wg_v6: String,
    /// The meshd nodes' public keys (base64), in `nodes` order.
    node_keys: Vec<String>,
    /// wireguard-go's interface: unique per topology, because its control socket
    /// (`/var/run/wireguard/NAME.sock`) is shared by every namespace.
    wg_if: String,
    _topo: Topology,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.wg_go.kill();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.wg_if));
    }
}

impl Setup {
    fn wg_host(&self) -> &Host {
        &self.hosts[3]
    }

    fn logs(&self) -> String {
        format!(
            "--- n1 ---\n{}\n--- n2 ---\n{}\n--- wireguard-go ---\n{}{}",
            self.nodes[0].process.stderr(),
            self.nodes[1].process.stderr(),
            self.wg_go.stdout(),
            self.wg_go.stderr()
        )
    }

    fn new() -> Setup {
        let topo = Topology::new().unwrap();
        let hosts: Vec<Host> = ["coord", "n1", "n2", "wg"]
            .iter()
            .map(|h| topo.host(h).unwrap())
            .collect();
        let members: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h, format!("203.0.113.{}/24", 10 + i).parse().unwrap(), None))
            .collect();
        let lan = topo.bridge("lan", &members).unwrap();

        let coord = Coord::start(&hosts[0], 8443);
        let authkey = coord.authkey(&[]);
        let nodes: Vec<Node> = ["n1", "n2"]
            .iter()
            .enumerate()
            .map(|(i, name)| Node::up(&hosts[i + 1], &coord, &authkey, name))
            .collect();
        // The config's Endpoint lines come from the endpoints the nodes reported.
        let mut listed = vec![];
        wait_until("n1 and n2 report endpoints", T, || {
            let out = coord.cli(&["nodes", "list", "--json"]);
            listed = serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap();
            Ok(listed.len() == 2
                && listed.iter().all(|n| {
                    n["node"]["endpoints"]
                        .as_array()
                        .is_some_and(|e| !e.is_empty())
                }))
        })
        .unwrap();
        let node_keys: Vec<String> = nodes
            .iter()
            .map(|n| {
                listed
                    .iter()
                    .find(|l| l["node"]["ipv4"] == n.ipv4.as_str())
                    .unwrap()["node"]["public_key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();

        let wg_if = format!(
            "wg{}",
            topo.prefix().trim_start_matches(netns_tests::NAME_MARK)
        );
        assert!(wg_if.len() <= 15, "{wg_if}");
        let wg_host = hosts[3].clone();
        let private = wg_host.run("wg", &["genkey"], T).unwrap();
        let public = wg_host
            .run_with_input("wg", &["pubkey"], Some(private.as_bytes()), T)
            .unwrap();
        let out = coord.cli(&[
            "nodes",
            "add-external",
            "--name",
            "wgpeer",
            "--public-key",
            public.trim(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let wg_v4 = v["node"]["node"]["ipv4"].as_str().unwrap().to_owned();
        let wg_v6 = v["node"]["node"]["ipv6"].as_str().unwrap().to_owned();
        let config = v["config"].as_str().unwrap();
        assert_eq!(config.matches("[Peer]").count(), 2, "{config}");
        assert_eq!(
            config.matches("Endpoint = 203.0.113.").count(),
            2,
            "{config}"
        );

        // Both nodes learn of the new peer from their netmaps (as an offline peer with no
        // endpoint). Wait for that first: a handshake that arrives before is dropped as from an
        // unknown peer, and wireguard-go retries only after 5 s.
        for (i, node) in nodes.iter().enumerate() {
            wait_until(
                &format!("n{} learns of the external peer", i + 1),
                T,
                || {
                    let s = node.status();
                    Ok(s["peers"].as_array().unwrap().iter().any(|p| {
                        p["name"] == "wgpeer" && p["online"] == false && p["endpoint"].is_null()
                    }))
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", node.status()));
        }

        // wg(8) reads the wg-quick file minus the wg-quick-only keys (Address); the private key
        // goes where the placeholder is.
        let wg_conf: String = config
            .lines()
            .filter(|l| !l.trim_start().starts_with("Address"))
            .map(|l| {
                if l.trim_start().starts_with("PrivateKey") {
                    format!("PrivateKey = {}\n", private.trim())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let conf_path = coord.dir.path().join("wgpeer.conf");
        std::fs::write(&conf_path, wg_conf).unwrap();

        // wireguard-go in the foreground, so the harness owns (and kills) it. No kernel module.
        let mut wg_go = wg_host.spawn("wireguard-go", &["-f", &wg_if]).unwrap();
        wait_until("wireguard-go creates its interface", T, || {
            if wg_go.try_wait()?.is_some() {
                panic!("wireguard-go exited: {}{}", wg_go.stdout(), wg_go.stderr());
            }
            Ok(wg_host
                .output("wg", &["show", wg_if.as_str()], T)?
                .status
                .success())
        })
        .unwrap();
        let ula: Ipv6Addr = wg_v6.parse().unwrap();
        let s = ula.segments();
        let ula48 = format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]);
        let conf = conf_path.to_str().unwrap();
        wg_host
            .run("wg", &["setconf", wg_if.as_str(), conf], T)
            .unwrap();
        let v4 = format!("{wg_v4}/32");
        let v6 = format!("{wg_v6}/128");
        for args in [
            vec!["addr", "add", v4.as_str(), "dev", wg_if.as_str()],
            vec!["-6", "addr", "add", v6.as_str(), "dev", wg_if.as_str()],
            vec!["link", "set", wg_if.as_str(), "up"],
            vec!["route", "add", "100.64.0.0/10", "dev", wg_if.as_str()],
            vec!["-6", "route", "add", ula48.as_str(), "dev", wg_if.as_str()],
        ] {
            wg_host.run("ip", &args, T).unwrap();
        }

        Setup {
            wg_go,
            nodes,
            coord,
            hosts,
            _lan: lan,
            wg_v4,
            wg_v6,
            node_keys,
            wg_if,
            _topo: topo,
        }
    }

    /// Pings `addr` from `host` until one answer comes back (the first packets wait for a
    /// handshake), bounded.
    fn ping_until(&self, host: &Host, what: &str, addr: &str) {
        wait_until(what, Duration::from_secs(15), || {
            let out = host.output(
                "ping",
                &["-c", "1", "-W", "1", addr],
                Duration::from_secs(5),
            )?;
            Ok(out.status.success())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn wireguard_go_peer_exchanges_traffic_with_meshd_nodes() {
    if !require_root() {
        return;
    }
    let setup = Setup::new();
    let wg = setup.wg_host();

    // The wireguard-go host reaches both nodes, IPv4 and IPv6.
    for (i, node) in setup.nodes.iter().enumerate() {
        for addr in [&node.ipv4, &node.ipv6] {
            setup.ping_until(
                wg,
                &format!("wireguard-go host pings n{} at {addr}", i + 1),
                addr,
            );
        }
    }
    // And a steady run: none lost.
    let out = wg
        .run(
            "ping",
            &["-c", "5", "-i", "0.2", "-W", "2", &setup.nodes[0].ipv4],
            T,
        )
        .unwrap();
    assert!(out.contains("5 received"), "{out}");

    // A meshd node reaches the wireguard-go host (its endpoint learned by roaming).
    for (i, host) in setup.hosts[1..3].iter().enumerate() {
        for addr in [&setup.wg_v4, &setup.wg_v6] {
            setup.ping_until(
                host,
                &format!("n{} pings the wireguard-go host at {addr}", i + 1),
                addr,
            );
        }
    }

    // 10 MB over TCP from the wireguard-go host to n1, checked by sha256.
    let n1 = &setup.hosts[1];
    let data = setup.coord.dir.path().join("payload");
    wg.run(
        "sh",
        &[
            "-c",
            &format!("head -c 10485760 /dev/urandom > {}", data.display()),
        ],
        T,
    )
    .unwrap();
    let sent = wg.run("sha256sum", &[data.to_str().unwrap()], T).unwrap();
    let sent = sent.split_whitespace().next().unwrap().to_owned();
    let server = format!(
        "import hashlib, socket\n\
         s = socket.socket(socket.AF_INET6 if ':' in {addr:?} else socket.AF_INET)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(({addr:?}, 5001)); s.listen(1); s.settimeout(30)\n\
         c, peer = s.accept(); c.settimeout(30)\n\
         h = hashlib.sha256(); n = 0\n\
         while True:\n\
         \x20   b = c.recv(65536)\n\
         \x20   if not b: break\n\
         \x20   h.update(b); n += len(b)\n\
         print('got', n, h.hexdigest(), peer[0], flush=True)\n",
        addr = setup.nodes[0].ipv4
    );
    let mut sink = n1.spawn("python3", &["-c", &server]).unwrap();
    n1.wait_tcp_listen(5001, T).unwrap();
    let client = format!(
        "import socket\n\
         s = socket.create_connection(({addr:?}, 5001), timeout=30)\n\
         s.sendall(open({path:?}, 'rb').read()); s.shutdown(socket.SHUT_WR)\n\
         s.recv(1)\n",
        addr = setup.nodes[0].ipv4,
        path = data.to_str().unwrap()
    );
    wg.run("python3", &["-c", &client], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", setup.logs()));
    sink.wait_for_output("got ", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", setup.logs()));
    let got = sink.stdout();
    assert!(
        got.contains(&format!("got 10485760 {sent} {}", setup.wg_v4)),
        "sent {sent}, {got}"
    );

    // `wg show` on the wireguard-go host: a recent handshake with each meshd node.
    let hs = wg
        .run("wg", &["show", &setup.wg_if, "latest-handshakes"], T)
        .unwrap();
    for key in &setup.node_keys {
        let line = hs
            .lines()
            .find(|l| l.starts_with(key.as_str()))
            .unwrap_or_else(|| panic!("no peer {key} in wg show:\n{hs}"));
        let t: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(t > 0 && unix_now().saturating_sub(t) < 120, "{line}");
    }

    // meshd sees the external peer: a handshake, traffic, its endpoint on the LAN.
    wait_until("n1 status shows the external peer", T, || {
        let s = setup.nodes[0].status();
        Ok(s["peers"].as_array().unwrap().iter().any(|p| {
            p.to_string().contains(&setup.wg_v4) && p["rx_bytes"].as_u64() > Some(10_000_000)
        }))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", setup.nodes[0].status()));
    let s = setup.nodes[0].status();
    assert_eq!(s["drops"]["spoofed_source"], 0, "{s}");
}

#[test]
fn wireguard_go_peer_cannot_forge_a_mesh_nodes_source_address() {
    if !require_root() {
        return;
    }
    let setup = Setup::new();
    let wg = setup.wg_host();
    let (n1, n2) = (&setup.nodes[0], &setup.nodes[1]);
    setup.ping_until(wg, "wireguard-go host pings n1", &n1.ipv4);

    // A UDP listener on n1's mesh address prints what arrives and from where.
    let listener = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(({addr:?}, 5002)); s.settimeout(30)\n\
         print('listening', flush=True)\n\
         while True:\n\
         \x20   d, a = s.recvfrom(2048)\n\
         \x20   print('from', a[0], d.decode(errors='replace'), flush=True)\n",
        addr = n1.ipv4
    );
    let mut sink = setup.hosts[1].spawn("python3", &["-c", &listener]).unwrap();
    sink.wait_for_output("listening", T).unwrap();

    // The wireguard-go host takes n2's address as its own. Its own AllowedIPs only route by
    // destination, so the packets go out to n1 with n2's address as the inner source.
    let forged = format!("{}/32", n2.ipv4);
    wg.run("ip", &["addr", "add", &forged, "dev", &setup.wg_if], T)
        .unwrap();
    let send = |src: &str, payload: &str| {
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(({src:?}, 0))\n\
             for _ in range(5): s.sendto({payload:?}.encode(), ({dst:?}, 5002))\n",
            dst = n1.ipv4
        );
        wg.run("python3", &["-c", &script], T).unwrap();
    };
    send(&n2.ipv4, "forged");
    let out = wg
        .output(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "1", "-I", &n2.ipv4, &n1.ipv4],
            T,
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "a ping from a forged source was answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The honest packet, sent after the forged ones, arrives: nothing forged came before it.
    wait_until("the un-forged datagram arrives", T, || {
        send(&setup.wg_v4, "honest");
        Ok(sink.stdout().contains("honest"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", setup.logs()));
    let got = sink.stdout();
    assert!(
        got.contains(&format!("from {} honest", setup.wg_v4)),
        "{got}"
    );
    assert!(
        !got.contains("forged"),
        "a forged datagram was delivered:\n{got}"
    );
    assert!(
        !got.contains(&n2.ipv4),
        "a forged datagram was delivered:\n{got}"
    );

    wait_until("n1 counts spoofed packets", T, || {
        let s = n1.status();
        Ok(s["drops"]["spoofed_source"].as_u64() > Some(0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n1.status()));
}
