//! How the node decides to trust the coordinator's certificate, as rustls verifiers.
//!
//! * A fingerprint pin accepts exactly one leaf certificate (SHA-256 of its DER), whatever names
//!   it carries; the handshake signature is still checked with the provider's algorithms, so the
//!   server must hold the certificate's key.
//! * A CA file is ordinary webpki verification, name included. A self-signed leaf given as its own
//!   CA (what `coord` generates) is not a CA to webpki; a certificate found verbatim in the file is
//!   therefore accepted as a pin of itself.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use super::ControlError;

/// What the node trusts the coordinator's certificate by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The SHA-256 of the coordinator's leaf certificate: `sha256:HEX`, bare hex, any case,
    /// `:` separators allowed (see [`normalize_fingerprint`]).
    Fingerprint(String),
    /// A PEM file of CA certificates, or the coordinator's own self-signed certificate.
    CaFile(std::path::PathBuf),
}

/// A fingerprint in the one form coord prints, `sha256:<64 lowercase hex>`, or `None` if `s` is
/// not one. Accepts an optional `sha256:` prefix (any case), upper- or lowercase hex, `:`
/// separators (`AB:CD:…`, as openssl prints), and openssl's `SHA256 Fingerprint=` prefix.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    parse_fingerprint(s).map(|d| format!("sha256:{}", hex::encode(d)))
}

fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let rest = ["sha256 fingerprint=", "sha256:", "sha256="]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .unwrap_or(&lower);
    let digits: String = rest.chars().filter(|&c| c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).ok()?;
    Some(out)
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`: ring provider, TLS 1.2/1.3, ALPN `http/1.1`.
pub(super) fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ControlError> {
    let provider = ring();
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Fingerprint(fp) => Arc::new(PinVerifier {
            expected: parse_fingerprint(fp)
                .ok_or_else(|| ControlError::InvalidFingerprint { value: fp.clone() })?,
            algs,
        }),
        Trust::CaFile(path) => Arc::new(CaVerifier::load(path, provider.clone())?),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The error the pin verifier hands rustls, found again in the handshake's `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint mismatch: expected {expected}, got {got}")]
struct PinMismatch {
    expected: String,
    got: String,
}

/// `(expected, got)` if the handshake failed because the pinned fingerprint did not match.
pub(super) fn pin_mismatch(err: &io::Error) -> Option<(String, String)> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) = tls else {
        return None;
    };
    let m = inner.downcast_ref::<PinMismatch>()?;
    Some((m.expected.clone(), m.got.clone()))
}

#[derive(Debug)]
struct PinVerifier {
    expected: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            expected: format!("sha256:{}", hex::encode(self.expected)),
            got: format!("sha256:{}", hex::encode(got)),
        };
        Err(CertificateError::Other(OtherError(Arc::new(mismatch))).into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Webpki verification against a CA file, plus: a certificate in the file is trusted as a leaf.
#[derive(Debug)]
struct CaVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
}

impl CaVerifier {
    fn load(path: &Path, provider: Arc<CryptoProvider>) -> Result<Self, ControlError> {
        let fail = |reason: String| ControlError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not a valid PEM file ({e})")))?;
        if certs.is_empty() {
            return Err(fail("no PEM \"BEGIN CERTIFICATE\" block in it".to_owned()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| fail(format!("unusable certificate: {e}")))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self { webpki, certs })
    }
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
