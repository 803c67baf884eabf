//! The coordinator's TLS material: a certificate chain and its key, and the rustls server config
//! built from them.
//!
//! Either the operator supplies PEM files (`--tls-cert`/`--tls-key`, see [`load_files`]), or
//! [`load_or_create`] keeps a self-signed ECDSA P-256 certificate in `<state dir>/tls/`, made on
//! first start and reused afterwards. Nodes trust a self-signed certificate by pinning its
//! [`fingerprint`] (`sha256:<hex>`), which `coord serve` prints.
//!
//! Files are read and written here; nothing listens. The key file is written atomically with
//! mode 0600 and refused on load when group or others may read it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// How long a generated certificate is valid.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// A generated certificate is valid from a day ago, so clients with a slow clock accept it.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
/// Names every generated certificate carries, besides the operator's.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate chain (leaf first), its private key, and the leaf's fingerprint.
pub struct TlsMaterial {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// `sha256:<64 lowercase hex>` of the leaf certificate, see [`fingerprint`].
    pub fingerprint: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never prints.
        f.debug_struct("TlsMaterial")
            .field("certificates", &self.cert_chain.len())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why TLS material could not be loaded, created or turned into a server config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no private key found (expected a PEM PKCS#8, SEC1 or RSA private key)")]
    NoKey { path: PathBuf },
    #[error("{path} exists but {missing} does not: restore it, or remove both to generate a new certificate")]
    HalfPair { path: PathBuf, missing: PathBuf },
    #[error("{key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// The key file layer's messages already name the file.
    #[error("{source}")]
    KeyFile {
        path: PathBuf,
        source: keys::keyfile::KeyFileError,
    },
    #[error("cannot generate a TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn pem_err(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: format!("not a valid PEM file ({e})"),
    }
}

fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The `sha256:<hex>` fingerprint of a certificate: SHA-256 of its DER, 64 lowercase hex digits.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// Loads an operator-supplied certificate chain (leaf first) and private key, both PEM.
pub fn load_files(cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(io_err(cert))?;
    let key_pem = keys::keyfile::read_private(key).map_err(|source| match source {
        keys::keyfile::KeyFileError::Io { path, source } => TlsError::Io { path, source },
        source => TlsError::KeyFile {
            path: key.to_owned(),
            source,
        },
    })?;
    parse(cert, &cert_pem, key, &key_pem)
}

