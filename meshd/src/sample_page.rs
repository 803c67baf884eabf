//! A built-in page to publish when there is no service of one's own yet (the one-machine run):
//! HTTP/1.1 on a local address, one small HTML page that shows the request it came with, so the
//! headers the funnel edge adds can be seen.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves the page until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req| async move { Ok::<_, Infallible>(page(&req)) });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(escape)
            .unwrap_or_else(|| "—".into())
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Hello from meshfunnel</title>\
         </head>\n<body style=\"font-family: sans-serif; max-width: 40em; margin: 3em auto\">\n\
         <h1>Hello from meshfunnel</h1>\n<p>This page is served on a laptop behind NAT and reached \
         through the funnel edge and the mesh.</p>\n<table>\n\
         <tr><td>Host</td><td>{}</td></tr>\n<tr><td>X-Forwarded-For</td><td>{}</td></tr>\n\
         <tr><td>X-Forwarded-Proto</td><td>{}</td></tr>\n<tr><td>Funnel</td><td>{}</td></tr>\n\
         <tr><td>Path</td><td>{}</td></tr>\n</table>\n</body></html>\n",
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("x-meshfunnel-funnel"),
        escape(req.uri().path()),
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Binds `addr` and serves the page in the background; returns the bound address.
pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    tokio::spawn(serve(l));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_the_page_and_escapes_what_it_echoes() {
        let addr = super::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: hello.funnel.localhost\r\nX-Meshfunnel-Funnel: <b>\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("Hello from meshfunnel"), "{out}");
        assert!(
            out.contains("hello.funnel.localhost") && out.contains("&lt;b&gt;"),
            "{out}"
        );
    }
}
