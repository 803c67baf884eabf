//! The admin socket: `admin.sock` (0600) in the state dir. One JSON request line, one JSON
//! answer line per connection ([`proto::admin`]). [`client`] is what the CLI uses.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use proto::admin::{AdminRequest, AdminResponse, ADMIN_SOCKET};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::debug;

use crate::service::Handle;

/// Longest request line read; the largest legitimate one is a policy document.
const MAX_LINE: u64 = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the admin socket, refusing to take over one a running coord still answers on.
pub fn bind(state_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = state_dir.join(ADMIN_SOCKET);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another coord is already running with state dir {} (its admin socket answers)",
                state_dir.display()
            );
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, handle: Handle, mut shutdown: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(e) => {
                    debug!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT, one(conn, handle)).await {
                debug!("admin connection timed out: {e}");
            }
        });
    }
}

async fn one(conn: UnixStream, handle: Handle) -> io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    BufReader::new(r)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await?;
    let resp = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(req) => handle.admin(req).await,
        Err(e) => AdminResponse::Error {
            message: format!("malformed admin request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// The CLI side: blocking, no runtime needed.
pub mod client {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    pub enum AdminClientError {
        #[error(
            "no coord server is running with state dir {dir} (nothing answers on {socket}): \
             start one with `coord serve --state-dir {dir}`"
        )]
        NotRunning { dir: String, socket: String },
        #[error("talking to coord over {socket}: {source}")]
        Io { socket: String, source: io::Error },
        #[error("coord answered with something that is not an admin response: {0}")]
        Protocol(String),
    }

    pub fn request(
        state_dir: &Path,
        req: &AdminRequest,
    ) -> Result<AdminResponse, AdminClientError> {
        let socket = state_dir.join(ADMIN_SOCKET);
        let io_err = |source| AdminClientError::Io {
            socket: socket.display().to_string(),
            source,
        };
        let mut conn = UnixStream::connect(&socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                AdminClientError::NotRunning {
                    dir: state_dir.display().to_string(),
                    socket: socket.display().to_string(),
                }
            }
            _ => io_err(e),
        })?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
        let mut line =
            serde_json::to_vec(req).map_err(|e| AdminClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        conn.write_all(&line).map_err(io_err)?;
        let mut answer = String::new();
        BufReader::new(conn)
            .read_line(&mut answer)
            .map_err(io_err)?;
        serde_json::from_str(&answer).map_err(|e| AdminClientError::Protocol(e.to_string()))
    }
}
