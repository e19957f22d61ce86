//! Live delivery, offline sync, multi-device, idempotent retries.

use duet_proto::MsgElem;
use duet_sdk::{Connection, Event, SendOptions};
use duet_testkit::TestServer;

fn texts(msgs: &[duet_proto::Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.body[0].as_text().unwrap_or_default().into_owned())
        .collect()
}

#[tokio::test]
async fn live_delivery_reaches_the_recipient() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").connect().await;
    let mut bob = server.client("bob").connect().await;
    alice.until_synced().await;
    bob.until_synced().await;
    alice
        .session
        .connection()
        .set_profile(Some("Alice".into()), Some("https://img/a.png".into()))
        .await
        .unwrap();
    let ack = alice.session.send_text("bob", "hello bob").await.unwrap();
    let m = bob.next_message().await;
    assert_eq!(m.from, "alice");
    assert_eq!(m.to, "bob");
    assert_eq!(m.body, vec![MsgElem::text("hello bob")]);
    assert_eq!(m.msg_key, ack.msg_key);
    assert_eq!(
        m.msg_key,
        format!("{}_{}_{}", ack.msg_seq, ack.msg_random, ack.msg_time)
    );
    assert_eq!(
        m.nick, "Alice",
        "sender profile snapshot travels with the message"
    );
    assert_eq!(m.face_url, "https://img/a.png");
    // The sender's own device got an ack, not a second copy.
    alice
        .expect_quiet(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn offline_messages_arrive_at_login_in_order_exactly_once_then_sync_finished() {
    // Small sync pages, so the 30 offline messages come in several batches.
    let server = TestServer::builder()
        .config(|c| c.sync_batch = 7)
        .spawn()
        .await;
    // bob must exist (logging in creates the account).
    let (bob_conn, _) = server.login_raw("bob", "phone").await;
    bob_conn.close().await;
    let alice = server.client("alice").connect().await;
    let carol = server.client("carol").connect().await;
    for i in 0..30 {
        let who = if i % 3 == 0 { &carol } else { &alice };
        who.session
            .send_text("bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    let cache = duet_sdk::Cache::in_memory().unwrap();
    let mut bob = server
        .client("bob")
        .device("phone")
        .cache(cache.clone())
        .connect()
        .await;
    let mut got = Vec::new();
    let mut saw_conversations = false;
    loop {
        match bob.next().await {
            Event::NewMessage(m) => {
                assert!(
                    !saw_conversations,
                    "messages come before the conversation list"
                );
                got.push(m);
            }
            Event::Conversations(list) => {
                saw_conversations = true;
                let a = list
                    .iter()
                    .find(|c| c.peer == "alice")
                    .expect("alice conversation");
                assert_eq!(a.unread, 20);
                let c = list
                    .iter()
                    .find(|c| c.peer == "carol")
                    .expect("carol conversation");
                assert_eq!(c.unread, 10);
            }
            Event::SyncFinished => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_conversations);
    let expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&got), expected, "in order, exactly once");
    bob.expect_quiet(std::time::Duration::from_millis(200))
        .await;
    bob.session.close().await;
    drop(bob);
    // Log in again on the same device with the same cache: nothing is reported twice.
    alice.session.send_text("bob", "after").await.unwrap();
    let mut bob2 = server
        .client("bob")
        .device("phone")
        .cache(cache)
        .connect()
        .await;
    let again = bob2.until_synced().await;
    assert_eq!(texts(&again), vec!["after".to_string()]);
}

#[tokio::test]
async fn offline_sync_hands_over_the_newest_per_conversation_and_history_has_the_rest() {
    let server = TestServer::builder()
        .config(|c| {
            c.sync_per_conversation = 5;
            c.sync_batch = 2;
        })
        .spawn()
        .await;
    let (bob_conn, _) = server.login_raw("bob", "phone").await;
    bob_conn.close().await;
    let alice = server.client("alice").connect().await;
    for i in 0..12 {
        alice
            .session
            .send_text("bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut bob = server.client("bob").device("phone").connect().await;
    let got = bob.until_synced().await;
    assert_eq!(texts(&got), ["m7", "m8", "m9", "m10", "m11"]);
    let (page, complete) = bob.session.history("alice", None, 20).await.unwrap();
    assert!(complete);
    assert_eq!(page.len(), 12, "older ones stay reachable through history");
}

#[tokio::test]
async fn every_device_of_both_users_gets_the_message() {
    let server = TestServer::start().await;
    let mut alice_phone = server
        .client("alice")
        .device("phone")
        .platform("Android")
        .connect()
        .await;
    let mut alice_pc = server
        .client("alice")
        .device("pc")
        .platform("PC")
        .connect()
        .await;
    let mut bob_phone = server
        .client("bob")
        .device("phone")
        .platform("iPhone")
        .connect()
        .await;
    let mut bob_laptop = server
        .client("bob")
        .device("laptop")
        .platform("Mac")
        .connect()
        .await;
    for c in [
        &mut alice_phone,
        &mut alice_pc,
        &mut bob_phone,
        &mut bob_laptop,
    ] {
        c.until_synced().await;
    }
    let ack = alice_phone
        .session
        .send_text("bob", "to all")
        .await
        .unwrap();
    for c in [&mut bob_phone, &mut bob_laptop, &mut alice_pc] {
        let m = c.next_message().await;
        assert_eq!(m.msg_key, ack.msg_key);
        assert_eq!(m.from, "alice");
    }
    alice_phone
        .expect_quiet(std::time::Duration::from_millis(200))
        .await;
    // The sending device's cursor moved past its own message.
    assert_eq!(alice_phone.session.cursor(), ack.entry.unwrap());
}

#[tokio::test]
async fn a_retried_send_stores_one_copy_and_returns_the_same_key() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let alice = server.client("alice").connect().await;
    let opts = SendOptions {
        msg_random: Some(777),
        msg_seq: Some(5),
        ..Default::default()
    };
    let body = vec![MsgElem::text("once")];
    let first = alice
        .session
        .send("bob", body.clone(), opts.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    // A retry from another connection (e.g. after a reconnect).
    let (conn, _) = server.login_raw("alice", "dev-1").await;
    let second = conn.send("bob", body, opts).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.msg_key, first.msg_key);
    assert_eq!(second.entry, first.entry);
    let m = bob.next_message().await;
    assert_eq!(m.msg_key, first.msg_key);
    bob.expect_quiet(std::time::Duration::from_millis(200))
        .await;
    let (page, _) = bob.session.history("alice", None, 10).await.unwrap();
    assert_eq!(page.len(), 1, "one stored copy");
}

#[tokio::test]
async fn online_only_messages_reach_online_devices_and_are_never_stored() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let alice = server.client("alice").connect().await;
    let ack = alice
        .session
        .send(
            "bob",
            vec![MsgElem::text("typing...")],
            SendOptions {
                online_only: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ack.entry, None);
    let m = bob.next_message().await;
    assert!(m.online_only);
    let (page, _) = bob.session.history("alice", None, 10).await.unwrap();
    assert!(page.is_empty());
}

#[tokio::test]
async fn a_lost_live_hint_is_healed_by_the_heartbeat() {
    let server = TestServer::builder()
        .config(|c| c.heartbeat_timeout = std::time::Duration::from_secs(3))
        .spawn()
        .await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let (alice, _) = server.login_raw("alice", "d").await;
    alice.close().await;
    // Commit a message without any live delivery (as if the hint was lost).
    let body = vec![MsgElem::text("hint lost")];
    let body_json = serde_json::to_string(&body).unwrap();
    server
        .services()
        .store()
        .send(duet_store::NewMessage {
            from: "alice".into(),
            to: "bob".into(),
            msg_seq: 1,
            msg_random: 2,
            msg_time: 1,
            body,
            body_json,
            cloud_custom_data: String::new(),
            sender_copy: duet_store::SenderCopy::Timeline,
            no_unread: false,
            no_last_msg: false,
            now_ms: 1000,
        })
        .await
        .unwrap();
    // The next heartbeat (every second here) tells bob's device its head; it syncs.
    let m = bob.next_message().await;
    assert_eq!(m.body[0].as_text().as_deref(), Some("hint lost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_from_one_device_keep_their_order() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let (alice, _) = server.login_raw("alice", "d").await;
    // 60 sends in flight at once on one connection, issued in order.
    let sends: Vec<_> = (0..60)
        .map(|i| {
            let alice = alice.clone();
            async move {
                alice
                    .send(
                        "bob",
                        vec![MsgElem::text(format!("p{i}"))],
                        Default::default(),
                    )
                    .await
            }
        })
        .collect();
    let acks = futures_util::future::join_all(sends).await;
    let mut entries: Vec<u64> = acks
        .iter()
        .map(|a| a.as_ref().unwrap().entry.unwrap())
        .collect();
    let sorted = {
        let mut s = entries.clone();
        s.sort();
        s
    };
    assert_eq!(
        entries, sorted,
        "timeline order follows the order of the requests"
    );
    entries.dedup();
    let mut got = Vec::new();
    for _ in 0..60 {
        got.push(
            bob.next_message().await.body[0]
                .as_text()
                .unwrap()
                .to_string(),
        );
    }
    let expected: Vec<String> = (0..60).map(|i| format!("p{i}")).collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelining_senders_each_keep_their_order() {
    let server = TestServer::start().await;
    let mut receivers = Vec::new();
    for p in 0..20 {
        let mut r = server.client(&format!("r{p}")).connect().await;
        r.until_synced().await;
        receivers.push(r);
    }
    let mut senders = Vec::new();
    for p in 0..20 {
        let (conn, _) = server.login_raw(&format!("s{p}"), "d").await;
        senders.push(tokio::spawn(async move {
            let sends: Vec<_> = (0..40)
                .map(|i| {
                    let conn = conn.clone();
                    let to = format!("r{p}");
                    async move {
                        conn.send(&to, vec![MsgElem::text(format!("{i}"))], Default::default())
                            .await
                    }
                })
                .collect();
            for a in futures_util::future::join_all(sends).await {
                a.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    for r in &mut receivers {
        let mut got = Vec::new();
        for _ in 0..40 {
            got.push(
                r.next_message().await.body[0]
                    .as_text()
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(got, (0..40).collect::<Vec<_>>());
    }
}

/// Many sends in flight from one task (as an app or the load generator
/// issues them): each connection's sends are committed in the order they
/// were issued, even when the task's scheduling budget runs out midway
/// (tokio's cooperative budgeting used to let later sends overtake).
#[tokio::test(flavor = "current_thread")]
async fn sends_issued_from_one_task_commit_in_issue_order() {
    let server = TestServer::start().await;
    let (_bob, _) = server.login_raw("bob", "d").await;
    let mut senders = Vec::new();
    for s in 0..10 {
        senders.push(server.login_raw(&format!("s{s}"), "d").await.0);
    }
    assert_sends_commit_in_issue_order(&senders, 60).await;
}

/// Sends `per_sender` messages to bob from every connection, all in flight
/// at once from this task, and checks that each connection's sends got
/// sender entries in the order they were issued.
pub(crate) async fn assert_sends_commit_in_issue_order(senders: &[Connection], per_sender: u32) {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    let mut inflight = FuturesUnordered::new();
    for i in 0..per_sender {
        for (s, conn) in senders.iter().enumerate() {
            let conn = conn.clone();
            inflight.push(async move {
                let ack = conn
                    .send(
                        "bob",
                        vec![MsgElem::text(format!("{i}"))],
                        Default::default(),
                    )
                    .await
                    .expect("send");
                (s, i, ack.entry.expect("sender entry"))
            });
        }
    }
    let mut entries = vec![Vec::new(); senders.len()];
    while let Some((s, i, entry)) = inflight.next().await {
        entries[s].push((i, entry));
    }
    for (s, mut e) in entries.into_iter().enumerate() {
        e.sort_unstable();
        let seqs: Vec<u64> = e.iter().map(|(_, entry)| *entry).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "sender s{s}: entries follow the issue order");
    }
}

/// A device's messages reach the recipient in the order they were
/// committed while its connection is busy: many sends in flight while other
/// devices flood it with messages. The recipient's raw pushes are checked,
/// not a session's events (a session puts entries back in order). The exact
/// case of a task out of scheduling budget is checked at the store
/// (`answers_keep_commit_order_when_the_caller_is_out_of_budget`).
#[tokio::test(flavor = "current_thread")]
async fn deliveries_follow_commit_order_when_the_sender_is_busy() {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    let server = TestServer::start().await;
    let (_bob, mut bob_pushes) = server.login_raw("bob", "d").await;
    let (alice, _alice_pushes) = server.login_raw("alice", "d").await;
    let mut flooders = Vec::new();
    for f in 0..8 {
        let (conn, _) = server.login_raw(&format!("f{f}"), "d").await;
        flooders.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            for i in 0..300 {
                let conn = conn.clone();
                inflight.push(async move {
                    conn.send(
                        "alice",
                        vec![MsgElem::text(format!("{i}"))],
                        Default::default(),
                    )
                    .await
                    .expect("flood");
                });
                if inflight.len() >= 32 {
                    inflight.next().await;
                }
            }
            while inflight.next().await.is_some() {}
        }));
    }
    const N: u32 = 1500;
    let mut inflight = FuturesUnordered::new();
    for i in 0..N {
        let alice = alice.clone();
        inflight.push(async move {
            alice
                .send(
                    "bob",
                    vec![MsgElem::text(format!("{i}"))],
                    Default::default(),
                )
                .await
                .expect("send")
        });
        if inflight.len() >= 60 {
            inflight.next().await;
        }
    }
    while inflight.next().await.is_some() {}
    for f in flooders {
        f.await.expect("flooder");
    }
    let mut seqs = Vec::new();
    while seqs.len() < N as usize {
        match bob_pushes.recv().await.expect("push") {
            duet_sdk::Push::Entry(e) => seqs.push(e.seq),
            _ => continue,
        }
    }
    let late = seqs.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(
        late, 0,
        "every live entry after the ones committed before it"
    );
}

/// A store that answers the send of a message whose text is `held` only
/// when released (after it committed): the answers of a connection's sends
/// then come back out of order, as they can when the writer thread runs
/// between a send being queued and its first await.
struct HeldAnswer {
    inner: duet_store_sqlite::SqliteStore,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl duet_store::Store for HeldAnswer {
    fn epoch(&self) -> &str {
        self.inner.epoch()
    }
    fn keeps_issue_order(&self) -> bool {
        self.inner.keeps_issue_order()
    }
    async fn ensure_account(
        &self,
        u: &str,
        t: u64,
    ) -> duet_store::StoreResult<duet_store::Account> {
        self.inner.ensure_account(u, t).await
    }
    async fn account(&self, u: &str) -> duet_store::StoreResult<Option<duet_store::Account>> {
        self.inner.account(u).await
    }
    async fn login(&self, u: &str, t: u64) -> duet_store::StoreResult<(duet_store::Account, u64)> {
        self.inner.login(u, t).await
    }
    async fn set_profile(
        &self,
        u: &str,
        n: Option<String>,
        f: Option<String>,
        t: u64,
    ) -> duet_store::StoreResult<duet_store::Account> {
        self.inner.set_profile(u, n, f, t).await
    }
    async fn send(
        &self,
        m: duet_store::NewMessage,
    ) -> duet_store::StoreResult<duet_store::SendOutcome> {
        let held = m.body.first().and_then(MsgElem::as_text).as_deref() == Some("held");
        let out = self.inner.send(m).await;
        if held {
            let _ = self.release.acquire().await.map(|p| p.forget());
        }
        out
    }
    async fn head(&self, u: &str) -> duet_store::StoreResult<u64> {
        self.inner.head(u).await
    }
    async fn sync(
        &self,
        u: &str,
        a: u64,
        b: u64,
        p: u32,
        l: u32,
    ) -> duet_store::StoreResult<Vec<duet_proto::Entry>> {
        self.inner.sync(u, a, b, p, l).await
    }
    async fn history(
        &self,
        u: &str,
        p: &str,
        b: Option<u64>,
        c: u32,
    ) -> duet_store::StoreResult<Vec<duet_proto::HistoryItem>> {
        self.inner.history(u, p, b, c).await
    }
    async fn conversations(
        &self,
        u: &str,
        o: u32,
        c: u32,
    ) -> duet_store::StoreResult<Vec<duet_proto::Conversation>> {
        self.inner.conversations(u, o, c).await
    }
    async fn mark_read(
        &self,
        u: &str,
        p: &str,
        r: u64,
        t: u64,
    ) -> duet_store::StoreResult<duet_store::ReadOutcome> {
        self.inner.mark_read(u, p, r, t).await
    }
    async fn recall(
        &self,
        r: duet_store::RecallRequest,
    ) -> duet_store::StoreResult<duet_store::RecallOutcome> {
        self.inner.recall(r).await
    }
    async fn sweep(&self, c: u64, n: u32) -> duet_store::StoreResult<duet_store::SweepReport> {
        self.inner.sweep(c, n).await
    }
}

/// Live deliveries leave in the order a connection's sends arrived (and
/// committed), even when a later send's answer comes back first: the later
/// message waits for the earlier one's delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_send_answered_first_is_delivered_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = std::sync::Arc::new(HeldAnswer {
        inner: duet_store_sqlite::SqliteStore::open(duet_store_sqlite::SqliteOptions::new(
            dir.path().join("held.db"),
        ))
        .expect("store"),
        release: tokio::sync::Semaphore::new(0),
    });
    let server = TestServer::builder()
        .shared_store(store.clone())
        .spawn()
        .await;
    let (_bob, mut bob_pushes) = server.login_raw("bob", "d").await;
    let (alice, _) = server.login_raw("alice", "d").await;
    // Both from this task, the held one polled first: its frame leaves
    // first, so it is queued and committed first.
    let mut first =
        std::pin::pin!(alice.send("bob", vec![MsgElem::text("held")], Default::default()));
    let second = tokio::select! {
        biased;
        _ = &mut first => panic!("the first send's answer is held"),
        r = alice.send("bob", vec![MsgElem::text("after")], Default::default()) => r,
    }
    .expect("second send");
    let first_entry = second.entry.expect("sender entry") - 1;
    store.release.add_permits(1);
    let first = first.await.expect("first send");
    assert_eq!(first.entry, Some(first_entry), "committed first");
    let mut texts = Vec::new();
    while texts.len() < 2 {
        if let duet_sdk::Push::Entry(e) = bob_pushes.recv().await.expect("push")
            && let duet_proto::EntryKind::Message { message } = e.kind
        {
            texts.push(message.body[0].as_text().unwrap_or_default().into_owned());
        }
    }
    assert_eq!(texts, vec!["held", "after"], "delivered in commit order");
    store.inner.close();
}
