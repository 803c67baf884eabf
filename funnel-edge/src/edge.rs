//! `funnel-edge run`: the edge as a mesh node. Joins the mesh with the `meshd` library (TUN or
//! userspace mode), keeps the routing table in step with the netmap, and serves HTTPS with
//! certificates from the edge CA, dialing nodes over the mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use meshd::daemon::control_loop::ControlState;
use meshd::daemon::{Dialer as MeshDialer, UpConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::certs::{Gated, IssueLimit, LocalCa};
use crate::dial::{BoxFuture, Dialer, Io};
use crate::proxy::{self, ProxyOptions};
use crate::routes::RouteTable;
use crate::{tls, unix_now};

/// What `funnel-edge run` is told.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The edge's own state: CA files, and the node's in `node/`.
    pub state_dir: PathBuf,
    pub domain: String,
    pub https_listen: SocketAddr,
    /// How the edge joins the mesh (its state dir is `state_dir/node`; `edge_domain` is set
    /// from `domain`).
    pub node: UpConfig,
}

/// Streams to nodes over the mesh.
#[derive(Debug)]
struct Mesh(MeshDialer);

impl Dialer for Mesh {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, std::io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let s = self.0.dial(addr).await?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}

/// Runs the edge until `stop` becomes true or serving fails.
pub async fn run(cfg: EdgeConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let ca = LocalCa::open(&cfg.state_dir, &cfg.domain)
        .with_context(|| format!("opening the edge CA in {}", cfg.state_dir.display()))?;
    let listener = TcpListener::bind(cfg.https_listen)
        .await
        .with_context(|| format!("listening on {}", cfg.https_listen))?;
    // An edge for another domain than the coordinator's says so and stops before registering.
    let node = meshd::daemon::start(UpConfig {
        edge_domain: Some(cfg.domain.clone()),
        ..cfg.node.clone()
    })
    .await?;
    let (routes_tx, routes_rx) = watch::channel(
        RouteTable::new(&cfg.domain).map_err(|e| anyhow::anyhow!("--domain: {}", e.0))?,
    );
    let mut control = node.control.clone();
    tokio::spawn(async move {
        loop {
            if let Some(ControlState::Netmap(map)) = &*control.borrow_and_update() {
                let now = unix_now();
                routes_tx.send_modify(|t| t.update(map, now));
            }
            if control.changed().await.is_err() {
                return;
            }
        }
    });
    let source = Arc::new(Gated::new(
        Arc::new(ca),
        routes_rx.clone(),
        IssueLimit::default(),
    ));
    let tls = tls::server_config(source);
    let addr = listener.local_addr()?;
    println!(
        "funnel-edge: serving https://NAME.{}:{}/ on {addr} (CA: {})",
        cfg.domain,
        addr.port(),
        cfg.state_dir.join("ca.pem").display()
    );
    info!(%addr, domain = %cfg.domain, "edge serving");
    let dialer = Arc::new(Mesh(node.dialer()));
    let serve = proxy::serve(listener, tls, routes_rx, dialer, ProxyOptions::default());
    let result = tokio::select! {
        r = serve => r.context("serving HTTPS"),
        _ = stop.wait_for(|s| *s) => Ok(()),
    };
    node.stop();
    node.wait().await?;
    result
}
