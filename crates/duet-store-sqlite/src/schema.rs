//! Connection setup and numbered schema migrations (`PRAGMA user_version`).

use std::path::Path;
use std::time::Duration;

use duet_store::{StoreError, StoreResult};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::db;

/// One migration: SQL, then (for data SQL cannot reshape) a step in Rust,
/// in the same transaction.
pub(crate) struct Migration {
    pub(crate) sql: &'static str,
    step: Option<fn(&Connection) -> rusqlite::Result<()>>,
}

const fn sql(sql: &'static str) -> Migration {
    Migration { sql, step: None }
}

/// Migrations, applied in order; migration `i` brings `user_version` to `i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    sql(MIGRATION_1),
    sql(MIGRATION_2),
    sql(MIGRATION_3),
    sql(MIGRATION_4),
    Migration {
        sql: MIGRATION_5,
        step: Some(migrate_5),
    },
    sql(MIGRATION_6),
    sql(MIGRATION_7),
];

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

/// Migration 3: integer account keys. Every per-user row and index was keyed
/// by the UserID text, so each message's dozen key comparisons and its index
/// pages grew with the length of the UserIDs (11 more bytes per UserID cost
/// the writer a third more time per message). Now:
///
/// - `accounts.uid` (the old `rowid`, now an `INTEGER PRIMARY KEY`, so it
///   never changes) names the account everywhere else; `user_id` stays unique;
/// - `timeline` and `conversations` are keyed by `(uid, …)`; their peer is
///   `peer_uid` (0 for a read report about a peer without an account);
/// - `messages` keeps the sender's and recipient's UserIDs for the read path,
///   and its idempotency key becomes `(sender_uid, msg_seq, msg_random)`;
/// - each message knows its timeline entries (`sender_uid`, `sender_seq`,
///   `receiver_uid`, `recipient_seq`), so the retention sweep removes them
///   with the message, and the time index of `timeline` (`timeline_events`)
///   covers only the other entries (recalls, read reports): a message entry
///   no longer pays for a third index.
///
/// The tables are rebuilt in one transaction, rows and numbers kept.
const MIGRATION_3: &str = "
CREATE TABLE accounts_v3 (
    uid        INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL UNIQUE,
    nick       TEXT NOT NULL DEFAULT '',
    face_url   TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    head       INTEGER NOT NULL DEFAULT 0
);
INSERT INTO accounts_v3 (uid, user_id, nick, face_url, created_ms, head)
    SELECT rowid, user_id, nick, face_url, created_ms, head FROM accounts;
CREATE TABLE timeline_v3 (
    uid      INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    peer_uid INTEGER NOT NULL,
    msg_id   INTEGER,
    payload  TEXT,
    PRIMARY KEY (uid, seq)
) WITHOUT ROWID;
INSERT INTO timeline_v3 (uid, seq, ts, kind, peer_uid, msg_id, payload)
    SELECT a.uid, t.seq, t.ts, t.kind, COALESCE(p.uid, 0), t.msg_id, t.payload
    FROM timeline t JOIN accounts_v3 a ON a.user_id = t.user_id
    LEFT JOIN accounts_v3 p ON p.user_id = t.peer;
CREATE TABLE messages_v3 (
    msg_id            INTEGER PRIMARY KEY,
    sender_uid        INTEGER NOT NULL,
    receiver_uid      INTEGER NOT NULL,
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
    recipient_seq     INTEGER,
    UNIQUE (sender_uid, msg_seq, msg_random)
);
CREATE INDEX migration_3_entries ON timeline_v3 (uid, msg_id) WHERE kind = 0;
INSERT INTO messages_v3 (msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq,
                         msg_random, msg_time, body, cloud_custom_data, nick, face_url, flags,
                         sender_seq, recipient_seq)
    SELECT m.msg_id, a.uid, r.uid, m.sender, m.receiver, m.msg_seq, m.msg_random, m.msg_time,
           m.body, m.cloud_custom_data, m.nick, m.face_url, m.flags, m.sender_seq,
           (SELECT t.seq FROM timeline_v3 t
            WHERE t.uid = r.uid AND t.msg_id = m.msg_id AND t.kind = 0)
    FROM messages m JOIN accounts_v3 a ON a.user_id = m.sender
    JOIN accounts_v3 r ON r.user_id = m.receiver;
