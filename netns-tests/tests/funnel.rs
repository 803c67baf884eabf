//! The funnel across real hosts (DESIGN.md's standard topology): `coord` and `edge` on the public
//! segment, `node-a` behind its NAT router, and `client` standing for the internet. node-a
//! publishes a page on 127.0.0.1 with `meshd funnel`; from `client`, curl with the edge's CA
//! fetches it by name through the edge's public address. The edge (TUN mode) reaches nothing else
//! of node-a: every other port of its mesh addresses stays closed to it.

#![allow(clippy::unwrap_used)]

mod mesh;
mod meshx;

use std::time::Duration;

use mesh::{spawn_ready, Coord, Node};
use meshx::{greeter, nginx, refuser, tcp_probe};
use netns_tests::plan::{CLIENT_V4, EDGE_V4};
use netns_tests::{require_root, wait_until, StandardTopology};

const DOMAIN: &str = "funnel.example.com";

#[test]
fn a_page_behind_nat_reaches_the_internet_through_the_edge_and_nothing_else_does() {
    if !require_root() {
        return;
    }
    let st = StandardTopology::new().unwrap();
    let coord = Coord::start_with(
        &st.coord,
        8443,
        &["--funnel-domain", DOMAIN, "--funnel-port", "443"],
    );
    // No ACLs: members reach nobody; node-a may funnel ports 3000 to 3002; tag:edge nodes are
    // edges.
    let policy = coord.dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"acls": [], "funnel": [{"nodes": ["node-a"], "ports": [3000, 3001, 3002]}],
            "edges": [{"tag": "tag:edge", "domains": ["funnel.example.com"]}]}"#,
    )
    .unwrap();
    coord.cli(&["policy", "set", policy.to_str().unwrap()]);
    let edge_key = coord.authkey(&["--tag", "edge"]);
    let node_key = coord.authkey(&[]);

    let edge_dir = tempfile::tempdir().unwrap();
    let edge_state = edge_dir.path().join("edge");
    let https = format!("{EDGE_V4}:443");
    let public = EDGE_V4.to_string();
    let (edge, _) = spawn_ready(
        &st.edge,
        "funnel-edge",
        &[
            "run",
            "--state-dir",
            edge_state.to_str().unwrap(),
            "--domain",
            DOMAIN,
            "--https-listen",
            &https,
            "--public-address",
            &public,
            "--coord",
            &coord.url,
            "--coord-fingerprint",
            &coord.fingerprint,
            "--authkey",
            &edge_key,
            // A kernel device, so that the probes below can try the node's other ports.
            "--tun",
        ],
        "funnel-edge: serving",
        Duration::from_secs(30),
    );

    let node = Node::up(&st.node_a, &coord, &node_key, "node-a");
    let (_page, _) = spawn_ready(
        &st.node_a,
        "meshd",
        &["sample-page", "--listen", "127.0.0.1:3000"],
        "sample page on ",
        Duration::from_secs(10),
    );
    // Something else on node-a, listening on every address: the edge must not reach it.
    let _other = greeter(&st.node_a, "0.0.0.0", 8080);
    let (ok, out) = node.cli(&["funnel", "3000", "--bg"]);
    assert!(ok, "{out}");
    assert!(out.contains("https://node-a.funnel.example.com/"), "{out}");

    // From the internet: by name, through the edge's public address, trusting only its CA.
    let ca = edge_state.join("ca.pem");
    let resolve = format!("node-a.{DOMAIN}:443:{EDGE_V4}");
    let url = format!("https://node-a.{DOMAIN}/");
    // curl in `client`, with the edge's CA, a funnel name resolved to the edge (`resolve`).
    let curl_at = |resolve: &str, args: &[&str]| -> netns_tests::Result<String> {
        let mut all = vec!["-sS", "--max-time", "10", "--cacert", ca.to_str().unwrap()];
        all.extend_from_slice(&["--resolve", resolve]);
        all.extend_from_slice(args);
        let out = st.client.output("curl", &all, Duration::from_secs(15))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let curl = |extra: &[&str]| -> netns_tests::Result<String> {
        curl_at(&resolve, &[extra, &[url.as_str()]].concat())
    };
    // The node is behind NAT: the edge's handshakes reach it only once the node has sent to the
    // edge, which it does as soon as the edge is its peer (not at its first keepalive, 25 s on).
    let mut page = String::new();
    wait_until(
        "the page through the funnel",
        Duration::from_secs(10),
        || {
            page = curl(&[])?;
            Ok(page.contains("Hello from meshfunnel"))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- edge ---\n{}\n--- node ---\n{}",
            edge.stderr(),
            node.process.stderr()
        )
    });
    // The page saw the real client and the funnel's marks.
    assert!(page.contains(&CLIENT_V4.to_string()), "{page}");
    assert!(page.contains("node-a.funnel.example.com"), "{page}");

    // Uploads answered without being read: by the page (200), and by a service that refuses
    // every upload with 413 (a second funnel of node-a). Both servers close with the body unread
    // (a reset). The client gets the answer, whole, every time, and its upload ends there: over
    // HTTP/1.1 for both, over HTTP/2 for the 413 (curl before 8 waits out its time limit after a
    // 2xx that ends an HTTP/2 upload early, whatever the server).
    let _refuser = refuser(&st.node_a, "127.0.0.1", 3001);
    let (ok, out) = node.cli(&["funnel", "3001", "--bg", "--name", "refuse"]);
    assert!(ok, "{out}");
    let upload_dir = tempfile::tempdir().unwrap();
    let upload = upload_dir.path().join("upload.bin");
    std::fs::write(&upload, vec![7u8; 20 << 20]).unwrap();
    let data = format!("@{}", upload.display());
    let cases = [
        ("--http1.1", "node-a", "200", "Hello from meshfunnel"),
        ("--http1.1", "refuse", "413", "refused here"),
        ("--http2", "refuse", "413", "refused here"),
    ];
    for (flag, name, status, body) in cases {
        let resolve = format!("{name}.{DOMAIN}:443:{EDGE_V4}");
        let url = format!("https://{name}.{DOMAIN}/");
        for round in 0..4 {
            // No `Expect: 100-continue`: the body is on its way before the answer comes.
            let args = [
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                flag,
                "-H",
                "Expect:",
                "--data-binary",
                &data,
                "-w",
                "\n%{http_code}",
                &url,
            ];
            let out = st
                .client
                .output("curl", &args, Duration::from_secs(15))
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let what = format!(
                "{flag} {name} round {round}: {:?} {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{what}");
            assert!(stdout.ends_with(&format!("\n{status}")), "{what}");
            assert!(stdout.contains(body), "{what}");
        }
    }

    // A real nginx behind a third funnel: what it answers reaches the client as it is — a 1 MiB
    // file, a text file nginx gzips (chunked on the mesh leg), its own 404, HEAD, a conditional
    // GET (304) — over HTTP/1.1 and HTTP/2, several requests on one client connection.
    let web = tempfile::tempdir().unwrap();
    let root = web.path().join("www");
    std::fs::create_dir(&root).unwrap();
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let text = "meshfunnel through nginx\n".repeat(4000);
    std::fs::write(root.join("page.txt"), &text).unwrap();
    let _nginx = nginx(&st.node_a, web.path(), &root, 3002);
    let (ok, out) = node.cli(&["funnel", "3002", "--bg", "--name", "static"]);
    assert!(ok, "{out}");
    let site = format!("https://static.{DOMAIN}");
    let resolve = format!("static.{DOMAIN}:443:{EDGE_V4}");
    let static_curl = |args: &[&str]| curl_at(&resolve, args);
    let big_url = format!("{site}/big.bin");
    let mut head = String::new();
    wait_until("nginx through the funnel", Duration::from_secs(30), || {
        head = static_curl(&["-I", &big_url])?;
        Ok(head.starts_with("HTTP/2 200"))
    })
    .unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-length: 1048576"), "{head}");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no etag: {head}"))
        .trim()
        .to_owned();
    let got = tempfile::tempdir().unwrap();
    let (big_out, page_out, missing_out) = (
        got.path().join("big"),
        got.path().join("page"),
        got.path().join("missing"),
    );
    let (page_url, missing_url) = (format!("{site}/page.txt"), format!("{site}/missing"));
    for flag in ["--http1.1", "--http2"] {
        let out = static_curl(&[
            flag,
            "--compressed",
            "-w",
            "%{http_code} %{num_connects} %header{content-encoding}\n",
            "-o",
            big_out.to_str().unwrap(),
            &big_url,
            "-o",
            page_out.to_str().unwrap(),
            &page_url,
            "-o",
            missing_out.to_str().unwrap(),
            &missing_url,
        ])
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            ["200 1 ", "200 0 gzip", "404 0 gzip"],
            "{flag}: {out}"
        );
        assert!(
            std::fs::read(&big_out).unwrap() == big,
            "{flag}: big.bin changed"
        );
        assert_eq!(std::fs::read_to_string(&page_out).unwrap(), text, "{flag}");
        let missing = std::fs::read_to_string(&missing_out).unwrap();
        assert!(
            missing.contains("nginx"),
            "{flag}: not nginx's 404: {missing}"
        );
        let if_none = format!("If-None-Match: {etag}");
        let out = static_curl(&[
            flag,
            "-H",
            &if_none,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &big_url,
        ])
        .unwrap();
        assert_eq!(out, "304", "{flag}");
    }

    // A real browser in `client`: headless Chromium trusting the edge CA renders the page (its
    // screenshot, read back by OCR, shows the heading); without the CA it does not.
    let shot_dir = tempfile::tempdir().unwrap();
    let (text, log) = browser_screenshot_text(&st.client, shot_dir.path(), Some(&ca), &url);
    let text = text.unwrap_or_else(|| panic!("no screenshot: {log}"));
    assert!(
        text.contains("Hello from meshfunnel"),
        "OCR of the screenshot: {text}"
    );
    let untrusted = tempfile::tempdir().unwrap();
    let (text, log) = browser_screenshot_text(&st.client, untrusted.path(), None, &url);
    assert!(log.contains("ERR_CERT_AUTHORITY_INVALID"), "{log}");
    assert!(!text.unwrap_or_default().contains("Hello from meshfunnel"));

    // From the edge itself: every other port of node-a's mesh addresses is closed to it.
    for addr in [&node.ipv4, &node.ipv6] {
        for port in [22, 3000, 8080] {
            let got = tcp_probe(&st.edge, addr, port, 1000);
            assert!(!got.starts_with("ok"), "edge → {addr}:{port}: {got}");
        }
    }
    // While node-a itself serves 8080 (the probe above was refused by policy, not by absence).
    let got = tcp_probe(&st.node_a, "127.0.0.1", 8080, 1500);
    assert!(got.starts_with("ok"), "{got}");
    // The ingress that served every request above is meshd's stack beside the TUN device: the
    // kernel has no socket on its port.
    let sockets = st
        .node_a
        .run(
            "ss",
            &["-Htan", "sport = :41642 or dport = :41642"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(sockets.trim().is_empty(), "{sockets}");

    // Off: the edge answers 404 for the name.
    let (ok, out) = node.cli(&["funnel", "off"]);
    assert!(ok, "{out}");
    let mut seen = Vec::new();
    wait_until("404 after funnel off", Duration::from_secs(10), || {
        let t = std::time::Instant::now();
        let code = curl(&["-o", "/dev/null", "-w", "%{http_code}"])?;
        seen.push(format!("{code} in {:?}", t.elapsed()));
        Ok(code == "404")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {seen:?}\n--- edge ---\n{}\n--- node ---\n{}",
            edge.stderr(),
            node.process.stderr()
        )
    });
}

