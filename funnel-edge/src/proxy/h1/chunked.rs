//! The chunked transfer coding of a node's response body, decoded without I/O (RFC 9112 §7.1).
//!
//! The decoder is fed whatever bytes have arrived and says how many of them are framing to drop
//! and how many that follow are body data; it keeps its place between calls, so the body may
//! arrive split anywhere. Chunk extensions and trailer fields are read and dropped. A size line
//! longer than [`MAX_LINE`], trailers beyond [`MAX_TRAILERS`] bytes, a size that does not fit in
//! 64 bits or a chunk not followed by CRLF is an error.

/// Longest chunk-size line, extensions included.
pub(crate) const MAX_LINE: usize = 4096;
/// Most bytes of trailer fields.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

/// What the front of the input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// `framing` bytes to drop, then `data` bytes of the body (at least one).
    Data { framing: usize, data: usize },
    /// All of the input is framing, to drop; the body goes on.
    More { framing: usize },
    /// The body ended after `framing` bytes; what follows is not the body's.
    End { framing: usize },
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("a chunk size is not a hexadecimal number")]
    Size,
    #[error("a chunk size does not fit in 64 bits")]
    Overflow,
    #[error("a chunk-size line is longer than {MAX_LINE} bytes")]
    LongLine,
    #[error("a chunk is not followed by CRLF")]
    Delimiter,
    #[error("trailer fields of more than {MAX_TRAILERS} bytes")]
    LongTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a size line: its value so far, whether a digit was seen, whether the digits ended
    /// (whitespace or an extension), bytes of the line so far.
    Size {
        value: u64,
        digits: bool,
        past: bool,
        line: usize,
    },
    /// The size line's CR seen.
    SizeLf {
        value: u64,
    },
    /// Bytes of the chunk still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: bytes so far, and whether at the start of a line.
    Trailers {
        seen: usize,
        line_start: bool,
    },
    /// A trailer line's CR seen; `last` when it ends the section (an empty line).
    TrailersLf {
        seen: usize,
        last: bool,
    },
    Done,
}

/// The decoder's place in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: false,
                past: false,
                line: 0,
            },
        }
    }
}

impl Chunked {
    /// Reads the front of `input`. Call again with what follows the bytes accounted for.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        if self.is_done() {
            return Ok(Decoded::End { framing: 0 });
        }
        let mut i = 0;
        while i < input.len() {
            if let State::Data(left) = self.state {
                let data = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                let left = left - data as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data(left)
                };
                return Ok(Decoded::Data { framing: i, data });
            }
            self.state = self.step(input[i])?;
            i += 1;
            if self.state == State::Done {
                return Ok(Decoded::End { framing: i });
            }
        }
        Ok(Decoded::More { framing: i })
    }

    /// Whether the body's end has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Size {
                value,
                digits,
                past,
                line,
            } => {
                if line >= MAX_LINE {
                    return Err(ChunkError::LongLine);
                }
                let line = line + 1;
                match b {
                    b'\r' if digits => State::SizeLf { value },
                    b'\r' => return Err(ChunkError::Size),
                    _ if past => State::Size {
                        value,
                        digits,
                        past,
                        line,
                    },
                    b';' | b' ' | b'\t' if digits => State::Size {
                        value,
                        digits,
                        past: true,
                        line,
                    },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(ChunkError::Size)?;
                        let value = value
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(u64::from(d)))
                            .ok_or(ChunkError::Overflow)?;
                        State::Size {
                            value,
                            digits: true,
                            past,
                            line,
                        }
                    }
                }
            }
            State::SizeLf { value } => match b {
                b'\n' if value == 0 => State::Trailers {
                    seen: 0,
                    line_start: true,
                },
                b'\n' => State::Data(value),
                _ => return Err(ChunkError::Delimiter),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::Delimiter),
            },
            State::DataLf => match b {
                b'\n' => Self::default().state,
                _ => return Err(ChunkError::Delimiter),
            },
            State::Trailers { seen, line_start } => {
                if seen >= MAX_TRAILERS {
                    return Err(ChunkError::LongTrailers);
                }
                match b {
                    b'\r' => State::TrailersLf {
                        seen: seen + 1,
                        last: line_start,
                    },
                    b'\n' => return Err(ChunkError::Delimiter),
                    _ => State::Trailers {
                        seen: seen + 1,
                        line_start: false,
                    },
                }
            }
            State::TrailersLf { seen, last } => match b {
                b'\n' if last => State::Done,
                b'\n' => State::Trailers {
                    seen: seen + 1,
                    line_start: true,
                },
                _ => return Err(ChunkError::Delimiter),
            },
            // Nothing is read past the end (`decode` stops there).
            State::Data(_) | State::Done => self.state,
        })
    }
}
