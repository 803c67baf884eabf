//! The application side of the userspace stack: [`Stack`], the cloneable handle that opens
//! ([`Stack::connect`]) and accepts ([`Stack::listen`]) connections, and [`Connection`], whose
//! halves read from and write into the connection's socket itself ([`SharedSocket`]). Each read
//! or write that changed the socket wakes the driver for that connection ([`ConnWake`]), so a
//! round looks at the connections that asked and not at every open one; the socket's buffers are
//! the backpressure (unread bytes close the TCP window, unsent ones make writes wait).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::socket::{Read, SharedSocket};
use super::stack::{SlotId, CHUNK};

/// Listening sockets kept ready per port (each holds its buffers); a burst of SYNs beyond them
/// gets listening sockets made for it, up to [`ACCEPT_QUEUE`].
pub(super) const BACKLOG: usize = 8;
/// Connections of a port between its SYN and the listener's accept, and accepted ones waiting
/// for it, at most (a kernel's listen backlog): more SYNs are refused with RST.
pub(super) const ACCEPT_QUEUE: usize = 1024;

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
        let (accepted, incoming) = mpsc::channel(ACCEPT_QUEUE);
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

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset by the peer",
    )
}

fn peer_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by the peer")
}

/// Bytes from the peer: end of stream once the peer sent FIN and every byte before it was read.
#[derive(Debug)]
pub struct ConnReader {
    pub(super) sock: Arc<SharedSocket>,
    pub(super) wake: ConnWake,
}

impl ConnReader {
    /// Reads what is queued into `buf` (as much as it has room for); an empty read at the end of
    /// the stream, an error if the connection was reset.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.sock.lock();
        match st.read(buf) {
            Read::Data { reopens: true, .. } => {
                drop(st);
                self.wake.wake();
                Poll::Ready(Ok(()))
            }
            Read::Data { .. } | Read::End => Poll::Ready(Ok(())),
            Read::Reset => Poll::Ready(Err(reset())),
            Read::Empty => {
                st.socket().register_recv_waker(cx.waker());
                Poll::Pending
            }
        }
    }

    /// The next bytes (at most [`CHUNK`]), `None` at end of stream, or an error if the
    /// connection was reset.
    pub async fn recv(&mut self) -> Option<io::Result<Bytes>> {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        match self.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some(Ok(chunk.freeze())),
            Err(e) => Some(Err(e)),
        }
    }
}

impl AsyncRead for ConnReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ConnReader::poll_read(&mut self, cx, buf)
    }
}

impl Drop for ConnReader {
    fn drop(&mut self) {
        self.sock.lock().reader_gone = true;
        self.wake.wake();
    }
}

/// Bytes to the peer. Dropping it sends FIN once everything written has been sent.
#[derive(Debug)]
pub struct ConnWriter {
    pub(super) sock: Arc<SharedSocket>,
    pub(super) wake: ConnWake,
}

impl ConnWriter {
    /// Queues as much of `buf` as the socket has room for; waits while it has none, fails once
    /// the connection cannot send any more (reset, or this side closed).
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.sock.lock();
        let sock = st.socket();
        if !sock.may_send() {
            return Poll::Ready(Err(peer_closed()));
        }
        match sock.send_slice(buf) {
            Ok(0) => {
                sock.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                self.wake.wake();
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(peer_closed())),
        }
    }

    /// Queues all of `data`; waits while the socket's buffer is full.
    pub async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_write(cx, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Sends FIN after what was written; the read half stays open.
    pub fn close(&mut self) {
        self.sock.lock().socket().close();
        self.wake.wake();
    }

    /// Aborts the connection (RST), discarding anything not yet sent. (Dropping `self` then
    /// wakes the driver to send it.)
    pub fn reset(self) {
        self.sock.lock().socket().abort();
    }
}

impl Drop for ConnWriter {
    fn drop(&mut self) {
        let mut st = self.sock.lock();
        st.writer_gone = true;
        // FIN after what was written (nothing, after a reset: the socket is closed).
        st.socket().close();
        drop(st);
        self.wake.wake();
    }
}

/// A [`Connection`] as an ordinary byte stream, for code written against `AsyncRead` and
/// `AsyncWrite` (the edge's HTTP client, the funnel ingress). Shutting down the write half sends
/// FIN; dropping the stream closes both halves.
#[derive(Debug)]
pub struct ConnStream {
    reader: ConnReader,
    writer: ConnWriter,
}

impl From<Connection> for ConnStream {
    fn from(conn: Connection) -> Self {
        Self {
            reader: conn.reader,
            writer: conn.writer,
        }
    }
}

impl AsyncRead for ConnStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reader.poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is already in the socket, for the driver to send.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.close();
        Poll::Ready(Ok(()))
    }
}
