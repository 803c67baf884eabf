//! The userspace stack's network "device": two bounded packet queues. `rx` is filled by the
//! WireGuard core through [`Sink::deliver`] (decrypted, checked packets from peers) and drained by
//! smoltcp; `tx` is filled by smoltcp and drained by the driver into `Peers::handle_outbound`,
//! which gives each buffer back ([`QueueDevice::recycle`]): packet buffers are reused, not
//! allocated per packet. No I/O here.
//!
//! Checksums are computed on what the stack sends but not verified on what it receives: every
//! received packet was decrypted and authenticated by the WireGuard core (as Linux's WireGuard
//! marks its packets' checksums as already checked).

use std::collections::VecDeque;
use std::net::SocketAddr;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::packet::{self, PacketInfo, Transport};

/// Packets queued each way before more are dropped (as a congested link would).
pub const QUEUE: usize = 1024;
/// Spare packet buffers kept for reuse, each way: as many as a queue holds. The driver reads
/// datagrams until `RX_BACKLOG` packets wait, and one read can carry hundreds more: with fewer
/// spares than that, every burst allocated (and zeroed) buffers for its excess and freed them after
/// (malloc, memset and free were ~4 % of the edge's CPU for 1 MiB responses).
const SPARE: usize = QUEUE;

/// A queue-backed IP device (no link layer) with the mesh MTU.
#[derive(Debug)]
pub struct QueueDevice {
    pub rx: VecDeque<RxPacket>,
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Packets dropped because a queue was full.
    pub dropped: u64,
    rx_spare: Vec<Vec<u8>>,
    tx_spare: Vec<Vec<u8>>,
    /// Where the next received packet is written ([`QueueDevice::rx_room`]).
    room: Vec<u8>,
}

/// A received packet: the first `len` bytes of `buf`. The buffer keeps the largest length it
/// has had, so reusing it for a bigger packet than its last one does not zero it again.
#[derive(Debug)]
pub struct RxPacket {
    buf: Vec<u8>,
    len: usize,
    segment: Option<Segment>,
}

impl RxPacket {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
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
            rx_spare: Vec::new(),
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

    /// Queues the first `len` bytes of the room for the stack; false (and counted) when the
    /// queue is full, and the room is written over by the next packet.
    pub fn push_room(&mut self, len: usize, segment: Option<Segment>) -> bool {
        if self.rx.len() >= QUEUE {
            self.dropped += 1;
            return false;
        }
        let buf = std::mem::take(&mut self.room);
        let len = len.min(buf.len());
        self.rx.push_back(RxPacket { buf, len, segment });
        true
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
        let packet = self.rx.pop_front()?;
        Some((
            RxToken {
                packet,
                spare: &mut self.rx_spare,
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
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.packet.bytes());
        keep_spare(self.spare, self.packet.buf);
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
