//! The simulated nodes: one [`ControlClient`] per node (own key, real TLS, signed requests), and
//! one tokio task per map stream that reads it forever and notes when each marked endpoint
//! change arrives.
//!
//! A change is marked by its endpoint: `198.51.100.7:(MARK_PORT + k)` for change `k`, so a stream
//! task knows which change a delta carries without asking anyone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meshd::control::{ControlClient, Trust};
use proto::api::{RegisterRequest, RegisterResponse};
use proto::map::{MapMessage, NetmapDelta};
use proto::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Documentation address (TEST-NET-2): never a real endpoint.
pub const MARK_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
pub const MARK_PORT: u16 = 20_000;

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    pub id: NodeId,
    pub client: Arc<ControlClient>,
}

/// What the stream tasks report, shared with the driver.
#[derive(Debug)]
pub struct Shared {
    start: Instant,
    /// Streams whose full map arrived.
    pub full: AtomicUsize,
    /// Streams that failed before their full map arrived.
    pub never_full: AtomicUsize,
    /// Per stream: got its full map and has not failed since.
    pub alive: Vec<AtomicBool>,
    pub deltas: AtomicU64,
    /// Nanoseconds after `start` of the latest delta on any stream.
    last_delta_ns: AtomicU64,
    /// Streams that failed or ended: (stream index, why).
    pub failed: Mutex<Vec<(usize, String)>>,
    /// Per change: (stream index, when its delta arrived).
    pub hits: Vec<Mutex<Vec<(usize, Instant)>>>,
}

impl Shared {
    pub fn new(nodes: usize, changes: usize) -> Self {
        Self {
            start: Instant::now(),
            full: AtomicUsize::new(0),
            never_full: AtomicUsize::new(0),
            alive: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            deltas: AtomicU64::new(0),
            last_delta_ns: AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            hits: (0..changes).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    pub fn failed_count(&self) -> usize {
        lock(&self.failed).len()
    }

    /// Time since any stream last received a delta (since start if none has).
    pub fn since_last_delta(&self) -> Duration {
        let last = Duration::from_nanos(self.last_delta_ns.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    pub fn hit_count(&self, change: usize) -> usize {
        self.hits.get(change).map_or(0, |h| lock(h).len())
    }

    fn fail(&self, stream: usize, why: String, had_full: bool) {
        if !had_full {
            self.never_full.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(a) = self.alive.get(stream) {
            a.store(false, Ordering::Relaxed);
        }
        lock(&self.failed).push((stream, why));
    }

    fn on_delta(&self, stream: usize, at: Instant, delta: &NetmapDelta) {
        self.deltas.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(at.duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        self.last_delta_ns.fetch_max(ns, Ordering::Relaxed);
        let patched = delta
            .peers_patched
            .iter()
            .filter_map(|p| p.endpoints.as_ref());
        let upserted = delta.peers_upserted.iter().map(|n| &n.endpoints);
        for eps in patched.chain(upserted) {
            for ep in eps.iter().filter(|ep| ep.ip() == MARK_IP) {
                let k = usize::from(ep.port().wrapping_sub(MARK_PORT));
                if let Some(h) = self.hits.get(k) {
                    lock(h).push((stream, at));
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The endpoint change `k` reports.
pub fn mark(k: usize) -> anyhow::Result<SocketAddr> {
    let port = u16::try_from(k)
        .ok()
        .and_then(|k| MARK_PORT.checked_add(k))
        .context("too many changes")?;
    Ok(SocketAddr::new(MARK_IP, port))
}

/// Registers one node. The request carries `Connection: close` so that the registration
/// connection does not linger as an idle file descriptor on either side.
async fn register_one(
    url: &str,
    fingerprint: &str,
    auth_key: &str,
    hostname: &str,
) -> anyhow::Result<SimNode> {
    let client = ControlClient::new(
        url,
        Trust::Fingerprint(fingerprint.to_owned()),
        keys::PrivateKey::generate(),
    )?;
    let body = serde_json::to_vec(&RegisterRequest {
        version: proto::PROTOCOL_VERSION,
        auth_key: Some(auth_key.to_owned()),
        hostname: hostname.to_owned(),
    })?;
    let headers = vec![("connection".to_owned(), "close".to_owned())];
    let (status, answer) = client
        .raw_request("POST", "/v1/register", headers, body, true)
        .await?;
    if !(200..300).contains(&status) {
        bail!(
            "register {hostname}: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let resp: RegisterResponse = serde_json::from_slice(&answer).context("register answer")?;
    Ok(SimNode {
        id: resp.node.id,
        client: Arc::new(client),
    })
}

/// Registers nodes `first..first + count` as `n<i>`, at most `concurrency` at a time, in index
/// order in the result.
pub async fn register_all(
    url: &str,
    fingerprint: &str,
    auth_key: &str,
    first: usize,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<SimNode>> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for i in first..first + count {
        let permit = sem.clone().acquire_owned().await?;
        let (url, fp, key) = (url.to_owned(), fingerprint.to_owned(), auth_key.to_owned());
        set.spawn(async move {
            let r = register_one(&url, &fp, &key, &format!("n{i}")).await;
            drop(permit);
            (i, r)
        });
    }
    let mut out: Vec<Option<SimNode>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.context("a registration task panicked")?;
        let slot = out.get_mut(i - first).context("registration index")?;
        *slot = Some(r?);
    }
    out.into_iter()
        .map(|n| n.context("a node did not register"))
        .collect()
}

/// Opens every node's map stream, at most `concurrency` waiting for their full map at a time,
/// then keeps the stream tasks alive until they end; aborting it ends them all.
pub async fn open_streams(
    clients: Vec<Arc<ControlClient>>,
    shared: Arc<Shared>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(stream_task(i, client, shared.clone(), permit));
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

/// One line on how far the streams got.
pub fn progress(shared: &Shared) -> String {
    format!(
        "{} full maps, {} streams failed, {} deltas",
        shared.full.load(Ordering::Relaxed),
        shared.failed_count(),
        shared.deltas.load(Ordering::Relaxed)
    )
}

async fn stream_task(
    i: usize,
    client: Arc<ControlClient>,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let mut stream = match client.map_stream().await {
        Ok(s) => s,
        Err(e) => return shared.fail(i, format!("opening: {e}"), false),
    };
    let why = loop {
        match stream.next().await {
            Ok(Some(MapMessage::Full { .. })) => {
                if permit.take().is_some() {
                    shared.alive[i].store(true, Ordering::Relaxed);
                    shared.full.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Some(MapMessage::Delta { delta, .. })) => shared.on_delta(i, Instant::now(), &delta),
            Ok(Some(MapMessage::Keepalive)) => {}
            Ok(Some(MapMessage::Revoked { reason })) => break format!("revoked: {reason}"),
            Ok(None) => break "coord ended the stream".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    shared.fail(i, why, permit.is_none());
}
