//! Mutation fuzzing of the response head parser and the chunked decoder ([`testkit::fuzz`]):
//! valid inputs are flipped, truncated, spliced and grown; each
//! must answer `Ok` or `Err`, never panic, and what is accepted must be self-consistent (a head
//! taken off leaves exactly what followed it; a chunked body decodes the same however its bytes
//! are split). Deterministic (fixed xorshift seed) and bounded.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use testkit::fuzz::{mutate, Rng};

use super::chunked_tests::decode;
use super::head::{take_response, Framing};

/// Tokens that steer the parsers into their branches.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b";",
    b",",
    b":",
    b" ",
    b"\t",
    b"0",
    b"ff",
    b"ffffffffffffffff1",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.0",
    b"\x00",
    b"\xff",
];

const HEADS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 301 Moved\r\nLocation: /x\r\nContent-Length: 7, 7\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
];

#[test]
fn mutated_response_heads_never_panic_and_accepted_ones_are_consistent() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for i in 0..40_000 {
        let input = mutate(&mut rng, HEADS[i % HEADS.len()], TOKENS);
        let to_head = rng.below(4) == 0;
        let mut buf = BytesMut::from(&input[..]);
        let max = if rng.below(8) == 0 { 40 } else { 64 * 1024 };
        match take_response(&mut buf, to_head, max) {
            Ok(Some(head)) => {
                let used = input.len() - buf.len();
                assert!(used <= max, "took {used} bytes, limit {max}");
                assert_eq!(&input[used..], &buf[..], "what follows the head stays");
                assert!(input[..used].ends_with(b"\n"));
                if let Framing::Length(n) = head.framing {
                    if n > 0 {
                        let lengths = head.headers.get_all("content-length");
                        for cl in &lengths {
                            let cl = cl.to_str().unwrap();
                            assert!(cl.split(',').all(|p| p.trim().parse() == Ok(n)), "{cl}");
                        }
                    }
                }
                if head.keep_alive {
                    assert_ne!(head.framing, Framing::UntilClose);
                }
            }
            Ok(None) => assert_eq!(&buf[..], &input[..], "an incomplete head is left whole"),
            Err(_) => {}
        }
    }
}

const BODIES: &[&[u8]] = &[
    b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
    b"1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nrest",
    b"ffffffff\r\nabc",
];

#[test]
fn mutated_chunked_bodies_never_panic_and_decode_alike_however_split() {
    let mut rng = Rng(0x0dd_c0de_5eed);
    for i in 0..20_000 {
        let input = mutate(&mut rng, BODIES[i % BODIES.len()], TOKENS);
        let whole = decode(&[&input]);
        let at = rng.below(input.len() + 1);
        let split = decode(&[&input[..at], &input[at..]]);
        match (&whole, &split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{input:?} split at {at}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "{input:?} split at {at}"),
            _ => panic!("{input:?} split at {at}: {whole:?} against {split:?}"),
        }
        if let Ok((body, _, _)) = &whole {
            assert!(body.len() <= input.len());
        }
    }
}
