//! Write throughput on a real PostgreSQL server (ignored by default). Run with:
//! `cargo test -p duet-store-postgres --release --test throughput -- --ignored --nocapture`
//!
//! 10,000 sends between 1,000 users by `DUET_BENCH_SENDERS` concurrent senders
//! (default 8), each send awaited before the sender's next one, through one
//! store with a pool of `DUET_BENCH_POOL` connections (default 16).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Schemas, connect};
use duet_proto::MsgElem;
use duet_store::{NewMessage, SendOutcome, SenderCopy, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn send_throughput() {
    const USERS: usize = 1000;
    const SENDS: usize = 10_000;
    let senders = env_usize("DUET_BENCH_SENDERS", 8);
    let pool = env_usize("DUET_BENCH_POOL", 16);
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let store = Arc::new(connect(schemas.url(), &schema, pool).await);
            for u in 0..USERS {
                store
                    .ensure_account(&format!("u{u}"), 0)
                    .await
                    .unwrap_or_else(|e| panic!("account: {e}"));
            }
            let body = vec![MsgElem::text("hello, this is a typical short chat message")];
            let body_json = serde_json::to_string(&body).unwrap_or_else(|e| panic!("json: {e}"));
            let next = Arc::new(AtomicU64::new(0));
            let worst_us = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..senders {
                let (store, next, worst_us) = (store.clone(), next.clone(), worst_us.clone());
                let (body, body_json) = (body.clone(), body_json.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if n >= SENDS {
                            break;
                        }
                        let msg = NewMessage {
                            from: format!("u{}", n % USERS),
                            to: format!("u{}", (n * 7 + 1) % USERS),
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
                        let t = Instant::now();
                        match store.send(msg).await {
                            Ok(SendOutcome::Stored { .. }) => {}
                            other => panic!("send {n}: {other:?}"),
                        }
                        worst_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("task: {e}"));
            }
            let elapsed = started.elapsed();
            println!(
                "postgres: {SENDS} sends, {senders} concurrent senders, pool {pool}: {elapsed:?}, \
                 {:.0} msgs/s, mean latency {:?}, worst {:?}",
                SENDS as f64 / elapsed.as_secs_f64(),
                elapsed * senders as u32 / SENDS as u32,
                Duration::from_micros(worst_us.load(Ordering::Relaxed)),
            );

            let started = Instant::now();
            for u in 0..200 {
                let u = format!("u{u}");
                let head = store.head(&u).await.unwrap_or_else(|e| panic!("head: {e}"));
                store
                    .sync(&u, 0, head, 20, u32::MAX)
                    .await
                    .unwrap_or_else(|e| panic!("sync: {e}"));
                store
                    .history(&u, "u8", None, 20)
                    .await
                    .unwrap_or_else(|e| panic!("history: {e}"));
                store
                    .conversations(&u, 0, 50)
                    .await
                    .unwrap_or_else(|e| panic!("conversations: {e}"));
            }
            println!(
                "200 × (head+sync+history+conversations) in {:?}",
                started.elapsed()
            );
            store.close().await;
        })
        .await;
}
