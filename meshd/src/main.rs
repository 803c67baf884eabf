//! `meshd`: the meshfunnel node daemon.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use meshd::daemon::api;

mod funnel_cmd;

#[derive(Parser, Debug)]
#[command(name = "meshd", version, about = "meshfunnel node daemon")]
struct Cli {
    /// State directory: node key, identity, last netmap.
    #[arg(
        long,
        global = true,
        env = "MESHD_STATE_DIR",
        default_value = "/var/lib/meshfunnel/meshd"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Join the mesh and carry traffic (foreground; Ctrl+C stops).
    Up {
        /// The coordinator's URL (https://HOST:PORT); remembered after the first run.
        #[arg(long, env = "MESHD_COORD")]
        coord: Option<String>,
        /// Auth key (first run, or to renew an expired node).
        #[arg(long, env = "MESHD_AUTHKEY")]
        authkey: Option<String>,
        /// Name to ask for (default: this machine's hostname).
        #[arg(long)]
        hostname: Option<String>,
        /// Pin the coordinator's certificate (`sha256:…` as `coord serve` prints it).
        #[arg(long)]
        coord_fingerprint: Option<String>,
        /// Trust the coordinator's certificate through this CA (or certificate) PEM file.
        #[arg(long)]
        coord_ca: Option<PathBuf>,
        /// UDP port for WireGuard (0: any free port).
        #[arg(long, default_value_t = 41641)]
        listen_port: u16,
        /// Name of the TUN device.
        #[arg(long, default_value = "mesh0")]
        tun: String,
        /// Run without root and without a TUN device (userspace network stack); programs reach
        /// peers through the SOCKS5 proxy.
        #[arg(long, env = "MESHD_USERSPACE")]
        userspace: bool,
        /// Userspace mode: address of the SOCKS5 proxy (port 0: any free port).
        #[arg(long, env = "MESHD_SOCKS5", default_value = "127.0.0.1:1055")]
        socks5: std::net::SocketAddr,
        /// Userspace mode: forward TCP connections to this node's mesh port to a local address,
        /// as MESHPORT:HOST:PORT (e.g. 8080:127.0.0.1:8000). Repeatable.
        #[arg(long, value_parser = meshd::userspace::parse_serve_tcp)]
        serve_tcp: Vec<(u16, std::net::SocketAddr)>,
        /// Advertise this address too (e.g. behind a port forward), as IP or IP:PORT; without a
        /// port, the WireGuard UDP port. Repeatable.
        #[arg(long, value_parser = meshd::daemon::parse_endpoint)]
        endpoint: Vec<(std::net::IpAddr, Option<u16>)>,
    },
    /// Show this node and its peers.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this node's mesh addresses.
    Ip,
    /// Ping a peer (name, fqdn or mesh address) over the mesh: RTT and the endpoint used.
    Ping {
        target: String,
        /// How many pings (one per second).
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
    },
    /// Publish a local port on the internet through the funnel edge: `meshd funnel 3000`,
    /// `meshd funnel status`, `meshd funnel off [NAME]`.
    Funnel(funnel_cmd::FunnelArgs),
    /// Serve a small built-in HTML page on a local address (something to funnel).
    SamplePage {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Stop the running meshd (its TUN device, addresses and routes go with it).
    Down,
    /// Forget this node's identity (key, registration, netmap).
    Logout,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Up {
            coord,
            authkey,
            hostname,
            coord_fingerprint,
            coord_ca,
            listen_port,
            tun,
            userspace,
            socks5,
            serve_tcp,
            endpoint,
        } => {
            let cfg = meshd::daemon::UpConfig {
                coord,
                authkey,
                hostname,
                state_dir: cli.state_dir,
                coord_fingerprint,
                coord_ca,
                listen_port,
                tun_name: tun,
                userspace,
                socks5,
                serve_tcp,
                endpoints: endpoint,
                edge_domain: None,
            };
            // The control plane and the local API share one thread; the TUN data plane has its
            // own (see daemon::dataplane).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(meshd::daemon::up(cfg))
        }
        Cmd::Status { json } => {
            let status = status(&cli.state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Cmd::Ip => {
            for a in status(&cli.state_dir)?.addresses {
                println!("{a}");
            }
            Ok(())
        }
        Cmd::Ping { target, count } => {
            let mut answered = 0;
            for i in 0..count.max(1) {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                match api::request(
                    &cli.state_dir,
                    &api::Request::Ping {
                        target: target.clone(),
                    },
                )? {
                    api::Response::Pong {
                        peer,
                        ip,
                        rtt_micros,
                        endpoint,
                    } => {
                        answered += 1;
                        let via = endpoint
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "?".into());
                        println!(
                            "pong from {peer} ({ip}) via {via} in {:.2} ms",
                            rtt_micros as f64 / 1000.0
                        );
                    }
                    api::Response::Error { message } => println!("{message}"),
                    other => anyhow::bail!("unexpected answer: {other:?}"),
                }
            }
            if answered == 0 {
                anyhow::bail!("no answer from {target}");
            }
            Ok(())
        }
        Cmd::Down => match api::request(&cli.state_dir, &api::Request::Down)? {
            api::Response::Done { message } => {
                println!("{message}");
                Ok(())
            }
            other => anyhow::bail!("unexpected answer: {other:?}"),
        },
        Cmd::Funnel(args) => funnel_cmd::run(&cli.state_dir, args),
        Cmd::SamplePage { listen } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen).await?;
                println!("sample page on http://{}/", l.local_addr()?);
                meshd::sample_page::serve(l).await
            })?;
            Ok(())
        }
        Cmd::Logout => {
            meshd::daemon::state::StateDir::open(&cli.state_dir)?.wipe()?;
            println!("identity removed from {}", cli.state_dir.display());
            Ok(())
        }
    }
}

fn status(state_dir: &std::path::Path) -> anyhow::Result<api::Status> {
    match api::request(state_dir, &api::Request::Status)? {
        api::Response::Status(s) => Ok(*s),
        api::Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

fn print_status(s: &api::Status) {
    let addrs: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
    println!(
        "{} ({})  coordinator: {}",
        s.fqdn,
        addrs.join(", "),
        if s.coord_connected {
            "connected"
        } else {
            "unreachable"
        }
    );
    println!(
        "{:<20} {:<15} {:<22} {:>10} {:>12} {:>12}  STATE",
        "PEER", "IPV4", "ENDPOINT", "HANDSHAKE", "RX", "TX"
    );
    for p in &s.peers {
        let v4 = p
            .addresses
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let ep = p
            .endpoint
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into());
        let hs = p
            .last_handshake_secs
            .map(|t| format!("{t}s ago"))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<20} {:<15} {:<22} {:>10} {:>12} {:>12}  {}",
            p.name,
            v4,
            ep,
            hs,
            p.rx_bytes,
            p.tx_bytes,
            if p.online { "online" } else { "offline" }
        );
    }
    let d = &s.drops;
    println!(
        "dropped: {} invalid, {} unknown peer, {} spoofed source, {} filtered, {} no route, {} no endpoint, {} stack queue full",
        d.invalid_datagram,
        d.unknown_peer,
        d.spoofed_source,
        d.filtered,
        d.no_route,
        d.no_endpoint,
        d.stack_queue_full
    );
}