fn parse(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<TlsMaterial, TlsError> {
    let cert_chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_path, e))?;
    let Some(leaf) = cert_chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_path.to_owned(),
        },
        e => pem_err(key_path, e),
    })?;
    let fingerprint = fingerprint(leaf);
    // Refuse a key that does not belong to the certificate now, naming both files, rather than
    // at the first handshake.
    CertifiedKey::from_der(cert_chain.clone(), key.clone_key(), &ring()).map_err(|e| {
        TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(TlsMaterial {
        cert_chain,
        key,
        fingerprint,
    })
}

/// Loads `<state_dir>/tls/{cert,key}.pem`, or creates a self-signed certificate there when
/// neither exists. `extra_sans` are added to `localhost`, `127.0.0.1` and `::1`; each is an IP
/// address SAN if it parses as one, else a DNS name. An existing certificate is used as it is,
/// even if `extra_sans` changed: remove the two files to make a new one.
pub fn load_or_create(state_dir: &Path, extra_sans: &[String]) -> Result<TlsMaterial, TlsError> {
    let dir = state_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let cert_exists = cert_path.try_exists().map_err(io_err(&cert_path))?;
    let key_exists = key_path.try_exists().map_err(io_err(&key_path))?;
    match (cert_exists, key_exists) {
        (true, true) => return load_files(&cert_path, &key_path),
        (true, false) => {
            return Err(TlsError::HalfPair {
                path: cert_path,
                missing: key_path,
            })
        }
        (false, true) => {
            return Err(TlsError::HalfPair {
                path: key_path,
                missing: cert_path,
            })
        }
        (false, false) => {}
    }
    create_private_dir(&dir)?;
    let (cert_pem, key_pem) = generate(extra_sans)?;
    // Key first: a crash in between leaves a key without a certificate, which the next start
    // reports instead of silently replacing.
    keys::keyfile::write_private(&key_path, key_pem.as_bytes()).map_err(|source| {
        TlsError::KeyFile {
            path: key_path.clone(),
            source,
        }
    })?;
    keys::keyfile::write_private(&cert_path, cert_pem.as_bytes()).map_err(|source| {
        TlsError::KeyFile {
            path: cert_path.clone(),
            source,
        }
    })?;
    parse(
        &cert_path,
        cert_pem.as_bytes(),
        &key_path,
        key_pem.as_bytes(),
    )
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    // An existing directory keeps its mode otherwise.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// A self-signed ECDSA P-256 certificate and its key, both PEM. The key is zeroized on drop.
fn generate(extra_sans: &[String]) -> Result<(String, zeroize::Zeroizing<String>), TlsError> {
    let sans: Vec<String> = DEFAULT_SANS
        .iter()
        .map(|s| (*s).to_owned())
        .chain(extra_sans.iter().cloned())
        .collect();
    // `CertificateParams::new` makes an IP SAN of every entry that parses as an address.
    let mut params = rcgen::CertificateParams::new(sans)?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, "meshfunnel coord");
    params.distinguished_name = name;
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + VALIDITY).into();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// The rustls server configuration for coord's listener: ring provider, TLS 1.2 and 1.3, ALPN
/// `http/1.1`, no client certificates.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(m.cert_chain.clone(), m.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_then_load_gives_the_same_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["coord.example".to_owned(), "192.0.2.7".to_owned()];
        let made = load_or_create(dir.path(), &sans).unwrap();
        let tls = dir.path().join("tls");
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join("cert.pem")), 0o600);
        assert_eq!(mode(&tls.join("key.pem")), 0o600);
        assert!(made.fingerprint.starts_with("sha256:"));
        assert_eq!(made.fingerprint.len(), 7 + 64);
        assert_eq!(made.fingerprint, fingerprint(&made.cert_chain[0]));

        let loaded = load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(loaded.fingerprint, made.fingerprint);
        assert_eq!(loaded.cert_chain, made.cert_chain);
        server_config(&loaded).unwrap();

        // The certificate names what it should (DNS names as text, IP addresses as bytes).
        let der = made.cert_chain[0].as_ref();
        for needle in [
            &b"localhost"[..],
            b"coord.example",
            &[192, 0, 2, 7],
            &[127, 0, 0, 1],
        ] {
            assert!(der.windows(needle.len()).any(|w| w == needle), "{needle:?}");
        }
    }

    #[test]
    fn garbage_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        keys::keyfile::write_private(&cert, b"hello\n").unwrap();
        keys::keyfile::write_private(&key, b"hello\n").unwrap();
        let err = load_files(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&*cert.to_string_lossy()), "{err}");

        load_or_create(dir.path(), &[]).unwrap();
        let good_cert = dir.path().join("tls/cert.pem");
        let err = load_files(&good_cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        assert!(err.to_string().contains(&*key.to_string_lossy()), "{err}");

        // A truncated PEM block is an error, not an empty file.
        let text = std::fs::read_to_string(&good_cert).unwrap();
        keys::keyfile::write_private(&cert, &text.as_bytes()[..text.len() / 2]).unwrap();
        let err = load_files(&cert, &dir.path().join("tls/key.pem")).unwrap_err();
        assert!(err.to_string().contains(&*cert.to_string_lossy()), "{err}");

        // Another certificate's key is refused, naming both files.
        let other = tempfile::tempdir().unwrap();
        load_or_create(other.path(), &[]).unwrap();
        let other_key = other.path().join("tls/key.pem");
        let err = load_files(&good_cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn half_a_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join("tls/cert.pem")).unwrap();
        let err = load_or_create(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::HalfPair { .. }), "{err}");
    }

    #[test]
    fn open_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), &[]).unwrap();
        let key = dir.path().join("tls/key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(&CertificateDer::from(b"abc".to_vec()));
        assert_eq!(
            fp,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
