//! The embedded SQLite backend of the Duet [`Store`].
//!
//! - **Durable before ack (Law 1).** The database runs in WAL mode with
//!   `synchronous=FULL`: every commit is fsynced. All writes go through one
//!   writer thread that commits them in groups (one fsync per batch) and
//!   answers each caller only after its batch committed.
//! - **Atomic writes (Law 7).** Each write checks everything that can refuse it
//!   before its first write, so a refused write (an unknown recipient, say)
//!   leaves no trace and does not affect the other writes of its batch. A write
//!   that fails after writing (an I/O error) rolls its batch back, and the
//!   batch is re-run in parts so that only that write fails.
//! - **Gap-free timelines (Law 3).** Entry numbers are the account's head + 1,
//!   taken inside the writing transaction. The writer thread keeps a bounded
//!   cache of account state (heads, profiles) that only ever holds committed
//!   values, writes each moved head back once per batch before `COMMIT`, and
//!   drops the cache if any other connection wrote to the database.
//! - **Message entries are merged later.** A send writes its message row;
//!   its two timeline entries wait in the writer's in-memory tail (published
//!   before `COMMIT`, committed after it) and are merged, many at a time,
//!   into per-conversation chunks. Readers take the tail first, then the
//!   chunks below each account's floor. Recovery at open re-merges, from the
//!   message rows, whatever the last run had not merged.
//! - **Idempotency keys are written later too** (Law 2): the writer holds the
//!   newest messages' keys in memory and writes them to `message_keys` a few
//!   senders at a time, in key order; recovery writes what a stop left.
//! - **Checkpoints** run on their own thread, off the commit path.
//! - **Reads** run on a small pool of read-only connections on tokio's blocking
//!   threads (point lookups and history pages on the calling task); WAL lets
//!   them proceed while the writer commits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), duet_store::StoreError> {
//! use duet_store::Store;
//! use duet_store_sqlite::{SqliteOptions, SqliteStore};
//!
//! let store = SqliteStore::open(SqliteOptions::new("/var/lib/duet/duet.db"))?;
//! store.ensure_account("alice", 1_700_000_000_000).await?;
//! store.close();
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod accounts;
mod chunk;
mod keys;
mod merge;
mod reads;
mod rows;
mod schema;
mod tail;
mod writer;
mod writes;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use duet_proto::{Conversation, Entry, HistoryItem};
use duet_store::{
    Account, NewMessage, ReadOutcome, RecallOutcome, RecallRequest, SendOutcome, Store, StoreError,
    StoreResult, SweepReport,
};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::tail::Tail;
use crate::writer::{MergePolicy, MsgIds, WriteFn, Writer, WriterConfig};
use crate::writes::{EnsureAccount, MarkRead, SetProfile, Sweep};

/// Unread counts stop at this many messages per conversation.
const UNREAD_CAP: i64 = 250;
/// Writes queued for the writer at most (Law 6); a write past it fails at
/// once with [`StoreError::Overloaded`] (about three seconds of writes at
/// full speed).
const WRITE_QUEUE: usize = 65_536;
/// Accounts whose state (head, profile) the writer keeps in memory (Law 6).
const CACHED_ACCOUNTS: usize = 64 * 1024;
/// Connections for lookups run inline (one per async worker thread is plenty:
/// a lookup holds one for microseconds).
const POINT_READERS: usize = 4;
/// The WAL file's size bound in bytes: exceeded by about one batch's pages at
/// most, unless long reads keep the WAL from starting over.
const WAL_LIMIT: u64 = 64 * 1024 * 1024;
/// Message entries the tail holds before the writer merges after each batch
/// (about 20 MiB): a merge writes about one chunk row per view it touches
/// (~17 µs) however many entries the view gets, so the more entries of a
/// view a merge finds, the cheaper each.
const MERGE_BACKLOG: usize = 256 * 1024;
/// Most entries, and accounts, one merge transaction takes: it holds up the
/// writes queued behind it for a few milliseconds (each transaction also
/// costs a commit of its own, so fewer, larger ones spend less in all).
const MERGE_SLICE_ENTRIES: usize = 16 * 1024;
const MERGE_SLICE_ACCOUNTS: usize = 512;
/// The writer merges when no write came for this long.
const MERGE_IDLE: Duration = Duration::from_millis(20);
/// Entries the tail holds at most (Law 6; about 80 MiB).
const TAIL_LIMIT: usize = 1024 * 1024;

/// Maps a SQLite error to [`StoreError::Backend`].
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Told about every committed batch of writes (for metrics). Called on the
/// writer thread with the latency from `BEGIN` to durable `COMMIT`: keep it quick.
pub use duet_store::CommitObserver;

