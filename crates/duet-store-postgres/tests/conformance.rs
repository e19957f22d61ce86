//! The store conformance suite, and multi-node checks, on a real PostgreSQL
//! server (see `common` for `DUET_TEST_PG_URL`). Each store gets a fresh schema.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{Schemas, connect};
use duet_proto::MsgElem;
use duet_store::conformance::{StoreFactory, run_all};
use duet_store::{NewMessage, SendOutcome, SenderCopy, Store, StoreError};

struct Factory<'a> {
    schemas: &'a Schemas,
}

#[async_trait::async_trait]
impl StoreFactory for Factory<'_> {
    async fn fresh(&self) -> Box<dyn Store> {
        let schema = self.schemas.make();
        Box::new(connect(self.schemas.url(), &schema, 8).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let schemas = Schemas::new();
    schemas.run(run_all(&Factory { schemas: &schemas })).await;
}

const T0_MS: u64 = 1_700_000_000_000;

fn msg(from: &str, to: &str, seq: u32, now_ms: u64) -> NewMessage {
    let body = vec![MsgElem::text(format!("m{seq}"))];
    let body_json = serde_json::to_string(&body).unwrap_or_else(|e| panic!("json: {e}"));
    NewMessage {
        from: from.into(),
        to: to.into(),
        msg_seq: seq,
        msg_random: seq.wrapping_mul(2_654_435_761),
        msg_time: now_ms / 1000,
        body,
        body_json,
        cloud_custom_data: String::new(),
        sender_copy: SenderCopy::Timeline,
        no_unread: false,
        no_last_msg: false,
        now_ms,
    }
}

async fn users(store: &dyn Store, names: &[&str]) {
    for name in names {
        store
            .ensure_account(name, T0_MS)
            .await
            .unwrap_or_else(|e| panic!("ensure_account({name}): {e}"));
    }
}

async fn assert_timeline_gap_free(store: &dyn Store, user: &str) -> u64 {
    let head = store
        .head(user)
        .await
        .unwrap_or_else(|e| panic!("head({user}): {e}"));
    let entries = store
        .sync(user, 0, head, u32::MAX, u32::MAX)
        .await
        .unwrap_or_else(|e| panic!("sync({user}): {e}"));
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "{user}'s timeline must be 1..={head} without gaps"
    );
    head
}

/// Two nodes on one schema (started at the same time, so they race to migrate)
/// share one epoch, see each other's writes, and concurrent sends to one
/// recipient through both stay gap-free; a retry through the other node is a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_database() {
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let (a, b) = tokio::join!(
                connect(schemas.url(), &schema, 8),
                connect(schemas.url(), &schema, 8)
            );
            let (a, b) = (Arc::new(a), Arc::new(b));
            assert_eq!(a.epoch(), b.epoch(), "both nodes must see one epoch");

            let senders = ["s0", "s1", "s2", "s3", "s4", "s5"];
            users(&*a, &senders).await;
            users(&*b, &["bob"]).await;
            for name in senders.iter().chain(["bob"].iter()) {
                assert!(
                    b.account(name).await.ok().flatten().is_some()
                        && a.account(name).await.ok().flatten().is_some(),
                    "both nodes must see account {name}"
                );
            }

            // 300 concurrent sends to bob, alternating nodes.
            const N: u32 = 300;
            let mut tasks = Vec::new();
            for i in 0..N {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                let from = senders[i as usize % senders.len()];
                let m = msg(from, "bob", i + 1, T0_MS + u64::from(i));
                tasks.push(tokio::spawn(async move { node.send(m).await }));
            }
            let mut bob_seqs = Vec::new();
            let mut sender_seqs: HashMap<String, Vec<u64>> = HashMap::new();
            for t in tasks {
                match t.await.unwrap_or_else(|e| panic!("send task: {e}")) {
                    Ok(SendOutcome::Stored {
                        message,
                        recipient_seq,
                        sender_seq,
                        ..
                    }) => {
                        bob_seqs.push(recipient_seq);
                        if let Some(s) = sender_seq {
                            sender_seqs.entry(message.from).or_default().push(s);
                        }
                    }
                    other => panic!("a concurrent send must be stored, got {other:?}"),
                }
            }
            bob_seqs.sort_unstable();
            assert_eq!(
                bob_seqs,
                (1..=u64::from(N)).collect::<Vec<_>>(),
                "bob's entry numbers must be 1..={N}, each once"
            );
            for node in [&a, &b] {
                assert_eq!(
                    assert_timeline_gap_free(&**node, "bob").await,
                    u64::from(N),
                    "both nodes see bob's head"
                );
                for s in senders {
                    let head = assert_timeline_gap_free(&**node, s).await;
                    let mut got = sender_seqs.get(s).cloned().unwrap_or_default();
                    got.sort_unstable();
                    assert_eq!(got, (1..=head).collect::<Vec<_>>(), "{s}'s entry numbers");
                }
            }
            let convs = b
                .conversations("bob", 0, 100)
                .await
                .unwrap_or_else(|e| panic!("conversations: {e}"));
            assert_eq!(
                convs.len(),
                senders.len(),
                "bob has one conversation per sender"
            );
            let unread: u32 = convs.iter().map(|c| c.unread).sum();
            assert_eq!(unread, N, "every message counted unread once");

            // A retry through the other node is a duplicate; concurrent retries
            // through both nodes store once.
            let first = msg("s0", "bob", 1, T0_MS);
            match b.send(first).await {
                Ok(SendOutcome::Duplicate { message, .. }) => {
                    assert_eq!(message.msg_seq, 1, "the original comes back")
                }
                other => {
                    panic!("a retry through the other node must be a duplicate, got {other:?}")
                }
            }
            let storm = msg("s1", "bob", 10_000, T0_MS + 999_000);
            let mut tasks = Vec::new();
            for i in 0..12 {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                let m = storm.clone();
                tasks.push(tokio::spawn(async move { node.send(m).await }));
            }
            let mut stored = 0;
            for t in tasks {
                match t.await.unwrap_or_else(|e| panic!("send task: {e}")) {
                    Ok(SendOutcome::Stored { .. }) => stored += 1,
                    Ok(SendOutcome::Duplicate { .. }) => {}
                    Err(e) => panic!("a concurrent retry failed: {e}"),
                }
            }
            assert_eq!(stored, 1, "exactly one of the concurrent retries is stored");
            assert_eq!(
                assert_timeline_gap_free(&*a, "bob").await,
                u64::from(N) + 1,
                "the retry storm adds one entry"
            );
            a.close().await;
            b.close().await;
        })
        .await;
}

