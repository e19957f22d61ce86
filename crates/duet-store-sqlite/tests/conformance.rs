//! The store conformance suite, plus SQLite-specific checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duet_store::conformance::{self, StoreFactory};
use duet_store::{NewMessage, SendOutcome, Store, StoreError};
use duet_store_sqlite::{CommitObserver, SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// When the stores of a factory merge their tail of message entries into
/// chunks: every read path is checked with the entries merged, waiting, and
/// anywhere between.
#[derive(Clone, Copy, Debug)]
enum Merging {
    /// As shipped: after a backlog of entries, and whenever idle.
    Default,
    /// After every batch: reads find (nearly) everything in chunks.
    Always,
    /// Only when a sweep asks: reads find everything in the tail.
    Never,
}

fn options(path: std::path::PathBuf, merging: Merging) -> SqliteOptions {
    let mut opts = SqliteOptions::new(path);
    match merging {
        Merging::Default => {}
        Merging::Always => opts.merge_backlog = 0,
        Merging::Never => {
            opts.merge_backlog = usize::MAX;
            opts.merge_when_idle = false;
        }
    }
    opts
}

/// Makes each store in its own temporary directory, kept until the factory drops.
struct Factory {
    dirs: Mutex<Vec<TempDir>>,
    merging: Merging,
}

impl Factory {
    fn new(merging: Merging) -> Self {
        Factory {
            dirs: Mutex::default(),
            merging,
        }
    }
}

#[async_trait::async_trait]
impl StoreFactory for Factory {
    async fn fresh(&self) -> Box<dyn Store> {
        let dir = TempDir::new().expect("temp dir");
        let store = SqliteStore::open(options(dir.path().join("duet.db"), self.merging))
            .expect("open sqlite store");
        self.dirs.lock().expect("dirs").push(dir);
        Box::new(store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    conformance::run_all(&Factory::new(Merging::Default)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_entries_merged_after_every_batch() {
    conformance::run_all(&Factory::new(Merging::Always)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_entries_never_merged() {
    conformance::run_all(&Factory::new(Merging::Never)).await;
}

/// The suite also passes on a current-thread runtime (reads use spawn_blocking).
#[tokio::test]
async fn conformance_concurrency_current_thread() {
    let factory = Factory::new(Merging::Default);
    conformance::concurrent_sends_gap_free(&*factory.fresh().await).await;
    conformance::sync_cuts_per_conversation(&*factory.fresh().await).await;
}

fn text(from: &str, to: &str, seq: u32, now_ms: u64) -> NewMessage {
    NewMessage::text(
        from,
        to,
        seq,
        seq ^ 0xabcd,
        now_ms,
        &format!("{from}->{to} #{seq}"),
    )
}

const T: u64 = 1_700_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_close_and_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let (epoch, heads, sent) = {
        let store = SqliteStore::open(SqliteOptions::new(&path)).expect("open");
        for u in ["alice", "bob"] {
            store.ensure_account(u, T).await.expect("account");
        }
        store
            .set_profile("alice", Some("Al".into()), None, T)
            .await
            .expect("profile");
        let mut sent = Vec::new();
        for i in 0..10 {
            let (from, to) = if i % 2 == 0 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            let out = store
                .send(text(from, to, i, T + u64::from(i) * 1000))
                .await
                .expect("send");
            sent.push(out.message().clone());
        }
        store
            .mark_read("bob", "alice", T / 1000 + 20, T + 20_000)
            .await
            .expect("read");
        let heads = (
            store.head("alice").await.expect("head"),
            store.head("bob").await.expect("head"),
        );
        let epoch = store.epoch().to_owned();
        store.close();
        store.close(); // idempotent
        assert_eq!(
            store.send(text("alice", "bob", 99, T)).await,
            Err(StoreError::Closed),
            "writes after close fail with Closed"
        );
        assert_eq!(
            store.head("alice").await,
            Ok(heads.0),
            "reads still work after close"
        );
        (epoch, heads, sent)
    };

    let store = SqliteStore::open(SqliteOptions::new(&path)).expect("reopen");
    assert_eq!(store.epoch(), epoch, "the epoch survives a reopen");
    assert_eq!(
        store.head("alice").await.expect("head"),
        heads.0,
        "alice's head survives"
    );
    assert_eq!(
        store.head("bob").await.expect("head"),
        heads.1,
        "bob's head survives"
    );
    let alice = store
        .account("alice")
        .await
        .expect("account")
        .expect("alice exists");
    assert_eq!(alice.nick, "Al", "profiles survive");
    let history = store
        .history("alice", "bob", None, 100)
        .await
        .expect("history");
    let mut got: Vec<_> = history.into_iter().map(|i| i.message).collect();
    got.reverse();
    assert_eq!(got, sent, "messages survive");
    let conv = store
        .conversations("alice", 0, 10)
        .await
        .expect("conversations");
    assert_eq!(conv.len(), 1);
    assert_eq!(
        conv[0].peer_read_time,
        T / 1000 + 20,
        "read positions survive"
    );
    // Numbering continues and duplicates are still recognised.
    match store
        .send(text("alice", "bob", 0, T + 99_000))
        .await
        .expect("retry")
    {
        SendOutcome::Duplicate { message, .. } => assert_eq!(message, sent[0]),
        other => panic!("a retry after reopen must be a duplicate, got {other:?}"),
    }
    let out = store
        .send(text("alice", "bob", 100, T + 100_000))
        .await
        .expect("send");
    match out {
        SendOutcome::Stored {
            recipient_seq,
            sender_seq,
            ..
        } => {
            assert_eq!(recipient_seq, heads.1 + 1);
            assert_eq!(sender_seq, Some(heads.0 + 1));
        }
        other => panic!("expected Stored, got {other:?}"),
    }
}

#[derive(Default)]
struct Counter {
    batches: AtomicUsize,
    jobs: AtomicUsize,
    largest: AtomicUsize,
}

impl CommitObserver for Counter {
    fn batch_committed(&self, jobs: usize, _latency: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs, Ordering::Relaxed);
        self.largest.fetch_max(jobs, Ordering::Relaxed);
    }
}

/// Concurrent sends, some to unknown users: the failing jobs roll back alone,
/// the others commit in shared batches, and timelines stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_jobs_do_not_spoil_their_batch() {
    let dir = TempDir::new().expect("temp dir");
    let counter = Arc::new(Counter::default());
    let mut opts = SqliteOptions::new(dir.path().join("duet.db"));
    opts.observer = Some(counter.clone());
    let store = Arc::new(SqliteStore::open(opts).expect("open"));
    let users = ["alice", "bob", "carol"];
    for u in users {
        store.ensure_account(u, T).await.expect("account");
    }
    let before = counter.jobs.load(Ordering::Relaxed);

    const N: u32 = 600;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        let from = users[i as usize % 3];
        let to = if i % 5 == 0 {
            format!("ghost{i}")
        } else {
            users[(i as usize + 1) % 3].to_owned()
        };
        tasks.push(tokio::spawn(async move {
            let r = store.send(text(from, &to, i, T + u64::from(i))).await;
            (to, r)
        }));
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    for t in tasks {
        let (to, r) = t.await.expect("task");
        match r {
            Ok(SendOutcome::Stored { .. }) => ok += 1,
            Err(StoreError::UnknownAccount(who)) => {
                assert_eq!(who, to, "the error names the unknown recipient");
                failed += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(failed, u64::from(N / 5), "every send to a ghost fails");
    assert_eq!(ok + failed, u64::from(N));

    let mut total = 0;
    for u in users {
        let head = store.head(u).await.expect("head");
        total += head;
        let entries = store
            .sync(u, 0, head, u32::MAX, u32::MAX)
            .await
            .expect("sync");
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=head).collect::<Vec<_>>(),
            "{u}'s timeline is gap-free"
        );
    }
    assert_eq!(
        total,
        2 * ok,
        "each stored send wrote two entries, failed ones none"
    );
    for i in (0..N).step_by(5) {
        assert_eq!(store.head(&format!("ghost{i}")).await, Ok(0));
        assert_eq!(store.account(&format!("ghost{i}")).await, Ok(None));
    }

    let batches = counter.batches.load(Ordering::Relaxed);
    let jobs = counter.jobs.load(Ordering::Relaxed) - before;
    assert_eq!(jobs, N as usize, "the observer saw every job");
    assert!(
        counter.largest.load(Ordering::Relaxed) > 1,
        "concurrent writes are grouped ({batches} batches for {jobs} jobs)"
    );
}

/// `u64::MAX` bounds (clients may send them) are handled, not rejected.
#[tokio::test]
async fn huge_bounds_are_clamped() {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("duet.db"))).expect("open");
    for u in ["alice", "bob"] {
        store.ensure_account(u, T).await.expect("account");
    }
    store.send(text("alice", "bob", 1, T)).await.expect("send");
    assert_eq!(
        store
            .sync("bob", 0, u64::MAX, 10, u32::MAX)
            .await
            .expect("sync")
            .len(),
        1
    );
    assert_eq!(
        store
            .sync("bob", 0, u64::MAX, 0, u32::MAX)
            .await
            .expect("sync")
            .len(),
        0
    );
    assert_eq!(
        store
            .history("bob", "alice", Some(u64::MAX), u32::MAX)
            .await
            .expect("history")
            .len(),
        1
    );
    assert_eq!(
        store
            .conversations("bob", u32::MAX, u32::MAX)
            .await
            .expect("conv")
            .len(),
        0
    );
}

/// Every timeline of `users` is numbered 1..=head without gaps; returns the heads.
async fn assert_gap_free(store: &SqliteStore, users: &[&str]) -> Vec<u64> {
    let mut heads = Vec::new();
    for u in users {
        heads.push(assert_whole_to_head(store, u, "timeline is gap-free").await);
    }
    heads
}

/// `u`'s timeline read from 0 to its head holds entries 1..=head, once each
/// and in order; returns the head.
async fn assert_whole_to_head(store: &SqliteStore, u: &str, what: &str) -> u64 {
    let head = store.head(u).await.expect("head");
    let entries = store
        .sync(u, 0, head, u32::MAX, u32::MAX)
        .await
        .expect("sync");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "{u}'s {what}");
    head
}

/// Another connection writing to the database (another process, an operator's
/// script) is noticed: the writer's account cache is dropped, so numbers and
/// profiles come from the rows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_connection_are_seen() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let store = SqliteStore::open(SqliteOptions::new(&path)).expect("open");
    for u in ["alice", "bob"] {
        store.ensure_account(u, T).await.expect("account");
    }
    for i in 0..3 {
        store.send(text("alice", "bob", i, T)).await.expect("send");
    }
    assert_eq!(store.head("bob").await, Ok(3));

    // Another writer gives bob an entry (the way the store does) and renames alice.
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    other
        .execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO heads (uid, head)
               SELECT uid, 1 FROM accounts WHERE user_id = 'bob'
               ON CONFLICT (uid) DO UPDATE SET head = head + 1;
             INSERT INTO timeline (uid, seq, ts, kind, peer_uid, payload)
               SELECT a.uid, h.head, 0, 2, (SELECT uid FROM accounts WHERE user_id = 'alice'),
                      '{\"reader\":\"bob\",\"peer\":\"alice\",\"read_time\":0}'
               FROM accounts a JOIN heads h ON h.uid = a.uid WHERE a.user_id = 'bob';
             UPDATE accounts SET nick = 'Alice2' WHERE user_id = 'alice';
             COMMIT;",
        )
        .expect("external write");

    match store.send(text("alice", "bob", 3, T)).await.expect("send") {
        SendOutcome::Stored {
            message,
            recipient_seq,
            sender_seq,
            ..
        } => {
            assert_eq!(recipient_seq, 5, "bob's number follows the other writer's");
            assert_eq!(sender_seq, Some(4));
            assert_eq!(
                message.nick, "Alice2",
                "the profile changed elsewhere is used"
            );
        }
        other => panic!("expected Stored, got {other:?}"),
    }
    assert_gap_free(&store, &["alice", "bob"]).await;
}

