//! Request heads written out and response heads read, for HTTP/1.1 on the mesh leg. No I/O:
//! bytes in, bytes out (RFC 9112).
//!
//! Only what the edge sends is written: requests without a body (the body's length is 0 when a
//! method needs one said). What a node answers is checked as a whole before anything of it is
//! used: a head that does not parse, has more than [`MAX_FIELDS`] fields, a field hyper's types
//! reject or an ambiguous body length is an error, never a guess.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::proxy::headers::{connection_has, options};

/// Most fields a response head may have (hyper's limit too).
pub(crate) const MAX_FIELDS: usize = 100;

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes (0 for a response that has no body: to HEAD, 1xx, 204, 304).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the node closes the connection.
    UntilClose,
}

/// A response head, checked.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) framing: Framing,
    /// The connection may carry another request once this response's body has been read.
    pub(crate) keep_alive: bool,
}

/// Why a node's response head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum HeadError {
    #[error("the response header does not parse: {0}")]
    Parse(httparse::Error),
    #[error("the response header is larger than {0} bytes")]
    TooLarge(usize),
    #[error("a response header field is not valid")]
    Field,
    #[error("the response's Content-Length is not one number")]
    Length,
}

/// Appends the head of a bodiless request: `target` is origin-form, `headers` already rewritten
/// for the node (hop-by-hop fields gone, Host set). A method that expects a body (POST, PUT,
/// PATCH), or a request that named a length, says its length is 0; `Transfer-Encoding` is never
/// sent (the body is empty).
pub(crate) fn write_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    out: &mut BytesMut,
) {
    let fields: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(method.as_str().len() + target.len() + fields + 40);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut length = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    for (k, v) in headers {
        if k == header::CONTENT_LENGTH {
            length = true;
            continue;
        }
        if k == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(k.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    if length {
        out.put_slice(b"content-length: 0\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Takes a complete response head off the front of `buf`: `Ok(None)` while it is incomplete
/// (and shorter than `max` bytes), the head once it is whole. Field values share the head's
/// bytes (no copy). `to_head` is whether the request was HEAD (its response has no body).
pub(crate) fn take_response(
    buf: &mut BytesMut,
    to_head: bool,
    max: usize,
) -> Result<Option<Head>, HeadError> {
    // Left uninitialized until parsed into: a response has a few fields, not MAX_FIELDS.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Partial) if buf.len() < max => return Ok(None),
        Ok(_) => return Err(HeadError::TooLarge(max)),
        Err(e) => return Err(HeadError::Parse(e)),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Field)?;
    let http11 = resp.version == Some(1);
    // Where each field is in `buf`, so the values can share its bytes once it is frozen.
    let base = buf.as_ptr() as usize;
    let mut at = [((0u32, 0u32), (0u32, 0u32)); MAX_FIELDS];
    let count = resp.headers.len();
    for (slot, h) in at.iter_mut().zip(resp.headers.iter()) {
        *slot = (span(base, h.name.as_bytes()), span(base, h.value));
    }
    let bytes: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &((n0, n1), (v0, v1)) in &at[..count] {
        let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
        let name = HeaderName::from_bytes(&bytes[n0..n1]).map_err(|_| HeadError::Field)?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(v0..v1)).map_err(|_| HeadError::Field)?;
        headers.append(name, value);
    }
    let (framing, definite) = framing(status, &headers, to_head)?;
    let keep_alive = http11 && definite && !connection_has(&headers, "close");
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// Where `part`, a slice of the buffer that starts at address `base`, lies in it: start and end
/// (a head is at most `max` bytes, far below 4 GiB).
fn span(base: usize, part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base;
    (start as u32, (start + part.len()) as u32)
}

/// The body's framing (RFC 9112 §6.3), and whether the connection stays usable after it (no
/// read-until-close, no Content-Length beside a Transfer-Encoding).
fn framing(
    status: StatusCode,
    headers: &HeaderMap,
    to_head: bool,
) -> Result<(Framing, bool), HeadError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Length(0), false));
    }
    if to_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), true));
    }
    let coded = headers.get_all(header::TRANSFER_ENCODING);
    if coded.iter().next().is_some() {
        let last = options(&coded).filter(|c| !c.is_empty()).last();
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        let alone = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, alone)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length = None;
    for v in &headers.get_all(header::CONTENT_LENGTH) {
        // A list of equal values is one length (RFC 9110 §8.6); anything else is refused.
        for part in v.to_str().map_err(|_| HeadError::Length)?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Length);
            }
            let n: u64 = part.parse().map_err(|_| HeadError::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Length);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::UntilClose, false),
    })
}
