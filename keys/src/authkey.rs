//! Auth-key tokens: `mfk_<id>_<secret>`.
//!
//! The id (16 hex digits) names the key in listings and logs; the secret (192 random bits, hex)
//! is shown once when the key is created. Servers store only SHA-256 of the secret: the secret is
//! high-entropy, so a fast hash is enough, and comparing hashes in constant time keeps timing from
//! telling how much of a guess was right.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

const PREFIX: &str = "mfk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 24;

/// Why a token's text was refused. Never echoes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("auth key is malformed: expected mfk_<id>_<secret>")]
    Malformed,
}

/// The public half of a token: its id. Safe to log and print.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthKeyId(String);

impl AuthKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Validates an id given on a command line or read from storage.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if s.len() == ID_BYTES * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(TokenError::Malformed)
        }
    }
}

impl fmt::Display for AuthKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for AuthKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKeyId({})", self.0)
    }
}

/// The stored form of a secret: SHA-256 of it. Compares in constant time.
#[derive(Clone)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Self(v.try_into().ok()?))
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretHash {}
impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A whole token, secret included. Printed redacted by `Debug`; [`Self::reveal`] gives the text.
#[derive(Clone)]
pub struct AuthKeyToken {
    id: AuthKeyId,
    secret: Zeroizing<String>,
}

impl AuthKeyToken {
    /// A new random token.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_BYTES];
        OsRng.fill_bytes(&mut id);
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        OsRng.fill_bytes(&mut secret[..]);
        Self {
            id: AuthKeyId(hex::encode(id)),
            secret: Zeroizing::new(hex::encode(&secret[..])),
        }
    }

    pub fn id(&self) -> &AuthKeyId {
        &self.id
    }

    /// The hash a server stores and compares against.
    pub fn secret_hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.secret.as_bytes()).into())
    }

    /// The full token text, to show the operator once.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}_{}", self.id, self.secret.as_str()))
    }
}

impl FromStr for AuthKeyToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenError::Malformed)?;
        let id = AuthKeyId::parse(id)?;
        if secret.len() != SECRET_BYTES * 2 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            id,
            secret: Zeroizing::new(secret.to_ascii_lowercase()),
        })
    }
}

impl fmt::Debug for AuthKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKeyToken({PREFIX}{}_<redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_roundtrip() {
        let t = AuthKeyToken::generate();
        let text = t.reveal();
        assert!(text.starts_with("mfk_"));
        let back: AuthKeyToken = text.parse().unwrap();
        assert_eq!(back.id(), t.id());
        assert_eq!(back.secret_hash(), t.secret_hash());
    }

    #[test]
    fn different_secret_different_hash() {
        let a = AuthKeyToken::generate();
        let b = AuthKeyToken::generate();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret_hash(), b.secret_hash());
        let h = a.secret_hash();
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
    }

    #[test]
    fn malformed_tokens_refused() {
        for bad in [
            "",
            "mfk_",
            "mfk_abc_def",
            "xyz_0011223344556677_001122334455667700112233445566770011223344556677",
            "mfk_0011223344556677_zz1122334455667700112233445566770011223344556677",
            "mfk_0011223344556677_00112233",
            "mfk_00112233445566_001122334455667700112233445566770011223344556677",
        ] {
            assert_eq!(
                bad.parse::<AuthKeyToken>().err(),
                Some(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_hides_secret() {
        let t = AuthKeyToken::generate();
        let text = t.reveal();
        let secret = text.rsplit('_').next().unwrap();
        assert!(!format!("{t:?}").contains(secret));
    }
}
