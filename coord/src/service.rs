//! The mesh thread: the one owner of the [`Store`] and the [`Mesh`] core, and so the only
//! writer. HTTP and admin handlers send it [`Command`]s and await replies; it persists first,
//! then applies the change to the core, then delivers what the core outputs to the map streams.
//!
//! Bounded work per wake-up: at most [`BATCH`] commands, then timers and output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keys::authkey::{AuthKeyId, AuthKeyToken};
use keys::PublicKey;
use proto::admin::{AdminRequest, AdminResponse};
use proto::api::{FunnelRequest, RegisterRequest, RegisterResponse};
use proto::map::FunnelRoute;
use proto::policy::Policy;
use proto::NodeId;
use tokio::sync::{mpsc as tmpsc, oneshot};
use tracing::{info, warn};

use crate::admin_ops;
use crate::error::ApiError;
use crate::mesh::{FunnelError, Mesh, Output, StreamId};
use crate::store::{nodes_renew, Store};

const BATCH: usize = 256;
const TICK: Duration = Duration::from_secs(1);
/// Lines a map stream may have queued before it counts as stuck and is closed (the client
/// reconnects and gets a fresh full map).
pub const STREAM_QUEUE: usize = 512;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

#[derive(Debug)]
pub enum Command {
    Register {
        key: PublicKey,
        req: RegisterRequest,
        reply: Reply<RegisterResponse>,
    },
    Endpoints {
        key: PublicKey,
        endpoints: Vec<std::net::SocketAddr>,
        reply: Reply<()>,
    },
    OpenStream {
        key: PublicKey,
        tx: tmpsc::Sender<Bytes>,
        reply: Reply<StreamId>,
    },
    CloseStream {
        stream: StreamId,
    },
    /// Open or renew a funnel of the calling node.
    FunnelOpen {
        key: PublicKey,
        req: FunnelRequest,
        reply: Reply<FunnelRoute>,
    },
    /// Close one of the calling node's funnels.
    FunnelClose {
        key: PublicKey,
        name: String,
        reply: Reply<()>,
    },
    /// The calling node's live funnels.
    FunnelList {
        key: PublicKey,
        reply: Reply<Vec<FunnelRoute>>,
    },
    Admin {
        req: AdminRequest,
        reply: oneshot::Sender<AdminResponse>,
    },
}

/// Live figures for `/metrics`, written by the mesh thread.
#[derive(Debug, Default)]
pub struct Metrics {
    pub nodes: AtomicU64,
    pub online: AtomicU64,
    pub streams: AtomicU64,
    pub lines_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub flushes: AtomicU64,
}

/// Cloneable handle to the mesh thread.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
}

impl Handle {
    /// Sends a command and waits for its reply.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| ApiError::Unavailable)?;
        rx.await.map_err(|_| ApiError::Unavailable)?
    }

    pub async fn admin(&self, req: AdminRequest) -> AdminResponse {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Admin { req, reply: tx }).is_err() {
            return AdminResponse::Error {
                message: "coordinator is shutting down".into(),
            };
        }
        rx.await.unwrap_or(AdminResponse::Error {
            message: "coordinator is shutting down".into(),
        })
    }

    /// Fire-and-forget (used from `Drop`).
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }
}

pub(crate) struct Service {
    pub(crate) store: Store,
    pub(crate) mesh: Mesh,
    streams: HashMap<StreamId, tmpsc::Sender<Bytes>>,
    last_seen: Vec<(NodeId, u64)>,
    metrics: Arc<Metrics>,
    /// Policy text as the operator wrote it (for `policy get`), if ever set.
    pub(crate) policy_text: Option<String>,
}

/// Starts the mesh thread. It stops when every [`Handle`] is dropped.
pub fn spawn(
    store: Store,
    mesh: Mesh,
    policy_text: Option<String>,
) -> (Handle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let metrics = Arc::new(Metrics::default());
    let mut svc = Service {
        store,
        mesh,
        streams: HashMap::new(),
        last_seen: Vec::new(),
        metrics: metrics.clone(),
        policy_text,
    };
    let join = std::thread::Builder::new()
        .name("mesh".into())
        .spawn(move || svc.run(rx))
        .expect("spawning the mesh thread");
    (Handle { tx, metrics }, join)
}

