//! The funnels this node opted in to, sans-IO: the node's own record, which the ingress trusts
//! rather than the netmap (a misconfigured coordinator or edge still cannot reach a port the node
//! did not publish). Times are Unix seconds, handed in by the caller.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One published funnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFunnel {
    pub name: String,
    /// The local TCP port on 127.0.0.1 it forwards to.
    pub port: u16,
    pub url: String,
    /// Unix seconds after which it is gone.
    pub expires: u64,
    /// Lives until its TTL (`--bg`) rather than as long as the `meshd funnel` command.
    pub background: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FunnelTable {
    funnels: BTreeMap<String, LocalFunnel>,
    /// Funnels the coordinator's routes have listed since they were opened here.
    listed: BTreeSet<String>,
}

impl FunnelTable {
    /// A table from saved background funnels, without those already expired.
    pub fn restore(saved: Vec<LocalFunnel>, now: u64) -> Self {
        let mut t = Self::default();
        for f in saved {
            if f.background && f.expires > now {
                t.upsert(f);
            }
        }
        t
    }

    /// Adds or replaces the funnel with this name.
    pub fn upsert(&mut self, f: LocalFunnel) {
        self.funnels.insert(f.name.clone(), f);
    }

    pub fn remove(&mut self, name: &str) -> Option<LocalFunnel> {
        self.listed.remove(name);
        self.funnels.remove(name)
    }

    /// Follows the coordinator's routes of this node (name → expiry): a funnel it shortened
    /// ends at the same time, and one it listed before but lists no more (closed by an admin,
    /// grant withdrawn) is dropped. Funnels it has not listed yet (opened a moment ago) are left
    /// alone, and nothing is lengthened or added. Returns the funnels dropped and whether
    /// anything changed.
    pub fn follow(&mut self, routes: &BTreeMap<String, u64>) -> (Vec<LocalFunnel>, bool) {
        let mut changed = false;
        let mut gone = Vec::new();
        let names: Vec<String> = self.funnels.keys().cloned().collect();
        for name in names {
            match routes.get(&name) {
                Some(&expires) => {
                    self.listed.insert(name.clone());
                    changed |= self.cap_expiry(&name, expires);
                }
                None if self.listed.contains(&name) => gone.extend(self.remove(&name)),
                None => {}
            }
        }
        changed |= !gone.is_empty();
        (gone, changed)
    }

    /// The local port of a live funnel.
    pub fn port_for(&self, name: &str, now: u64) -> Option<u16> {
        self.funnels
            .get(name)
            .filter(|f| f.expires > now)
            .map(|f| f.port)
    }

    /// Moves funnel `name`'s expiry earlier to `expires` (the coordinator shortened it); never
    /// later. Whether anything changed.
    pub fn cap_expiry(&mut self, name: &str, expires: u64) -> bool {
        match self.funnels.get_mut(name) {
            Some(f) if f.expires > expires => {
                f.expires = expires;
                true
            }
            _ => false,
        }
    }

    /// Drops and returns the funnels whose TTL has passed.
    pub fn expire(&mut self, now: u64) -> Vec<LocalFunnel> {
        let gone: Vec<String> = self
            .funnels
            .values()
            .filter(|f| f.expires <= now)
            .map(|f| f.name.clone())
            .collect();
        gone.iter().filter_map(|n| self.remove(n)).collect()
    }

    pub fn list(&self) -> Vec<LocalFunnel> {
        self.funnels.values().cloned().collect()
    }

    /// What survives a restart of meshd: the background funnels.
    pub fn saved(&self) -> Vec<LocalFunnel> {
        self.funnels
            .values()
            .filter(|f| f.background)
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.funnels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, port: u16, expires: u64, background: bool) -> LocalFunnel {
        LocalFunnel {
            name: name.into(),
            port,
            url: format!("https://{name}.funnel.localhost/"),
            expires,
            background,
        }
    }

    #[test]
    fn only_live_funnels_have_a_port() {
        let mut t = FunnelTable::default();
        t.upsert(f("a", 3000, 100, false));
        t.upsert(f("b", 4000, 200, true));
        assert_eq!(t.port_for("a", 99), Some(3000));
        assert_eq!(t.port_for("a", 100), None);
        assert_eq!(t.port_for("c", 0), None);
        let gone = t.expire(150);
        assert_eq!(
            gone.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(t.list().len(), 1);
        // Renewing replaces the port and expiry.
        t.upsert(f("b", 4001, 300, true));
        assert_eq!(t.port_for("b", 250), Some(4001));
        assert!(t.remove("b").is_some() && t.is_empty());
    }

    #[test]
    fn only_background_funnels_survive_a_restart() {
        let mut t = FunnelTable::default();
        t.upsert(f("fg", 3000, 500, false));
        t.upsert(f("bg", 3001, 500, true));
        t.upsert(f("old", 3002, 50, true));
        let saved = t.saved();
        assert_eq!(saved.len(), 2);
        let r = FunnelTable::restore(saved, 100);
        assert_eq!(r.list(), vec![f("bg", 3001, 500, true)]);
    }

    #[test]
    fn the_coordinator_can_only_shorten_a_funnel() {
        let mut t = FunnelTable::default();
        t.upsert(f("demo", 3000, 1000, true));
        assert!(!t.cap_expiry("demo", 2000));
        assert!(!t.cap_expiry("other", 10));
        assert!(t.cap_expiry("demo", 500));
        assert_eq!(t.port_for("demo", 499), Some(3000));
        assert_eq!(t.port_for("demo", 500), None);
        assert_eq!(t.saved()[0].expires, 500);
    }

    #[test]
    fn funnels_follow_the_coordinators_routes_once_it_listed_them() {
        let mut t = FunnelTable::default();
        t.upsert(f("a", 3000, 1000, true));
        t.upsert(f("b", 3001, 1000, true));
        let routes = |r: &[(&str, u64)]| -> BTreeMap<String, u64> {
            r.iter().map(|(n, e)| ((*n).to_owned(), *e)).collect()
        };
        // A netmap from before "b" was opened: "b" stays; "a" is listed, shortened.
        let (gone, changed) = t.follow(&routes(&[("a", 900)]));
        assert!(gone.is_empty() && changed);
        assert_eq!(t.port_for("a", 899), Some(3000));
        assert_eq!(t.port_for("a", 900), None);
        assert_eq!(t.port_for("b", 999), Some(3001));
        assert!(!t.follow(&routes(&[("a", 900), ("b", 1000)])).1);
        // Closed at the coordinator: listed before, gone now.
        let (gone, _) = t.follow(&routes(&[("b", 1000)]));
        assert_eq!(
            gone.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(t.port_for("a", 0), None);
        // Opened again: not dropped until the coordinator has listed it again.
        t.upsert(f("a", 3000, 1000, true));
        assert!(t.follow(&routes(&[("b", 1000)])).0.is_empty());
        assert_eq!(t.port_for("a", 0), Some(3000));
    }
}
