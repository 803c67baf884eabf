//! `meshd up`: join the mesh and carry traffic. Loads or creates the identity, registers (or
//! falls back to the saved netmap when the coordinator is unreachable), creates the TUN device
//! (or, with `--userspace`, the userspace stack and its SOCKS5 proxy), then runs the control loop
//! and the data plane until SIGINT/SIGTERM. Closing the TUN device removes it with its addresses
//! and routes.

pub mod api;
pub mod control_loop;
pub mod dataplane;
mod funnels;
pub(crate) mod outbox;
pub mod ping;
pub mod state;
mod tun_ingress;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::control::{ControlClient, ControlError, Trust};
use crate::filter::{FilterLimits, PacketFilter};
use crate::funnel::service::FunnelService;
use crate::wg::Peers;
use control_loop::{ControlLoop, ControlState};
use state::{Identity, StateDir};

/// Everything `meshd up` can be told.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub coord: Option<String>,
    pub authkey: Option<String>,
    pub hostname: Option<String>,
    pub state_dir: PathBuf,
    pub coord_fingerprint: Option<String>,
    pub coord_ca: Option<PathBuf>,
    pub listen_port: u16,
    pub tun_name: String,
    pub userspace: bool,
    /// Userspace mode: where the SOCKS5 proxy listens (port 0: any free port).
    pub socks5: SocketAddr,
    /// Userspace mode: mesh TCP port → local address forwards (`--serve-tcp`).
    pub serve_tcp: Vec<(u16, SocketAddr)>,
    /// Endpoints to advertise besides the discovered ones; no port means our UDP port.
    pub endpoints: Vec<(IpAddr, Option<u16>)>,
    /// A funnel edge for this domain: when the coordinator publishes funnels under another, the
    /// node says so and stops before it registers.
    pub edge_domain: Option<String>,
}

/// Parses `--endpoint IP[:PORT]` (IPv6 with a port as `[IP]:PORT`).
pub fn parse_endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    s.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|_| format!("{s:?} is not an address like 192.0.2.1 or 192.0.2.1:41641"))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Whether an error means "the coordinator could not be reached" (as opposed to "it said no").
fn unreachable(e: &ControlError) -> bool {
    matches!(
        e,
        ControlError::Connect { .. } | ControlError::Timeout { .. } | ControlError::Io(_)
    )
}

/// An edge serves one funnel domain: the coordinator's, if it publishes one.
fn check_edge_domain(ours: &str, info: &proto::api::CoordInfo) -> anyhow::Result<()> {
    match &info.funnel_domain {
        Some(theirs) if !theirs.eq_ignore_ascii_case(ours.trim_end_matches('.')) => bail!(
            "this edge serves --domain {ours} but the coordinator publishes funnels under \
             {theirs}: start it with --domain {theirs}"
        ),
        _ => Ok(()),
    }
}

/// A node running in this process: what an embedding program (the funnel edge) uses.
#[derive(Debug)]
pub struct Node {
    /// This node as the coordinator registered it.
    pub me: proto::Node,
    /// The latest netmap (or revocation), as the control loop publishes it.
    pub control: watch::Receiver<Option<ControlState>>,
    /// What the coordinator said of itself at start (`None` when it was unreachable and the node
    /// started from its saved netmap).
    pub coord_info: Option<proto::api::CoordInfo>,
    /// Userspace mode: the TCP/IP stack that owns the mesh addresses.
    stack: Option<crate::userspace::Stack>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A TCP stream to a mesh address, in either mode.
pub trait MeshIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> MeshIo for T {}

/// Opens TCP connections over the mesh; cheap to clone.
#[derive(Debug, Clone)]
pub struct Dialer {
    stack: Option<crate::userspace::Stack>,
}

impl Dialer {
    /// Opens a TCP connection to `addr` over the mesh: through the kernel (TUN mode, the mesh
    /// routes go through the device) or the userspace stack.
    pub async fn dial(&self, addr: SocketAddr) -> std::io::Result<Box<dyn MeshIo>> {
        match &self.stack {
            Some(stack) => {
                let conn = stack.connect(addr).await?;
                Ok(Box::new(crate::userspace::into_io(conn)))
            }
            None => {
                let s = tokio::net::TcpStream::connect(addr).await?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
        }
    }
}

impl Node {
    pub fn dialer(&self) -> Dialer {
        Dialer {
            stack: self.stack.clone(),
        }
    }

    /// Asks the node to stop (as SIGTERM or `meshd down` do).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that stops the node, for a signal handler.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Waits until the node has stopped (its TUN device and API socket removed).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("the node's task failed")?
    }
}

/// `meshd up`: runs a node until SIGINT, SIGTERM or `meshd down`.
pub async fn up(cfg: UpConfig) -> anyhow::Result<()> {
    let node = start(cfg).await?;
    let stop = node.stopper();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        let _ = stop.send(true);
    });
    node.wait().await
}

