//! One WireGuard peer: its `Tunn`, its node entry from the netmap, and where to send to.
//!
//! Until a peer's endpoint is known, handshake packets go to every candidate endpoint from the
//! netmap at once; the first authenticated answer fixes the endpoint, and later authenticated
//! packets move it (roaming).

use std::net::SocketAddr;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use proto::Node;
use tracing::{debug, info};

use super::Sink;

pub(super) struct Peer {
    pub(super) node: Node,
    pub(super) tunn: Tunn,
    /// The address the peer's authenticated packets last came from.
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) rx_packets: u64,
}

/// What `meshd status` shows of a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub node: Node,
    pub endpoint: Option<SocketAddr>,
    pub since_handshake: Option<Duration>,
    pub tx_bytes: usize,
    pub rx_bytes: usize,
}

impl Peer {
    pub(super) fn new(node: Node, tunn: Tunn) -> Self {
        Self {
            node,
            tunn,
            endpoint: None,
            rx_packets: 0,
        }
    }

    pub(super) fn update_node(&mut self, node: Node) {
        if self.node.public_key != node.public_key {
            // Not reached: peers are keyed by public key, a new key is a new peer.
            self.endpoint = None;
        }
        self.node = node;
    }

    pub(super) fn roam(&mut self, from: SocketAddr) {
        if self.endpoint != Some(from) {
            info!(peer = %self.node.name, endpoint = %from, "peer endpoint");
            self.endpoint = Some(from);
        }
    }

    /// Sends a datagram to the endpoint, or to every candidate when none is known yet. False
    /// when there is nowhere to send it.
    pub(super) fn send(&self, datagram: &[u8], sink: &mut impl Sink) -> bool {
        if let Some(ep) = self.endpoint {
            sink.send_udp(ep, datagram);
            return true;
        }
        for ep in &self.node.endpoints {
            sink.send_udp(*ep, datagram);
        }
        !self.node.endpoints.is_empty()
    }

    /// Starts a handshake with a peer just added, unless one is under way or it has already
    /// been heard from. WireGuard waits for traffic (or the first keepalive, 25 s on) to start
    /// one; a node behind NAT that waited would leave its mapping closed to a peer that wants to
    /// reach it — the funnel edge — for that long: the edge's own handshakes to it are dropped
    /// at the NAT until the node has sent something through.
    pub(super) fn greet(&mut self, buf: &mut [u8], sink: &mut impl Sink) {
        if self.endpoint.is_some() {
            return;
        }
        if let TunnResult::WriteToNetwork(out) = self.tunn.format_handshake_initiation(buf, false) {
            self.send(out, sink);
        }
    }

    pub(super) fn tick(&mut self, buf: &mut [u8], sink: &mut impl Sink) {
        match self.tunn.update_timers(buf) {
            TunnResult::WriteToNetwork(out) => {
                self.send(out, sink);
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                // The session is gone; start over so the peer comes back without waiting for
                // traffic (the endpoint may have moved: try the candidates too).
                debug!(peer = %self.node.name, "connection expired; new handshake");
                self.endpoint = None;
                if let TunnResult::WriteToNetwork(out) =
                    self.tunn.format_handshake_initiation(buf, false)
                {
                    self.send(out, sink);
                }
            }
            TunnResult::Err(e) => debug!(peer = %self.node.name, "timers: {e:?}"),
            _ => {}
        }
    }

    pub(super) fn stats(&self) -> PeerStats {
        let (since_handshake, tx_bytes, rx_bytes, _, _) = self.tunn.stats();
        PeerStats {
            node: self.node.clone(),
            endpoint: self.endpoint,
            since_handshake,
            tx_bytes,
            rx_bytes,
        }
    }
}
