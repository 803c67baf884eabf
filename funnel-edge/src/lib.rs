//! funnel-edge: the public edge of a meshfunnel mesh. It terminates TLS for
//! `NAME.<funnel domain>` and forwards each request over the mesh to the node that opened the
//! funnel.
//!
//! * [`certs`]: where certificates come from ([`certs::CertSource`]); the embedded default is the
//!   edge's own CA ([`certs::LocalCa`]), and [`certs::Gated`] rate-limits names without a funnel.
//! * [`tls`]: the rustls server configuration that picks a certificate by SNI.
//! * [`routes`]: the funnel routing table built from the netmap (sans-IO).
//! * [`dial`]: how the proxy opens streams to nodes ([`dial::Dialer`]).
//! * [`proxy`]: the HTTPS reverse proxy ([`proxy::serve`]).
//! * [`edge`]: `funnel-edge run`: the edge as a mesh node, serving the proxy.

pub mod certs;
pub mod dial;
pub mod edge;
pub mod proxy;
pub mod routes;
pub mod tls;

/// The current time in Unix seconds (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
