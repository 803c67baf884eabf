//! One HTTP/1.1 connection to a node's funnel ingress, driven by the task that makes the request:
//! [`Conn::round_trip`] writes a request head and reads the response head, and the response
//! body ([`Fetched`]) reads the connection when, and only when, the client's side polls it. No
//! task of its own, no channel between the request and its connection, one wake-up per arrival.
//!
//! Once its body has been read to the end, a connection the response left usable goes to the
//! `keep` function given to [`Fetched::new`] (the pool); a body dropped before that, a failure,
//! or a response that ends the connection (read until close, `Connection: close`, bytes past its
//! end) drops it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::chunked::{ChunkError, Chunked, Decoded};
use super::head::{self, Framing, Head, HeadError};
use crate::dial::Io;

/// Room made for a response head's first read.
const HEAD_READ: usize = 8 * 1024;
/// Most bytes read at once for a body.
const BODY_READ: usize = 64 * 1024;

/// A connection to a node's funnel, past the funnel handshake.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    /// Bytes read and not used yet.
    buf: BytesMut,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("the node closed the connection before answering")]
    Closed { partial: bool },
    #[error("{source}")]
    Io { source: io::Error, partial: bool },
    #[error(transparent)]
    Head(#[from] HeadError),
}

impl FetchError {
    /// Nothing of an answer came: on a kept connection, the node may have closed it while the
    /// request was on its way, and the request may be sent again on another.
    pub(crate) fn nothing_came(&self) -> bool {
        matches!(
            self,
            Self::Closed { partial: false } | Self::Io { partial: false, .. }
        )
    }
}

/// Why a response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the node closed the connection before the end of the response body")]
    Truncated,
    #[error("the response body's chunked coding is broken: {0}")]
    Chunk(#[from] ChunkError),
    #[error("reading the response body: {0}")]
    Io(#[from] io::Error),
}

impl Conn {
    pub(crate) fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether a kept connection can take a request: the node has neither closed it nor sent
    /// anything unasked. Does not wait.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Sends `request` (a whole request, [`head::write_request`]) and reads the response head;
    /// interim answers (1xx other than 101) are skipped. `to_head`: the request is HEAD.
    pub(crate) async fn round_trip(
        &mut self,
        request: &[u8],
        to_head: bool,
        max_head: usize,
    ) -> Result<Head, FetchError> {
        let io = |partial| move |source| FetchError::Io { source, partial };
        self.io.write_all(request).await.map_err(io(false))?;
        self.io.flush().await.map_err(io(false))?;
        let mut partial = false;
        loop {
            if !self.buf.is_empty() {
                partial = true;
                if let Some(h) = head::take_response(&mut self.buf, to_head, max_head)? {
                    if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    return Ok(h);
                }
            }
            self.buf.reserve(HEAD_READ);
            if self.io.read_buf(&mut self.buf).await.map_err(io(partial))? == 0 {
                return Err(FetchError::Closed { partial });
            }
        }
    }
}

/// What is left of a body.
#[derive(Debug)]
enum Left {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl Left {
    /// The body's next bytes from `buf`, if it holds any.
    fn take(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        match self {
            Self::Length(n) => {
                let k = usize::try_from(*n).unwrap_or(usize::MAX).min(buf.len());
                *n -= k as u64;
                if *n == 0 {
                    *self = Self::Done;
                }
                Ok((k > 0).then(|| buf.split_to(k).freeze()))
            }
            Self::Chunked(c) => loop {
                if buf.is_empty() {
                    return Ok(None);
                }
                match c.decode(buf)? {
                    Decoded::Data { framing, data } => {
                        buf.advance(framing);
                        return Ok(Some(buf.split_to(data).freeze()));
                    }
                    Decoded::More { framing } => buf.advance(framing),
                    Decoded::End { framing } => {
                        buf.advance(framing);
                        *self = Self::Done;
                        return Ok(None);
                    }
                }
            },
            Self::UntilClose => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
            Self::Done => Ok(None),
        }
    }

    /// How much room a read for the rest should make.
    fn read_size(&self) -> usize {
        match self {
            Self::Length(n) => usize::try_from(*n).unwrap_or(usize::MAX).min(BODY_READ),
            _ => BODY_READ,
        }
    }
}

/// A node's response body, read from its connection as it is polled; the connection goes to
/// `keep` once the body has ended, if the response left it usable.
pub(crate) struct Fetched<K: FnOnce(Conn)> {
    conn: Option<Conn>,
    left: Left,
    hint: SizeHint,
    keep_alive: bool,
    keep: Option<K>,
}

impl<K: FnOnce(Conn)> std::fmt::Debug for Fetched<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("left", &self.left)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl<K: FnOnce(Conn)> Fetched<K> {
    /// The body that `head` announced, on `conn`. A body of no bytes ends here and now.
    pub(crate) fn new(conn: Conn, head: &Head, keep: K) -> Self {
        let (left, hint) = match head.framing {
            Framing::Length(0) => (Left::Done, SizeHint::with_exact(0)),
            Framing::Length(n) => (Left::Length(n), SizeHint::with_exact(n)),
            Framing::Chunked => (Left::Chunked(Chunked::default()), SizeHint::new()),
            Framing::UntilClose => (Left::UntilClose, SizeHint::new()),
        };
        let mut body = Self {
            conn: Some(conn),
            left,
            hint,
            keep_alive: head.keep_alive,
            keep: Some(keep),
        };
        if matches!(body.left, Left::Done) {
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes back if nothing past the response came on it.
    fn finish(&mut self) {
        self.left = Left::Done;
        let (Some(conn), Some(keep)) = (self.conn.take(), self.keep.take()) else {
            return;
        };
        if self.keep_alive && conn.buf.is_empty() {
            keep(conn);
        }
    }

    fn fail(&mut self) {
        self.conn = None;
        self.left = Left::Done;
    }
}

impl<K: FnOnce(Conn) + Unpin> Body for Fetched<K> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let next = match this.left.take(&mut conn.buf) {
                Ok(next) => next,
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if matches!(this.left, Left::Done) {
                this.finish();
            }
            if let Some(data) = next {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // At most `read_size`: the buffer may have more room than was asked for (it keeps
            // the size of its first allocation), and a read fills all the room it is given.
            let want = this.left.read_size();
            conn.buf.reserve(want);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut (&mut conn.buf).limit(want)
            ));
            match read {
                Ok(0) if matches!(this.left, Left::UntilClose) => {
                    this.fail();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.fail();
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
