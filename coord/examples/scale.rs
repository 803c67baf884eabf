//! coord scale benchmark: N simulated nodes hold map streams; one node changes its endpoints;
//! how long until every stream has the delta, how much memory coord holds, and how many bytes
//! one change costs.
//!
//! ```text
//! cargo build --release -p coord
//! cargo run --release -p coord --example scale -- --nodes 1000 [--policy mesh|hub] [--changes 20] [--append-doc]
//! ```
//!
//! A benchmark, not a test: it reports numbers and passes no judgement on them. It starts the
//! real `coord` binary (killed on exit), talks to it only through its HTTPS API, its admin CLI
//! and `/proc`, and stops by itself (`--timeout`, and a cap per phase). What it measures is
//! described in `docs/BENCHMARKS.md` (see [`report`]).

#[path = "scale/changes.rs"]
mod changes;
#[path = "scale/child.rs"]
mod child;
#[path = "scale/nodes.rs"]
mod nodes;
#[path = "scale/report.rs"]
mod report;
#[path = "scale/util.rs"]
mod util;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use meshd::control::{ControlClient, Trust};
use rand::Rng as _;

use child::CoordChild;
use nodes::Shared;
use report::Report;
use util::{map_counters, wait_for, AbortOnDrop};

const HUB_POLICY: &str = r#"{"acls":[{"src":["*"],"dst":["tag:hub"]}]}"#;
/// A phase is over once no stream got a delta for this long.
const QUIET: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "coord fan-out scale benchmark")]
struct Args {
    /// Simulated nodes, each with its own map stream.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// `mesh`: everyone sees everyone (default policy); `hub`: members see only the hub.
    #[arg(long, value_enum, default_value_t = PolicyKind::Mesh)]
    policy: PolicyKind,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Registrations, and streams waiting for their full map, in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Give up after this long in all.
    #[arg(long, default_value = "15m", value_parser = proto::duration::parse)]
    timeout: Duration,
    /// Longest a single phase (register, open streams, quiet, one change) may take.
    #[arg(long, default_value = "10m", value_parser = proto::duration::parse)]
    phase_timeout: Duration,
    /// coord's `--batch-window`.
    #[arg(long, default_value = "20ms")]
    batch_window: String,
    /// Stop (and kill coord) once coord's RSS passes this many MiB: the machine is shared.
    #[arg(long, default_value_t = 8192)]
    max_coord_rss_mib: u64,
    /// Stop once this process's own RSS passes this many MiB.
    #[arg(long, default_value_t = 8192)]
    max_bench_rss_mib: u64,
    /// coord's `COORD_LOG` filter.
    #[arg(long, default_value = "warn")]
    coord_log: String,
    /// Write coord's log here (it is only counted otherwise).
    #[arg(long)]
    coord_log_file: Option<PathBuf>,
    /// Append the result row to docs/BENCHMARKS.md.
    #[arg(long)]
    append_doc: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PolicyKind {
    Mesh,
    Hub,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("scale: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; `Ok(false)` when it did not finish (the partial report is still out).
fn run(args: &Args) -> anyhow::Result<bool> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)
        .context("raising RLIMIT_NOFILE to its hard limit")?;
    eprintln!("RLIMIT_NOFILE: soft {soft} raised to the hard limit {hard}");
    let bin = child::coord_binary()?;
    let mut report = Report {
        args: std::env::args()
            .skip(1)
            .filter(|a| a != "--append-doc")
            .collect::<Vec<_>>()
            .join(" "),
        date: format!(
            "{} @{}",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            util::revision(&bin)
        ),
        machine: util::machine(),
        ..Report::default()
    };
    // Each stream is one socket here and one in coord, which inherits this limit.
    let needed = args.nodes as u64 + 256;
    if hard < needed {
        report.notes.push(format!(
            "RLIMIT_NOFILE hard limit {hard} < {needed} needed for {} streams",
            args.nodes
        ));
    }
    let tmp = tempfile::Builder::new().prefix("coord-scale-").tempdir()?;
    // Declared after `tmp`, so it is dropped (coord killed) before the directory is removed.
    let coord = CoordChild::start(
        &bin,
        tmp.path(),
        &args.batch_window,
        &args.coord_log,
        args.coord_log_file.as_deref(),
    )?;
    eprintln!(
        "coord pid {} on {} (its RLIMIT_NOFILE soft limit: {})",
        coord.pid(),
        coord.addr,
        coord
            .nofile_limit()
            .map_or("unknown".to_owned(), |l| l.to_string())
    );
    let report = Arc::new(Mutex::new(report));
    let shared = Arc::new(Shared::new(args.nodes, args.changes));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = bench(args, &coord, report.clone(), shared.clone()) => r,
            e = util::watchdog(
                coord.pid(),
                args.max_coord_rss_mib,
                args.max_bench_rss_mib,
                report.clone(),
            ) => {
                Err(anyhow::anyhow!("{e:#} ({})", nodes::progress(&shared)))
            }
            _ = tokio::time::sleep(args.timeout) => {
                Err(anyhow::anyhow!("gave up after --timeout {:?}", args.timeout))
            }
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    let pid = coord.pid().to_string();
    let mut report = std::mem::take(&mut *lock(&report));
    if let Some((_, hwm)) = child::mem_kib(&pid) {
        report.hwm_kib = Some(hwm);
    }
    let ok = match result {
        Ok(()) => true,
        Err(e) => {
            let phase = report
                .phase
                .map(|(p, t)| format!(" in phase {p} after {:.1} s", t.elapsed().as_secs_f64()))
                .unwrap_or_default();
            report.notes.push(format!("did not finish{phase}: {e:#}"));
            false
        }
    };
    let nky = coord.log.not_keeping_up.load(Ordering::Relaxed);
    if nky > 0 {
        report
            .notes
            .push(format!("coord closed {nky} streams as not keeping up"));
    }
    let log = coord.log.clone();
    // Stream tasks end here; coord is killed after that, so no stream sees it go.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(coord);
    drop(tmp);
    println!("{}", report.text());
    let warnings = log.warn_lines.load(Ordering::Relaxed);
    if warnings > 0 {
        println!("coord logged {warnings} WARN/ERROR lines; the first ones:");
        for l in lock(&log.first_warnings).iter() {
            println!("  {l}");
        }
    }
    let row = report.row();
    println!("{row}");
    if args.append_doc {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("coord's manifest dir has no parent")?
            .join("docs/BENCHMARKS.md");
        report::append_row(&doc, &row)?;
        println!("appended to {}", doc.display());
    }
    Ok(ok)
}

async fn bench(
    args: &Args,
    coord: &CoordChild,
    report: Arc<Mutex<Report>>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let pid = coord.pid();
    let pid_s = pid.to_string();
    let ticks = child::clock_ticks();
    let cpu = || child::cpu_time(&pid_s, ticks).unwrap_or_default();
    let threads = || child::thread_cpu(&pid_s, ticks);
    let n = args.nodes;
    let cap = args.phase_timeout;
    let url = coord.url();
    let fp = coord.fingerprint.clone();

    // Keys and policy, through the CLI.
    let member_key = coord.authkey(None)?;
    let hub_key = match args.policy {
        PolicyKind::Hub => {
            coord.set_policy(HUB_POLICY)?;
            Some(coord.authkey(Some("hub"))?)
        }
        PolicyKind::Mesh => None,
    };

    eprintln!("registering {n} nodes");
    lock(&report).phase = Some(("register", Instant::now()));
    let (t, c, th) = (Instant::now(), cpu(), threads());
    let mut all = Vec::with_capacity(n);
    if let Some(key) = &hub_key {
        all.extend(nodes::register_all(&url, &fp, key, 0, 1, 1).await?);
    }
    let first = all.len();
    let rest = nodes::register_all(&url, &fp, &member_key, first, n - first, args.concurrency);
    all.extend(
        tokio::time::timeout(cap, rest)
            .await
            .map_err(|_| anyhow::anyhow!("registration took longer than {cap:?}"))??,
    );
    {
        let mut r = lock(&report);
        r.register = Some(t.elapsed());
        r.cpu_register = Some(cpu().saturating_sub(c));
        r.threads
            .push(("register", child::thread_cpu_diff(&th, &threads())));
    }
    eprintln!("registered in {:.2} s", t.elapsed().as_secs_f64());

    eprintln!("opening {n} map streams");
    lock(&report).phase = Some(("open", Instant::now()));
    let (t, c, th) = (Instant::now(), cpu(), threads());
    let sh = shared.clone();
    let progress = move || nodes::progress(&sh);
    let clients = all.iter().map(|n| n.client.clone()).collect();
    let opener = tokio::spawn(nodes::open_streams(
        clients,
        shared.clone(),
        args.concurrency,
    ));
    // Aborting the opener ends every stream task: on return, also an early one.
    let _opener = AbortOnDrop(opener);
    let sh = shared.clone();
    wait_for(
        "open",
        cap.saturating_sub(t.elapsed()),
        pid,
        || sh.full.load(Ordering::Relaxed) + sh.never_full.load(Ordering::Relaxed) >= n,
        &progress,
    )
    .await?;
    {
        let mut r = lock(&report);
        r.open = Some(t.elapsed());
        r.cpu_open = Some(cpu().saturating_sub(c));
        r.threads
            .push(("open", child::thread_cpu_diff(&th, &threads())));
    }
    eprintln!(
        "streams open in {:.2} s: {}",
        t.elapsed().as_secs_f64(),
        progress()
    );
    lock(&report).phase = Some(("quiet", Instant::now()));
    let sh = shared.clone();
    wait_for(
        "quiet",
        cap,
        pid,
        || sh.since_last_delta() >= QUIET,
        &progress,
    )
    .await?;
    {
        let mut r = lock(&report);
        r.rss_up_kib = child::mem_kib(&pid_s).map(|(rss, _)| rss);
    }
    if shared.failed_count() > 0 {
        let failed = lock(&shared.failed);
        let sample: Vec<String> = failed
            .iter()
            .take(3)
            .map(|(i, why)| format!("n{i}: {why}"))
            .collect();
        lock(&report).notes.push(format!(
            "{} streams failed while opening (first: {})",
            failed.len(),
            sample.join("; ")
        ));
    }

    // The changes.
    let changer = match args.policy {
        PolicyKind::Hub => 0,
        PolicyKind::Mesh => rand::thread_rng().gen_range(0..n),
    };
    let changer_node = all.get(changer).context("changer")?;
    let client = changer_node.client.clone();
    eprintln!(
        "node n{changer} (id {}) changes its endpoints {} times",
        changer_node.id, args.changes
    );
    let probe = ControlClient::new(
        &url,
        Trust::Fingerprint(fp.clone()),
        keys::PrivateKey::generate(),
    )?;
    client.info().await?; // so the first POST does not pay for a TLS handshake
    let (bytes0, lines0) = map_counters(&probe).await?;
    let (c, th) = (cpu(), threads());
    lock(&report).phase = Some(("changes", Instant::now()));
    let streams_sum =
        changes::run(&client, changer, &shared, &report, args.changes, cap, pid).await?;
    let (bytes1, lines1) = map_counters(&probe).await?;
    let k = args.changes.max(1) as f64;
    let mut r = lock(&report);
    r.cpu_changes = Some(cpu().saturating_sub(c));
    r.threads
        .push(("changes", child::thread_cpu_diff(&th, &threads())));
    r.rss_after_kib = child::mem_kib(&pid_s).map(|(rss, _)| rss);
    r.bytes_per_change = Some((bytes1 - bytes0) as f64 / k);
    r.lines_per_change = Some((lines1 - lines0) as f64 / k);
    let avg_streams = streams_sum as f64 / k;
    if avg_streams > 0.0 {
        r.bytes_per_change_stream = Some((bytes1 - bytes0) as f64 / k / avg_streams);
    }
    let failed = shared.failed_count();
    if failed > 0 {
        r.notes.push(format!("{failed} streams failed in all"));
    }
    Ok(())
}
