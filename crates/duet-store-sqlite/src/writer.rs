//! The writer thread: one connection, a bounded job queue, group commit.
//!
//! Callers enqueue jobs. The thread blocks for one job, drains up to
//! `max_batch - 1` more without blocking, and runs them all in one
//! `BEGIN IMMEDIATE … COMMIT`. Only after the `COMMIT` (an fsync in WAL mode
//! with `synchronous=FULL`) are the results delivered: durable before ack
//! (Law 1).
//!
//! **Failure isolation without savepoints.** Every job checks everything it
//! can refuse (unknown accounts, missing messages, …) before its first write,
//! so a refusal leaves nothing to undo: the job fails alone and the batch goes
//! on. The writer verifies this rather than trusting it: a job that fails
//! after changing a row (an I/O error, a constraint broken by corruption, a
//! panic) is *dirty*. Then the batch rolls back and is re-run in parts: the
//! jobs before the dirty one commit together, the dirty one runs alone first
//! in a transaction (failing alone if it fails again), the rest go on as a new
//! batch. Jobs are therefore re-runnable: they read their input by reference.
//!
//! **Timeline heads** come from [`Accounts`], the writer's cache of account
//! state; they are written back to `heads` once per account per batch,
//! inside the batch's transaction (Law 3). `PRAGMA data_version` is checked at
//! each `BEGIN`: if any other connection wrote, the cache is dropped.
//!
//! **Message entries wait in the [`Tail`]** (see `tail`): a send writes its
//! message row only; its entries are published to the tail before `COMMIT`
//! (pending), marked committed after it, retracted if it fails. Between
//! batches, once the tail holds more than `merge_backlog` entries (or the
//! queue has been idle a moment), the writer merges the oldest accounts'
//! entries into their views' chunks, a bounded slice per transaction, and
//! records in `meta.merged_below` the message id below which every message's
//! entries are merged. Recovery at open re-merges the messages from there.
//! **Idempotency keys wait in [`Keys`]** the same way (see `keys`): added by
//! a send, dropped if its job or batch does not commit, written to
//! `message_keys` in the merge transactions, a few senders at a time.
//!
//! **Checkpoints** run on a [`Checkpointer`] thread with its own connection
//! (`wal_autocheckpoint` is off on the writer), so copying the WAL back into
//! the database does not stall commits. If it falls far behind, the writer
//! finishes the checkpoint itself between batches, which bounds the WAL.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duet_store::{StoreError, StoreResult};
use rusqlite::{Connection, Statement};
use tokio::sync::oneshot;

use crate::accounts::{AccountState, Accounts};
use crate::chunk::ChunkEntry;
use crate::keys::{self, Key, Keys, Written};
use crate::merge::{self, Views};
use crate::tail::{Tail, TailEntry};
use crate::{CommitObserver, db, schema};

/// A write job's view of the transaction: the connection, its prepared
/// statements and the accounts as the transaction sees them.
pub(crate) struct Tx<'a, 'c> {
    conn: &'c Connection,
    stmts: &'a mut Statements<'c>,
    accounts: &'a mut Accounts,
    tail: &'a Tail,
    /// The message entries of this transaction's jobs so far (published to
    /// the tail just before `COMMIT`).
    fresh: &'a mut Vec<(i64, TailEntry)>,
    /// Idempotency keys not yet in `message_keys`, this transaction's too.
    keys: &'a mut Keys,
    ids: &'a mut MsgIds,
    tail_limit: usize,
}

/// Message ids: the next one to give, and the merge point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgIds {
    /// The id the next stored message gets (ids only grow, even across a
    /// sweep that removed the newest messages, so that every message written
    /// after a merge is above its merge point).
    pub(crate) next: i64,
    /// Every message below this id has its entries in `chunks`
    /// (`meta.merged_below`, as last committed).
    pub(crate) merged_below: i64,
    /// Every message below this id has its idempotency key in
    /// `message_keys` (`meta.keys_below`, as last committed).
    pub(crate) keys_below: i64,
}

impl<'c> Tx<'_, 'c> {
    /// The writer connection, inside the batch's transaction.
    pub(crate) fn conn(&self) -> &'c Connection {
        self.conn
    }

    /// The statement for `sql`, prepared on first use and kept for the
    /// writer's life (the write path's statements, looked up by the address
    /// of their text: no hashing of the SQL on every use).
    pub(crate) fn stmt(&mut self, sql: &'static str) -> StoreResult<&mut Statement<'c>> {
        self.stmts.get(sql)
    }

    /// `user`'s account as this transaction sees it (`None`: no such account).
    pub(crate) fn account(&mut self, user: &str) -> StoreResult<Option<AccountState>> {
        self.accounts.get(self.conn, user)
    }

    /// Takes the next entry number of `user`'s timeline: `state` (from
    /// [`Tx::account`] in this job) moved to head + 1. Call only once the job
    /// will write the entry.
    pub(crate) fn next_seq(&mut self, user: &str, state: &AccountState) -> u64 {
        let seq = state.head + 1;
        self.accounts.set_head(user, state.clone(), seq);
        seq
    }

    /// Records `user`'s new profile (or new account) written by this job.
    pub(crate) fn put_account(&mut self, user: &str, state: AccountState) {
        self.accounts.put(user, state, false);
    }

    /// The id for a new message row. Call only for a message about to be
    /// inserted (an unused id is a harmless gap).
    pub(crate) fn take_msg_id(&mut self) -> i64 {
        let id = self.ids.next;
        self.ids.next += 1;
        id
    }

    /// Adds a message entry of account `uid` (in increasing `seq` per
    /// account); it joins the tail when the transaction commits.
    pub(crate) fn push_entry(&mut self, uid: i64, entry: TailEntry) {
        self.fresh.push((uid, entry));
    }

    /// Whether the tail, or the idempotency keys held in memory, are full
    /// (merging is failing or far behind): new messages must wait (Law 6).
    pub(crate) fn tail_full(&self) -> bool {
        self.tail.len() + self.fresh.len() >= self.tail_limit || self.keys.len() >= self.tail_limit
    }

    /// Every message with a lower id has its entries merged and its
    /// idempotency key in `message_keys` (and no message written in this
    /// transaction has).
    pub(crate) fn settled_below(&self) -> i64 {
        self.ids.merged_below.min(self.ids.keys_below)
    }

    /// The message whose idempotency key is `key`: written by this
    /// transaction, held in memory, or in `message_keys`.
    pub(crate) fn find_key(&mut self, key: &Key) -> StoreResult<Option<i64>> {
        match self.keys.get(key) {
            Some(msg_id) => Ok(Some(msg_id)),
            None => keys::find(self.stmts.get(keys::FIND_KEY)?, key).map_err(db),
        }
    }

    /// Records the key of message `msg_id`, just written by this job.
    pub(crate) fn push_key(&mut self, key: Key, msg_id: i64) {
        self.keys.push(key, msg_id);
    }

    /// Whether `uid`'s view of `peer_uid` holds a message entry: written
    /// by this transaction, waiting in the tail, or merged.
    pub(crate) fn has_messages(&mut self, uid: i64, peer_uid: i64) -> StoreResult<bool> {
        if self
            .fresh
            .iter()
            .any(|(u, e)| *u == uid && e.peer_uid == peer_uid)
            || self.tail.has_peer(uid, peer_uid)
        {
            return Ok(true);
        }
        merge::has_chunks(self.conn, uid, peer_uid).map_err(db)
    }
}