/// A write that fails after writing (here: a read report whose peer's next
/// timeline row is already taken, as by corruption) fails alone even though
/// writes run without savepoints: the sends sharing its batch commit (their
/// entries join the tail once, from the re-run), nothing of it remains, and
/// numbering stays gap-free, also after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_failing_after_writing_fails_alone() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let counter = Arc::new(Counter::default());
    let mut opts = options(path.clone(), Merging::Never);
    opts.observer = Some(counter.clone());
    let store = Arc::new(SqliteStore::open(opts).expect("open"));
    let users = ["alice", "bob", "carol"];
    for u in users {
        store.ensure_account(u, T).await.expect("account");
    }
    store
        .send(text("bob", "carol", 1000, T))
        .await
        .expect("send");
    let bob_head = store.head("bob").await.expect("head");
    let carol_head = store.head("carol").await.expect("head");

    // Take bob's next number behind the store's back.
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let plant = format!(
        "INSERT INTO timeline (uid, seq, ts, kind, peer_uid, payload) \
         SELECT uid, {}, 0, 2, 0, '{{}}' FROM accounts WHERE user_id = 'bob'",
        bob_head + 1
    );
    other.execute_batch(&plant).expect("plant a row");

    const N: u32 = 300;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            // Carol reads bob's message among many sends between alice and
            // carol: her entry is written, then bob's collides.
            let r = match i {
                150 => store
                    .mark_read("carol", "bob", T / 1000, T)
                    .await
                    .map(|_| ()),
                i if i % 2 == 0 => store
                    .send(text("alice", "carol", i, T + u64::from(i)))
                    .await
                    .map(|_| ()),
                _ => store
                    .send(text("carol", "alice", i, T + u64::from(i)))
                    .await
                    .map(|_| ()),
            };
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("task");
        match (i, r) {
            (150, Err(StoreError::Backend(_))) => {}
            (150, other) => panic!("the read report must fail, got {other:?}"),
            (_, Ok(())) => {}
            (i, other) => panic!("send {i} must be stored, got {other:?}"),
        }
    }
    let heads = assert_gap_free(&store, &["alice", "carol"]).await;
    assert_eq!(
        heads[1],
        carol_head + u64::from(N) - 1,
        "carol's entries: the sends only"
    );
    assert_eq!(
        store.head("bob").await,
        Ok(bob_head),
        "bob's head did not move"
    );
    let history = store
        .history("carol", "alice", None, 1000)
        .await
        .expect("history");
    assert_eq!(history.len(), N as usize - 1, "every send, once");
    let conv = store.conversations("carol", 0, 10).await.expect("convs");
    let from_bob = conv.iter().find(|c| c.peer == "bob").expect("bob's view");
    assert_eq!(from_bob.unread, 1, "the failed read report left nothing");

    // Repaired, the same read report takes the number it could not take.
    other
        .execute_batch(&format!(
            "DELETE FROM timeline WHERE uid = (SELECT uid FROM accounts WHERE user_id = 'bob') \
             AND seq = {}",
            bob_head + 1
        ))
        .expect("repair");
    let read = store
        .mark_read("carol", "bob", T / 1000, T)
        .await
        .expect("read report");
    assert_eq!(read.peer_entry.map(|e| e.seq), Some(bob_head + 1));
    let heads = assert_gap_free(&store, &users).await;

    // The numbers survive a reopen (the tail merged by recovery) and continue.
    store.close();
    drop(store);
    let store = SqliteStore::open(SqliteOptions::new(&path)).expect("reopen");
    assert_eq!(assert_gap_free(&store, &users).await, heads);
    match store
        .send(text("alice", "bob", 5000, T))
        .await
        .expect("send")
    {
        SendOutcome::Stored {
            recipient_seq,
            sender_seq,
            ..
        } => {
            assert_eq!(recipient_seq, heads[1] + 1);
            assert_eq!(sender_seq, Some(heads[0] + 1));
        }
        other => panic!("expected Stored, got {other:?}"),
    }
}

