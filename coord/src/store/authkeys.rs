//! Auth keys: created and revoked by the operator, checked and consumed at registration.
//!
//! A single-use key is checked and consumed in the same transaction that creates the node, by a
//! conditional `UPDATE`: of N concurrent registrations with one single-use key exactly one wins.

use keys::authkey::{AuthKeyId, AuthKeyToken, SecretHash};
use rusqlite::{params, OptionalExtension, Row};

use super::nodes::{insert_node, NewNode, NodeRecord};
use super::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKeyRecord {
    pub id: AuthKeyId,
    pub secret_hash: SecretHash,
    pub created: u64,
    pub expires: u64,
    pub reusable: bool,
    pub ephemeral: bool,
    pub tags: Vec<String>,
    pub uses: u64,
    pub revoked: bool,
}

/// Why a registration with an auth key was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Unknown id or wrong secret: the caller learns nothing about which.
    #[error("auth key is not valid")]
    Invalid,
    #[error("auth key was revoked")]
    Revoked,
    #[error("auth key expired")]
    Expired,
    #[error("auth key was already used (it is single-use)")]
    Used,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for RegisterError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<RawKey> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

type RawKey = (String, String, i64, i64, bool, bool, String, i64, bool);

fn to_record(raw: RawKey) -> Result<AuthKeyRecord> {
    let (id, hash, created, expires, reusable, ephemeral, tags, uses, revoked) = raw;
    Ok(AuthKeyRecord {
        id: AuthKeyId::parse(&id)
            .map_err(|_| StoreError::Corrupt(format!("auth key id {id:?}")))?,
        secret_hash: SecretHash::from_hex(&hash)
            .ok_or_else(|| StoreError::Corrupt(format!("auth key {id} hash")))?,
        created: created as u64,
        expires: expires as u64,
        reusable,
        ephemeral,
        tags: serde_json::from_str(&tags)
            .map_err(|_| StoreError::Corrupt(format!("auth key {id} tags")))?,
        uses: uses as u64,
        revoked,
    })
}

const COLUMNS: &str = "id, secret_hash, created, expires, reusable, ephemeral, tags, uses, revoked";