/// How a job's run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// It succeeded.
    Ok,
    /// It failed before changing anything: it fails alone, the batch goes on.
    Refused,
    /// It failed after changing rows (or the transaction is gone): the batch
    /// must roll back.
    Dirty,
}

/// One unit of work for the writer.
trait Job: Send {
    /// Runs the job's statements (again, if the batch was re-run).
    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Ran;
    /// Delivers the job's result, or `failure` if its batch did not commit.
    fn complete(self: Box<Self>, failure: Option<StoreError>);
}

/// The body of a write: runs on the writer thread inside a transaction; must
/// not write anything before its last possible refusal (see the module doc).
pub(crate) type WriteFn<I, W> = fn(&mut Tx<'_, '_>, &I) -> StoreResult<W>;

/// Statements the writer keeps prepared, keyed by the address of their
/// (static) SQL text. Bounded by the statements the code holds (Law 6).
pub(crate) struct Statements<'c> {
    conn: &'c Connection,
    held: Vec<(usize, Statement<'c>)>,
}

impl<'c> Statements<'c> {
    fn new(conn: &'c Connection) -> Self {
        Statements {
            conn,
            held: Vec::new(),
        }
    }

    fn get(&mut self, sql: &'static str) -> StoreResult<&mut Statement<'c>> {
        let key = sql.as_ptr() as usize;
        let i = match self.held.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let stmt = self.conn.prepare(sql).map_err(db)?;
                self.held.push((key, stmt));
                self.held.len() - 1
            }
        };
        Ok(&mut self.held[i].1)
    }
}

struct Typed<I, W> {
    input: I,
    run: WriteFn<I, W>,
    out: Option<StoreResult<W>>,
    tx: oneshot::Sender<StoreResult<(I, W)>>,
}

impl<I: Send, W: Send> Job for Typed<I, W> {
    fn run(&mut self, tx: &mut Tx<'_, '_>) -> Ran {
        let before = tx.conn.total_changes();
        let (run, input) = (self.run, &self.input);
        let out = catch_unwind(AssertUnwindSafe(|| run(tx, input)))
            .unwrap_or_else(|_| Err(StoreError::Backend("write job panicked".into())));
        let ran = match &out {
            Ok(_) => Ran::Ok,
            Err(_) if tx.conn.total_changes() == before && !tx.conn.is_autocommit() => Ran::Refused,
            Err(_) => Ran::Dirty,
        };
        self.out = Some(out);
        ran
    }

    fn complete(self: Box<Self>, failure: Option<StoreError>) {
        let Typed { input, out, tx, .. } = *self;
        let result = match (failure, out) {
            (Some(e), _) => Err(e),
            (None, Some(Ok(w))) => Ok((input, w)),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Err(StoreError::Backend("write job did not run".into())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = tx.send(result);
    }
}

enum Msg {
    Job(Box<dyn Job>),
    /// Merge every committed tail entry, then answer.
    MergeAll(oneshot::Sender<StoreResult<()>>),
    Shutdown,
}

/// How the writer thread is set up.
pub(crate) struct WriterConfig {
    /// Most jobs waiting for the writer (Law 6).
    pub(crate) queue: usize,
    /// Most jobs per transaction.
    pub(crate) max_batch: usize,
    /// Most accounts the writer's cache keeps.
    pub(crate) cached_accounts: usize,
    /// WAL file size (bytes) past which the writer finishes a checkpoint
    /// itself; the writer connection must have been opened with it.
    pub(crate) wal_limit: u64,
    /// Told about each committed batch.
    pub(crate) observer: Option<Arc<dyn CommitObserver>>,
    /// The tail the writer fills and merges (shared with the readers).
    pub(crate) tail: Arc<Tail>,
    /// Message ids, as recovery left them.
    pub(crate) ids: MsgIds,
    /// When to merge.
    pub(crate) merge: MergePolicy,
}

/// When the writer merges the tail into chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MergePolicy {
    /// Entries the tail may hold before the writer merges after each batch.
    pub(crate) backlog: usize,
    /// Merge whenever no write came for this long (`None`: never when idle).
    pub(crate) when_idle: Option<Duration>,
    /// Most entries merged in one transaction.
    pub(crate) slice_entries: usize,
    /// Most accounts merged in one transaction.
    pub(crate) slice_accounts: usize,
    /// Entries the tail holds at most: past it sends fail with `Overloaded`
    /// (likewise for the idempotency keys held in memory).
    pub(crate) limit: usize,
}

impl MergePolicy {
    /// Idempotency keys held in memory before the writer writes them out
    /// after each batch: one per message, against two entries.
    pub(crate) fn key_backlog(&self) -> usize {
        self.backlog / 2
    }

