//! Write throughput (ignored by default). Run with:
//! `cargo test -p duet-store-sqlite --release --test throughput -- --ignored --nocapture`
//! (`DUET_BENCH_BATCH=2048` overrides `max_batch`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use duet_proto::MsgElem;
use duet_store::{NewMessage, SenderCopy, Store};
use duet_store_sqlite::{CommitObserver, SqliteOptions, SqliteStore};

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    jobs: AtomicU64,
    busy_us: AtomicU64,
}

impl CommitObserver for Stats {
    fn batch_committed(&self, jobs: usize, latency: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        self.busy_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "benchmark"]
async fn send_throughput() {
    const USERS: usize = 1000;
    const SENDERS: usize = 2000;
    const PER_SENDER: usize = 25;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let stats = Arc::new(Stats::default());
    let mut opts = SqliteOptions::new(dir.path().join("duet.db"));
    opts.observer = Some(stats.clone());
    if let Some(b) = std::env::var("DUET_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        opts.max_batch = b;
    }
    let store = Arc::new(SqliteStore::open(opts).expect("open"));
    for u in 0..USERS {
        store
            .ensure_account(&format!("u{u}"), 0)
            .await
            .expect("account");
    }
    let body = vec![MsgElem::text("hello, this is a typical short chat message")];
    let body_json = serde_json::to_string(&body).expect("json");
    let base = (
        stats.batches.load(Ordering::Relaxed),
        stats.jobs.load(Ordering::Relaxed),
        stats.busy_us.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let store = Arc::clone(&store);
        let (body, body_json) = (body.clone(), body_json.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                let n = s * PER_SENDER + i;
                let msg = NewMessage {
                    from: format!("u{}", s % USERS),
                    to: format!("u{}", (s + 1 + i) % USERS),
                    msg_seq: n as u32,
                    msg_random: 7,
                    msg_time: 1_700_000_000 + n as u64 / 1000,
                    body: body.clone(),
                    body_json: body_json.clone(),
                    cloud_custom_data: String::new(),
                    sender_copy: SenderCopy::Timeline,
                    no_unread: false,
                    no_last_msg: false,
                    now_ms: 1_700_000_000_000 + n as u64,
                };
                store.send(msg).await.expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed();
    let n = SENDERS * PER_SENDER;
    println!(
        "{n} sends in {elapsed:?}: {:.0} msgs/s",
        n as f64 / elapsed.as_secs_f64()
    );
    let batches = stats.batches.load(Ordering::Relaxed) - base.0;
    let jobs = stats.jobs.load(Ordering::Relaxed) - base.1;
    let busy = Duration::from_micros(stats.busy_us.load(Ordering::Relaxed) - base.2);
    println!(
        "{batches} batches, {:.0} jobs/batch, writer busy {busy:?} ({:.0}% of wall time)",
        jobs as f64 / batches.max(1) as f64,
        100.0 * busy.as_secs_f64() / elapsed.as_secs_f64()
    );
    let started = Instant::now();
    for u in 0..200 {
        let u = format!("u{u}");
        let head = store.head(&u).await.expect("head");
        store.sync(&u, 0, head, 20, u32::MAX).await.expect("sync");
        store.history(&u, "u5", None, 20).await.expect("history");
        store.conversations(&u, 0, 50).await.expect("convs");
    }
    println!(
        "200 × (head+sync+history+conversations) in {:?}",
        started.elapsed()
    );
}
