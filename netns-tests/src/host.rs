//! A host: one network namespace, and ways to run programs inside it.
//!
//! Contract: a [`Host`] is a cheap, cloneable handle (namespace name plus the interfaces the
//! topology gave it). It does not own the namespace — its [`crate::Topology`] does — so once the
//! topology is dropped, commands on the handle fail with "Cannot open network namespace".
//! Programs run as `ip netns exec NS PROGRAM ARGS...`, which execs the program with the same
//! pid, in a fresh process group. Every run method is bounded by the caller's timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netns::{ip, SETUP_TIMEOUT};
use crate::process::{run_checked, run_timeout, wait_until, Spawned};
use crate::Result;

/// An interface inside a host, with the addresses the topology assigned to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Its name inside the host's namespace (`eth0`, `eth1`, ... in creation order).
    pub name: String,
    /// Its IPv4 address and prefix length, if any.
    pub v4: Option<Ipv4Net>,
    /// Its IPv6 address and prefix length, if any.
    pub v6: Option<Ipv6Net>,
}

/// A handle to one host of a [`crate::Topology`]; clones refer to the same host.
#[derive(Clone, Debug)]
pub struct Host {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    netns: String,
    ifaces: Mutex<Vec<Iface>>,
    next_iface: AtomicU32,
}

impl Host {
    pub(crate) fn new(name: &str, netns: &str) -> Host {
        Host {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                netns: netns.to_owned(),
                ifaces: Mutex::new(Vec::new()),
                next_iface: AtomicU32::new(0),
            }),
        }
    }

    /// Its short name, e.g. `node-a`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its namespace's name, e.g. `mfnt4242x0-node-a` (for `ip netns exec` by hand).
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// Its interfaces (other than `lo`), in creation order.
    pub fn ifaces(&self) -> Vec<Iface> {
        self.inner
            .ifaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The IPv4 address of its first interface that has one (a NAT router's: the WAN side).
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ifaces().iter().find_map(|i| i.v4).map(|n| n.addr())
    }

    /// The IPv6 address of its first interface that has one.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ifaces().iter().find_map(|i| i.v6).map(|n| n.addr())
    }

    /// A command that runs `program args...` inside this host (`ip netns exec NS ...`). Spawn it
    /// yourself, or use [`Host::output`], [`Host::run`] or [`Host::spawn`], which bound it.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns(), program])
            .args(args);
        cmd
    }

    /// Runs `program args...` inside this host to completion, killing it after `timeout`.
    /// Any exit status is `Ok`: look at `status`, `stdout`, `stderr`.
    pub fn output(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        run_timeout(&mut self.cmd(program, args), None, timeout)
    }

    /// Like [`Host::output`], but exiting unsuccessfully is an error (naming the command and
    /// its stderr); returns stdout.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<String> {
        self.run_with_input(program, args, None, timeout)
    }

    /// Like [`Host::run`], feeding `input` to its stdin (e.g. `nft -f -`).
    pub fn run_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<String> {
        let mut cmd = self.cmd(program, args);
        let output = run_checked(&mut cmd, input, timeout)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts `program args...` in the background inside this host. The returned guard kills it
    /// and its process group when dropped; the topology kills anything left when it is dropped.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Spawned> {
        Spawned::start(self.cmd(program, args))
    }

    /// Sets a kernel parameter inside this host, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let setting = format!("{key}={value}");
        self.run("sysctl", &["-q", "-w", &setting], SETUP_TIMEOUT)
            .map(drop)
    }

    /// Adds a route to `dest` via the gateway `via` (which must be on a connected subnet).
    pub fn add_route(&self, dest: IpNet, via: IpAddr) -> Result<()> {
        let family = if via.is_ipv4() { "-4" } else { "-6" };
        let (dest, via) = (dest.to_string(), via.to_string());
        ip(&[
            family,
            "-n",
            self.netns(),
            "route",
            "add",
            &dest,
            "via",
            &via,
        ])
        .map(drop)
    }

    /// Sets the default route (of `via`'s family) via the gateway `via`.
    pub fn set_default_route(&self, via: IpAddr) -> Result<()> {
        let family = if via.is_ipv4() { "-4" } else { "-6" };
        let via = via.to_string();
        ip(&[
            family,
            "-n",
            self.netns(),
            "route",
            "replace",
            "default",
            "via",
            &via,
        ])
        .map(drop)
    }

    /// Whether some socket inside this host listens on TCP `port` (any address), per `ss`.
    pub fn tcp_listening(&self, port: u16) -> Result<bool> {
        let filter = format!("sport = :{port}");
        let out = self.run("ss", &["-H", "-l", "-t", "-n", &filter], SETUP_TIMEOUT)?;
        Ok(!out.trim().is_empty())
    }

    /// Waits until some socket inside this host listens on TCP `port`, at most `timeout`.
    pub fn wait_tcp_listen(&self, port: u16, timeout: Duration) -> Result<()> {
        let what = format!("TCP port {port} to listen in host {}", self.name());
        wait_until(&what, timeout, || self.tcp_listening(port))
    }

    /// Creates the next interface name of this host (`eth0`, `eth1`, ...).
    pub(crate) fn next_iface_name(&self) -> String {
        let n = self.inner.next_iface.fetch_add(1, Ordering::Relaxed);
        format!("eth{n}")
    }

    /// Gives the interface `name` its addresses (IPv6 without duplicate address detection, so
    /// the address is usable at once), brings it up and records it.
    pub(crate) fn configure(
        &self,
        name: &str,
        v4: Option<Ipv4Net>,
        v6: Option<Ipv6Net>,
    ) -> Result<Iface> {
        let ns = self.netns();
        if let Some(v4) = v4 {
            ip(&["-n", ns, "addr", "add", &v4.to_string(), "dev", name])?;
        }
        if let Some(v6) = v6 {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &v6.to_string(),
                "dev",
                name,
                "nodad",
            ])?;
        }
        ip(&["-n", ns, "link", "set", name, "up"])?;
        let iface = Iface {
            name: name.to_owned(),
            v4,
            v6,
        };
        self.inner
            .ifaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(iface.clone());
        Ok(iface)
    }
}