    /// Most idempotency keys written in one transaction: each costs a
    /// B-tree insert (about a microsecond), so a slice holds up the writes
    /// queued behind it for about two milliseconds.
    pub(crate) fn key_slice(&self) -> usize {
        (self.slice_entries / 8).max(1)
    }
}

/// Handle to the writer thread (and its checkpointer).
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    /// Jobs queued or running (Law 6: a write past `queue` fails at once).
    queued: Arc<AtomicUsize>,
    /// Most jobs queued or running.
    queue: usize,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Checkpointer,
}

impl Writer {
    /// Starts the writer thread owning `conn` (the database at `path`), and
    /// the checkpointer thread.
    pub(crate) fn start(conn: Connection, path: &Path, cfg: WriterConfig) -> StoreResult<Self> {
        let checkpointer = Checkpointer::start(path, cfg.wal_limit)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let state = WriterState {
            accounts: Accounts::new(cfg.cached_accounts),
            data_version: None,
            observer: cfg.observer,
            checkpoints: Arc::clone(&checkpointer.shared),
            tail: cfg.tail,
            fresh: Vec::new(),
            keys: Keys::default(),
            batch_no: 0,
            ids: cfg.ids,
            merge: cfg.merge,
        };
        let thread_queued = Arc::clone(&queued);
        let max_batch = cfg.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("duet-sqlite-writer".into())
            .spawn(move || writer_loop(conn, state, rx, max_batch, thread_queued))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")));
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                checkpointer.stop();
                return Err(e);
            }
        };
        Ok(Writer {
            tx,
            queued,
            queue: cfg.queue.max(1),
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            checkpointer,
        })
    }

    /// Runs `run(tx, &input)` in the writer's next batch; once the batch is
    /// durably committed, returns the input back with what `run` returned.
    /// If `run` fails, nothing it wrote is kept.
    ///
    /// The job joins the queue when this future is first polled, without
    /// waiting for anything: writes are committed in the order they were
    /// issued (a device's sends stay in order). A write that finds the queue
    /// full fails at once with [`StoreError::Overloaded`] rather than waiting
    /// for a place: a place handed to a waiting writer is taken up only when
    /// that writer next runs, and a later write of the same connection could
    /// take a free place first.
    pub(crate) async fn write<I, W>(&self, input: I, run: WriteFn<I, W>) -> StoreResult<(I, W)>
    where
        I: Send + 'static,
        W: Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Overloaded);
        }
        // The writer gives the place back when the job is done.
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Typed {
            input,
            run,
            out: None,
            tx,
        });
        if self.tx.send(Msg::Job(job)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Closed);
        }
        // A dropped job (the writer stopped before taking it) never ran.
        // The answer is taken outside tokio's scheduling budget: jobs are
        // answered in commit order and their callers woken in that order;
        // a caller refused by the budget would wake itself again behind the
        // callers of the next commit, and could deliver after them.
        tokio::task::unconstrained(rx)
            .await
            .unwrap_or(Err(StoreError::Closed))
    }

    /// Merges every committed tail entry into chunks (in slices), after the
    /// writes queued before this call.
    pub(crate) async fn merge_all(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::MergeAll(tx)).is_err() {
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Stops accepting jobs, lets the thread commit what is queued, joins it,
    /// then stops the checkpointer. Idempotent; a concurrent second call waits
    /// for the first.
    pub(crate) fn close(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Shutdown);
        }
        if let Some(handle) = thread.take()
            && handle.join().is_err()
        {
            tracing::error!("sqlite store: the writer thread panicked");
        }
        self.checkpointer.stop();
    }
}

/// What the writer thread keeps besides its connection.
struct WriterState {
    accounts: Accounts,
    /// `PRAGMA data_version` at the last `BEGIN`; `None` before the first.
    data_version: Option<i64>,
    observer: Option<Arc<dyn CommitObserver>>,
    checkpoints: Arc<CheckpointShared>,
    tail: Arc<Tail>,
    /// The running transaction's message entries.
    fresh: Vec<(i64, TailEntry)>,
    /// Idempotency keys not yet in `message_keys` (see `keys`).
    keys: Keys,
    /// Transactions run so far (the running one's number, once begun).
    batch_no: u64,
    ids: MsgIds,
    merge: MergePolicy,
}

fn writer_loop(
    conn: Connection,
    mut st: WriterState,
    rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    queued: Arc<AtomicUsize>,
) {
    let conn = &conn;
    let mut stmts = Statements::new(conn);
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut merge_all: Vec<oneshot::Sender<StoreResult<()>>> = Vec::new();
    let mut shutting_down = false;
    loop {
        // Block for the first job, unless shutting down (then finish what is
        // queued); with entries waiting in the tail, merge them whenever no
        // write comes for a moment.
        let first = if shutting_down {
            rx.try_recv().ok()
        } else {
            match st
                .merge
                .when_idle
                .filter(|_| st.tail.len() > 0 || st.keys.len() > 0)
            {
                Some(idle) => match rx.recv_timeout(idle) {
                    Ok(msg) => Some(msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // A failed merge is logged; the entries stay and are
                        // merged later.
                        let _ = merge_slice(conn, &mut st, true);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
                None => rx.recv().ok(),
            }
        };
        match first {
            None => break,
            Some(Msg::Shutdown) => {
                shutting_down = true;
                continue;
            }
            Some(Msg::MergeAll(reply)) => merge_all.push(reply),
            Some(Msg::Job(job)) => batch.push(job),
        }
        // A merge request ends the batch: it covers the writes before it.
        while batch.len() < max_batch && merge_all.is_empty() {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::MergeAll(reply)) => merge_all.push(reply),
                Ok(Msg::Shutdown) => shutting_down = true,
                Err(_) => break,
            }
        }
        let jobs = batch.len();
        if jobs > 0 {
            commit_batch(conn, &mut stmts, &mut st, &mut batch, Instant::now());
            queued.fetch_sub(jobs, Ordering::AcqRel);
        }
        for reply in merge_all.drain(..) {
            let _ = reply.send(merge_everything(conn, &mut st));
        }
        // Keep the tail and the keys near their backlogs: a few slices
        // after each batch.
        let mut slices = 0;
        while (st.tail.len() > st.merge.backlog || st.keys.len() > st.merge.key_backlog())
            && slices < MERGES_PER_BATCH
        {
            if merge_slice(conn, &mut st, false).is_err() {
                break;
            }
            slices += 1;
        }
        st.checkpoints.after_commit(conn);
    }
    tracing::debug!("sqlite store: writer stopped");
}

