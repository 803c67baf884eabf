//! A client's request body on its way to a node, and what becomes of its rest when an answer
//! comes first.
//!
//! A service may answer before it has read the whole request (a 401 or 413 to an upload, a page
//! that ignores the body), and the edge answers some requests itself without reading them. Once
//! the answer has ended, what the client still sends is of no use to anyone: it is no longer sent
//! over the mesh ([`Cut`]: the node's connection then fails its request and is closed), and the
//! edge reads and drops it for at most [`DISCARD_FOR`] ([`discard`]). Reading it to its end, not
//! resetting, is what lets every client (curl before 8 among them, on both HTTP/1.1 and HTTP/2)
//! see the answer rather than a failed upload; past the limit the body is dropped, which closes
//! an HTTP/1.1 connection or resets an HTTP/2 stream with `NO_ERROR` (RFC 9113, 8.1).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long the rest of a request nobody reads is still taken from the client.
pub const DISCARD_FOR: Duration = Duration::from_secs(10);

type Slot = Arc<Mutex<Option<Incoming>>>;

/// A request body for the node: the client's, until its [`Cut`] takes it away.
#[derive(Debug)]
pub(crate) struct Upload {
    /// `None` for a request without a body (nothing to cut).
    body: Option<Slot>,
    hint: SizeHint,
}

/// Takes a request's body away from the node's connection when dropped: its answer has ended (or
/// will not come). The rest of the body goes to [`discard`], and the node's connection fails its
/// request at its next read of the body (unless it had read it all).
#[derive(Debug)]
pub(crate) struct Cut(Slot);

/// Why the node's connection did not get the rest of a request body.
#[derive(Debug, thiserror::Error)]
#[error("the request's answer ended before its body: the rest is not sent")]
pub(crate) struct AnsweredEarly;

impl Upload {
    /// `body` for the node, and the handle that cuts it off (`None` when it is already empty).
    pub(crate) fn new(body: Incoming) -> (Self, Option<Cut>) {
        let hint = body.size_hint();
        if body.is_end_stream() {
            return (Self { body: None, hint }, None);
        }
        let slot: Slot = Arc::new(Mutex::new(Some(body)));
        let cut = Cut(slot.clone());
        (
            Self {
                body: Some(slot),
                hint,
            },
            Some(cut),
        )
    }
}

fn lock(slot: &Slot) -> MutexGuard<'_, Option<Incoming>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(slot) = &self.body else {
            return Poll::Ready(None);
        };
        match lock(slot).as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(Some(Err(AnsweredEarly.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(|slot| lock(slot).as_ref().is_some_and(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if let Some(body) = lock(&self.0).take() {
            discard(body);
        }
    }
}

/// Reads the rest of `body` and drops it, for at most [`DISCARD_FOR`], in a task of its own
/// (outside a runtime, as when one shuts down, it is dropped at once).
pub(crate) fn discard(body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut body = body;
        let _ = tokio::time::timeout(DISCARD_FOR, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}
