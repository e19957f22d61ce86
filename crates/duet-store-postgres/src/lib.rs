//! The PostgreSQL backend of the Duet [`Store`] (the scale-out store: several
//! server nodes share one database).
//!
//! - **Durable before ack (Law 1).** Every mutating call is one transaction,
//!   and returns only after PostgreSQL acknowledged its `COMMIT` (keep the
//!   server's `synchronous_commit` at its default `on`; a warning is logged at
//!   start if it is `off`). Concurrent commits share WAL flushes in the server,
//!   so the fsync cost is spread over the connections of the pool: that is the
//!   group commit of this backend. (A batching writer that commits many sends
//!   in one transaction, as the SQLite backend does, would run them one after
//!   another on one server process and, to stay deadlock-free across nodes,
//!   would have to lock every account of the batch up front, serializing
//!   overlapping batches.) The server's `commit_delay` (e.g. 100–200 µs) makes
//!   it gather more commits per flush under load; it can be set in the server
//!   configuration, or per connection by a superuser with
//!   `?options=-c%20commit_delay%3D200` in the URL.
//! - **One round trip per write.** Each write is one SQL statement (two for a
//!   read report) built from data-modifying CTEs, sent with `BEGIN` and
//!   `COMMIT` as one pipeline; statements are prepared once per connection.
//! - **Atomic writes (Law 7).** A write that fails (an unknown account, a
//!   recall of a recalled message) writes nothing; a lost deduplication race is
//!   rolled back by a check constraint and answered as a duplicate.
//! - **Gap-free timelines (Law 3).** Entry numbers come from `accounts.head`,
//!   incremented inside the writing transaction. The account row lock orders
//!   the writers of one user, and every write locks the accounts it needs in
//!   `user_id` order before touching anything else, so writers never deadlock.
//!   Writes that still meet a deadlock or serialization failure (e.g. under a
//!   stricter server default) are retried.
//! - **Several nodes.** Migrations run at start under `pg_advisory_xact_lock`;
//!   the epoch is created once (`INSERT … ON CONFLICT DO NOTHING`) and read
//!   back in the same transaction, so all nodes agree. Sweeps take rows with
//!   `FOR UPDATE SKIP LOCKED`, so nodes may sweep at the same time.
//!
//! # Sharding by user (Citus-style)
//!
//! Every per-user table leads its primary key with the user: `accounts
//! (user_id)`, `timeline (user_id, seq)` and `conversations (user_id, peer)`
//! would be distributed by `user_id` and co-located, so a user's head, entries
//! and conversation views live on one shard: allocation, `sync` (timeline
//! side), `history` and `conversations` become single-shard queries.
//! `messages` would be distributed by `sender`, which keeps the idempotency key
//! `UNIQUE (sender, msg_seq, msg_random)` shard-local (Citus requires unique
//! constraints to contain the distribution column); its primary key would have
//! to become `(sender, msg_id)`, and `msg_id` would come from a cluster-wide
//! sequence. What that implies: a recipient's timeline row points at a message
//! that lives on the *sender's* shard, so reads that join entries to messages
//! (`sync`, `history`, a conversation's last message) are no longer co-located
//! joins. They would be done in two steps: read the entries, then fetch the
//! messages by `(sender, msg_id)`, where the sender is known without a lookup
//! (the `peer` of a received entry, the user of a sent one). And a send writes
//! to two shards (the message and the sender's entry on one, the recipient's
//! entry, head and conversation on the other), i.e. a distributed (two-phase)
//! transaction; that keeps Law 1 and Law 3 but costs more per send.
//! Alternatives worth measuring then: store the message row with the
//! recipient (distribute by `receiver`, deduplicate on the sender's shard
//! with a small key table), or copy the message into each participant's
//! shard.
//!
//! ```no_run
//! # async fn demo() -> Result<(), duet_store::StoreError> {
//! use duet_store::Store;
//! use duet_store_postgres::{PgOptions, PostgresStore};
//!
//! let mut opts = PgOptions::new("postgres://duet@db.internal:5432/duet");
//! opts.schema = Some("duet".into());
//! let store = PostgresStore::connect(opts).await?;
//! store.ensure_account("alice", 1_700_000_000_000).await?;
//! store.close().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod rows;
mod schema;
mod sql;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use duet_proto::model::FLAG_RECALLED;
use duet_proto::{
    Conversation, Entry, EntryKind, HistoryItem, Message, MsgKey, ReadReport, Recall,
};
use duet_store::{
    Account, NewMessage, PresenceChange, PresenceDevice, PresenceStore, ReadOutcome, RecallOutcome,
    RecallRequest, SendOutcome, SenderCopy, Store, StoreError, StoreResult, SweepReport,
};
use futures_util::future::{join3, try_join};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::rows::{
    account_at, bound_i64, entry_at, get, message_at, opt_u64_at, sql_i64, u32_at_int, u64_at,
};

