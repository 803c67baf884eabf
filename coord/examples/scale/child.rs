//! The coord under test: the real release binary as a child process, its admin CLI, and what
//! `/proc` says about it. The child is killed (SIGKILL) when [`CoordChild`] is dropped, also
//! while a panic unwinds.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Where `cargo build --release -p coord` puts the binary, relative to this example's own exe
/// (`target/release/examples/scale`).
pub fn coord_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this example's executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the example's executable has no grandparent directory")?;
    let bin = dir.join("coord");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p coord`",
            bin.display()
        );
    }
    Ok(bin)
}

/// What coord's stderr said, as far as the benchmark cares.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub warn_lines: AtomicU64,
    /// "map stream is not keeping up; closing it"
    pub not_keeping_up: AtomicU64,
    /// The first few WARN/ERROR lines, verbatim.
    pub first_warnings: Mutex<Vec<String>>,
}

/// A running `coord serve`.
#[derive(Debug)]
pub struct CoordChild {
    child: Child,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub log: Arc<LogCounts>,
}

impl CoordChild {
    /// Starts `coord serve` on 127.0.0.1:0 and waits (at most 20 s) for its address and
    /// certificate fingerprint on stdout. Stderr is drained into `log_file` (if any) and counted.
    pub fn start(
        bin: &Path,
        dir: &Path,
        batch_window: &str,
        log_level: &str,
        log_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("--state-dir")
            .arg(dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--batch-window",
                batch_window,
            ])
            .env("COORD_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(LogCounts::default());
        let stderr = child.stderr.take().context("coord's stderr is not piped")?;
        let mut file = match log_file {
            Some(p) => Some(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => None,
        };
        let counts = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("WARN") || line.contains("ERROR") {
                    counts.warn_lines.fetch_add(1, Ordering::Relaxed);
                    if line.contains("not keeping up") {
                        counts.not_keeping_up.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut first = counts
                        .first_warnings
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if first.len() < 10 {
                        first.push(line);
                    }
                }
            }
        });
        let stdout = child.stdout.take().context("coord's stdout is not piped")?;
        // The guard exists from here on, so coord is killed if it never gets ready.
        let mut me = Self {
            child,
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fingerprint: String::new(),
            log,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
            // Keep draining so coord never blocks on a full pipe.
            for _ in lines {}
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut addr, mut fingerprint) = (None, None);
        while addr.is_none() || fingerprint.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("coord did not print its address within 20 s"))?;
            if let Some(a) = line.strip_prefix("coord listening on https://") {
                addr = Some(a.parse().context("coord's listen address")?);
            }
            if let Some(f) = line.strip_prefix("TLS certificate fingerprint: ") {
                fingerprint = Some(f.to_owned());
            }
        }
        me.addr = addr.context("address")?;
        me.fingerprint = fingerprint.context("fingerprint")?;
        Ok(me)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Runs the admin CLI against the state dir; returns its stdout or fails with its stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .with_context(|| format!("running coord {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "coord {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a reusable auth key (2 h) with the CLI; returns its secret.
    pub fn authkey(&self, tag: Option<&str>) -> anyhow::Result<String> {
        let mut args = vec![
            "authkey",
            "create",
            "--reusable",
            "--json",
            "--expires",
            "2h",
        ];
        if let Some(t) = tag {
            args.extend(["--tag", t]);
        }
        let out = self.cli(&args)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("authkey create --json")?;
        Ok(v["key"]
            .as_str()
            .context("authkey create --json printed no key")?
            .to_owned())
    }

    /// Replaces the policy with `text` through `coord policy set FILE`.
    pub fn set_policy(&self, text: &str) -> anyhow::Result<()> {
        let file = self.dir.join("bench-policy.json");
        std::fs::write(&file, text).context("writing the policy file")?;
        let path = file.to_string_lossy().into_owned();
        self.cli(&["policy", "set", &path])?;
        Ok(())
    }

    /// The soft RLIMIT_NOFILE coord runs with (inherited from this process).
    pub fn nofile_limit(&self) -> Option<u64> {
        let pid = i32::try_from(self.pid()).ok()?;
        rlimit::ProcLimits::read_process(pid)
            .ok()?
            .max_open_files
            .and_then(|l| l.soft_limit)
    }
}

impl Drop for CoordChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory of a process from `/proc/PID/status`, in KiB: (VmRSS, VmHWM). `None` once it is gone
/// or a zombie.
pub fn mem_kib(pid: &str) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    if status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains('Z'))
    {
        return None;
    }
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: &str, ticks_per_sec: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / ticks_per_sec.max(1)))
}

/// `getconf CLK_TCK`, 100 if that fails.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU time per thread name (`mesh`, `tokio-runtime-w`, ...) of a process, summed over threads
/// of the same name, from `/proc/PID/task/*/stat`.
pub fn thread_cpu(pid: &str, ticks_per_sec: u64) -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat.get(open + 1..close).unwrap_or("?").to_owned();
        let f: Vec<&str> = stat
            .get(close + 2..)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
            .sum();
        *out.entry(name).or_default() += Duration::from_millis(ticks * 1000 / ticks_per_sec.max(1));
    }
    out
}

/// `after - before` per thread name, as `name 1.23 s, ...`, busiest first.
pub fn thread_cpu_diff(
    before: &std::collections::BTreeMap<String, Duration>,
    after: &std::collections::BTreeMap<String, Duration>,
) -> String {
    let mut v: Vec<(&String, Duration)> = after
        .iter()
        .map(|(k, a)| {
            (
                k,
                a.saturating_sub(before.get(k).copied().unwrap_or_default()),
            )
        })
        .filter(|(_, d)| !d.is_zero())
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .map(|(k, d)| format!("{k} {:.2} s", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}