/// A batch, merge or checkpoint taking this long (milliseconds) is logged
/// at debug level (`DUET_LOG=duet_store_sqlite=debug`): what holds up sends.
const SLOW_PASS_MS: f64 = 5.0;

/// Most merge transactions between two batches.
const MERGES_PER_BATCH: usize = 4;

/// In one transaction: merges the oldest accounts' tail entries (one
/// slice) into their views' chunks and moves the merge point, if the tail
/// holds more than its backlog; writes the oldest senders' idempotency keys
/// (a slice) to `message_keys`, if more than their backlog wait. `drain`:
/// whatever waits. Entries and keys leave memory once that committed.
/// Returns the entries and keys written.
fn merge_slice(conn: &Connection, st: &mut WriterState, drain: bool) -> StoreResult<usize> {
    let taken = if drain || st.tail.len() > st.merge.backlog {
        st.tail
            .take(st.merge.slice_entries, st.merge.slice_accounts)
    } else {
        Vec::new()
    };
    let keys_waiting = st.keys.len();
    let key_slice = if keys_waiting > 0 && (drain || keys_waiting > st.merge.key_backlog()) {
        st.merge.key_slice()
    } else {
        0
    };
    if taken.is_empty() && key_slice == 0 {
        return Ok(0);
    }
    let mut views = Views::default();
    let mut n = 0;
    for t in &taken {
        for e in &t.entries {
            views.push(t.uid, e.peer_uid, ChunkEntry::from(e));
            n += 1;
        }
    }
    let below = st
        .tail
        .min_msg_id_besides(&taken)
        .map_or(st.ids.next, |m| m.min(st.ids.next));
    let started = Instant::now();
    let run = || -> StoreResult<Written> {
        exec(conn, "BEGIN IMMEDIATE")?;
        if !taken.is_empty() {
            views.append(conn, false).map_err(db)?;
            merge::set_merged_below(conn, below).map_err(db)?;
        }
        let mut written = Written::default();
        if key_slice > 0 {
            written = st.keys.write_oldest(conn, key_slice).map_err(db)?;
            let keys_below = st.keys.oldest_besides(&written).unwrap_or(st.ids.next);
            keys::set_keys_below(conn, keys_below).map_err(db)?;
            written.below = keys_below;
        }
        exec(conn, "COMMIT")?;
        Ok(written)
    };
    match run() {
        Ok(written) => {
            if !taken.is_empty() {
                st.tail.drop_merged(&taken);
                st.ids.merged_below = below;
            }
            if written.keys > 0 {
                st.keys.drop_written(&written);
                st.ids.keys_below = written.below;
            }
            let keys = written.keys;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if ms >= SLOW_PASS_MS {
                tracing::debug!(
                    entries = n,
                    views = views.len(),
                    keys,
                    ms,
                    "sqlite store: slow merge"
                );
            }
            Ok(n + keys)
        }
        Err(e) => {
            rollback(conn);
            tracing::error!(error = %e, "sqlite store: merging the tail failed");
            Err(e)
        }
    }
}

/// Merges every tail entry and writes every idempotency key (all
/// committed, between batches).
fn merge_everything(conn: &Connection, st: &mut WriterState) -> StoreResult<()> {
    while merge_slice(conn, st, true)? > 0 {}
    Ok(())
}

fn exec(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(db)
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = exec(conn, "ROLLBACK")
    {
        tracing::error!(error = %e, "sqlite store: rollback failed");
    }
}

/// Why a run of jobs did not commit.
enum Failed {
    /// The job at this index (of the run) failed after writing.
    Dirty(usize),
    /// The transaction itself failed (`BEGIN`, head write-back, `COMMIT`).
    Tx(StoreError),
}

/// Runs and commits one batch (in parts if a job fails dirty), tells the
/// observer, then completes every job (emptying `batch`): whoever sees an ack
/// also sees the commit counted.
fn commit_batch<'c>(
    conn: &'c Connection,
    stmts: &mut Statements<'c>,
    st: &mut WriterState,
    batch: &mut Vec<Box<dyn Job>>,
    started: Instant,
) {
    let mut failures: Vec<Option<StoreError>> = Vec::new();
    let (mut start, mut end) = (0, batch.len());
    while start < batch.len() {
        let Some(part) = batch.get_mut(start..end) else {
            break;
        };
        match run_jobs(conn, stmts, st, part) {
            Ok(()) => {
                st.accounts.batch_committed();
                (start, end) = (end, batch.len());
            }
            Err(Failed::Dirty(i)) => {
                rollback(conn);
                st.accounts.batch_rolled_back();
                tracing::warn!(
                    job = start + i,
                    jobs = end - start,
                    "sqlite store: a write failed after writing; re-running its batch in parts"
                );
                if i == 0 {
                    // It failed first in its transaction: the failure is its own.
                    (start, end) = (start + 1, batch.len());
                } else {
                    end = start + i;
                }
            }
            Err(Failed::Tx(e)) => {
                rollback(conn);
                st.accounts.batch_rolled_back();
                tracing::error!(jobs = end - start, error = %e, "sqlite store: batch failed");
                if failures.is_empty() {
                    failures.resize(batch.len(), None);
                }
                for slot in failures.iter_mut().take(end).skip(start) {
                    *slot = Some(e.clone());
                }
                (start, end) = (end, batch.len());
            }
        }
    }
    let committed = batch.len() - failures.iter().filter(|f| f.is_some()).count();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if ms >= SLOW_PASS_MS {
        tracing::debug!(jobs = batch.len(), ms, "sqlite store: slow batch");
    }
    if committed > 0
        && let Some(observer) = &st.observer
    {
        observer.batch_committed(committed, started.elapsed());
    }
    let mut failures = failures.into_iter();
    for job in batch.drain(..) {
        job.complete(failures.next().flatten());
    }
}

