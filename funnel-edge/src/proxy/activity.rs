//! What a client connection is doing, for its timeouts: when a byte last went either way, how
//! many requests are being answered, and since when a request head has been arriving.
//!
//! HTTP/1.1 has two timeouts, as nginx's `client_header_timeout` and `keepalive_timeout`: a
//! request head must arrive whole within the header timeout from its first byte (or from the
//! connection's start, for the first request), and a connection with no bytes either way for
//! the idle timeout is closed. hyper's own header timer cannot be used for the first: it runs
//! from the moment hyper waits for a head, so it also closed every keep-alive connection idle
//! between two requests for longer than the header timeout, well before the idle timeout, and
//! a client reusing such a connection raced its close.
//!
//! [`Tracked`] wraps the connection's stream and notes the bytes; [`Activity::answering`] marks
//! a request from its head until its response body ends; [`Activity::due`] says which timeout
//! comes next. No timers here: the connection's task sleeps until `due`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Body, BoxError};

/// A connection's activity, shared by its stream, its requests and its task. Times are kept as
/// milliseconds since the connection started (atomics, no lock on the data path).
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Requests whose response has not ended.
    answering: AtomicUsize,
    /// When the first byte of the awaited request head arrived, plus one; 0 while no head is
    /// awaited with bytes of it in (or while requests are being answered).
    head_ms: AtomicU64,
    /// Bytes came while requests were answered: a request body, or the next head sent ahead
    /// (pipelined), whose header timeout then starts when the last answer ends.
    read_while_answering: AtomicBool,
}

/// Which timeout [`Activity::due`] found next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// No byte either way for the idle timeout.
    Idle,
    /// A request head still incomplete after the header timeout.
    Head,
}

impl Activity {
    /// A new connection: its first request head is awaited from now on (`head_timeout` counts
    /// from the start, as a silent client's connection must not stay open for the idle timeout).
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            answering: AtomicUsize::new(0),
            head_ms: AtomicU64::new(1),
            read_while_answering: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A byte went one way or the other.
    pub(super) fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes came from the client: while no request is being answered they are a request head
    /// beginning, and its header timeout starts (unless it already runs).
    fn received(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.answering.load(Ordering::Relaxed) == 0 {
            self.head_begins(now);
        } else {
            self.read_while_answering.store(true, Ordering::Relaxed);
        }
    }

    /// Starts the header timeout at `now` unless it runs already.
    fn head_begins(&self, now: u64) {
        let _ = self.head_ms.compare_exchange(
            0,
            now.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When a byte last went either way.
    pub(super) fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// A request head arrived whole: the header timeout stops until the request is answered.
    /// The response's body must be wrapped by the returned guard's [`Answering::body`].
    pub(super) fn answering(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::Relaxed);
        self.head_ms.store(0, Ordering::Relaxed);
        self.read_while_answering.store(false, Ordering::Relaxed);
        Answering {
            activity: Some(self.clone()),
        }
    }

    /// The next timeout and when it falls: the idle timeout from the last byte, or the header
    /// timeout from a head's first byte if that comes first (`head_timeout` None: HTTP/2, which
    /// has none of its own here).
    pub(super) fn due(&self, idle: Duration, head_timeout: Option<Duration>) -> (Instant, Due) {
        let idle_at = (self.last() + idle, Due::Idle);
        let head_ms = self.head_ms.load(Ordering::Relaxed);
        match head_timeout {
            Some(t) if head_ms != 0 && self.answering.load(Ordering::Relaxed) == 0 => {
                let head_at = self.start + Duration::from_millis(head_ms - 1) + t;
                if head_at < idle_at.0 {
                    (head_at, Due::Head)
                } else {
                    idle_at
                }
            }
            _ => idle_at,
        }
    }
}

/// A request being answered; ends when the response body it wraps ends or is dropped.
#[derive(Debug)]
pub(super) struct Answering {
    activity: Option<Arc<Activity>>,
}

impl Answering {
    /// `body`, which ends the request when it ends.
    pub(super) fn body(self, body: Body) -> Body {
        http_body_util::BodyExt::boxed_unsync(Answered {
            body,
            end: Some(self),
        })
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if let Some(a) = self.activity.take() {
            let last = a.answering.fetch_sub(1, Ordering::Relaxed) == 1;
            // What came meanwhile may be the start of the next head (or all of it, which
            // hyper then takes at once): the header timeout covers it from now on.
            if last && a.read_while_answering.swap(false, Ordering::Relaxed) {
                a.head_begins(a.now_ms());
            }
        }
    }
}

/// A response body with its request's [`Answering`], ended when the body ends or is dropped.
struct Answered {
    body: Body,
    end: Option<Answering>,
}

impl HttpBody for Answered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.end = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A stream that records in its [`Activity`] the bytes that go through it.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(120);
    const HEAD: Option<Duration> = Some(Duration::from_secs(30));

    #[test]
    fn bytes_that_came_during_an_answer_are_timed_as_a_head_when_it_ends() {
        let a = Arc::new(Activity::new());
        let first = a.answering();
        let second = a.answering(); // pipelined
        a.received();
        assert_eq!(
            a.due(IDLE, HEAD).1,
            Due::Idle,
            "no head timer while answering"
        );
        drop(first);
        assert_eq!(a.due(IDLE, HEAD).1, Due::Idle);
        drop(second);
        assert_eq!(a.due(IDLE, HEAD).1, Due::Head);
    }

    #[test]
    fn the_first_head_is_timed_from_the_start_and_http2_has_no_head_timeout() {
        let a = Activity::new();
        assert_eq!(
            a.due(IDLE, HEAD),
            (a.start + Duration::from_secs(30), Due::Head)
        );
        assert_eq!(a.due(IDLE, None), (a.start + IDLE, Due::Idle));
    }

    #[test]
    fn between_requests_only_the_idle_timeout_runs_until_a_head_begins() {
        let a = Arc::new(Activity::new());
        a.received();
        drop(a.answering());
        assert_eq!(a.due(IDLE, HEAD).1, Due::Idle, "idle keep-alive connection");
        a.received();
        let (at, due) = a.due(IDLE, HEAD);
        assert_eq!(due, Due::Head);
        assert!(at > a.start + Duration::from_secs(29), "{at:?}");
        // More bytes of the same head do not restart it.
        let before = a.head_ms.load(Ordering::Relaxed);
        a.received();
        assert_eq!(a.head_ms.load(Ordering::Relaxed), before);
    }
}