/// Told about every committed write (for metrics). This backend commits each
/// write in its own transaction, so `jobs` is always 1 and `latency` runs from
/// sending the transaction to its acknowledged `COMMIT`.
pub use duet_store::CommitObserver;

/// Unread counts stop at this many messages per conversation.
const UNREAD_CAP: i32 = 250;
/// Attempts of a write that meets a deadlock or serialization failure.
const MAX_ATTEMPTS: u32 = 5;
/// Connecting to the server gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Name of the lost-deduplication-race check constraint (see migration 1).
const DEDUP_RACE_CONSTRAINT: &str = "timeline_message_ref";

/// An error with its chain of causes (tokio-postgres keeps the server's
/// message, or the I/O error, in `source()`, not in `Display`).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Maps a PostgreSQL error to [`StoreError::Backend`].
fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!("postgres: {}", describe(&e)))
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Backend(format!("postgres pool: {}", describe(&other))),
    }
}

/// How to connect a [`PostgresStore`].
#[derive(Clone)]
pub struct PgOptions {
    /// Connection string: a URL (`postgres://user:password@host:port/db`) or
    /// `key=value` pairs, as understood by `tokio_postgres::Config`. TLS is not
    /// supported (`NoTls`): use a private network or a local socket.
    pub url: String,
    /// Most connections to keep open (default 16); at most this many calls run at once.
    pub pool_size: usize,
    /// PostgreSQL schema to use (its tables are found through `search_path`),
    /// created if missing; `None` uses the server's default `search_path`.
    /// Lowercase ASCII letters, digits and `_`, starting with a letter or `_`.
    pub schema: Option<String>,
    /// Told about each committed write.
    pub observer: Option<Arc<dyn CommitObserver>>,
}

impl PgOptions {
    /// Default options for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 16,
            schema: None,
            observer: None,
        }
    }
}

