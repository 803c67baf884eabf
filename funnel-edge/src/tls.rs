//! The edge's rustls server configuration: TLS 1.3 and 1.2 with the ring provider, ALPN `h2`
//! then `http/1.1`, and the certificate chosen per handshake from the client's SNI by a
//! [`CertSource`]. A handshake without SNI, or for a name the source refuses, gets no certificate
//! and fails; nothing is served under a default certificate.

use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::certs::{CertError, CertSource};

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server configuration that asks `source` for the certificate of each handshake's SNI.
pub fn server_config(source: Arc<dyn CertSource>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // Only fails when the provider has no cipher suite for these versions; ring's default
        // provider has several for both.
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { source }));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Resumption by stateless tickets (keys made at start, rotated every 6 h, never stored), as
    // nginx does by default: a browser or webhook sender that reconnects skips the certificate
    // and its signature, however many clients there are. rustls's default instead keeps the
    // last 256 sessions in memory, which a busy edge churns through. TLS 1.3 resumption still
    // runs an ECDHE exchange (forward secrecy); 0-RTT data stays off.
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => tracing::warn!("TLS session tickets off: {e}"),
    }
    Arc::new(config)
}

/// Resolves the server certificate from SNI through a [`CertSource`].
struct SniResolver {
    source: Arc<dyn CertSource>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("source", &self.source)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            tracing::debug!("TLS handshake without SNI refused");
            return None;
        };
        match self.source.certified_key(name) {
            Ok(key) => Some(key),
            // Whatever a client puts in its SNI is its business: not worth more than DEBUG.
            Err(e @ (CertError::NotOurName { .. } | CertError::RateLimited { .. })) => {
                tracing::debug!("TLS handshake refused: {e}");
                None
            }
            Err(e) => {
                tracing::warn!(%name, "no certificate for a funnel name: {e}");
                None
            }
        }
    }
}
