//! `coord`: the meshfunnel coordination server and its admin CLI.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use coord::admin::client;
use coord::server::{self, ServeConfig};
use proto::admin::{AdminRequest, AdminResponse, AuthKeyInfo, FunnelInfo, NodeInfo};

#[derive(Parser, Debug)]
#[command(name = "coord", version, about = "meshfunnel coordination server")]
struct Cli {
    /// State directory: database, keys, TLS certificate, admin socket.
    #[arg(
        long,
        global = true,
        env = "COORD_STATE_DIR",
        default_value = "/var/lib/meshfunnel/coord"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server.
    Serve(ServeArgs),
    /// Create, list and revoke auth keys.
    #[command(subcommand)]
    Authkey(AuthkeyCmd),
    /// List, expire and remove nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// List live funnels, or close one.
    #[command(subcommand)]
    Funnels(FunnelsCmd),
    /// Show or replace the policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand, Debug)]
enum FunnelsCmd {
    /// List every live funnel: name, node, port, time left, URL.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Close a funnel, whichever node opened it: the edges stop serving it at once and its node
    /// drops it.
    Close { name: String },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// HTTPS listen address.
    #[arg(long, env = "COORD_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The mesh DNS domain: nodes are NAME.DOMAIN.
    #[arg(long, env = "COORD_DOMAIN", default_value = "mesh.internal")]
    domain: String,
    /// PEM certificate (chain) to serve instead of the self-signed one.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra DNS name or IP for the self-signed certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// How long a node key is valid after registration.
    #[arg(long, default_value = "180d", value_parser = human_duration)]
    key_lifetime: Duration,
    /// How long an ephemeral node may be offline before it is removed.
    #[arg(long, default_value = "30m", value_parser = human_duration)]
    ephemeral_timeout: Duration,
    /// How long changes are collected before they are sent to map streams (at most 50ms).
    #[arg(long, default_value = "20ms", value_parser = human_duration)]
    batch_window: Duration,
    /// A map stream quiet this long gets a keepalive line (at most 30s).
    #[arg(long, default_value = "25s", value_parser = human_duration)]
    map_keepalive: Duration,
    /// The public funnel domain: a funnel answers on https://NAME.DOMAIN/.
    #[arg(long, env = "COORD_FUNNEL_DOMAIN", default_value = "funnel.localhost")]
    funnel_domain: String,
    /// The edges' public HTTPS port, added to funnel URLs unless 443.
    #[arg(long, env = "COORD_FUNNEL_PORT", default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    funnel_port: u16,
}

#[derive(Subcommand, Debug)]
enum AuthkeyCmd {
    /// Create an auth key; its secret is printed once.
    Create {
        /// Usable for any number of registrations (default: single use).
        #[arg(long)]
        reusable: bool,
        /// Nodes registered with it are removed after being offline for a while.
        #[arg(long)]
        ephemeral: bool,
        /// Lifetime of the key.
        #[arg(long, default_value = "1h", value_parser = human_duration)]
        expires: Duration,
        /// Tag given to nodes registered with it, e.g. `edge` (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print the key and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List auth keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an auth key by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum NodesCmd {
    /// List nodes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a node (by id or name).
    Remove { node: String },
    /// Expire a node's key now (by id or name): peers drop it; it must register again.
    Expire { node: String },
    /// Add a device that runs a stock WireGuard client (phone, router): allocates its addresses
    /// and prints a wg-quick config with a [Peer] for each mesh node it may reach.
    AddExternal {
        /// The node's name in the mesh (a DNS label).
        #[arg(long)]
        name: String,
        /// The device's WireGuard public key (from `wg genkey | wg pubkey`).
        #[arg(long)]
        public_key: String,
        /// Print the node and the config as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Print the policy.
    Get,
    /// Replace the policy with FILE's contents (`-` for standard input).
    Set { file: PathBuf },
}

fn human_duration(s: &str) -> Result<Duration, String> {
    proto::duration::parse(s)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coord: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.state_dir;
    match cli.cmd {
        Cmd::Serve(args) => serve(dir, args),
        Cmd::Authkey(AuthkeyCmd::Create {
            reusable,
            ephemeral,
            expires,
            tags,
            json,
        }) => {
            let resp = admin(
                &dir,
                AdminRequest::AuthkeyCreate {
                    reusable,
                    ephemeral,
                    expires_in_secs: expires.as_secs().max(1),
                    tags,
                },
            )?;
            let AdminResponse::AuthkeyCreated { key, info } = resp else {
                bail!("unexpected answer from coord");
            };
            if json {
                println!("{}", serde_json::json!({ "key": key, "info": info }));
            } else {
                println!("{key}");
                eprintln!(
                    "auth key {} created: {}, expires {}. The secret is shown only now.",
                    info.id,
                    describe_key(&info),
                    when(info.expires)
                );
            }
            Ok(())
        }
        Cmd::Authkey(AuthkeyCmd::List { json }) => {
            let AdminResponse::Authkeys { keys } = admin(&dir, AdminRequest::AuthkeyList)? else {
                bail!("unexpected answer from coord");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            println!(
                "{:<16}  {:<28}  {:>4}  {:<20}  STATE",
                "ID", "KIND", "USES", "EXPIRES"
            );
            let now = coord::service::unix_now();
            for k in keys {
                let state = if k.revoked {
                    "revoked"
                } else if k.expires <= now {
                    "expired"
                } else if !k.reusable && k.uses > 0 {
                    "used"
                } else {
                    "valid"
                };
                println!(
                    "{:<16}  {:<28}  {:>4}  {:<20}  {state}",
                    k.id,
                    describe_key(&k),
                    k.uses,
                    when(k.expires)
                );
            }
            Ok(())
        }
        Cmd::Authkey(AuthkeyCmd::Revoke { id }) => {
            done(admin(&dir, AdminRequest::AuthkeyRevoke { id })?)
        }
        Cmd::Nodes(NodesCmd::List { json }) => {
            let AdminResponse::Nodes { nodes } = admin(&dir, AdminRequest::NodesList)? else {
                bail!("unexpected answer from coord");
            };
            show(&nodes, json, print_nodes)
        }
        Cmd::Nodes(NodesCmd::Remove { node }) => {
            done(admin(&dir, AdminRequest::NodesRemove { node })?)
        }
        Cmd::Nodes(NodesCmd::Expire { node }) => {
            done(admin(&dir, AdminRequest::NodesExpire { node })?)
        }
        Cmd::Nodes(NodesCmd::AddExternal {
            name,
            public_key,
            json,
        }) => {
            let AdminResponse::ExternalNodeAdded { node, config } =
                admin(&dir, AdminRequest::NodesAddExternal { name, public_key })?
            else {
                bail!("unexpected answer from coord");
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "node": node, "config": config })
                    )?
                );
            } else {
                print!("{config}");
                eprintln!(
                    "external node {} added: {}, {}; key expires {}. Put the device's private key \
                     into the config and load it with wg-quick.",
                    node.node.name,
                    node.node.ipv4,
                    node.node.ipv6,
                    when(node.node.key_expiry)
                );
            }
            Ok(())
        }
        Cmd::Funnels(FunnelsCmd::List { json }) => {
            let AdminResponse::Funnels { funnels } = admin(&dir, AdminRequest::FunnelsList)? else {
                bail!("unexpected answer from coord");
            };
            show(&funnels, json, print_funnels)
        }
        Cmd::Funnels(FunnelsCmd::Close { name }) => {
            done(admin(&dir, AdminRequest::FunnelsClose { name })?)
        }
        Cmd::Policy(PolicyCmd::Get) => {
            let AdminResponse::Policy { policy } = admin(&dir, AdminRequest::PolicyGet)? else {
                bail!("unexpected answer from coord");
            };
            println!("{}", policy.trim_end());
            Ok(())
        }
        Cmd::Policy(PolicyCmd::Set { file }) => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            done(admin(&dir, AdminRequest::PolicySet { policy: text })?)
        }
    }
}

