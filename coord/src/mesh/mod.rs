//! The mesh core: every node, the policy, the open map streams, and the fan-out of changes.
//!
//! Sans-IO: no sockets, no database, no clock. Callers feed events (`insert_node`,
//! `set_endpoints`, `open_stream`, ...) with the time, then drain [`Mesh::poll_output`] and wake
//! up at [`Mesh::poll_timeout`]. Changes are collected and flushed together once the batch
//! window after the first of them has passed; each stream then gets one delta line, and
//! streams that get the same delta share one serialized line.
//!
//! Funnel routes live here too ([`funnels`]): they are part of edges' and owners' netmaps and
//! widen who sees whom (edges ↔ nodes with a live funnel).

pub mod alloc;
mod fanout;
mod full;
pub mod funnels;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keys::PublicKey;
use proto::map::{DnsConfig, FunnelRoute, MapMessage, Netmap};
use proto::policy::Policy;
use proto::{Node, NodeId};

use crate::store::{NewNode, NodeRecord};

pub use funnels::FunnelError;

/// Identifies one open map stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this line (JSON plus `\n`) to the stream.
    Send { stream: StreamId, line: Bytes },
    /// Write this last line, then end the stream.
    Close { stream: StreamId, line: Bytes },
}

#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The mesh DNS domain (`mesh.internal`).
    pub domain: String,
    /// The mesh's ULA /48 prefix.
    pub ula_prefix: Ipv6Addr,
    /// How long changes are collected before they are sent (≤ 50 ms).
    pub batch_window: Duration,
    /// How long a node key is valid after registration.
    pub key_lifetime: Duration,
    /// How long an ephemeral node may stay offline before it is removed.
    pub ephemeral_timeout: Duration,
    /// The funnel domain: only edge rules for it (or for any domain) mark edges.
    pub funnel_domain: String,
    /// The port funnel URLs name (443: none).
    pub funnel_port: u16,
}

#[derive(Debug)]
struct Entry {
    rec: NodeRecord,
    /// The node as the netmap shows it.
    view: Node,
    streams: u32,
    /// Unix seconds the node was last connected (in memory; the driver persists it).
    last_seen: Option<u64>,
    expired: bool,
    /// `view` serialized, as full maps embed it; `None` after `view` changed.
    json: Option<Box<serde_json::value::RawValue>>,
}

/// Changes not yet sent.
#[derive(Debug, Default)]
struct Pending {
    deadline: Option<Instant>,
    /// Added, or changed beyond endpoints/online.
    upserted: BTreeSet<NodeId>,
    /// Endpoints or online changed.
    patched: BTreeSet<NodeId>,
    /// Gone (removed or expired), with their last view to decide who knew them.
    removed: BTreeMap<NodeId, Node>,
    /// Nodes whose own entry changed (their `self` line).
    self_changed: BTreeSet<NodeId>,
    /// The policy before a change in this window.
    old_policy: Option<Policy>,
    /// The funnel routes before a change in this window.
    old_funnels: Option<BTreeMap<String, FunnelRoute>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub lines_sent: u64,
    pub bytes_sent: u64,
    pub flushes: u64,
}

#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    nodes: BTreeMap<NodeId, Entry>,
    by_key: HashMap<PublicKey, NodeId>,
    names: HashSet<String>,
    used_v4: BTreeSet<u32>,
    policy: Policy,
    /// Live funnel routes by name.
    funnels: BTreeMap<String, FunnelRoute>,
    /// Routes dropped by the core itself, for the driver to delete from storage.
    dropped_funnels: Vec<String>,
    /// Routes the core shortened on its own (a policy lowered their `max_ttl`), for storage.
    shortened_funnels: Vec<FunnelRoute>,
    streams: BTreeMap<StreamId, NodeId>,
    /// Nodes with at least one open stream (kept in step with `Entry::streams`).
    online: usize,
    next_stream: u64,
    seq: u64,
    pending: Pending,
    out: VecDeque<Output>,
    counters: Counters,
}

