//! WireGuard keys: 32-byte x25519 values, text form standard base64 with padding (44 chars).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key's text or bytes were refused. Never carries the key material itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is not valid base64")]
    Base64,
    #[error("key must be {KEY_LEN} bytes, got {0}")]
    Length(usize),
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let mut buf = Zeroizing::new([0u8; 48]);
    let text = text.trim();
    // A 32-byte key is exactly 44 base64 characters; anything longer would overflow `buf`.
    if text.len() != 44 {
        let n = STANDARD.decode(text).map_err(|_| KeyError::Base64)?.len();
        return Err(KeyError::Length(n));
    }
    let n = STANDARD
        .decode_slice(text, &mut buf[..])
        .map_err(|_| KeyError::Base64)?;
    if n != KEY_LEN {
        return Err(KeyError::Length(n));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

fn encode_key(bytes: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(bytes)
}

/// A node's x25519 private key. Zeroized on drop; `Debug`/`Display` print it redacted.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// A new random key from the OS random source, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut bytes[..]);
        Self::from_bytes(*bytes)
    }

    /// Builds a key from raw bytes. Clamping happens inside x25519, so any 32 bytes are valid;
    /// [`Self::to_bytes`] returns them clamped, as `wg genkey` prints them.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        clamp(&mut bytes);
        let key = Self(StaticSecret::from(bytes));
        bytes.zeroize();
        key
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// X25519(self, peer): the shared secret. Zeroized on drop.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Zeroizing<[u8; KEY_LEN]> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        Zeroizing::new(shared.to_bytes())
    }

    /// The raw key bytes. Handle with care: the caller owns a copy of the secret.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The underlying x25519-dalek secret (boringtun takes this type).
    pub fn as_static_secret(&self) -> &StaticSecret {
        &self.0
    }

    /// WireGuard base64 text, as `wg genkey` prints. Zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_key(&self.to_bytes()))
    }
}

fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(Self::from_bytes(*decode_key(s)?))
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes()[..].ct_eq(&other.to_bytes()[..]).into()
    }
}
impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

/// A node's x25519 public key. Not secret: prints, serializes and compares normally.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        encode_key(&self.0)
    }
    /// A short form for logs: the first 8 base64 characters, as `wg show` users recognise.
    pub fn short(&self) -> String {
        let mut s = self.to_base64();
        s.truncate(8);
        s
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(Self(*decode_key(s)?))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard pre-shared key (`wg genpsk`). Zeroized on drop, printed redacted.
#[derive(Clone)]
pub struct PresharedKey(Zeroizing<[u8; KEY_LEN]>);

impl PresharedKey {
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut bytes[..]);
        Self(bytes)
    }
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_key(&self.0))
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Ok(Self(decode_key(s)?))
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}
impl Eq for PresharedKey {}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_clamp() {
        let k = PrivateKey::generate();
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        let back: PrivateKey = text.parse().unwrap();
        assert_eq!(back, k);
        assert_eq!(back.public_key(), k.public_key());
        let b = k.to_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
    }

    #[test]
    fn known_vector() {
        // RFC 7748 section 6.1: Alice's private key and public key.
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let pk = hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
            .unwrap();
        let k = PrivateKey::from_bytes(sk.try_into().unwrap());
        assert_eq!(k.public_key().as_bytes()[..], pk[..]);
    }

    #[test]
    fn shared_secret_agrees() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_eq!(
            *a.diffie_hellman(&b.public_key()),
            *b.diffie_hellman(&a.public_key())
        );
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::Base64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let long = STANDARD.encode([0u8; 40]);
        assert_eq!(long.parse::<PublicKey>(), Err(KeyError::Length(40)));
        let bad_char = format!("{}!", &STANDARD.encode([1u8; 32])[..43]);
        assert_eq!(bad_char.parse::<PublicKey>(), Err(KeyError::Base64));
    }

    #[test]
    fn secrets_print_redacted() {
        let k = PrivateKey::generate();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(k.to_base64().as_str()));
        assert!(dbg.contains("redacted"));
        let psk = PresharedKey::generate();
        assert!(!format!("{psk:?}").contains(psk.to_base64().as_str()));
    }
}