DROP INDEX migration_3_entries;
CREATE TABLE conversations_v3 (
    uid            INTEGER NOT NULL,
    peer_uid       INTEGER NOT NULL,
    last_msg_id    INTEGER,
    last_time      INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL,
    unread         INTEGER NOT NULL DEFAULT 0,
    read_time      INTEGER NOT NULL DEFAULT 0,
    peer_read_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, peer_uid)
) WITHOUT ROWID;
INSERT INTO conversations_v3 (uid, peer_uid, last_msg_id, last_time, last_seq, unread,
                              read_time, peer_read_time)
    SELECT a.uid, p.uid, c.last_msg_id, c.last_time, c.last_seq, c.unread,
           c.read_time, c.peer_read_time
    FROM conversations c JOIN accounts_v3 a ON a.user_id = c.user_id
    JOIN accounts_v3 p ON p.user_id = c.peer;
DROP TABLE conversations;
DROP TABLE timeline;
DROP TABLE messages;
DROP TABLE accounts;
ALTER TABLE accounts_v3 RENAME TO accounts;
ALTER TABLE messages_v3 RENAME TO messages;
ALTER TABLE timeline_v3 RENAME TO timeline;
ALTER TABLE conversations_v3 RENAME TO conversations;
CREATE INDEX messages_time ON messages (msg_time);
CREATE INDEX timeline_history ON timeline (uid, peer_uid, seq, msg_id) WHERE kind = 0;
CREATE INDEX timeline_events ON timeline (ts) WHERE kind <> 0;
";

/// Migration 4: conversation views derived from the timeline. Each message
/// updated a `conversations` row on both sides (an `UPDATE` each, or an
/// `INSERT` for a first message): a quarter of the writer's instructions per
/// message. A view's last message, last time and unread count are all in
/// the history index already, so the writer no longer keeps them:
///
/// - message entries get `flags`: [`ENTRY_UNREAD`](crate::rows::ENTRY_UNREAD)
///   on a received message that counts as unread,
///   [`ENTRY_NO_LAST`](crate::rows::ENTRY_NO_LAST) on a message sent with
///   no-last-msg; `timeline_history` covers them;
/// - a user's conversations are the peers in `timeline_history`; the last
///   message is the newest entry without `ENTRY_NO_LAST` (or, if every one
///   has it, the first entry, with no last message, as before); unread is the
///   `ENTRY_UNREAD` entries after the view's `read_seq`, capped;
/// - `conversation_state` keeps what is not derived: `read_seq` (entries up
///   to it are read), `read_time`, `peer_read_time`; written by read
///   reports only, removed with the view's last entry by the sweep.
///
/// Data is carried over: a received message entry is marked unread-counting
/// (no-unread was not recorded: such an entry counts again only if it sits
/// after the old unread count's cut), entries after a view's `last_seq` are
/// marked no-last-msg (only those could come after it), and `read_seq` is put
/// where the old unread count puts it.
const MIGRATION_4: &str = "
ALTER TABLE timeline ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
DROP INDEX timeline_history;
UPDATE timeline SET flags = 1
    WHERE kind = 0 AND EXISTS (
        SELECT 1 FROM messages m
        WHERE m.msg_id = timeline.msg_id AND m.receiver_uid = timeline.uid
          AND m.recipient_seq = timeline.seq AND m.sender_uid <> m.receiver_uid);
UPDATE timeline SET flags = flags | 2
    WHERE kind = 0 AND seq > (
        SELECT c.last_seq FROM conversations c
        WHERE c.uid = timeline.uid AND c.peer_uid = timeline.peer_uid);
CREATE INDEX timeline_history ON timeline (uid, peer_uid, seq, msg_id, flags) WHERE kind = 0;
CREATE TABLE conversation_state (
    uid            INTEGER NOT NULL,
    peer_uid       INTEGER NOT NULL,
    read_seq       INTEGER NOT NULL DEFAULT 0,
    read_time      INTEGER NOT NULL DEFAULT 0,
    peer_read_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, peer_uid)
) WITHOUT ROWID;
INSERT INTO conversation_state (uid, peer_uid, read_seq, read_time, peer_read_time)
    SELECT c.uid, c.peer_uid, COALESCE(r.seq, 0), c.read_time, c.peer_read_time
    FROM conversations c
    LEFT JOIN (SELECT uid, peer_uid, seq,
                      ROW_NUMBER() OVER (PARTITION BY uid, peer_uid ORDER BY seq DESC) AS rn
               FROM timeline WHERE kind = 0 AND (flags & 1) <> 0) r
      ON r.uid = c.uid AND r.peer_uid = c.peer_uid AND r.rn = c.unread + 1
    WHERE EXISTS (SELECT 1 FROM timeline t
                  WHERE t.uid = c.uid AND t.peer_uid = c.peer_uid AND t.kind = 0);
