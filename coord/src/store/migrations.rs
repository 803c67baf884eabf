//! Numbered schema migrations. Each runs once, in its own transaction, and bumps
//! `PRAGMA user_version`. Never edit a migration that has shipped; append a new one.

use rusqlite::Connection;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE auth_keys (
        id          TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        reusable    INTEGER NOT NULL,
        ephemeral   INTEGER NOT NULL,
        tags        TEXT NOT NULL,
        uses        INTEGER NOT NULL DEFAULT 0,
        revoked     INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE nodes (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        public_key  TEXT NOT NULL UNIQUE,
        name        TEXT NOT NULL UNIQUE,
        hostname    TEXT NOT NULL,
        ipv4        TEXT NOT NULL UNIQUE,
        ipv6        TEXT NOT NULL UNIQUE,
        tags        TEXT NOT NULL,
        ephemeral   INTEGER NOT NULL,
        auth_key_id TEXT,
        created     INTEGER NOT NULL,
        key_expiry  INTEGER NOT NULL,
        last_seen   INTEGER
    );
    CREATE TABLE policy (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        document TEXT NOT NULL,
        updated  INTEGER NOT NULL
    );",
    // 2: funnels. A node's funnels go with it (foreign_keys is on for every connection).
    "CREATE TABLE funnels (
        name    TEXT PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        port    INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX funnels_node ON funnels(node_id);",
];

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
