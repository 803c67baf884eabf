//! The netmap stream (`GET /v1/map`): one JSON [`MapMessage`] per `\n`-terminated line, kept open
//! indefinitely, with keepalive lines at least every 30 s.
//!
//! [`LineBuffer`] is the sans-IO part (bytes in, lines out, bounded); [`MapStream`] feeds it from
//! the response body and parses each line. After an error the stream is over: reconnect.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use proto::map::MapMessage;
use tokio::task::JoinHandle;

use super::conn::{hyper_error, Sender};
use super::{ControlError, Result};

/// Longest line accepted on the map stream; a longer one ends the stream with an error.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Silence after which the stream counts as dead: three missed keepalives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

const WHAT: &str = "GET /v1/map";

/// An open netmap stream; see [`MapStream::next`]. Dropping it closes the connection.
#[derive(Debug)]
pub struct MapStream {
    body: Incoming,
    lines: LineBuffer,
    finished: bool,
    /// Held so that the connection stays up while the body is read.
    _sender: Sender,
    task: JoinHandle<()>,
}

impl Drop for MapStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MapStream {
    pub(super) fn new(body: Incoming, sender: Sender, task: JoinHandle<()>) -> Self {
        Self {
            body,
            lines: LineBuffer::new(MAX_LINE_BYTES),
            finished: false,
            _sender: sender,
            task,
        }
    }

    /// The next message; `Ok(None)` once the coordinator ended the stream cleanly (or after an
    /// error was returned). Fails when a line is not a valid message or longer than
    /// [`MAX_LINE_BYTES`], when the stream ends mid-line, and after 90 s without a line.
    pub async fn next(&mut self) -> Result<Option<MapMessage>> {
        let result = self.read().await;
        if !matches!(result, Ok(Some(_))) {
            self.finished = true;
        }
        result
    }

    async fn read(&mut self) -> Result<Option<MapMessage>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(line) = self.lines.next_line().map_err(protocol)? {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| protocol(format!("invalid map message: {e}")));
            }
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, self.body.frame()).await {
                Err(_) => {
                    return Err(ControlError::Timeout {
                        what: "on the map stream (keepalives stopped)",
                        after: IDLE_TIMEOUT,
                    })
                }
                Ok(None) => return self.lines.finish().map(|()| None).map_err(protocol),
                Ok(Some(frame)) => frame.map_err(hyper_error)?,
            };
            if let Ok(data) = frame.into_data() {
                self.lines.push(&data);
            }
        }
    }
}

fn protocol(reason: impl ToString) -> ControlError {
    ControlError::Protocol {
        what: WHAT.to_owned(),
        reason: reason.to_string(),
    }
}

/// Splits a byte stream into `\n`-terminated lines of at most `max` bytes.
/// An emptied buffer larger than this is replaced by a new one.
const SHRINK_ABOVE: usize = 64 * 1024;

#[derive(Debug)]
pub(super) struct LineBuffer {
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`.
    scanned: usize,
    max: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum LineError {
    #[error("a line is longer than {0} bytes")]
    TooLong(usize),
    #[error("the stream ended in the middle of a line")]
    Truncated,
}

impl LineBuffer {
    pub(super) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max,
        }
    }

    pub(super) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line without its `\n` (or `\r\n`), if one is buffered.
    pub(super) fn next_line(&mut self) -> Result<Option<Bytes>, LineError> {
        let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(LineError::TooLong(self.max));
            }
            return Ok(None);
        };
        let end = self.scanned + i;
        self.scanned = 0;
        let mut line = self.buf.split_to(end + 1);
        line.truncate(if line.ends_with(b"\r\n") {
            end - 1
        } else {
            end
        });
        if line.len() > self.max {
            return Err(LineError::TooLong(self.max));
        }
        // A full map can be megabytes; an emptied buffer would keep that allocation for the
        // stream's whole life (thousands of streams in one process add up). Start afresh.
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::new();
        }
        Ok(Some(line.freeze()))
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Checks that the stream did not end in the middle of a line.
    pub(super) fn finish(&self) -> Result<(), LineError> {
        if self.buf.trim_ascii().is_empty() {
            Ok(())
        } else {
            Err(LineError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_splits_anywhere() {
        let input = b"one\ntwo\r\n\nthree\n";
        for cut in 0..=input.len() {
            let mut lines = LineBuffer::new(16);
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                lines.push(part);
                while let Some(line) = lines.next_line().unwrap() {
                    got.push(String::from_utf8(line.to_vec()).unwrap());
                }
            }
            assert_eq!(got, ["one", "two", "", "three"], "cut at {cut}");
            lines.finish().unwrap();
        }
    }

    #[test]
    fn line_buffer_limits() {
        let mut lines = LineBuffer::new(4);
        lines.push(b"abcd\nabc");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(&b"abcd"[..]));
        assert_eq!(lines.next_line().unwrap(), None);
        assert_eq!(lines.finish(), Err(LineError::Truncated));
        lines.push(b"de");
        assert_eq!(lines.next_line(), Err(LineError::TooLong(4)));
        let mut lines = LineBuffer::new(4);
        lines.push(b"abcde\n");
        assert_eq!(lines.next_line(), Err(LineError::TooLong(4)));
    }

    #[test]
    fn a_big_line_does_not_pin_its_buffer() {
        let mut lines = LineBuffer::new(8 << 20);
        let big = vec![b'x'; 2 << 20];
        lines.push(&big);
        lines.push(b"\n");
        let line = lines.next_line().unwrap().unwrap();
        assert_eq!(line.len(), 2 << 20);
        assert!(
            lines.capacity() <= SHRINK_ABOVE,
            "kept {} bytes",
            lines.capacity()
        );
        lines.push(b"small\n");
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(&b"small"[..]));
    }
}