DROP TABLE conversations;
";

/// Migration 5: message entries in chunks, merged from an in-memory tail.
///
/// A send wrote two timeline rows and their two `timeline_history` entries:
/// four B-tree inserts at places spread over the whole file, each writing a
/// page per commit, half of the server's time per message. Now a send writes
/// its message row only; its entries wait in the writer's tail (in memory)
/// and are merged later, many at a time, into `chunks`: one row per run of up
/// to 96 consecutive message entries of one view `(uid, peer_uid)`, packed
/// (see `chunk`). `chunks_by_seq` finds an account's chunks for `sync`.
///
/// - `timeline` keeps the other entries (recalls, read reports);
///   `timeline_history` goes;
/// - `messages.entry_ts` and `entry_flags` (the recipient entry's flags)
///   keep what the entries of a message not merged yet need, so that
///   recovery at open can merge them again (`meta.merged_below`: every
///   message below that id is merged).
///
/// The existing message entries are moved into chunks by [`migrate_5`].
const MIGRATION_5: &str = "
ALTER TABLE messages ADD COLUMN entry_ts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN entry_flags INTEGER NOT NULL DEFAULT 0;
CREATE TABLE chunks (
    uid       INTEGER NOT NULL,
    peer_uid  INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    entries   BLOB NOT NULL,
    PRIMARY KEY (uid, peer_uid, first_seq)
) WITHOUT ROWID;
CREATE INDEX chunks_by_seq ON chunks (uid, last_seq);
";

/// Moves the message rows of `timeline` into chunks, view by view, and
/// records that every message is merged.
fn migrate_5(conn: &Connection) -> rusqlite::Result<()> {
    let mut views = crate::merge::Views::default();
    {
        let mut stmt = conn.prepare(
            "SELECT uid, peer_uid, seq, ts, msg_id, flags FROM timeline \
             WHERE kind = ?1 ORDER BY uid, peer_uid, seq",
        )?;
        let mut rows = stmt.query([crate::rows::KIND_MESSAGE])?;
        while let Some(r) = rows.next()? {
            views.push(
                r.get(0)?,
                r.get(1)?,
                crate::chunk::ChunkEntry {
                    seq: crate::rows::u64_at(r, 2)?,
                    ts: crate::rows::u64_at(r, 3)?,
                    msg_id: r.get(4)?,
                    flags: u8::try_from(r.get::<_, i64>(5)?).unwrap_or_default(),
                },
            );
        }
    }
    views.append(conn, false)?;
    conn.execute_batch(
        "DELETE FROM timeline WHERE kind = 0;
         DROP INDEX timeline_history;",
    )?;
    let next = crate::merge::max_msg_id(conn)? + 1;
    crate::merge::set_merged_below(conn, next)
}

/// Migration 6: idempotency keys leave `messages` (see `keys`).
///
/// The unique index on `(sender_uid, msg_seq, msg_random)` cost each commit
/// one index leaf per distinct sender in its batch. The keys now live in
/// `message_keys`, written many at a time in key order (recent ones wait in
/// the writer's memory); `meta.keys_below`: every message below that id has
/// its key there. `messages` is rebuilt without the constraint (SQLite
/// cannot drop one), rows and ids kept.
const MIGRATION_6: &str = "
CREATE TABLE message_keys (
    sender_uid INTEGER NOT NULL,
    msg_seq    INTEGER NOT NULL,
    msg_random INTEGER NOT NULL,
    msg_id     INTEGER NOT NULL,
    PRIMARY KEY (sender_uid, msg_seq, msg_random)
) WITHOUT ROWID;
INSERT INTO message_keys (sender_uid, msg_seq, msg_random, msg_id)
    SELECT sender_uid, msg_seq, msg_random, msg_id FROM messages
    ORDER BY sender_uid, msg_seq, msg_random;