/// The connection string with any password hidden.
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
        }
        return url.to_owned();
    }
    if url.contains("password") {
        "<connection string with password>".to_owned()
    } else {
        url.to_owned()
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("observer", &self.observer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Why one attempt of a write failed.
enum Failure {
    /// The server said no.
    Pg(tokio_postgres::Error),
    /// A definite answer (unknown account, not found, …).
    Store(StoreError),
    /// A transient condition: try again.
    Retry(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Pg(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// After attempt number `attempt` failed with `f`: how long to wait before the
/// next attempt, or the error to return.
fn retry_after(f: Failure, attempt: u32, what: &str) -> Result<Duration, StoreError> {
    let transient = match f {
        Failure::Store(e) => return Err(e),
        Failure::Pg(e) => {
            let code = e.code();
            if code != Some(&SqlState::T_R_DEADLOCK_DETECTED)
                && code != Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            {
                return Err(db(e));
            }
            describe(&e)
        }
        Failure::Retry(why) => why,
    };
    if attempt >= MAX_ATTEMPTS {
        return Err(StoreError::Backend(format!(
            "{what}: gave up after {attempt} attempts: {transient}"
        )));
    }
    tracing::debug!(what, attempt, error = %transient, "postgres store: retrying");
    Ok(Duration::from_millis(u64::from(attempt) * 5))
}

/// Runs an attempt until it succeeds, fails for good, or runs out of attempts.
macro_rules! with_retries {
    ($what:literal, $attempt:expr) => {{
        let mut attempt: u32 = 1;
        loop {
            match $attempt.await {
                Ok(v) => break Ok(v),
                Err(f) => match retry_after(f, attempt, $what) {
                    Ok(delay) => {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => break Err(e),
                },
            }
        }
    }};
}

/// Runs `body` in a transaction, in one round trip: `BEGIN`, the body's
/// statements and `COMMIT` are sent back to back (tokio-postgres pipelines
/// requests that are polled together, in poll order) and executed in order by
/// the server. Returns the body's result once the `COMMIT` is acknowledged.
///
/// `body` must send all its statements on its first poll: a single query
/// future, or futures joined with `try_join`. If a statement fails, the server
/// turns the `COMMIT` into a rollback, and the statement's error is returned.
/// Because everything is sent on the first poll, a caller that gives up
/// (drops the future) never leaves the connection inside a transaction.
async fn pipelined_tx<T, E>(
    client: &Client,
    body: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<tokio_postgres::Error>,
{
    let (begin, out, commit) = join3(
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        body,
        client.batch_execute("COMMIT"),
    )
    .await;
    let out = out?;
    begin?;
    commit?;
    Ok(out)
}

/// Whether `e` is the check violation of a send that lost a deduplication race.
fn lost_dedup_race(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::CHECK_VIOLATION && d.constraint() == Some(DEDUP_RACE_CONSTRAINT)
    })
}

/// The PostgreSQL store. Cheap to share (`Arc`); several stores (nodes) may use
/// the same database and schema at once.
pub struct PostgresStore {
    pool: Pool,
    epoch: String,
    schema: Option<String>,
    observer: Option<Arc<dyn CommitObserver>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("epoch", &self.epoch)
            .field("connections", &status.size)
            .field("max_connections", &status.max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if asked and missing, applies pending
    /// migrations (under an advisory lock: nodes may start together) and loads
    /// or creates the epoch. Fails if the server cannot be reached.
    pub async fn connect(opts: PgOptions) -> Result<Self, StoreError> {
        let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(|e| {
            StoreError::Backend(format!(
                "invalid PostgreSQL connection string: {}",
                describe(&e)
            ))
        })?;
        if let Some(schema) = &opts.schema {
            if !schema::valid_schema_name(schema) {
                return Err(StoreError::Backend(format!(
                    "invalid schema name {schema:?}: use lowercase ASCII letters, digits and _ \
                     (at most 63, not starting with a digit)"
                )));
            }
            let set = format!("-c search_path={schema}");
            let options = match cfg.get_options() {
                Some(o) if !o.trim().is_empty() => format!("{o} {set}"),
                _ => set,
            };
            cfg.options(&options);
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("duet");
        }
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the PostgreSQL pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot connect to PostgreSQL at {}: {}",
                redacted(&opts.url),
                describe(&e)
            ))
        })?;
        let epoch = schema::migrate(&mut client, opts.schema.as_deref()).await?;
        let sync_commit: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db)?;
        if sync_commit == "off" {
            tracing::warn!(
                "postgres store: synchronous_commit is off: acknowledged writes may be lost \
                 in a server crash (Law 1 needs it on)"
            );
        }
        drop(client);
        tracing::info!(schema = ?opts.schema, %epoch, "postgres store connected");
        Ok(PostgresStore {
            pool,
            epoch,
            schema: opts.schema,
            observer: opts.observer,
        })
    }

    /// Closes the pool: new calls fail with [`StoreError::Closed`]; calls in
    /// progress finish, and their connections are closed as they are returned.
    /// Idempotent.
    pub async fn close(&self) {
        self.pool.close();
    }

    /// The schema this store uses, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Reports a committed write to the observer.
    fn committed(&self, started: Instant) {
        if let Some(observer) = &self.observer {
            observer.batch_committed(1, started.elapsed());
        }
    }

    async fn read_account(&self, client: &Object, user: &str) -> StoreResult<Option<Account>> {
        let stmt = client
            .prepare_cached(sql::SELECT_ACCOUNT)
            .await
            .map_err(db)?;
        let row = client.query_opt(&stmt, &[&user]).await.map_err(db)?;
        row.as_ref().map(account_at).transpose()
    }

    async fn ensure_account_attempt(&self, user: &str, now_ms: i64) -> Result<Account, Failure> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::INSERT_ACCOUNT).await?;
        let started = Instant::now();
        let rows = pipelined_tx(&client, client.query(&stmt, &[&user, &now_ms])).await?;
        if let Some(row) = rows.first() {
            self.committed(started);
            return Ok(account_at(row)?);
        }
        // A concurrent call created it (and has committed: the insert waited for it).
        match self.read_account(&client, user).await? {
            Some(account) => Ok(account),
            None => Err(Failure::Retry(format!(
                "account {user:?} vanished after insert"
            ))),
        }
    }

    async fn set_profile_attempt(
        &self,
        user: &str,
        nick: Option<&str>,
        face_url: Option<&str>,
        now_ms: i64,
    ) -> Result<Account, Failure> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::SET_PROFILE).await?;
        let started = Instant::now();
        let row = pipelined_tx(
            &client,
            client.query_one(&stmt, &[&user, &nick, &face_url, &now_ms]),
        )
        .await?;
        self.committed(started);
        Ok(account_at(&row)?)
    }

    /// The original of `msg` (same sender, `MsgSeq`, `MsgRandom`), if stored.
    async fn find_duplicate(
        &self,
        client: &Object,
        msg: &NewMessage,
    ) -> StoreResult<Option<SendOutcome>> {
        let stmt = client
            .prepare_cached(sql::FIND_DUPLICATE)
            .await
            .map_err(db)?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &msg.from,
                    &i64::from(msg.msg_seq),
                    &i64::from(msg.msg_random),
                ],
            )
            .await
            .map_err(db)?;
        row.map(|row| {
            Ok(SendOutcome::Duplicate {
                message: message_at(&row, 0)?,
                sender_entry_seq: opt_u64_at(&row, 10)?,
            })
        })
        .transpose()
    }

    async fn send_attempt(&self, msg: &NewMessage) -> Result<SendOutcome, Failure> {
        let self_send = msg.from == msg.to;
        let sender_copy = msg.sender_copy == SenderCopy::Timeline && !self_send;
        let unread = !msg.no_unread && !self_send;
        let last_msg = !msg.no_last_msg;
        let msg_seq = i64::from(msg.msg_seq);
        let msg_random = i64::from(msg.msg_random);
        let msg_time = sql_i64(msg.msg_time, "MsgTime")?;
        let now_ms = sql_i64(msg.now_ms, "now_ms")?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::SEND).await?;
        let params: [&(dyn ToSql + Sync); 12] = [
            &msg.from,
            &msg.to,
            &msg_seq,
            &msg_random,
            &msg_time,
            &msg.body_json,
            &msg.cloud_custom_data,
            &sender_copy,
            &now_ms,
            &last_msg,
            &unread,
            &UNREAD_CAP,
        ];
        let started = Instant::now();
        let row = match pipelined_tx(&client, client.query_one(&stmt, &params)).await {
            Ok(row) => row,
            Err(e) if lost_dedup_race(&e) => {
                // A concurrent identical send committed first; this one was
                // rolled back whole. Answer with the original.
                return match self.find_duplicate(&client, msg).await? {
                    Some(dup) => Ok(dup),
                    None => Err(Failure::Retry(
                        "the original of a concurrent duplicate send is gone".into(),
                    )),
                };
            }
            Err(e) => return Err(e.into()),
        };

        // Columns: 0 known sender, 1 known recipient, 2 recipient seq, 3 msg_id,
        // 4 nick, 5 face_url, 6 sender seq, 7..=16 duplicate message, 17 its sender seq.
        if get::<Option<&str>>(&row, 7)?.is_some() {
            return Ok(SendOutcome::Duplicate {
                message: message_at(&row, 7)?,
                sender_entry_seq: opt_u64_at(&row, 17)?,
            });
        }
        if get::<i64>(&row, 1)? == 0 {
            return Err(StoreError::UnknownAccount(msg.to.clone()).into());
        }
        if get::<i64>(&row, 0)? == 0 {
            return Err(StoreError::UnknownAccount(msg.from.clone()).into());
        }
        let (Some(recipient_seq), Some(_msg_id), Some(nick), Some(face_url)) = (
            opt_u64_at(&row, 2)?,
            get::<Option<i64>>(&row, 3)?,
            get::<Option<String>>(&row, 4)?,
            get::<Option<String>>(&row, 5)?,
        ) else {
            return Err(StoreError::Backend("send: the message was not stored".into()).into());
        };
        let sender_seq = opt_u64_at(&row, 6)?;
        self.committed(started);

        let message = Message {
            msg_key: duet_proto::MsgKey::text(msg.msg_seq, msg.msg_random, msg.msg_time),
            from: msg.from.clone(),
            to: msg.to.clone(),
            msg_seq: msg.msg_seq,
            msg_random: msg.msg_random,
            msg_time: msg.msg_time,
            flag_bits: 0,
            body: msg.body.clone(),
            cloud_custom_data: msg.cloud_custom_data.clone(),
            nick,
            face_url,
            online_only: false,
        };
        Ok(SendOutcome::Stored {
            message,
            recipient_seq,
            sender_seq,
            ts: msg.now_ms,
        })
    }

    async fn mark_read_attempt(
        &self,
        user: &str,
        peer: &str,
        read_time: u64,
        now_ms: u64,
    ) -> Result<ReadOutcome, Failure> {
        let report = ReadReport {
            reader: user.to_owned(),
            peer: peer.to_owned(),
            read_time,
        };
        let payload =
            serde_json::to_string(&report).map_err(|e| StoreError::Backend(e.to_string()))?;
        let read_time_sql = sql_i64(read_time, "read_time")?;
        let now_sql = sql_i64(now_ms, "now_ms")?;
        let client = self.client().await?;
        let entries = client.prepare_cached(sql::READ_ENTRIES).await?;
        let convs = client.prepare_cached(sql::READ_CONVERSATIONS).await?;
        let started = Instant::now();
        let (row, _) = pipelined_tx(
            &client,
            try_join(
                client.query_one(&entries, &[&user, &peer, &now_sql, &payload]),
                client.execute(&convs, &[&user, &peer, &read_time_sql]),
            ),
        )
        .await?;
        let Some(reader_seq) = opt_u64_at(&row, 0)? else {
            return Err(StoreError::UnknownAccount(user.to_owned()).into());
        };
        let peer_seq = opt_u64_at(&row, 1)?;
        self.committed(started);
        let peer_entry = peer_seq.map(|seq| Entry {
            seq,
            ts: now_ms,
            kind: EntryKind::Read(report.clone()),
        });
        Ok(ReadOutcome {
            reader_entry: Entry {
                seq: reader_seq,
                ts: now_ms,
                kind: EntryKind::Read(report),
            },
            peer_entry,
        })
    }

    async fn recall_attempt(&self, req: &RecallRequest) -> Result<RecallOutcome, Failure> {
        let MsgKey { seq, random, time } = req.key;
        let now_sql = sql_i64(req.now_ms, "now_ms")?;
        let client = self.client().await?;
        let find = client.prepare_cached(sql::FIND_FOR_RECALL).await?;
        let key_params: [&(dyn ToSql + Sync); 3] = [&req.by, &i64::from(seq), &i64::from(random)];
        let Some(row) = client.query_opt(&find, &key_params).await? else {
            return Err(StoreError::MessageNotFound.into());
        };
        let msg_id: i64 = get(&row, 0)?;
        let receiver: String = get(&row, 1)?;
        let msg_time = u64_at(&row, 2)?;
        let flags: i64 = get(&row, 3)?;
        let sender_seq: Option<i64> = get(&row, 4)?;
        let recalled = i64::from(FLAG_RECALLED);
        if msg_time != time {
            return Err(StoreError::MessageNotFound.into());
        }
        if flags & recalled != 0 {
            return Err(StoreError::AlreadyRecalled.into());
        }
        if req.not_before.is_some_and(|nb| msg_time < nb) {
            return Err(StoreError::RecallWindowPassed.into());
        }

        let recall = Recall {
            msg_key: req.key.to_string(),
            from: req.by.clone(),
            to: receiver.clone(),
        };
        let payload =
            serde_json::to_string(&recall).map_err(|e| StoreError::Backend(e.to_string()))?;
        let sender_entry = sender_seq.is_some() && req.by != receiver;
        let locks: i64 = if sender_entry { 2 } else { 1 };
        let stmt = client.prepare_cached(sql::RECALL).await?;
        let started = Instant::now();
        let row = pipelined_tx(
            &client,
            client.query_one(
                &stmt,
                &[
                    &req.by,
                    &receiver,
                    &msg_id,
                    &now_sql,
                    &sender_entry,
                    &payload,
                    &recalled,
                    &locks,
                ],
            ),
        )
        .await?;
        // Columns: 0 accounts locked, 1 message flagged, 2 recipient seq, 3 sender seq.
        if get::<i64>(&row, 0)? != locks {
            return Err(StoreError::Backend(format!(
                "recall: the account of {:?} or {receiver:?} is missing",
                req.by
            ))
            .into());
        }
        if !get::<bool>(&row, 1)? {
            // Recalled (or swept) since we looked; nothing was written.
            let now = client.query_opt(&find, &key_params).await?;
            let recalled_now = match now {
                Some(row) => get::<i64>(&row, 3)? & recalled != 0,
                None => false,
            };
            return Err(if recalled_now {
                StoreError::AlreadyRecalled
            } else {
                StoreError::MessageNotFound
            }
            .into());
        }
        let Some(recipient_seq) = opt_u64_at(&row, 2)? else {
            return Err(
                StoreError::Backend("recall: no recipient entry was written".into()).into(),
            );
        };
        let sender_seq = opt_u64_at(&row, 3)?;
        self.committed(started);
        let entry = |seq| Entry {
            seq,
            ts: req.now_ms,
            kind: EntryKind::Recall(recall.clone()),
        };
        Ok(RecallOutcome {
            sender_entry: sender_seq.map(entry),
            recipient_entry: entry(recipient_seq),
        })
    }

    async fn sweep_attempt(&self, cutoff_ms: u64, chunk: u32) -> Result<SweepReport, Failure> {
        // Messages and conversations are dated in whole seconds:
        // `msg_time * 1000 < cutoff_ms` is `msg_time < ceil(cutoff_ms / 1000)`.
        let cutoff_s = bound_i64(cutoff_ms.div_ceil(1000));
        let cutoff_ms = bound_i64(cutoff_ms);
        let chunk = i64::from(chunk);
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::SWEEP).await?;
        let started = Instant::now();
        let row = pipelined_tx(
            &client,
            client.query_one(&stmt, &[&cutoff_ms, &cutoff_s, &chunk]),
        )
        .await?;
        let mut report = SweepReport {
            entries: u64_at(&row, 0)?,
            messages: u64_at(&row, 1)?,
            conversations: u64_at(&row, 2)?,
            more: false,
        };
        // Each statement takes what it finds (indexed by time): done when
        // a call finds nothing.
        report.more = report.total() > 0;
        self.committed(started);
        Ok(report)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn ensure_account(&self, user: &str, now_ms: u64) -> StoreResult<Account> {
        // Accounts are never deleted: an existing one needs no write.
        {
            let client = self.client().await?;
            if let Some(account) = self.read_account(&client, user).await? {
                return Ok(account);
            }
        }
        let now_ms = sql_i64(now_ms, "now_ms")?;
        with_retries!("ensure_account", self.ensure_account_attempt(user, now_ms))
    }

    async fn account(&self, user: &str) -> StoreResult<Option<Account>> {
        let client = self.client().await?;
        self.read_account(&client, user).await
    }

    async fn set_profile(
        &self,
        user: &str,
        nick: Option<String>,
        face_url: Option<String>,
        now_ms: u64,
    ) -> StoreResult<Account> {
        let now_ms = sql_i64(now_ms, "now_ms")?;
        with_retries!(
            "set_profile",
            self.set_profile_attempt(user, nick.as_deref(), face_url.as_deref(), now_ms)
        )
    }

    async fn send(&self, msg: NewMessage) -> StoreResult<SendOutcome> {
        with_retries!("send", self.send_attempt(&msg))
    }

    async fn head(&self, user: &str) -> StoreResult<u64> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::HEAD).await.map_err(db)?;
        match client.query_opt(&stmt, &[&user]).await.map_err(db)? {
            Some(row) => u64_at(&row, 0),
            None => Ok(0),
        }
    }

    async fn sync(
        &self,
        user: &str,
        after: u64,
        upto: u64,
        per_conversation: u32,
        limit: u32,
    ) -> StoreResult<Vec<Entry>> {
        if upto <= after || limit == 0 {
            return Ok(Vec::new());
        }
        // A window no wider than the cut cannot hold more than
        // `per_conversation` messages of one peer: skip the window function.
        let uncut = upto - after <= u64::from(per_conversation);
        let (after, upto) = (bound_i64(after), bound_i64(upto));
        let client = self.client().await?;
        let rows = if uncut {
            let stmt = client.prepare_cached(sql::SYNC_ALL).await.map_err(db)?;
            let limit = i64::from(limit);
            client.query(&stmt, &[&user, &after, &upto, &limit]).await
        } else {
            let stmt = client.prepare_cached(sql::SYNC_CUT).await.map_err(db)?;
            let per = i64::from(per_conversation);
            let limit = i64::from(limit);
            client
                .query(&stmt, &[&user, &after, &upto, &per, &limit])
                .await
        }
        .map_err(db)?;
        rows.iter().map(entry_at).collect()
    }

    async fn history(
        &self,
        user: &str,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> StoreResult<Vec<HistoryItem>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let before = before.map_or(i64::MAX, bound_i64);
        let count = i64::from(count);
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql::HISTORY).await.map_err(db)?;
        let rows = client
            .query(&stmt, &[&user, &peer, &before, &count])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(HistoryItem {
                    seq: u64_at(row, 0)?,
                    message: message_at(row, 1)?,
                })
            })
            .collect()
    }

    async fn conversations(
        &self,
        user: &str,
        offset: u32,
        count: u32,
    ) -> StoreResult<Vec<Conversation>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (offset, count) = (i64::from(offset), i64::from(count));
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(sql::CONVERSATIONS)
            .await
            .map_err(db)?;
        let rows = client
            .query(&stmt, &[&user, &offset, &count])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let last_message = match get::<Option<i64>>(row, 5)? {
                    Some(_) => Some(message_at(row, 6)?),
                    None => None,
                };
                Ok(Conversation {
                    peer: get(row, 0)?,
                    last_message,
                    last_time: u64_at(row, 1)?,
                    unread: u32_at_int(row, 2)?,
                    read_time: u64_at(row, 3)?,
                    peer_read_time: u64_at(row, 4)?,
                })
            })
            .collect()
    }

    async fn mark_read(
        &self,
        user: &str,
        peer: &str,
        read_time: u64,
        now_ms: u64,
    ) -> StoreResult<ReadOutcome> {
        with_retries!(
            "mark_read",
            self.mark_read_attempt(user, peer, read_time, now_ms)
        )
    }

    async fn recall(&self, req: RecallRequest) -> StoreResult<RecallOutcome> {
        with_retries!("recall", self.recall_attempt(&req))
    }

    async fn sweep(&self, cutoff_ms: u64, chunk: u32) -> StoreResult<SweepReport> {
        with_retries!("sweep", self.sweep_attempt(cutoff_ms, chunk))
    }
}