/// Joins the mesh and starts the node's tasks; returns once the node is up.
pub async fn start(cfg: UpConfig) -> anyhow::Result<Node> {
    if !cfg.userspace && !cfg.serve_tcp.is_empty() {
        bail!("--serve-tcp needs --userspace (in TUN mode, services listen on the mesh address)");
    }
    let state = StateDir::open(&cfg.state_dir)?;
    let state_dir = cfg.state_dir.clone();
    // Bound first: a second meshd on the same state dir stops here, before touching anything.
    let api = api::bind(state.path())
        .with_context(|| format!("local API socket in {}", state_dir.display()))?;
    let saved = state.identity()?;
    let coord_url = cfg
        .coord
        .clone()
        .or_else(|| saved.as_ref().map(|s| s.coord_url.clone()))
        .context("--coord URL is required the first time (the coordinator's https:// address)")?;
    let fingerprint = cfg
        .coord_fingerprint
        .clone()
        .or_else(|| saved.as_ref().and_then(|s| s.coord_fingerprint.clone()));
    let ca = cfg
        .coord_ca
        .clone()
        .or_else(|| saved.as_ref().and_then(|s| s.coord_ca.clone()));
    let trust = match (&fingerprint, &ca) {
        (Some(f), _) => Trust::Fingerprint(f.clone()),
        (None, Some(ca)) => Trust::CaFile(ca.clone()),
        (None, None) => bail!(
            "say how to trust the coordinator: --coord-fingerprint SHA256 (as `coord serve` \
             prints it) or --coord-ca FILE"
        ),
    };
    let key = state.node_key()?;
    let client = Arc::new(ControlClient::new(&coord_url, trust, key.clone())?);
    let hostname = cfg.hostname.clone().unwrap_or_else(system_hostname);

    let saved_map = state.netmap()?;
    let offline_start = |e: &ControlError| unreachable(e) && saved.is_some() && saved_map.is_some();
    if let Some(domain) = &cfg.edge_domain {
        match client.info().await {
            Ok(info) => check_edge_domain(domain, &info)?,
            // Checked at the next start that reaches the coordinator.
            Err(e) if offline_start(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let me = match client.register(cfg.authkey.as_deref(), &hostname).await {
        Ok(r) => {
            state.save_identity(&Identity {
                coord_url: coord_url.clone(),
                coord_fingerprint: fingerprint.clone(),
                coord_ca: ca.clone(),
                node: r.node.clone(),
            })?;
            info!(name = %r.node.name, ipv4 = %r.node.ipv4, ipv6 = %r.node.ipv6, "registered");
            r.node
        }
        Err(e) if offline_start(&e) => {
            warn!("{e}; starting from the saved netmap");
            saved.map(|s| s.node).context("saved identity")?
        }
        Err(e) => return Err(e.into()),
    };
    let coord_info = client.coord_info();

    let dev = if cfg.userspace {
        None
    } else {
        Some(create_tun(&cfg.tun_name, &me)?)
    };
    let udp = udp::Bound::open(cfg.listen_port)
        .with_context(|| format!("binding UDP port {}", cfg.listen_port))?;
    let port = udp.port()?;
    let socks = if cfg.userspace {
        let l = tokio::net::TcpListener::bind(cfg.socks5)
            .await
            .with_context(|| format!("SOCKS5 listener on {}", cfg.socks5))?;
        println!(
            "meshd up: {} is {} and {} in userspace (UDP port {port}, SOCKS5 on {})",
            me.fqdn,
            me.ipv4,
            me.ipv6,
            l.local_addr()?
        );
        Some(l)
    } else {
        println!(
            "meshd up: {} is {} and {} on {} (UDP port {port})",
            me.fqdn, me.ipv4, me.ipv6, cfg.tun_name
        );
        None
    };
    let extra_endpoints = cfg
        .endpoints
        .iter()
        .map(|(ip, p)| SocketAddr::new(*ip, p.unwrap_or(port)))
        .collect();

    let initial = saved_map.map(|m| ControlState::Netmap(Box::new(m)));
    let (tx, rx) = watch::channel(initial);
    let funnel_service = FunnelService::new(client.clone(), state.clone());
    let ingress = funnels::ingress(&funnel_service, rx.clone());
    let (connected_tx, connected_rx) = watch::channel(false);
    let control = ControlLoop {
        client,
        state,
        tx,
        connected: connected_tx,
        listen_port: port,
        extra_endpoints,
        ipv6_underlay: udp.ipv6().then_some(me.ipv6),
    };
    let control_task = tokio::spawn(control.run());

    let (stop_tx, stop_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(api::Status::default());
    let (ping_tx, ping_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(api::serve(
        api,
        api::Context {
            status: status_rx,
            down: stop_tx.clone(),
            pings: ping_tx,
            funnels: funnel_service,
        },
    ));
    let peers = Peers::new(key, PacketFilter::new(FilterLimits::default()));
    let wiring = dataplane::Wiring {
        control: rx,
        coord_up: connected_rx,
        status: status_tx,
        pings: ping_rx,
        shutdown: stop_rx,
        me,
    };
    let node_control = wiring.control.clone();
    let me = wiring.me.clone();
    let (run, stack): (BoxFuture<std::io::Result<()>>, _) = match (dev, socks) {
        (Some(dev), _) => {
            // The funnel ingress runs on a userspace stack beside the device (`tun_ingress`),
            // served on the data-plane thread (see `spawn`).
            let (core, stack) = crate::userspace::StackCore::new(
                wiring.me.ipv4,
                wiring.me.ipv6,
                dataplane::MTU.into(),
                std::time::Instant::now(),
            );
            let (rt, done) = dataplane::spawn(dev, udp, peers, core, wiring)?;
            rt.spawn(funnels::serve_stack(ingress, stack));
            (Box::pin(done), None)
        }
        (None, socks) => {
            let (core, stack) = crate::userspace::StackCore::new(
                wiring.me.ipv4,
                wiring.me.ipv6,
                dataplane::MTU.into(),
                std::time::Instant::now(),
            );
            let mut tasks = tokio::task::JoinSet::new();
            if let Some(l) = socks {
                let resolve = crate::userspace::netmap_resolver(wiring.control.clone());
                tasks.spawn(crate::userspace::socks5::serve(l, stack.clone(), resolve));
            }
            tasks.spawn(funnels::serve_stack(ingress, stack.clone()));
            for (mesh_port, local) in cfg.serve_tcp.clone() {
                let stack = stack.clone();
                tasks.spawn(async move {
                    if let Err(e) = crate::userspace::serve_tcp(stack, mesh_port, local).await {
                        warn!("--serve-tcp {mesh_port}: {e}");
                    }
                });
            }
            let udp = udp.into_udp()?;
            let run = async move {
                let r = crate::userspace::run(core, Arc::new(udp), peers, wiring).await;
                tasks.abort_all();
                r
            };
            (Box::pin(run), Some(stack))
        }
    };
    let done = tokio::spawn(async move {
        let result = run.await;
        control_task.abort();
        let _ = std::fs::remove_file(state_dir.join(api::SOCKET));
        info!("meshd stopped");
        result.context("data plane")
    });
    Ok(Node {
        me,
        control: node_control,
        coord_info,
        stack,
        stop: stop_tx,
        done,
    })
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Packets the kernel may queue on the TUN device for the data plane to read. The kernel's
/// default (500) is less than two queued segments each of a few hundred TCP connections (what
/// TCP small queues lets each one have): a burst of many flows then overflows the device's ring,
/// and every packet dropped there is a loss their TCP recovers from by sending more. Measured
/// through a funnel, 256 concurrent 1 MiB downloads: 52,000 packets dropped at the node's device
/// in 10 s with 500, none with 5000. A pointer per slot, so 4096 costs 32 KiB.
pub const TX_QUEUE_LEN: u32 = 4096;

fn create_tun(name: &str, me: &proto::Node) -> anyhow::Result<tun_rs::SyncDevice> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(dataplane::MTU)
            .tx_queue_len(TX_QUEUE_LEN)
            // Segments up to 64 KiB from the kernel's TCP, and merged segments back to it.
            .offload(offload)
            .build_sync()
    };
    let dev = match build(true) {
        Err(e) if !denied(&e) => {
            warn!("TUN offload unavailable ({e}); one packet per read and write");
            build(false)
        }
        r => r,
    };
    let dev = match dev {
        Ok(d) => d,
        Err(e) if denied(&e) => {
            bail!("no permission to create a TUN device ({e}): run as root, or use --userspace")
        }
        Err(e) => return Err(e).with_context(|| format!("creating TUN device {name}")),
    };
    // The prefix lengths give the kernel the routes for the whole mesh through the device.
    let index = dev.if_index().context("TUN device index")?;
    for net in [
        ipnet::IpNet::new(me.ipv4.into(), 10),
        ipnet::IpNet::new(me.ipv6.into(), 48),
    ] {
        let net = net.context("mesh prefix")?;
        crate::netlink::add_address(index, net)
            .with_context(|| format!("adding {net} to {name}"))?;
    }
    Ok(dev)
}

fn denied(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::PermissionDenied) || e.raw_os_error() == Some(1)
}
