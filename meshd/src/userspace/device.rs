//! The userspace stack's network "device": two bounded packet queues. `rx` is filled by the
//! WireGuard core through [`Sink::deliver`] (decrypted, checked packets from peers) and drained by
//! smoltcp; `tx` is filled by smoltcp and drained by the driver into `Peers::handle_outbound`,
//! which gives each buffer back ([`QueueDevice::recycle`]): packet buffers are reused, not
//! allocated per packet. No I/O here.
//!
//! Checksums are computed on what the stack sends but not verified on what it receives: every
//! received packet was decrypted and authenticated by the WireGuard core (as Linux's WireGuard
//! marks its packets' checksums as already checked).
//!
//! A TCP segment that continues the last one queued is joined to it ([`super::coalesce`]): the
//! stack takes a run of a flow's segments in a few parts instead of one by one (see
//! [`QueueDevice::receive`]). The queue's bound counts the segments.

use std::collections::VecDeque;
use std::net::SocketAddr;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::coalesce::{Run, JOINED_MAX};
use crate::packet::{self, PacketInfo, Transport};

/// Packets queued each way before more are dropped (as a congested link would).
pub const QUEUE: usize = 1024;
/// Spare packet buffers kept for reuse, each way: as many as a queue holds. The driver reads
/// datagrams until `RX_BACKLOG` packets wait, and one read can carry hundreds more: with fewer
/// spares than that, every burst allocated (and zeroed) buffers for its excess and freed them after
/// (malloc, memset and free were ~4 % of the edge's CPU for 1 MiB responses).
const SPARE: usize = QUEUE;
/// Spare buffers of joined packets ([`JOINED_MAX`] each) kept for reuse.
const JOINED_SPARE: usize = 256;

/// A queue-backed IP device (no link layer) with the mesh MTU.
#[derive(Debug)]
pub struct QueueDevice {
    pub rx: VecDeque<RxPacket>,
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Packets dropped because a queue was full.
    pub dropped: u64,
    /// Segments in `rx`, joined ones counted one by one.
    backlog: usize,
    /// Segments joined to the one before them.
    pub joined: u64,
    rx_spare: Vec<Vec<u8>>,
    rx_joined: Vec<Vec<u8>>,
    tx_spare: Vec<Vec<u8>>,
    /// Where the next received packet is written ([`QueueDevice::rx_room`]).
    room: Vec<u8>,
}

/// A received packet: the first `len` bytes of `buf`. The buffer keeps the largest length it
/// has had, so reusing it for a bigger packet than its last one does not zero it again.
#[derive(Debug)]
pub struct RxPacket {
    buf: Vec<u8>,
    /// Where the packet starts in `buf` (past 0 for the last segment of a joined one).
    start: usize,
    len: usize,
    segment: Option<Segment>,
    /// The run later segments may join, if any.
    run: Option<Run>,
    /// Segments joined in this packet.
    segments: usize,
    /// Payload bytes of the first and the last segment joined.
    first: usize,
    last: usize,
    /// How the stack takes the packet.
    split: Split,
}

/// How a packet reaches the stack: a joined one in parts (see [`QueueDevice::receive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// As it is.
    Whole,
    /// Its first segment's bytes, then as [`Split::AfterFirst`].
    First,
    /// What follows the first segment: as [`Split::Rest`], or, if the stack answered the first
    /// at once (it was out of order), as [`Split::Singles`] of [`SINGLES`].
    AfterFirst,
    /// A segment's worth of bytes, this many times, then as [`Split::Rest`].
    Singles(u8),
    /// All but the last segment's bytes, then the last.
    Rest,
}

/// Segments a run that arrived out of order gives the stack one by one after its first: with
/// the first, the last and the rest, seven duplicate acknowledgements at most, where the sender
/// resends at three (smoltcp: at three after the one that changed the window it knew, so four).
const SINGLES: u8 = 3;

impl RxPacket {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Whose TCP segment this is, from the parse the packet filter made.
    pub fn segment(&self) -> Option<Segment> {
        self.segment
    }
}

/// A received TCP segment's connection, seen from the stack: (local, remote) ends, and whether
/// the segment is an initial SYN (which may open a connection to a listening port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub ends: (SocketAddr, SocketAddr),
    pub initial_syn: bool,
}

