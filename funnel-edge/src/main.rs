//! funnel-edge: the public edge of a meshfunnel mesh. The funnel issue builds it; until then the
//! binary only says so.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("funnel-edge is not built yet: the coordinator (coord) is the first part to ship")
}