/// How to open a [`SqliteStore`].
#[derive(Clone)]
pub struct SqliteOptions {
    /// The database file (created if missing, with its `-wal` and `-shm` companions).
    pub path: PathBuf,
    /// Reader connections (default 4); at most this many reads run at once.
    pub readers: usize,
    /// Most writes committed in one transaction (default 2048). Only reached
    /// under load (a batch takes what is queued); larger batches share each
    /// fsync and each dirty page among more writes.
    pub max_batch: usize,
    /// Told about each committed batch.
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// Message entries waiting in memory before the writer merges them into
    /// their conversations' chunks after each batch (default 262,144; 0:
    /// after every batch).
    pub merge_backlog: usize,
    /// Whether the writer also merges when no write came for a moment
    /// (default true).
    pub merge_when_idle: bool,
    /// Most message entries merged in one transaction (default 16,384): it
    /// bounds how long a merge holds up the writes queued behind it.
    pub merge_slice: usize,
    /// Message entries the tail holds at most (default 1,048,576; Law 6):
    /// reached only while merging fails (a full disk, a damaged chunk);
    /// sends then fail with [`StoreError::Overloaded`] until it works again.
    pub tail_limit: usize,
}

impl SqliteOptions {
    /// Default options for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            readers: 4,
            max_batch: 2048,
            observer: None,
            merge_backlog: MERGE_BACKLOG,
            merge_when_idle: true,
            merge_slice: MERGE_SLICE_ENTRIES,
            tail_limit: TAIL_LIMIT,
        }
    }
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("path", &self.path)
            .field("readers", &self.readers)
            .field("max_batch", &self.max_batch)
            .field("observer", &self.observer.as_ref().map(|_| "…"))
            .field("merge_backlog", &self.merge_backlog)
            .field("merge_when_idle", &self.merge_when_idle)
            .field("merge_slice", &self.merge_slice)
            .field("tail_limit", &self.tail_limit)
            .finish()
    }
}

/// The reader pool: idle connections, and permits bounding concurrent reads.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    fn take(&self) -> StoreResult<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            // Only after a read panicked and lost its connection.
            None => schema::open_reader(&self.path),
        }
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

/// The SQLite store. Must be used from within a tokio runtime (reads run on
/// its blocking threads). Dropping it closes it (see [`SqliteStore::close`]).
pub struct SqliteStore {
    epoch: String,
    writer: Writer,
    /// Message entries not merged into chunks yet (filled by the writer).
    tail: Arc<Tail>,
    readers: Arc<Readers>,
    /// Connections for point lookups run on the calling task (see
    /// [`SqliteStore::point_read`]).
    point: Mutex<Vec<Connection>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies pending migrations and
    /// starts the writer thread.
    pub fn open(opts: SqliteOptions) -> Result<Self, StoreError> {
        let mut conn = schema::open_writer(&opts.path, WAL_LIMIT)?;
        let epoch = schema::migrate(&mut conn)?;
        let recovered = merge::recover(&conn).map_err(db)?;
        if recovered.remerged > 0 || recovered.rekeyed > 0 {
            tracing::info!(
                entries = recovered.remerged,
                keys = recovered.rekeyed,
                "sqlite store: merged the entries and keys the last run left in memory"
            );
        }
        let tail = Arc::new(Tail::default());
        let readers = opts.readers.max(1);
        let idle = (0..readers)
            .map(|_| schema::open_reader(&opts.path))
            .collect::<StoreResult<Vec<_>>>()?;
        let point = (0..POINT_READERS)
            .map(|_| schema::open_point_reader(&opts.path))
            .collect::<StoreResult<Vec<_>>>()?;
        let writer = Writer::start(
            conn,
            &opts.path,
            WriterConfig {
                queue: WRITE_QUEUE,
                max_batch: opts.max_batch,
                cached_accounts: CACHED_ACCOUNTS,
                wal_limit: WAL_LIMIT,
                observer: opts.observer,
                tail: Arc::clone(&tail),
                ids: MsgIds {
                    next: recovered.next_msg_id,
                    merged_below: recovered.next_msg_id,
                    keys_below: recovered.next_msg_id,
                },
                merge: MergePolicy {
                    backlog: opts.merge_backlog,
                    when_idle: opts.merge_when_idle.then_some(MERGE_IDLE),
                    slice_entries: opts.merge_slice.max(1),
                    slice_accounts: MERGE_SLICE_ACCOUNTS.min(opts.merge_slice).max(1),
                    limit: opts.tail_limit,
                },
            },
        )?;
        tracing::info!(path = %opts.path.display(), %epoch, "sqlite store opened");
        Ok(SqliteStore {
            epoch,
            writer,
            tail,
            readers: Arc::new(Readers {
                path: opts.path,
                idle: Mutex::new(idle),
                permits: Arc::new(Semaphore::new(readers)),
            }),
            point: Mutex::new(point),
        })
    }

