//! The netmap and its stream: `GET /v1/map` answers with one [`MapMessage`] per line, the full
//! [`Netmap`] first, then [`NetmapDelta`]s, with keepalives in between.
//!
//! [`diff`] and [`apply`] are inverse: `apply(&mut old, &diff(&old, &new))` turns `old` into `new`
//! (peers ordered by id). Both are pure.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeId};
use crate::policy::{PortRange, Protocol};

/// The TCP port on a node's mesh addresses where edges deliver funnel streams. A node with a
/// live funnel gets a packet-filter rule letting the edges (and only them) reach it; the node
/// itself decides which local service a stream goes to, and refuses ports it did not publish.
pub const FUNNEL_INGRESS_PORT: u16 = 41642;

/// One line of the map stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MapMessage {
    /// The whole netmap; always the first line of a stream.
    Full { seq: u64, netmap: Netmap },
    /// Changes since the previous line.
    Delta { seq: u64, delta: NetmapDelta },
    /// Nothing changed; sent at least every 30 s so both ends notice dead connections.
    Keepalive,
    /// The node may no longer use the mesh (key expired, removed). The stream ends after it.
    Revoked { reason: String },
}

/// What one node knows of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Netmap {
    /// This node. Its own soft state is not echoed back: `endpoints` is empty and `online` true.
    #[serde(rename = "self")]
    pub self_node: Node,
    /// The peers policy lets this node reach or be reached by, ordered by id.
    pub peers: Vec<Node>,
    pub dns: DnsConfig,
    /// Inbound rules for this node: traffic not matched here is dropped (replies to the node's own
    /// connections excepted).
    pub packet_filter: Vec<FilterRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub funnel_routes: Vec<FunnelRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The mesh domain: peers resolve as `<name>.<domain>`.
    pub domain: String,
    pub magic_dns: bool,
}

/// An inbound packet-filter rule. `src` are policy selectors (`*`, `tag:NAME`, node names) that
/// the node resolves against its peers' names and tags; a peer's traffic is recognised by the
/// allowed IPs it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    pub src: Vec<String>,
    pub proto: Protocol,
    pub ports: Vec<PortRange>,
}

const INGRESS_ONLY: PortRange = PortRange {
    lo: FUNNEL_INGRESS_PORT,
    hi: FUNNEL_INGRESS_PORT,
};

impl FilterRule {
    /// The rule a node with a live funnel gets: `src` (the edges' tags) may reach TCP
    /// [`FUNNEL_INGRESS_PORT`] and nothing else.
    pub fn funnel_ingress(src: Vec<String>) -> Self {
        Self {
            src,
            proto: Protocol::Tcp,
            ports: vec![INGRESS_ONLY],
        }
    }

    /// Whether this rule opens the funnel ingress port only ([`Self::funnel_ingress`]).
    pub fn is_funnel_ingress(&self) -> bool {
        self.proto == Protocol::Tcp && self.ports == [INGRESS_ONLY]
    }
}

/// A published funnel: `https://<name>.<funnel domain>/` goes to `port` on `node`. Netmaps list
/// routes ordered by name: an edge gets every live route, any other node its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelRoute {
    pub name: String,
    pub node: NodeId,
    pub port: u16,
    /// Unix seconds after which the route is gone unless renewed.
    pub expires: u64,
}

/// Changes to a netmap. Every field is optional; absent means unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetmapDelta {
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_node: Option<Node>,
    /// Peers added, or changed in more than endpoints/online: the whole entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_upserted: Vec<Node>,
    /// Small changes to known peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_patched: Vec<PeerPatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_removed: Vec<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funnel_routes: Option<Vec<FunnelRoute>>,
}

/// A change to a known peer's endpoints or online state (the frequent changes, kept small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPatch {
    pub id: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<SocketAddr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

impl NetmapDelta {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a delta could not be applied: the stream is out of step and must restart from a full map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("delta patches unknown peer {0}")]
    UnknownPeer(NodeId),
}

/// The patch that turns peer `old` into `new`, if only endpoints/online differ.
fn patch_between(old: &Node, new: &Node) -> Option<PeerPatch> {
    let mut probe = new.clone();
    probe.endpoints.clone_from(&old.endpoints);
    probe.online = old.online;
    if probe != *old {
        return None;
    }
    Some(PeerPatch {
        id: new.id,
        endpoints: (old.endpoints != new.endpoints).then(|| new.endpoints.clone()),
        online: (old.online != new.online).then_some(new.online),
    })
}

