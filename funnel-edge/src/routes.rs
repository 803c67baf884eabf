//! The funnel routing table, sans-IO: which node serves `NAME.<funnel domain>`, built from the
//! edge's netmap. No I/O and no clock of its own: times are Unix seconds handed in by the caller.
//!
//! A route is live until its `expires`. A name whose route expired (still listed with a past
//! `expires`, or dropped from the netmap at or after its expiry) is remembered for
//! [`EXPIRED_MEMORY`] so its visitors are told the funnel expired rather than that it never
//! existed; at most [`MAX_EXPIRED`] such names are kept, the oldest dropped first.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use proto::map::Netmap;

use crate::certs::normalize_domain;

/// How long an expired funnel's name is remembered (seconds).
pub const EXPIRED_MEMORY: u64 = 24 * 3600;
/// At most this many expired names are remembered.
pub const MAX_EXPIRED: usize = 10_000;
/// A route dropped from the netmap this close before its `expires` still counts as expired
/// rather than stopped: the coordinator's clock and ours may disagree a little.
const CLOCK_SLACK: u64 = 120;

/// What a host name maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A live funnel: connect to `node_ip` (the node's mesh IPv4) and ask for `name`.
    Live {
        name: String,
        node_ip: IpAddr,
        port: u16,
    },
    /// The funnel existed but its TTL ran out.
    Expired { name: String },
    /// No such funnel (or not a name under the funnel domain at all).
    Unknown,
}

/// The funnel domain was not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid funnel domain {0:?}: expected a DNS name such as funnel.example.com")]
pub struct InvalidDomain(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    node_ip: IpAddr,
    port: u16,
    expires: u64,
}

impl Route {
    /// Live until its `expires` (a second count), not at it.
    fn live_at(&self, now: u64) -> bool {
        self.expires > now
    }
}

/// Funnel name (one lowercase label) → route, plus the recently expired names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    domain: String,
    routes: HashMap<String, Route>,
    /// Name → when we noticed it expired.
    expired: HashMap<String, u64>,
    /// (noticed, name), oldest first: the eviction order of `expired`.
    expired_order: BTreeMap<(u64, String), ()>,
}

impl RouteTable {
    /// An empty table for `NAME.<domain>`.
    pub fn new(domain: &str) -> Result<Self, InvalidDomain> {
        let domain = normalize_domain(domain).map_err(|_| InvalidDomain(domain.to_owned()))?;
        Ok(Self {
            domain,
            routes: HashMap::new(),
            expired: HashMap::new(),
            expired_order: BTreeMap::new(),
        })
    }

    /// A table built from `netmap` at `now`.
    pub fn from_netmap(domain: &str, netmap: &Netmap, now: u64) -> Result<Self, InvalidDomain> {
        let mut t = Self::new(domain)?;
        t.update(netmap, now);
        Ok(t)
    }

    /// The funnel domain (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Number of routes in the table, live or past their expiry.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Replaces the routes with the netmap's. Routes naming a node the netmap does not list, or
    /// an invalid name, are skipped. Routes that disappeared at or after their expiry, and
    /// listed routes already past it, are remembered as expired.
    pub fn update(&mut self, netmap: &Netmap, now: u64) {
        let mut routes = HashMap::with_capacity(netmap.funnel_routes.len());
        for r in &netmap.funnel_routes {
            let name = r.name.to_ascii_lowercase();
            if !proto_label(&name) {
                tracing::debug!(name = %r.name, "funnel route with an invalid name skipped");
                continue;
            }
            let Some(node) = netmap.peers.iter().find(|p| p.id == r.node) else {
                tracing::debug!(%name, node = r.node.0, "funnel route to a node not in the netmap");
                continue;
            };
            let route = Route {
                node_ip: IpAddr::V4(node.ipv4),
                port: r.port,
                expires: r.expires,
            };
            // Two routes for one name would be the coordinator's bug; the later expiry wins.
            match routes.get(&name) {
                Some(Route { expires, .. }) if *expires >= route.expires => {}
                _ => {
                    routes.insert(name, route);
                }
            }
        }
        let old = std::mem::replace(&mut self.routes, routes);
        for (name, route) in old {
            if !self.routes.contains_key(&name) && route.expires <= now.saturating_add(CLOCK_SLACK)
            {
                self.remember_expired(name, now);
            }
        }
        let listed_expired: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, r)| !r.live_at(now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in listed_expired {
            self.remember_expired(name, now);
        }
        self.prune(now);
    }

    /// What `host` (a SNI name or Host header: any case, optional `:port`, optional trailing
    /// dot) maps to at `now`.
    pub fn lookup(&self, host: &str, now: u64) -> Lookup {
        let Some(name) = self.funnel_name(host) else {
            return Lookup::Unknown;
        };
        if let Some(r) = self.routes.get(&name) {
            if r.live_at(now) {
                return Lookup::Live {
                    name,
                    node_ip: r.node_ip,
                    port: r.port,
                };
            }
            return Lookup::Expired { name };
        }
        match self.expired.get(&name) {
            Some(&noticed) if noticed.saturating_add(EXPIRED_MEMORY) > now => {
                Lookup::Expired { name }
            }
            _ => Lookup::Unknown,
        }
    }

    /// The node of the live funnel `name` (a [`funnel_name`](Self::funnel_name)), if there is
    /// one at `now`: [`lookup`](Self::lookup)'s `Live` case, for a name already worked out.
    pub fn live(&self, name: &str, now: u64) -> Option<IpAddr> {
        self.routes
            .get(name)
            .filter(|r| r.live_at(now))
            .map(|r| r.node_ip)
    }

    /// The funnel name (lowercase label) if `host` is `NAME.<domain>`, else `None`.
    pub fn funnel_name(&self, host: &str) -> Option<String> {
        let host = normalize_host(host)?;
        let label = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        proto_label(label).then(|| label.to_owned())
    }

    fn remember_expired(&mut self, name: String, now: u64) {
        if let Some(old) = self.expired.insert(name.clone(), now) {
            self.expired_order.remove(&(old, name.clone()));
        }
        self.expired_order.insert((now, name), ());
        while self.expired.len() > MAX_EXPIRED {
            let Some(((_, oldest), ())) = self.expired_order.pop_first() else {
                break;
            };
            self.expired.remove(&oldest);
        }
    }

    fn prune(&mut self, now: u64) {
        while let Some((&(noticed, _), ())) = self.expired_order.first_key_value() {
            if noticed.saturating_add(EXPIRED_MEMORY) > now {
                break;
            }
            if let Some(((_, name), ())) = self.expired_order.pop_first() {
                self.expired.remove(&name);
            }
        }
    }
}

/// Lowercases a host name and strips an optional `:port` and one trailing dot. `None` for what
/// cannot be a DNS name (IPv6 literals, empty, too long).
pub fn normalize_host(host: &str) -> Option<String> {
    host_part(host).map(str::to_ascii_lowercase)
}

/// The host of `host` as [`normalize_host`] takes it (no port, no trailing dot), not lowercased.
pub fn host_part(host: &str) -> Option<&str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    Some(host)
}

/// A funnel name: one lowercase LDH label.
fn proto_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
