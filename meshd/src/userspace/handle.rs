//! The application side of the userspace stack: [`Stack`], the cloneable handle that opens
//! ([`Stack::connect`]) and accepts ([`Stack::listen`]) connections, and [`Connection`], a pair of
//! bounded channels to and from the driver. Each call wakes the driver for that connection
//! ([`ConnWake`]), so a round looks at the connections that asked and not at every open one; the
//! bounds are the backpressure (a full reader channel closes the TCP window).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::PollSender;

use super::stack::SlotId;

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

/// How applications wake the driver: a [`Notify`], and the connections that asked to be looked
/// at since the driver last took them.
#[derive(Debug, Default)]
pub struct Wakeup {
    notify: Notify,
    ready: Mutex<Vec<SlotId>>,
}

impl Wakeup {
    /// Wakes the driver (for a command, say) without naming a connection.
    pub(super) fn notify(&self) {
        self.notify.notify_one();
    }

    /// Resolves once something woke the driver since it last waited.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Moves the connections that asked into `into`.
    pub(super) fn take_ready(&self, into: &mut Vec<SlotId>) {
        let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        into.append(&mut ready);
    }
}

/// One connection's way to wake the driver for it: the connection is listed once until the
/// driver has looked at it ([`ConnWake::rearm`], before it does).
#[derive(Debug, Clone)]
pub(super) struct ConnWake {
    id: SlotId,
    asked: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

impl ConnWake {
    pub(super) fn new(id: SlotId, wakeup: Arc<Wakeup>) -> Self {
        Self {
            id,
            asked: Arc::default(),
            wakeup,
        }
    }

    pub(super) fn wake(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            let mut ready = self
                .wakeup
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            ready.push(self.id);
            drop(ready);
            self.wakeup.notify();
        }
    }

    /// The driver is about to look at the connection: a wake from now on lists it again. (A swap,
    /// so that what the application did before its last wake is visible to the driver.)
    pub(super) fn rearm(&self) {
        self.asked.swap(false, Ordering::AcqRel);
    }
}

/// Handle to the stack, for opening and accepting connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stack {
    pub(super) cmds: mpsc::Sender<Command>,
    pub(super) wake: Arc<Wakeup>,
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
        self.wake.notify();
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
        self.wake.notify();
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
    pub(super) wake: ConnWake,
}

impl ConnReader {
    /// The next chunk, `None` at end of stream, or an error if the connection was reset.
    pub async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        let r = self.rx.recv().await;
        // Room in the channel: the driver may read more from the socket.
        self.wake.wake();
        r
    }
}

impl Drop for ConnReader {
    fn drop(&mut self) {
        self.wake.wake();
    }
}

/// Bytes to the peer. Dropping it sends FIN once everything written has been sent.
#[derive(Debug)]
pub struct ConnWriter {
    pub(super) tx: mpsc::Sender<ToStack>,
    pub(super) wake: ConnWake,
}

impl ConnWriter {
    /// Queues `data`; waits while the connection's buffers are full.
    pub async fn send(&mut self, data: Bytes) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.tx.send(ToStack::Data(data)).await;
        self.wake.wake();
        r.map_err(|_| peer_closed())
    }

    /// Aborts the connection (RST), discarding anything not yet sent.
    pub async fn reset(self) {
        let _ = self.tx.send(ToStack::Reset).await;
    }
}

impl Drop for ConnWriter {
    fn drop(&mut self) {
        self.wake.wake();
    }
}

/// A [`Connection`] as an ordinary byte stream, for code written against `AsyncRead` and
/// `AsyncWrite` (the edge's HTTP client, the funnel ingress). Reads take the chunks the driver
/// queued and writes queue chunks for it, each waking it, with no task or buffer in between;
/// shutting down the write half sends FIN, dropping the stream closes both halves.
#[derive(Debug)]
pub struct ConnStream {
    // Fields drop in order: the write half closes before the reader's drop wakes the driver.
    tx: PollSender<ToStack>,
    reader: ConnReader,
    /// What is left of the chunk read last.
    unread: Bytes,
    /// A reset found while filling a read, returned by the next one.
    failed: Option<io::Error>,
}

impl From<Connection> for ConnStream {
    fn from(conn: Connection) -> Self {
        let tx = PollSender::new(conn.writer.tx.clone());
        // The stream's sender keeps the write half open; `conn.writer` itself goes.
        drop(conn.writer);
        Self {
            tx,
            reader: conn.reader,
            unread: Bytes::new(),
            failed: None,
        }
    }
}

fn peer_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by the peer")
}

impl AsyncRead for ConnStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.unread.is_empty() {
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(e));
            }
            let next = ready!(this.reader.rx.poll_recv(cx));
            // Room in the channel: the driver may read more from the socket.
            this.reader.wake.wake();
            match next {
                Some(Ok(chunk)) => this.unread = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())), // end of stream
            }
        }
        // The caller's buffer takes what is already queued, not one chunk: larger reads (an
        // HTTP body arrives in larger pieces, and goes out in fewer writes).
        let mut took = false;
        loop {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            if buf.remaining() == 0 || !this.unread.is_empty() {
                break;
            }
            let Ok(next) = this.reader.rx.try_recv() else {
                break;
            };
            took = true;
            match next {
                Ok(chunk) => this.unread = chunk,
                Err(e) => {
                    // Returned after the bytes that came before it.
                    this.failed = Some(e);
                    break;
                }
            }
        }
        if took {
            this.reader.wake.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        ready!(this.tx.poll_reserve(cx)).map_err(|_| peer_closed())?;
        let n = buf.len().min(super::stack::CHUNK);
        this.tx
            .send_item(ToStack::Data(Bytes::copy_from_slice(&buf[..n])))
            .map_err(|_| peer_closed())?;
        this.reader.wake.wake();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is already queued for the driver.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing the channel is the FIN, once everything queued has been sent.
        self.tx.close();
        self.reader.wake.wake();
        Poll::Ready(Ok(()))
    }
}
