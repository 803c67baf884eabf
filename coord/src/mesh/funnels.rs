//! Funnel routes in the core: which are live, who may open one, and what they change in netmaps.
//!
//! A live route is part of the netmap: an edge (policy `edges`) gets every route, a node its own.
//! An edge and a node with at least one live funnel see each other as peers, and that node's
//! packet filter gets one extra rule: the edges' tags may reach TCP [`FUNNEL_INGRESS_PORT`],
//! nothing else. Routes expire at their `expires` (Unix seconds); [`Mesh::tick`] drops them.
//! Pure over the core's state: storage is the driver's job (persist first, then call in here).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proto::api::FunnelRequest;
use proto::map::{FilterRule, FunnelRoute};
use proto::policy::{is_dns_label, Policy};
use proto::{Node, NodeId};

use super::Mesh;

/// Shortest TTL a funnel may have (short enough for tests of expiry).
pub const MIN_FUNNEL_TTL: Duration = Duration::from_secs(1);
/// TTL of a funnel that asked for none, unless the grant allows less.
pub const DEFAULT_FUNNEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a funnel request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunnelError {
    #[error(
        "invalid funnel name {0:?}: use 1 to 63 lowercase letters, digits and '-', not starting \
         or ending with '-'"
    )]
    InvalidName(String),
    #[error("invalid funnel port 0: give the local port to publish (1-65535)")]
    InvalidPort,
    #[error("funnel ttl must be at least {}s", MIN_FUNNEL_TTL.as_secs())]
    TtlTooShort,
    #[error(
        "funnel ttl {requested} is above the policy's maximum of {max} for this node and port {port}"
    )]
    TtlTooLong {
        requested: String,
        max: String,
        port: u16,
    },
    /// The policy's own words on which grant is missing.
    #[error("{0}")]
    NotGranted(String),
    #[error("funnel name {0:?} is in use by another node: pick another name")]
    NameTaken(String),
    #[error("this node has no funnel named {0:?}")]
    NotFound(String),
    #[error("funnel {0:?} belongs to another node: only its owner may close it")]
    NotOwner(String),
}

fn human(secs: u64) -> String {
    proto::duration::format(Duration::from_secs(secs))
}

/// Whether `a` is told about `b`: the policy says so, or one is an edge and the other has a live
/// funnel (`owners`).
pub(super) fn sees(policy: &Policy, owners: &BTreeSet<NodeId>, a: &Node, b: &Node) -> bool {
    a.id != b.id
        && (policy.can_see(a, b)
            // Owners first: with no funnels open this costs nothing.
            || (owners.contains(&b.id) && policy.is_edge(a))
            || (owners.contains(&a.id) && policy.is_edge(b)))
}

