//! The control side of a running node: holds the map stream open, applies deltas, saves every
//! netmap, publishes it to the data plane, reports our endpoints, and reconnects with backoff
//! (1 s doubling to 30 s, with jitter) when the coordinator goes away. The data plane keeps
//! running on the last netmap meanwhile.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proto::map::{apply, MapMessage, Netmap};
use rand::Rng as _;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::state::StateDir;
use crate::control::{ControlClient, ControlError};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the control loop tells the rest of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlState {
    /// Running on this netmap (from the stream, or from disk while coord is unreachable).
    Netmap(Box<Netmap>),
    /// Coord says this node may no longer use the mesh.
    Revoked(String),
}

#[derive(Debug)]
pub struct ControlLoop {
    pub client: Arc<ControlClient>,
    pub state: StateDir,
    pub tx: watch::Sender<Option<ControlState>>,
    /// Whether the map stream is up.
    pub connected: watch::Sender<bool>,
    pub listen_port: u16,
    /// Reported besides the local interface addresses (`--endpoint`).
    pub extra_endpoints: Vec<SocketAddr>,
    /// Our mesh IPv6 address, whose /48 is never an endpoint; `None` when the UDP socket has no
    /// IPv6 (then no IPv6 endpoint is reported).
    pub ipv6_underlay: Option<Ipv6Addr>,
}

impl ControlLoop {
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.stream_once().await {
                Ok(Some(reason)) => {
                    error!("coordinator revoked this node: {reason}");
                    let _ = self.tx.send(Some(ControlState::Revoked(reason)));
                    return;
                }
                Ok(None) => backoff = BACKOFF_MIN,
                Err(ControlError::Api {
                    status: 403,
                    message,
                    ..
                }) => {
                    error!("coordinator refuses this node: {message}");
                    let _ = self.tx.send(Some(ControlState::Revoked(message)));
                    return;
                }
                Err(e) => warn!("control stream: {e}"),
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 4);
            let wait = backoff + Duration::from_millis(jitter);
            info!(
                "reconnecting to the coordinator in {:.1}s",
                wait.as_secs_f32()
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One map stream, until it ends. `Ok(Some(reason))` when the node was revoked.
    async fn stream_once(&self) -> Result<Option<String>, ControlError> {
        let mut stream = self.client.map_stream().await?;
        info!("connected to the coordinator");
        self.connected.send_replace(true);
        let _up = Connected(&self.connected);
        if let Err(e) = self
            .client
            .set_endpoints(with_extra(
                local_endpoints(self.listen_port, self.ipv6_underlay),
                &self.extra_endpoints,
            ))
            .await
        {
            warn!("reporting endpoints: {e}");
        }
        let mut current: Option<Netmap> = None;
        loop {
            let msg = match stream.next().await? {
                Some(m) => m,
                None => return Ok(None),
            };
            match msg {
                MapMessage::Full { netmap, .. } => {
                    current = Some(netmap);
                }
                MapMessage::Delta { delta, .. } => {
                    let Some(map) = current.as_mut() else {
                        warn!("delta before the full map; reconnecting");
                        return Ok(None);
                    };
                    if let Err(e) = apply(map, &delta) {
                        warn!("netmap out of step ({e}); reconnecting");
                        return Ok(None);
                    }
                }
                MapMessage::Keepalive => continue,
                MapMessage::Revoked { reason } => return Ok(Some(reason)),
            }
            if let Some(map) = &current {
                debug!(peers = map.peers.len(), "netmap");
                if let Err(e) = self.state.save_netmap(map) {
                    warn!("saving the netmap: {e:#}");
                }
                let _ = self
                    .tx
                    .send(Some(ControlState::Netmap(Box::new(map.clone()))));
            }
        }
    }
}

/// Marks the stream down when dropped, however `stream_once` ends.
struct Connected<'a>(&'a watch::Sender<bool>);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// `extra` first (the operator asked for them), then the discovered ones, without duplicates.
fn with_extra(found: Vec<SocketAddr>, extra: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = extra.to_vec();
    for a in found {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(proto::node::MAX_ENDPOINTS);
    out
}

/// Whether a local address can be offered to peers (see [`local_endpoints`]).
fn usable_endpoint(ip: IpAddr, ipv6_underlay: Option<Ipv6Addr>) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mesh = o[0] == 100 && (64..128).contains(&o[1]);
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || mesh)
        }
        IpAddr::V6(v6) => ipv6_underlay.is_some_and(|mesh| {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            let in_mesh = v6.octets()[..6] == mesh.octets()[..6];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || link_local
                || in_mesh
                || v6.to_ipv4_mapped().is_some())
        }),
    }
}

/// The UDP endpoints peers may reach us on: every non-loopback, non-link-local, non-mesh address
/// of this host with our port; IPv6 ones only when `ipv6_underlay` gives our mesh address (the
/// mesh's /48 is left out).
pub fn local_endpoints(port: u16, ipv6_underlay: Option<Ipv6Addr>) -> Vec<SocketAddr> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return vec![];
    };
    let mut out: Vec<SocketAddr> = ifaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| usable_endpoint(*ip, ipv6_underlay))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(proto::node::MAX_ENDPOINTS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn endpoints_leave_out_loopback_link_local_and_the_mesh() {
        let mesh: Ipv6Addr = "fd7a:1111:2222::5".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let v6 = Some(mesh);
        for ok in [
            "192.0.2.7",
            "10.1.2.3",
            "2001:db8::1",
            "fd00:1::2",
            "fd7a:1111:2223::1",
        ] {
            assert!(usable_endpoint(ip(ok), v6), "{ok}");
        }
        for no in [
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.9",
            "100.127.255.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:192.0.2.7",
            "fd7a:1111:2222:1::9",
        ] {
            assert!(!usable_endpoint(ip(no), v6), "{no}");
        }
        // Without IPv6 on the socket, no IPv6 endpoint at all.
        assert!(!usable_endpoint(ip("2001:db8::1"), None));
        assert!(usable_endpoint(ip("100.128.0.1"), None));
    }
}
