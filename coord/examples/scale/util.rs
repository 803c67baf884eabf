//! Small pieces of the scale benchmark: the machine's description, the watchdog, coord's
//! `/metrics` counters, and waiting for a phase to finish.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meshd::control::ControlClient;

use crate::report::Report;
use crate::{child, lock};

/// `2 CPU, 23.4 GiB`: what `nproc` and `/proc/meminfo` say.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cpus} CPU, {:.1} GiB", mem_kib as f64 / (1024.0 * 1024.0))
}

/// The commit the coord binary `bin` was built from, with `+dirty` when a source file of coord
/// or a crate it links differed from that commit and is older than the binary (so the binary may
/// hold uncommitted changes; files changed after the build do not count).
pub fn revision(bin: &std::path::Path) -> String {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let head = head.trim().to_owned();
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "coord/src",
        "proto/src",
        "keys/src",
        "Cargo.lock",
    ])
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.get(3..))
    .any(|path| {
        let changed = std::fs::metadata(root.join(path)).and_then(|m| m.modified());
        match (changed, built) {
            (Ok(c), Some(b)) => c <= b,
            // Deleted, or the binary's time unknown: it may be in the binary.
            _ => true,
        }
    });
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// Ends with an error when coord exits or either process grows past its RSS limit; keeps the
/// bench's own peak RSS in the report meanwhile.
pub async fn watchdog(
    pid: u32,
    max_coord_rss_mib: u64,
    max_bench_rss_mib: u64,
    report: Arc<Mutex<Report>>,
) -> anyhow::Error {
    let pid = pid.to_string();
    let me = std::process::id().to_string();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some((rss, _)) = child::mem_kib(&pid) else {
            return anyhow::anyhow!("coord exited");
        };
        if rss > max_coord_rss_mib * 1024 {
            return anyhow::anyhow!(
                "coord's RSS reached {} MiB (--max-coord-rss-mib {})",
                rss / 1024,
                max_coord_rss_mib
            );
        }
        if let Some((mine, hwm)) = child::mem_kib(&me) {
            lock(&report).bench_rss_kib = Some(hwm);
            if mine > max_bench_rss_mib * 1024 {
                return anyhow::anyhow!(
                    "the benchmark's own RSS reached {} MiB (--max-bench-rss-mib {}; coord RSS \
                     {} MiB)",
                    mine / 1024,
                    max_bench_rss_mib,
                    rss / 1024
                );
            }
        }
    }
}

/// Reads `/metrics` and returns (map bytes sent, map lines sent).
pub async fn map_counters(probe: &ControlClient) -> anyhow::Result<(u64, u64)> {
    let (status, body) = probe
        .raw_request("GET", "/metrics", vec![], vec![], false)
        .await?;
    if status != 200 {
        bail!("GET /metrics: HTTP {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let get = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("/metrics has no {name}"))
    };
    Ok((
        get("coord_map_bytes_sent_total")?,
        get("coord_map_updates_sent_total")?,
    ))
}

/// Waits until `done()` or the phase's time is up; prints progress every 5 s.
pub async fn wait_for(
    what: &str,
    cap: Duration,
    pid: u32,
    mut done: impl FnMut() -> bool,
    progress: impl Fn() -> String,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut next_print = start + Duration::from_secs(5);
    loop {
        if done() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= start + cap {
            bail!(
                "{what}: not done after {:.0} s: {}",
                cap.as_secs_f64(),
                progress()
            );
        }
        if now >= next_print {
            next_print = now + Duration::from_secs(5);
            let rss = child::mem_kib(&pid.to_string()).map_or(0, |(r, _)| r / 1024);
            eprintln!(
                "[{what} {:>5.1} s] {} coord RSS {rss} MiB",
                start.elapsed().as_secs_f64(),
                progress()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Aborts a task when dropped.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
