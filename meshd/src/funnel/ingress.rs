//! The node's funnel ingress: streams from edges on [`proto::map::FUNNEL_INGRESS_PORT`], each
//! naming a funnel this node opted in to, proxied to the local service on 127.0.0.1 (or ::1).
//! A stream from anything but an edge in the netmap, or naming a funnel this node did not
//! publish, is answered with `ERR` and closed: nothing else on the node is reachable this way.
//! Edges keep streams open across requests, so a stream also ends when its funnel is closed or
//! expires: what the node stopped publishing is not served on a stream opened before.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info};

use super::relay::{relay, Sizes, LINGER};
use super::table::FunnelTable;
use super::wire::{self, Parsed, MAX_LINE};

/// How long an edge has to name the funnel, and the local service to accept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Copy buffers per stream: requests are mostly small; responses move in larger reads (fewer
/// system calls per megabyte on the way to the mesh).
const SIZES: Sizes = Sizes {
    request_buf: 8 * 1024,
    response_buf: 64 * 1024,
    linger: LINGER,
};

/// What the ingress decides with: the node's own funnel records and who the edges are.
#[derive(Clone)]
pub struct Ingress {
    pub funnels: Arc<Mutex<FunnelTable>>,
    /// Changes after every change of `funnels` (at least whenever one is closed or expires).
    pub changes: watch::Receiver<()>,
    /// Whether a mesh address belongs to an edge node in the current netmap.
    pub is_edge: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress").finish_non_exhaustive()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ingress {
    /// Serves one stream from `from` to its end.
    pub async fn handle<S>(&self, mut stream: S, from: IpAddr) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let from = from.to_canonical();
        if !(self.is_edge)(from) {
            debug!(%from, "funnel ingress: not an edge");
            return refuse(&mut stream, "not a funnel edge of this mesh".into()).await;
        }
        let (name, early) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_request(&mut stream)).await {
                Ok(Ok(v)) => v,
                Ok(Err(reason)) => return refuse(&mut stream, reason).await,
                Err(_) => return refuse(&mut stream, "no funnel request in time".into()).await,
            };
        let mut changes = self.changes.clone();
        changes.mark_unchanged();
        let Some(port) = self.port_for(&name) else {
            return refuse(
                &mut stream,
                format!("no funnel named {name:?} on this node"),
            )
            .await;
        };
        let mut local = match connect_local(port).await {
            Ok(s) => s,
            Err(reason) => {
                info!(funnel = %name, port, "funnel: {reason}");
                return refuse(&mut stream, reason).await;
            }
        };
        stream.write_all(&wire::response(&Ok(()))).await?;
        if !early.is_empty() {
            local.write_all(&early).await?;
        }
        let _ = local.set_nodelay(true);
        tokio::select! {
            r = relay(&mut stream, &mut local, SIZES) => { r?; }
            () = self.until_gone(&name, port, changes) => {
                debug!(funnel = %name, "funnel closed: ending its stream");
            }
        }
        Ok(())
    }

    fn port_for(&self, name: &str) -> Option<u16> {
        self.funnels
            .lock()
            .ok()
            .and_then(|t| t.port_for(name, unix_now()))
    }

    /// Resolves once funnel `name` no longer forwards to `port`; never, if nothing reports changes.
    async fn until_gone(&self, name: &str, port: u16, mut changes: watch::Receiver<()>) {
        loop {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if self.port_for(name) != Some(port) {
                return;
            }
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reason: String) -> std::io::Result<()> {
    stream.write_all(&wire::response(&Err(reason))).await?;
    stream.shutdown().await
}

/// Reads the request line; returns the name and any bytes that came after it.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut chunk = [0u8; MAX_LINE + 1];
    loop {
        match wire::parse_request(&buf) {
            Parsed::Done(name, used) => return Ok((name, buf.split_off(used))),
            Parsed::Invalid(why) => return Err(why.into()),
            Parsed::Incomplete => {}
        }
        // At most one byte past the limit: then the parser says the line is too long.
        let room = (MAX_LINE + 1).saturating_sub(buf.len()).max(1);
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(|e| format!("reading the funnel request: {e}"))?;
        if n == 0 {
            return Err("the edge closed the stream before naming a funnel".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects to the local service: 127.0.0.1 first, then ::1 (dev servers often bind one only).
async fn connect_local(port: u16) -> Result<TcpStream, String> {
    let mut last = String::new();
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => {
                last = format!("the local service on port {port} refused the connection ({e})")
            }
            Err(_) => last = format!("the local service on port {port} did not accept in time"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::funnel::table::LocalFunnel;
    use tokio::io::DuplexStream;
    use tokio::net::TcpListener;

    const EDGE: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 9));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 7));

    /// A local service that answers every connection with "hi " and what it read first.
    async fn local_service() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let _ = s.write_all(b"hi ").await;
                    let _ = s.write_all(&buf[..n]).await;
                });
            }
        });
        port
    }

    fn ingress(funnels: Vec<(&str, u16, u64)>) -> Ingress {
        let mut t = FunnelTable::default();
        for (name, port, expires) in funnels {
            t.upsert(LocalFunnel {
                name: name.into(),
                port,
                url: String::new(),
                expires,
                background: false,
            });
        }
        // No changes are reported (the sender is gone) but in the test that makes its own.
        let (_, changes) = watch::channel(());
        Ingress {
            funnels: Arc::new(Mutex::new(t)),
            changes,
            is_edge: Arc::new(|ip| ip == EDGE),
        }
    }

    /// Runs the ingress on one end of a pipe; sends `input` from the other and reads everything.
    async fn exchange(ing: &Ingress, from: IpAddr, input: &[u8]) -> String {
        let (mut edge, node): (DuplexStream, DuplexStream) = tokio::io::duplex(4096);
        let ing = ing.clone();
        let task = tokio::spawn(async move { ing.handle(node, from).await });
        edge.write_all(input).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), edge.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        drop(edge);
        let _ = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_live_funnel_reaches_the_local_service_with_early_bytes() {
        let port = local_service().await;
        let ing = ingress(vec![("demo", port, unix_now() + 60)]);
        let mut req = wire::request("demo");
        req.extend_from_slice(b"GET /");
        assert_eq!(exchange(&ing, EDGE, &req).await, "OK\nhi GET /");
    }

    #[tokio::test]
    async fn refusals_say_why() {
        let port = local_service().await;
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let ing = ingress(vec![
            ("demo", port, unix_now() + 60),
            ("old", port, unix_now() - 1),
            ("down", dead_port, unix_now() + 60),
        ]);
        let cases: [(IpAddr, Vec<u8>, &str); 5] = [
            (OTHER, wire::request("demo"), "ERR not a funnel edge"),
            (EDGE, wire::request("nope"), "ERR no funnel named \"nope\""),
            (EDGE, wire::request("old"), "ERR no funnel named \"old\""),
            (
                EDGE,
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                "ERR not a funnel request",
            ),
            (EDGE, wire::request("down"), "refused the connection"),
        ];
        for (from, input, want) in cases {
            let got = exchange(&ing, from, &input).await;
            assert!(got.contains(want), "{want:?} in {got:?}");
            assert!(!got.contains("hi "), "{got}");
        }
    }

    #[tokio::test]
    async fn a_v4_mapped_edge_address_counts_as_the_edge() {
        let port = local_service().await;
        let ing = ingress(vec![("demo", port, unix_now() + 60)]);
        let mapped = match EDGE {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        let mut req = wire::request("demo");
        req.push(b'x');
        assert_eq!(exchange(&ing, mapped, &req).await, "OK\nhi x");
    }

    #[tokio::test]
    async fn closing_a_funnel_ends_its_open_streams() {
        // A local service that echoes until the stream ends.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let (changed, changes) = watch::channel(());
        let ing = Ingress {
            changes,
            ..ingress(vec![
                ("demo", port, unix_now() + 60),
                ("other", port, unix_now() + 60),
            ])
        };
        let (mut edge, node) = tokio::io::duplex(4096);
        let task = tokio::spawn({
            let ing = ing.clone();
            async move { ing.handle(node, EDGE).await }
        });
        edge.write_all(&wire::request("demo")).await.unwrap();
        let mut buf = [0u8; 5];
        edge.write_all(b"ping1").await.unwrap();
        edge.read_exact(&mut buf[..3]).await.unwrap();
        assert_eq!(&buf[..3], b"OK\n");
        edge.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping1");

        // Another funnel closing leaves this stream alone.
        ing.funnels.lock().unwrap().remove("other");
        changed.send_replace(());
        edge.write_all(b"ping2").await.unwrap();
        edge.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping2");

        ing.funnels.lock().unwrap().remove("demo");
        changed.send_replace(());
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), edge.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