/// The delta from `old` to `new`; empty when they are equal.
pub fn diff(old: &Netmap, new: &Netmap) -> NetmapDelta {
    let old_peers: BTreeMap<NodeId, &Node> = old.peers.iter().map(|p| (p.id, p)).collect();
    let new_peers: BTreeMap<NodeId, &Node> = new.peers.iter().map(|p| (p.id, p)).collect();
    let mut delta = NetmapDelta::default();
    for (id, new_peer) in &new_peers {
        match old_peers.get(id) {
            None => delta.peers_upserted.push((*new_peer).clone()),
            Some(old_peer) if old_peer == new_peer => {}
            Some(old_peer) => match patch_between(old_peer, new_peer) {
                Some(patch) => delta.peers_patched.push(patch),
                None => delta.peers_upserted.push((*new_peer).clone()),
            },
        }
    }
    delta.peers_removed = old_peers
        .keys()
        .filter(|id| !new_peers.contains_key(id))
        .copied()
        .collect();
    if old.self_node != new.self_node {
        delta.self_node = Some(new.self_node.clone());
    }
    if old.dns != new.dns {
        delta.dns = Some(new.dns.clone());
    }
    if old.packet_filter != new.packet_filter {
        delta.packet_filter = Some(new.packet_filter.clone());
    }
    if old.funnel_routes != new.funnel_routes {
        delta.funnel_routes = Some(new.funnel_routes.clone());
    }
    delta
}