/// Several nodes starting at once on a fresh schema migrate once and agree on
/// the epoch; a later node finds the schema up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_start_migrates_once() {
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let url = schemas.url();
            let nodes =
                futures_util::future::join_all((0..4).map(|_| connect(url, &schema, 2))).await;
            let epoch = nodes[0].epoch().to_owned();
            assert!(
                nodes.iter().all(|n| n.epoch() == epoch),
                "all nodes must agree on the epoch"
            );
            let late = connect(url, &schema, 1).await;
            assert_eq!(late.epoch(), epoch, "a later node keeps the epoch");

            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let task = tokio::spawn(conn);
            let rows = client
                .query(
                    &format!("SELECT version FROM {schema}.duet_migrations ORDER BY version"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("read duet_migrations: {e}"));
            let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(versions, vec![1, 2], "each migration applied exactly once");
            drop(client);
            let _ = task.await;
        })
        .await;
}

/// Two nodes sweeping the same expired data at once both succeed, and remove
/// every expired row exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweeps() {
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let a = Arc::new(connect(schemas.url(), &schema, 4).await);
            let b = Arc::new(connect(schemas.url(), &schema, 4).await);
            users(&*a, &["u0", "u1", "u2", "u3"]).await;
            const OLD: u32 = 120;
            for i in 0..OLD {
                let m = msg(
                    &format!("u{}", i % 4),
                    &format!("u{}", (i + 1) % 4),
                    i + 1,
                    T0_MS,
                );
                a.send(m).await.unwrap_or_else(|e| panic!("send: {e}"));
            }
            let cutoff = T0_MS + 86_400_000;
            let sweeper = |node: Arc<duet_store_postgres::PostgresStore>| async move {
                let mut total = duet_store::SweepReport::default();
                loop {
                    let r = node
                        .sweep(cutoff, 7)
                        .await
                        .unwrap_or_else(|e| panic!("a concurrent sweep failed: {e}"));
                    total.entries += r.entries;
                    total.messages += r.messages;
                    total.conversations += r.conversations;
                    if !r.more {
                        break total;
                    }
                }
            };
            let (ra, rb) = tokio::join!(sweeper(a.clone()), sweeper(b.clone()));
            assert_eq!(
                ra.entries + rb.entries,
                2 * u64::from(OLD),
                "every old entry removed once"
            );
            assert_eq!(
                ra.messages + rb.messages,
                u64::from(OLD),
                "every old message removed once"
            );
            assert_eq!(
                ra.conversations + rb.conversations,
                8,
                "every old conversation removed once"
            );
            let after = a
                .sweep(cutoff, 100)
                .await
                .unwrap_or_else(|e| panic!("sweep: {e}"));
            assert_eq!(after.total(), 0, "nothing left to sweep");
        })
        .await;
}

