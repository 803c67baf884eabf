//! A node as the netmap describes it: identity, mesh addresses, DNS name, endpoints.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use keys::PublicKey;
use serde::{Deserialize, Serialize};

/// A node's id, assigned by coord; stable for the node's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Most endpoints a node may report; more are refused.
pub const MAX_ENDPOINTS: usize = 16;

/// One node of the mesh (the netmap's `self` and each of its peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: NodeId,
    /// DNS label, unique in the mesh (`laptop`, `laptop-2`).
    pub name: String,
    /// `name.<mesh domain>`.
    pub fqdn: String,
    pub public_key: PublicKey,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Tags with their prefix (`tag:edge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// UDP endpoints the node can be reached on (local and STUN-discovered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<SocketAddr>,
    /// Whether the node holds an open map stream now.
    #[serde(default)]
    pub online: bool,
    /// When the node key expires (Unix seconds).
    pub key_expiry: u64,
}

impl Node {
    /// The node's allowed IPs: its two mesh addresses as host routes.
    pub fn allowed_ips(&self) -> [IpNet; 2] {
        [
            IpNet::from(std::net::IpAddr::V4(self.ipv4)),
            IpNet::from(std::net::IpAddr::V6(self.ipv6)),
        ]
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}
