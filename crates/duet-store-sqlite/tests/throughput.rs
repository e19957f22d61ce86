//! Write throughput (ignored by default). Run with:
//! `cargo test -p duet-store-sqlite --release --test throughput -- --ignored --nocapture`
//! (`DUET_BENCH_BATCH=2048` overrides `max_batch`; `DUET_BENCH_USERS`,
//! `DUET_BENCH_SENDERS` and `DUET_BENCH_PER_SENDER` the shape of the load:
//! by default 2000 concurrent senders among 1000 users, 25 sends each;
//! `DUET_BENCH_PEERS` the number of peers each sender cycles through,
//! default 25; 1 gives fixed pairs, as `duet bench online` sends;
//! `DUET_BENCH_PREFIX` is put before every UserID, e.g. `bench-user-`).
//!
//! Prints sends per second, the batches (jobs per batch, mean and longest
//! `BEGIN`→durable `COMMIT`), the latency of single sends (enqueue → ack),
//! and the WAL's size at the end.

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
    longest_us: AtomicU64,
}

impl CommitObserver for Stats {
    fn batch_committed(&self, jobs: usize, latency: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        self.busy_us.fetch_add(us, Ordering::Relaxed);
        self.longest_us.fetch_max(us, Ordering::Relaxed);
    }
}

/// CPU time (user + system) of this process, and of its threads whose name
/// starts with each of `threads`, from `/proc` (zero where unavailable).
fn cpu_times(threads: &[&str]) -> (Duration, Vec<Duration>) {
    // Clock ticks per second: 100 on every Linux this runs on.
    fn ticks(stat: &str) -> Duration {
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
        Duration::from_millis((field(11) + field(12)) * 10)
    }
    let process = std::fs::read_to_string("/proc/self/stat").map_or(Duration::ZERO, |s| ticks(&s));
    let mut per = vec![Duration::ZERO; threads.len()];
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if let Some(i) = threads.iter().position(|t| comm.starts_with(t)) {
                per[i] += std::fs::read_to_string(task.path().join("stat"))
                    .map_or(Duration::ZERO, |s| ticks(&s));
            }
        }
    }
    (process, per)
}

/// The `q` quantile of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "benchmark"]
async fn send_throughput() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let users = env("DUET_BENCH_USERS", 1000);
    let senders = env("DUET_BENCH_SENDERS", 2000);
    let per_sender = env("DUET_BENCH_PER_SENDER", 25);
    let peers = env("DUET_BENCH_PEERS", 25).max(1);
    let prefix = std::env::var("DUET_BENCH_PREFIX").unwrap_or_default();
    let user = move |i: usize| format!("{prefix}u{i}");
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
    let db_path = opts.path.clone();
    let store = Arc::new(SqliteStore::open(opts).expect("open"));
    for u in 0..users {
        store.ensure_account(&user(u), 0).await.expect("account");
    }
    let body = vec![MsgElem::text("hello, this is a typical short chat message")];
    let body_json = serde_json::to_string(&body).expect("json");
    let base = (
        stats.batches.load(Ordering::Relaxed),
        stats.jobs.load(Ordering::Relaxed),
        stats.busy_us.load(Ordering::Relaxed),
    );
    stats.longest_us.store(0, Ordering::Relaxed);
    const THREADS: [&str; 2] = ["duet-sqlite-wri", "duet-sqlite-ckp"];
    let cpu_before = cpu_times(&THREADS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Message times follow the order of the sends, as the server's clock does.
    let clock = Arc::new(AtomicU64::new(0));
    for s in 0..senders {
        let store = Arc::clone(&store);
        let clock = Arc::clone(&clock);
        let user = user.clone();
        let (body, body_json) = (body.clone(), body_json.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_sender);
            for i in 0..per_sender {
                let n = s * per_sender + i;
                let t = clock.fetch_add(1, Ordering::Relaxed);
                let msg = NewMessage {
                    from: user(s % users),
                    to: user((s + 1 + i % peers) % users),
                    msg_seq: n as u32,
                    msg_random: 7,
                    msg_time: 1_700_000_000 + t / 1000,
                    body: body.clone(),
                    body_json: body_json.clone(),
                    cloud_custom_data: String::new(),
                    sender_copy: SenderCopy::Timeline,
                    no_unread: false,
                    no_last_msg: false,
                    now_ms: 1_700_000_000_000 + t,
                };
                let sent = Instant::now();
                store.send(msg).await.expect("send");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    latencies.sort_unstable();
    let elapsed = started.elapsed();
    let cpu_after = cpu_times(&THREADS);
    let n = senders * per_sender;
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
    println!(
        "batch BEGIN→COMMIT: mean {:.1} ms, longest {:.1} ms",
        busy.as_secs_f64() * 1e3 / batches.max(1) as f64,
        stats.longest_us.load(Ordering::Relaxed) as f64 / 1e3
    );
    println!(
        "send enqueue→ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile(&latencies, 0.5).as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        quantile(&latencies, 1.0).as_secs_f64() * 1e3
    );
    let per_msg = |after: Duration, before: Duration| {
        after.saturating_sub(before).as_secs_f64() * 1e6 / n as f64
    };
    println!(
        "CPU per send: process {:.1} µs, writer thread {:.1} µs, checkpointer thread {:.1} µs",
        per_msg(cpu_after.0, cpu_before.0),
        per_msg(cpu_after.1[0], cpu_before.1[0]),
        per_msg(cpu_after.1[1], cpu_before.1[1]),
    );
    let mut wal = db_path.into_os_string();
    wal.push("-wal");
    println!(
        "WAL after the run: {:.1} MiB",
        std::fs::metadata(&wal).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0)
    );
    let started = Instant::now();
    for u in 0..200 {
        let u = user(u);
        let head = store.head(&u).await.expect("head");
        store.sync(&u, 0, head, 20, u32::MAX).await.expect("sync");
        store
            .history(&u, &user(5), None, 20)
            .await
            .expect("history");
        store.conversations(&u, 0, 50).await.expect("convs");
    }
    println!(
        "200 × (head+sync+history+conversations) in {:?}",
        started.elapsed()
    );
}
