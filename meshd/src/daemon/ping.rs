//! `meshd ping`: ICMP echo requests from our mesh address to a peer's, sent through the tunnel
//! like any packet; the replies are taken out of the inbound path before they reach the host (or,
//! in userspace mode, the smoltcp stack).
//! Sans-IO: the driver hands in the time and delivers what [`Pings::start`] builds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use proto::Node;
use tokio::sync::oneshot;

use crate::packet::{build, IcmpMessage, PacketInfo, Transport};

/// How long a ping waits for its reply.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What a ping found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub peer: String,
    pub ip: IpAddr,
    pub rtt: Duration,
}

#[derive(Debug)]
struct Pending {
    sent: Instant,
    peer: String,
    reply: oneshot::Sender<Result<Pong, String>>,
}

/// A `meshd ping` from the local API to the data plane.
#[derive(Debug)]
pub struct PingRequest {
    /// A peer's name, fqdn or mesh address.
    pub target: String,
    pub reply: oneshot::Sender<Result<Pong, String>>,
}

/// Outstanding pings, keyed by (peer address, identifier, sequence).
#[derive(Debug, Default)]
pub struct Pings {
    pending: HashMap<(IpAddr, u16, u16), Pending>,
    next_seq: u16,
}

/// A fixed identifier: replies to `meshd ping` are told from the host's own pings by it.
const IDENT: u16 = 0x6d66; // "mf"

/// Finds a peer by name, fqdn or mesh address.
pub fn resolve<'a>(peers: &'a [Node], target: &str) -> Option<(&'a Node, IpAddr)> {
    if let Ok(ip) = target.parse::<IpAddr>() {
        let p = peers
            .iter()
            .find(|p| IpAddr::V4(p.ipv4) == ip || IpAddr::V6(p.ipv6) == ip)?;
        return Some((p, ip));
    }
    let name = target.trim_end_matches('.');
    let p = peers.iter().find(|p| p.name == name || p.fqdn == name)?;
    Some((p, IpAddr::V4(p.ipv4)))
}

impl Pings {
    /// Resolves `req` against the netmap's `peers` and starts it: the echo request to send
    /// through the tunnel, or `None` when no peer matches (the requester has been told why).
    pub fn request(
        &mut self,
        me: &Node,
        peers: &[Node],
        req: PingRequest,
        now: Instant,
    ) -> Option<Vec<u8>> {
        match resolve(peers, &req.target) {
            Some((peer, ip)) => Some(self.start(me, peer, ip, now, req.reply)),
            None => {
                let _ = req.reply.send(Err(format!(
                    "no peer named or addressed {:?} in the netmap",
                    req.target
                )));
                None
            }
        }
    }

    /// Builds an echo request from `me` to `to` and remembers it. The answer arrives on `reply`.
    pub fn start(
        &mut self,
        me: &Node,
        peer: &Node,
        to: IpAddr,
        now: Instant,
        reply: oneshot::Sender<Result<Pong, String>>,
    ) -> Vec<u8> {
        self.next_seq = self.next_seq.wrapping_add(1);
        let seq = self.next_seq;
        let payload = b"meshfunnel ping";
        let pkt = match to {
            IpAddr::V4(dst) => build::icmp_echo_v4(me.ipv4, dst, IDENT, seq, payload),
            IpAddr::V6(dst) => build::icmp_echo_v6(me.ipv6, dst, IDENT, seq, payload),
        };
        self.pending.insert(
            (to, IDENT, seq),
            Pending {
                sent: now,
                peer: peer.name.clone(),
                reply,
            },
        );
        pkt
    }