/// Values that do not fit the database are refused without a write; a closed
/// store refuses calls with `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_closed() {
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let store = connect(schemas.url(), &schema, 2).await;
            users(&store, &["alice", "bob"]).await;
            let mut m = msg("alice", "bob", 1, T0_MS);
            m.msg_time = u64::MAX;
            match store.send(m).await {
                Err(StoreError::Backend(e)) => {
                    assert!(e.contains("MsgTime"), "error names the field: {e}")
                }
                other => panic!("an out-of-range MsgTime must be refused, got {other:?}"),
            }
            assert_eq!(store.head("bob").await, Ok(0), "nothing was written");
            // Query bounds saturate instead.
            assert_eq!(
                store.sync("bob", 0, u64::MAX, 20, u32::MAX).await,
                Ok(Vec::new())
            );
            assert_eq!(
                store.history("bob", "alice", Some(u64::MAX), 10).await,
                Ok(Vec::new())
            );

            store.close().await;
            store.close().await;
            assert_eq!(
                store.send(msg("alice", "bob", 2, T0_MS)).await,
                Err(StoreError::Closed),
                "a closed store refuses writes"
            );
            assert_eq!(
                store.head("bob").await,
                Err(StoreError::Closed),
                "and reads"
            );
        })
        .await;
}

/// An invalid schema name is refused before connecting.
#[tokio::test]
async fn invalid_schema_name_is_refused() {
    let mut opts = duet_store_postgres::PgOptions::new(common::pg_url());
    opts.schema = Some("Robert'); DROP TABLE students;--".into());
    match duet_store_postgres::PostgresStore::connect(opts).await {
        Err(StoreError::Backend(e)) => assert!(e.contains("invalid schema name"), "{e}"),
        other => panic!("expected an invalid schema name error, got {other:?}"),
    }
}

/// A schema migrated by a newer build is refused, not written to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let url = schemas.url();
            connect(url, &schema, 1).await.close().await;
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "INSERT INTO {schema}.duet_migrations (version) VALUES (99)"
                ))
                .await
                .unwrap_or_else(|e| panic!("insert: {e}"));
            drop(client);
            let _ = task.await;

            let mut opts = duet_store_postgres::PgOptions::new(url);
            opts.schema = Some(schema.clone());
            match duet_store_postgres::PostgresStore::connect(opts).await {
                Err(StoreError::Backend(e)) => {
                    assert!(e.contains("version 99"), "the error names the version: {e}")
                }
                other => panic!("a newer schema must be refused, got {other:?}"),
            }
        })
        .await;
}

/// Shared presence: devices per node, logout, a node's restart forgets its
/// old devices, and a silent node's devices expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_nodes() {
    use duet_store::{PresenceChange, PresenceDevice, PresenceStore};
    let schemas = Schemas::new();
    let schema = schemas.make();
    schemas
        .run(async {
            let store = connect(schemas.url(), &schema, 2).await;
            let dev = |node: &str, conn: u64, user: &str| PresenceDevice {
                user_id: user.into(),
                node_id: node.into(),
                conn_id: conn,
                device_id: format!("d{conn}"),
                platform: "iPhone".into(),
            };
            store.presence_node_start("n1", 1_000).await.unwrap();
            store.presence_node_start("n2", 1_000).await.unwrap();
            store
                .presence_update(
                    "n1",
                    vec![
                        PresenceChange::Online(dev("n1", 1, "bob")),
                        PresenceChange::Online(dev("n1", 2, "amy")),
                    ],
                    1_000,
                )
                .await
                .unwrap();
            store
                .presence_update(
                    "n2",
                    vec![PresenceChange::Online(dev("n2", 1, "bob"))],
                    1_000,
                )
                .await
                .unwrap();
            let users = vec!["bob".to_string()];
            let got = store.presence_online(&users, 0).await.unwrap();
            assert_eq!(got, vec![dev("n1", 1, "bob"), dev("n2", 1, "bob")]);
            // Logout on n2; n1 keeps reporting, n2 goes silent after that.
            store
                .presence_update("n2", vec![PresenceChange::Offline { conn_id: 1 }], 2_000)
                .await
                .unwrap();
            store.presence_update("n1", vec![], 5_000).await.unwrap();
            assert_eq!(
                store.presence_online(&users, 0).await.unwrap(),
                vec![dev("n1", 1, "bob")]
            );
            // n1 silent since 5,000: with a TTL cut at 6,000 its devices are offline.
            assert!(
                store
                    .presence_online(&users, 6_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // n1 restarts: its old connections are forgotten.
            store.presence_node_start("n1", 7_000).await.unwrap();
            assert!(
                store
                    .presence_online(&["amy".to_string()], 0)
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .await;
}