/// `BEGIN IMMEDIATE`, dropping the account cache if another connection wrote
/// (and taking message ids above any it stored).
fn begin(conn: &Connection, st: &mut WriterState) -> StoreResult<()> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let version: i64 = conn
        .prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db)?;
    if st.data_version != Some(version) {
        if st.data_version.is_some() {
            tracing::info!("sqlite store: another connection wrote; account cache dropped");
            let top = merge::max_msg_id(conn).map_err(db)?;
            st.ids.next = st.ids.next.max(top + 1);
        }
        st.accounts.invalidate();
        st.data_version = Some(version);
    }
    Ok(())
}

/// Runs `jobs` in one transaction and commits it; the jobs' message entries
/// join the tail (pending before `COMMIT`, committed after, retracted if it
/// fails).
fn run_jobs<'c>(
    conn: &'c Connection,
    stmts: &mut Statements<'c>,
    st: &mut WriterState,
    jobs: &mut [Box<dyn Job>],
) -> Result<(), Failed> {
    st.fresh.clear();
    begin(conn, st).map_err(Failed::Tx)?;
    // The batch's keys go if it does not commit.
    let keys_before = st.keys.mark();
    let result = run_begun(conn, stmts, st, jobs);
    if result.is_err() {
        st.keys.truncate(keys_before);
    }
    result
}

/// [`run_jobs`] once the transaction has begun.
fn run_begun<'c>(
    conn: &'c Connection,
    stmts: &mut Statements<'c>,
    st: &mut WriterState,
    jobs: &mut [Box<dyn Job>],
) -> Result<(), Failed> {
    let tail_limit = st.merge.limit;
    for (i, job) in jobs.iter_mut().enumerate() {
        let mark = (st.fresh.len(), st.keys.mark());
        let mut tx = Tx {
            conn,
            stmts,
            accounts: &mut st.accounts,
            tail: &st.tail,
            fresh: &mut st.fresh,
            keys: &mut st.keys,
            ids: &mut st.ids,
            tail_limit,
        };
        match job.run(&mut tx) {
            Ran::Ok => st.accounts.job_succeeded(),
            Ran::Refused => {
                st.fresh.truncate(mark.0);
                st.keys.truncate(mark.1);
                st.accounts.job_failed();
            }
            Ran::Dirty => {
                st.fresh.truncate(mark.0);
                st.accounts.job_failed();
                return Err(Failed::Dirty(i));
            }
        }
    }
    st.accounts.write_heads(conn).map_err(Failed::Tx)?;
    st.batch_no += 1;
    st.tail.publish(st.batch_no, &st.fresh);
    match exec(conn, "COMMIT") {
        Ok(()) => {
            st.tail.commit(st.batch_no);
            st.keys.commit();
            Ok(())
        }
        Err(e) => {
            st.tail
                .retract(st.batch_no, st.fresh.iter().map(|(uid, _)| *uid));
            Err(Failed::Tx(e))
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// Least time between two background checkpoints: pages rewritten by several
/// batches in between are copied once.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Between checkpoints when no commit asks for one.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// State shared by the writer and the checkpointer thread.
struct CheckpointShared {
    /// Commits so far (the checkpointer runs when it changes), and the stop flag.
    state: Mutex<(u64, bool)>,
    wake: Condvar,
    /// Held while a checkpoint runs, by either thread.
    running: Mutex<()>,
    /// The WAL file.
    wal_path: PathBuf,
    /// The WAL file's size past which the writer finishes a checkpoint.
    wal_limit: u64,
}

impl CheckpointShared {
    /// Called by the writer after each batch: wakes the checkpointer, and
    /// finishes a checkpoint itself if the WAL has not started over for too long.
    ///
    /// The WAL starts over (its next frames overwrite its beginning) only if
    /// the writer's transaction began with every frame checkpointed, which a
    /// busy writer never gives a background checkpoint time to achieve. The
    /// first commit after a start-over cuts the file back to
    /// `wal_limit` (`journal_size_limit`), so a longer file means it has not started
    /// over since: then the writer, between batches, checkpoints the little the
    /// checkpointer has not copied yet, and its next commit starts the WAL over
    /// (Law 6: the WAL stays bounded whatever the checkpointer's pace).
    fn after_commit(&self, conn: &Connection) {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.0 = state.0.wrapping_add(1);
        }
        self.wake.notify_one();
        let wal_len = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        if wal_len > self.wal_limit {
            self.checkpoint(conn, "writer");
        }
    }

    /// Runs a passive checkpoint on `conn`.
    fn checkpoint(&self, conn: &Connection, who: &str) {
        let _running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let result = conn
            .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
            });
        match result {
            Ok((busy, log, done)) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if ms >= SLOW_PASS_MS {
                    tracing::debug!(who, busy, log, done, ms, "sqlite store: slow checkpoint");
                }
            }
            Err(e) => tracing::warn!(who, error = %e, "sqlite store: checkpoint failed"),
        }
    }
}

