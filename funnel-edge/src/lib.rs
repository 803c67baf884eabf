//! funnel-edge: the public edge of a meshfunnel mesh. It terminates TLS for
//! `NAME.<funnel domain>` and forwards each request over the mesh to the node that opened the
//! funnel.
//!
//! * [`certs`]: where certificates come from ([`certs::CertSource`]); the embedded default is the
//!   edge's own CA ([`certs::LocalCa`]).
//! * [`tls`]: the rustls server configuration that picks a certificate by SNI.

pub mod certs;
pub mod tls;
