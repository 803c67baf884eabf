//! The local API: `meshd.sock` (0600) in the state dir, one JSON request line and one JSON answer
//! line per connection. The CLI (`meshd status|ip|down`) is its client ([`request`]). The data
//! plane publishes a [`Status`] snapshot every second; the API answers from the latest one.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::ping::PingRequest;
use crate::funnel::service::FunnelService;
use crate::funnel::table::LocalFunnel;
use tracing::debug;

/// File name of the local API socket inside the state dir.
pub const SOCKET: &str = "meshd.sock";
const MAX_LINE: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Down,
    /// One ICMP echo over the mesh to a peer's name, fqdn or address.
    Ping {
        target: String,
    },
    /// Publishes local `port` as `https://NAME.<funnel domain>/`. Not `background`: the funnel
    /// lives as long as this connection stays open.
    FunnelOpen {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default)]
        background: bool,
    },
    /// Closes the named funnel, or all of this node's.
    FunnelOff {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    FunnelStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Pong {
        peer: String,
        ip: IpAddr,
        rtt_micros: u64,
        /// The peer's UDP endpoint the exchange went through.
        endpoint: Option<SocketAddr>,
    },
    Done {
        message: String,
    },
    Funnels {
        funnels: Vec<LocalFunnel>,
    },
    Error {
        message: String,
    },
}

/// What `meshd status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub fqdn: String,
    pub addresses: Vec<IpAddr>,
    /// Whether the map stream to the coordinator is up.
    pub coord_connected: bool,
    pub peers: Vec<PeerStatus>,
    pub drops: DropCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last handshake, if there was one.
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Coordinator's view: the peer holds a map stream.
    pub online: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub invalid_datagram: u64,
    pub unknown_peer: u64,
    pub spoofed_source: u64,
    pub filtered: u64,
    pub no_route: u64,
    pub no_endpoint: u64,
    /// Userspace mode: packets for the stack dropped because its queue was full.
    #[serde(default)]
    pub stack_queue_full: u64,
}

/// Binds the socket (0600), replacing a stale one.
pub fn bind(state_dir: &Path) -> io::Result<UnixListener> {
    let path = state_dir.join(SOCKET);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another meshd is running with state dir {}",
                    state_dir.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// What the API answers from.
#[derive(Debug)]
pub struct Context {
    pub status: watch::Receiver<Status>,
    /// Sent `true` on `meshd down`.
    pub down: watch::Sender<bool>,
    pub pings: mpsc::Sender<PingRequest>,
    pub funnels: FunnelService,
}

/// Serves requests until the process ends.
pub async fn serve(listener: UnixListener, ctx: Context) {
    let ctx = std::sync::Arc::new(ctx);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let work = async {
                let mut line = String::new();
                (&mut r).take(MAX_LINE).read_line(&mut line).await?;
                let (resp, hold) = answer(&ctx, &line).await;
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                w.write_all(&out).await?;
                if hold.is_none() {
                    w.shutdown().await?;
                }
                Ok::<_, io::Error>(hold)
            };
            let hold = match tokio::time::timeout(IO_TIMEOUT, work).await {
                Ok(Ok(hold)) => hold,
                Ok(Err(e)) => {
                    debug!("local API connection: {e}");
                    return;
                }
                Err(_) => return,
            };
            // A foreground funnel lives until its command goes away (Ctrl+C, kill, exit).
            if let Some(name) = hold {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
                if let Err(e) = ctx.funnels.close(Some(&name)).await {
                    debug!(%name, "closing a foreground funnel: {e}");
                }
            }
        });
    }
}

/// The answer to one request line, and the funnel to close when the client goes away (foreground
/// funnels).
async fn answer(ctx: &Context, line: &str) -> (Response, Option<String>) {
    let resp = match serde_json::from_str::<Request>(line) {
        Ok(Request::Status) => Response::Status(Box::new(ctx.status.borrow().clone())),
        Ok(Request::Down) => {
            let _ = ctx.down.send(true);
            Response::Done {
                message: "meshd is shutting down".into(),
            }
        }
        Ok(Request::Ping { target }) => ping(&ctx.pings, &ctx.status, target).await,
        Ok(Request::FunnelOpen {
            port,
            name,
            ttl_secs,
            background,
        }) => {
            return match ctx.funnels.open(port, name, ttl_secs, background).await {
                Ok(f) => {
                    let hold = (!background).then(|| f.name.clone());
                    (Response::Funnels { funnels: vec![f] }, hold)
                }
                Err(message) => (Response::Error { message }, None),
            }
        }
        Ok(Request::FunnelOff { name }) => match ctx.funnels.close(name.as_deref()).await {
            Ok(names) if names.is_empty() => Response::Done {
                message: "no funnels were open".into(),
            },
            Ok(names) => Response::Done {
                message: format!("closed {}", names.join(", ")),
            },
            Err(message) => Response::Error { message },
        },
        Ok(Request::FunnelStatus) => Response::Funnels {
            funnels: ctx.funnels.list(),
        },
        Err(e) => Response::Error {
            message: format!("malformed request: {e}"),
        },
    };
    (resp, None)
}

async fn ping(
    pings: &mpsc::Sender<PingRequest>,
    status: &watch::Receiver<Status>,
    target: String,
) -> Response {
    let (reply, rx) = oneshot::channel();
    if pings.send(PingRequest { target, reply }).await.is_err() {
        return Response::Error {
            message: "ping is not available in this mode".into(),
        };
    }
    match rx.await {
        Ok(Ok(pong)) => {
            let endpoint = status
                .borrow()
                .peers
                .iter()
                .find(|p| p.name == pong.peer)
                .and_then(|p| p.endpoint);
            Response::Pong {
                peer: pong.peer,
                ip: pong.ip,
                rtt_micros: pong.rtt.as_micros() as u64,
                endpoint,
            }
        }
        Ok(Err(message)) => Response::Error { message },
        Err(_) => Response::Error {
            message: "meshd is shutting down".into(),
        },
    }
}

/// The CLI side: one request, blocking.
pub fn request(state_dir: &Path, req: &Request) -> anyhow::Result<Response> {
    request_held(state_dir, req).map(|(resp, _)| resp)
}

/// Like [`request`], and keeps the connection: a foreground funnel lives as long as it is open.
pub fn request_held(
    state_dir: &Path,
    req: &Request,
) -> anyhow::Result<(Response, std::os::unix::net::UnixStream)> {
    let path = state_dir.join(SOCKET);
    let mut conn = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "meshd is not running with state dir {} (nothing answers on {}): start it with \
             `meshd up`",
            state_dir.display(),
            path.display()
        ),
        _ => anyhow::anyhow!("connecting to {}: {e}", path.display()),
    })?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    conn.set_read_timeout(None)?;
    Ok((serde_json::from_str(&answer)?, conn))
}
