//! Pure request checks and header rewriting for the proxy: which request targets are refused,
//! which host a request names, and what the node gets to see. No I/O.

use std::net::IpAddr;

use http::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

use crate::routes::host_part;

/// Headers that only describe one connection (RFC 9110 §7.6.1, plus the legacy ones).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding and identity headers a client must not be able to forge.
const FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "forwarded",
    "x-real-ip",
];

/// The prefix of the edge's own headers (`X-Meshfunnel-Funnel`); client copies are dropped.
const OWN_PREFIX: &str = "x-meshfunnel-";
pub const FUNNEL_HEADER: &str = "x-meshfunnel-funnel";

/// Why a request is answered by the edge itself before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub message: &'static str,
}

const fn reject(status: StatusCode, message: &'static str) -> Reject {
    Reject { status, message }
}

/// Refuses request targets that are not a path: `*` (asterisk form), CONNECT (authority form,
/// and HTTP/2 extended CONNECT), and absolute URIs with a scheme other than http(s).
pub fn check_target<B>(req: &Request<B>) -> Result<(), Reject> {
    if req.method() == Method::CONNECT {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "CONNECT requests are not supported.",
        ));
    }
    let uri = req.uri();
    if !uri.path().starts_with('/') {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "The request target must be a path starting with \"/\".",
        ));
    }
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "Unsupported scheme in the request target.",
            ));
        }
    }
    Ok(())
}

/// The host the request names, as sent (Host header, else the URI's authority / `:authority`),
/// checked against the TLS server name: every place that names a host must name `sni`'s host.
pub fn check_host<B>(req: &Request<B>, sni: &str) -> Result<String, Reject> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "More than one Host header.",
        ));
    }
    let host_header = match host_header.map(HeaderValue::to_str) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(_)) => return Err(reject(StatusCode::BAD_REQUEST, "Invalid Host header.")),
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let Some(sent) = host_header.or(authority) else {
        return Err(reject(StatusCode::BAD_REQUEST, "Missing Host header."));
    };
    let want = host_part(sni);
    for h in [host_header, authority].into_iter().flatten() {
        if h.contains('@') {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "User information is not allowed in the host.",
            ));
        }
        let same = host_part(h)
            .zip(want)
            .is_some_and(|(h, w)| h.eq_ignore_ascii_case(w));
        if !same {
            return Err(reject(
                StatusCode::MISDIRECTED_REQUEST,
                "This connection was set up for a different host name than the request names.",
            ));
        }
    }
    Ok(sent.to_owned())
}

/// Whether the client asks to switch protocols (WebSocket and the like; HTTP/1.1 only).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Whether the Connection header lists `token` (case-insensitively).
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    lists(&headers.get_all(header::CONNECTION), token)
}

/// Whether the Connection header's values list `token` (an option such as `keep-alive` or
/// `upgrade`, or a header name).
fn lists(connection: &GetAll<'_, HeaderValue>, token: &str) -> bool {
    options(connection).any(|t| t.eq_ignore_ascii_case(token))
}

/// The items of a comma-separated list header (Connection's options, Transfer-Encoding's
/// codings), over all its field lines, trimmed (values that are not text list nothing).
pub(crate) fn options<'a>(list: &'a GetAll<'_, HeaderValue>) -> impl Iterator<Item = &'a str> {
    list.iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |_| false);
}

/// Removes, in one pass over the names, the hop-by-hop headers (those the Connection header
/// names too) and every header `also` picks. Nothing is allocated when nothing is removed.
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    // Looked up once, not once per name.
    let connection = headers.get_all(header::CONNECTION);
    // Usually it lists only `keep-alive` or `upgrade`, which go anyway: then no header needs
    // checking against its list.
    let names_others = options(&connection)
        .any(|t| !t.is_empty() && !HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(t)));
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            HOP_BY_HOP.contains(&k) || also(k) || (names_others && lists(&connection, k))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The `X-Forwarded-For` value for a client's address (an IPv4-mapped one as IPv4), made once
/// per connection.
pub fn forwarded_for(client_ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client_ip.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What the proxy knows about a request's origin.
#[derive(Debug, Clone)]
pub struct Forwarding<'a> {
    /// The client's address, from [`forwarded_for`].
    pub forwarded_for: &'a HeaderValue,
    /// The Host as the client sent it (already checked against the SNI name).
    pub host: &'a str,
    pub funnel: &'a str,
    /// Keep `Connection: upgrade` and `Upgrade`.
    pub upgrade: bool,
}

/// Rewrites a client's request headers for the node: hop-by-hop and forged forwarding headers
/// out; Host kept; `X-Forwarded-For/-Host/-Proto` and `X-Meshfunnel-Funnel` set by us.
pub fn rewrite_request_headers(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let upgrade = if fwd.upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // The edge already answered any `Expect: 100-continue` itself, and streams the body.
    remove_where(headers, |k| {
        FORWARDING.contains(&k) || k.starts_with(OWN_PREFIX) || k == "expect"
    });
    // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    let cookies = headers.get_all(header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let joined = cookies
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
    // Room for the ones set below at once, not by growing the map on the way. (hyper caps a
    // request's fields far below the map's limit; were it reached, nothing is reserved.)
    let _ = headers.try_reserve(5);
    // The Host the client sent is kept as it is (and shared with X-Forwarded-Host, no copy).
    let host = match headers.get(header::HOST) {
        Some(h) if h.as_bytes() == fwd.host.as_bytes() => Some(h.clone()),
        _ => HeaderValue::from_str(fwd.host).ok(),
    };
    if let Some(host) = host {
        headers.insert(header::HOST, host.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        fwd.forwarded_for.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    set(headers, HeaderName::from_static(FUNNEL_HEADER), fwd.funnel);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Rewrites a node's response headers for the client. A `101` keeps its `Upgrade`.
pub fn rewrite_response_headers(headers: &mut HeaderMap, switching: bool) {
    let upgrade = if switching {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Every value set here was a header value already, an IP address or a funnel label.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Whether the proxy may dial `ip` for a request: never loopback, unspecified, link-local
/// (cloud metadata lives there), multicast or broadcast, whatever a route says.
pub fn dialable(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                // AWS's IPv6 metadata endpoint.
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))
        }
    }
}

#[cfg(test)]
#[path = "headers_tests.rs"]
mod tests;
