#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const SNI: &str = "hello.funnel.example";

fn req(method: &str, uri: &str, host: Option<&str>) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(()).unwrap()
}

#[test]
fn unusual_targets_are_refused() {
    assert!(check_target(&req("GET", "/a?b", None)).is_ok());
    assert!(check_target(&req("GET", "https://hello.funnel.example/x", None)).is_ok());
    for (m, u) in [
        ("OPTIONS", "*"),
        ("CONNECT", "hello.funnel.example:443"),
        ("CONNECT", "/"),
        ("GET", "ftp://hello.funnel.example/"),
    ] {
        let r = check_target(&req(m, u, None)).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m} {u}");
    }
}

#[test]
fn host_must_match_the_tls_name() {
    let ok = [
        req("GET", "/", Some("hello.funnel.example")),
        req("GET", "/", Some("HELLO.funnel.example.:443")),
        req("GET", "https://hello.funnel.example/", None),
        req(
            "GET",
            "https://hello.funnel.example/",
            Some("hello.funnel.example"),
        ),
    ];
    for r in ok {
        assert!(check_host(&r, SNI).is_ok(), "{r:?}");
    }
    assert_eq!(
        check_host(&req("GET", "/", Some("Hello.funnel.example:8443")), SNI).unwrap(),
        "Hello.funnel.example:8443"
    );
    let misdirected = [
        req("GET", "/", Some("other.funnel.example")),
        req("GET", "https://other.funnel.example/", None),
        req("GET", "https://other.funnel.example/", Some(SNI)),
        req(
            "GET",
            "https://hello.funnel.example/",
            Some("other.funnel.example"),
        ),
        req("GET", "/", Some("[::1]")),
    ];
    for r in misdirected {
        let e = check_host(&r, SNI).unwrap_err();
        assert_eq!(e.status, StatusCode::MISDIRECTED_REQUEST, "{r:?}");
    }
    assert_eq!(
        check_host(&req("GET", "/", None), SNI).unwrap_err().status,
        StatusCode::BAD_REQUEST
    );
    let mut two = req("GET", "/", Some(SNI));
    two.headers_mut()
        .append("host", HeaderValue::from_static(SNI));
    assert_eq!(
        check_host(&two, SNI).unwrap_err().status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        check_host(&req("GET", "https://u@hello.funnel.example/", None), SNI)
            .unwrap_err()
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn request_headers_are_rewritten_for_the_node() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "Hello.funnel.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("X-Forwarded-Host", "evil"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-meshfunnel-funnel", "other"),
        ("x-meshfunnel-user", "admin"),
        ("connection", "keep-alive, X-Secret"),
        ("x-secret", "hop"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("expect", "100-continue"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("accept", "text/html"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    let fwd = Forwarding {
        forwarded_for: &forwarded_for(IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped())),
        host: "Hello.funnel.example",
        funnel: "hello",
        upgrade: false,
    };
    rewrite_request_headers(&mut h, &fwd);
    let get = |k: &str| {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("x-forwarded-for"), ["203.0.113.7"]);
    assert_eq!(get("x-forwarded-host"), ["Hello.funnel.example"]);
    assert_eq!(get("x-forwarded-proto"), ["https"]);
    assert_eq!(get("x-meshfunnel-funnel"), ["hello"]);
    assert_eq!(get("host"), ["Hello.funnel.example"]);
    assert_eq!(get("cookie"), ["a=1; b=2"]);
    assert_eq!(get("accept"), ["text/html"]);
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-meshfunnel-user",
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "expect",
        "upgrade",
    ] {
        assert!(get(gone).is_empty(), "{gone}");
    }
}

#[test]
fn upgrades_keep_their_headers() {
    let r = Request::builder()
        .uri("/ws")
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .body(())
        .unwrap();
    assert!(is_upgrade(&r));
    let mut h = r.headers().clone();
    let fwd = Forwarding {
        forwarded_for: &forwarded_for(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        host: SNI,
        funnel: "hello",
        upgrade: true,
    };
    rewrite_request_headers(&mut h, &fwd);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");

    let mut resp = HeaderMap::new();
    resp.insert("upgrade", HeaderValue::from_static("websocket"));
    resp.insert("connection", HeaderValue::from_static("Upgrade"));
    resp.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    let mut plain = resp.clone();
    rewrite_response_headers(&mut resp, true);
    assert_eq!(resp["upgrade"], "websocket");
    assert!(resp.get("transfer-encoding").is_none());
    rewrite_response_headers(&mut plain, false);
    assert!(plain.is_empty());
}

#[test]
fn only_mesh_like_addresses_are_dialable() {
    assert!(dialable(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 5))));
    assert!(dialable(IpAddr::V6(Ipv6Addr::new(
        0xfd7a, 1, 2, 3, 0, 0, 0, 5
    ))));
    for bad in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    ] {
        assert!(!dialable(bad), "{bad}");
    }
}

#[test]
fn host_comes_from_the_checked_name_when_the_request_has_none_or_another() {
    // HTTP/2 names the host in `:authority`, not in a Host header.
    for sent in [None, Some("other.funnel.example")] {
        let mut h = HeaderMap::new();
        if let Some(v) = sent {
            h.insert("host", HeaderValue::from_static(v));
        }
        let fwd = Forwarding {
            forwarded_for: &forwarded_for(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            host: SNI,
            funnel: "hello",
            upgrade: false,
        };
        rewrite_request_headers(&mut h, &fwd);
        assert_eq!(h["host"], SNI, "{sent:?}");
        assert_eq!(h["x-forwarded-host"], SNI, "{sent:?}");
        assert_eq!(h["x-forwarded-for"], "::1", "{sent:?}");
        assert_eq!(h.get_all("host").iter().count(), 1, "{sent:?}");
    }
}

#[test]
fn every_header_the_connection_header_names_goes_however_it_is_listed() {
    let names = |h: &HeaderMap| {
        let mut v: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v
    };
    for (lines, kept) in [
        // Only options that go anyway: nothing else is looked up, nothing else goes.
        (
            &["keep-alive"][..],
            &["close", "content-length", "x-a", "x-b"][..],
        ),
        (
            &["Keep-Alive, upgrade"],
            &["close", "content-length", "x-a", "x-b"],
        ),
        // Names, in any case, spacing, and field line; `close` names a header too.
        (&["keep-alive, X-A"], &["close", "content-length", "x-b"]),
        (
            &["keep-alive", " x-b ,,"],
            &["close", "content-length", "x-a"],
        ),
        (&["Close"], &["content-length", "x-a", "x-b"]),
        (&["te, X-A, x-b"], &["close", "content-length"]),
    ] {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("connection", HeaderValue::from_static(l));
        }
        for k in ["x-a", "x-b", "close", "content-length", "keep-alive", "te"] {
            h.append(k, HeaderValue::from_static("1"));
        }
        rewrite_response_headers(&mut h, false);
        assert_eq!(names(&h), kept, "Connection: {lines:?}");
    }
}