fn presence_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} does not fit in BIGINT")))
}

#[async_trait]
impl PresenceStore for PostgresStore {
    async fn presence_node_start(&self, node: &str, now_ms: u64) -> StoreResult<()> {
        let now = presence_i64(now_ms, "time")?;
        let client = self.client().await?;
        client
            .execute("DELETE FROM presence WHERE node_id = $1::text", &[&node])
            .await
            .map_err(db)?;
        client
            .execute(
                "INSERT INTO presence_nodes (node_id, seen_ms) VALUES ($1::text, $2::bigint) \
                 ON CONFLICT (node_id) DO UPDATE SET seen_ms = excluded.seen_ms",
                &[&node, &now],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn presence_update(
        &self,
        node: &str,
        changes: Vec<PresenceChange>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let now = presence_i64(now_ms, "time")?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let online = tx
            .prepare_cached(
                "INSERT INTO presence (node_id, conn_id, user_id, device_id, platform) \
                 VALUES ($1::text, $2::bigint, $3::text, $4::text, $5::text) \
                 ON CONFLICT (node_id, conn_id) DO UPDATE SET user_id = excluded.user_id, \
                 device_id = excluded.device_id, platform = excluded.platform",
            )
            .await
            .map_err(db)?;
        let offline = tx
            .prepare_cached(
                "DELETE FROM presence WHERE node_id = $1::text AND conn_id = $2::bigint",
            )
            .await
            .map_err(db)?;
        for c in &changes {
            match c {
                PresenceChange::Online(d) => {
                    let conn = presence_i64(d.conn_id, "conn_id")?;
                    tx.execute(
                        &online,
                        &[&node, &conn, &d.user_id, &d.device_id, &d.platform],
                    )
                    .await
                    .map_err(db)?;
                }
                PresenceChange::Offline { conn_id } => {
                    let conn = presence_i64(*conn_id, "conn_id")?;
                    tx.execute(&offline, &[&node, &conn]).await.map_err(db)?;
                }
            }
        }
        tx.execute(
            "INSERT INTO presence_nodes (node_id, seen_ms) VALUES ($1::text, $2::bigint) \
             ON CONFLICT (node_id) DO UPDATE SET seen_ms = GREATEST(presence_nodes.seen_ms, excluded.seen_ms)",
            &[&node, &now],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn presence_online(
        &self,
        users: &[String],
        alive_since_ms: u64,
    ) -> StoreResult<Vec<PresenceDevice>> {
        let since = i64::try_from(alive_since_ms).unwrap_or(i64::MAX);
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT p.user_id, p.node_id, p.conn_id, p.device_id, p.platform \
                 FROM presence p JOIN presence_nodes n ON n.node_id = p.node_id \
                 WHERE p.user_id = ANY($1::text[]) AND n.seen_ms >= $2::bigint \
                 ORDER BY p.user_id, p.node_id, p.conn_id",
                &[&users, &since],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let conn: i64 = r.try_get(2).map_err(db)?;
                Ok(PresenceDevice {
                    user_id: r.try_get(0).map_err(db)?,
                    node_id: r.try_get(1).map_err(db)?,
                    conn_id: u64::try_from(conn).unwrap_or_default(),
                    device_id: r.try_get(3).map_err(db)?,
                    platform: r.try_get(4).map_err(db)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("postgres://duet:s3cret@db:5432/duet"),
            "postgres://duet:***@db:5432/duet"
        );
        assert_eq!(
            redacted("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(
            redacted("host=db user=duet password=x"),
            "<connection string with password>"
        );
        assert_eq!(redacted("host=db user=duet"), "host=db user=duet");
    }
}
