//! Datagrams waiting to be sent, grouped for UDP segmentation offload. The core emits encrypted
//! datagrams one at a time; a run of equal-size datagrams to one destination (the last may be
//! shorter) leaves as a single `sendmsg` with `UDP_SEGMENT`. Sans-IO: the driver pushes, then
//! takes [`Outbox::groups`] and sends each.

use std::net::SocketAddr;
use std::ops::Range;

/// The most bytes one segmented send may carry (an IP payload is at most 64 KiB).
pub const MAX_GROUP_BYTES: usize = 65_000;

/// Datagrams in the order the core emitted them, stored back to back.
#[derive(Debug, Default)]
pub struct Outbox {
    data: Vec<u8>,
    items: Vec<(SocketAddr, Range<usize>)>,
}

/// One send: `data[range]` to `to`, cut every `segment` bytes (the last piece may be shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub to: SocketAddr,
    pub range: Range<usize>,
    pub segment: usize,
    pub count: usize,
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(datagram);
        self.items.push((to, start..self.data.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    /// The sends, in order: maximal runs of consecutive datagrams to one destination with one
    /// size, at most `max_segments` datagrams and [`MAX_GROUP_BYTES`] each; a shorter datagram
    /// ends a run (it may be its last segment).
    pub fn groups(&self, max_segments: usize) -> Vec<Group> {
        let max_segments = max_segments.max(1);
        let mut out: Vec<Group> = Vec::new();
        let mut open = false;
        for (to, range) in &self.items {
            let len = range.len();
            if open {
                if let Some(g) = out.last_mut() {
                    let fits = g.to == *to
                        && g.range.end == range.start
                        && len <= g.segment
                        && g.count < max_segments
                        && g.range.len() + len <= MAX_GROUP_BYTES;
                    if fits {
                        g.range.end = range.end;
                        g.count += 1;
                        // Only a full-size segment may be followed by another.
                        open = len == g.segment;
                        continue;
                    }
                }
            }
            out.push(Group {
                to: *to,
                range: range.clone(),
                segment: len,
                count: 1,
            });
            open = len > 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn shape(b: &Outbox, max: usize) -> Vec<(u16, usize, usize)> {
        b.groups(max)
            .iter()
            .map(|g| (g.to.port(), g.segment, g.count))
            .collect()
    }

    #[test]
    fn equal_sizes_to_one_destination_make_one_group() {
        let mut b = Outbox::default();
        for _ in 0..10 {
            b.push(addr(1), &[7; 1452]);
        }
        b.push(addr(1), &[7; 300]);
        assert_eq!(shape(&b, 64), vec![(1, 1452, 11)]);
        let g = &b.groups(64)[0];
        assert_eq!(g.range, 0..10 * 1452 + 300);
    }

    #[test]
    fn a_shorter_datagram_ends_the_group() {
        let mut b = Outbox::default();
        b.push(addr(1), &[0; 100]);
        b.push(addr(1), &[0; 50]);
        b.push(addr(1), &[0; 50]);
        assert_eq!(shape(&b, 64), vec![(1, 100, 2), (1, 50, 1)]);
    }

    #[test]
    fn a_larger_datagram_or_another_destination_starts_a_group() {
        let mut b = Outbox::default();
        b.push(addr(1), &[0; 100]);
        b.push(addr(1), &[0; 200]);
        b.push(addr(2), &[0; 200]);
        b.push(addr(1), &[0; 200]);
        assert_eq!(
            shape(&b, 64),
            vec![(1, 100, 1), (1, 200, 1), (2, 200, 1), (1, 200, 1)]
        );
    }

    #[test]
    fn limits_on_segments_and_bytes() {
        let mut b = Outbox::default();
        for _ in 0..100 {
            b.push(addr(1), &[0; 1000]);
        }
        assert_eq!(
            shape(&b, 30),
            vec![(1, 1000, 30), (1, 1000, 30), (1, 1000, 30), (1, 1000, 10)]
        );
        // 65 datagrams of 1000 bytes fit MAX_GROUP_BYTES, the 66th does not.
        assert_eq!(shape(&b, 128), vec![(1, 1000, 65), (1, 1000, 35)]);
        assert_eq!(shape(&b, 1).len(), 100);
    }

    #[test]
    fn groups_cover_every_byte_in_order() {
        let mut b = Outbox::default();
        let mut expect = Vec::new();
        let mut x = 0x9e37_79b9_u32;
        for i in 0..500u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = [1452usize, 1452, 1452, 92, 148][(x % 5) as usize];
            let port = 1 + (x >> 8) as u16 % 2;
            let d = vec![i as u8; len];
            b.push(addr(port), &d);
            expect.push((port, d));
        }
        let mut got = Vec::new();
        for g in b.groups(64) {
            let bytes = &b.data()[g.range.clone()];
            let pieces: Vec<&[u8]> = bytes.chunks(g.segment).collect();
            assert_eq!(pieces.len(), g.count);
            for p in pieces {
                got.push((g.to.port(), p.to_vec()));
            }
        }
        assert_eq!(got, expect);
        b.clear();
        assert!(b.is_empty() && b.groups(64).is_empty());
    }
}
