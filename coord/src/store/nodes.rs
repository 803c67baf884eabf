//! Node rows: identity, addresses, name, tags, expiry, last seen.

use std::net::{Ipv4Addr, Ipv6Addr};

use keys::PublicKey;
use proto::NodeId;
use rusqlite::{params, Row, Transaction};

use super::{Result, Store, StoreError};

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub public_key: PublicKey,
    /// Unique DNS label.
    pub name: String,
    /// The hostname the node asked for.
    pub hostname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub auth_key_id: Option<String>,
    pub created: u64,
    pub key_expiry: u64,
    pub last_seen: Option<u64>,
}

/// A node about to be inserted (its id comes from the database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub public_key: PublicKey,
    pub name: String,
    pub hostname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub tags: Vec<String>,
    pub ephemeral: bool,
    pub auth_key_id: Option<String>,
    pub created: u64,
    pub key_expiry: u64,
}

const COLUMNS: &str = "id, public_key, name, hostname, ipv4, ipv6, tags, ephemeral, auth_key_id, \
                       created, key_expiry, last_seen";

fn corrupt(what: &str, id: i64) -> StoreError {
    StoreError::Corrupt(format!("node {id}: {what}"))
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<Result<NodeRecord>> {
    let id: i64 = r.get(0)?;
    let pk: String = r.get(1)?;
    let ipv4: String = r.get(4)?;
    let ipv6: String = r.get(5)?;
    let tags: String = r.get(6)?;
    let last_seen: Option<i64> = r.get(11)?;
    let rec = (|| {
        Ok(NodeRecord {
            id: NodeId(id as u64),
            public_key: pk.parse().map_err(|_| corrupt("public key", id))?,
            name: r.get(2).map_err(StoreError::from)?,
            hostname: r.get(3).map_err(StoreError::from)?,
            ipv4: ipv4.parse().map_err(|_| corrupt("ipv4", id))?,
            ipv6: ipv6.parse().map_err(|_| corrupt("ipv6", id))?,
            tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags", id))?,
            ephemeral: r.get(7).map_err(StoreError::from)?,
            auth_key_id: r.get(8).map_err(StoreError::from)?,
            created: r.get::<_, i64>(9).map_err(StoreError::from)? as u64,
            key_expiry: r.get::<_, i64>(10).map_err(StoreError::from)? as u64,
            last_seen: last_seen.map(|t| t as u64),
        })
    })();
    Ok(rec)
}

pub(super) fn insert_node(tx: &Transaction<'_>, n: &NewNode) -> Result<NodeRecord> {
    tx.execute(
        "INSERT INTO nodes (public_key, name, hostname, ipv4, ipv6, tags, ephemeral, auth_key_id,
                            created, key_expiry)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            n.public_key.to_base64(),
            n.name,
            n.hostname,
            n.ipv4.to_string(),
            n.ipv6.to_string(),
            serde_json::to_string(&n.tags).unwrap_or_else(|_| "[]".into()),
            n.ephemeral,
            n.auth_key_id,
            n.created as i64,
            n.key_expiry as i64,
        ],
    )?;
    let id = NodeId(tx.last_insert_rowid() as u64);
    Ok(NodeRecord {
        id,
        public_key: n.public_key,
        name: n.name.clone(),
        hostname: n.hostname.clone(),
        ipv4: n.ipv4,
        ipv6: n.ipv6,
        tags: n.tags.clone(),
        ephemeral: n.ephemeral,
        auth_key_id: n.auth_key_id.clone(),
        created: n.created,
        key_expiry: n.key_expiry,
        last_seen: None,
    })
}

impl Store {
    /// Every node, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"))?;
        let rows = stmt
            .query_map([], read_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    /// Inserts a node that registered with no auth key (an external WireGuard device the admin
    /// added), in its own transaction.
    pub fn insert_external_node(&mut self, n: &NewNode) -> Result<NodeRecord> {
        let tx = self.conn.transaction()?;
        let rec = insert_node(&tx, n)?;
        tx.commit()?;
        Ok(rec)
    }

    pub fn delete_node(&mut self, id: NodeId) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM nodes WHERE id = ?1", [id.0 as i64])?;
        Ok(n == 1)
    }

    pub fn set_key_expiry(&mut self, id: NodeId, expiry: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE nodes SET key_expiry = ?2 WHERE id = ?1",
            params![id.0 as i64, expiry as i64],
        )?;
        Ok(())
    }

    /// Records when nodes were last connected, all in one transaction.
    pub fn set_last_seen(&mut self, seen: &[(NodeId, u64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE nodes SET last_seen = ?2 WHERE id = ?1")?;
            for (id, t) in seen {
                stmt.execute(params![id.0 as i64, *t as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Renews a node's key expiry inside an auth-key transaction.
pub fn renew_in(tx: &Transaction<'_>, id: NodeId, expiry: u64) -> Result<()> {
    tx.execute(
        "UPDATE nodes SET key_expiry = ?2 WHERE id = ?1",
        params![id.0 as i64, expiry as i64],
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn new_node(i: u8) -> NewNode {
        NewNode {
            public_key: keys::PrivateKey::from_bytes([i; 32]).public_key(),
            name: format!("n{i}"),
            hostname: format!("n{i}"),
            ipv4: Ipv4Addr::new(100, 64, 0, i),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x6440, i as u16),
            tags: vec![],
            ephemeral: false,
            auth_key_id: None,
            created: 100,
            key_expiry: 10_000,
        }
    }

    #[test]
    fn nodes_roundtrip_last_seen_expiry_delete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.db");
        let mut s = Store::open(&path).unwrap();
        let tx = s.conn.transaction().unwrap();
        let a = insert_node(&tx, &new_node(1)).unwrap();
        let b = insert_node(&tx, &new_node(2)).unwrap();
        tx.commit().unwrap();
        s.set_last_seen(&[(a.id, 500)]).unwrap();
        s.set_key_expiry(b.id, 7).unwrap();
        drop(s);
        let mut s = Store::open(&path).unwrap();
        let all = s.nodes().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].last_seen, Some(500));
        assert_eq!(all[0].public_key, a.public_key);
        assert_eq!(all[1].key_expiry, 7);
        assert!(s.delete_node(a.id).unwrap());
        assert!(!s.delete_node(a.id).unwrap());
        assert_eq!(s.nodes().unwrap().len(), 1);
    }
}
