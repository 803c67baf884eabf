//! [`LocalCa`]: the edge's own certificate authority, the embedded default [`CertSource`].
//!
//! Files in the state directory (created 0700):
//! * `ca.key`: the CA's ECDSA P-256 key, PKCS#8 PEM, mode 0600;
//! * `ca.pem`: the CA certificate, mode 0644; this is the file clients trust.
//!
//! Both are created on first use and only ever created, never replaced: they are written like
//! `keys::keyfile` writes key files (temporary file with the final mode, synced, moved into place,
//! directory synced), except that the last step is a hard link, which fails instead of
//! overwriting. Two processes creating the CA at the same time therefore end up with the same one.
//!
//! The CA is limited by a name constraint to the funnel domain and signs leaf certificates on
//! demand, only for names exactly one label below the domain. Leaves live in memory only.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use zeroize::Zeroizing;

use super::cache::LeafCache;
use super::{name_below, normalize_domain, CertError, CertSource};

const DAY: Duration = Duration::from_secs(86_400);
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Certificates start this long before "now", for clients whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The label of the throw-away leaf that checks a loaded CA can certify names under the domain.
const PROBE_LABEL: &str = "meshfunnel-ca-check";

/// How leaf certificates are issued and cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafPolicy {
    /// Validity of a new leaf (default 30 days).
    pub validity: Duration,
    /// A cached leaf with less than this left is issued again (default 7 days).
    pub renew_before: Duration,
    /// At most this many leaves are kept in memory; the oldest go first (default 10,000).
    pub max_cached: usize,
}