impl Segment {
    /// The segment a parsed packet is, if it is TCP. `None` for anything else (a later fragment
    /// parses with no transport header): such packets go to no connection's socket.
    pub fn of(info: &PacketInfo) -> Option<Segment> {
        let Transport::Tcp {
            src_port,
            dst_port,
            flags,
        } = info.transport
        else {
            return None;
        };
        Some(Segment {
            ends: (
                SocketAddr::new(info.dst, dst_port),
                SocketAddr::new(info.src, src_port),
            ),
            initial_syn: flags.is_initial_syn(),
        })
    }

    /// Parses `packet` (for packets that did not come through the packet filter).
    pub fn parse(packet: &[u8]) -> Option<Segment> {
        Segment::of(&packet::parse(packet).ok()?)
    }
}

impl QueueDevice {
    pub fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            dropped: 0,
            backlog: 0,
            joined: 0,
            rx_spare: Vec::new(),
            rx_joined: Vec::new(),
            tx_spare: Vec::new(),
            room: Vec::new(),
        }
    }

    /// Queues a copy of a packet for the stack, with what is known of it (`Segment::parse` if
    /// nothing); false (and counted) when the queue is full.
    pub fn push_rx(&mut self, packet: &[u8], segment: Option<Segment>) -> bool {
        self.rx_room(packet.len())[..packet.len()].copy_from_slice(packet);
        self.push_room(packet.len(), segment)
    }

    /// The buffer the next received packet is written into, at least `len` bytes: the
    /// WireGuard core decrypts into it, and [`push_room`](Self::push_room) queues it.
    pub fn rx_room(&mut self, len: usize) -> &mut [u8] {
        if self.room.is_empty() {
            self.room = self.rx_spare.pop().unwrap_or_default();
        }
        if self.room.len() < len {
            // A whole MTU at once: a buffer first used for a small packet is not grown again.
            self.room.resize(len.max(self.mtu), 0);
        }
        &mut self.room
    }

    /// Queues the first `len` bytes of the room for the stack, joined to the last packet queued
    /// if it continues it; false (and counted) when the queue is full, and the room is written
    /// over by the next packet.
    pub fn push_room(&mut self, len: usize, segment: Option<Segment>) -> bool {
        if self.backlog >= QUEUE {
            self.dropped += 1;
            return false;
        }
        self.backlog += 1;
        let len = len.min(self.room.len());
        let run = segment.and_then(|_| Run::of(&self.room[..len]));
        if run.is_some_and(|run| self.join(run)) {
            // The room stays, for the next packet.
            return true;
        }
        let buf = std::mem::take(&mut self.room);
        self.rx.push_back(RxPacket {
            buf,
            start: 0,
            len,
            segment,
            run,
            segments: 1,
            first: 0,
            last: 0,
            split: Split::Whole,
        });
        true
    }

    /// Joins the packet in the room (whose run is `next`) to the last one queued, if it
    /// continues it. The first join moves that packet into a buffer of [`JOINED_MAX`].
    fn join(&mut self, next: Run) -> bool {
        let Some(back) = self.rx.back_mut() else {
            return false;
        };
        let Some(run) = back.run else {
            return false;
        };
        let packet = &self.room[..next.len()];
        if !run.continued_by(back.bytes(), packet, &next) {
            return false;
        }
        if back.buf.capacity() < JOINED_MAX {
            let mut joined = self
                .rx_joined
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(JOINED_MAX));
            joined.clear();
            joined.extend_from_slice(&back.buf[..run.len()]);
            keep_spare(&mut self.rx_spare, std::mem::replace(&mut back.buf, joined));
        }
        if back.split == Split::Whole {
            (back.first, back.split) = (run.payload_len(), Split::First);
        }
        let joined = run.join(&mut back.buf, packet, &next);
        back.len = joined.len();
        back.last = next.payload_len();
        back.run = Some(joined);
        back.segments += 1;
        self.joined += 1;
        true
    }

    /// The stack answered the first segment of a joined packet at once: it was out of order (a
    /// segment before it was lost), or filled a gap. The next few go to the stack one by one, so
    /// that the sender gets the duplicate acknowledgements it resends on; a run taken in three
    /// parts would draw three, which a sender may need four of (then, at the end of a response,
    /// it waits for its retransmission timeout, 1 s in smoltcp).
    pub fn answered(&mut self) {
        // Only the rest of the packet just taken is `AfterFirst` (it goes back to the front).
        if let Some(p) = self.rx.front_mut() {
            if p.split == Split::AfterFirst {
                p.split = Split::Singles(SINGLES);
            }
        }
    }

    /// Segments waiting for the stack (a joined packet counts each of its own).
    pub fn backlog(&self) -> usize {
        self.backlog
    }

    /// Takes back a buffer of a packet taken from `tx`, for a later one.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        keep_spare(&mut self.tx_spare, buf);
    }
}