CREATE TABLE messages_v6 (
    msg_id            INTEGER PRIMARY KEY,
    sender_uid        INTEGER NOT NULL,
    receiver_uid      INTEGER NOT NULL,
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
    recipient_seq     INTEGER,
    entry_ts          INTEGER NOT NULL DEFAULT 0,
    entry_flags       INTEGER NOT NULL DEFAULT 0
);
INSERT INTO messages_v6 (msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq,
                         msg_random, msg_time, body, cloud_custom_data, nick, face_url, flags,
                         sender_seq, recipient_seq, entry_ts, entry_flags)
    SELECT msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq, msg_random, msg_time,
           body, cloud_custom_data, nick, face_url, flags, sender_seq, recipient_seq,
           entry_ts, entry_flags
    FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v6 RENAME TO messages;
CREATE INDEX messages_time ON messages (msg_time);
INSERT INTO meta (key, value)
    SELECT 'keys_below', COALESCE(max(msg_id), 0) + 1 FROM messages
    WHERE true
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
";

/// Migration 7: timeline heads in a narrow table of their own.
///
/// Every batch writes back the head of each account it moved (two per
/// message). In `accounts` a head shares its row with the UserID and the
/// profile, so a batch dirtied pages spread over that wider table; `heads`
/// holds only `(uid, head)`, several hundred to a page. Measured at 25,000
/// sends/s over 1,000 accounts: 1.1 WAL frames per commit for `heads`
/// against 1.2–1.4 for `accounts`, of ~5.6 in all (a small gain; the p99 of
/// four interleaved pairs was 4.5 against 5.5 ms). An account without a row has
/// head 0 (readers join with `LEFT JOIN … COALESCE`); the writer inserts the
/// row with the account's first entry.
const MIGRATION_7: &str = "
CREATE TABLE heads (
    uid  INTEGER PRIMARY KEY,
    head INTEGER NOT NULL
);
INSERT INTO heads (uid, head) SELECT uid, head FROM accounts WHERE head <> 0 ORDER BY uid;
ALTER TABLE accounts DROP COLUMN head;
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
    stable_plans(&conn)?;
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
    stable_plans(&conn)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Query plans that never depend on the values bound to a statement.
///
/// Without this, SQLite may look at a bound value while it plans (a term
/// `x = ?` that a candidate index would only filter on gets a different
/// guess when the value is 0 or 1) and marks the statement to be planned
/// again when that parameter is re-bound; rusqlite clears the bindings of a
/// statement it takes back into its cache, which then counts as re-binding:
/// such a statement was compiled anew at every use. The merge's "last chunk
/// of a view" query was one (~56,000 instructions a call, 8.6 % of the
/// server's instructions in the bench guard's run).
fn stable_plans(conn: &Connection) -> StoreResult<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(db)?;
    Ok(())
}

/// Opens a connection for lookups run on an async task: like a reader, but
/// it never waits for a lock (a busy database sends the lookup to a blocking
/// thread instead), with a smaller page cache (it reads a few index pages).
pub(crate) fn open_point_reader(path: &Path) -> StoreResult<Connection> {
    let conn = open_reader(path)?;
    conn.busy_timeout(Duration::ZERO).map_err(db)?;
    conn.pragma_update(None, "cache_size", -POINT_CACHE_KIB)
        .map_err(db)?;
    Ok(conn)
}