/// Rows of `message_keys` and `meta.keys_below`, read behind the store's back.
fn stored_keys(path: &std::path::Path) -> (i64, Option<String>) {
    let conn = rusqlite::Connection::open(path).expect("second connection");
    let rows = conn
        .query_row("SELECT count(*) FROM message_keys", [], |r| r.get(0))
        .expect("count keys");
    let below = conn
        .query_row("SELECT value FROM meta WHERE key = 'keys_below'", [], |r| {
            r.get(0)
        })
        .ok();
    (rows, below)
}

/// Idempotency keys wait in the writer's memory: a store that stops with
/// keys not yet written loses none (recovery writes them at open), a retry
/// finds its original wherever its key is, and a swept message takes its
/// key with it (the same ids then make a new message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_survive_a_stop_and_leave_with_their_messages() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let old = T - 10 * 86_400_000;
    {
        let store = SqliteStore::open(options(path.clone(), Merging::Never)).expect("open");
        for u in ["alice", "bob"] {
            store.ensure_account(u, T).await.expect("account");
        }
        store
            .send(text("alice", "bob", 1, old))
            .await
            .expect("send");
        store.send(text("bob", "alice", 2, T)).await.expect("send");
        match store.send(text("alice", "bob", 1, T)).await.expect("retry") {
            SendOutcome::Duplicate { message, .. } => assert_eq!(message.msg_seq, 1),
            other => panic!("a retry of a key in memory is a duplicate, got {other:?}"),
        }
        store.close();
    }
    assert_eq!(
        stored_keys(&path).0,
        0,
        "the keys were only in memory when the store stopped"
    );

    let store = SqliteStore::open(options(path.clone(), Merging::Never)).expect("reopen");
    let (rows, below) = stored_keys(&path);
    assert_eq!(rows, 2, "recovery wrote both keys");
    assert_eq!(below.as_deref(), Some("3"), "past the newest message");
    for (from, to, seq) in [("alice", "bob", 1), ("bob", "alice", 2)] {
        match store.send(text(from, to, seq, T)).await.expect("retry") {
            SendOutcome::Duplicate { message, .. } => {
                assert_eq!((message.from.as_str(), message.msg_seq), (from, seq));
            }
            other => panic!("a retry after a stop is a duplicate, got {other:?}"),
        }
    }
    let head = store.head("bob").await.expect("head");

    // A new message's key waits in memory; the sweep writes it out first.
    store.send(text("alice", "bob", 3, T)).await.expect("send");
    assert_eq!(stored_keys(&path).0, 2);
    let report = store.sweep(T - 86_400_000, 100).await.expect("sweep");
    assert_eq!(report.messages, 1, "the old message expired");
    assert_eq!(
        stored_keys(&path),
        (2, Some("4".to_owned())),
        "the expired message's key left, the new one was written"
    );
    match store.send(text("alice", "bob", 1, T)).await.expect("send") {
        SendOutcome::Stored { recipient_seq, .. } => assert_eq!(recipient_seq, head + 2),
        other => panic!("the ids of a swept message make a new one, got {other:?}"),
    }
    match store.send(text("alice", "bob", 3, T)).await.expect("retry") {
        SendOutcome::Duplicate { message, .. } => assert_eq!(message.msg_seq, 3),
        other => panic!("a retry of a written key is a duplicate, got {other:?}"),
    }
}