/// Loads `url` in headless Chromium inside `host` (a fresh profile and NSS database in `dir`,
/// trusting `ca` if given; the funnel name mapped to the edge's public address): the text
/// tesseract reads from its screenshot (none when the page did not load), and Chromium's log.
fn browser_screenshot_text(
    host: &netns_tests::Host,
    dir: &std::path::Path,
    ca: Option<&std::path::Path>,
    url: &str,
) -> (Option<String>, String) {
    let t = Duration::from_secs(30);
    let nssdb = dir.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    host.run("certutil", &["-d", &db, "-N", "--empty-password"], t)
        .unwrap();
    if let Some(ca) = ca {
        let ca = ca.to_str().unwrap();
        host.run(
            "certutil",
            &[
                "-d",
                &db,
                "-A",
                "-t",
                "C,,",
                "-n",
                "meshfunnel-edge",
                "-i",
                ca,
            ],
            t,
        )
        .unwrap();
    }
    let home = format!("HOME={}", dir.display());
    let profile = format!("--user-data-dir={}", dir.join("profile").display());
    let shot = dir.join("shot.png");
    let screenshot = format!("--screenshot={}", shot.display());
    let rules = format!("--host-resolver-rules=MAP node-a.{DOMAIN} {EDGE_V4}");
    // The flags keep Chromium from reaching for the network on its own (there is none here).
    let out = host
        .output(
            "env",
            &[
                &home,
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1000,700",
                &profile,
                &rules,
                &screenshot,
                url,
            ],
            Duration::from_secs(90),
        )
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !shot.exists() {
        return (None, log);
    }
    let out = host
        .output("tesseract", &[shot.to_str().unwrap(), "stdout"], t)
        .unwrap();
    (Some(String::from_utf8_lossy(&out.stdout).into_owned()), log)
}