    /// Stops accepting writes (they fail with [`StoreError::Closed`]), lets the
    /// writer commit every write already queued, and waits for its thread to
    /// end. Idempotent. Blocks the calling thread until the writer is done;
    /// reads keep working.
    pub fn close(&self) {
        self.writer.close();
    }

    /// Runs `run(tx, &input)` in the writer's next batch; returns the input
    /// back with `run`'s result once the batch is durably committed. If `run`
    /// fails, nothing it wrote is kept.
    async fn write<I, W>(&self, input: I, run: WriteFn<I, W>) -> StoreResult<(I, W)>
    where
        I: Send + 'static,
        W: Send + 'static,
    {
        self.writer.write(input, run).await
    }

    /// Runs `f`, a lookup by key (an account, a head: microseconds, on pages
    /// that stay cached) or one bounded index range (a history page), right
    /// here on the calling task when a point-read connection is free: cheaper
    /// than handing it to a blocking thread and back, which costs two thread
    /// switches. Those connections never wait
    /// for a lock; if the database is busy (a recovery after a crash), or all
    /// of them are taken, the lookup runs on a blocking thread instead.
    async fn point_read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self
            .point
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = conn {
            let out = f(&conn);
            self.point
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            match out {
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    ) => {}
                out => return out.map_err(db),
            }
        }
        self.read(move |c| f(c).map_err(db)).await
    }

    /// Runs `f` on a reader connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let out = f(&conn);
            readers.put(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    /// One writer thread takes jobs in the order they were queued, and a job
    /// is queued when its call is first polled, waiting for nothing.
    fn keeps_issue_order(&self) -> bool {
        true
    }

    async fn ensure_account(&self, user: &str, now_ms: u64) -> StoreResult<Account> {
        Ok(self.login(user, now_ms).await?.0)
    }

    async fn account(&self, user: &str) -> StoreResult<Option<Account>> {
        let user = user.to_owned();
        Ok(self
            .point_read(move |c| writes::account(c, &user))
            .await?
            .map(|(account, _)| account))
    }

    async fn login(&self, user: &str, now_ms: u64) -> StoreResult<(Account, u64)> {
        // Accounts are never deleted: an existing one needs no write, and one
        // read gives both the account and its head.
        let u = user.to_owned();
        if let Some(found) = self.point_read(move |c| writes::account(c, &u)).await? {
            return Ok(found);
        }
        let req = EnsureAccount {
            user: user.to_owned(),
            now_ms,
        };
        Ok(self.write(req, writes::ensure_account).await?.1)
    }

    async fn set_profile(
        &self,
        user: &str,
        nick: Option<String>,
        face_url: Option<String>,
        now_ms: u64,
    ) -> StoreResult<Account> {
        let req = SetProfile {
            user: user.to_owned(),
            nick,
            face_url,
            now_ms,
        };
        let (_, account) = self.write(req, writes::set_profile).await?;
        Ok(account)
    }

    async fn send(&self, msg: NewMessage) -> StoreResult<SendOutcome> {
        let (msg, written) = self.write(msg, writes::send).await?;
        Ok(writes::send_outcome(msg, written))
    }

    async fn head(&self, user: &str) -> StoreResult<u64> {
        let user = user.to_owned();
        self.point_read(move |c| reads::head(c, &user)).await
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
        let user = user.to_owned();
        let tail = Arc::clone(&self.tail);
        self.read(move |c| reads::sync(c, &tail, &user, after, upto, per_conversation, limit))
            .await
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
        let (user, peer) = (user.to_owned(), peer.to_owned());
        let tail = Arc::clone(&self.tail);
        // A page is a few chunks and at most MAX_HISTORY_PAGE message rows.
        self.point_read(move |c| reads::history(c, &tail, &user, &peer, before, count))
            .await
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
        let user = user.to_owned();
        let tail = Arc::clone(&self.tail);
        self.read(move |c| reads::conversations(c, &tail, &user, offset, count))
            .await
    }

    async fn mark_read(
        &self,
        user: &str,
        peer: &str,
        read_time: u64,
        now_ms: u64,
    ) -> StoreResult<ReadOutcome> {
        let req = MarkRead {
            user: user.to_owned(),
            peer: peer.to_owned(),
            read_time,
            now_ms,
        };
        let (_, outcome) = self.write(req, writes::mark_read).await?;
        Ok(outcome)
    }

    async fn recall(&self, req: RecallRequest) -> StoreResult<RecallOutcome> {
        let (_, outcome) = self.write(req, writes::recall).await?;
        Ok(outcome)
    }

    async fn sweep(&self, cutoff_ms: u64, chunk: u32) -> StoreResult<SweepReport> {
        // The sweep removes expired messages with their entries from the
        // chunks: the entries waiting in the tail go there first.
        self.writer.merge_all().await?;
        let (_, report) = self
            .write(Sweep { cutoff_ms, chunk }, writes::sweep)
            .await?;
        Ok(report)
    }
}
