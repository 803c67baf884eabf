//! The edge's own answers (404, 421, 400, 502, 504): small HTML pages with one clear message.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// A page with `title` as heading and `message` as text; both are escaped.
pub fn page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {t}</title></head>\n\
         <body><h1>{t}</h1>\n<p>{m}</p>\n<hr><p><small>meshfunnel edge</small></p></body></html>\n",
        code = status.as_u16(),
        t = escape(title),
        m = escape(message),
    );
    let body = Full::new(Bytes::from(html))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub fn not_found(host: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "No such funnel",
        &format!("There is no funnel at {host}."),
    )
}

pub fn expired(host: &str) -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        "Funnel expired",
        &format!("The funnel at {host} expired. Its owner can open it again with `meshd funnel`."),
    )
}

pub fn bad_gateway(message: &str) -> Response<Body> {
    page(StatusCode::BAD_GATEWAY, "Bad gateway", message)
}

/// HTML-escapes text (and keeps it short: reasons come from the network).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(512) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'\n"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39; "
        );
        assert_eq!(escape(&"a".repeat(5000)).len(), 512);
    }
}
