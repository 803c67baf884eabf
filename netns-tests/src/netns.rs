//! Namespace names, creation, deletion and stale cleanup, through `ip netns`.
//!
//! Contract: every namespace the harness makes is named `mfnt<pid>x<n>-<name>`, where `<pid>` is
//! the creating process and `<n>` a per-process counter, so names are unique across concurrent
//! tests (threads share the pid, not the counter) and test binaries (different pids). A namespace
//! whose `<pid>` is no longer running is a leftover and [`cleanup_stale`] removes it. Namespaces
//! of other owners (other prefixes) are never touched. `ip netns add`/`del` are serialized within
//! the process: the first `ip netns add` on a machine turns `/run/netns` into a mount point, and
//! concurrent first calls can stack two mounts and hide each other's namespaces.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use crate::process::run_checked;
use crate::{Error, Result};

/// The start of every namespace name the harness creates.
pub const NAME_MARK: &str = "mfnt";

/// Time limit for one setup command (`ip`, `nft`, `sysctl`): they finish in milliseconds.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest host or segment name a caller may choose (internal names add a few characters).
pub(crate) const MAX_NAME: usize = 20;

static NEXT_PREFIX: AtomicU32 = AtomicU32::new(0);
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A fresh prefix: `mfnt<pid>x<n>`, unique among all live processes on this machine.
pub(crate) fn new_prefix() -> String {
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_MARK}{}x{n}", std::process::id())
}

/// Checks a host or segment name: 1–`max` characters of `a-z`, `0-9`, `-`, starting with a
/// letter or digit.
pub(crate) fn check_name(name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "name {name:?}: use 1-{max} characters of a-z, 0-9 and '-', starting with a-z or 0-9"
        )))
    }
}

/// Runs `ip ARGS` (checked, bounded) and returns its stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let output = run_checked(&mut cmd, None, SETUP_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn netns_lock() -> std::sync::MutexGuard<'static, ()> {
    NETNS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `ip netns add NAME`.
pub(crate) fn add(name: &str) -> Result<()> {
    let _serial = netns_lock();
    ip(&["netns", "add", name]).map(drop)
}

/// Kills every process inside `name` (SIGKILL, repeated while new ones appear, bounded), then
/// deletes it. The kernel frees the namespace, and the interfaces in it, once nothing uses it.
pub(crate) fn remove(name: &str) -> Result<()> {
    kill_all_in(name)?;
    let _serial = netns_lock();
    ip(&["netns", "del", name]).map(drop)
}

/// SIGKILLs the processes in namespace `name` until none is left (at most 50 rounds).
pub(crate) fn kill_all_in(name: &str) -> Result<()> {
    for _round in 0..50 {
        let pids: Vec<i32> = ip(&["netns", "pids", name])?
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids.into_iter().filter_map(Pid::from_raw) {
            // Gone already (ESRCH) is fine.
            let _ = kill_process(pid, Signal::KILL);
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(Error::Timeout {
        what: format!("the processes in namespace {name} to die"),
        timeout: Duration::from_millis(500),
        detail: String::new(),
    })
}

/// The names in `ip netns list` (all owners, not only this harness's).
pub fn list_netns() -> Result<Vec<String>> {
    // Lines look like "name" or "name (id: 3)".
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The pid in a harness namespace name (`mfnt<pid>x<n>-...`), or `None` for other names.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_MARK)?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, _) = rest.split_once('-')?;
    counter.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes harness namespaces left behind by processes that are no longer running (a test run
/// killed before its `Drop` ran), killing whatever still runs in them. Returns the names removed.
///
/// [`crate::Topology::new`] calls this, so leftovers do not pile up. A pid reused by an unrelated
/// process keeps its leftovers until that process exits.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list_netns()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove(&name) {
            Ok(()) => removed.push(name),
            // Another process may have cleaned it up between our list and our delete.
            Err(_) if !list_netns()?.contains(&name) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = new_prefix();
        let b = new_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with(NAME_MARK) && a.len() <= 20, "{a}");
    }

    #[test]
    fn owner_pid_parses_only_harness_names() {
        assert_eq!(owner_pid("mfnt1234x0-node-a"), Some(1234));
        assert_eq!(owner_pid("mfnt1234x17-nat-a-lan"), Some(1234));
        assert_eq!(owner_pid("mfnt1234-node-a"), None);
        assert_eq!(owner_pid("mfntx0-node-a"), None);
        assert_eq!(owner_pid("other-ns"), None);
        assert_eq!(owner_pid("mfnt12x3"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node-a", MAX_NAME).is_ok());
        assert!(check_name("n1", MAX_NAME).is_ok());
        for bad in ["", "-a", "Node", "a_b", "a b", "abcdefghijklmnopqrstu"] {
            assert!(check_name(bad, MAX_NAME).is_err(), "{bad:?} accepted");
        }
    }
}
