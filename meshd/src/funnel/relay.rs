//! The bytes of one funnel stream, edge ⇄ local service, both ways at once in one task (like
//! `tokio::io::copy_bidirectional`), with what a reverse proxy needs when the service answers
//! before it has read the whole request:
//!
//! - The service closing its side (often with a reset: it left request bytes unread) fails the
//!   request direction's writes. That direction then reads the rest of the request and discards
//!   it; the response direction goes on untouched, so the answer reaches the edge whole. A failed
//!   read from the service (a reset after its answer) ends the response like an end of stream.
//! - Once the response has ended, a discarding request direction gets `linger` more (the ingress
//!   gives [`LINGER`]), for the edge to stop sending; then the stream ends.
//!
//! Either side's end of stream is passed on as a shutdown of the other's write side; a failed read
//! from the edge or a failed write to it ends the stream (there is no one left to answer).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long the rest of a request the service did not read is still taken (and dropped) after
/// the response ended.
pub const LINGER: Duration = Duration::from_secs(10);

/// Buffer sizes and the linger of one [`relay`].
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub request_buf: usize,
    pub response_buf: usize,
    pub linger: Duration,
}

/// Relays `edge` ⇄ `local` until both directions have ended (see the module's contract).
pub async fn relay<E, L>(edge: &mut E, local: &mut L, sizes: Sizes) -> io::Result<()>
where
    E: AsyncRead + AsyncWrite + Unpin + ?Sized,
    L: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut request = Half::new(sizes.request_buf, Role::Request);
    let mut response = Half::new(sizes.response_buf, Role::Response);
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        let up = request.poll_copy(cx, Pin::new(&mut *edge), Pin::new(&mut *local))?;
        let down = response.poll_copy(cx, Pin::new(&mut *local), Pin::new(&mut *edge))?;
        match (up, down) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            (Poll::Pending, Poll::Ready(())) if request.discarding => {
                let t = linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(sizes.linger)));
                t.as_mut().poll(cx).map(Ok)
            }
            _ => Poll::Pending,
        }
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Edge → service: read failures end the stream, write failures start discarding.
    Request,
    /// Service → edge: read failures end this direction, write failures end the stream.
    Response,
}

/// One direction: a buffer between a reader and a writer.
struct Half {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    /// The writer failed: what is read is dropped.
    discarding: bool,
    /// Written bytes not yet flushed.
    unflushed: bool,
    done: bool,
    role: Role,
}

impl Half {
    fn new(size: usize, role: Role) -> Self {
        Self {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            discarding: false,
            unflushed: false,
            done: false,
            role,
        }
    }

    fn write_failed(&mut self, e: io::Error) -> io::Result<()> {
        if self.role == Role::Response {
            return Err(e);
        }
        self.discarding = true;
        (self.pos, self.cap) = (0, 0);
        self.unflushed = false;
        Ok(())
    }

    /// Reads while there is room in the buffer, writes what it holds; like tokio's copy, with
    /// the roles' handling of failures (module docs) and the shutdown at the end.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if self.cap < self.buf.len() && !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf[self.cap..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        coop.made_progress();
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else if !self.discarding {
                            self.cap += n;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        coop.made_progress();
                        match self.role {
                            Role::Request => return Poll::Ready(Err(e)),
                            Role::Response => self.read_done = true,
                        }
                    }
                    Poll::Pending if self.pos == self.cap => {
                        if self.unflushed {
                            match ready!(w.as_mut().poll_flush(cx)) {
                                Ok(()) => self.unflushed = false,
                                Err(e) => self.write_failed(e)?,
                            }
                            coop.made_progress();
                        }
                        return Poll::Pending;
                    }
                    // Write what the buffer holds meanwhile.
                    Poll::Pending => {}
                }
            }
            while self.pos < self.cap {
                match ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap])) {
                    Ok(0) => self.write_failed(io::ErrorKind::WriteZero.into())?,
                    Ok(n) => {
                        self.pos += n;
                        self.unflushed = true;
                    }
                    Err(e) => self.write_failed(e)?,
                }
                coop.made_progress();
            }
            (self.pos, self.cap) = (0, 0);
            if self.read_done {
                if !self.discarding {
                    if let Err(e) = ready!(w.as_mut().poll_shutdown(cx)) {
                        self.write_failed(e)?;
                    }
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