/// Page cache of a point-read connection, in KiB.
const POINT_CACHE_KIB: i64 = 8 * 1024;

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
        let Some(migration) = MIGRATIONS.get(index) else {
            break; // Up to date.
        };
        tx.execute_batch(migration.sql).map_err(db)?;
        if let Some(step) = migration.step {
            step(&tx).map_err(db)?;
        }
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
    /// to date: its epoch is kept, the conversation indexes go, and so does a
    /// view without messages (views are derived from the timeline now).
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
                 INSERT INTO accounts (user_id, created_ms, head) VALUES ('bob', 1, 0); \
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
            vec!["chunks_by_seq", "messages_time", "timeline_events"],
            "only the indexes the write path keeps"
        );
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("tables");
        assert_eq!(
            tables,
            vec![
                "accounts",
                "chunks",
                "conversation_state",
                "heads",
                "message_keys",
                "messages",
                "meta",
                "timeline"
            ],
            "conversation views are derived from the timeline (migration 4), message \
             entries are chunks (migration 5), idempotency keys have their own table \
             (migration 6), and so do timeline heads (migration 7)"
        );
        let heads: Vec<(String, i64)> = conn
            .prepare(
                "SELECT a.user_id, h.head FROM heads h JOIN accounts a ON a.uid = h.uid \
                 ORDER BY a.user_id",
            )
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("heads");
        assert_eq!(
            heads,
            vec![("alice".to_owned(), 3)],
            "heads are carried over; an account at 0 needs no row"
        );
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM conversation_state", [], |r| r.get(0))
            .expect("count");
        assert_eq!(kept, 0, "a view without messages is not carried over");
        // Migrating again changes nothing.
        assert_eq!(migrate(&mut conn).expect("migrate again"), "e1");
    }
}

#[cfg(test)]
mod upgrade_tests {
    //! A database written by a build that knew only migration 1, opened by
    //! this one: everything the store API shows is the same, and writing
    //! continues where it left off.

    use duet_proto::{EntryKind, MsgElem};
    use duet_store::{NewMessage, SendOutcome, Store};

    use super::*;
    use crate::{SqliteOptions, SqliteStore};

    const T: u64 = 1_700_000_000_000;

    /// What the version-1 code wrote for: alice → bob "one" (msg 1), bob →
    /// alice "two" (msg 2), bob read alice's messages, and a read report by
    /// bob about "ghost", who has no account.
    const V1_DATA: &str = r#"
        INSERT INTO meta (key, value) VALUES ('epoch', 'e1');
        INSERT INTO accounts (user_id, nick, face_url, created_ms, head) VALUES
            ('alice', 'Al', '', 1, 3), ('bob', '', '', 2, 4);
        INSERT INTO messages (msg_id, sender, receiver, msg_seq, msg_random, msg_time, body,
                              cloud_custom_data, nick, face_url, flags, sender_seq) VALUES
            (1, 'alice', 'bob', 11, 111, 1700000000,
             '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"one"}}]', '', 'Al', '', 0, 1),
            (2, 'bob', 'alice', 22, 222, 1700000001,
             '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"two"}}]', '', '', '', 0, 2);
        INSERT INTO timeline (user_id, seq, ts, kind, peer, msg_id, payload) VALUES
            ('alice', 1, 1700000000000, 0, 'bob', 1, NULL),
            ('bob', 1, 1700000000000, 0, 'alice', 1, NULL),
            ('bob', 2, 1700000001000, 0, 'alice', 2, NULL),
            ('alice', 2, 1700000001000, 0, 'bob', 2, NULL),
            ('bob', 3, 1700000002000, 2, 'alice', NULL,
             '{"reader":"bob","peer":"alice","read_time":1700000002}'),
            ('alice', 3, 1700000002000, 2, 'bob', NULL,
             '{"reader":"bob","peer":"alice","read_time":1700000002}'),
            ('bob', 4, 1700000003000, 2, 'ghost', NULL,
             '{"reader":"bob","peer":"ghost","read_time":1700000003}');
        INSERT INTO conversations (user_id, peer, last_msg_id, last_time, last_seq, unread,
                                   read_time, peer_read_time) VALUES
            ('alice', 'bob', 2, 1700000001, 2, 1, 0, 1700000002),
            ('bob', 'alice', 2, 1700000001, 2, 0, 1700000002, 0);
        PRAGMA user_version = 1;
    "#;

    /// A database written by a build that knew the first `version`
    /// migrations, holding `data`.
    pub(super) fn seeded(version: usize, data: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("duet.db");
        let conn = Connection::open(&path).expect("open");
        for m in &MIGRATIONS[..version] {
            conn.execute_batch(m.sql).expect("old migrations");
        }
        conn.execute_batch(data).expect("old data");
        (dir, path)
    }

    pub(super) fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn text_of(m: &duet_proto::Message) -> String {
        m.body
            .first()
            .and_then(MsgElem::as_text)
            .unwrap_or_default()
            .into_owned()
    }

