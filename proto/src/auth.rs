//! Request authentication: every node request proves possession of the node's private key.
//!
//! The coordinator has its own x25519 key pair (public half published at `GET /v1/info`). Node
//! and coordinator share `X25519(node, coord)`; from it both derive a MAC key. A request carries
//! the node's public key, a timestamp, a random nonce and an HMAC-SHA256 over the method, path,
//! timestamp, nonce, coord key and a hash of the body. The coordinator never sees the private
//! key, and nothing on the node is a bearer token: a captured request is useless after its nonce
//! was seen or its timestamp left the window.

use hmac::{Hmac, Mac};
use keys::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

pub const HEADER_NODE_KEY: &str = "mesh-node-key";
pub const HEADER_TIMESTAMP: &str = "mesh-timestamp";
pub const HEADER_NONCE: &str = "mesh-nonce";
pub const HEADER_SIGNATURE: &str = "mesh-signature";

/// How far a request's timestamp may be from the coordinator's clock, in seconds.
pub const MAX_SKEW_SECS: u64 = 120;

const CONTEXT: &[u8] = b"meshfunnel request v1";

/// The MAC key a node and the coordinator share. Zeroized on drop.
#[derive(Clone)]
pub struct RequestKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestKey(<redacted>)")
    }
}

impl RequestKey {
    /// Derives the key from our private key and the other side's public key; node and coord get
    /// the same key.
    pub fn derive(
        ours: &PrivateKey,
        theirs: &PublicKey,
        node: &PublicKey,
        coord: &PublicKey,
    ) -> Self {
        let shared = ours.diffie_hellman(theirs);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&shared[..]).expect("HMAC takes any key");
        mac.update(CONTEXT);
        mac.update(node.as_bytes());
        mac.update(coord.as_bytes());
        Self(Zeroizing::new(mac.finalize().into_bytes().into()))
    }

    fn mac(&self, req: &SignedParts<'_>) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0[..]).expect("HMAC takes any key");
        for part in [
            req.method.as_bytes(),
            req.path.as_bytes(),
            req.timestamp.to_string().as_bytes(),
            req.nonce.as_bytes(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.update(&Sha256::digest(req.body));
        mac.finalize().into_bytes().into()
    }

    /// The signature header value for a request.
    pub fn sign(&self, req: &SignedParts<'_>) -> String {
        hex::encode(self.mac(req))
    }

    /// Checks a signature header value in constant time.
    pub fn verify(&self, req: &SignedParts<'_>, signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex) else {
            return false;
        };
        sig.len() == 32 && bool::from(self.mac(req)[..].ct_eq(&sig))
    }
}

/// The parts of a request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    /// Path and query, as sent (`/v1/map?stream=1`).
    pub path: &'a str,
    pub timestamp: u64,
    /// 32 hex characters, unique per request.
    pub nonce: &'a str,
    pub body: &'a [u8],
}

/// Whether a nonce has the expected form (32 lowercase hex characters).
pub fn valid_nonce(nonce: &str) -> bool {
    nonce.len() == 32
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `timestamp` is within [`MAX_SKEW_SECS`] of `now`.
pub fn timestamp_fresh(timestamp: u64, now: u64) -> bool {
    timestamp.abs_diff(now) <= MAX_SKEW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(body: &'a [u8], nonce: &'a str) -> SignedParts<'a> {
        SignedParts {
            method: "POST",
            path: "/v1/endpoints",
            timestamp: 1_800_000_000,
            nonce,
            body,
        }
    }

    #[test]
    fn node_and_coord_derive_the_same_key() {
        let node = PrivateKey::generate();
        let coord = PrivateKey::generate();
        let (np, cp) = (node.public_key(), coord.public_key());
        let k_node = RequestKey::derive(&node, &cp, &np, &cp);
        let k_coord = RequestKey::derive(&coord, &np, &np, &cp);
        let nonce = "00112233445566778899aabbccddeeff";
        let sig = k_node.sign(&parts(b"{}", nonce));
        assert!(k_coord.verify(&parts(b"{}", nonce), &sig));
        // Any change to a covered part breaks the signature.
        assert!(!k_coord.verify(&parts(b"{ }", nonce), &sig));
        assert!(!k_coord.verify(&parts(b"{}", "00112233445566778899aabbccddeefe"), &sig));
        let mut p = parts(b"{}", nonce);
        p.path = "/v1/register";
        assert!(!k_coord.verify(&p, &sig));
        assert!(!k_coord.verify(&parts(b"{}", nonce), "zz"));
        assert!(!k_coord.verify(&parts(b"{}", nonce), ""));
        // Another node's key yields another MAC key.
        let other = PrivateKey::generate();
        let k_other = RequestKey::derive(&other, &cp, &other.public_key(), &cp);
        assert!(!k_coord.verify(&parts(b"{}", nonce), &k_other.sign(&parts(b"{}", nonce))));
    }

    #[test]
    fn nonce_and_timestamp_checks() {
        assert!(valid_nonce("00112233445566778899aabbccddeeff"));
        assert!(!valid_nonce("00112233445566778899AABBCCDDEEFF"));
        assert!(!valid_nonce("0011"));
        assert!(timestamp_fresh(1000, 1100));
        assert!(!timestamp_fresh(1000, 1121));
        assert!(!timestamp_fresh(1200, 1000));
    }
}
