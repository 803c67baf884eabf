//! Key material for meshfunnel.
//!
//! * [`PrivateKey`], [`PublicKey`], [`PresharedKey`]: x25519 keys whose text form is WireGuard's
//!   base64, byte for byte what `wg genkey`, `wg pubkey` and `wg genpsk` print and accept.
//! * [`keyfile`]: key files written atomically with mode 0600, and refused on load when group or
//!   others may read them (as ssh does).
//! * [`authkey`]: auth-key tokens `mfk_<id>_<secret>`: the secret is shown once; servers store
//!   only its hash and compare in constant time.
//!
//! Secrets zeroize on drop, print redacted and compare in constant time. No type here implements
//! `Serialize` for a secret.

pub mod authkey;
pub mod keyfile;
mod wg;

pub use wg::{KeyError, PresharedKey, PrivateKey, PublicKey, KEY_LEN};