/// The checkpointer thread.
struct Checkpointer {
    shared: Arc<CheckpointShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    fn start(path: &Path, wal_limit: u64) -> StoreResult<Self> {
        let conn = schema::open_checkpointer(path, wal_limit)?;
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let shared = Arc::new(CheckpointShared {
            state: Mutex::new((0, false)),
            wake: Condvar::new(),
            running: Mutex::new(()),
            wal_path: PathBuf::from(wal_path),
            wal_limit,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("duet-sqlite-ckpt".into())
            .spawn(move || checkpoint_loop(&conn, &thread_shared))
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread (after a last checkpoint) and joins it. Idempotent.
    fn stop(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.1 = true;
        }
        self.shared.wake.notify_one();
        if let Some(handle) = thread.take()
            && handle.join().is_err()
        {
            tracing::error!("sqlite store: the checkpoint thread panicked");
        }
    }
}

/// Checkpoints after commits, at most every [`CHECKPOINT_INTERVAL`] (and every
/// [`CHECKPOINT_IDLE`] regardless); a last one when stopped.
fn checkpoint_loop(conn: &Connection, shared: &CheckpointShared) {
    let mut seen = 0;
    loop {
        let stop = {
            let state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (state, _) = shared
                .wake
                .wait_timeout_while(state, CHECKPOINT_IDLE, |(commits, stop)| {
                    *commits == seen && !*stop
                })
                .unwrap_or_else(PoisonError::into_inner);
            seen = state.0;
            state.1
        };
        let started = Instant::now();
        shared.checkpoint(conn, "checkpointer");
        if stop {
            break;
        }
        // Rest until the interval is over, unless told to stop.
        let state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        let rest = CHECKPOINT_INTERVAL.saturating_sub(started.elapsed());
        drop(
            shared
                .wake
                .wait_timeout_while(state, rest, |(_, stop)| !*stop)
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
    tracing::debug!("sqlite store: checkpointer stopped");
}

#[cfg(test)]
mod tests {
    //! Writer-level checks: jobs are forced into one batch by holding the
    //! writer in a "gate" job until they are all queued.

    use std::sync::atomic::AtomicUsize;

    use duet_store::{NewMessage, SendOutcome};

    use super::*;
    use crate::writes::{self, EnsureAccount, SetProfile};

    const T: u64 = 1_700_000_000_000;

    #[derive(Default)]
    struct Batches {
        sizes: Mutex<Vec<usize>>,
    }

    impl CommitObserver for Batches {
        fn batch_committed(&self, jobs: usize, _latency: Duration) {
            self.sizes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(jobs);
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        writer: Arc<Writer>,
        batches: Arc<Batches>,
    }

    fn open(dir: tempfile::TempDir, cached_accounts: usize, wal_limit: u64) -> Fixture {
        open_with_queue(dir, cached_accounts, wal_limit, 1024)
    }

    fn open_with_queue(
        dir: tempfile::TempDir,
        cached_accounts: usize,
        wal_limit: u64,
        queue: usize,
    ) -> Fixture {
        let path = dir.path().join("duet.db");
        let mut conn = schema::open_writer(&path, wal_limit).expect("open");
        schema::migrate(&mut conn).expect("migrate");
        let recovered = merge::recover(&conn).expect("recover");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)")
            .expect("test table");
        let batches = Arc::new(Batches::default());
        let writer = Writer::start(
            conn,
            &path,
            WriterConfig {
                queue,
                max_batch: 1024,
                cached_accounts,
                wal_limit,
                observer: Some(batches.clone()),
                tail: Arc::new(Tail::default()),
                ids: MsgIds {
                    next: recovered.next_msg_id,
                    merged_below: recovered.next_msg_id,
                    keys_below: recovered.next_msg_id,
                },
                // Merged only when asked: a batch's entries stay in the tail.
                merge: MergePolicy {
                    backlog: usize::MAX,
                    when_idle: None,
                    slice_entries: 8,
                    slice_accounts: 2,
                    limit: 1 << 20,
                },
            },
        )
        .expect("writer");
        Fixture {
            _dir: dir,
            path,
            writer: Arc::new(writer),
            batches,
        }
    }

    fn fixture(cached_accounts: usize) -> Fixture {
        open(
            tempfile::TempDir::new().expect("dir"),
            cached_accounts,
            1 << 26,
        )
    }

    type Gate = (mpsc::Sender<()>, Mutex<mpsc::Receiver<()>>);

    /// A job to enqueue: given the writer, spawns the task that awaits it.
    type Boxed<T> = Box<dyn FnOnce(Arc<Writer>) -> tokio::task::JoinHandle<T>>;

    /// Holds the writer thread until released.
    fn gate(_tx: &mut Tx<'_, '_>, gate: &Gate) -> StoreResult<()> {
        let _ = gate.0.send(());
        let _ = gate.1.lock().unwrap_or_else(PoisonError::into_inner).recv();
        Ok(())
    }

    /// Holds the writer thread in a job (one queue place taken) until the
    /// returned sender is used; the handle ends when that job has committed.
    async fn hold(
        writer: &Arc<Writer>,
    ) -> (mpsc::Sender<()>, tokio::task::JoinHandle<StoreResult<()>>) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let writer = Arc::clone(writer);
        let held = tokio::spawn(async move {
            writer
                .write((started_tx, Mutex::new(release_rx)), gate)
                .await
                .map(|_| ())
        });
        tokio::task::spawn_blocking(move || started_rx.recv())
            .await
            .expect("join")
            .expect("the gate runs");
        (release_tx, held)
    }

    impl Fixture {
        /// Runs `jobs` (each enqueued in order) in one batch; returns their results.
        async fn one_batch<T: Send + 'static>(&self, jobs: Vec<Boxed<T>>) -> Vec<T> {
            let (release_tx, held) = hold(&self.writer).await;
            let before = self.batches.sizes.lock().expect("sizes").len();
            let n = jobs.len();
            let mut handles = Vec::new();
            for job in jobs {
                handles.push(job(Arc::clone(&self.writer)));
                // Enqueue in order: wait until this one holds its queue slot.
                while self.writer.queued.load(Ordering::Acquire) < 1 + handles.len() {
                    tokio::task::yield_now().await;
                }
            }
            release_tx.send(()).expect("release");
            held.await.expect("join").expect("gate");
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("join"));
            }
            let sizes = self.batches.sizes.lock().expect("sizes");
            assert_eq!(
                sizes.get(before + 1..),
                Some(&[n][..]),
                "the jobs were committed as one batch"
            );
            out
        }

        fn count(&self, sql: &str) -> i64 {
            let conn = Connection::open(&self.path).expect("open");
            conn.query_row(sql, [], |r| r.get(0)).expect("count")
        }

        /// Message entries in chunks.
        fn entries(&self) -> usize {
            let conn = Connection::open(&self.path).expect("open");
            let mut s = conn
                .prepare("SELECT first_seq, entries FROM chunks")
                .expect("prepare");
            s.query_map([], |r| {
                let first: i64 = r.get(0)?;
                let blob: Vec<u8> = r.get(1)?;
                Ok(
                    crate::chunk::decode(&blob, u64::try_from(first).unwrap_or_default())
                        .expect("chunk decodes")
                        .len(),
                )
            })
            .expect("query")
            .map(|n| n.expect("row"))
            .sum()
        }
    }

