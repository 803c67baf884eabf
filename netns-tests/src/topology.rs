//! The topology: hosts, veth links and switch segments, and their teardown.
//!
//! Contract: a [`Topology`] owns every namespace it creates (hosts, segments, NAT routers) and
//! removes them all on `Drop` — also during a panic: first it SIGKILLs every process inside them,
//! then deletes the namespaces, which destroys their veths. Drop never panics; what it cannot
//! remove it reports on stderr, and [`crate::cleanup_stale`] removes it after the process ends.
//! Interfaces are created directly inside their namespaces (`ip -n A link add ... peer ... netns
//! B`), so their short names (`eth0`, `p0`, `br0`) only need to be unique per namespace and never
//! pass through the shared root namespace.
//!
//! A segment is an L2 switch: a namespace holding a bridge `br0`, one port `p<n>` per attached
//! host. It has no address and takes part in nothing above L2.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::host::{Host, Iface};
use crate::netns::{self, check_name, ip, MAX_NAME};
use crate::{Error, Result};

/// A set of namespaces built for one test; everything in it is removed on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Short names of hosts and segments, which share one namespace-name space.
    names: BTreeSet<String>,
    /// Full names of the namespaces created, in creation order.
    namespaces: Vec<String>,
}

/// An L2 segment (a bridge in its own namespace) that several hosts attach to.
#[derive(Clone, Debug)]
pub struct Segment {
    name: String,
    netns: String,
    next_port: Arc<AtomicU32>,
}

impl Segment {
    /// Its short name, e.g. `internet`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace's name (holding the bridge `br0`).
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// The two ends of a veth pair made by [`Topology::link`].
#[derive(Clone, Debug)]
pub struct Link {
    /// The end inside the first host.
    pub a: Iface,
    /// The end inside the second host.
    pub b: Iface,
}

impl Topology {
    /// Starts an empty topology with a fresh prefix, after removing leftovers of dead processes
    /// ([`crate::cleanup_stale`]).
    pub fn new() -> Result<Topology> {
        netns::cleanup_stale()?;
        Ok(Topology {
            prefix: netns::new_prefix(),
            state: Mutex::new(State::default()),
        })
    }

    /// The prefix of every namespace name in this topology, e.g. `mfnt4242x0`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full names of the namespaces created so far, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `name` and creates namespace `<prefix>-<name>` with `lo` up.
    fn namespace(&self, name: &str, max: usize) -> Result<String> {
        check_name(name, max)?;
        if !self.state().names.insert(name.to_owned()) {
            return Err(Error::Invalid(format!(
                "a host or segment named {name:?} exists already"
            )));
        }
        let full = format!("{}-{name}", self.prefix);
        netns::add(&full)?;
        self.state().namespaces.push(full.clone());
        ip(&["-n", &full, "link", "set", "lo", "up"])?;
        Ok(full)
    }

    /// Creates a host: a namespace with `lo` up and nothing else. Names are 1–20 characters of
    /// `a-z0-9-`, unique within the topology (hosts and segments together).
    pub fn host(&self, name: &str) -> Result<Host> {
        let netns = self.namespace(name, MAX_NAME)?;
        Ok(Host::new(name, &netns))
    }

    /// Joins two hosts with a veth pair, addresses `v4.0`/`v6.0` on `a`'s end and `v4.1`/`v6.1`
    /// on `b`'s, both up.
    pub fn link(
        &self,
        a: &Host,
        b: &Host,
        v4: (Ipv4Net, Ipv4Net),
        v6: Option<(Ipv6Net, Ipv6Net)>,
    ) -> Result<Link> {
        let (name_a, name_b) = (a.next_iface_name(), b.next_iface_name());
        ip(&[
            "-n",
            a.netns(),
            "link",
            "add",
            &name_a,
            "type",
            "veth",
            "peer",
            "name",
            &name_b,
            "netns",
            b.netns(),
        ])?;
        Ok(Link {
            a: a.configure(&name_a, Some(v4.0), v6.map(|v| v.0))?,
            b: b.configure(&name_b, Some(v4.1), v6.map(|v| v.1))?,
        })
    }

    /// Creates an empty L2 segment (a switch) that hosts can [`Topology::attach`] to.
    pub fn segment(&self, name: &str) -> Result<Segment> {
        self.segment_named(name, MAX_NAME)
    }

    pub(crate) fn segment_named(&self, name: &str, max: usize) -> Result<Segment> {
        let netns = self.namespace(name, max)?;
        // No STP and no multicast snooping: ports forward at once, and IPv6 neighbour discovery
        // is flooded like on a dumb switch.
        ip(&[
            "-n",
            &netns,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &netns, "link", "set", "br0", "up"])?;
        Ok(Segment {
            name: name.to_owned(),
            netns,
            next_port: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Plugs `host` into `segment` through a new veth, with the given addresses, up.
    pub fn attach(
        &self,
        segment: &Segment,
        host: &Host,
        v4: Ipv4Net,
        v6: Option<Ipv6Net>,
    ) -> Result<Iface> {
        let port = format!("p{}", segment.next_port.fetch_add(1, Ordering::Relaxed));
        let iface = host.next_iface_name();
        let seg = segment.netns();
        ip(&[
            "-n",
            host.netns(),
            "link",
            "add",
            &iface,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            seg,
        ])?;
        ip(&["-n", seg, "link", "set", &port, "master", "br0", "up"])?;
        host.configure(&iface, Some(v4), v6)
    }

    /// Creates a segment and attaches each `(host, v4, v6)` to it.
    pub fn bridge(
        &self,
        name: &str,
        members: &[(&Host, Ipv4Net, Option<Ipv6Net>)],
    ) -> Result<Segment> {
        let segment = self.segment(name)?;
        for (host, v4, v6) in members {
            self.attach(&segment, host, *v4, *v6)?;
        }
        Ok(segment)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut self.state().namespaces);
        // Kill everywhere first, so no process moves on to a namespace not yet cleared.
        for ns in &namespaces {
            if let Err(err) = netns::kill_all_in(ns) {
                eprintln!("netns-tests: teardown of {ns}: {err}");
            }
        }
        for ns in namespaces.iter().rev() {
            if let Err(err) = netns::remove(ns) {
                eprintln!("netns-tests: teardown of {ns}: {err}");
            }
        }
    }
}