/// While merging fails (here a damaged chunk in one of the views it would
/// write), entries pile up in the tail until its limit; then sends fail
/// with `Overloaded` and store nothing. Once the chunk is repaired, merges
/// go through and every acknowledged message is there, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_merge_fills_the_tail_then_sends_are_refused() {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let mut opts = options(path.clone(), Merging::Always);
    opts.tail_limit = 20;
    let store = SqliteStore::open(opts).expect("open");
    for u in ["alice", "bob"] {
        store.ensure_account(u, T).await.expect("account");
    }
    store.send(text("alice", "bob", 0, T)).await.expect("send");
    // A sweep merges the tail first (and here expires nothing).
    store.sweep(0, 10).await.expect("merge");
    let other = rusqlite::Connection::open(&path).expect("second connection");
    other
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    other
        .execute_batch(
            "INSERT INTO chunks (uid, peer_uid, first_seq, last_seq, entries) \
             SELECT b.uid, a.uid, 1000, 1000, x'09' \
             FROM accounts b, accounts a WHERE b.user_id = 'bob' AND a.user_id = 'alice'",
        )
        .expect("plant a damaged chunk");

    let mut acked = 1;
    let refused = loop {
        match store.send(text("alice", "bob", acked, T)).await {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked <= 11, "the tail must fill up (2 entries a message)");
    };
    assert_eq!(refused, StoreError::Overloaded);
    assert_eq!(acked, 11, "1 merged message, then 10 waiting (20 entries)");
    assert_eq!(
        store.head("bob").await,
        Ok(11),
        "the refused send took no number"
    );

    other
        .execute_batch("DELETE FROM chunks WHERE first_seq = 1000")
        .expect("repair");
    store.sweep(0, 10).await.expect("merge and sweep");
    store
        .send(text("alice", "bob", acked, T))
        .await
        .expect("sends are taken again");
    let heads = assert_gap_free(&store, &["alice", "bob"]).await;
    assert_eq!(heads, vec![12, 12]);
    let history = store
        .history("bob", "alice", None, 100)
        .await
        .expect("history");
    assert_eq!(history.len(), 12, "every acknowledged message, once");
}