    #[test]
    fn a_version_1_store_reads_and_writes_on() {
        let (_dir, path) = seeded(1, V1_DATA);
        current_thread().block_on(async {
            let store = SqliteStore::open(SqliteOptions::new(&path)).expect("open v1 store");
            assert_eq!(store.epoch(), "e1");
            assert_eq!(store.head("alice").await, Ok(3));
            assert_eq!(store.head("bob").await, Ok(4));

            let bob = store.sync("bob", 0, 4, 100, 100).await.expect("sync");
            let seqs: Vec<u64> = bob.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, vec![1, 2, 3, 4], "every entry kept, in order");
            match &bob[0].kind {
                EntryKind::Message { message } => {
                    assert_eq!(
                        (message.from.as_str(), text_of(message).as_str()),
                        ("alice", "one")
                    );
                    assert_eq!(message.msg_key, "11_111_1700000000");
                }
                other => panic!("entry 1 must be alice's message, got {other:?}"),
            }
            assert!(
                matches!(&bob[3].kind, EntryKind::Read(r) if r.peer == "ghost"),
                "a read report about a peer without an account survives"
            );

            let h = store
                .history("alice", "bob", None, 10)
                .await
                .expect("history");
            let texts: Vec<String> = h.iter().map(|i| text_of(&i.message)).collect();
            assert_eq!(texts, vec!["two", "one"]);
            assert_eq!(h[0].seq, 2);

            let convs = store.conversations("alice", 0, 10).await.expect("convs");
            assert_eq!(convs.len(), 1);
            assert_eq!(convs[0].peer, "bob");
            assert_eq!(convs[0].unread, 1);
            assert_eq!(convs[0].peer_read_time, 1_700_000_002);
            assert_eq!(
                convs[0].last_message.as_ref().map(text_of).as_deref(),
                Some("two"),
                "the last message is kept"
            );

            // A retry of a version-1 message is recognised.
            let retry = NewMessage::text("alice", "bob", 11, 111, T + 100_000, "one");
            match store.send(retry.clone()).await.expect("retry") {
                SendOutcome::Duplicate {
                    message,
                    sender_entry_seq,
                } => {
                    assert_eq!(message.msg_key, "11_111_1700000000");
                    assert_eq!(sender_entry_seq, Some(1));
                }
                other => panic!("a retry must be a duplicate, got {other:?}"),
            }
            // A new message continues both timelines.
            let new = NewMessage {
                msg_seq: 12,
                ..retry
            };
            match store.send(new).await.expect("send") {
                SendOutcome::Stored {
                    recipient_seq,
                    sender_seq,
                    ..
                } => {
                    assert_eq!(recipient_seq, 5);
                    assert_eq!(sender_seq, Some(4));
                }
                other => panic!("a new message must be stored, got {other:?}"),
            }
            let convs = store.conversations("bob", 0, 10).await.expect("convs");
            assert_eq!(convs[0].unread, 1, "bob's unread count goes on from 0");

            // Everything expires: the migrated messages take their entries along.
            let mut removed = (0, 0);
            loop {
                let r = store.sweep(T + 10 * 86_400_000, 100).await.expect("sweep");
                removed = (removed.0 + r.entries, removed.1 + r.messages);
                if !r.more {
                    break;
                }
            }
            assert_eq!(removed, (9, 3), "7 old entries + 2 new ones, 3 messages");
            for user in ["alice", "bob"] {
                let head = store.head(user).await.expect("head");
                assert!(
                    store
                        .sync(user, 0, head, 100, 100)
                        .await
                        .expect("sync")
                        .is_empty()
                );
            }
            store.close();
        });
    }
}

#[cfg(test)]
mod derived_views_tests {
    //! Migration 4 on a version-3 database: the conversation views it
    //! derives show what the old `conversations` rows said.

    use duet_proto::MsgElem;
    use duet_store::{NewMessage, Store};

    use super::upgrade_tests::{current_thread, seeded};
    use crate::{SqliteOptions, SqliteStore};

