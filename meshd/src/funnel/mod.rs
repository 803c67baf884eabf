//! Funnels on the node side: the funnels this node opted in to ([`table`], kept by
//! [`service`]), the ingress that edges deliver public requests to ([`ingress`]), its one-line
//! handshake ([`wire`]), the byte relay behind it ([`relay`]) and who the edges are ([`edges`]).

pub mod edges;
pub mod ingress;
pub mod relay;
pub mod service;
pub mod table;
pub mod wire;
