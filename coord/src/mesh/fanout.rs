//! The flush: turn the changes collected in one batch window into one delta line per stream.
//!
//! Each stream's delta depends only on which changed nodes its node may see (and, after a policy
//! change, on its own visibility and filter). Streams whose deltas name the same nodes get the
//! same bytes, so a change seen by 10,000 streams is serialized once and shared.

use std::collections::HashMap;

use bytes::Bytes;
use proto::map::{FilterRule, MapMessage, NetmapDelta, PeerPatch};
use proto::NodeId;

use super::{line, Mesh, Output};

/// What one stream's delta consists of; equal keys mean equal bytes.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct DeltaKey {
    upserted: Vec<NodeId>,
    patched: Vec<NodeId>,
    removed: Vec<NodeId>,
    self_node: Option<NodeId>,
    filter: Option<Vec<FilterRule>>,
}

impl DeltaKey {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Mesh {
    pub(super) fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.seq += 1;
        self.counters.flushes += 1;
        let mut shared: HashMap<DeltaKey, Bytes> = HashMap::new();
        let streams: Vec<_> = self.streams.iter().map(|(s, n)| (*s, *n)).collect();
        for (sid, nid) in streams {
            let Some(me) = self.nodes.get(&nid) else {
                continue;
            };
            if me.expired {
                continue;
            }
            let me = &me.view;
            let mut key = DeltaKey::default();
            let visible = |id: &NodeId| {
                *id != nid
                    && self
                        .nodes
                        .get(id)
                        .is_some_and(|e| !e.expired && self.policy.can_see(me, &e.view))
            };
            if let Some(old) = &pending.old_policy {
                for e in self.nodes.values() {
                    if e.rec.id == nid || e.expired {
                        continue;
                    }
                    let was = old.can_see(me, &e.view);
                    let is = self.policy.can_see(me, &e.view);
                    if is && !was {
                        key.upserted.push(e.rec.id);
                    } else if was && !is {
                        key.removed.push(e.rec.id);
                    }
                }
                let filter = self.policy.filter_for(me);
                if filter != old.filter_for(me) {
                    key.filter = Some(filter);
                }
            }
            key.upserted
                .extend(pending.upserted.iter().filter(|id| visible(id)));
            key.upserted.sort_unstable();
            key.upserted.dedup();
            key.patched.extend(
                pending
                    .patched
                    .iter()
                    .filter(|id| visible(id) && key.upserted.binary_search(id).is_err()),
            );
            for (id, old_view) in &pending.removed {
                let knew = self.policy.can_see(me, old_view)
                    || pending
                        .old_policy
                        .as_ref()
                        .is_some_and(|p| p.can_see(me, old_view));
                if *id != nid && knew && !visible(id) {
                    key.removed.push(*id);
                }
            }
            key.removed.sort_unstable();
            key.removed.dedup();
            if pending.self_changed.contains(&nid) {
                key.self_node = Some(nid);
            }
            if key.is_empty() {
                continue;
            }
            let bytes = match shared.get(&key) {
                Some(b) => b.clone(),
                None => {
                    let b = self.render(&key, self.seq);
                    shared.insert(key, b.clone());
                    b
                }
            };
            self.out.push_back(Output::Send {
                stream: sid,
                line: bytes,
            });
        }
    }

    fn render(&self, key: &DeltaKey, seq: u64) -> Bytes {
        let view = |id: &NodeId| self.nodes.get(id).map(|e| e.view.clone());
        let delta = NetmapDelta {
            self_node: key
                .self_node
                .and_then(|id| Some(super::self_view(&self.nodes.get(&id)?.view))),
            peers_upserted: key.upserted.iter().filter_map(view).collect(),
            peers_patched: key
                .patched
                .iter()
                .filter_map(|id| {
                    let v = &self.nodes.get(id)?.view;
                    Some(PeerPatch {
                        id: *id,
                        endpoints: Some(v.endpoints.clone()),
                        online: Some(v.online),
                    })
                })
                .collect(),
            peers_removed: key.removed.clone(),
            packet_filter: key.filter.clone(),
            ..NetmapDelta::default()
        };
        line(&MapMessage::Delta { seq, delta })
    }
}