/// Readers racing the writer's merges (tiny slices, so an account's
/// entries are often half merged): every sync of a whole timeline is
/// gap-free and holds each entry once, every history page is in order
/// without repeats, whatever moment the reader hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_racing_merges_see_every_entry_once() {
    let dir = TempDir::new().expect("temp dir");
    let mut opts = SqliteOptions::new(dir.path().join("duet.db"));
    opts.merge_backlog = 24;
    opts.merge_slice = 7;
    let store = Arc::new(SqliteStore::open(opts).expect("open"));
    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    for u in &users {
        store.ensure_account(u, T).await.expect("account");
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, from) in users.iter().enumerate() {
        let (store, users, from) = (Arc::clone(&store), users.clone(), from.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..250u32 {
                let to = &users[(i + 1 + n as usize % 5) % 6];
                store
                    .send(text(&from, to, n, T + u64::from(n)))
                    .await
                    .expect("send");
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..3usize {
        let (store, users, done) = (Arc::clone(&store), users.clone(), Arc::clone(&done));
        readers.push(tokio::spawn(async move {
            let mut checks = 0u32;
            while !done.load(Ordering::Acquire) || checks < 20 {
                let u = &users[(r + checks as usize) % 6];
                assert_whole_to_head(&store, u, "timeline up to its head, once each").await;
                let peer = &users[(r + 1 + checks as usize) % 6];
                if peer != u {
                    let h = store.history(u, peer, None, 100).await.expect("history");
                    assert!(
                        h.windows(2).all(|w| w[0].seq > w[1].seq),
                        "history newest first without repeats"
                    );
                }
                checks += 1;
            }
            checks
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.await.expect("reader") >= 20);
    }
    // Every message is in its recipient's and its sender's history.
    let mut total = 0;
    for u in &users {
        for p in users.iter().filter(|p| *p != u) {
            total += store
                .history(u, p, None, 1000)
                .await
                .expect("history")
                .len();
        }
    }
    assert_eq!(total, 2 * 6 * 250, "each message on both sides");
    assert_gap_free(
        &store,
        &users.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
}

/// Callers are answered in commit order, and a caller whose task is out of
/// tokio's scheduling budget still sees its answers in that order: here one
/// task has 64 sends in flight (as a connection of the gateway has) and
/// collects them with two units of budget left. Taken under the budget, the
/// third answer was refused, its future woke itself again behind all the
/// others, and so it came last: its delivery would have overtaken nothing
/// but followed everything.
#[tokio::test(flavor = "current_thread")]
async fn answers_keep_commit_order_when_the_caller_is_out_of_budget() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use std::task::Poll;

    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("duet.db");
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(&path)).expect("open"));
    for u in ["alice", "bob"] {
        store.ensure_account(u, T).await.expect("account");
    }
    let mut inflight = FuturesUnordered::new();
    for i in 0..64u32 {
        let store = Arc::clone(&store);
        inflight.push(async move {
            store.send(text("alice", "bob", i, T)).await.expect("send");
            i
        });
    }
    // One poll: every send joins the writer's queue, in order.
    std::future::poll_fn(|cx| {
        assert!(inflight.poll_next_unpin(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    // Wait (blocking this runtime's only thread) until the writer has
    // answered them all: a write queued after them, from another thread,
    // is answered after them.
    let other = Arc::clone(&store);
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(other.ensure_account("carol", T))
    })
    .join()
    .expect("thread")
    .expect("a later write");
    for _ in 0..126 {
        tokio::task::consume_budget().await;
    }
    let mut order = Vec::new();
    while let Some(i) = inflight.next().await {
        order.push(i);
    }
    assert_eq!(
        order,
        (0..64).collect::<Vec<_>>(),
        "answers in commit order"
    );
}
