//! meshd, the node daemon: [`control`] talks to the coordinator; [`wg`] is the WireGuard peer
//! set over boringtun, with [`packet`] parsing, [`routes`] (allowed IPs) and the stateful
//! [`filter`]; [`daemon`] runs it all (`meshd up`) over a TUN device and a UDP socket, or over the
//! [`userspace`] TCP/IP stack (`--userspace`, no root).

pub mod control;
pub mod daemon;
pub mod filter;
pub mod funnel;
pub(crate) mod netlink;
pub mod packet;
pub mod routes;
pub mod sample_page;
pub mod userspace;
pub mod wg;

/// The hash map of per-packet lookups (peers by receiver index, the stack's flows, connection
/// tracking): ahash, seeded at random per map as std's SipHash is, and several times faster on
/// short keys (SipHash was ~7 % of the userspace edge's CPU on 1 MiB responses).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
