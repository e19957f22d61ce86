//! The writer thread: one connection, a bounded job queue, group commit.
//!
//! Callers enqueue jobs (closures over the connection). The thread blocks for
//! one job, drains up to `max_batch - 1` more without blocking, and runs them
//! all in one `BEGIN IMMEDIATE … COMMIT`, each inside its own savepoint so a
//! failing job leaves no trace and does not spoil the batch. Only after the
//! `COMMIT` (an fsync in WAL mode with `synchronous=FULL`) are the results
//! delivered: durable before ack (Law 1).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use duet_store::{StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::{Semaphore, oneshot};

use crate::CommitObserver;

/// One unit of work for the writer.
trait Job: Send {
    /// Runs the job's statements; returns whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the job's result, or `failure` if its batch did not commit.
    fn complete(self: Box<Self>, failure: Option<StoreError>);
}

struct Typed<T, F> {
    f: Option<F>,
    out: Option<StoreResult<T>>,
    tx: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(StoreError::Backend("write job panicked".into())));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn complete(self: Box<Self>, failure: Option<StoreError>) {
        let result = match failure {
            Some(e) => Err(e),
            None => self
                .out
                .unwrap_or_else(|| Err(StoreError::Backend("write job did not run".into()))),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.tx.send(result);
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Shutdown,
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    /// Bounds the queue (Law 6); a permit is returned when its job completes.
    permits: Arc<Semaphore>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread owning `conn`.
    pub(crate) fn start(
        conn: Connection,
        queue: usize,
        max_batch: usize,
        observer: Option<Arc<dyn CommitObserver>>,
    ) -> StoreResult<Self> {
        let (tx, rx) = mpsc::channel();
        let permits = Arc::new(Semaphore::new(queue.max(1)));
        let thread_permits = Arc::clone(&permits);
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("duet-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, observer, thread_permits))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            tx,
            permits,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `f` in the writer's next batch; returns its result once committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        // The writer returns the permit when the job is done.
        permit.forget();
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Typed {
            f: Some(f),
            out: None,
            tx,
        });
        if self.tx.send(Msg::Job(job)).is_err() {
            return Err(StoreError::Closed);
        }
        // A dropped job (the writer stopped before taking it) never ran.
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Stops accepting jobs, lets the thread commit what is queued, joins it.
    /// Idempotent; a concurrent second call waits for the first.
    pub(crate) fn close(&self) {
        let mut thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.permits.close();
            let _ = self.tx.send(Msg::Shutdown);
        }
        if let Some(handle) = thread.take()
            && handle.join().is_err()
        {
            tracing::error!("sqlite store: the writer thread panicked");
        }
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    observer: Option<Arc<dyn CommitObserver>>,
    permits: Arc<Semaphore>,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    let mut shutting_down = false;
    loop {
        // Block for the first job, unless shutting down (then finish what is queued).
        let first = if shutting_down {
            rx.try_recv().ok()
        } else {
            rx.recv().ok()
        };
        match first {
            None => break,
            Some(Msg::Shutdown) => {
                shutting_down = true;
                continue;
            }
            Some(Msg::Job(job)) => batch.push(job),
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown) => shutting_down = true,
                Err(_) => break,
            }
        }
        let jobs = batch.len();
        let started = Instant::now();
        commit_batch(&conn, &mut batch, started, observer.as_deref());
        permits.add_permits(jobs);
    }
    tracing::debug!("sqlite store: writer stopped");
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs and commits one batch, tells the observer, then completes every job
/// (emptying `batch`): whoever sees an ack also sees the commit counted.
fn commit_batch(
    conn: &Connection,
    batch: &mut Vec<Box<dyn Job>>,
    started: Instant,
    observer: Option<&dyn CommitObserver>,
) {
    let outcome = run_batch(conn, batch);
    match outcome {
        Ok(()) => {
            if let Some(observer) = observer {
                observer.batch_committed(batch.len(), started.elapsed());
            }
            for job in batch.drain(..) {
                job.complete(None);
            }
        }
        Err(e) => {
            tracing::error!(jobs = batch.len(), error = %e, "sqlite store: batch failed");
            if !conn.is_autocommit()
                && let Err(e) = exec(conn, "ROLLBACK")
            {
                tracing::error!(error = %e, "sqlite store: rollback failed");
            }
            let failure = StoreError::Backend(e.to_string());
            for job in batch.drain(..) {
                job.complete(Some(failure.clone()));
            }
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    exec(conn, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        exec(conn, "SAVEPOINT job")?;
        if !job.run(conn) {
            exec(conn, "ROLLBACK TO job")?;
        }
        exec(conn, "RELEASE job")?;
    }
    exec(conn, "COMMIT")
}
