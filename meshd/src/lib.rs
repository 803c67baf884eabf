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
