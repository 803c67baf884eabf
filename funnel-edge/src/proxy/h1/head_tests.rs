#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::head::{take_response, write_request, Framing, HeadError, MAX_FIELDS};

const MAX: usize = 64 * 1024;

fn request(method: Method, fields: &[(&'static str, &'static str)]) -> String {
    let mut headers = HeaderMap::new();
    for (k, v) in fields {
        headers.append(*k, HeaderValue::from_static(v));
    }
    let mut out = BytesMut::new();
    write_request(&method, "/a/b?c=d", &headers, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn a_request_head_is_the_method_target_and_fields() {
    assert_eq!(
        request(
            Method::GET,
            &[("host", "demo.funnel.example"), ("x-a", "1"), ("x-a", "2")]
        ),
        "GET /a/b?c=d HTTP/1.1\r\nhost: demo.funnel.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    );
}

#[test]
fn a_bodiless_request_says_length_0_where_a_length_is_expected_and_never_chunked() {
    assert_eq!(
        request(Method::POST, &[("host", "h")]),
        "POST /a/b?c=d HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
    );
    // A length the client named (0: the body is empty) is said once; no transfer coding.
    assert_eq!(
        request(
            Method::GET,
            &[
                ("content-length", "0"),
                ("transfer-encoding", "chunked"),
                ("host", "h")
            ]
        ),
        "GET /a/b?c=d HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
    );
    assert!(!request(Method::DELETE, &[("host", "h")]).contains("content-length"));
}

fn take(raw: &str, to_head: bool) -> (Result<Option<super::head::Head>, HeadError>, BytesMut) {
    let mut buf = BytesMut::from(raw.as_bytes());
    let r = take_response(&mut buf, to_head, MAX);
    (r, buf)
}

#[test]
fn a_head_is_taken_off_the_front_and_the_body_stays() {
    let (head, rest) = take(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
        false,
    );
    let head = head.unwrap().unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.framing, Framing::Length(5));
    assert!(head.keep_alive);
    let xa: Vec<_> = head.headers.get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);
    assert_eq!(&rest[..], b"hello");
}

#[test]
fn an_incomplete_head_is_left_whole() {
    for raw in [
        "",
        "HTTP/1.1 200 OK\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    ] {
        let (head, rest) = take(raw, false);
        assert!(head.unwrap().is_none(), "{raw:?}");
        assert_eq!(&rest[..], raw.as_bytes());
    }
}

fn framing(raw: &str, to_head: bool) -> (Framing, bool) {
    let head = take(raw, to_head).0.unwrap().unwrap();
    (head.framing, head.keep_alive)
}

#[test]
fn the_body_is_framed_as_rfc_9112_says() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            (Framing::Chunked, true),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            false,
            (Framing::Chunked, true),
        ),
        // Both: the coding wins, and the connection is not trusted afterwards.
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            (Framing::Chunked, false),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            (Framing::UntilClose, false),
        ),
        (
            "HTTP/1.1 200 OK\r\n\r\n",
            false,
            (Framing::UntilClose, false),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n",
            false,
            (Framing::Length(7), true),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            true,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
            false,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            false,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            false,
            (Framing::Length(0), false),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, Close\r\n\r\n",
            false,
            (Framing::Length(0), false),
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
            false,
            (Framing::Length(2), false),
        ),
    ];
    for (raw, to_head, want) in cases {
        assert_eq!(framing(raw, to_head), want, "{raw:?}");
    }
}

#[test]
fn an_ambiguous_length_is_refused() {
    for cl in [
        "5, 6",
        "+5",
        "-1",
        "5 5",
        "",
        "0x10",
        "99999999999999999999999",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(
            take(&raw, false).0.unwrap_err(),
            HeadError::Length,
            "{cl:?}"
        );
    }
    let two = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(take(two, false).0.unwrap_err(), HeadError::Length);
}

#[test]
fn garbage_too_many_fields_and_oversized_heads_are_errors() {
    for raw in [
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad field\r\n\r\n",
    ] {
        assert!(
            matches!(take(raw, false).0, Err(HeadError::Parse(_))),
            "{raw:?}"
        );
    }
    // A status code the http crate refuses (httparse takes any three digits).
    assert_eq!(
        take("HTTP/1.1 099 X\r\n\r\n", false).0.unwrap_err(),
        HeadError::Field
    );
    let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
    let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(
        take(&raw, false).0.unwrap_err(),
        HeadError::Parse(httparse::Error::TooManyHeaders)
    );
    let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "v".repeat(100));
    let mut buf = BytesMut::from(big.as_bytes());
    assert_eq!(
        take_response(&mut buf, false, 64).unwrap_err(),
        HeadError::TooLarge(64)
    );
    // Incomplete and already past the limit: no point in waiting for the rest.
    let mut buf = BytesMut::from(&big.as_bytes()[..80]);
    assert_eq!(
        take_response(&mut buf, false, 64).unwrap_err(),
        HeadError::TooLarge(64)
    );
}
