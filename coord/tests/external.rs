//! `coord nodes add-external`: a device with a stock WireGuard client joins with a key generated
//! elsewhere. Its wg-quick config lists the peers the policy allows, it shows up in the mesh
//! nodes' netmaps, and bad or duplicate keys are refused with a clear message.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{next_msg, Coord};
use keys::PrivateKey;
use proto::map::{apply, MapMessage};

/// One section of a wg-quick file: its name and its `Key = Value` pairs in order.
type Section = (String, Vec<(String, String)>);

/// Parses `text` the way wg-quick does: `[Interface]` first and once, then `[Peer]`s; every
/// other non-blank, non-comment line is `Key = Value` with a key wg-quick knows.
fn parse_wg_quick(text: &str) -> Vec<Section> {
    const INTERFACE_KEYS: &[&str] = &[
        "PrivateKey",
        "Address",
        "DNS",
        "ListenPort",
        "MTU",
        "Table",
        "FwMark",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
        "SaveConfig",
    ];
    const PEER_KEYS: &[&str] = &[
        "PublicKey",
        "PresharedKey",
        "AllowedIPs",
        "Endpoint",
        "PersistentKeepalive",
    ];
    let mut sections: Vec<Section> = vec![];
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(
                name == "Interface" || name == "Peer",
                "line {}: unknown section {name:?}",
                n + 1
            );
            assert_eq!(
                name == "Interface",
                sections.is_empty(),
                "line {}: [Interface] must come first, once",
                n + 1
            );
            sections.push((name.to_owned(), vec![]));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key = Value: {raw:?}", n + 1));
        let (k, v) = (k.trim(), v.trim());
        let section = sections
            .last_mut()
            .unwrap_or_else(|| panic!("line {}: key outside a section", n + 1));
        let known = if section.0 == "Interface" {
            INTERFACE_KEYS
        } else {
            PEER_KEYS
        };
        assert!(known.contains(&k), "line {}: unknown key {k:?}", n + 1);
        assert!(!v.is_empty(), "line {}: empty value", n + 1);
        section.1.push((k.to_owned(), v.to_owned()));
    }
    sections
}