/// Applies `delta` to `netmap`, keeping peers ordered by id.
pub fn apply(netmap: &mut Netmap, delta: &NetmapDelta) -> Result<(), ApplyError> {
    // Check before mutating so a bad delta leaves the netmap as it was.
    for patch in &delta.peers_patched {
        let known = netmap.peers.iter().any(|p| p.id == patch.id)
            || delta.peers_upserted.iter().any(|p| p.id == patch.id);
        if !known {
            return Err(ApplyError::UnknownPeer(patch.id));
        }
    }
    if let Some(n) = &delta.self_node {
        netmap.self_node = n.clone();
    }
    netmap
        .peers
        .retain(|p| !delta.peers_removed.contains(&p.id));
    for up in &delta.peers_upserted {
        match netmap.peers.binary_search_by_key(&up.id, |p| p.id) {
            Ok(i) => netmap.peers[i] = up.clone(),
            Err(i) => netmap.peers.insert(i, up.clone()),
        }
    }
    for patch in &delta.peers_patched {
        if let Ok(i) = netmap.peers.binary_search_by_key(&patch.id, |p| p.id) {
            let peer = &mut netmap.peers[i];
            if let Some(e) = &patch.endpoints {
                peer.endpoints.clone_from(e);
            }
            if let Some(o) = patch.online {
                peer.online = o;
            }
        }
    }
    if let Some(d) = &delta.dns {
        netmap.dns = d.clone();
    }
    if let Some(f) = &delta.packet_filter {
        netmap.packet_filter.clone_from(f);
    }
    if let Some(r) = &delta.funnel_routes {
        netmap.funnel_routes.clone_from(r);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use keys::PrivateKey;
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub(crate) fn node(id: u64, name: &str) -> Node {
        Node {
            id: NodeId(id),
            name: name.into(),
            fqdn: format!("{name}.mesh.internal"),
            public_key: PrivateKey::from_bytes([id as u8; 32]).public_key(),
            ipv4: Ipv4Addr::new(100, 64, 0, id as u8),
            ipv6: Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0x6440, id as u16),
            tags: vec![],
            endpoints: vec![],
            online: false,
            key_expiry: 1_900_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::node;
    use super::*;
    use crate::policy::PortRange;

    fn netmap(peers: Vec<Node>) -> Netmap {
        Netmap {
            self_node: node(1, "self"),
            peers,
            dns: DnsConfig {
                domain: "mesh.internal".into(),
                magic_dns: true,
            },
            packet_filter: vec![FilterRule {
                src: vec!["*".into()],
                proto: Protocol::Any,
                ports: vec![PortRange::ALL],
            }],
            funnel_routes: vec![],
        }
    }

    #[test]
    fn diff_then_apply_reaches_new() {
        let a = node(2, "a");
        let b = node(3, "b");
        let c = node(4, "c");
        let old = netmap(vec![a.clone(), b.clone(), c.clone()]);
        let mut b2 = b.clone();
        b2.endpoints = vec!["192.0.2.1:41641".parse().unwrap()];
        b2.online = true;
        let mut c2 = c.clone();
        c2.tags = vec!["tag:dev".into()];
        let d = node(5, "d");
        let mut new = netmap(vec![b2, c2, d]);
        new.packet_filter = vec![];

        let delta = diff(&old, &new);
        assert_eq!(delta.peers_removed, vec![NodeId(2)]);
        assert_eq!(delta.peers_patched.len(), 1);
        assert_eq!(delta.peers_patched[0].online, Some(true));
        assert_eq!(delta.peers_upserted.len(), 2, "c changed tags, d is new");
        assert_eq!(delta.packet_filter, Some(vec![]));
        assert!(delta.dns.is_none());

        let mut applied = old.clone();
        apply(&mut applied, &delta).unwrap();
        assert_eq!(applied, new);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn patch_for_unknown_peer_is_refused_and_changes_nothing() {
        let old = netmap(vec![node(2, "a")]);
        let delta = NetmapDelta {
            peers_removed: vec![NodeId(2)],
            peers_patched: vec![PeerPatch {
                id: NodeId(9),
                endpoints: None,
                online: Some(true),
            }],
            ..Default::default()
        };
        let mut m = old.clone();
        assert_eq!(
            apply(&mut m, &delta),
            Err(ApplyError::UnknownPeer(NodeId(9)))
        );
        assert_eq!(m, old);
    }

    #[test]
    fn messages_match_fixtures() {
        let full = MapMessage::Full {
            seq: 7,
            netmap: netmap(vec![]),
        };
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!(json["type"], "full");
        assert_eq!(json["netmap"]["self"]["name"], "self");
        assert_eq!(json["netmap"]["packet_filter"][0]["ports"][0], "*");
        let back: MapMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, full);

        let fixture = r#"{"type":"delta","seq":8,"delta":{"peers_patched":[{"id":3,"endpoints":["198.51.100.7:41641"]}],"peers_removed":[4]}}"#;
        let msg: MapMessage = serde_json::from_str(fixture).unwrap();
        let MapMessage::Delta { seq, delta } = &msg else {
            panic!("not a delta: {msg:?}")
        };
        assert_eq!(*seq, 8);
        assert_eq!(delta.peers_removed, vec![NodeId(4)]);
        assert_eq!(serde_json::to_string(&msg).unwrap(), fixture);

        assert_eq!(
            serde_json::to_string(&MapMessage::Keepalive).unwrap(),
            r#"{"type":"keepalive"}"#
        );
        let routes = r#"{"type":"delta","seq":9,"delta":{"peers_upserted":[],"funnel_routes":[{"name":"demo","node":3,"port":3000,"expires":1800003600}]}}"#;
        let msg: MapMessage = serde_json::from_str(routes).unwrap();
        let MapMessage::Delta { delta, .. } = &msg else {
            panic!("not a delta: {msg:?}")
        };
        let mut m = netmap(vec![]);
        apply(&mut m, delta).unwrap();
        assert_eq!(
            m.funnel_routes,
            vec![FunnelRoute {
                name: "demo".into(),
                node: NodeId(3),
                port: 3000,
                expires: 1_800_003_600,
            }]
        );
        // An empty list is sent as one: every route is gone.
        let gone = NetmapDelta {
            funnel_routes: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&gone).unwrap(),
            r#"{"funnel_routes":[]}"#
        );
        apply(&mut m, &gone).unwrap();
        assert!(m.funnel_routes.is_empty());
        assert_eq!(diff(&netmap(vec![]), &m), NetmapDelta::default());
        assert!(serde_json::from_str::<FunnelRoute>(
            r#"{"name":"demo","node":3,"port":3000,"expires":1,"public":true}"#
        )
        .is_err());

        let revoked: MapMessage =
            serde_json::from_str(r#"{"type":"revoked","reason":"node key expired"}"#).unwrap();
        assert!(matches!(revoked, MapMessage::Revoked { .. }));
        assert!(serde_json::from_str::<MapMessage>(r#"{"type":"full"}"#).is_err());
        assert!(serde_json::from_str::<MapMessage>(
            r#"{"type":"delta","seq":1,"delta":{"bogus":1}}"#
        )
        .is_err());
    }
}
