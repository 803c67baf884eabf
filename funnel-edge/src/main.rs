//! funnel-edge: the public edge of a meshfunnel mesh.
//!
//! * `funnel-edge ca` prints the edge CA certificate (creating the CA on first use): the file
//!   clients trust, e.g. `curl --cacert`.
//! * `funnel-edge run` joins the mesh and serves funnels over HTTPS.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use funnel_edge::certs::LocalCa;
use funnel_edge::edge::EdgeConfig;

#[derive(Debug, Parser)]
#[command(name = "funnel-edge", version, about = "meshfunnel public edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the edge CA certificate (PEM), creating the CA if missing. Clients trust this
    /// certificate (`curl --cacert`).
    Ca(Common),
    /// Join the mesh as an edge node and serve https://NAME.<domain>/ for every funnel.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The coordinator's URL (https://HOST:PORT); remembered after the first run.
    #[arg(long, env = "FUNNEL_EDGE_COORD")]
    coord: Option<String>,
    /// An auth key tagged as an edge (`coord authkey create --tag edge`); first run only.
    #[arg(long, env = "FUNNEL_EDGE_AUTHKEY")]
    authkey: Option<String>,
    /// The coordinator's certificate fingerprint, as `coord serve` prints it.
    #[arg(long)]
    coord_fingerprint: Option<String>,
    /// Or a CA file that signed the coordinator's certificate.
    #[arg(long)]
    coord_ca: Option<PathBuf>,
    /// Where the public HTTPS listener binds.
    #[arg(long, default_value = "0.0.0.0:443")]
    https_listen: std::net::SocketAddr,
    /// The edge's public address, advertised to nodes as a WireGuard endpoint.
    #[arg(long)]
    public_address: Option<std::net::IpAddr>,
    /// The edge's name in the mesh.
    #[arg(long, default_value = "edge")]
    hostname: String,
    /// WireGuard UDP port (0: any free port).
    #[arg(long, default_value_t = 41641)]
    listen_port: u16,
    /// Join the mesh with a kernel TUN device of this name (root or CAP_NET_ADMIN) instead of
    /// the userspace TCP/IP stack. The edge only dials nodes; the userspace stack does that
    /// faster, needs no root, and leaves the edge host itself off the mesh.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "edge0")]
    tun: Option<String>,
    /// The userspace TCP/IP stack (the default; refuses `--tun`).
    #[arg(long, conflicts_with = "tun")]
    userspace: bool,
}

#[derive(Debug, Args)]
struct Common {
    /// State directory (CA key and certificate).
    #[arg(
        long,
        env = "FUNNEL_EDGE_STATE_DIR",
        default_value = "/var/lib/meshfunnel/edge"
    )]
    state_dir: PathBuf,
    /// Funnel domain: funnels are served as NAME.<domain>.
    #[arg(long, env = "FUNNEL_EDGE_DOMAIN", default_value = "funnel.localhost")]
    domain: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FUNNEL_EDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Ca(c) => {
            let ca = LocalCa::open(&c.state_dir, &c.domain)
                .with_context(|| format!("opening the edge CA in {}", c.state_dir.display()))?;
            std::io::stdout()
                .write_all(ca.ca_pem().as_bytes())
                .context("writing to stdout")?;
            Ok(())
        }
        Command::Run(a) => {
            let cfg = EdgeConfig {
                node: meshd::daemon::UpConfig {
                    coord: a.coord,
                    authkey: a.authkey,
                    hostname: Some(a.hostname),
                    state_dir: a.common.state_dir.join("node"),
                    coord_fingerprint: a.coord_fingerprint,
                    coord_ca: a.coord_ca,
                    listen_port: a.listen_port,
                    userspace: a.tun.is_none(),
                    tun_name: a.tun.unwrap_or_default(),
                    socks5: ([127, 0, 0, 1], 0).into(),
                    serve_tcp: vec![],
                    endpoints: a.public_address.map(|ip| (ip, None)).into_iter().collect(),
                    edge_domain: None, // `edge::run` sets it from --domain
                },
                state_dir: a.common.state_dir,
                domain: a.common.domain,
                https_listen: a.https_listen,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                    let _ = stop_tx.send(true);
                });
                funnel_edge::edge::run(cfg, stop_rx).await
            })
        }
    }
}