fn keep_spare(spare: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if spare.len() < SPARE {
        spare.push(buf);
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let mut packet = self.rx.pop_front()?;
        // The rest of a joined packet (past its start) was counted off with its first part.
        if packet.start == 0 {
            self.backlog -= packet.segments;
        }
        // A joined packet reaches the stack in parts: its first segment, the others but the
        // last, and the last. smoltcp acknowledges a second segment that arrives while an
        // acknowledgement is owed at once, and delays (by its ACK delay) one that arrives alone,
        // however long: a sender whose whole window arrived as one would wait for that delay.
        // After a lost segment, more parts (see `answered`).
        let keep = packet.run.and_then(|run| {
            let payload = run.payload_len();
            let keep = match packet.split {
                Split::Whole => 0,
                Split::First | Split::Singles(_) => packet.first,
                Split::AfterFirst | Split::Rest => payload.saturating_sub(packet.last),
            };
            (keep > 0 && keep < payload).then_some((run, keep))
        });
        let requeue = match keep {
            Some((run, keep)) => {
                packet.len = run.cut(&mut packet.buf[packet.start..], keep);
                Some(&mut self.rx)
            }
            None => None,
        };
        Some((
            RxToken {
                packet,
                requeue,
                spare: &mut self.rx_spare,
                joined: &mut self.rx_joined,
            },
            TxToken {
                queue: &mut self.tx,
                dropped: &mut self.dropped,
                spare: &mut self.tx_spare,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() >= QUEUE {
            // Tell smoltcp the link is busy: it keeps the data and retries on the next poll.
            return None;
        }
        Some(TxToken {
            queue: &mut self.tx,
            dropped: &mut self.dropped,
            spare: &mut self.tx_spare,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.checksum = authenticated();
        caps
    }
}

/// Compute every checksum on transmit, verify none on receive (see the module's comment).
fn authenticated() -> ChecksumCapabilities {
    let mut c = ChecksumCapabilities::default();
    c.ipv4 = Checksum::Tx;
    c.udp = Checksum::Tx;
    c.tcp = Checksum::Tx;
    c.icmpv4 = Checksum::Tx;
    c.icmpv6 = Checksum::Tx;
    c
}

#[derive(Debug)]
pub struct RxToken<'a> {
    packet: RxPacket,
    /// For a part of a joined packet: where the rest goes back, to be next.
    requeue: Option<&'a mut VecDeque<RxPacket>>,
    spare: &'a mut Vec<Vec<u8>>,
    joined: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.packet.bytes());
        let mut packet = self.packet;
        if let (Some(rx), Some(run)) = (self.requeue, packet.run) {
            let (start, rest) = run.rest(&mut packet.buf[packet.start..], packet.len);
            packet.start += start;
            packet.len = rest.len();
            packet.run = Some(rest);
            packet.split = match packet.split {
                Split::First => Split::AfterFirst,
                Split::Singles(n) if n > 1 => Split::Singles(n - 1),
                Split::Whole => Split::Whole,
                _ => Split::Rest,
            };
            rx.push_front(packet);
            return r;
        }
        let buf = packet.buf;
        if buf.capacity() < JOINED_MAX {
            keep_spare(self.spare, buf);
        } else if self.joined.len() < JOINED_SPARE {
            self.joined.push(buf);
        }
        r
    }
}

#[derive(Debug)]
pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    dropped: &'a mut u64,
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        // `receive` hands out a TxToken without checking room (smoltcp may answer a packet).
        if self.queue.len() < QUEUE * 2 {
            self.queue.push_back(buf);
        } else {
            *self.dropped += 1;
            keep_spare(self.spare, buf);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device as _, RxToken as _, TxToken as _};

    #[test]
    fn queues_are_bounded_and_fifo() {
        let mut d = QueueDevice::new(1420);
        assert!(d.push_rx(&[1], None));
        assert!(d.push_rx(&[2], None));
        let (rx, _) = d.receive(Instant::ZERO).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), vec![1]);
        for _ in 1..QUEUE {
            assert!(d.push_rx(&[0], None));
        }
        assert!(!d.push_rx(&[9], None));
        assert_eq!(d.dropped, 1);
        for _ in 0..QUEUE {
            let tx = d.transmit(Instant::ZERO).unwrap();
            tx.consume(3, |b| b.copy_from_slice(&[7, 7, 7]));
        }
        assert!(d.transmit(Instant::ZERO).is_none());
        assert_eq!(d.tx.pop_front().unwrap(), vec![7, 7, 7]);
        assert_eq!(d.capabilities().max_transmission_unit, 1420);
    }

    #[test]
    fn packet_buffers_are_reused() {
        let mut d = QueueDevice::new(1420);
        d.push_rx(&[1; 1400], None);
        let first = d.rx[0].bytes().as_ptr();
        let (rx, _) = d.receive(Instant::ZERO).unwrap();
        rx.consume(|_| ());
        d.push_rx(&[2; 60], None);
        assert_eq!(d.rx[0].bytes().as_ptr(), first);
        assert_eq!(d.rx[0].bytes(), [2; 60]);
        // Written in place: the room is the buffer that gets queued.
        let (rx, _) = d.receive(Instant::ZERO).unwrap();
        rx.consume(|_| ());
        let room = d.rx_room(1400);
        assert_eq!(room.as_ptr(), first);
        room[..3].copy_from_slice(&[4, 5, 6]);
        assert!(d.push_room(3, None));
        assert_eq!(d.rx[0].bytes(), [4, 5, 6]);

        d.transmit(Instant::ZERO)
            .unwrap()
            .consume(1400, |b| b.fill(3));
        let sent = d.tx.pop_front().unwrap();
        let ptr = sent.as_ptr();
        d.recycle(sent);
        d.transmit(Instant::ZERO).unwrap().consume(40, |b| {
            assert!(b.iter().all(|&x| x == 0), "a reused buffer is zeroed")
        });
        assert_eq!(d.tx[0].as_ptr(), ptr);
        assert_eq!(d.tx[0].len(), 40);
    }

    #[test]
    fn a_full_queue_of_buffers_is_kept_for_the_next_burst() {
        let mut d = QueueDevice::new(1420);
        // First used for a small packet, a buffer still takes a full-size one in place.
        d.push_rx(&[1; 60], None);
        let first = d.rx[0].bytes().as_ptr();
        d.receive(Instant::ZERO).unwrap().0.consume(|_| ());
        d.push_rx(&[2; 1420], None);
        assert_eq!(d.rx[0].bytes().as_ptr(), first);
        d.receive(Instant::ZERO).unwrap().0.consume(|_| ());

        let burst = |d: &mut QueueDevice| {
            for _ in 0..QUEUE {
                assert!(d.push_rx(&[3; 1400], None));
            }
            let mut seen = std::collections::HashSet::new();
            while let Some((rx, _)) = d.receive(Instant::ZERO) {
                seen.insert(rx.consume(|b| b.as_ptr() as usize));
            }
            seen
        };
        let before = burst(&mut d);
        assert_eq!(
            burst(&mut d),
            before,
            "the second burst reuses the first one's buffers"
        );
    }

    /// A data segment of the flow 100.64.0.2:8080 → 100.64.0.1:`port`.
    fn data(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = packet::build::tcp_v4(
            [100, 64, 0, 2].into(),
            [100, 64, 0, 1].into(),
            8080,
            port,
            packet::TcpFlags::ACK,
            payload,
        );
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p
    }

    fn push(d: &mut QueueDevice, p: &[u8]) -> bool {
        d.push_rx(p, Segment::parse(p))
    }

    /// The sequence number, IPv4 header checksum's validity and payload of a packet.
    fn seq_ok_payload(p: &[u8]) -> (u32, bool, Vec<u8>) {
        let ip = smoltcp::wire::Ipv4Packet::new_checked(p).unwrap();
        assert_eq!(usize::from(ip.total_len()), p.len());
        let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        (seq, ip.verify_checksum(), p[40..].to_vec())
    }

    #[test]
    fn a_flows_run_is_queued_as_one_packet_and_taken_in_parts() {
        let mut d = QueueDevice::new(1420);
        let pushes = [
            (80, 1),
            (80, 1001),
            (80, 2001),
            (80, 3001),
            (81, 1),
            (80, 4001),
        ];
        for (port, seq) in pushes {
            assert!(push(&mut d, &data(port, seq, &[seq as u8; 1000])));
        }
        let sizes: Vec<usize> = d.rx.iter().map(|p| p.bytes().len()).collect();
        assert_eq!(sizes, [4040, 1040, 1040], "another flow ends a run");
        assert_eq!((d.backlog(), d.joined), (6, 3));
        // The stack takes the run's first segment, then the others but the last, then the last.
        let take = |d: &mut QueueDevice| {
            let (rx, _) = d.receive(Instant::ZERO).unwrap();
            rx.consume(|b| b.to_vec())
        };
        let first = take(&mut d);
        assert_eq!(d.backlog(), 2);
        assert_eq!(seq_ok_payload(&first), (1, true, vec![1; 1000]));
        assert_eq!(Segment::parse(&first), Segment::parse(&data(80, 1, &[])));
        assert_eq!(
            d.rx.front().map(|p| p.segment),
            Some(Segment::parse(&first))
        );
        let middle = take(&mut d);
        assert_eq!(
            seq_ok_payload(&middle),
            (1001, true, [[233; 1000], [209; 1000]].concat())
        );
        let last = take(&mut d);
        assert_eq!(d.backlog(), 2);
        assert_eq!(seq_ok_payload(&last), (3001, true, vec![185; 1000]));
        assert_eq!(&last[..24], &data(80, 3001, &[185; 1000])[..24]);
        assert_eq!(take(&mut d), data(81, 1, &[1; 1000]));
        // The joined packet's buffer serves the next run, taken in three parts too.
        assert_eq!(d.rx_joined.len(), 1);
        for seq in [5001, 5011] {
            push(&mut d, &data(80, seq, &[1; 10]));
        }
        assert_eq!((d.rx_joined.len(), d.rx.len(), d.backlog()), (0, 1, 3));
        let parts: Vec<u32> = (0..3).map(|_| seq_ok_payload(&take(&mut d)).0).collect();
        assert_eq!(parts, [4001, 5001, 5011]);
        assert!(d.receive(Instant::ZERO).is_none());
        assert_eq!(d.backlog(), 0);
    }

    #[test]
    fn a_run_whose_first_segment_was_answered_goes_on_one_by_one_for_a_while() {
        let mut d = QueueDevice::new(1420);
        for i in 0..8u32 {
            push(&mut d, &data(80, 1 + i * 1000, &[i as u8; 1000]));
        }
        push(&mut d, &data(81, 1, &[0; 100]));
        let take = |d: &mut QueueDevice| {
            let (rx, _) = d.receive(Instant::ZERO).unwrap();
            let (seq, ok, payload) = seq_ok_payload(&rx.consume(|b| b.to_vec()));
            assert!(ok);
            (seq, payload.len())
        };
        assert_eq!(take(&mut d), (1, 1000));
        d.answered();
        let parts: Vec<(u32, usize)> = (0..5).map(|_| take(&mut d)).collect();
        assert_eq!(
            parts,
            [
                (1001, 1000),
                (2001, 1000),
                (3001, 1000),
                (4001, 3000),
                (7001, 1000)
            ],
            "three one by one, then the rest but the last, then the last"
        );
        // Only the rest of the packet just taken changes, not the next one.
        d.answered();
        assert_eq!(take(&mut d), (1, 100));
        assert_eq!(d.backlog(), 0);
    }

    #[test]
    fn the_queue_bound_counts_joined_segments() {
        let mut d = QueueDevice::new(1420);
        for i in 0..QUEUE as u32 {
            assert!(push(&mut d, &data(80, 1 + i * 100, &[0; 100])));
        }
        assert!(d.rx.len() < QUEUE / 10, "{} packets", d.rx.len());
        assert!(!push(&mut d, &data(80, 1 + QUEUE as u32 * 100, &[0; 100])));
        assert_eq!(d.dropped, 1);
    }

    #[test]
    fn checksums_are_made_on_send_and_not_checked_on_receipt() {
        // What the stack receives was authenticated by WireGuard; what it sends is checked by
        // the peer's kernel (TUN mode), so it must be right.
        let c = QueueDevice::new(1420).capabilities().checksum;
        for (name, ck) in [("ipv4", c.ipv4), ("tcp", c.tcp), ("udp", c.udp)] {
            assert!(ck.tx() && !ck.rx(), "{name}");
        }
    }
}