    /// Takes our own echo replies out of the inbound path: true when the packet `info` was parsed
    /// from was one. `now` is asked only then (not once per packet).
    pub fn intercept(&mut self, info: &PacketInfo, now: impl FnOnce() -> Instant) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let Transport::Icmp(icmp) = info.transport else {
            return false;
        };
        let IcmpMessage::EchoReply { id, seq } = icmp.message else {
            return false;
        };
        let Some(p) = self.pending.remove(&(info.src, id, seq)) else {
            return false;
        };
        let _ = p.reply.send(Ok(Pong {
            peer: p.peer,
            ip: info.src,
            rtt: now().saturating_duration_since(p.sent),
        }));
        true
    }

    /// Answers pings that waited longer than [`TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some(p) = self.pending.remove(&k) {
                let _ = p.reply.send(Err(format!(
                    "no reply from {} ({}) within {}s",
                    p.peer,
                    k.0,
                    TIMEOUT.as_secs()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn node(i: u8) -> Node {
        Node {
            id: proto::NodeId(u64::from(i)),
            name: format!("n{i}"),
            fqdn: format!("n{i}.mesh.internal"),
            public_key: keys::PrivateKey::from_bytes([i; 32]).public_key(),
            ipv4: Ipv4Addr::new(100, 64, 0, i),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6440, u16::from(i)),
            tags: vec![],
            endpoints: vec![],
            online: true,
            key_expiry: u64::MAX,
        }
    }

    #[test]
    fn replies_are_matched_and_taken_out() {
        let (me, peer) = (node(1), node(2));
        let mut pings = Pings::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        let req = pings.start(&me, &peer, IpAddr::V4(peer.ipv4), t0, tx);
        let info = packet::parse(&req).unwrap();
        assert_eq!(
            (info.src, info.dst),
            (IpAddr::V4(me.ipv4), IpAddr::V4(peer.ipv4))
        );
        // The host's own pings (other identifier) pass through untouched.
        let other = build::icmp_echo_reply_v4(peer.ipv4, me.ipv4, 1, 1, b"x");
        assert!(!pings.intercept(&packet::parse(&other).unwrap(), || t0));
        let IcmpMessage::EchoRequest { id, seq } = (match info.transport {
            Transport::Icmp(i) => i.message,
            _ => panic!("not icmp"),
        }) else {
            panic!("not an echo request")
        };
        let reply = build::icmp_echo_reply_v4(peer.ipv4, me.ipv4, id, seq, b"meshfunnel ping");
        let t1 = t0 + Duration::from_millis(3);
        let reply = packet::parse(&reply).unwrap();
        assert!(pings.intercept(&reply, || t1));
        let pong = rx.try_recv().unwrap().unwrap();
        assert_eq!(pong.rtt, Duration::from_millis(3));
        assert_eq!(pong.peer, "n2");
        assert!(
            !pings.intercept(&reply, || t1),
            "a duplicate reply is not ours any more"
        );
    }

    #[test]
    fn unanswered_pings_time_out_and_names_resolve() {
        let (me, peer) = (node(1), node(2));
        let mut pings = Pings::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        pings.start(&me, &peer, IpAddr::V6(peer.ipv6), t0, tx);
        pings.expire(t0 + Duration::from_secs(1));
        assert!(rx.try_recv().is_err(), "not yet");
        pings.expire(t0 + TIMEOUT);
        assert!(rx
            .try_recv()
            .unwrap()
            .unwrap_err()
            .contains("no reply from n2"));

        let peers = vec![peer.clone(), node(3)];
        assert_eq!(resolve(&peers, "n3").unwrap().0.name, "n3");
        assert_eq!(resolve(&peers, "n2.mesh.internal.").unwrap().0.name, "n2");
        let v6 = peer.ipv6.to_string();
        assert_eq!(resolve(&peers, &v6).unwrap().1, IpAddr::V6(peer.ipv6));
        assert!(resolve(&peers, "nobody").is_none());
        assert!(resolve(&peers, "100.64.0.99").is_none());
    }

    #[test]
    fn requests_for_unknown_peers_are_answered_at_once() {
        let (me, peer) = (node(1), node(2));
        let peers = vec![peer.clone()];
        let mut pings = Pings::default();
        let t0 = Instant::now();
        let (reply, mut rx) = oneshot::channel();
        let req = PingRequest {
            target: "nobody".into(),
            reply,
        };
        assert!(pings.request(&me, &peers, req, t0).is_none());
        let err = rx.try_recv().unwrap().unwrap_err();
        assert!(err.contains("no peer named"), "{err}");

        let (reply, mut rx) = oneshot::channel();
        let req = PingRequest {
            target: "n2".into(),
            reply,
        };
        let pkt = pings.request(&me, &peers, req, t0).unwrap();
        assert_eq!(packet::parse(&pkt).unwrap().dst, IpAddr::V4(peer.ipv4));
        assert!(rx.try_recv().is_err(), "waiting for the reply");
    }
}
