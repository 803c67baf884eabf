//! Packets from the host to an address no peer owns yet, kept a moment in case the netmap soon
//! lists its owner. A program on this node may learn of a peer before the data plane does: the
//! funnel edge's routes and the data plane follow the same netmap on two threads, and a request
//! that arrives between the two updates sends its SYN to a peer the core does not have yet.
//! Dropped, that SYN waits for TCP's first retransmission (1 s); kept, it leaves as soon as the
//! driver calls [`super::Peers::replay_pending`] after `set_peers`.
//!
//! Bounded: at most [`MAX_HELD`] packets, none older than [`HOLD_TTL`]; when full, the oldest
//! makes room. A packet that is dropped (stale, or pushed out) counts as `no_route`, when it is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most packets kept at once.
pub(super) const MAX_HELD: usize = 64;
/// How long a packet is kept: the race this covers lasts microseconds to milliseconds.
pub(super) const HOLD_TTL: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct Unrouted {
    held: VecDeque<(Instant, Vec<u8>)>,
}

impl Unrouted {
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Keeps `pkt`, which arrived `at`; returns how many packets were dropped for room (0 or 1).
    pub(super) fn hold(&mut self, pkt: &[u8], at: Instant) -> u64 {
        let mut dropped = 0;
        if self.held.len() >= MAX_HELD {
            self.held.pop_front();
            dropped = 1;
        }
        self.held.push_back((at, pkt.to_vec()));
        dropped
    }

    /// Forgets packets older than [`HOLD_TTL`]; returns how many.
    pub(super) fn expire(&mut self, now: Instant) -> u64 {
        let before = self.held.len();
        self.held
            .retain(|(at, _)| now.saturating_duration_since(*at) <= HOLD_TTL);
        (before - self.held.len()) as u64
    }

    /// Takes every packet, oldest first, with the time it arrived.
    pub(super) fn take(&mut self) -> VecDeque<(Instant, Vec<u8>)> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_number_and_age() {
        let t0 = Instant::now();
        let mut u = Unrouted::default();
        for i in 0..MAX_HELD {
            assert_eq!(u.hold(&[i as u8], t0), 0);
        }
        assert_eq!(u.hold(b"late", t0 + Duration::from_millis(100)), 1);
        assert_eq!(u.held.len(), MAX_HELD);
        assert_eq!(u.held[0].1, [1u8], "the oldest made room");
        // All but the late one are stale 501 ms after t0.
        assert_eq!(
            u.expire(t0 + HOLD_TTL + Duration::from_millis(1)),
            (MAX_HELD - 1) as u64
        );
        let left: Vec<_> = u.take().into_iter().map(|(_, p)| p).collect();
        assert_eq!(left, vec![b"late".to_vec()]);
        assert!(u.is_empty());
    }
}
