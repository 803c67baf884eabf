//! Starting and stopping a coord server: state dir, database, keys, TLS, listeners, the mesh
//! thread. `coord serve` and the tests both go through [`start`].

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keys::keyfile;
use keys::{PrivateKey, PublicKey};
use proto::api::CoordInfo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::mesh::{alloc, Mesh, MeshConfig};
use crate::service::{self, unix_now, Handle};
use crate::store::Store;
use crate::{admin, http, tls};

/// Everything `coord serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub domain: String,
    /// Operator-supplied certificate and key; otherwise a self-signed one in the state dir.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Extra names/IPs for the self-signed certificate.
    pub tls_sans: Vec<String>,
    pub key_lifetime: Duration,
    pub ephemeral_timeout: Duration,
    pub batch_window: Duration,
    /// Keepalive interval of map streams (at most 30 s).
    pub map_keepalive: Duration,
    /// The public funnel domain: funnels are `https://NAME.<funnel_domain>/`.
    pub funnel_domain: String,
    /// The edges' public HTTPS port, shown in funnel URLs unless 443.
    pub funnel_port: u16,
}

impl ServeConfig {
    pub fn new(state_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            state_dir: state_dir.into(),
            listen,
            domain: "mesh.internal".into(),
            tls_files: None,
            tls_sans: vec![],
            key_lifetime: Duration::from_secs(180 * 86400),
            ephemeral_timeout: Duration::from_secs(30 * 60),
            batch_window: Duration::from_millis(20),
            map_keepalive: Duration::from_secs(25),
            funnel_domain: "funnel.localhost".into(),
            funnel_port: 443,
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub coord_key: PublicKey,
    pub handle: Handle,
    shutdown: watch::Sender<bool>,
    state_dir: PathBuf,
}

impl Running {
    /// Stops accepting connections and removes the admin socket. Open map streams end when
    /// their connections do.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = std::fs::remove_file(self.state_dir.join(proto::admin::ADMIN_SOCKET));
    }
}

/// Creates the state dir 0700 (or tightens an existing one).
pub fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting permissions of {}", dir.display()))?;
    Ok(())
}

fn coord_key(dir: &Path) -> anyhow::Result<PrivateKey> {
    let path = dir.join("coord.key");
    if path.exists() {
        return Ok(keyfile::load_private_key(&path)?);
    }
    let key = PrivateKey::generate();
    keyfile::save_private_key(&path, &key)?;
    Ok(key)
}

fn ula_prefix(store: &mut Store) -> anyhow::Result<std::net::Ipv6Addr> {
    if let Some(p) = store.meta("ula_prefix")? {
        return p
            .parse()
            .context("stored ULA prefix is not an IPv6 address");
    }
    let p = alloc::random_ula_prefix();
    store.set_meta("ula_prefix", &p.to_string())?;
    Ok(p)
}

/// Starts everything; returns once the listeners are bound.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    prepare_state_dir(&cfg.state_dir)?;
    let mut store = Store::open(&cfg.state_dir.join("coord.db"))?;
    let key = coord_key(&cfg.state_dir)?;
    let ula = ula_prefix(&mut store)?;
    let (policy, policy_text) = service::load_policy(&store)?;
    let records = store.nodes()?;
    let node_count = records.len();
    let funnels = store.funnels()?;
    let mut mesh = Mesh::new(
        MeshConfig {
            domain: cfg.domain.clone(),
            ula_prefix: ula,
            batch_window: cfg.batch_window,
            key_lifetime: cfg.key_lifetime,
            ephemeral_timeout: cfg.ephemeral_timeout,
            funnel_domain: cfg.funnel_domain.clone(),
            funnel_port: cfg.funnel_port,
        },
        policy,
        records,
        unix_now(),
    );
    // Expired or no longer granted ones are dropped here and deleted by the mesh thread.
    mesh.load_funnels(funnels, unix_now());
    let material = match &cfg.tls_files {
        Some((cert, key)) => tls::load_files(cert, key)?,
        None => tls::load_or_create(&cfg.state_dir, &cfg.tls_sans)?,
    };
    let tls_config = tls::server_config(&material)?;
    let admin_listener = admin::bind(&cfg.state_dir)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;

    let (handle, _join) = service::spawn(store, mesh, policy_text);
    let api = Arc::new(http::Api {
        handle: handle.clone(),
        verifier: http::auth::Verifier::new(key.clone()),
        info: CoordInfo {
            protocol_version: proto::PROTOCOL_VERSION,
            coord_key: key.public_key(),
            domain: cfg.domain.clone(),
            funnel_domain: Some(cfg.funnel_domain.clone()),
        },
        map_keepalive: cfg.map_keepalive,
        funnel_domain: cfg.funnel_domain.clone(),
        funnel_port: cfg.funnel_port,
    });
    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(http::serve(listener, tls_config, api, rx.clone()));
    tokio::spawn(admin::serve(admin_listener, handle.clone(), rx));
    info!(%addr, nodes = node_count, fingerprint = %material.fingerprint, "coord is serving");
    Ok(Running {
        addr,
        fingerprint: material.fingerprint,
        coord_key: key.public_key(),
        handle,
        shutdown,
        state_dir: cfg.state_dir,
    })
}
