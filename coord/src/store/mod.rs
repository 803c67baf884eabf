//! coord's durable state in SQLite: nodes, auth keys, funnels, the policy, mesh-wide metadata.
//!
//! One connection, owned by the mesh thread (the only writer). WAL journal with
//! `synchronous=FULL`: a transaction that returned is on disk, so an acknowledged registration
//! survives `kill -9` and power loss. Schema changes are numbered migrations
//! ([`migrations`]) tracked in `PRAGMA user_version`. The database file is created 0600.
//!
//! Soft state (online, endpoints) is not stored: nodes report it again when they reconnect.

mod authkeys;
mod funnels;
mod migrations;
mod nodes;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

pub use authkeys::{AuthKeyRecord, RegisterError};
pub use nodes::{renew_in as nodes_renew, NewNode, NodeRecord};

/// A failure of the storage layer itself (not of the caller's input).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this coord understands ({known}): \
         upgrade coord"
    )]
    TooNew { found: i64, known: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        // Create the file ourselves so it is 0600 from the first byte.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self { conn };
        migrations::migrate(&mut store.conn)?;
        Ok(store)
    }

    /// A metadata value, if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// The stored policy document's text, if one was ever set.
    pub fn policy(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT document FROM policy WHERE id = 1", [], |r| r.get(0))
            .optional()?)
    }

    pub fn set_policy(&mut self, document: &str, now: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO policy (id, document, updated) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET document = excluded.document, updated = excluded.updated",
            rusqlite::params![document, now as i64],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_creates_0600_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.set_meta("ula", "fd12:3456:789a").unwrap();
            s.set_policy("{\"acls\":[]}", 5).unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.meta("ula").unwrap().as_deref(), Some("fd12:3456:789a"));
        assert_eq!(s.meta("nope").unwrap(), None);
        assert_eq!(s.policy().unwrap().as_deref(), Some("{\"acls\":[]}"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coord.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(Store::open(&path).is_err());
    }
}