impl Store {
    pub fn insert_authkey(&mut self, k: &AuthKeyRecord) -> Result<()> {
        self.conn.execute(
            "INSERT INTO auth_keys (id, secret_hash, created, expires, reusable, ephemeral, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                k.id.as_str(),
                k.secret_hash.to_hex(),
                k.created as i64,
                k.expires as i64,
                k.reusable,
                k.ephemeral,
                serde_json::to_string(&k.tags).unwrap_or_else(|_| "[]".into()),
            ],
        )?;
        Ok(())
    }

    pub fn authkeys(&self) -> Result<Vec<AuthKeyRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM auth_keys ORDER BY created, id"
        ))?;
        let raws = stmt
            .query_map([], from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        raws.into_iter().map(to_record).collect()
    }

    /// Revokes a key; false when no key has that id.
    pub fn revoke_authkey(&mut self, id: &AuthKeyId) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE auth_keys SET revoked = 1 WHERE id = ?1",
            [id.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Checks `token` and consumes one use of it, then runs `apply` in the same transaction
    /// (creating or renewing a node). Nothing is written unless all of it succeeds.
    pub fn with_authkey<T>(
        &mut self,
        token: &AuthKeyToken,
        now: u64,
        apply: impl FnOnce(&rusqlite::Transaction<'_>, &AuthKeyRecord) -> Result<T>,
    ) -> Result<T, RegisterError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let raw = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM auth_keys WHERE id = ?1"),
                [token.id().as_str()],
                from_row,
            )
            .optional()?;
        let key = to_record(raw.ok_or(RegisterError::Invalid)?)?;
        if key.secret_hash != token.secret_hash() {
            return Err(RegisterError::Invalid);
        }
        if key.revoked {
            return Err(RegisterError::Revoked);
        }
        if now >= key.expires {
            return Err(RegisterError::Expired);
        }
        let consumed = tx.execute(
            "UPDATE auth_keys SET uses = uses + 1 WHERE id = ?1 AND (reusable = 1 OR uses = 0)",
            [key.id.as_str()],
        )?;
        if consumed != 1 {
            return Err(RegisterError::Used);
        }
        let out = apply(&tx, &key)?;
        tx.commit()?;
        Ok(out)
    }

    /// Registers a new node with an auth key, atomically.
    pub fn register_node(
        &mut self,
        token: &AuthKeyToken,
        now: u64,
        build: impl FnOnce(&AuthKeyRecord) -> NewNode,
    ) -> Result<NodeRecord, RegisterError> {
        self.with_authkey(token, now, |tx, key| insert_node(tx, &build(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::nodes::tests::new_node;

    fn key(reusable: bool, expires: u64) -> (AuthKeyToken, AuthKeyRecord) {
        let t = AuthKeyToken::generate();
        let rec = AuthKeyRecord {
            id: t.id().clone(),
            secret_hash: t.secret_hash(),
            created: 100,
            expires,
            reusable,
            ephemeral: false,
            tags: vec!["tag:edge".into()],
            uses: 0,
            revoked: false,
        };
        (t, rec)
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("coord.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn single_use_key_is_consumed_once() {
        let (_d, mut s) = store();
        let (t, rec) = key(false, 1000);
        s.insert_authkey(&rec).unwrap();
        let n = s.register_node(&t, 200, |_| new_node(1)).unwrap();
        assert_eq!(n.name, "n1");
        let err = s.register_node(&t, 200, |_| new_node(2)).unwrap_err();
        assert!(matches!(err, RegisterError::Used), "{err}");
        assert_eq!(
            s.nodes().unwrap().len(),
            1,
            "the refused registration wrote nothing"
        );
        assert_eq!(s.authkeys().unwrap()[0].uses, 1);
    }

    #[test]
    fn reusable_expired_revoked_wrong_secret() {
        let (_d, mut s) = store();
        let (t, rec) = key(true, 1000);
        s.insert_authkey(&rec).unwrap();
        s.register_node(&t, 200, |_| new_node(1)).unwrap();
        s.register_node(&t, 200, |_| new_node(2)).unwrap();
        assert!(matches!(
            s.register_node(&t, 1000, |_| new_node(3)),
            Err(RegisterError::Expired)
        ));
        // Same id, other secret.
        let forged: AuthKeyToken = format!("mfk_{}_{}", t.id(), "ab".repeat(24))
            .parse()
            .unwrap();
        assert!(matches!(
            s.register_node(&forged, 200, |_| new_node(3)),
            Err(RegisterError::Invalid)
        ));
        let unknown = AuthKeyToken::generate();
        assert!(matches!(
            s.register_node(&unknown, 200, |_| new_node(3)),
            Err(RegisterError::Invalid)
        ));
        assert!(s.revoke_authkey(t.id()).unwrap());
        assert!(matches!(
            s.register_node(&t, 200, |_| new_node(3)),
            Err(RegisterError::Revoked)
        ));
        assert_eq!(s.authkeys().unwrap()[0].uses, 2);
        assert!(s.authkeys().unwrap()[0].revoked);
    }

    #[test]
    fn failed_insert_rolls_back_the_use() {
        let (_d, mut s) = store();
        let (t, rec) = key(false, 1000);
        s.insert_authkey(&rec).unwrap();
        let (t2, rec2) = key(true, 1000);
        s.insert_authkey(&rec2).unwrap();
        s.register_node(&t2, 200, |_| new_node(1)).unwrap();
        // Same public key again violates UNIQUE: the single-use key must stay unused.
        assert!(s.register_node(&t, 200, |_| new_node(1)).is_err());
        let k = s
            .authkeys()
            .unwrap()
            .into_iter()
            .find(|k| k.id == *t.id())
            .unwrap();
        assert_eq!(k.uses, 0);
        s.register_node(&t, 200, |_| new_node(2)).unwrap();
    }
}