fn admin(dir: &std::path::Path, req: AdminRequest) -> anyhow::Result<AdminResponse> {
    match client::request(dir, &req)? {
        AdminResponse::Error { message } => bail!("{message}"),
        other => Ok(other),
    }
}

/// A listing: as JSON with `--json`, else as the table `table` prints.
fn show<T: serde::Serialize>(items: &[T], json: bool, table: fn(&[T])) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        table(items);
    }
    Ok(())
}

fn done(resp: AdminResponse) -> anyhow::Result<()> {
    match resp {
        AdminResponse::Done { message } => {
            println!("{message}");
            Ok(())
        }
        _ => bail!("unexpected answer from coord"),
    }
}

fn describe_key(k: &AuthKeyInfo) -> String {
    let mut kind = vec![if k.reusable { "reusable" } else { "single-use" }];
    if k.ephemeral {
        kind.push("ephemeral");
    }
    let mut s = kind.join(",");
    if !k.tags.is_empty() {
        s.push(' ');
        s.push_str(&k.tags.join(","));
    }
    s
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn print_nodes(nodes: &[NodeInfo]) {
    println!(
        "{:>4}  {:<20}  {:<15}  {:<28}  {:<12}  STATE",
        "ID", "NAME", "IPV4", "IPV6", "TAGS"
    );
    for n in nodes {
        let state = if n.expired {
            "expired"
        } else if n.node.online {
            "online"
        } else {
            "offline"
        };
        println!(
            "{:>4}  {:<20}  {:<15}  {:<28}  {:<12}  {state}{}",
            n.node.id.0,
            n.node.name,
            n.node.ipv4,
            n.node.ipv6,
            n.node.tags.join(","),
            if n.ephemeral { " (ephemeral)" } else { "" }
        );
    }
}

fn print_funnels(funnels: &[FunnelInfo]) {
    if funnels.is_empty() {
        println!("no live funnels");
        return;
    }
    let now = coord::service::unix_now();
    println!(
        "{:<20}  {:<20}  {:>5}  {:>9}  URL",
        "NAME", "NODE", "PORT", "LEFT"
    );
    for f in funnels {
        let left = Duration::from_secs(f.route.expires.saturating_sub(now));
        println!(
            "{:<20}  {:<20}  {:>5}  {:>9}  {}",
            f.route.name,
            f.node_name,
            f.route.port,
            proto::duration::format(left),
            f.url
        );
    }
}

fn serve(state_dir: PathBuf, a: ServeArgs) -> anyhow::Result<()> {
    if a.batch_window > Duration::from_millis(50) {
        bail!("--batch-window must be at most 50ms");
    }
    if a.map_keepalive.is_zero() || a.map_keepalive > Duration::from_secs(30) {
        bail!("--map-keepalive must be more than 0s and at most 30s");
    }
    let funnel_domain = a.funnel_domain.trim_end_matches('.').to_owned();
    if funnel_domain.len() > 253
        || !funnel_domain.contains('.')
        || !funnel_domain.split('.').all(proto::policy::is_dns_label)
    {
        bail!(
            "--funnel-domain {:?} is not a domain name: use lowercase labels like funnel.example.com",
            a.funnel_domain
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = ServeConfig {
        domain: a.domain,
        tls_files: a.tls_cert.zip(a.tls_key),
        tls_sans: a.tls_sans,
        key_lifetime: a.key_lifetime,
        ephemeral_timeout: a.ephemeral_timeout,
        batch_window: a.batch_window,
        map_keepalive: a.map_keepalive,
        funnel_domain,
        funnel_port: a.funnel_port,
        ..ServeConfig::new(&state_dir, a.listen)
    };
    // Every map stream is a socket: lift the soft open-file limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 4096 => tracing::warn!(
            limit = n,
            "open-file limit is low: at most about {n} nodes can hold map streams"
        ),
        Ok(n) => tracing::info!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!("raising the open-file limit: {e}"),
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = server::start(cfg).await?;
        println!("coord listening on https://{}", running.addr);
        println!("TLS certificate fingerprint: {}", running.fingerprint);
        println!(
            "create an auth key: coord --state-dir {} authkey create",
            state_dir.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        eprintln!("coord: shutting down");
        running.shutdown();
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
