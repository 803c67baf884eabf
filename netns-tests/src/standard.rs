//! The standard topology of DESIGN.md ("Test hosts"), built in one call.
//!
//! ```text
//!            internet: 203.0.113.0/24, 2001:db8:1::/64 (one L2 segment)
//!   coord .10   edge .20   client .30   nat-a .101 (WAN)   nat-b .102 (WAN)
//!                                          |                  |
//!                          nat-a-lan 172.31.1.0/24    nat-b-lan 172.31.2.0/24
//!                            nat-a .1, node-a .10       nat-b .1, node-b .10
//! ```
//!
//! Contract: the addresses are fixed (see [`plan`]), so tests may name them; public hosts have
//! IPv4 and IPv6 and no default route (everything public is on-link); `node-a`/`node-b` have
//! IPv4 only, with their NAT router as default gateway, and reach the public hosts masqueraded
//! as their router's WAN address. Nothing routes between the two LANs except through the
//! internet segment, as two home networks would.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::host::Host;
use crate::nat::{NatMode, NatRouter, NatSpec};
use crate::topology::{Segment, Topology};
use crate::{Error, Result};

/// The address plan of [`StandardTopology`].
pub mod plan {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Prefix length of every IPv4 subnet in the plan.
    pub const V4_PREFIX: u8 = 24;
    /// Prefix length of the public IPv6 subnet.
    pub const V6_PREFIX: u8 = 64;

    /// `coord` on the internet segment.
    pub const COORD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// `edge` on the internet segment.
    pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
    /// `client` on the internet segment.
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
    /// `nat-a`'s WAN address: what `node-a` looks like from the internet.
    pub const NAT_A_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 101);
    /// `nat-b`'s WAN address: what `node-b` looks like from the internet.
    pub const NAT_B_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 102);

    /// `coord`'s IPv6 address.
    pub const COORD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    /// `edge`'s IPv6 address.
    pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20);
    /// `client`'s IPv6 address.
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x30);
    /// `nat-a`'s WAN IPv6 address.
    pub const NAT_A_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x101);
    /// `nat-b`'s WAN IPv6 address.
    pub const NAT_B_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x102);

    /// `nat-a`'s LAN address (`node-a`'s gateway).
    pub const NAT_A_LAN_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 1, 1);
    /// `node-a`, behind `nat-a`.
    pub const NODE_A_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 1, 10);
    /// `nat-b`'s LAN address (`node-b`'s gateway).
    pub const NAT_B_LAN_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 2, 1);
    /// `node-b`, behind `nat-b`.
    pub const NODE_B_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 2, 10);
}

/// The standard topology. Dropping it (its `topo`) removes everything.
#[derive(Debug)]
pub struct StandardTopology {
    /// The topology that owns every namespace below; more hosts can be added through it.
    pub topo: Topology,
    /// The public segment (`internet`).
    pub internet: Segment,
    /// The coordination server's host (public).
    pub coord: Host,
    /// The funnel edge's host (public).
    pub edge: Host,
    /// A host on the public internet (a browser, a webhook sender).
    pub client: Host,
    /// The NAT router in front of `node-a`.
    pub nat_a: NatRouter,
    /// The NAT router in front of `node-b`.
    pub nat_b: NatRouter,
    /// A mesh node behind `nat-a`.
    pub node_a: Host,
    /// A mesh node behind `nat-b`.
    pub node_b: Host,
}

fn v4(addr: Ipv4Addr) -> Result<Ipv4Net> {
    Ipv4Net::new(addr, plan::V4_PREFIX).map_err(|e| Error::Invalid(format!("{addr}: {e}")))
}

fn v6(addr: Ipv6Addr) -> Result<Ipv6Net> {
    Ipv6Net::new(addr, plan::V6_PREFIX).map_err(|e| Error::Invalid(format!("{addr}: {e}")))
}

impl StandardTopology {
    /// Builds it with both routers in [`NatMode::Masquerade`].
    pub fn new() -> Result<StandardTopology> {
        StandardTopology::with_nat(NatMode::Masquerade, NatMode::Masquerade)
    }

    /// Builds it with the given NAT modes for `nat-a` and `nat-b`.
    pub fn with_nat(mode_a: NatMode, mode_b: NatMode) -> Result<StandardTopology> {
        use plan::*;
        let topo = Topology::new()?;
        let internet = topo.segment("internet")?;
        let public = |name: &str, a4: Ipv4Addr, a6: Ipv6Addr| -> Result<Host> {
            let host = topo.host(name)?;
            topo.attach(&internet, &host, v4(a4)?, Some(v6(a6)?))?;
            Ok(host)
        };
        let coord = public("coord", COORD_V4, COORD_V6)?;
        let edge = public("edge", EDGE_V4, EDGE_V6)?;
        let client = public("client", CLIENT_V4, CLIENT_V6)?;
        let router = |name: &str, wan4, wan6, lan4, mode| -> Result<NatRouter> {
            let spec = NatSpec::new(v4(wan4)?, v4(lan4)?)
                .wan_v6(v6(wan6)?)
                .mode(mode);
            topo.nat_router(name, &internet, spec)
        };
        let nat_a = router("nat-a", NAT_A_WAN_V4, NAT_A_WAN_V6, NAT_A_LAN_V4, mode_a)?;
        let nat_b = router("nat-b", NAT_B_WAN_V4, NAT_B_WAN_V6, NAT_B_LAN_V4, mode_b)?;
        let node_a = topo.host("node-a")?;
        topo.attach_behind(&nat_a, &node_a, v4(NODE_A_V4)?)?;
        let node_b = topo.host("node-b")?;
        topo.attach_behind(&nat_b, &node_b, v4(NODE_B_V4)?)?;
        Ok(StandardTopology {
            topo,
            internet,
            coord,
            edge,
            client,
            nat_a,
            nat_b,
            node_a,
            node_b,
        })
    }

    /// All hosts, public first: coord, edge, client, nat-a, nat-b, node-a, node-b.
    pub fn hosts(&self) -> [&Host; 7] {
        [
            &self.coord,
            &self.edge,
            &self.client,
            &self.nat_a.host,
            &self.nat_b.host,
            &self.node_a,
            &self.node_b,
        ]
    }
}
