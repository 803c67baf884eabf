//! Funnels on the node side: the funnels this node opted in to ([`table`]), the ingress that
//! edges deliver public requests to ([`ingress`]) and its one-line handshake ([`wire`]).

pub mod ingress;
pub mod table;
pub mod wire;
