//! Which peers are funnel edges, from the netmap: the coordinator opens the ingress port to the
//! edges with one filter rule (TCP [`proto::map::FUNNEL_INGRESS_PORT`] only, from the edges' tags); the peers
//! those selectors match are the edges. The packet filter already admits only them to the port;
//! the ingress checks again, since the default policy lets every member reach every port.

use std::collections::HashSet;
use std::net::IpAddr;

use proto::map::Netmap;
use proto::policy::Selector;

/// The mesh addresses of the edges that may deliver funnel streams to this node.
pub fn edge_addresses(map: &Netmap) -> HashSet<IpAddr> {
    let selectors: Vec<Selector> = map
        .packet_filter
        .iter()
        .filter(|r| r.is_funnel_ingress())
        .flat_map(|r| r.src.iter().filter_map(|s| s.parse::<Selector>().ok()))
        .collect();
    map.peers
        .iter()
        .filter(|p| selectors.iter().any(|s| s.matches(p)))
        .flat_map(|p| [IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::tests::{node, rule};
    use proto::map::{DnsConfig, Netmap, FUNNEL_INGRESS_PORT};
    use proto::policy::Protocol;

    fn map(rules: Vec<proto::map::FilterRule>) -> Netmap {
        Netmap {
            self_node: node(1, "laptop", &[]),
            peers: vec![
                node(2, "edge1", &["tag:edge"]),
                node(3, "other", &["tag:dev"]),
            ],
            dns: DnsConfig {
                domain: "mesh.internal".into(),
                magic_dns: true,
            },
            packet_filter: rules,
            funnel_routes: vec![],
        }
    }

    #[test]
    fn only_peers_named_by_the_ingress_rule_are_edges() {
        let ingress = FUNNEL_INGRESS_PORT.to_string();
        let m = map(vec![
            rule(&["*"], Protocol::Any, &["*"]),
            rule(&["tag:edge"], Protocol::Tcp, &[&ingress]),
        ]);
        let edges = edge_addresses(&m);
        assert_eq!(edges.len(), 2, "{edges:?}");
        assert!(edges.contains(&IpAddr::V4(m.peers[0].ipv4)));
        assert!(edges.contains(&IpAddr::V6(m.peers[0].ipv6)));
        // The policy's own rules (even one covering the port among others) make no edge.
        let m = map(vec![rule(&["*"], Protocol::Tcp, &["1-65535"])]);
        assert!(edge_addresses(&m).is_empty());
        let m = map(vec![rule(&["tag:edge"], Protocol::Udp, &[&ingress])]);
        assert!(edge_addresses(&m).is_empty());
    }
}
