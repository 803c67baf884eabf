//! coord, the meshfunnel coordination server: registration, addresses, policy, the streaming
//! netmap, and the admin API.
//!
//! Shape: [`mesh`] is the sans-IO core (state and fan-out; no sockets, time passed in);
//! [`store`] the SQLite state; [`service`] the thread that owns both and is the only writer;
//! [`http`] and [`admin`] the thin I/O drivers around it; [`server`] wires them up.

pub mod admin;
mod admin_ops;
pub mod error;
pub mod http;
pub mod mesh;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
