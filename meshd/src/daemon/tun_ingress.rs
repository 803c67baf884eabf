//! In TUN mode the node's funnel ingress runs on a userspace TCP/IP stack beside the device, as
//! Tailscale's serve and funnel run on its netstack whatever the node's mode: decrypted TCP
//! segments to [`FUNNEL_INGRESS_PORT`] go to the stack instead of the kernel ([`Diverting`]), and
//! the stack's own segments go straight to the WireGuard core ([`poll`]). A request through the
//! node then costs no device write or read and no pass through the kernel's TCP on the mesh
//! side; the ingress's other side, to the local service, is a kernel socket as before.
//!
//! Everything else still goes to the device: the kernel never sees the ingress port's segments,
//! and the stack sees nothing but them (it answers a SYN to that port with RST while no
//! listener holds it, as the kernel would).

use std::time::Instant;

use proto::map::FUNNEL_INGRESS_PORT;

use crate::packet::{Fragment, PacketInfo, Transport};
use crate::userspace::device::{QueueDevice, Segment};
use crate::userspace::StackCore;
use crate::wg::{Peers, Sink};

/// A [`Sink`] that hands segments for the ingress port to the stack's queue and everything else
/// to `sink`.
pub(super) struct Diverting<'a, S> {
    pub(super) sink: &'a mut S,
    pub(super) stack: &'a mut QueueDevice,
}

impl<S: Sink> Sink for Diverting<'_, S> {
    fn send_udp(&mut self, to: std::net::SocketAddr, datagram: &[u8]) {
        self.sink.send_udp(to, datagram);
    }

    fn room(&mut self, len: usize) -> &mut [u8] {
        self.sink.room(len)
    }

    fn deliver(&mut self, len: usize, info: &PacketInfo) {
        if for_ingress(info) {
            // The room is the same buffer, with the packet in it, until `deliver` (Sink's
            // contract). Copied: the room is the device's buffer. (A full queue counts the drop.)
            let pkt = &self.sink.room(len)[..len];
            self.stack.push_rx(pkt, Segment::of(info));
            return;
        }
        self.sink.deliver(len, info);
    }
}

/// A whole TCP segment to the ingress port.
fn for_ingress(info: &PacketInfo) -> bool {
    info.fragment == Fragment::Unfragmented
        && matches!(info.transport, Transport::Tcp { dst_port, .. } if dst_port == FUNNEL_INGRESS_PORT)
}

/// Runs the stack on what it has been given and hands the segments it sends to the core (whose
/// output goes to `sink`).
pub(super) fn poll(stack: &mut StackCore, peers: &mut Peers, sink: &mut impl Sink, now: Instant) {
    stack.poll(now);
    while let Some(p) = stack.device.tx.pop_front() {
        let mut out = Diverting {
            sink: &mut *sink,
            stack: &mut stack.device,
        };
        peers.handle_outbound(&p, now, &mut out);
        stack.device.recycle(p);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::packet::{self, build, TcpFlags};

    /// What the packet filter parsed (a packet that does not parse never reaches a sink).
    fn diverted(pkt: &[u8]) -> bool {
        packet::parse(pkt).is_ok_and(|info| for_ingress(&info))
    }

    #[test]
    fn only_whole_tcp_segments_to_the_ingress_port_are_diverted() {
        let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
        let (a6, b6): (Ipv6Addr, Ipv6Addr) =
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let p = FUNNEL_INGRESS_PORT;
        let syn = build::tcp_v4(a, b, 40000, p, TcpFlags::SYN, b"");
        assert!(diverted(&syn));
        assert!(diverted(&build::tcp_v6(
            a6,
            b6,
            40000,
            p,
            TcpFlags::ACK,
            b"x"
        )));
        let mut later = syn.clone();
        later[6..8].copy_from_slice(&[0x00, 0x10]);
        for other in [
            build::tcp_v4(a, b, p, 40000, TcpFlags::ACK, b""), // from the port, not to it
            build::tcp_v4(a, b, 40000, 22, TcpFlags::SYN, b""),
            build::udp_v4(a, b, 40000, p, b"x"),
            later,
            b"garbage".to_vec(),
        ] {
            assert!(!diverted(&other), "{other:?}");
        }
    }
}
