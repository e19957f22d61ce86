//! Connection setup and numbered schema migrations (`PRAGMA user_version`).

use std::path::Path;
use std::time::Duration;

use duet_store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::db;

/// Migrations, applied in order; migration `i` brings `user_version` to `i + 1`.
const MIGRATIONS: &[&str] = &[MIGRATION_1, MIGRATION_2];

/// Migration 1: the whole schema.
///
/// - `accounts.head` is the timeline counter (Law 3): entry numbers are taken
///   with `UPDATE … SET head = head + 1 … RETURNING head` inside the writing
///   transaction, so a rolled-back write rolls its numbers back with it.
/// - `messages` holds one copy of each message; `UNIQUE (sender, msg_seq,
///   msg_random)` makes sends idempotent; `sender_seq` is the sender's entry
///   number (NULL for recipient-only messages).
/// - `timeline.kind`: 0 message (`msg_id` set), 1 recall, 2 read (`payload` JSON).
///   `peer` is the other party, used by history and the per-conversation cut.
///   `timeline_history` covers `msg_id` so history pages never touch the table
///   (without it the planner prefers walking the user's whole primary-key range).
/// - `conversations` is each user's view of each peer.
const MIGRATION_1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE accounts (
    user_id    TEXT PRIMARY KEY,
    nick       TEXT NOT NULL DEFAULT '',
    face_url   TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    head       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    msg_id            INTEGER PRIMARY KEY,
    sender            TEXT NOT NULL,
    receiver          TEXT NOT NULL,
    msg_seq           INTEGER NOT NULL,
    msg_random        INTEGER NOT NULL,
    msg_time          INTEGER NOT NULL,
    body              TEXT NOT NULL,
    cloud_custom_data TEXT NOT NULL,
    nick              TEXT NOT NULL,
    face_url          TEXT NOT NULL,
    flags             INTEGER NOT NULL DEFAULT 0,
    sender_seq        INTEGER,
    UNIQUE (sender, msg_seq, msg_random)
);
CREATE INDEX messages_time ON messages (msg_time);
CREATE TABLE timeline (
    user_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    kind    INTEGER NOT NULL,
    peer    TEXT NOT NULL,
    msg_id  INTEGER,
    payload TEXT,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX timeline_history ON timeline (user_id, peer, seq, msg_id) WHERE kind = 0;
CREATE INDEX timeline_ts ON timeline (ts);
CREATE TABLE conversations (
    user_id        TEXT NOT NULL,
    peer           TEXT NOT NULL,
    last_msg_id    INTEGER,
    last_time      INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL,
    unread         INTEGER NOT NULL DEFAULT 0,
    read_time      INTEGER NOT NULL DEFAULT 0,
    peer_read_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, peer)
) WITHOUT ROWID;
CREATE INDEX conversations_recent ON conversations (user_id, last_time DESC, last_seq DESC);
CREATE INDEX conversations_time ON conversations (last_time);
";

/// Migration 2: no secondary indexes on `conversations`. Each message moved
/// both sides' rows in `conversations_recent` and `conversations_time` (a
/// delete and an insert in each, at places spread over the whole index):
/// a third of the writer's time. The conversation list sorts a user's rows
/// when asked instead, and the retention sweep walks the table in key order.
const MIGRATION_2: &str = "
DROP INDEX IF EXISTS conversations_recent;
DROP INDEX IF EXISTS conversations_time;
";

const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);
/// Page cache per reader connection, in KiB (negative `cache_size`).
const CACHE_KIB: i64 = 32 * 1024;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// Page cache of the writer connection, in KiB: a batch's dirty pages must
/// fit (else SQLite spills them to the WAL early); it is a ceiling, not an
/// allocation.
const WRITER_CACHE_KIB: i64 = 128 * 1024;

/// Opens the writer connection: WAL, fsync at every commit, no foreign keys,
/// no automatic checkpoints (the checkpointer thread does them), and the WAL
/// file cut back to `wal_limit` bytes whenever it starts over.
pub(crate) fn open_writer(path: &Path, wal_limit: u64) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{}: cannot enable WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    conn.pragma_update(None, "foreign_keys", "OFF")
        .map_err(db)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
        .map_err(db)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db)?;
    conn.pragma_update(None, "journal_size_limit", size_limit(wal_limit))
        .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// `journal_size_limit` for a limit in bytes.
fn size_limit(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Opens the checkpointer's connection. `synchronous=FULL`: a checkpoint
/// fsyncs the WAL before copying it and the database after.
pub(crate) fn open_checkpointer(path: &Path, wal_limit: u64) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db)?;
    conn.pragma_update(None, "journal_size_limit", size_limit(wal_limit))
        .map_err(db)?;
    Ok(conn)
}

/// Opens a reader connection (`query_only`).
pub(crate) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.pragma_update(None, "query_only", "ON").map_err(db)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(db)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Brings the schema up to date and returns the store epoch (made by migration 1).
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<String> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        let Some(index) = usize::try_from(version)
            .ok()
            .filter(|v| *v <= MIGRATIONS.len())
        else {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is not known to this build (latest {})",
                MIGRATIONS.len()
            )));
        };
        let Some(sql) = MIGRATIONS.get(index) else {
            break; // Up to date.
        };
        tx.execute_batch(sql).map_err(db)?;
        if index == 0 {
            let epoch = format!("{:032x}", rand::random::<u128>());
            tx.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)",
                [&epoch],
            )
            .map_err(db)?;
        }
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version = version + 1, "sqlite store: applied migration");
    }
    conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })
    .map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(conn: &Connection) -> Vec<String> {
        let mut s = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
            .expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<Vec<String>>>()
            .expect("rows")
    }

    /// A database made by a build that knew only migration 1 is brought up
    /// to date: its data and epoch are kept, the conversation indexes go.
    #[test]
    fn a_version_1_database_migrates() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("duet.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATION_1).expect("migration 1");
            conn.execute_batch(
                "INSERT INTO meta (key, value) VALUES ('epoch', 'e1'); \
                 INSERT INTO accounts (user_id, created_ms, head) VALUES ('alice', 1, 3); \
                 INSERT INTO conversations (user_id, peer, last_msg_id, last_time, last_seq, unread) \
                   VALUES ('alice', 'bob', NULL, 5, 3, 2); \
                 PRAGMA user_version = 1;",
            )
            .expect("version 1 data");
            assert!(indexes(&conn).contains(&"conversations_recent".to_string()));
        }
        let mut conn = open_writer(&path, 1 << 20).expect("open writer");
        assert_eq!(
            migrate(&mut conn).expect("migrate"),
            "e1",
            "the epoch is kept"
        );
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(
            indexes(&conn),
            vec!["messages_time", "timeline_history", "timeline_ts"],
            "only the indexes the write path keeps"
        );
        let unread: i64 = conn
            .query_row(
                "SELECT unread FROM conversations WHERE user_id = 'alice' AND peer = 'bob'",
                [],
                |r| r.get(0),
            )
            .expect("the conversation is kept");
        assert_eq!(unread, 2);
        // Migrating again changes nothing.
        assert_eq!(migrate(&mut conn).expect("migrate again"), "e1");
    }
}
