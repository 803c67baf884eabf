//! The meshfunnel control protocol: wire types shared by coord, meshd and funnel-edge, and the
//! pure functions over them (netmap diffs, policy validation and evaluation, request signing).
//!
//! No I/O here: no sockets, no files, no clock. Time is passed in as Unix seconds.

pub mod admin;
pub mod api;
pub mod auth;
pub mod duration;
pub mod map;
pub mod node;
pub mod policy;

/// The control protocol version this build speaks. Requests carry it; coord refuses others.
pub const PROTOCOL_VERSION: u32 = 1;

pub use node::{Node, NodeId};
