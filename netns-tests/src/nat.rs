//! NAT routers: a host with a WAN leg on a public segment, a LAN segment of its own, IPv4
//! forwarding, and an nftables ruleset that masquerades LAN traffic and filters the WAN side.
//!
//! Contract: like a home router, a NAT router forwards LAN → WAN (source rewritten to its WAN
//! address) and WAN → LAN only for replies (`ct state established,related`); an unsolicited
//! packet from the WAN to a LAN address is dropped even when its sender routes it at the router.
//! IPv6 is not forwarded. How ports are mapped is the [`NatMode`]; new modes can be added without
//! breaking callers (`#[non_exhaustive]`, and [`NatSpec`] is built with methods).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::host::{Host, Iface};
use crate::netns::{MAX_NAME, SETUP_TIMEOUT};
use crate::topology::{Segment, Topology};
use crate::{Error, Result};

/// How a NAT router maps LAN flows to WAN ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatMode {
    /// Linux's plain masquerade: a flow keeps its source port when that port is free, so one
    /// LAN socket appears with the same WAN address and port to every destination
    /// (endpoint-independent mapping in practice); inbound packets are accepted only from the
    /// exact remote address and port a flow was sent to (address-and-port-dependent filtering).
    /// The "easy NAT" of most home routers.
    #[default]
    Masquerade,
    /// Every new flow gets a random WAN port (`masquerade fully-random`), so one LAN socket
    /// appears with a different port to each destination (endpoint-dependent mapping): the
    /// "hard" symmetric NAT that defeats simple hole punching.
    Symmetric,
}

impl NatMode {
    fn masquerade_statement(self) -> &'static str {
        match self {
            NatMode::Masquerade => "masquerade",
            NatMode::Symmetric => "masquerade fully-random",
        }
    }
}

/// What to build for [`Topology::nat_router`]: `NatSpec::new(wan, lan)` plus options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatSpec {
    /// The router's address and prefix on the WAN segment.
    pub wan: Ipv4Net,
    /// An IPv6 address for the WAN leg (the router itself is reachable; nothing is forwarded).
    pub wan_v6: Option<Ipv6Net>,
    /// The router's address on its LAN, whose prefix is the LAN subnet (e.g. `172.31.1.1/24`).
    pub lan: Ipv4Net,
    /// How ports are mapped.
    pub mode: NatMode,
}

impl NatSpec {
    /// A [`NatMode::Masquerade`] router at `wan` on the public side and `lan` on its LAN.
    pub fn new(wan: Ipv4Net, lan: Ipv4Net) -> NatSpec {
        NatSpec {
            wan,
            wan_v6: None,
            lan,
            mode: NatMode::default(),
        }
    }

    /// Sets the NAT mode.
    pub fn mode(mut self, mode: NatMode) -> NatSpec {
        self.mode = mode;
        self
    }

    /// Gives the WAN leg an IPv6 address too.
    pub fn wan_v6(mut self, addr: Ipv6Net) -> NatSpec {
        self.wan_v6 = Some(addr);
        self
    }
}

/// A NAT router made by [`Topology::nat_router`].
#[derive(Clone, Debug)]
pub struct NatRouter {
    /// The router host (its namespace holds the nftables ruleset `meshfunnel_nat`).
    pub host: Host,
    /// The leg on the WAN segment.
    pub wan: Iface,
    /// The leg on the LAN segment.
    pub lan: Iface,
    /// The LAN segment (named `<router>-lan`); hosts join it with [`Topology::attach_behind`].
    pub lan_segment: Segment,
    spec: NatSpec,
}

impl NatRouter {
    /// The router's public (WAN) IPv4 address: the source address LAN hosts appear with.
    pub fn wan_v4(&self) -> Ipv4Addr {
        self.spec.wan.addr()
    }

    /// The router's LAN address: the default gateway of the hosts behind it.
    pub fn lan_v4(&self) -> Ipv4Addr {
        self.spec.lan.addr()
    }

    /// The LAN subnet, e.g. `172.31.1.0/24`.
    pub fn lan_subnet(&self) -> Ipv4Net {
        self.spec.lan.trunc()
    }

    /// The NAT mode in force.
    pub fn mode(&self) -> NatMode {
        self.spec.mode
    }
}

/// The ruleset of a router whose WAN leg is `wan` and LAN leg is `lan`.
fn ruleset(wan: &str, lan: &str, mode: NatMode) -> String {
    let masquerade = mode.masquerade_statement();
    format!(
        "table ip meshfunnel_nat {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname \"{lan}\" oifname \"{wan}\" accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{wan}\" {masquerade}
    }}
}}
"
    )
}

impl Topology {
    /// Builds a NAT router `name` attached to `wan` at `spec.wan`, with a new LAN segment
    /// `<name>-lan` where it has `spec.lan`; turns on IPv4 forwarding and loads the ruleset.
    pub fn nat_router(&self, name: &str, wan: &Segment, spec: NatSpec) -> Result<NatRouter> {
        let host = self.host(name)?;
        let wan_if = self.attach(wan, &host, spec.wan, spec.wan_v6)?;
        let lan_segment = self.segment_named(&format!("{name}-lan"), MAX_NAME + 4)?;
        let lan_if = self.attach(&lan_segment, &host, spec.lan, None)?;
        host.sysctl("net.ipv4.ip_forward", "1")?;
        let rules = ruleset(&wan_if.name, &lan_if.name, spec.mode);
        host.run_with_input("nft", &["-f", "-"], Some(rules.as_bytes()), SETUP_TIMEOUT)?;
        Ok(NatRouter {
            host,
            wan: wan_if,
            lan: lan_if,
            lan_segment,
            spec,
        })
    }

    /// Puts `host` on `router`'s LAN at `addr` (inside the LAN subnet) with the router as its
    /// default gateway.
    pub fn attach_behind(&self, router: &NatRouter, host: &Host, addr: Ipv4Net) -> Result<Iface> {
        let subnet = router.lan_subnet();
        if !subnet.contains(&addr.addr()) || addr.prefix_len() != subnet.prefix_len() {
            return Err(Error::Invalid(format!(
                "{addr} is not an address in {}'s LAN {subnet}",
                router.host.name()
            )));
        }
        let iface = self.attach(&router.lan_segment, host, addr, None)?;
        host.set_default_route(IpAddr::V4(router.lan_v4()))?;
        Ok(iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_out_of_the_wan_leg_only() {
        let rules = ruleset("eth0", "eth1", NatMode::Masquerade);
        assert!(rules.contains("oifname \"eth0\" masquerade\n"), "{rules}");
        assert!(
            rules.contains("iifname \"eth1\" oifname \"eth0\" accept"),
            "{rules}"
        );
        assert!(rules.contains("policy drop"), "{rules}");
    }

    #[test]
    fn symmetric_mode_randomizes_ports() {
        let rules = ruleset("eth0", "eth1", NatMode::Symmetric);
        assert!(rules.contains("masquerade fully-random"), "{rules}");
    }

    #[test]
    fn spec_defaults_to_masquerade() {
        let spec = NatSpec::new(
            "203.0.113.101/24".parse().expect("valid"),
            "172.31.1.1/24".parse().expect("valid"),
        );
        assert_eq!(spec.mode, NatMode::Masquerade);
        assert_eq!(
            spec.clone().mode(NatMode::Symmetric).mode,
            NatMode::Symmetric
        );
    }
}
