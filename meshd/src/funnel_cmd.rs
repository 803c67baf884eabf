//! `meshd funnel PORT [--name NAME] [--ttl 24h] [--bg]`, `meshd funnel status`,
//! `meshd funnel off [NAME]`: the CLI side of funnels, over the local API.

use std::path::Path;

use clap::{Args, Subcommand};
use meshd::daemon::api::{self, Request, Response};
use meshd::funnel::table::LocalFunnel;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FunnelArgs {
    #[command(subcommand)]
    cmd: Option<FunnelCmd>,
    /// The local TCP port to publish (a service on 127.0.0.1 or ::1).
    port: Option<u16>,
    /// The public name: https://NAME.<funnel domain>/ (default: this node's name).
    #[arg(long)]
    name: Option<String>,
    /// How long the funnel lives (default 24h; the policy's grant sets the maximum).
    #[arg(long, value_parser = proto::duration::parse)]
    ttl: Option<std::time::Duration>,
    /// Keep the funnel after this command exits, until its TTL (`meshd funnel off` ends it).
    #[arg(long)]
    bg: bool,
}

#[derive(Subcommand, Debug)]
enum FunnelCmd {
    /// This node's funnels: name, local port, URL, time left.
    Status,
    /// Close one funnel, or all of this node's.
    Off { name: Option<String> },
}

pub fn run(state_dir: &Path, args: FunnelArgs) -> anyhow::Result<()> {
    match (args.cmd, args.port) {
        (Some(FunnelCmd::Status), _) => status(state_dir),
        (Some(FunnelCmd::Off { name }), _) => off(state_dir, name),
        (None, Some(port)) => open(state_dir, port, args.name, args.ttl, args.bg),
        (None, None) => anyhow::bail!(
            "say which local port to publish (`meshd funnel 3000`), or `meshd funnel status` / \
             `meshd funnel off`"
        ),
    }
}

fn open(
    state_dir: &Path,
    port: u16,
    name: Option<String>,
    ttl: Option<std::time::Duration>,
    background: bool,
) -> anyhow::Result<()> {
    let req = Request::FunnelOpen {
        port,
        name,
        ttl_secs: ttl.map(|t| t.as_secs().max(1)),
        background,
    };
    let (resp, held) = api::request_held(state_dir, &req)?;
    let f = match resp {
        Response::Funnels { funnels } => funnels
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("meshd answered with no funnel"))?,
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    println!("{}", f.url);
    println!(
        "  → 127.0.0.1:{port}, expires in {}",
        left(f.expires).unwrap_or_else(|| "0s".into())
    );
    if background {
        println!(
            "  runs in the background until then; `meshd funnel off {}` ends it",
            f.name
        );
        return Ok(());
    }
    println!("  Ctrl+C ends it");
    // Wait for Ctrl+C or SIGTERM, or for meshd to go away; then close it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        held.set_nonblocking(true)?;
        let mut conn = tokio::net::UnixStream::from_std(held)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sink = [0u8; 64];
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = tokio::io::AsyncReadExt::read(&mut conn, &mut sink) => {
                anyhow::bail!("meshd stopped: the funnel is gone");
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    match api::request(state_dir, &Request::FunnelOff { name: Some(f.name) })? {
        Response::Done { message } => println!("{message}"),
        Response::Error { message } => println!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
    Ok(())
}

fn status(state_dir: &Path) -> anyhow::Result<()> {
    let funnels: Vec<LocalFunnel> = match api::request(state_dir, &Request::FunnelStatus)? {
        Response::Funnels { funnels } => funnels,
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    };
    if funnels.is_empty() {
        println!("no funnels (publish a local port with `meshd funnel PORT`)");
        return Ok(());
    }
    println!(
        "{:<20} {:>6} {:>10}  {:<4} URL",
        "NAME", "PORT", "LEFT", "MODE"
    );
    for f in funnels {
        println!(
            "{:<20} {:>6} {:>10}  {:<4} {}",
            f.name,
            f.port,
            left(f.expires).unwrap_or_else(|| "expired".into()),
            if f.background { "bg" } else { "fg" },
            f.url
        );
    }
    Ok(())
}

fn off(state_dir: &Path, name: Option<String>) -> anyhow::Result<()> {
    match api::request(state_dir, &Request::FunnelOff { name })? {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Time until `expires` (Unix seconds), as `23h59m`, or `None` when it has passed.
fn left(expires: u64) -> Option<String> {
    let now = meshd::funnel::ingress::unix_now();
    let secs = expires.checked_sub(now).filter(|s| *s > 0)?;
    Some(proto::duration::format(std::time::Duration::from_secs(
        secs,
    )))
}
