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

/// Serves requests until the process ends. `down` is sent `true` on `meshd down`.
pub async fn serve(
    listener: UnixListener,
    status: watch::Receiver<Status>,
    down: watch::Sender<bool>,
    pings: mpsc::Sender<PingRequest>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = status.clone();
        let down = down.clone();
        let pings = pings.clone();
        tokio::spawn(async move {
            let work = async move {
                let (r, mut w) = conn.into_split();
                let mut line = String::new();
                tokio::io::BufReader::new(r)
                    .take(MAX_LINE)
                    .read_line(&mut line)
                    .await?;
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Status) => Response::Status(Box::new(status.borrow().clone())),
                    Ok(Request::Down) => {
                        let _ = down.send(true);
                        Response::Done {
                            message: "meshd is shutting down".into(),
                        }
                    }
                    Ok(Request::Ping { target }) => ping(&pings, &status, target).await,
                    Err(e) => Response::Error {
                        message: format!("malformed request: {e}"),
                    },
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                w.write_all(&out).await?;
                w.shutdown().await
            };
            if let Ok(Err(e)) = tokio::time::timeout(IO_TIMEOUT, work).await {
                debug!("local API connection: {e}");
            }
        });
    }
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
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
}