/// A node's `self` entry: its own soft state is what it reported itself and is not echoed back,
/// so `self` changes only when identity or expiry do.
fn self_view(view: &Node) -> Node {
    let mut me = view.clone();
    me.endpoints = vec![];
    me.online = true;
    me
}

fn line(msg: &MapMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

impl Mesh {
    pub fn new(cfg: MeshConfig, policy: Policy, records: Vec<NodeRecord>, now_unix: u64) -> Self {
        let policy = policy.for_funnel_domain(&cfg.funnel_domain);
        let mut mesh = Self {
            cfg,
            nodes: BTreeMap::new(),
            by_key: HashMap::new(),
            names: HashSet::new(),
            used_v4: BTreeSet::new(),
            policy,
            funnels: BTreeMap::new(),
            dropped_funnels: Vec::new(),
            shortened_funnels: Vec::new(),
            streams: BTreeMap::new(),
            online: 0,
            next_stream: 1,
            seq: 0,
            pending: Pending::default(),
            out: VecDeque::new(),
            counters: Counters::default(),
        };
        for rec in records {
            mesh.add_entry(rec, now_unix);
        }
        mesh
    }

    fn add_entry(&mut self, rec: NodeRecord, now_unix: u64) {
        let view = Node {
            id: rec.id,
            name: rec.name.clone(),
            fqdn: format!("{}.{}", rec.name, self.cfg.domain),
            public_key: rec.public_key,
            ipv4: rec.ipv4,
            ipv6: rec.ipv6,
            tags: rec.tags.clone(),
            endpoints: vec![],
            online: false,
            key_expiry: rec.key_expiry,
        };
        self.by_key.insert(rec.public_key, rec.id);
        self.names.insert(rec.name.clone());
        self.used_v4.insert(u32::from(rec.ipv4));
        let expired = rec.key_expiry <= now_unix;
        let last_seen = rec.last_seen;
        self.nodes.insert(
            rec.id,
            Entry {
                rec,
                view,
                streams: 0,
                last_seen,
                expired,
                json: None,
            },
        );
    }

    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The node registered with this key, if any.
    pub fn node_by_key(&self, key: &PublicKey) -> Option<(&NodeRecord, bool)> {
        let e = self.nodes.get(self.by_key.get(key)?)?;
        Some((&e.rec, e.expired))
    }

    /// The node with this id or (unique) name.
    pub fn find(&self, id_or_name: &str) -> Option<NodeId> {
        if let Ok(id) = id_or_name.parse::<u64>() {
            if self.nodes.contains_key(&NodeId(id)) {
                return Some(NodeId(id));
            }
        }
        self.nodes
            .values()
            .find(|e| e.rec.name == id_or_name)
            .map(|e| e.rec.id)
    }

    /// The name of node `id`.
    pub fn node_name(&self, id: NodeId) -> Option<String> {
        self.nodes.get(&id).map(|e| e.rec.name.clone())
    }

    /// Every node with what listings show: record, view, last seen, expired.
    pub fn list(&self) -> impl Iterator<Item = (&NodeRecord, &Node, Option<u64>, bool)> {
        self.nodes
            .values()
            .map(|e| (&e.rec, &e.view, e.last_seen, e.expired))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn online_count(&self) -> usize {
        self.online
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Allocates a name and addresses for a node about to be stored.
    pub fn plan_node(
        &self,
        public_key: PublicKey,
        hostname: &str,
        tags: Vec<String>,
        ephemeral: bool,
        auth_key_id: Option<String>,
        now_unix: u64,
    ) -> Result<NewNode, alloc::MeshFull> {
        let ipv4 = alloc::next_ipv4(&self.used_v4)?;
        Ok(NewNode {
            public_key,
            name: alloc::unique_name(&alloc::sanitize_label(hostname), &self.names),
            hostname: hostname.chars().take(255).collect(),
            ipv4,
            ipv6: alloc::ipv6_for(self.cfg.ula_prefix, ipv4),
            tags,
            ephemeral,
            auth_key_id,
            created: now_unix,
            key_expiry: now_unix.saturating_add(self.cfg.key_lifetime.as_secs()),
        })
    }

    fn touch(&mut self, now: Instant) {
        if self.pending.deadline.is_none() {
            self.pending.deadline = Some(now + self.cfg.batch_window);
        }
    }

    /// A node was stored: tell everyone who may see it.
    pub fn insert_node(&mut self, rec: NodeRecord, now: Instant, now_unix: u64) {
        let id = rec.id;
        self.add_entry(rec, now_unix);
        self.pending.upserted.insert(id);
        self.touch(now);
    }

    /// A node's key expiry changed (renewal or `nodes expire`).
    pub fn set_key_expiry(&mut self, id: NodeId, expiry: u64, now: Instant, now_unix: u64) {
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        e.rec.key_expiry = expiry;
        e.view.key_expiry = expiry;
        e.json = None;
        let was_expired = e.expired;
        e.expired = expiry <= now_unix;
        match (was_expired, e.expired) {
            (false, true) => self.expire(id, "node key expired"),
            (true, false) => {
                self.pending.removed.remove(&id);
                self.pending.upserted.insert(id);
            }
            _ => {
                self.pending.upserted.insert(id);
            }
        }
        self.pending.self_changed.insert(id);
        self.touch(now);
    }

    /// Hides an expired node from its peers and ends its streams.
    fn expire(&mut self, id: NodeId, reason: &str) {
        let Some(e) = self.nodes.get(&id) else {
            return;
        };
        self.pending.removed.insert(id, e.view.clone());
        self.pending.upserted.remove(&id);
        self.pending.patched.remove(&id);
        // A node that may not use the mesh publishes nothing.
        self.drop_funnels_where(|_, r| r.node == id);
        self.close_streams_of(id, reason);
    }

    fn close_streams_of(&mut self, id: NodeId, reason: &str) {
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, n)| **n == id)
            .map(|(s, _)| *s)
            .collect();
        let bye = line(&MapMessage::Revoked {
            reason: reason.to_owned(),
        });
        for s in ids {
            self.out.push_back(Output::Close {
                stream: s,
                line: bye.clone(),
            });
        }
    }

    /// A node was deleted from storage.
    pub fn remove_node(&mut self, id: NodeId, now: Instant) {
        self.expire(id, "node was removed from the mesh");
        if let Some(e) = self.nodes.remove(&id) {
            if e.streams > 0 {
                self.online = self.online.saturating_sub(1);
            }
            self.by_key.remove(&e.rec.public_key);
            self.names.remove(&e.rec.name);
            self.used_v4.remove(&u32::from(e.rec.ipv4));
        }
        self.streams.retain(|_, n| *n != id);
        self.touch(now);
    }

    pub fn set_endpoints(&mut self, id: NodeId, endpoints: Vec<SocketAddr>, now: Instant) {
        let Some(e) = self.nodes.get_mut(&id) else {
            return;
        };
        if e.view.endpoints != endpoints {
            e.view.endpoints = endpoints;
            e.json = None;
            self.pending.patched.insert(id);
            self.touch(now);
        }
    }

    /// A new policy. Funnels it no longer grants are dropped; funnels that would outlive the
    /// new grant's `max_ttl` (counted from `now_unix`) are shortened to it.
    pub fn set_policy(&mut self, policy: Policy, now: Instant, now_unix: u64) {
        let policy = policy.for_funnel_domain(&self.cfg.funnel_domain);
        let old = std::mem::replace(&mut self.policy, policy);
        if self.pending.old_policy.is_none() {
            self.pending.old_policy = Some(old);
        }
        self.drop_funnels_where(|m, r| {
            m.nodes
                .get(&r.node)
                .is_none_or(|e| m.policy.funnel_ttl(&e.view, r.port).is_err())
        });
        self.shorten_funnels_to_policy(now_unix);
        self.touch(now);
    }

    /// A node opened a map stream: queue its full netmap at once.
    pub fn open_stream(&mut self, id: NodeId, now: Instant, now_unix: u64) -> Option<StreamId> {
        let e = self.nodes.get_mut(&id)?;
        if e.expired {
            return None;
        }
        e.streams += 1;
        e.last_seen = Some(now_unix);
        if e.streams == 1 {
            self.online += 1;
            e.view.online = true;
            e.json = None;
            self.pending.patched.insert(id);
            self.touch(now);
        }
        let sid = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(sid, id);
        let full = self.full_line(id)?;
        self.out.push_back(Output::Send {
            stream: sid,
            line: full,
        });
        Some(sid)
    }

    /// A stream ended (client went away or was closed). Returns the node, for last-seen.
    pub fn close_stream(&mut self, sid: StreamId, now: Instant, now_unix: u64) -> Option<NodeId> {
        let id = self.streams.remove(&sid)?;
        if let Some(e) = self.nodes.get_mut(&id) {
            e.streams = e.streams.saturating_sub(1);
            e.last_seen = Some(now_unix);
            if e.streams == 0 {
                self.online = self.online.saturating_sub(1);
            }
            if e.streams == 0 && !e.expired {
                e.view.online = false;
                e.json = None;
                self.pending.patched.insert(id);
                self.touch(now);
            }
        }
        Some(id)
    }

    /// Node `id`'s own entry, as its netmap's `self` shows it.
    pub fn self_entry(&self, id: NodeId) -> Option<Node> {
        Some(self_view(&self.nodes.get(&id)?.view))
    }

    /// The netmap node `id` sees now.
    pub fn netmap_for(&self, id: NodeId) -> Option<Netmap> {
        let me = &self.nodes.get(&id)?.view;
        let owners = funnels::owners(&self.funnels);
        let peers = self
            .nodes
            .values()
            .filter(|e| !e.expired && self.sees_now(&owners, me, &e.view))
            .map(|e| e.view.clone())
            .collect();
        Some(Netmap {
            self_node: self_view(me),
            peers,
            dns: self.dns(),
            packet_filter: funnels::filter_for(&self.policy, &owners, me),
            funnel_routes: funnels::routes_for(&self.policy, &self.funnels, me),
        })
    }

    fn dns(&self) -> DnsConfig {
        DnsConfig {
            domain: self.cfg.domain.clone(),
            magic_dns: true,
        }
    }

    /// Periodic work at `now_unix`: key and funnel expiry. Returns ephemeral nodes that have been
    /// offline too long; the driver deletes them from storage and then calls
    /// [`Self::remove_node`]. Expired funnels are reported by [`Self::drain_dropped_funnels`].
    pub fn tick(&mut self, now: Instant, now_unix: u64) -> Vec<NodeId> {
        let before = self.dropped_funnels.len();
        self.drop_funnels_where(|_, r| r.expires <= now_unix);
        if self.dropped_funnels.len() > before {
            self.touch(now);
        }
        let newly_expired: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|e| !e.expired && e.rec.key_expiry <= now_unix)
            .map(|e| e.rec.id)
            .collect();
        for id in newly_expired {
            if let Some(e) = self.nodes.get_mut(&id) {
                e.expired = true;
            }
            self.expire(id, "node key expired");
            self.touch(now);
        }
        let timeout = self.cfg.ephemeral_timeout.as_secs();
        self.nodes
            .values()
            .filter(|e| e.rec.ephemeral && e.streams == 0)
            .filter(|e| {
                let since = e.last_seen.unwrap_or(e.rec.created);
                now_unix.saturating_sub(since) >= timeout
            })
            .map(|e| e.rec.id)
            .collect()
    }

    /// When the driver must call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.deadline
    }

    /// Flushes pending changes whose batch window has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pending.deadline.is_some_and(|d| d <= now) {
            self.flush();
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front()?;
        let (Output::Send { line, .. } | Output::Close { line, .. }) = &out;
        self.counters.lines_sent += 1;
        self.counters.bytes_sent += line.len() as u64;
        Some(out)
    }
}

#[cfg(test)]
mod tests;
