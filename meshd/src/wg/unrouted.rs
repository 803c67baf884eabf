//! Packets from the host to an address no peer owns yet, kept a moment in case the netmap soon
//! lists its owner. A program on this node may learn of a peer before the data plane does: the
//! funnel edge's routes and the data plane follow the same netmap on two threads, and a request
//! that arrives between the two updates sends its SYN to a peer the core does not have yet.
//! Dropped, that SYN waits for TCP's first retransmission (1 s); kept, it leaves as soon as the
//! driver calls [`super::Peers::replay_pending`] after `set_peers`.
//!
//! Bounded: at most [`MAX_HELD`] packets, none older than [`HOLD_TTL`]; when full, the oldest
//! makes room. A packet that is dropped (stale, or pushed out) counts as `no_route`, and the host
//! is told with [`unreachable`], as kernel WireGuard does: a connect to an address no peer owns
//! (a peer that just left the netmap, say) fails with "no route to host" instead of retrying
//! its SYN for minutes.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::{self, build, Fragment, IcmpMessage, Transport};

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

    /// Keeps `pkt`, which arrived `at`; returns the packet dropped for room, if one was.
    pub(super) fn hold(&mut self, pkt: &[u8], at: Instant) -> Option<Vec<u8>> {
        let dropped = if self.held.len() >= MAX_HELD {
            self.held.pop_front().map(|(_, p)| p)
        } else {
            None
        };
        self.held.push_back((at, pkt.to_vec()));
        dropped
    }

    /// Forgets packets older than [`HOLD_TTL`] and returns them, oldest first.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut stale = Vec::new();
        while let Some((at, _)) = self.held.front() {
            if now.saturating_duration_since(*at) <= HOLD_TTL {
                break;
            }
            stale.extend(self.held.pop_front().map(|(_, p)| p));
        }
        stale
    }

    /// Takes every packet, oldest first, with the time it arrived.
    pub(super) fn take(&mut self) -> VecDeque<(Instant, Vec<u8>)> {
        std::mem::take(&mut self.held)
    }
}

/// The ICMP error that tells the host no peer owns `pkt`'s destination: "host unreachable"
/// (IPv6: "address unreachable"), from that destination (an address routed to the mesh, so the
/// kernel's source checks accept it), quoting the packet. `None` for what gets no error: a
/// packet that does not parse, an ICMP error, a later fragment, a multicast destination or an
/// unspecified or multicast source.
pub(super) fn unreachable(pkt: &[u8]) -> Option<Vec<u8>> {
    let info = packet::parse(pkt).ok()?;
    if matches!(
        info.transport,
        Transport::Icmp(packet::Icmp {
            message: IcmpMessage::Error { .. },
            ..
        })
    ) || matches!(info.fragment, Fragment::Later { .. })
        || info.dst.is_multicast()
        || info.src.is_multicast()
        || info.src.is_unspecified()
    {
        return None;
    }
    let pkt = &pkt[..info.total_len];
    match (info.src, info.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Some(build::icmp_error_v4(dst, src, 3, 1, pkt)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Some(build::icmp_error_v6(dst, src, 1, 3, pkt)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn bounded_in_number_and_age() {
        let t0 = Instant::now();
        let mut u = Unrouted::default();
        for i in 0..MAX_HELD {
            assert_eq!(u.hold(&[i as u8], t0), None);
        }
        let pushed = u.hold(b"late", t0 + Duration::from_millis(100));
        assert_eq!(pushed, Some(vec![0u8]), "the oldest made room");
        assert_eq!(u.held.len(), MAX_HELD);
        assert_eq!(u.held[0].1, [1u8]);
        // All but the late one are stale 501 ms after t0.
        let stale = u.expire(t0 + HOLD_TTL + Duration::from_millis(1));
        let want: Vec<Vec<u8>> = (1..MAX_HELD).map(|i| vec![i as u8]).collect();
        assert_eq!(stale, want);
        let left: Vec<_> = u.take().into_iter().map(|(_, p)| p).collect();
        assert_eq!(left, vec![b"late".to_vec()]);
        assert!(u.is_empty());
    }

    #[test]
    fn errors_fragments_multicast_and_garbage_get_no_unreachable() {
        let (a, b): (Ipv4Addr, Ipv4Addr) = ([100, 64, 0, 1].into(), [100, 64, 0, 2].into());
        let udp = build::udp_v4(a, b, 1, 2, b"x");
        assert!(unreachable(&udp).is_some());
        let mut later = udp.clone();
        later[6..8].copy_from_slice(&[0x00, 0x10]); // fragment offset 16 (x 8 bytes)
        let mut from_nowhere = udp.clone();
        from_nowhere[12..16].fill(0);
        let cases = [
            build::icmp_error_v4(a, b, 3, 1, &udp),
            later,
            from_nowhere,
            build::udp_v4(a, [224, 0, 0, 251].into(), 5353, 5353, b"mdns"),
            b"garbage".to_vec(),
        ];
        for p in cases {
            assert_eq!(unreachable(&p), None, "{p:?}");
        }
    }
}
