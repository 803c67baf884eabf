//! Request authentication for node requests: the gate every signed route passes through before
//! its handler can run (a handler gets a [`NodeKey`] only from [`Verifier::verify`]).
//!
//! Checks, in order: the four headers are present and well-formed, the timestamp is within
//! [`proto::auth::MAX_SKEW_SECS`], the MAC verifies (constant time), and the nonce was not seen
//! before. MAC keys are derived once per node key and cached.

use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderMap;
use keys::{PrivateKey, PublicKey};
use proto::auth::{self, RequestKey, SignedParts};

use crate::error::ApiError;
use crate::service::unix_now;

/// Cached MAC keys beyond this are dropped (and derived again on demand).
const KEY_CACHE_MAX: usize = 200_000;
/// Nonces remembered at most; past this, requests are refused until old ones age out.
const NONCE_CACHE_MAX: usize = 1_000_000;

/// A node key whose request verified. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeKey(PublicKey);

impl NodeKey {
    pub fn key(&self) -> PublicKey {
        self.0
    }
}

#[derive(Debug)]
pub struct Verifier {
    coord_key: PrivateKey,
    coord_public: PublicKey,
    keys: Mutex<HashMap<PublicKey, RequestKey>>,
    nonces: Mutex<Nonces>,
}

#[derive(Debug, Default)]
struct Nonces {
    seen: HashMap<u128, u64>,
    last_prune: u64,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    h.get(name)
        .ok_or_else(|| ApiError::Unsigned(format!("missing header {name}")))?
        .to_str()
        .map_err(|_| ApiError::Unsigned(format!("header {name} is not text")))
}

impl Verifier {
    pub fn new(coord_key: PrivateKey) -> Self {
        let coord_public = coord_key.public_key();
        Self {
            coord_key,
            coord_public,
            keys: Mutex::new(HashMap::new()),
            nonces: Mutex::new(Nonces::default()),
        }
    }

    pub fn coord_public(&self) -> PublicKey {
        self.coord_public
    }

    fn request_key(&self, node: &PublicKey) -> RequestKey {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(node) {
            return k.clone();
        }
        if keys.len() >= KEY_CACHE_MAX {
            keys.clear();
        }
        let k = RequestKey::derive(&self.coord_key, node, node, &self.coord_public);
        keys.insert(*node, k.clone());
        k
    }

    /// Verifies a signed request; returns the node key it proves.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<NodeKey, ApiError> {
        let node: PublicKey = header(headers, auth::HEADER_NODE_KEY)?
            .parse()
            .map_err(|_| {
                ApiError::Unsigned("node key header is not a WireGuard public key".into())
            })?;
        let timestamp: u64 = header(headers, auth::HEADER_TIMESTAMP)?
            .parse()
            .map_err(|_| ApiError::Unsigned("timestamp header is not a number".into()))?;
        let nonce = header(headers, auth::HEADER_NONCE)?;
        if !auth::valid_nonce(nonce) {
            return Err(ApiError::Unsigned(
                "nonce must be 32 lowercase hex digits".into(),
            ));
        }
        let signature = header(headers, auth::HEADER_SIGNATURE)?;
        let now = unix_now();
        if !auth::timestamp_fresh(timestamp, now) {
            return Err(ApiError::StaleTimestamp);
        }
        let parts = SignedParts {
            method,
            path: path_and_query,
            timestamp,
            nonce,
            body,
        };
        if !self.request_key(&node).verify(&parts, signature) {
            return Err(ApiError::BadSignature);
        }
        // Only remember nonces of requests that verified, so garbage cannot fill the cache.
        let nonce = u128::from_str_radix(nonce, 16)
            .map_err(|_| ApiError::Unsigned("nonce must be hex".into()))?;
        self.remember(nonce, now)?;
        Ok(NodeKey(node))
    }

    fn remember(&self, nonce: u128, now: u64) -> Result<(), ApiError> {
        let mut n = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let window = 2 * auth::MAX_SKEW_SECS + 1;
        if now.saturating_sub(n.last_prune) >= 10 || n.seen.len() >= NONCE_CACHE_MAX {
            n.seen.retain(|_, t| now.saturating_sub(*t) <= window);
            n.last_prune = now;
        }
        if n.seen.len() >= NONCE_CACHE_MAX {
            return Err(ApiError::Unavailable);
        }
        if n.seen.insert(nonce, now).is_some() {
            return Err(ApiError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn signed(
        node: &PrivateKey,
        coord: &PublicKey,
        ts: u64,
        nonce: &str,
        body: &[u8],
    ) -> HeaderMap {
        let k = RequestKey::derive(node, coord, &node.public_key(), coord);
        let sig = k.sign(&SignedParts {
            method: "POST",
            path: "/v1/endpoints",
            timestamp: ts,
            nonce,
            body,
        });
        let mut h = HeaderMap::new();
        let mut put = |n: &'static str, v: String| {
            h.insert(n, HeaderValue::from_str(&v).unwrap());
        };
        put(auth::HEADER_NODE_KEY, node.public_key().to_base64());
        put(auth::HEADER_TIMESTAMP, ts.to_string());
        put(auth::HEADER_NONCE, nonce.to_owned());
        put(auth::HEADER_SIGNATURE, sig);
        h
    }

    #[test]
    fn verify_replay_stale_tamper() {
        let coord = PrivateKey::generate();
        let v = Verifier::new(coord.clone());
        let node = PrivateKey::generate();
        let now = unix_now();
        let nonce = "0123456789abcdef0123456789abcdef";
        let h = signed(&node, &coord.public_key(), now, nonce, b"{}");
        let ok = v.verify("POST", "/v1/endpoints", &h, b"{}").unwrap();
        assert_eq!(ok.key(), node.public_key());
        assert!(matches!(
            v.verify("POST", "/v1/endpoints", &h, b"{}"),
            Err(ApiError::Replayed)
        ));

        let h = signed(
            &node,
            &coord.public_key(),
            now,
            "1123456789abcdef0123456789abcdef",
            b"{}",
        );
        assert!(matches!(
            v.verify("POST", "/v1/endpoints", &h, b"{ }"),
            Err(ApiError::BadSignature)
        ));
        assert!(matches!(
            v.verify("POST", "/v1/register", &h, b"{}"),
            Err(ApiError::BadSignature)
        ));
        // A bad signature did not burn the nonce.
        v.verify("POST", "/v1/endpoints", &h, b"{}").unwrap();

        let h = signed(
            &node,
            &coord.public_key(),
            now - 600,
            "2123456789abcdef0123456789abcdef",
            b"",
        );
        assert!(matches!(
            v.verify("POST", "/v1/endpoints", &h, b""),
            Err(ApiError::StaleTimestamp)
        ));

        let mut h = signed(
            &node,
            &coord.public_key(),
            now,
            "3123456789abcdef0123456789abcdef",
            b"",
        );
        h.remove(auth::HEADER_SIGNATURE);
        assert!(matches!(
            v.verify("POST", "/v1/endpoints", &h, b""),
            Err(ApiError::Unsigned(_))
        ));
        assert!(matches!(
            v.verify("POST", "/v1/endpoints", &HeaderMap::new(), b""),
            Err(ApiError::Unsigned(_))
        ));
    }
}
