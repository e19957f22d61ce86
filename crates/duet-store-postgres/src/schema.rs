//! Numbered schema migrations, applied at start under an advisory lock, and
//! the store epoch.

use deadpool_postgres::Object;
use duet_store::{StoreError, StoreResult};

use crate::db;

/// Migrations, applied in order; migration `i` is version `i + 1`.
const MIGRATIONS: &[&str] = &[MIGRATION_1, MIGRATION_2];

/// First key of the advisory lock taken while migrating ("Duet" in ASCII);
/// the second is a hash of the schema name, so stores in different schemas
/// of one database do not wait for each other.
const MIGRATION_LOCK: i32 = 0x4475_6574;

/// Migration 1: the whole schema.
///
/// - Every per-user table leads its primary key with `user_id` (the future
///   distribution column): `accounts (user_id)`, `timeline (user_id, seq)`,
///   `conversations (user_id, peer)`. `messages` is keyed by `msg_id` and
///   deduplicated by `UNIQUE (sender, msg_seq, msg_random)`.
/// - `accounts.head` is the timeline counter (Law 3): numbers are taken with
///   `UPDATE … SET head = head + 1 … RETURNING head` inside the writing
///   transaction; the row lock orders writers of one user, and a rollback
///   rolls the number back.
/// - `messages.sender_seq` is the sender's entry number (NULL for
///   recipient-only messages); `flags` holds the status bits (8 = recalled).
/// - `timeline.kind`: 0 message (`msg_id` set, enforced by
///   `timeline_message_ref`, which also turns a lost deduplication race into
///   an error that rolls the whole send back), 1 recall, 2 read (`payload`
///   JSON). `peer` is the other party (history, per-conversation cut).
/// - Key columns use the "C" collation: byte order, cheap comparisons, and
///   the same lock order on every node whatever the database's locale.
const MIGRATION_1: &str = r#"
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE accounts (
    user_id    text COLLATE "C" PRIMARY KEY,
    nick       text NOT NULL DEFAULT '',
    face_url   text NOT NULL DEFAULT '',
    created_ms bigint NOT NULL,
    head       bigint NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    msg_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender            text COLLATE "C" NOT NULL,
    receiver          text COLLATE "C" NOT NULL,
    msg_seq           bigint NOT NULL,
    msg_random        bigint NOT NULL,
    msg_time          bigint NOT NULL,
    body              text NOT NULL,
    cloud_custom_data text NOT NULL,
    nick              text NOT NULL,
    face_url          text NOT NULL,
    flags             bigint NOT NULL DEFAULT 0,
    sender_seq        bigint,
    CONSTRAINT messages_dedup UNIQUE (sender, msg_seq, msg_random)
);
CREATE INDEX messages_time ON messages (msg_time);
CREATE TABLE timeline (
    user_id text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    ts      bigint NOT NULL,
    kind    smallint NOT NULL,
    peer    text COLLATE "C" NOT NULL,
    msg_id  bigint,
    payload text,
    PRIMARY KEY (user_id, seq),
    CONSTRAINT timeline_message_ref CHECK (kind <> 0 OR msg_id IS NOT NULL)
);
CREATE INDEX timeline_history ON timeline (user_id, peer, seq) INCLUDE (msg_id) WHERE kind = 0;
CREATE INDEX timeline_ts ON timeline (ts);
CREATE TABLE conversations (
    user_id        text COLLATE "C" NOT NULL,
    peer           text COLLATE "C" NOT NULL,
    last_msg_id    bigint,
    last_time      bigint NOT NULL,
    last_seq       bigint NOT NULL,
    unread         integer NOT NULL DEFAULT 0,
    read_time      bigint NOT NULL DEFAULT 0,
    peer_read_time bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, peer)
);
CREATE INDEX conversations_recent ON conversations (user_id, last_time DESC, last_seq DESC);
CREATE INDEX conversations_time ON conversations (last_time);
"#;

/// Shared presence: which devices are connected to which node, and when each
/// node last reported (its devices expire when it stops reporting).
const MIGRATION_2: &str = r#"
CREATE TABLE presence_nodes (
    node_id text COLLATE "C" PRIMARY KEY,
    seen_ms bigint NOT NULL
);
CREATE TABLE presence (
    node_id   text COLLATE "C" NOT NULL,
    conn_id   bigint NOT NULL,
    user_id   text COLLATE "C" NOT NULL,
    device_id text NOT NULL,
    platform  text NOT NULL,
    PRIMARY KEY (node_id, conn_id)
);
CREATE INDEX presence_user ON presence (user_id);
"#;

/// Whether `name` is usable as a schema name without quoting: a lowercase
/// ASCII letter or `_`, then letters, digits or `_`, at most 63 bytes.
pub(crate) fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Creates the schema if needed, applies pending migrations and makes the
/// epoch, all in one transaction under an advisory lock (several nodes may
/// start at once); returns the epoch.
pub(crate) async fn migrate(client: &mut Object, schema: Option<&str>) -> StoreResult<String> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1::integer, hashtext($2::text))",
        &[&MIGRATION_LOCK, &schema.unwrap_or("")],
    )
    .await
    .map_err(db)?;
    if let Some(schema) = schema {
        // `schema` was checked by `valid_schema_name`: no quoting needed.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(db)?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS duet_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db)?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM duet_migrations", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    let Some(applied) = usize::try_from(version)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len())
    else {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is not known to this build (latest {})",
            MIGRATIONS.len()
        )));
    };
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let next = i32::try_from(index + 1)
            .map_err(|_| StoreError::Backend("too many migrations".into()))?;
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO duet_migrations (version) VALUES ($1::integer)",
            &[&next],
        )
        .await
        .map_err(db)?;
        tracing::info!(version = next, ?schema, "postgres store: applied migration");
    }
    let fresh = format!("{:032x}", rand::random::<u128>());
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', $1::text) ON CONFLICT (key) DO NOTHING",
        &[&fresh],
    )
    .await
    .map_err(db)?;
    let epoch: String = tx
        .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::valid_schema_name;

    #[test]
    fn schema_names() {
        for ok in ["duet", "_x", "duet_test_0af3", "a1"] {
            assert!(valid_schema_name(ok), "{ok:?} should be valid");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "1abc",
            "Duet",
            "a-b",
            "a b",
            "a;drop",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_schema_name(bad), "{bad:?} should be invalid");
        }
    }
}
