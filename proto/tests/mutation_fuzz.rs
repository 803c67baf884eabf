//! Mutation fuzzing of every parser that takes untrusted bytes: valid fixtures are flipped,
//! truncated, spliced and grown, and each result is fed to the parser, which must answer
//! `Ok` or `Err` and never panic. Deterministic (a fixed xorshift seed) and bounded, so it runs
//! in the normal test suite; the nightly-only cargo-fuzz is not available on this toolchain.

#![allow(clippy::unwrap_used)] // test code

use proto::admin::AdminRequest;
use proto::api::{EndpointsRequest, FunnelList, FunnelRequest, FunnelResponse, RegisterRequest};
use proto::map::{apply, MapMessage, Netmap};
use proto::policy::Policy;
use testkit::fuzz::{mutate, Rng};

const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    b"\xff",
    b"\"*\"",
    b"\"tag:\"",
    b"0-65535",
    b"\"24h\"",
    b"true",
];

fn fuzz(seeds: &[&str], iterations: usize, parse: impl Fn(&[u8])) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for seed in seeds {
        parse(seed.as_bytes());
        for _ in 0..iterations {
            parse(&mutate(&mut rng, seed.as_bytes(), INTERESTING));
        }
    }
}

const FULL: &str = r#"{"type":"full","seq":1,"netmap":{"self":{"id":1,"name":"a","fqdn":"a.mesh.internal","public_key":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","ipv4":"100.64.0.1","ipv6":"fd00::6440:1","key_expiry":1900000000},"peers":[{"id":2,"name":"b","fqdn":"b.mesh.internal","public_key":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=","ipv4":"100.64.0.2","ipv6":"fd00::6440:2","tags":["tag:x"],"endpoints":["192.0.2.1:41641"],"online":true,"key_expiry":1900000000}],"dns":{"domain":"mesh.internal","magic_dns":true},"packet_filter":[{"src":["*"],"proto":"any","ports":["*"]}]}}"#;
const DELTA: &str = r#"{"type":"delta","seq":2,"delta":{"peers_patched":[{"id":2,"endpoints":["[2001:db8::1]:1"],"online":false}],"peers_removed":[3],"packet_filter":[{"src":["tag:a"],"proto":"tcp","ports":["22","80-90"]}]}}"#;

#[test]
fn map_lines_never_panic_and_bad_deltas_never_corrupt() {
    let MapMessage::Full { netmap, .. } = serde_json::from_str(FULL).unwrap() else {
        panic!("fixture")
    };
    let routes = r#"{"type":"delta","seq":3,"delta":{"funnel_routes":[{"name":"demo","node":2,"port":3000,"expires":1900000000}]}}"#;
    fuzz(
        &[FULL, DELTA, routes, r#"{"type":"keepalive"}"#],
        3000,
        |b| {
            if let Ok(MapMessage::Delta { delta, .. }) = serde_json::from_slice::<MapMessage>(b) {
                let mut m: Netmap = netmap.clone();
                let _ = apply(&mut m, &delta);
            }
        },
    );
}

#[test]
fn request_bodies_never_panic() {
    fuzz(
        &[
            r#"{"version":1,"auth_key":"mfk_0011223344556677_001122334455667700112233445566770011223344556677","hostname":"laptop"}"#,
            r#"{"version":1,"endpoints":["192.0.2.1:41641","[2001:db8::1]:41641"]}"#,
            r#"{"name":"demo","port":3000,"ttl_secs":3600}"#,
            r#"{"funnels":[{"route":{"name":"demo","node":7,"port":3000,"expires":1800003600},"url":"https://demo.funnel.localhost/"}]}"#,
        ],
        3000,
        |b| {
            let _ = serde_json::from_slice::<RegisterRequest>(b);
            let _ = serde_json::from_slice::<EndpointsRequest>(b);
            let _ = serde_json::from_slice::<FunnelRequest>(b);
            let _ = serde_json::from_slice::<FunnelResponse>(b);
            let _ = serde_json::from_slice::<FunnelList>(b);
        },
    );
}

#[test]
fn policies_never_panic() {
    fuzz(
        &[include_str!("../../docs/policy.example.json")],
        3000,
        |b| {
            if let Ok(text) = std::str::from_utf8(b) {
                if let Ok(p) = Policy::parse(text) {
                    // A policy that parsed round-trips.
                    assert_eq!(Policy::parse(&p.to_json_pretty()).unwrap(), p);
                }
            }
        },
    );
}

#[test]
fn admin_requests_never_panic() {
    fuzz(
        &[
            r#"{"cmd":"authkey_create","reusable":true,"ephemeral":false,"expires_in_secs":3600,"tags":["tag:edge"]}"#,
            r#"{"cmd":"policy_set","policy":"{\"acls\":[]}"}"#,
        ],
        2000,
        |b| {
            let _ = serde_json::from_slice::<AdminRequest>(b);
        },
    );
}

#[test]
fn keys_and_tokens_never_panic() {
    fuzz(
        &[
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            "mfk_0011223344556677_001122334455667700112233445566770011223344556677",
        ],
        5000,
        |b| {
            let s = String::from_utf8_lossy(b);
            let _ = s.parse::<keys::PublicKey>();
            let _ = s.parse::<keys::PrivateKey>();
            let _ = s.parse::<keys::PresharedKey>();
            let _ = s.parse::<keys::authkey::AuthKeyToken>();
        },
    );
}