impl Default for LeafPolicy {
    fn default() -> Self {
        Self {
            validity: 30 * DAY,
            renew_before: 7 * DAY,
            max_cached: 10_000,
        }
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The edge's own CA: loads or creates `ca.key`/`ca.pem` and issues leaf certificates for
/// `NAME.<domain>` on demand. Safe to share between threads.
pub struct LocalCa {
    domain: String,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    policy: LeafPolicy,
    cache: Mutex<LeafCache<Arc<CertifiedKey>>>,
    clock: Clock,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("domain", &self.domain)
            .field("policy", &self.policy)
            // try_lock: Debug must not block or deadlock on the cache.
            .field("cached", &self.cache.try_lock().map(|c| c.len()).ok())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads the CA from `state_dir`, creating the directory (0700) and the CA on first use.
    ///
    /// Fails if the files exist but do not form a CA that can certify names under `domain`
    /// (for example, they were made for another domain): the CA clients trust is never replaced
    /// behind their back.
    pub fn open(state_dir: &Path, domain: &str) -> Result<Self, CertError> {
        let domain = normalize_domain(domain)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err(state_dir))?;
        let key_path = state_dir.join("ca.key");
        let pem_path = state_dir.join("ca.pem");
        let now = SystemTime::now();

        if !exists(&key_path)? {
            if exists(&pem_path)? {
                return Err(CertError::BadCa {
                    path: key_path,
                    reason: "missing while ca.pem exists, so the CA clients trust can no longer \
                             sign; remove ca.pem to create a new CA"
                        .into(),
                });
            }
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let pem = Zeroizing::new(key.serialize_pem());
            if create_exclusive(&key_path, pem.as_bytes(), 0o600)? {
                tracing::info!(path = %key_path.display(), "created the edge CA key");
            }
        }
        let key_pem = keys::keyfile::read_private(&key_path)?;
        let key = std::str::from_utf8(&key_pem)
            .ok()
            .and_then(|pem| KeyPair::from_pem(pem).ok())
            .ok_or_else(|| CertError::BadCa {
                path: key_path.clone(),
                reason: "not a PEM private key".into(),
            })?;

        if !exists(&pem_path)? {
            let cert = ca_params(&domain, now).self_signed(&key)?;
            if create_exclusive(&pem_path, cert.pem().as_bytes(), 0o644)? {
                tracing::info!(path = %pem_path.display(), %domain, "created the edge CA certificate");
            }
        }
        let ca_pem = fs::read_to_string(&pem_path).map_err(io_err(&pem_path))?;
        let bad_pem = |reason: String| CertError::BadCa {
            path: pem_path.clone(),
            reason,
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| bad_pem(format!("not a CA certificate: {e}")))?;

        let ca = Self {
            domain,
            ca_pem,
            issuer,
            policy: LeafPolicy::default(),
            cache: Mutex::new(LeafCache::new(LeafPolicy::default().max_cached)),
            clock: Arc::new(SystemTime::now),
        };
        ca.check(now).map_err(bad_pem)?;
        Ok(ca)
    }

    /// Replaces the leaf policy (and empties the leaf cache).
    pub fn with_leaf_policy(mut self, policy: LeafPolicy) -> Self {
        self.cache = Mutex::new(LeafCache::new(policy.max_cached));
        self.policy = policy;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_clock(
        mut self,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The CA certificate, PEM: what clients trust (`curl --cacert`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The funnel domain (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Issues a probe leaf and verifies it the way a client would, so that a CA made for another
    /// domain, a key that does not belong to the certificate or an expired CA fail at start-up
    /// instead of in every handshake.
    fn check(&self, now: SystemTime) -> Result<(), String> {
        let ca_der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        let name = format!("{PROBE_LABEL}.{}", self.domain);
        let (leaf, _) = self
            .issue(&name, now)
            .map_err(|e| format!("cannot issue a certificate: {e}"))?;
        let server_name = ServerName::try_from(name.as_str()).map_err(|e| e.to_string())?;
        let unix = |t: SystemTime| {
            UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
        };
        let end_entity = leaf.end_entity_cert().map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(end_entity, &[], &server_name, &[], unix(now))
            .map_err(|e| {
                format!(
                    "this CA cannot certify names under {} ({e}); it was made for another \
                     domain, does not match ca.key, or has expired. Use the domain it was made \
                     for, or remove ca.pem and ca.key to create a new CA",
                    self.domain
                )
            })?;
        let later = now.checked_add(self.policy.validity).unwrap_or(now);
        if verifier
            .verify_server_cert(end_entity, &[], &server_name, &[], unix(later))
            .is_err()
        {
            tracing::warn!(
                "the edge CA expires within {} days: create a new one (remove ca.pem and ca.key) \
                 and give clients the new ca.pem",
                self.policy.validity.as_secs() / 86_400
            );
        }
        Ok(())
    }

    /// Signs a fresh leaf for `name` (already validated); returns it with its expiry.
    fn issue(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), CertError> {
        let not_after = now.checked_add(self.policy.validity).unwrap_or(now);
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
        params.not_after = not_after.into();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&key_der)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signer);
        tracing::debug!(%name, "issued a leaf certificate");
        Ok((Arc::new(certified), not_after))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LeafCache<Arc<CertifiedKey>>> {
        // The cache holds no invariant a panic elsewhere could break half-way.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CertSource for LocalCa {
    fn certified_key(&self, server_name: &str) -> Result<Arc<CertifiedKey>, CertError> {
        let name = name_below(server_name, &self.domain)?;
        let now = (self.clock)();
        if let Some(key) = self.lock_cache().get(&name, now, self.policy.renew_before) {
            return Ok(key);
        }
        // Signing happens outside the lock; two handshakes racing for a new name may both sign,
        // and the later one wins the cache slot. Both certificates are valid.
        let (key, not_after) = self.issue(&name, now)?;
        self.lock_cache().insert(name, key.clone(), not_after);
        Ok(key)
    }

    fn cached(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name_below(server_name, &self.domain).ok()?;
        self.lock_cache()
            .get(&name, (self.clock)(), self.policy.renew_before)
    }
}

fn ca_params(domain: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("meshfunnel edge CA ({domain})"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "meshfunnel");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Even a stolen CA key can only vouch for names under the funnel domain.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(domain.to_owned())],
        excluded_subtrees: Vec::new(),
    });
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(CA_VALIDITY).unwrap_or(now).into();
    params
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(io_err(path))
}

/// [`keys::keyfile::create_exclusive`]: a CA file appears complete or not at all, and two
/// processes creating the CA at once end up with the same one.
fn create_exclusive(path: &Path, contents: &[u8], mode: u32) -> Result<bool, CertError> {
    keys::keyfile::create_exclusive(path, contents, mode).map_err(CertError::KeyFile)
}

#[cfg(test)]
#[path = "local_ca_tests.rs"]
mod tests;