impl Service {
    fn run(&mut self, rx: mpsc::Receiver<Command>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let wake = self
                .mesh
                .poll_timeout()
                .map_or(next_tick, |t| t.min(next_tick));
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(cmd) => {
                    self.handle(cmd);
                    for cmd in rx.try_iter().take(BATCH - 1) {
                        self.handle(cmd);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.mesh.handle_timeout(now);
            if now >= next_tick {
                next_tick = now + TICK;
                self.tick(now);
            }
            self.forget_dropped_funnels();
            self.store_shortened_funnels();
            self.deliver();
        }
        self.flush_last_seen();
    }

    fn tick(&mut self, now: Instant) {
        let unix = unix_now();
        for id in self.mesh.tick(now, unix) {
            match self.store.delete_node(id) {
                Ok(_) => {
                    info!(node = %id, "removed ephemeral node after it stayed offline");
                    self.mesh.remove_node(id, now);
                }
                Err(e) => warn!(node = %id, "removing ephemeral node: {e}"),
            }
        }
        self.flush_last_seen();
    }

    fn flush_last_seen(&mut self) {
        if self.last_seen.is_empty() {
            return;
        }
        if let Err(e) = self.store.set_last_seen(&self.last_seen) {
            warn!("recording last-seen times: {e}");
        }
        self.last_seen.clear();
    }

    fn deliver(&mut self) {
        let mut stuck = Vec::new();
        while let Some(out) = self.mesh.poll_output() {
            let (sid, line, close) = match out {
                Output::Send { stream, line } => (stream, line, false),
                Output::Close { stream, line } => (stream, line, true),
            };
            let Some(tx) = self.streams.get(&sid) else {
                continue;
            };
            match tx.try_send(line) {
                // The client went away; its body's drop guard reports the close.
                Err(tmpsc::error::TrySendError::Closed(_)) => {
                    self.streams.remove(&sid);
                    continue;
                }
                Err(tmpsc::error::TrySendError::Full(_)) => {
                    stuck.push(sid);
                    continue;
                }
                Ok(()) => {}
            }
            if close {
                // Dropping the sender ends the response after the last line.
                self.streams.remove(&sid);
            }
        }
        for sid in stuck {
            warn!(stream = sid.0, "map stream is not keeping up; closing it");
            self.streams.remove(&sid);
            self.close_stream(sid);
        }
        let m = &self.metrics;
        let c = self.mesh.counters();
        m.nodes
            .store(self.mesh.node_count() as u64, Ordering::Relaxed);
        m.online
            .store(self.mesh.online_count() as u64, Ordering::Relaxed);
        m.streams
            .store(self.mesh.stream_count() as u64, Ordering::Relaxed);
        m.lines_sent.store(c.lines_sent, Ordering::Relaxed);
        m.bytes_sent.store(c.bytes_sent, Ordering::Relaxed);
        m.flushes.store(c.flushes, Ordering::Relaxed);
    }

    fn close_stream(&mut self, sid: StreamId) {
        if let Some(id) = self.mesh.close_stream(sid, Instant::now(), unix_now()) {
            self.last_seen.push((id, unix_now()));
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register { key, req, reply } => {
                let _ = reply.send(self.register(key, req));
            }
            Command::Endpoints {
                key,
                endpoints,
                reply,
            } => {
                let r = self.known(&key).map(|id| {
                    self.mesh.set_endpoints(id, endpoints, Instant::now());
                });
                let _ = reply.send(r);
            }
            Command::OpenStream { key, tx, reply } => {
                let r = self.known(&key).and_then(|id| {
                    // Register the sender first: open_stream queues the full map for it.
                    let sid = self
                        .mesh
                        .open_stream(id, Instant::now(), unix_now())
                        .ok_or(ApiError::NodeExpired)?;
                    self.streams.insert(sid, tx);
                    self.last_seen.push((id, unix_now()));
                    Ok(sid)
                });
                let _ = reply.send(r);
            }
            Command::CloseStream { stream } => {
                self.streams.remove(&stream);
                self.close_stream(stream);
            }
            Command::Admin { req, reply } => {
                let _ = reply.send(admin_ops::handle(self, req));
            }
            Command::FunnelOpen { key, req, reply } => {
                let _ = reply.send(self.funnel_open(key, &req));
            }
            Command::FunnelClose { key, name, reply } => {
                let _ = reply.send(self.funnel_close(key, &name));
            }
            Command::FunnelList { key, reply } => {
                let _ = reply.send(self.known(&key).map(|id| self.mesh.funnels_of(id)));
            }
        }
    }

    /// Persists first, then tells the core (which queues the deltas).
    fn funnel_open(
        &mut self,
        key: PublicKey,
        req: &FunnelRequest,
    ) -> Result<FunnelRoute, ApiError> {
        let id = self.known(&key)?;
        let unix = unix_now();
        let route = self.mesh.plan_funnel(id, req, unix)?;
        self.store.upsert_funnel(&route, unix)?;
        info!(node = %id, name = %route.name, port = route.port, expires = route.expires, "funnel opened");
        self.mesh.set_funnel(route.clone(), Instant::now());
        Ok(route)
    }

    fn funnel_close(&mut self, key: PublicKey, name: &str) -> Result<(), ApiError> {
        let id = self.known(&key)?;
        match self.mesh.funnel(name) {
            None => return Err(FunnelError::NotFound(name.to_owned()).into()),
            Some(r) if r.node != id => return Err(FunnelError::NotOwner(name.to_owned()).into()),
            Some(_) => {}
        }
        self.store.delete_funnels(&[name.to_owned()])?;
        self.mesh.remove_funnel(name, Instant::now());
        info!(node = %id, name, "funnel closed");
        Ok(())
    }

    /// Stores the new expiry of funnels the core shortened (a lower `max_ttl` in a new policy).
    fn store_shortened_funnels(&mut self) {
        let routes = self.mesh.drain_shortened_funnels();
        if routes.is_empty() {
            return;
        }
        info!(
            count = routes.len(),
            "funnels shortened to the policy's max_ttl"
        );
        let unix = unix_now();
        for r in &routes {
            if let Err(e) = self.store.upsert_funnel(r, unix) {
                // Harmless until a restart: then the stored route is shortened again on load.
                warn!(funnel = %r.name, "storing a shortened funnel: {e}");
            }
        }
    }

    /// Deletes from storage the funnels the core dropped (expired, owner gone, grant withdrawn).
    fn forget_dropped_funnels(&mut self) {
        let names = self.mesh.drain_dropped_funnels();
        if names.is_empty() {
            return;
        }
        info!(count = names.len(), "funnels expired or withdrawn");
        if let Err(e) = self.store.delete_funnels(&names) {
            // Harmless: they are skipped as expired or ungranted when loaded again.
            warn!("deleting dropped funnels: {e}");
        }
    }

    /// The id of a registered, unexpired node.
    fn known(&self, key: &PublicKey) -> Result<NodeId, ApiError> {
        match self.mesh.node_by_key(key) {
            None => Err(ApiError::UnknownNode),
            Some((_, true)) => Err(ApiError::NodeExpired),
            Some((rec, false)) => Ok(rec.id),
        }
    }

    fn register(
        &mut self,
        key: PublicKey,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, ApiError> {
        let hostname = req.hostname.trim();
        if hostname.is_empty() || hostname.len() > 255 {
            return Err(ApiError::BadRequest(
                "hostname must be 1 to 255 characters".into(),
            ));
        }
        let now = Instant::now();
        let unix = unix_now();
        let token = req
            .auth_key
            .as_deref()
            .map(|t| {
                t.parse::<AuthKeyToken>()
                    .map_err(|_| ApiError::AuthKeyInvalid)
            })
            .transpose()?;
        if let Some((rec, expired)) = self.mesh.node_by_key(&key) {
            let id = rec.id;
            if !expired {
                return Ok(self.response(id, false));
            }
            let token = token.ok_or(ApiError::NodeExpired)?;
            let expiry = unix.saturating_add(self.mesh.config().key_lifetime.as_secs());
            self.store
                .with_authkey(&token, unix, |tx, _| nodes_renew(tx, id, expiry))?;
            self.mesh.set_key_expiry(id, expiry, now, unix);
            info!(node = %id, "node key renewed");
            return Ok(self.response(id, false));
        }
        let token = token.ok_or(ApiError::AuthKeyRequired)?;
        let plan = self
            .mesh
            .plan_node(
                key,
                hostname,
                vec![],
                false,
                Some(token.id().to_string()),
                unix,
            )
            .map_err(|_| ApiError::MeshFull)?;
        let rec = self.store.register_node(&token, unix, |k| {
            let mut plan = plan;
            plan.tags.clone_from(&k.tags);
            plan.ephemeral = k.ephemeral;
            plan
        })?;
        let id = rec.id;
        info!(node = %id, name = %rec.name, ipv4 = %rec.ipv4, key = %key.short(), "node registered");
        self.mesh.insert_node(rec, now, unix);
        Ok(self.response(id, true))
    }

    fn response(&self, id: NodeId, created: bool) -> RegisterResponse {
        let node = self
            .mesh
            .self_entry(id)
            .expect("node exists: it was just looked up or inserted");
        RegisterResponse { node, created }
    }
}

/// Parses an auth key id given on the command line.
pub(crate) fn parse_key_id(id: &str) -> Result<AuthKeyId, String> {
    AuthKeyId::parse(id).map_err(|_| format!("{id:?} is not an auth key id (16 hex digits)"))
}

/// The policy a fresh coord starts with, or the stored one.
pub fn load_policy(store: &Store) -> anyhow::Result<(Policy, Option<String>)> {
    match store.policy()? {
        Some(text) => Ok((
            Policy::parse(&text).map_err(|e| anyhow::anyhow!("stored policy: {e}"))?,
            Some(text),
        )),
        None => Ok((Policy::default(), None)),
    }
}
