//! funnel-edge: the public edge of a meshfunnel mesh.
//!
//! * `funnel-edge ca` prints the edge CA certificate (creating the CA on first use): the file
//!   clients trust, e.g. `curl --cacert`.
//! * `funnel-edge run` will serve funnels; it is not built yet.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use funnel_edge::certs::LocalCa;

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
    /// Run the edge (not built yet).
    Run(Common),
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
    match Cli::parse().command {
        Command::Ca(c) => {
            let ca = LocalCa::open(&c.state_dir, &c.domain)
                .with_context(|| format!("opening the edge CA in {}", c.state_dir.display()))?;
            std::io::stdout()
                .write_all(ca.ca_pem().as_bytes())
                .context("writing to stdout")?;
            Ok(())
        }
        Command::Run(_) => anyhow::bail!("funnel-edge run is not built yet"),
    }
}
