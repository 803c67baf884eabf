//! One TCP socket shared by the stack's driver and the application side of its connection.
//!
//! The driver feeds the socket packets and runs its timers; the application reads from and
//! writes into the socket's own buffers, so a byte crosses from the peer to the reader's buffer
//! in one copy (and back in one), with no chunks or channels in between. Each side holds the
//! lock only for its step. smoltcp's wakers wake the application when the driver changed what it
//! waits for (bytes, room, a FIN, a reset); the application wakes the driver (`ConnWake`) when
//! it changed what the driver should send (bytes, a window update, a FIN, an RST).

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Buf as _, BytesMut};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use tokio::io::ReadBuf;

/// A socket in a set of its own (smoltcp polls sets, and visits every socket of one).
#[derive(Debug)]
pub(super) struct SharedSocket {
    state: Mutex<SockState>,
}

impl SharedSocket {
    pub(super) fn new(sock: tcp::Socket<'static>) -> Self {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        Self {
            state: Mutex::new(SockState {
                set,
                handle,
                fin: false,
                tail: BytesMut::new(),
                reader_gone: false,
                discarded: false,
                writer_gone: false,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SockState> {
        // Nothing here panics while holding the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Read {
    /// This many bytes went into the buffer; `reopens`: the socket's buffer was at least half
    /// full, so the read may have opened a window the peer waits for (an ACK the driver should
    /// send now). Below half, the window last advertised still lets the peer send (a window
    /// update is due only once the window doubles), and its next segment's ACK carries the rest.
    Data { n: usize, reopens: bool },
    /// Nothing now; the socket's receive waker is what to wait on.
    Empty,
    /// The peer closed its half and every byte before the FIN has been read.
    End,
    /// The connection was reset (or aborted, or timed out) without a FIN.
    Reset,
}

#[derive(Debug)]
pub(super) struct SockState {
    /// For the driver's ingress and egress.
    pub(super) set: SocketSet<'static>,
    handle: SocketHandle,
    /// The peer's FIN was seen. Reads past the buffered bytes are end of stream from then on,
    /// whatever the socket becomes (smoltcp forgets the FIN when TIME-WAIT ends).
    fin: bool,
    /// Bytes moved out of a socket in TIME-WAIT, whose end clears its buffer; read after the
    /// socket's own.
    tail: BytesMut,
    /// The application dropped its reader: bytes that arrive are discarded.
    pub(super) reader_gone: bool,
    pub(super) writer_gone: bool,
    /// Bytes were discarded: the peer sends what nobody will read.
    pub(super) discarded: bool,
}

impl SockState {
    pub(super) fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut(self.handle)
    }

    pub(super) fn app_gone(&self) -> bool {
        self.reader_gone && self.writer_gone
    }

    /// The driver's step after packets or timers reached the socket: note the peer's FIN, keep
    /// the bytes a TIME-WAIT's end would clear, and discard bytes that nobody will read.
    pub(super) fn settle(&mut self) {
        use tcp::State;
        let sock = self.set.get_mut::<tcp::Socket<'static>>(self.handle);
        let state = sock.state();
        self.fin |= peer_finished(state);
        if self.reader_gone {
            let mut any = !self.tail.is_empty();
            drain(sock, |b| any |= !b.is_empty());
            self.tail.clear();
            self.discarded |= any;
        } else if state == State::TimeWait {
            drain(sock, |b| self.tail.extend_from_slice(b));
        }
    }

    /// The application's read: as many queued bytes as `buf` has room for.
    pub(super) fn read(&mut self, buf: &mut ReadBuf<'_>) -> Read {
        use tcp::State;
        let mut n = 0;
        let sock = self.set.get_mut::<tcp::Socket<'static>>(self.handle);
        let reopens = sock.recv_queue() >= sock.recv_capacity() / 2;
        // The ring's contiguous parts, straight into the caller's (possibly uninitialized)
        // buffer: two at most.
        while buf.remaining() > 0 {
            let took = sock.recv(|ring| {
                let k = ring.len().min(buf.remaining());
                buf.put_slice(&ring[..k]);
                (k, k)
            });
            match took {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        if n == 0 && !self.tail.is_empty() {
            n = self.tail.len().min(buf.remaining());
            buf.put_slice(&self.tail[..n]);
            self.tail.advance(n);
        }
        if n > 0 {
            return Read::Data { n, reopens };
        }
        self.fin |= peer_finished(sock.state());
        match sock.state() {
            _ if self.fin => Read::End,
            State::Closed => Read::Reset,
            _ if buf.remaining() == 0 => Read::Data {
                n: 0,
                reopens: false,
            },
            _ => Read::Empty,
        }
    }
}

/// Whether the socket is in a state the peer's FIN put it in.
fn peer_finished(state: tcp::State) -> bool {
    use tcp::State;
    matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

/// Takes every byte queued in the socket (the ring's parts in order).
fn drain(sock: &mut tcp::Socket<'static>, mut each: impl FnMut(&[u8])) {
    while let Ok(1..) = sock.recv(|b| {
        each(b);
        (b.len(), b.len())
    }) {}
}
