//! The measured part: one node reports a new endpoint `changes` times, 300 ms apart, and each
//! change's fan-out latency is the time from just before its POST to each stream's receipt.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd::control::ControlClient;

use crate::lock;
use crate::nodes::{self, Shared};
use crate::report::{self, Report};
use crate::util::wait_for;

const PAUSE: Duration = Duration::from_millis(300);

/// Runs the changes as node `changer` (through `client`), adding what each measured to
/// `report`; returns the number of streams that should have seen a change, summed over changes.
pub async fn run(
    client: &ControlClient,
    changer: usize,
    shared: &Arc<Shared>,
    report: &Mutex<Report>,
    changes: usize,
    cap: Duration,
    pid: u32,
) -> anyhow::Result<usize> {
    let mut streams_sum = 0usize;
    for k in 0..changes {
        let expected = shared
            .alive
            .iter()
            .enumerate()
            .filter(|(i, a)| *i != changer && a.load(Ordering::Relaxed))
            .count();
        let ep = nodes::mark(k)?;
        let t0 = Instant::now();
        client.set_endpoints(vec![ep]).await?;
        let post = t0.elapsed();
        let sh = shared.clone();
        let waited = wait_for(
            &format!("change {k}"),
            cap.min(Duration::from_secs(30)),
            pid,
            || sh.hit_count(k) >= expected,
            || format!("{}/{expected} streams have it", sh.hit_count(k)),
        )
        .await;
        let mut lat: Vec<Duration> = lock(&shared.hits[k])
            .iter()
            .map(|(_, at)| at.saturating_duration_since(t0))
            .collect();
        lat.sort_unstable();
        let p99 = report::percentile(&lat, 99.0);
        eprintln!(
            "change {k}: {}/{expected} streams, POST {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            post.as_secs_f64() * 1e3,
            report::percentile(&lat, 50.0).unwrap_or_default().as_secs_f64() * 1e3,
            p99.unwrap_or_default().as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        {
            let mut r = lock(report);
            r.delivered += lat.len();
            r.expected += expected;
            r.changes_done += 1;
            r.post_max = r.post_max.max(Some(post));
            r.worst_change_p99 = r.worst_change_p99.max(p99);
            r.latencies.extend(lat);
        }
        streams_sum += expected;
        if let Err(e) = waited {
            lock(report).notes.push(format!("{e:#}"));
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(streams_sum)
}
