//! The application side of the userspace stack: [`Stack`], the cloneable handle that opens
//! ([`Stack::connect`]) and accepts ([`Stack::listen`]) connections, and [`Connection`], a pair of
//! bounded channels to and from the driver. Each call wakes the driver so it moves bytes on; the
//! bounds are the backpressure (a full reader channel closes the TCP window).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

/// Listening sockets kept per port, so concurrent SYNs are not refused; also how many accepted
/// connections may wait for the listener.
pub(super) const BACKLOG: usize = 8;

/// What an application writes into a connection.
#[derive(Debug)]
pub(super) enum ToStack {
    Data(Bytes),
    Reset,
}

#[derive(Debug)]
pub(super) enum Command {
    Connect {
        remote: SocketAddr,
        reply: oneshot::Sender<io::Result<Connection>>,
    },
    Listen {
        port: u16,
        accepted: mpsc::Sender<Connection>,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// Handle to the stack, for opening and accepting connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stack {
    pub(super) cmds: mpsc::Sender<Command>,
    pub(super) wake: Arc<Notify>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the userspace stack has stopped",
    )
}

impl Stack {
    /// Opens a TCP connection to `remote` over the mesh; resolves once it is established.
    pub async fn connect(&self, remote: SocketAddr) -> io::Result<Connection> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Command::Connect { remote, reply })
            .await
            .map_err(|_| gone())?;
        self.wake.notify_one();
        rx.await.map_err(|_| gone())?
    }

    /// Accepts TCP connections to `port` on the node's mesh addresses. While no listener holds a
    /// port, SYNs to it are answered with RST. Dropping the [`Listener`] stops listening.
    pub async fn listen(&self, port: u16) -> io::Result<Listener> {
        let (accepted, incoming) = mpsc::channel(BACKLOG);
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Command::Listen {
                port,
                accepted,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        self.wake.notify_one();
        rx.await.map_err(|_| gone())??;
        Ok(Listener { port, incoming })
    }
}

/// Accepted connections on one port.
#[derive(Debug)]
pub struct Listener {
    port: u16,
    incoming: mpsc::Receiver<Connection>,
}

impl Listener {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next established connection; `None` once the stack has stopped.
    pub async fn accept(&mut self) -> Option<Connection> {
        self.incoming.recv().await
    }
}

/// An established TCP connection through the userspace stack.
#[derive(Debug)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub reader: ConnReader,
    pub writer: ConnWriter,
}

/// Bytes from the peer. `None` is end of stream (the peer sent FIN).
#[derive(Debug)]
pub struct ConnReader {
    pub(super) rx: mpsc::Receiver<io::Result<Bytes>>,
    pub(super) wake: Arc<Notify>,
}

impl ConnReader {
    /// The next chunk, `None` at end of stream, or an error if the connection was reset.
    pub async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        let r = self.rx.recv().await;
        // Room in the channel: the driver may read more from the socket.
        self.wake.notify_one();
        r
    }
}

impl Drop for ConnReader {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Bytes to the peer. Dropping it sends FIN once everything written has been sent.
#[derive(Debug)]
pub struct ConnWriter {
    pub(super) tx: mpsc::Sender<ToStack>,
    pub(super) wake: Arc<Notify>,
}

impl ConnWriter {
    /// Queues `data`; waits while the connection's buffers are full.
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.tx.send(ToStack::Data(data)).await;
        self.wake.notify_one();
        r.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by the peer"))
    }

    /// Aborts the connection (RST), discarding anything not yet sent.
    pub async fn reset(self) {
        let _ = self.tx.send(ToStack::Reset).await;
    }
}

impl Drop for ConnWriter {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}
