//! meshd: the meshfunnel node daemon. The data-plane issue brings `meshd up`; until then the
//! binary only says so.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("meshd is not built yet: the coordinator (coord) is the first part to ship")
}
