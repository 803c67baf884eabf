//! The flush: turn the changes collected in one batch window into one delta line per stream.
//!
//! Each stream's delta depends only on which changed nodes its node may see (and, after a policy
//! or funnel change, on its own visibility, filter and funnel routes). Streams whose deltas name the same nodes get the
//! same bytes, so a change seen by 10,000 streams is serialized once and shared.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use proto::map::{FilterRule, FunnelRoute, MapMessage, NetmapDelta, PeerPatch};
use proto::NodeId;

use super::{funnels, line, Mesh, Output};

/// What one stream's delta consists of; equal keys mean equal bytes.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct DeltaKey {
    upserted: Vec<NodeId>,
    patched: Vec<NodeId>,
    removed: Vec<NodeId>,
    self_node: Option<NodeId>,
    filter: Option<Vec<FilterRule>>,
    funnel_routes: Option<Vec<FunnelRoute>>,
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
        // The state at the start of this window, where it changed.
        let old_policy = pending.old_policy.as_ref().unwrap_or(&self.policy);
        let old_funnels = pending.old_funnels.as_ref().unwrap_or(&self.funnels);
        let owners = funnels::owners(&self.funnels);
        let old_owners = funnels::owners(old_funnels);
        // Nodes that gained their first funnel or lost their last: they and the edges now see
        // each other or no longer do, and their filter changes.
        let owners_changed: BTreeSet<NodeId> =
            owners.symmetric_difference(&old_owners).copied().collect();
        // Nodes whose own routes changed: their route list changes (and every edge's).
        let mut routes_changed: BTreeSet<NodeId> = BTreeSet::new();
        if pending.old_funnels.is_some() {
            let names: BTreeSet<&String> = old_funnels.keys().chain(self.funnels.keys()).collect();
            for name in names {
                let (old, new) = (old_funnels.get(name), self.funnels.get(name));
                if old != new {
                    routes_changed.extend(old.iter().chain(new.iter()).map(|r| r.node));
                }
            }
        }
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
                    && self.nodes.get(id).is_some_and(|e| {
                        !e.expired && funnels::sees(&self.policy, &owners, me, &e.view)
                    })
            };
            // Nodes whose visibility may have changed without a change of their own: everyone
            // after a policy change; after funnels opened or closed, edges and those owners.
            let candidates: Vec<NodeId> = if pending.old_policy.is_some() {
                self.nodes.keys().copied().collect()
            } else {
                let mut c = Vec::new();
                if !owners_changed.is_empty() && self.policy.is_edge(me) {
                    c.extend(owners_changed.iter().copied());
                }
                if owners_changed.contains(&nid) {
                    c.extend(
                        self.nodes
                            .values()
                            .filter(|e| self.policy.is_edge(&e.view))
                            .map(|e| e.rec.id),
                    );
                }
                c
            };
            for cid in candidates {
                let Some(e) = self.nodes.get(&cid) else {
                    continue;
                };
                if cid == nid || e.expired {
                    continue;
                }
                let was = funnels::sees(old_policy, &old_owners, me, &e.view);
                let is = funnels::sees(&self.policy, &owners, me, &e.view);
                if is && !was {
                    key.upserted.push(cid);
                } else if was && !is {
                    key.removed.push(cid);
                }
            }
            if pending.old_policy.is_some() || owners_changed.contains(&nid) {
                let filter = funnels::filter_for(&self.policy, &owners, me);
                if filter != funnels::filter_for(old_policy, &old_owners, me) {
                    key.filter = Some(filter);
                }
            }
            if pending.old_policy.is_some()
                || (pending.old_funnels.is_some()
                    && (self.policy.is_edge(me) || routes_changed.contains(&nid)))
            {
                let routes = funnels::routes_for(&self.policy, &self.funnels, me);
                if routes != funnels::routes_for(old_policy, old_funnels, me) {
                    key.funnel_routes = Some(routes);
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
                let knew = funnels::sees(&self.policy, &owners, me, old_view)
                    || funnels::sees(old_policy, &old_owners, me, old_view);
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
            funnel_routes: key.funnel_routes.clone(),
            ..NetmapDelta::default()
        };
        line(&MapMessage::Delta { seq, delta })
    }
}
