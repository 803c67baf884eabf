//! The funnel ingress handshake, sans-IO. An edge opens a TCP connection to a node's mesh address
//! on [`proto::map::FUNNEL_INGRESS_PORT`] and names the funnel in one line; the node answers in
//! one line, and on `OK` the connection carries the client's bytes to the local service:
//!
//! ```text
//! edge → node   MFUNNEL/1 hello\n
//! node → edge   OK\n                      (or: ERR the local service refused the connection\n)
//! ```

/// Longest line either side sends, newline included.
pub const MAX_LINE: usize = 256;
const REQUEST_PREFIX: &str = "MFUNNEL/1 ";

/// What a complete or partial line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Not a full line yet: read more (never more than [`MAX_LINE`] in all).
    Incomplete,
    /// The value and how many bytes it took (bytes after it belong to the stream).
    Done(T, usize),
    /// Not this protocol, too long, or not a valid name.
    Invalid(&'static str),
}

pub fn request(name: &str) -> Vec<u8> {
    format!("{REQUEST_PREFIX}{name}\n").into_bytes()
}

/// Parses an edge's request line: the funnel name, lowercased.
pub fn parse_request(buf: &[u8]) -> Parsed<String> {
    let Some((line, used)) = line(buf) else {
        return if buf.len() >= MAX_LINE {
            Parsed::Invalid("request line too long")
        } else {
            Parsed::Incomplete
        };
    };
    let Some(name) = line.strip_prefix(REQUEST_PREFIX.as_bytes()) else {
        return Parsed::Invalid("not a funnel request");
    };
    match std::str::from_utf8(name) {
        Ok(n) if valid_label(n) => Parsed::Done(n.to_ascii_lowercase(), used),
        _ => Parsed::Invalid("not a valid funnel name"),
    }
}

/// The node's answer: `Ok(())` to go ahead, or why not.
pub fn response(result: &Result<(), String>) -> Vec<u8> {
    match result {
        Ok(()) => b"OK\n".to_vec(),
        Err(reason) => {
            // One line, bounded, printable.
            let clean: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_LINE - 6)
                .collect();
            format!("ERR {clean}\n").into_bytes()
        }
    }
}

/// Parses the node's answer line.
pub fn parse_response(buf: &[u8]) -> Parsed<Result<(), String>> {
    let Some((line, used)) = line(buf) else {
        return if buf.len() >= MAX_LINE {
            Parsed::Invalid("answer line too long")
        } else {
            Parsed::Incomplete
        };
    };
    if line == b"OK" {
        return Parsed::Done(Ok(()), used);
    }
    match line.strip_prefix(b"ERR ") {
        Some(reason) => Parsed::Done(Err(String::from_utf8_lossy(reason).into_owned()), used),
        None => Parsed::Invalid("not a funnel answer"),
    }
}

/// A DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-` (any case).
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The first line of `buf` (without `\n`) and the bytes it spans, if complete and short enough.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.iter().take(MAX_LINE).position(|&b| b == b'\n')?;
    Some((&buf[..end], end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_early_bytes() {
        let mut buf = request("Hello-1");
        let n = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse_request(&buf), Parsed::Done("hello-1".into(), n));
        for cut in 0..n {
            assert_eq!(parse_request(&buf[..cut]), Parsed::Incomplete, "{cut}");
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"MFUNNEL/1 \n",
            b"MFUNNEL/1 -x\n",
            b"MFUNNEL/1 a.b\n",
            b"MFUNNEL/1 a b\n",
            b"MFUNNEL/2 a\n",
            b"MFUNNEL/1 \xff\n",
        ] {
            assert!(matches!(parse_request(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        let long = vec![b'a'; MAX_LINE];
        assert!(matches!(parse_request(&long), Parsed::Invalid(_)));
        let name = "a".repeat(64);
        assert!(matches!(parse_request(&request(&name)), Parsed::Invalid(_)));
    }

    #[test]
    fn responses_round_trip_as_one_bounded_line() {
        assert_eq!(parse_response(&response(&Ok(()))), Parsed::Done(Ok(()), 3));
        let r = response(&Err("no\nfunnel".into()));
        assert_eq!(
            parse_response(&r),
            Parsed::Done(Err("no funnel".into()), r.len())
        );
        let long = response(&Err("x".repeat(10_000)));
        assert!(long.len() <= MAX_LINE);
        assert!(matches!(parse_response(&long), Parsed::Done(Err(_), _)));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\n"),
            Parsed::Invalid(_)
        ));
        assert_eq!(parse_response(b"OK"), Parsed::Incomplete);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let mut buf = request("demo");
            buf.extend_from_slice(b"OK\nERR x\n");
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % buf.len();
                buf[i] = (x >> 8) as u8;
            }
            let cut = (x >> 16) as usize % (buf.len() + 1);
            let _ = parse_request(&buf[..cut]);
            let _ = parse_response(&buf[..cut]);
        }
    }
}
