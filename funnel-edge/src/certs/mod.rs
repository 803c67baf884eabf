//! Certificates for the funnel domain.
//!
//! The TLS acceptor asks a [`CertSource`] for a certificate for each handshake's SNI. A source
//! serves only names exactly one DNS label below the funnel domain (`hello.funnel.example` for
//! `funnel.example`) and refuses everything else with [`CertError::NotOurName`], so a client's
//! SNI can never make the edge mint or fetch a certificate for somebody else's name.
//!
//! [`LocalCa`] is the embedded default: the edge's own CA, whose certificate (`ca.pem`) is what
//! clients trust. ACME is meant to be a second implementation of the same trait. [`Gated`]
//! wraps a source so that names without a funnel cannot make it sign without limit.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

mod cache;
mod gated;
mod local_ca;

pub use gated::{Gated, IssueLimit};
pub use local_ca::{LeafPolicy, LocalCa};

/// Something that can hand out a certificate and key for a server name. Called from many tasks
/// at once, once per TLS handshake.
pub trait CertSource: Send + Sync + fmt::Debug {
    /// The certificate chain and signing key for `server_name` (the client's SNI, as sent).
    fn certified_key(&self, server_name: &str) -> Result<Arc<CertifiedKey>, CertError>;

    /// The certificate for `server_name` if the source already holds a fresh one, so that
    /// handing it out costs no signing or fetching. Sources without a cache say `None`.
    fn cached(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let _ = server_name;
        None
    }
}

/// Why a certificate could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The client asked for a name this edge does not serve (the peer's doing, not ours).
    #[error("{name:?} is not a name directly below the funnel domain {domain}")]
    NotOurName { name: String, domain: String },
    /// The configured funnel domain is not a valid DNS name.
    #[error("invalid funnel domain {0:?}: expected a DNS name such as funnel.example.com")]
    InvalidDomain(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    KeyFile(#[from] keys::keyfile::KeyFileError),
    /// The CA files on disk exist but cannot be used (unparsable, mismatched, other domain).
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("loading a generated key into rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Too many certificates for names without a funnel were asked for lately.
    #[error("certificate issuance for unknown names is rate-limited; {name:?} refused")]
    RateLimited { name: String },
}

/// Lowercases `domain`, drops one trailing dot and checks it is a DNS name made of LDH labels.
pub(crate) fn normalize_domain(domain: &str) -> Result<String, CertError> {
    let d = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.split('.').all(valid_label) {
        return Err(CertError::InvalidDomain(domain.to_owned()));
    }
    Ok(d)
}

/// If `name` is exactly one valid label below `domain` (already normalized), the lowercased
/// name; otherwise `NotOurName`.
pub(crate) fn name_below(name: &str, domain: &str) -> Result<String, CertError> {
    let refuse = || CertError::NotOurName {
        // The name comes from the network: keep what we echo into logs short.
        name: name.chars().take(64).collect(),
        domain: domain.to_owned(),
    };
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if lower.len() > 253 {
        return Err(refuse());
    }
    let label = lower
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .ok_or_else(refuse)?;
    if !valid_label(label) {
        return Err(refuse());
    }
    Ok(lower)
}

/// An LDH label: 1–63 of `a-z 0-9 -` (lowercase), not starting or ending with `-`. Rejects `*`,
/// `_`, dots and anything non-ASCII.
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_one_label_below_the_domain() {
        let d = normalize_domain("Funnel.Localhost.").unwrap();
        assert_eq!(d, "funnel.localhost");
        assert_eq!(
            name_below("Hello.FUNNEL.localhost", &d).unwrap(),
            "hello.funnel.localhost"
        );
        assert_eq!(
            name_below("my-app-2.funnel.localhost.", &d).unwrap(),
            "my-app-2.funnel.localhost"
        );
        for bad in [
            "funnel.localhost",
            ".funnel.localhost",
            "a.b.funnel.localhost",
            "evil.example.com",
            "xfunnel.localhost",
            "hellofunnel.localhost",
            "*.funnel.localhost",
            "a_b.funnel.localhost",
            "-a.funnel.localhost",
            "a-.funnel.localhost",
            "héllo.funnel.localhost",
            "127.0.0.1",
            "",
            ".",
        ] {
            assert!(
                matches!(name_below(bad, &d), Err(CertError::NotOurName { .. })),
                "{bad:?} must be refused"
            );
        }
        let long = format!("{}.funnel.localhost", "a".repeat(64));
        assert!(name_below(&long, &d).is_err());
        let ok = format!("{}.funnel.localhost", "a".repeat(63));
        assert!(name_below(&ok, &d).is_ok());
    }

    #[test]
    fn domain_is_validated() {
        for bad in [
            "",
            ".",
            "a..b",
            "under_score.example",
            "-x.example",
            "*.example",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        let long = format!("{}.example", "a".repeat(250));
        assert!(normalize_domain(&long).is_err());
    }
}