fn get<'a>(section: &'a Section, key: &str) -> Option<&'a str> {
    section
        .1
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn add_external(coord: &Coord, name: &str, key: &str) -> (bool, String, String) {
    coord.cli(&["nodes", "add-external", "--name", name, "--public-key", key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_node_gets_a_config_for_the_peers_policy_allows() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    // The phone reaches `web`, `admin` reaches the phone, `other` is unrelated to it.
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"acls": [
            {"src": ["phone"], "dst": ["web"], "ports": ["443"], "proto": "tcp"},
            {"src": ["admin"], "dst": ["phone"]},
            {"src": ["web"], "dst": ["other"]}
        ]}"#,
    )
    .unwrap();
    let (ok, _, err) = coord.cli(&["policy", "set", policy.to_str().unwrap()]);
    assert!(ok, "{err}");

    let authkey = coord.authkey(&["--reusable"]);
    let mut clients = BTreeMap::new();
    for name in ["web", "admin", "other"] {
        let client = coord.client(PrivateKey::generate());
        let reg = client.register(Some(&authkey), name).await.unwrap();
        assert_eq!(reg.node.name, name);
        clients.insert(name, (client, reg.node));
    }
    // `web` reports endpoints (its first one goes into the config); `admin` reports none.
    let web_eps: Vec<SocketAddr> = vec![
        "192.0.2.7:41641".parse().unwrap(),
        "[2001:db8::7]:41641".parse().unwrap(),
    ];
    clients["web"]
        .0
        .set_endpoints(web_eps.clone())
        .await
        .unwrap();
    // `web` watches its map stream, to see the phone arrive as a peer.
    let mut web_stream = clients["web"].0.map_stream().await.unwrap();
    let MapMessage::Full { mut netmap, .. } =
        next_msg(&mut web_stream, Duration::from_secs(5)).await
    else {
        panic!("no full map first");
    };
    assert!(netmap.peers.iter().all(|p| p.name != "phone"));

    let phone_key = PrivateKey::generate().public_key().to_base64();
    let (ok, out, err) = coord.cli(&[
        "nodes",
        "add-external",
        "--name",
        "phone",
        "--public-key",
        &phone_key,
        "--json",
    ]);
    assert!(ok, "add-external failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node = &v["node"]["node"];
    assert_eq!(node["name"], "phone");
    assert_eq!(node["public_key"], phone_key.as_str());
    assert_eq!(node["online"], false);
    let v4 = node["ipv4"].as_str().unwrap().to_owned();
    let v6 = node["ipv6"].as_str().unwrap().to_owned();
    assert!(v4.starts_with("100."), "{v4}");
    assert!(v6.starts_with("fd"), "{v6}");
    let config = v["config"].as_str().unwrap();

    let sections = parse_wg_quick(config);
    let iface = &sections[0];
    assert_eq!(
        get(iface, "Address"),
        Some(format!("{v4}/32, {v6}/128").as_str())
    );
    assert!(
        get(iface, "PrivateKey").is_some(),
        "a placeholder for the private key: {config}"
    );
    assert!(get(iface, "DNS").is_none());
    let peers: BTreeMap<&str, &Section> = sections[1..]
        .iter()
        .map(|s| (get(s, "PublicKey").unwrap(), s))
        .collect();
    assert_eq!(peers.len(), sections.len() - 1, "one [Peer] per key");
    let want: BTreeMap<String, &proto::Node> = ["web", "admin"]
        .iter()
        .map(|n| (clients[n].1.public_key.to_base64(), &clients[n].1))
        .collect();
    assert_eq!(
        peers.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        want.keys().cloned().collect::<Vec<_>>(),
        "peers are exactly web and admin:\n{config}"
    );
    for (key, node) in &want {
        let p = peers[key.as_str()];
        assert_eq!(
            get(p, "AllowedIPs"),
            Some(format!("{}/32, {}/128", node.ipv4, node.ipv6).as_str())
        );
        assert_eq!(get(p, "PersistentKeepalive"), Some("25"));
        if node.name == "web" {
            assert_eq!(get(p, "Endpoint"), Some(web_eps[0].to_string().as_str()));
        } else {
            assert_eq!(get(p, "Endpoint"), None, "no endpoint reported:\n{config}");
        }
    }

    // Without --json the config itself is printed, ready for wg-quick.
    let other_key = PrivateKey::generate().public_key().to_base64();
    let (ok, plain, err) = add_external(&coord, "router", &other_key);
    assert!(ok, "{err}");
    assert!(plain.starts_with("# meshfunnel node router"), "{plain}");
    assert!(
        parse_wg_quick(&plain).len() == 1,
        "router reaches nobody:\n{plain}"
    );

    // The phone appears in web's netmap like any peer: no endpoints, offline.
    let phone = loop {
        match next_msg(&mut web_stream, Duration::from_secs(3)).await {
            MapMessage::Delta { delta, .. } => {
                apply(&mut netmap, &delta).unwrap();
                if let Some(p) = netmap.peers.iter().find(|p| p.name == "phone") {
                    break p.clone();
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(phone.public_key.to_base64(), phone_key);
    assert!(phone.endpoints.is_empty());
    assert!(!phone.online);
    assert_eq!(phone.ipv4.to_string(), v4);

    // It is listed with the other nodes.
    let nodes = coord.nodes();
    assert!(nodes.iter().any(|n| n["node"]["name"] == "phone"));
}

#[test]
fn bad_and_duplicate_keys_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coord = Coord::start(dir.path());
    let key = PrivateKey::generate().public_key().to_base64();
    let (ok, _, err) = add_external(&coord, "phone", &key);
    assert!(ok, "{err}");

    // The same key again, under another name.
    let (ok, out, err) = add_external(&coord, "tablet", &key);
    assert!(!ok, "a duplicate key was accepted: {out}");
    assert!(err.contains("already registered"), "{err}");
    assert!(err.contains("phone"), "names the node holding it: {err}");

    // Not base64, wrong length, all zeros.
    for (bad, says) in [
        ("not a key!", "not valid base64"),
        ("AAAA", "must be 32 bytes"),
        (
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "all-zero key",
        ),
    ] {
        let (ok, out, err) = add_external(&coord, "tablet", bad);
        assert!(!ok, "{bad:?} was accepted: {out}");
        assert!(err.contains("invalid public key"), "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
    }

    // A taken or invalid name.
    let other = PrivateKey::generate().public_key().to_base64();
    let (ok, _, err) = add_external(&coord, "phone", &other);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, _, err) = add_external(&coord, "My Phone", &other);
    assert!(!ok);
    assert!(err.contains("invalid node name"), "{err}");

    // Nothing refused was stored.
    let nodes = coord.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
}
