//! The results of one run: filled in phase by phase (so a run that fails half-way still reports
//! what it measured), printed as text and as one markdown table row, optionally appended to
//! `docs/BENCHMARKS.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

pub const HEADING: &str = "## coord scale (fan-out of one endpoint change)";

const INTRO: &str = "\
`coord/examples/scale.rs` starts the real `coord` release binary on 127.0.0.1 (batch window \
20 ms), registers N simulated nodes with `meshd::control::ControlClient` (own WireGuard key \
each, real TLS, signed requests) and opens one map stream per node, each read by its own tokio \
task in the benchmark process. Once every stream has its full map and no delta has arrived for \
1 s, one node reports a new endpoint K times (300 ms apart). Fan-out latency is the time from \
just before that `POST /v1/endpoints` to the moment a stream's task has read and parsed the delta \
carrying the new endpoint, pooled over all streams and changes (it includes the 20 ms batch \
window and the benchmark's own TLS/JSON work on the same 2 cores). *delivered* is the number of \
(change, stream) deltas that arrived out of those that should have. Bytes per change are \
coord's `coord_map_bytes_sent_total` (map lines, before TLS) over the change phase, divided by \
K, and again by the number of streams. RSS is coord's VmRSS from `/proc` after all streams were \
up and after the changes; HWM its peak (VmHWM). `mesh` is the default policy (everyone sees \
everyone: the changing node is a random one); `hub` is `{\"acls\":[{\"src\":[\"*\"],\"dst\":\
[\"tag:hub\"]}]}` with one node tagged `hub` that does the changing (members see only the hub).

Run: `cargo build --release -p coord && cargo run --release -p coord --example scale -- ARGS \
[--append-doc]`.
";

const TABLE_HEAD: &str = "\
| ARGS | date (UTC) @ commit | machine | register all | open all streams | fan-out p50 | p99 | max | \
delivered | bytes/change | bytes/change/stream | coord RSS streams up | coord RSS after | coord HWM \
| coord CPU open | bench RSS | notes |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// Everything one run measured; `None` where the run did not get that far.
#[derive(Debug, Default)]
pub struct Report {
    pub args: String,
    pub date: String,
    pub machine: String,
    pub register: Option<Duration>,
    pub open: Option<Duration>,
    /// Every (change, stream) fan-out latency.
    pub latencies: Vec<Duration>,
    /// Worst p99 of a single change.
    pub worst_change_p99: Option<Duration>,
    /// Longest `POST /v1/endpoints` round trip.
    pub post_max: Option<Duration>,
    pub delivered: usize,
    pub expected: usize,
    pub changes_done: usize,
    pub bytes_per_change: Option<f64>,
    pub bytes_per_change_stream: Option<f64>,
    pub lines_per_change: Option<f64>,
    pub rss_up_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub hwm_kib: Option<u64>,
    pub cpu_register: Option<Duration>,
    pub cpu_open: Option<Duration>,
    pub cpu_changes: Option<Duration>,
    /// coord's CPU per thread name in each phase, `(phase, "mesh 1.2 s, ...")`.
    pub threads: Vec<(&'static str, String)>,
    pub bench_rss_kib: Option<u64>,
    pub notes: Vec<String>,
    /// The phase under way and when it started.
    pub phase: Option<(&'static str, std::time::Instant)>,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn mib(k: Option<u64>) -> String {
    k.map_or("—".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.0}"))
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Report {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        v
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let v = self.sorted();
        let mut s = String::new();
        let _ = writeln!(s, "args:                {}", self.args);
        let _ = writeln!(s, "register all:        {}", secs(self.register));
        let _ = writeln!(s, "open all streams:    {}", secs(self.open));
        let _ = writeln!(
            s,
            "fan-out (pooled):    p50 {}  p90 {}  p99 {}  max {}  (worst single-change p99 {})",
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 90.0)),
            ms(percentile(&v, 99.0)),
            ms(v.last().copied()),
            ms(self.worst_change_p99)
        );
        let _ = writeln!(s, "POST /v1/endpoints:  max {}", ms(self.post_max));
        let _ = writeln!(
            s,
            "delivered:           {}/{} over {} changes",
            self.delivered, self.expected, self.changes_done
        );
        let per_stream = self
            .bytes_per_change_stream
            .map_or("—".into(), |x| format!("{x:.1}"));
        let _ = writeln!(
            s,
            "per change:          {} bytes, {per_stream} bytes/stream, {} lines",
            num(self.bytes_per_change),
            num(self.lines_per_change)
        );
        let _ = writeln!(
            s,
            "coord RSS:           streams up {}, after changes {}, peak {}",
            mib(self.rss_up_kib),
            mib(self.rss_after_kib),
            mib(self.hwm_kib)
        );
        let _ = writeln!(
            s,
            "coord CPU:           register {}, open {}, changes {}",
            secs(self.cpu_register),
            secs(self.cpu_open),
            secs(self.cpu_changes)
        );
        for (phase, t) in &self.threads {
            let _ = writeln!(s, "coord threads {phase:<7} {t}");
        }
        let _ = writeln!(s, "bench RSS:           {}", mib(self.bench_rss_kib));
        for n in &self.notes {
            let _ = writeln!(s, "note:                {n}");
        }
        s
    }

    /// One row of the results table.
    pub fn row(&self) -> String {
        let v = self.sorted();
        let delivered = if self.expected == 0 {
            "—".to_owned()
        } else {
            format!("{}/{}", self.delivered, self.expected)
        };
        let cells = [
            format!("`{}`", self.args),
            self.date.clone(),
            self.machine.clone(),
            secs(self.register),
            secs(self.open),
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 99.0)),
            ms(v.last().copied()),
            delivered,
            num(self.bytes_per_change),
            self.bytes_per_change_stream
                .map_or("—".into(), |x| format!("{x:.1}")),
            mib(self.rss_up_kib),
            mib(self.rss_after_kib),
            mib(self.hwm_kib),
            secs(self.cpu_open),
            mib(self.bench_rss_kib),
            self.notes.join("; ").replace('|', "\\|"),
        ];
        format!("| {} |", cells.join(" | "))
    }
}

/// Adds `row` to the table under [`HEADING`] in `doc`, creating the file, section or table as
/// needed. The row goes after the table's last row, so later sections stay where they are.
pub fn append_row(doc: &Path, row: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(doc) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", doc.display())),
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(head) = lines.iter().position(|l| l.trim() == HEADING) else {
        let mut out = text.trim_end().to_owned();
        let _ = write!(out, "\n\n{HEADING}\n\n{INTRO}\n{TABLE_HEAD}\n{row}\n");
        return write(doc, &out);
    };
    let end = lines
        .iter()
        .skip(head + 1)
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |p| head + 1 + p);
    // The results table is the first one in the section whose header starts with `| ARGS`.
    let table = (head..end).find(|&i| lines.get(i).is_some_and(|l| l.starts_with("| ARGS")));
    match table {
        Some(t) => {
            let last = (t..end)
                .take_while(|&i| lines.get(i).is_some_and(|l| l.starts_with('|')))
                .last()
                .unwrap_or(t);
            lines.insert(last + 1, row.to_owned());
        }
        None => {
            lines.insert(end, String::new());
            lines.insert(end, row.to_owned());
            lines.insert(end, TABLE_HEAD.to_owned());
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    write(doc, &out)
}

fn write(doc: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = doc.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))
}