    /// Bob sent alice four messages (alice read the first; the fourth was
    /// sent with no-last-msg), and alice sent bob one with no-last-msg.
    const V3_DATA: &str = r#"
        INSERT INTO meta (key, value) VALUES ('epoch', 'e3');
        INSERT INTO accounts (uid, user_id, nick, face_url, created_ms, head) VALUES
            (1, 'alice', '', '', 1, 5), (2, 'bob', 'Bo', '', 1, 5);
        INSERT INTO messages (msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq,
                              msg_random, msg_time, body, cloud_custom_data, nick, face_url,
                              flags, sender_seq, recipient_seq) VALUES
            (1, 2, 1, 'bob', 'alice', 1, 1, 1700000001, '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"m1"}}]', '', 'Bo', '', 0, 1, 1),
            (2, 2, 1, 'bob', 'alice', 2, 2, 1700000002, '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"m2"}}]', '', 'Bo', '', 0, 2, 2),
            (3, 2, 1, 'bob', 'alice', 3, 3, 1700000003, '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"m3"}}]', '', 'Bo', '', 0, 3, 3),
            (4, 2, 1, 'bob', 'alice', 4, 4, 1700000004, '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"m4"}}]', '', 'Bo', '', 0, 4, 4),
            (5, 1, 2, 'alice', 'bob', 5, 5, 1700000005, '[{"MsgType":"TIMTextElem","MsgContent":{"Text":"a5"}}]', '', '', '', 0, 5, 5);
        INSERT INTO timeline (uid, seq, ts, kind, peer_uid, msg_id, payload) VALUES
            (1, 1, 1700000001000, 0, 2, 1, NULL), (2, 1, 1700000001000, 0, 1, 1, NULL),
            (1, 2, 1700000002000, 0, 2, 2, NULL), (2, 2, 1700000002000, 0, 1, 2, NULL),
            (1, 3, 1700000003000, 0, 2, 3, NULL), (2, 3, 1700000003000, 0, 1, 3, NULL),
            (1, 4, 1700000004000, 0, 2, 4, NULL), (2, 4, 1700000004000, 0, 1, 4, NULL),
            (1, 5, 1700000005000, 0, 2, 5, NULL), (2, 5, 1700000005000, 0, 1, 5, NULL);
        INSERT INTO conversations (uid, peer_uid, last_msg_id, last_time, last_seq, unread,
                                   read_time, peer_read_time) VALUES
            (1, 2, 3, 1700000003, 3, 3, 1700000001, 0),
            (2, 1, 3, 1700000003, 3, 1, 0, 1700000001);
        PRAGMA user_version = 3;
    "#;

    #[test]
    fn a_version_3_database_keeps_its_views() {
        let (_dir, path) = seeded(3, V3_DATA);
        current_thread().block_on(async {
            let store = SqliteStore::open(SqliteOptions::new(&path)).expect("open v3 store");
            assert_eq!(store.epoch(), "e3");
            let text = |c: &duet_proto::Conversation| {
                c.last_message
                    .as_ref()
                    .and_then(|m| m.body.first())
                    .and_then(MsgElem::as_text)
                    .map(std::borrow::Cow::into_owned)
            };
            let alice = store.conversations("alice", 0, 10).await.expect("alice");
            assert_eq!(alice.len(), 1);
            let a = &alice[0];
            assert_eq!(a.peer, "bob");
            assert_eq!(
                (text(a).as_deref(), a.last_time),
                (Some("m3"), 1_700_000_003),
                "the last message stays m3: m4 and a5 were sent with no-last-msg"
            );
            assert_eq!(a.unread, 3, "the old unread count is kept");
            assert_eq!((a.read_time, a.peer_read_time), (1_700_000_001, 0));
            let b = &store.conversations("bob", 0, 10).await.expect("bob")[0];
            assert_eq!((text(b).as_deref(), b.unread), (Some("m3"), 1));
            assert_eq!(b.peer_read_time, 1_700_000_001);

            // Alice reads: zero; bob's next message counts from there and
            // becomes the last message.
            store
                .mark_read("alice", "bob", 1_700_000_006, 1_700_000_006_000)
                .await
                .expect("mark read");
            store
                .send(NewMessage::text(
                    "bob",
                    "alice",
                    6,
                    6,
                    1_700_000_007_000,
                    "m6",
                ))
                .await
                .expect("send");
            let a = &store.conversations("alice", 0, 10).await.expect("alice")[0];
            assert_eq!((text(a).as_deref(), a.unread), (Some("m6"), 1));
            assert_eq!(a.read_time, 1_700_000_006);
            store.close();
        });
    }
}
