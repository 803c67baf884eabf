//! Funnel rows: name → node, port, expiry. Each change is one statement (its own transaction);
//! rows of a deleted node go with it (`ON DELETE CASCADE`). Expired rows are deleted by the
//! driver when the core drops them, and skipped when loaded.

use proto::map::FunnelRoute;
use proto::NodeId;
use rusqlite::params;

use super::{Result, Store, StoreError};

impl Store {
    /// Every stored funnel, by name.
    pub fn funnels(&self) -> Result<Vec<FunnelRoute>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, node_id, port, expires FROM funnels ORDER BY name")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(name, node, port, expires)| {
                let port = u16::try_from(port)
                    .map_err(|_| StoreError::Corrupt(format!("funnel {name}: port {port}")))?;
                Ok(FunnelRoute {
                    name,
                    node: NodeId(node as u64),
                    port,
                    expires: expires.max(0) as u64,
                })
            })
            .collect()
    }

    /// Opens or renews a funnel: a row with the same name is replaced (`created` is kept).
    pub fn upsert_funnel(&mut self, r: &FunnelRoute, now: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO funnels (name, node_id, port, expires, created) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET node_id = excluded.node_id, port = excluded.port,
                                             expires = excluded.expires",
            params![
                r.name,
                r.node.0 as i64,
                i64::from(r.port),
                r.expires.min(i64::MAX as u64) as i64,
                now as i64
            ],
        )?;
        Ok(())
    }

    /// Deletes funnels by name, all in one transaction.
    pub fn delete_funnels(&mut self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM funnels WHERE name = ?1")?;
            for n in names {
                stmt.execute([n])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::nodes::{insert_node, tests::new_node};

    #[test]
    fn funnels_roundtrip_renew_delete_and_go_with_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.db");
        let mut s = Store::open(&path).unwrap();
        let tx = s.conn.transaction().unwrap();
        let a = insert_node(&tx, &new_node(1)).unwrap();
        let b = insert_node(&tx, &new_node(2)).unwrap();
        tx.commit().unwrap();
        let route = |name: &str, node: NodeId, port: u16, expires: u64| FunnelRoute {
            name: name.into(),
            node,
            port,
            expires,
        };
        s.upsert_funnel(&route("demo", a.id, 3000, 500), 100)
            .unwrap();
        s.upsert_funnel(&route("api", a.id, 8080, 600), 100)
            .unwrap();
        s.upsert_funnel(&route("b", b.id, 80, 700), 100).unwrap();
        // Renewal replaces port and expiry.
        s.upsert_funnel(&route("demo", a.id, 3001, 900), 200)
            .unwrap();
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            s.funnels().unwrap(),
            vec![
                route("api", a.id, 8080, 600),
                route("b", b.id, 80, 700),
                route("demo", a.id, 3001, 900)
            ]
        );
        s.delete_funnels(&["api".into(), "nope".into()]).unwrap();
        assert!(s.delete_node(a.id).unwrap());
        assert_eq!(s.funnels().unwrap(), vec![route("b", b.id, 80, 700)]);
        // A funnel of an unknown node is refused by the foreign key.
        assert!(s.upsert_funnel(&route("x", NodeId(99), 1, 1), 1).is_err());
    }
}
