//! The userspace stack's network "device": two bounded packet queues. `rx` is filled by the
//! WireGuard core through [`Sink::deliver`] (decrypted, checked packets from peers) and drained by
//! smoltcp; `tx` is filled by smoltcp and drained by the driver into `Peers::handle_outbound`.
//! No I/O here.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Packets queued each way before more are dropped (as a congested link would).
pub const QUEUE: usize = 1024;

/// A queue-backed IP device (no link layer) with the mesh MTU.
#[derive(Debug)]
pub struct QueueDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Packets dropped because a queue was full.
    pub dropped: u64,
}

impl QueueDevice {
    pub fn new(mtu: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            dropped: 0,
        }
    }

    /// Queues a packet for the stack; false (and counted) when the queue is full.
    pub fn push_rx(&mut self, packet: &[u8]) -> bool {
        if self.rx.len() >= QUEUE {
            self.dropped += 1;
            return false;
        }
        self.rx.push_back(packet.to_vec());
        true
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            RxToken(packet),
            TxToken {
                queue: &mut self.tx,
                dropped: &mut self.dropped,
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
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

#[derive(Debug)]
pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

#[derive(Debug)]
pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    dropped: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        // `receive` hands out a TxToken without checking room (smoltcp may answer a packet).
        if self.queue.len() < QUEUE * 2 {
            self.queue.push_back(buf);
        } else {
            *self.dropped += 1;
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
        assert!(d.push_rx(&[1]));
        assert!(d.push_rx(&[2]));
        let (rx, _) = d.receive(Instant::ZERO).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), vec![1]);
        for _ in 1..QUEUE {
            assert!(d.push_rx(&[0]));
        }
        assert!(!d.push_rx(&[9]));
        assert_eq!(d.dropped, 1);
        for _ in 0..QUEUE {
            let tx = d.transmit(Instant::ZERO).unwrap();
            tx.consume(3, |b| b.copy_from_slice(&[7, 7, 7]));
        }
        assert!(d.transmit(Instant::ZERO).is_none());
        assert_eq!(d.tx.pop_front().unwrap(), vec![7, 7, 7]);
        assert_eq!(d.capabilities().max_transmission_unit, 1420);
    }
}