    fn insert_ok(tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<i64> {
        tx.conn()
            .execute("INSERT INTO t (k) VALUES (?1)", [k])
            .map_err(db)?;
        Ok(*k)
    }

    fn refuse(_tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<i64> {
        Err(StoreError::UnknownAccount(format!("ghost{k}")))
    }

    fn fail_after_write(tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<i64> {
        insert_ok(tx, k)?;
        Err(StoreError::Backend(format!("boom{k}")))
    }

    fn panic_after_write(tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<i64> {
        insert_ok(tx, k)?;
        panic!("job {k} panics after writing");
    }

    fn panic_before_write(_tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<i64> {
        panic!("job {k} panics before writing");
    }

    fn job<I, W>(input: I, run: WriteFn<I, W>) -> Boxed<StoreResult<W>>
    where
        I: Send + 'static,
        W: Send + 'static,
    {
        Box::new(move |w: Arc<Writer>| {
            tokio::spawn(async move { w.write(input, run).await.map(|(_, out)| out) })
        })
    }

    /// A write that finds the queue full fails at once with `Overloaded`
    /// (it waits for nothing, so it cannot overtake an earlier write) and
    /// leaves nothing; the queued writes commit, and a place is free again
    /// once they are done.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let f = open_with_queue(tempfile::TempDir::new().expect("dir"), 16, 1 << 26, 4);
        // The gate holds the writer with one place taken; three more fill the queue.
        let (release_tx, held) = hold(&f.writer).await;
        let mut queued = Vec::new();
        for k in 1..=3 {
            queued.push(job(k, insert_ok)(Arc::clone(&f.writer)));
            while f.writer.queued.load(Ordering::Acquire) < 1 + queued.len() {
                tokio::task::yield_now().await;
            }
        }
        let refused = f.writer.write(99_i64, insert_ok).await;
        assert_eq!(refused.map(|(_, k)| k), Err(StoreError::Overloaded));
        release_tx.send(()).expect("release");
        held.await.expect("join").expect("gate");
        for (k, h) in (1..=3).zip(queued) {
            assert_eq!(h.await.expect("join"), Ok(k), "queued write {k} commits");
        }
        assert_eq!(
            f.count("SELECT count(*) FROM t"),
            3,
            "nothing of the refused write"
        );
        assert_eq!(
            f.writer.write(100_i64, insert_ok).await.map(|(_, k)| k),
            Ok(100),
            "places come back once the queued writes are done"
        );
    }

    /// Refused jobs and jobs that fail (or panic) after writing each fail
    /// alone; everything else in their batch commits; nothing of theirs stays.
    // Current-thread runtime: `one_batch` enqueues jobs in a fixed order by
    // letting each spawned job run its whole first poll (take a queue slot and
    // enqueue) before spawning the next; a second worker thread races that.
    #[tokio::test]
    async fn failing_jobs_fail_alone_without_savepoints() {
        let f = fixture(16);
        let plan: Vec<(i64, WriteFn<i64, i64>)> = vec![
            (1, insert_ok),
            (2, fail_after_write),
            (3, insert_ok),
            (4, refuse),
            (5, insert_ok),
            (6, panic_after_write),
            (7, panic_before_write),
            (8, insert_ok),
            (9, fail_after_write),
        ];
        let jobs = plan.iter().map(|&(k, run)| job(k, run)).collect();
        let results = f.one_batch(jobs).await;
        let ok: Vec<i64> = results.iter().filter_map(|r| r.clone().ok()).collect();
        assert_eq!(ok, vec![1, 3, 5, 8], "the good jobs succeed");
        assert_eq!(results[1], Err(StoreError::Backend("boom2".into())));
        assert_eq!(results[3], Err(StoreError::UnknownAccount("ghost4".into())));
        assert_eq!(
            results[5],
            Err(StoreError::Backend("write job panicked".into()))
        );
        assert_eq!(
            results[6],
            Err(StoreError::Backend("write job panicked".into()))
        );
        assert_eq!(results[8], Err(StoreError::Backend("boom9".into())));
        assert_eq!(f.count("SELECT count(*) FROM t"), 4, "only their rows");
        assert_eq!(
            f.count("SELECT count(*) FROM t WHERE k IN (1, 3, 5, 8)"),
            4,
            "exactly the good jobs' rows"
        );
        f.writer.close();
    }

    fn text(from: &str, to: &str, seq: u32) -> NewMessage {
        NewMessage::text(from, to, seq, 7, T, &format!("{from}->{to} #{seq}"))
    }

    /// A job's result, with a send's outcome if it is a send.
    type Sent = StoreResult<Option<SendOutcome>>;

    /// `job` as a job of a batch of sends and other writes.
    fn other<T: Send + 'static>(job: Boxed<StoreResult<T>>) -> Boxed<Sent> {
        Box::new(move |w: Arc<Writer>| {
            let handle = job(w);
            tokio::spawn(async move { handle.await.expect("join").map(|_| None) })
        })
    }

    fn send(msg: NewMessage) -> Boxed<Sent> {
        Box::new(move |w: Arc<Writer>| {
            tokio::spawn(async move {
                w.write(msg, writes::send)
                    .await
                    .map(|(msg, out)| Some(writes::send_outcome(msg, out)))
            })
        })
    }

    fn ensure(user: &str) -> Boxed<Sent> {
        other(job(
            EnsureAccount {
                user: user.into(),
                now_ms: T,
            },
            writes::ensure_account,
        ))
    }

    /// A stored send's (recipient entry, sender entry, nick).
    fn stored(out: &Sent) -> (u64, Option<u64>, String) {
        match out {
            Ok(Some(SendOutcome::Stored {
                message,
                recipient_seq,
                sender_seq,
                ..
            })) => (*recipient_seq, *sender_seq, message.nick.clone()),
            unexpected => panic!("expected a stored send, got {unexpected:?}"),
        }
    }

    fn heads(f: &Fixture) -> Vec<(String, i64)> {
        let conn = Connection::open(&f.path).expect("open");
        let mut stmt = conn
            .prepare(
                "SELECT a.user_id, COALESCE(h.head, 0) FROM accounts a \
                 LEFT JOIN heads h ON h.uid = a.uid ORDER BY a.user_id",
            )
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// Within one batch, the account state seen by each job includes the
    /// earlier jobs' changes (new accounts, profiles, heads), but never those
    /// of a job that failed, refused or dirty; with a cache of two accounts
    /// for four users, entries to evicted accounts still number right; the
    /// heads written back are the last numbers given, and survive a reopen.
    // Current-thread runtime: `one_batch` enqueues jobs in a fixed order by
    // letting each spawned job run its whole first poll (take a queue slot and
    // enqueue) before spawning the next; a second worker thread races that.
    #[tokio::test]
    async fn account_state_follows_the_batch() {
        let dir = tempfile::TempDir::new().expect("dir");
        let f = open(dir, 2, 1 << 26);
        let setup = f
            .one_batch(vec![ensure("alice"), ensure("bob"), ensure("carol")])
            .await;
        assert!(setup.iter().all(Result::is_ok));

        let results = f
            .one_batch(vec![
                send(text("alice", "bob", 1)),
                other(job(1, fail_after_write)),
                // `dave` is created in this batch, then written to.
                ensure("dave"),
                send(text("bob", "dave", 2)),
                send(text("alice", "ghost", 3)),
                other(job(
                    SetProfile {
                        user: "alice".into(),
                        nick: Some("Al".into()),
                        face_url: None,
                        now_ms: T,
                    },
                    writes::set_profile,
                )),
                other(job(2, panic_after_write)),
                send(text("alice", "carol", 4)),
                send(text("carol", "alice", 5)),
                send(text("dave", "alice", 6)),
                // A retry of #1 in the same batch: the original, no numbers taken.
                send(text("alice", "bob", 1)),
            ])
            .await;
        assert_eq!(stored(&results[0]), (1, Some(1), String::new()));
        assert!(results[1].is_err() && results[6].is_err());
        assert_eq!(stored(&results[3]), (1, Some(2), String::new()));
        assert_eq!(results[4], Err(StoreError::UnknownAccount("ghost".into())));
        assert!(matches!(results[2], Ok(None)) && matches!(results[5], Ok(None)));
        assert_eq!(
            stored(&results[7]),
            (1, Some(2), "Al".into()),
            "the new nick is seen by later jobs of the batch"
        );
        assert_eq!(stored(&results[8]), (3, Some(2), String::new()));
        assert_eq!(stored(&results[9]), (4, Some(2), String::new()));
        match &results[10] {
            Ok(Some(SendOutcome::Duplicate {
                sender_entry_seq, ..
            })) => assert_eq!(*sender_entry_seq, Some(1)),
            unexpected => panic!("expected a duplicate, got {unexpected:?}"),
        }
        let expected = vec![
            ("alice".to_owned(), 4),
            ("bob".to_owned(), 2),
            ("carol".to_owned(), 2),
            ("dave".to_owned(), 2),
        ];
        assert_eq!(heads(&f), expected, "heads are written back");
        assert_eq!(
            f.count("SELECT count(*) FROM timeline"),
            0,
            "message entries are not rows"
        );
        assert_eq!(f.entries(), 0, "nothing merged yet");
        f.writer.merge_all().await.expect("merge");
        assert_eq!(
            f.entries(),
            10,
            "one entry per number given, merged in slices"
        );
        assert_eq!(
            f.count("SELECT count(*) FROM t"),
            0,
            "failed jobs left nothing"
        );

        // Reopen: the new writer starts from the stored heads.
        f.writer.close();
        let Fixture { _dir: dir, .. } = f;
        let f = open(dir, 2, 1 << 26);
        let results = f
            .one_batch(vec![
                send(text("alice", "bob", 7)),
                send(text("dave", "carol", 8)),
            ])
            .await;
        assert_eq!(stored(&results[0]), (3, Some(5), "Al".into()));
        assert_eq!(stored(&results[1]), (3, Some(3), String::new()));
        f.writer.close();
    }

    fn blob(tx: &mut Tx<'_, '_>, k: &i64) -> StoreResult<()> {
        tx.conn()
            .execute("INSERT INTO t (k, v) VALUES (?1, zeroblob(16384))", [k])
            .map_err(db)?;
        Ok(())
    }

    /// With commits back to back, the WAL still starts over: its file stays
    /// near the limit however much is written.
    // Current-thread runtime: `one_batch` enqueues jobs in a fixed order by
    // letting each spawned job run its whole first poll (take a queue slot and
    // enqueue) before spawning the next; a second worker thread races that.
    #[tokio::test]
    async fn wal_stays_bounded() {
        let limit = 256 * 1024;
        let f = open(tempfile::TempDir::new().expect("dir"), 16, limit);
        let mut wal = f.path.clone().into_os_string();
        wal.push("-wal");
        let largest = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for task in 0..4_i64 {
            let writer = Arc::clone(&f.writer);
            let (wal, largest) = (wal.clone(), Arc::clone(&largest));
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    writer.write(task * 1000 + i, blob).await.expect("write");
                    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    largest.fetch_max(
                        usize::try_from(len).unwrap_or(usize::MAX),
                        Ordering::Relaxed,
                    );
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        let written = 400 * 16384;
        let largest = largest.load(Ordering::Relaxed);
        assert!(
            written > 20 * limit as usize,
            "the test writes far more than the limit"
        );
        assert!(
            largest < 2 * limit as usize,
            "the WAL file stayed bounded (largest {largest} bytes, limit {limit})"
        );
        f.writer.close();
        assert_eq!(f.count("SELECT count(*) FROM t"), 400);
    }

    /// `close` stops both threads and is idempotent.
    #[tokio::test]
    async fn close_stops_writer_and_checkpointer() {
        let f = fixture(16);
        f.writer.write(1, insert_ok).await.expect("write");
        f.writer.close();
        f.writer.close();
        assert!(f.writer.thread.lock().expect("lock").is_none());
        assert!(f.writer.checkpointer.thread.lock().expect("lock").is_none());
        assert_eq!(f.writer.write(2, insert_ok).await, Err(StoreError::Closed));
    }
}