/// The inbound filter of `node`: the policy's rules, plus the funnel ingress rule for the edges
/// while it has a live funnel.
pub(super) fn filter_for(
    policy: &Policy,
    owners: &BTreeSet<NodeId>,
    node: &Node,
) -> Vec<FilterRule> {
    let mut rules = policy.filter_for(node);
    if owners.contains(&node.id) {
        let mut src: Vec<String> = policy
            .doc()
            .edges
            .iter()
            .map(|e| e.tag.to_string())
            .collect();
        src.sort();
        src.dedup();
        let rule = FilterRule::funnel_ingress(src);
        if !rule.src.is_empty() && !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

/// The routes `node` is told about, ordered by name.
pub(super) fn routes_for(
    policy: &Policy,
    funnels: &BTreeMap<String, FunnelRoute>,
    node: &Node,
) -> Vec<FunnelRoute> {
    let edge = policy.is_edge(node);
    funnels
        .values()
        .filter(|r| edge || r.node == node.id)
        .cloned()
        .collect()
}

/// Nodes that hold at least one route.
pub(super) fn owners(funnels: &BTreeMap<String, FunnelRoute>) -> BTreeSet<NodeId> {
    funnels.values().map(|r| r.node).collect()
}

impl Mesh {
    /// Checks a funnel request of node `id` against names, the policy and TTL limits, and returns
    /// the route to store. Nothing changes yet.
    pub fn plan_funnel(
        &self,
        id: NodeId,
        req: &FunnelRequest,
        now_unix: u64,
    ) -> Result<FunnelRoute, FunnelError> {
        let Some(e) = self.nodes.get(&id) else {
            return Err(FunnelError::NotGranted(format!(
                "node {id} is not in the mesh"
            )));
        };
        let name = req.name.clone().unwrap_or_else(|| e.rec.name.clone());
        if !is_dns_label(&name) {
            return Err(FunnelError::InvalidName(name));
        }
        if req.port == 0 {
            return Err(FunnelError::InvalidPort);
        }
        if let Some(r) = self.funnels.get(&name) {
            if r.node != id && r.expires > now_unix {
                return Err(FunnelError::NameTaken(name));
            }
        }
        let max = self
            .policy
            .funnel_ttl(&e.view, req.port)
            .map_err(FunnelError::NotGranted)?
            .as_secs();
        let ttl = match req.ttl_secs {
            None => max.min(DEFAULT_FUNNEL_TTL.as_secs()),
            Some(t) if t < MIN_FUNNEL_TTL.as_secs() => return Err(FunnelError::TtlTooShort),
            Some(t) if t > max => {
                return Err(FunnelError::TtlTooLong {
                    requested: human(t),
                    max: human(max),
                    port: req.port,
                })
            }
            Some(t) => t,
        };
        Ok(FunnelRoute {
            name,
            node: id,
            port: req.port,
            expires: now_unix.saturating_add(ttl),
        })
    }

    /// Routes read from storage at start, before any stream is open: live ones of unexpired
    /// nodes are kept; the rest are reported by [`Self::drain_dropped_funnels`].
    pub fn load_funnels(&mut self, routes: Vec<FunnelRoute>, now_unix: u64) {
        for r in routes {
            let owner_ok = self.nodes.get(&r.node).is_some_and(|e| !e.expired);
            let granted = self
                .nodes
                .get(&r.node)
                .is_some_and(|e| self.policy.funnel_ttl(&e.view, r.port).is_ok());
            if owner_ok && granted && r.expires > now_unix {
                self.funnels.insert(r.name.clone(), r);
            } else {
                self.dropped_funnels.push(r.name);
            }
        }
        // A policy changed while coord was down: no route outlives its grant's max_ttl.
        self.shorten_funnels_to_policy(now_unix);
    }

    /// A funnel was stored (opened or renewed): its edges and owner hear of it.
    pub fn set_funnel(&mut self, route: FunnelRoute, now: Instant) {
        if self.funnels.get(&route.name) == Some(&route) {
            return;
        }
        self.snapshot_funnels();
        self.funnels.insert(route.name.clone(), route);
        self.touch(now);
    }

    /// A funnel was deleted from storage.
    pub fn remove_funnel(&mut self, name: &str, now: Instant) -> Option<FunnelRoute> {
        if !self.funnels.contains_key(name) {
            return None;
        }
        self.snapshot_funnels();
        let r = self.funnels.remove(name);
        self.touch(now);
        r
    }

    /// The live route named `name`.
    pub fn funnel(&self, name: &str) -> Option<&FunnelRoute> {
        self.funnels.get(name)
    }

    /// Every live route, by name.
    pub fn all_funnels(&self) -> impl Iterator<Item = &FunnelRoute> {
        self.funnels.values()
    }

    /// Node `id`'s live routes, by name.
    pub fn funnels_of(&self, id: NodeId) -> Vec<FunnelRoute> {
        self.funnels
            .values()
            .filter(|r| r.node == id)
            .cloned()
            .collect()
    }

    /// Names of routes the core dropped on its own (expired, owner gone or expired, grant
    /// withdrawn) since the last call: the driver deletes them from storage.
    pub fn drain_dropped_funnels(&mut self) -> Vec<String> {
        std::mem::take(&mut self.dropped_funnels)
    }

    /// Routes the core shortened since the last call (a new policy lowered their grant's
    /// `max_ttl`): the driver stores their new expiry.
    pub fn drain_shortened_funnels(&mut self) -> Vec<FunnelRoute> {
        std::mem::take(&mut self.shortened_funnels)
    }

    /// Caps every route's expiry at `now_unix` plus its grant's `max_ttl`; the caller arms the
    /// batch timer.
    pub(super) fn shorten_funnels_to_policy(&mut self, now_unix: u64) {
        let shortened: Vec<FunnelRoute> = self
            .funnels
            .values()
            .filter_map(|r| {
                let max = self
                    .policy
                    .funnel_ttl(&self.nodes.get(&r.node)?.view, r.port)
                    .ok()?;
                let limit = now_unix.saturating_add(max.as_secs());
                (r.expires > limit).then(|| FunnelRoute {
                    expires: limit,
                    ..r.clone()
                })
            })
            .collect();
        if shortened.is_empty() {
            return;
        }
        self.snapshot_funnels();
        for r in shortened {
            self.funnels.insert(r.name.clone(), r.clone());
            self.shortened_funnels.push(r);
        }
    }

    /// Remembers the routes as they were before the first change of this batch window.
    fn snapshot_funnels(&mut self) {
        if self.pending.old_funnels.is_none() {
            self.pending.old_funnels = Some(self.funnels.clone());
        }
    }

    /// Drops every route `drop` selects; the caller arms the batch timer.
    pub(super) fn drop_funnels_where(&mut self, drop: impl Fn(&Self, &FunnelRoute) -> bool) {
        let gone: Vec<String> = self
            .funnels
            .values()
            .filter(|r| drop(self, r))
            .map(|r| r.name.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        self.snapshot_funnels();
        for name in gone {
            self.funnels.remove(&name);
            self.dropped_funnels.push(name);
        }
    }

    /// Whether `a` is told about `b` now.
    pub(super) fn sees_now(&self, owners: &BTreeSet<NodeId>, a: &Node, b: &Node) -> bool {
        sees(&self.policy, owners, a, b)
    }
}
