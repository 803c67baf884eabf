//! Full netmap lines, built from each node's cached serialized entry.
//!
//! A full map lists every peer a node may see; with a mesh of n nodes that is n entries for each
//! of n streams. Each node's entry is serialized once (and again only after it changes) and the
//! full line is the concatenation, so opening a stream costs a copy, not n serializations.
//! [`NetmapOut`] mirrors [`proto::map::Netmap`] field for field; a test holds the two equal.

use bytes::Bytes;
use proto::map::{DnsConfig, FilterRule, FunnelRoute};
use proto::{Node, NodeId};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{funnels, self_view, Mesh};

#[derive(Serialize)]
struct FullOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    netmap: NetmapOut<'a>,
}

#[derive(Serialize)]
struct NetmapOut<'a> {
    #[serde(rename = "self")]
    self_node: Node,
    peers: Vec<&'a RawValue>,
    dns: DnsConfig,
    packet_filter: Vec<FilterRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    funnel_routes: Vec<FunnelRoute>,
}

impl Mesh {
    /// The `full` line for node `id` at the current sequence number.
    pub(super) fn full_line(&mut self, id: NodeId) -> Option<Bytes> {
        let me = self.nodes.get(&id)?.view.clone();
        let owners = funnels::owners(&self.funnels);
        let visible: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|e| !e.expired && self.sees_now(&owners, &me, &e.view))
            .map(|e| e.rec.id)
            .collect();
        for pid in &visible {
            if let Some(e) = self.nodes.get_mut(pid) {
                if e.json.is_none() {
                    e.json = serde_json::value::to_raw_value(&e.view).ok();
                }
            }
        }
        let peers = visible
            .iter()
            .filter_map(|pid| self.nodes.get(pid)?.json.as_deref())
            .collect();
        let out = FullOut {
            kind: "full",
            seq: self.seq,
            netmap: NetmapOut {
                self_node: self_view(&me),
                peers,
                dns: self.dns(),
                packet_filter: funnels::filter_for(&self.policy, &owners, &me),
                funnel_routes: funnels::routes_for(&self.policy, &self.funnels, &me),
            },
        };
        let mut v = serde_json::to_vec(&out).ok()?;
        v.push(b'\n');
        Some(Bytes::from(v))
    }
}
