#![allow(clippy::unwrap_used)]

use super::chunked::{ChunkError, Chunked, Decoded, MAX_LINE, MAX_TRAILERS};

/// Decodes `pieces` as they would arrive, one after the other, the way the connection does: the
/// body's bytes, whether it ended, and what came after its end.
pub(super) fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
    let mut c = Chunked::default();
    let (mut body, mut pending) = (Vec::new(), Vec::new());
    for (i, piece) in pieces.iter().enumerate() {
        pending.extend_from_slice(piece);
        while !pending.is_empty() {
            match c.decode(&pending)? {
                Decoded::Data { framing, data } => {
                    assert!(data > 0);
                    body.extend_from_slice(&pending[framing..framing + data]);
                    pending.drain(..framing + data);
                }
                Decoded::More { framing } => {
                    assert_eq!(framing, pending.len());
                    pending.clear();
                }
                Decoded::End { framing } => {
                    pending.drain(..framing);
                    assert!(c.is_done());
                    pending.extend(pieces[i + 1..].iter().flat_map(|p| p.iter()));
                    return Ok((body, true, pending));
                }
            }
        }
    }
    Ok((body, false, pending))
}

const WIKI: &[u8] = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\nNEXT";

#[test]
fn a_chunked_body_is_its_chunks_data() {
    let (body, ended, rest) = decode(&[WIKI]).unwrap();
    assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
    assert!(ended);
    assert_eq!(rest, b"NEXT");
}

#[test]
fn split_anywhere_it_decodes_the_same() {
    let whole = decode(&[WIKI]).unwrap();
    for at in 0..=WIKI.len() {
        assert_eq!(
            decode(&[&WIKI[..at], &WIKI[at..]]).unwrap(),
            whole,
            "split at {at}"
        );
    }
    let bytes: Vec<&[u8]> = WIKI.chunks(1).collect();
    assert_eq!(decode(&bytes).unwrap(), whole);
}

#[test]
fn extensions_trailers_and_hex_case_are_read() {
    let raw = b"1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\nA \t;x\r\n0123456789\r\n0;last\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
    let (body, ended, rest) = decode(&[raw]).unwrap();
    assert_eq!(body, b"abcdefghijklmnopqrstuvwxyz0123456789");
    assert!(ended && rest.is_empty());
}

#[test]
fn an_unfinished_body_has_not_ended() {
    let (body, ended, _) = decode(&[b"5\r\nhel"]).unwrap();
    assert_eq!((body.as_slice(), ended), (&b"hel"[..], false));
    let (_, ended, _) = decode(&[b"5\r\nhello\r\n0\r\n"]).unwrap();
    assert!(!ended, "the trailer section's empty line is still to come");
}

#[test]
fn broken_codings_are_errors() {
    let cases: [(&[u8], ChunkError); 9] = [
        (b"g\r\n", ChunkError::Size),
        (b"\r\n", ChunkError::Size),
        (b";x\r\n", ChunkError::Size),
        (b"-1\r\n", ChunkError::Size),
        (b"1ffffffffffffffff\r\n", ChunkError::Overflow),
        (b"5\nhello", ChunkError::Size),
        (b"5\r\nhelloX\r\n", ChunkError::Delimiter),
        (b"5\r\nhello\rX", ChunkError::Delimiter),
        (b"0\r\nX-A: 1\n\r\n", ChunkError::Delimiter),
    ];
    for (raw, want) in cases {
        assert_eq!(
            decode(&[raw]).unwrap_err(),
            want,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let long = format!("1;{}\r\nx\r\n", "e".repeat(MAX_LINE));
    assert_eq!(
        decode(&[long.as_bytes()]).unwrap_err(),
        ChunkError::LongLine
    );
    let trailers = format!("0\r\nX-A: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
    assert_eq!(
        decode(&[trailers.as_bytes()]).unwrap_err(),
        ChunkError::LongTrailers
    );
}

#[test]
fn a_chunk_larger_than_the_input_comes_in_pieces() {
    let mut c = Chunked::default();
    assert_eq!(
        c.decode(b"ffffffffffffffff\r\nab").unwrap(),
        Decoded::Data {
            framing: 18,
            data: 2
        }
    );
    assert_eq!(
        c.decode(b"cd").unwrap(),
        Decoded::Data {
            framing: 0,
            data: 2
        }
    );
    assert!(!c.is_done());
}
