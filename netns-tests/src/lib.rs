//! Tests across real hosts in Linux network namespaces, and the topology harness they use.
//!
//! A [`Topology`] is a set of namespaces — one per host, one per L2 segment ("switch") — joined
//! by veth pairs, with NAT routers made of nftables rules. Every name it creates starts with a
//! prefix unique to the instance (`mfnt<pid>x<n>`), so topologies in concurrent tests and test
//! binaries never collide, and leftovers of a crashed run can be told apart and removed
//! ([`cleanup_stale`]). Dropping a `Topology` — also while a test panics — kills every process
//! inside its namespaces and deletes them, which destroys their interfaces.
//!
//! [`StandardTopology`] is the fixed layout from DESIGN.md: `coord`, `edge`, `client` and the
//! WAN sides of `nat-a`/`nat-b` on one public segment; `node-a` behind `nat-a`, `node-b` behind
//! `nat-b`.
//!
//! Contracts:
//! - Only documentation/test ranges are used by the constructors here (203.0.113.0/24,
//!   2001:db8::/32, 172.31.x.0/24 behind NAT); traffic stays inside namespaces the topology made.
//! - Every wait is bounded: commands take a timeout and are killed (with their process group)
//!   when it passes; polling loops have deadlines.
//! - Errors name the command line that failed and carry its stderr.
//! - This is test infrastructure: it shells out to `ip`, `nft`, `sysctl` and `ss` (iproute2,
//!   nftables, procps) and needs root; tests start with [`require_root`].

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

mod host;
mod nat;
mod netns;
mod process;
mod standard;
mod topology;

pub use host::{Host, Iface};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use nat::{NatMode, NatRouter, NatSpec};
pub use netns::{cleanup_stale, list_netns, NAME_MARK};
pub use process::{wait_until, Spawned};
pub use standard::{plan, StandardTopology};
pub use topology::{Link, Segment, Topology};

/// The environment variable that turns a missing root into a skipped (not failed) test.
pub const SKIP_ENV: &str = "MESHFUNNEL_SKIP_NETNS";

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The program could not be started at all (not installed, not executable).
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The error from `exec`.
        #[source]
        source: io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {}", show_output(.stderr, .stdout))]
    Failed {
        /// The command line.
        cmd: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
        /// What it wrote to stdout.
        stdout: String,
    },
    /// Something did not happen within its time limit; `detail` says what was seen instead.
    #[error("timed out after {timeout:?} waiting for {what}{}", show_detail(.detail))]
    Timeout {
        /// What was being waited for (often a command line).
        what: String,
        /// The limit that passed.
        timeout: Duration,
        /// Output or state observed so far; may be empty.
        detail: String,
    },
    /// The topology was asked for something it cannot build (bad name, duplicate, bad address).
    #[error("invalid topology request: {0}")]
    Invalid(String),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn show_output(stderr: &str, stdout: &str) -> String {
    let stderr = stderr.trim();
    let stdout = stdout.trim();
    match (stderr.is_empty(), stdout.is_empty()) {
        (false, _) => format!("stderr: {stderr}"),
        (true, false) => format!("no stderr; stdout: {stdout}"),
        (true, true) => "no output".to_owned(),
    }
}

fn show_detail(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        String::new()
    } else {
        format!("; seen so far: {detail}")
    }
}

/// Whether this process runs as root (effective uid 0), which the namespace tests need.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Call first in every namespace test: `if !netns_tests::require_root() { return; }`.
///
/// Returns `true` when running as root. Otherwise the test fails (panics) with a message saying
/// how to run it — unless `MESHFUNNEL_SKIP_NETNS=1` is set, in which case a `SKIPPED` line goes
/// to stderr and this returns `false`, so the test returns early and passes.
#[track_caller]
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    let location = std::panic::Location::caller();
    if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: network-namespace test at {location} needs root ({SKIP_ENV}=1 is set)");
        return false;
    }
    panic!(
        "network-namespace test at {location} needs root (it creates namespaces, veths and \
         nftables rules): run it as root, e.g. `sudo -E cargo test -p netns-tests`, or set \
         {SKIP_ENV}=1 to skip these tests"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_error_shows_command_and_stderr() {
        let status = std::process::Command::new("false")
            .status()
            .expect("`false` runs");
        let err = Error::Failed {
            cmd: "ip netns add x".into(),
            status,
            stderr: "File exists\n".into(),
            stdout: String::new(),
        };
        let text = err.to_string();
        assert!(text.contains("`ip netns add x`"), "{text}");
        assert!(text.contains("stderr: File exists"), "{text}");
    }

    #[test]
    fn timeout_error_shows_detail_only_when_present() {
        let err = Error::Timeout {
            what: "port 80".into(),
            timeout: Duration::from_secs(1),
            detail: String::new(),
        };
        assert_eq!(err.to_string(), "timed out after 1s waiting for port 80");
    }
}
