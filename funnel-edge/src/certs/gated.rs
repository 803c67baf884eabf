//! [`Gated`]: a [`CertSource`] in front of another that asks the route table first. Names with a
//! live or recently expired funnel go straight through; so do names the inner source already
//! holds a fresh certificate for. Any other name under the funnel domain is issued a certificate
//! only while a token bucket allows ([`IssueLimit`], by default 10 new names a minute), so a
//! flood of random SNI names cannot keep the edge signing, while a mistyped name still gets a
//! TLS handshake and the 404 page behind it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::{CertError, CertSource};
use crate::routes::{Lookup, RouteTable};

/// How many certificates for names without a funnel may be issued: `burst` at once, refilled
/// at `burst` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueLimit {
    pub burst: u32,
    pub per: Duration,
}

impl Default for IssueLimit {
    fn default() -> Self {
        Self {
            burst: 10,
            per: Duration::from_secs(60),
        }
    }
}

/// A token bucket, sans-IO: the time is passed in.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    limit: IssueLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(limit: IssueLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst);
        let per = self.limit.per.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        if per > 0.0 {
            self.tokens = (self.tokens + elapsed * burst / per).min(burst);
        } else {
            self.tokens = burst;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Rate-limits certificates for names that have no funnel. See the module docs.
pub struct Gated {
    inner: Arc<dyn CertSource>,
    routes: watch::Receiver<RouteTable>,
    bucket: Mutex<TokenBucket>,
    clock: Arc<dyn Fn() -> Instant + Send + Sync>,
}

impl fmt::Debug for Gated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Gated {
    pub fn new(
        inner: Arc<dyn CertSource>,
        routes: watch::Receiver<RouteTable>,
        limit: IssueLimit,
    ) -> Self {
        Self::with_clock(inner, routes, limit, Arc::new(Instant::now))
    }

    pub(crate) fn with_clock(
        inner: Arc<dyn CertSource>,
        routes: watch::Receiver<RouteTable>,
        limit: IssueLimit,
        clock: Arc<dyn Fn() -> Instant + Send + Sync>,
    ) -> Self {
        let bucket = Mutex::new(TokenBucket::new(limit, clock()));
        Self {
            inner,
            routes,
            bucket,
            clock,
        }
    }
}

impl CertSource for Gated {
    fn certified_key(&self, server_name: &str) -> Result<Arc<CertifiedKey>, CertError> {
        let (known, ours) = {
            let table = self.routes.borrow();
            let known = !matches!(
                table.lookup(server_name, crate::unix_now()),
                Lookup::Unknown
            );
            (known, table.funnel_name(server_name).is_some())
        };
        // Names outside the domain are refused by the inner source, cheaply: no token spent.
        if known || !ours {
            return self.inner.certified_key(server_name);
        }
        if let Some(key) = self.inner.cached(server_name) {
            return Ok(key);
        }
        let allowed = self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take((self.clock)());
        if !allowed {
            return Err(CertError::RateLimited {
                name: server_name.chars().take(64).collect(),
            });
        }
        self.inner.certified_key(server_name)
    }

    fn cached(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.inner.cached(server_name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Counts issues and caches what it issued; certificates are real but throw-away.
    #[derive(Debug, Default)]
    struct Counting {
        issued: Mutex<HashSet<String>>,
        calls: AtomicU64,
        key: Mutex<Option<Arc<CertifiedKey>>>,
    }

    impl Counting {
        fn key(&self) -> Arc<CertifiedKey> {
            let mut k = self.key.lock().unwrap();
            k.get_or_insert_with(|| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let cert = rcgen::CertificateParams::new(vec!["x.funnel.example".into()])
                    .unwrap()
                    .self_signed(&key)
                    .unwrap();
                let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
                let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
                Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
            })
            .clone()
        }
    }

    impl CertSource for Counting {
        fn certified_key(&self, name: &str) -> Result<Arc<CertifiedKey>, CertError> {
            if !name.ends_with(".funnel.example") {
                return Err(CertError::NotOurName {
                    name: name.into(),
                    domain: "funnel.example".into(),
                });
            }
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.issued.lock().unwrap().insert(name.to_owned());
            Ok(self.key())
        }

        fn cached(&self, name: &str) -> Option<Arc<CertifiedKey>> {
            self.issued
                .lock()
                .unwrap()
                .contains(name)
                .then(|| self.key())
        }
    }

    #[test]
    fn unknown_names_are_rate_limited_known_and_cached_are_not() {
        let inner = Arc::new(Counting::default());
        let mut table = RouteTable::new("funnel.example").unwrap();
        let netmap: proto::map::Netmap = serde_json::from_value(serde_json::json!({
            "self": {"id": 9, "name": "edge", "fqdn": "edge.m", "public_key": keys::PublicKey::from_bytes([9; 32]),
                     "ipv4": "100.64.0.9", "ipv6": "fd00::9", "key_expiry": 1},
            "peers": [{"id": 1, "name": "a", "fqdn": "a.m", "public_key": keys::PublicKey::from_bytes([1; 32]),
                       "ipv4": "100.64.0.1", "ipv6": "fd00::1", "key_expiry": 1}],
            "dns": {"domain": "m", "magic_dns": false},
            "packet_filter": [],
            "funnel_routes": [{"name": "live", "node": 1, "port": 80, "expires": u64::MAX}]
        }))
        .unwrap();
        table.update(&netmap, crate::unix_now());
        let (_tx, rx) = watch::channel(table);
        let t0 = Instant::now();
        let offset = Arc::new(AtomicU64::new(0));
        let clock = {
            let offset = offset.clone();
            Arc::new(move || t0 + Duration::from_secs(offset.load(Ordering::SeqCst)))
        };
        let gated = Gated::with_clock(
            inner.clone(),
            rx,
            IssueLimit {
                burst: 3,
                per: Duration::from_secs(60),
            },
            clock,
        );

        for i in 0..3 {
            gated
                .certified_key(&format!("rand{i}.funnel.example"))
                .unwrap();
        }
        assert!(matches!(
            gated.certified_key("rand3.funnel.example"),
            Err(CertError::RateLimited { .. })
        ));
        // Cached names, funnel names and foreign names do not need a token.
        gated.certified_key("rand0.funnel.example").unwrap();
        for _ in 0..10 {
            gated.certified_key("live.funnel.example").unwrap();
            assert!(matches!(
                gated.certified_key("evil.example.com"),
                Err(CertError::NotOurName { .. })
            ));
        }
        // 20 s later one token is back (3 per minute).
        offset.store(20, Ordering::SeqCst);
        gated.certified_key("rand3.funnel.example").unwrap();
        assert!(gated.certified_key("rand4.funnel.example").is_err());
        // rand0..3 once each; live ten times; the cached rand0 did not reach the signer.
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4 + 10);
    }

    #[test]
    fn bucket_refills_up_to_the_burst() {
        let t0 = Instant::now();
        let limit = IssueLimit {
            burst: 2,
            per: Duration::from_secs(10),
        };
        let mut b = TokenBucket::new(limit, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_secs(5)));
        // A long pause refills only to the burst; time going backwards changes nothing.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later));
        assert!(b.try_take(later));
        assert!(!b.try_take(later));
        assert!(!b.try_take(t0));
    }
}
