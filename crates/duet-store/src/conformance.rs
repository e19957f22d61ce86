//! The store conformance suite: the behaviour every [`Store`] backend must show.
//!
//! A backend runs it from its own tests with a factory that makes a fresh,
//! empty store per check:
//!
//! ```ignore
//! struct Factory;
//!
//! #[async_trait::async_trait]
//! impl duet_store::conformance::StoreFactory for Factory {
//!     async fn fresh(&self) -> Box<dyn duet_store::Store> {
//!         Box::new(MyStore::open_empty())
//!     }
//! }
//!
//! #[tokio::test]
//! async fn conformance() {
//!     duet_store::conformance::run_all(&Factory).await;
//! }
//! ```
//!
//! Every check is also a public function taking a fresh store, so a backend
//! can run one alone while debugging. A check panics with a message naming the
//! broken rule on its first failure. The suite needs no async runtime of its
//! own: concurrent calls are joined with a small local combinator.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use duet_proto::{
    Conversation, Entry, EntryKind, HistoryItem, Message, MsgElem, MsgKey, ReadReport, Recall,
};

use crate::{
    Account, NewMessage, RecallOutcome, RecallRequest, SendOutcome, SenderCopy, Store, StoreError,
    StoreResult,
};

/// Makes a fresh, empty store for one check.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// A new store holding no data.
    async fn fresh(&self) -> Box<dyn Store>;
}

/// Runs every check, each on its own fresh store. Panics with a clear message
/// on the first failure; prints the name of each check to stderr as it starts.
pub async fn run_all(factory: &dyn StoreFactory) {
    macro_rules! checks {
        ($($check:ident),* $(,)?) => {$(
            eprintln!("store conformance: {}", stringify!($check));
            let store = factory.fresh().await;
            $check(&*store).await;
            drop(store);
        )*};
    }
    checks!(
        epoch_is_stable,
        ensure_account_creates_once,
        login_gives_account_and_head,
        account_unknown_is_none,
        set_profile_updates_given_fields,
        set_profile_creates_missing,
        send_unknown_recipient_writes_nothing,
        send_unknown_sender_writes_nothing,
        send_snapshots_sender_profile,
        send_entries_follow_heads,
        send_assigns_gap_free_entries,
        send_without_sender_copy,
        send_duplicate_returns_original,
        send_same_ids_other_sender_not_duplicate,
        send_msg_key_format,
        sync_returns_window_in_order,
        sync_cuts_per_conversation,
        sync_shows_recalled_flag,
        history_pages_newest_first,
        history_without_sender_copy,
        conversations_order_and_last_message,
        conversations_unread_rules,
        conversations_unread_capped,
        conversations_paging,
        mark_read_zeroes_unread_and_writes_entries,
        recall_by_sender,
        recall_twice_already_recalled,
        recall_by_other_not_found,
        recall_unknown_key_not_found,
        recall_window_passed,
        recall_without_sender_copy,
        sweep_removes_expired_only,
        sweep_finds_every_expired_conversation,
        concurrent_sends_gap_free,
        concurrent_duplicates_store_once,
    );
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Base time of the checks, Unix milliseconds (2023-11-14).
const T0_MS: u64 = 1_700_000_000_000;
/// One day in milliseconds.
const DAY_MS: u64 = 86_400_000;
/// The unread cap of a conversation.
const UNREAD_CAP: u32 = 250;

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls all futures concurrently until every one is done; results in input order.
/// (No runtime needed: it is itself a future.)
fn join_all<T>(futs: Vec<BoxFut<'_, T>>) -> JoinAll<'_, T> {
    let out = futs.iter().map(|_| None).collect();
    JoinAll {
        futs: futs.into_iter().map(Some).collect(),
        out,
    }
}

struct JoinAll<'a, T> {
    futs: Vec<Option<BoxFut<'a, T>>>,
    out: Vec<Option<T>>,
}

// The outputs are never pinned (only the boxed futures are).
impl<T> Unpin for JoinAll<'_, T> {}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, out) in this.futs.iter_mut().zip(this.out.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.out.iter_mut().filter_map(Option::take).collect())
    }
}

/// A check's toolbox: the store, a message-sequence counter and a clock.
struct Kit<'a> {
    store: &'a dyn Store,
    next_seq: AtomicU32,
    now_ms: AtomicU64,
}

impl<'a> Kit<'a> {
    fn new(store: &'a dyn Store) -> Self {
        Kit {
            store,
            next_seq: AtomicU32::new(1),
            now_ms: AtomicU64::new(T0_MS),
        }
    }

    /// Creates the accounts.
    async fn users(&self, names: &[&str]) {
        for name in names {
            self.store
                .ensure_account(name, T0_MS)
                .await
                .unwrap_or_else(|e| panic!("ensure_account({name:?}) failed: {e}"));
        }
    }

    /// The clock, advanced by one second per call (so every message has its own `MsgTime`).
    fn tick(&self) -> u64 {
        self.now_ms.fetch_add(1000, Ordering::Relaxed)
    }

    /// A text message `from` → `to` with a fresh `MsgSeq` and the next clock tick.
    fn msg(&self, from: &str, to: &str, text: &str) -> NewMessage {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        new_msg(from, to, seq, self.tick(), text)
    }

    /// Sends and expects a new message; returns (message, recipient entry, sender entry).
    async fn send(&self, m: NewMessage) -> (Message, Entry, Option<Entry>) {
        let what = format!("send {} -> {} (MsgSeq {})", m.from, m.to, m.msg_seq);
        match self.store.send(m).await {
            Ok(out @ SendOutcome::Stored { .. }) => {
                let (Some(recipient_entry), sender_entry) =
                    (out.recipient_entry(), out.sender_entry())
                else {
                    panic!("{what}: a stored message has a recipient entry");
                };
                (out.message().clone(), recipient_entry, sender_entry)
            }
            Ok(SendOutcome::Duplicate { .. }) => {
                panic!("{what}: a new message was reported as a duplicate")
            }
            Err(e) => panic!("{what} failed: {e}"),
        }
    }

    /// Sends a plain text message; returns it.
    async fn say(&self, from: &str, to: &str, text: &str) -> Message {
        self.send(self.msg(from, to, text)).await.0
    }

    async fn head(&self, user: &str) -> u64 {
        self.store
            .head(user)
            .await
            .unwrap_or_else(|e| panic!("head({user:?}) failed: {e}"))
    }

    /// Every entry of `user`'s timeline (no per-conversation cut).
    async fn timeline(&self, user: &str) -> Vec<Entry> {
        let head = self.head(user).await;
        self.sync(user, 0, head, u32::MAX).await
    }

    /// One unlimited call; every check also verifies that paging through the
    /// same range with small limits yields exactly the same entries.
    async fn sync(&self, user: &str, after: u64, upto: u64, per: u32) -> Vec<Entry> {
        let all = self
            .store
            .sync(user, after, upto, per, u32::MAX)
            .await
            .unwrap_or_else(|e| panic!("sync({user:?}, {after}, {upto}, {per}) failed: {e}"));
        for limit in [1, 2, 3] {
            let mut paged = Vec::new();
            let mut from = after;
            loop {
                let page = self
                    .store
                    .sync(user, from, upto, per, limit)
                    .await
                    .unwrap_or_else(|e| panic!("paged sync failed: {e}"));
                assert!(
                    page.len() <= limit as usize,
                    "sync returned more than its limit"
                );
                let Some(last) = page.last() else { break };
                from = last.seq;
                paged.extend(page);
            }
            assert_eq!(
                paged, all,
                "sync({user:?}, {after}, {upto}, {per}) paged by {limit} differs from one call"
            );
        }
        assert!(
            self.store
                .sync(user, after, upto, per, 0)
                .await
                .unwrap_or_else(|e| panic!("sync with limit 0 failed: {e}"))
                .is_empty(),
            "limit 0 returns nothing"
        );
        all
    }

    async fn history(
        &self,
        user: &str,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> Vec<HistoryItem> {
        self.store
            .history(user, peer, before, count)
            .await
            .unwrap_or_else(|e| {
                panic!("history({user:?}, {peer:?}, {before:?}, {count}) failed: {e}")
            })
    }

    /// All of `user`'s history with `peer`, newest first.
    async fn all_history(&self, user: &str, peer: &str) -> Vec<HistoryItem> {
        self.history(user, peer, None, u32::MAX).await
    }

    async fn conversations(&self, user: &str) -> Vec<Conversation> {
        self.conversations_page(user, 0, u32::MAX).await
    }

    async fn conversations_page(&self, user: &str, offset: u32, count: u32) -> Vec<Conversation> {
        self.store
            .conversations(user, offset, count)
            .await
            .unwrap_or_else(|e| panic!("conversations({user:?}, {offset}, {count}) failed: {e}"))
    }

    async fn conversation(&self, user: &str, peer: &str) -> Conversation {
        self.conversations(user)
            .await
            .into_iter()
            .find(|c| c.peer == peer)
            .unwrap_or_else(|| panic!("{user:?} has no conversation with {peer:?}"))
    }

    async fn recall(&self, by: &str, m: &Message) -> StoreResult<RecallOutcome> {
        self.store
            .recall(RecallRequest {
                by: by.into(),
                key: key_of(m),
                not_before: None,
                now_ms: self.tick(),
            })
            .await
    }
}

/// A text message with explicit identity and time (`MsgTime` = `now_ms / 1000`).
fn new_msg(from: &str, to: &str, seq: u32, now_ms: u64, text: &str) -> NewMessage {
    NewMessage::text(from, to, seq, random_for(seq), now_ms, text)
}

fn body_json(body: &[MsgElem]) -> String {
    serde_json::to_string(body).unwrap_or_else(|e| panic!("body does not serialize: {e}"))
}

/// A deterministic `MsgRandom` for a `MsgSeq`.
fn random_for(seq: u32) -> u32 {
    seq.wrapping_mul(2_654_435_761).wrapping_add(0x5eed)
}

fn key_of(m: &Message) -> MsgKey {
    m.msg_key
        .parse()
        .unwrap_or_else(|e| panic!("stored MsgKey {:?} does not parse: {e}", m.msg_key))
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn history_seqs(items: &[HistoryItem]) -> Vec<u64> {
    items.iter().map(|i| i.seq).collect()
}

fn history_keys(items: &[HistoryItem]) -> Vec<&str> {
    items.iter().map(|i| i.message.msg_key.as_str()).collect()
}

fn entry_message(e: &Entry) -> Option<&Message> {
    match &e.kind {
        EntryKind::Message { message } => Some(message),
        _ => None,
    }
}

/// The peer a timeline entry of `user` belongs to.
fn entry_peer<'e>(user: &str, e: &'e Entry) -> &'e str {
    match &e.kind {
        EntryKind::Message { message } => message.peer_of(user),
        EntryKind::Recall(r) => {
            if r.from == user {
                &r.to
            } else {
                &r.from
            }
        }
        EntryKind::Read(r) => {
            if r.reader == user {
                &r.peer
            } else {
                &r.reader
            }
        }
    }
}

/// The reference cut: the newest `per` message entries per peer, and every other entry.
fn cut_newest(user: &str, entries: &[Entry], per: u32) -> Vec<Entry> {
    let mut kept_per_peer: HashMap<&str, u32> = HashMap::new();
    let mut out: Vec<Entry> = Vec::new();
    for e in entries.iter().rev() {
        if entry_message(e).is_some() {
            let n = kept_per_peer.entry(entry_peer(user, e)).or_default();
            if *n >= per {
                continue;
            }
            *n += 1;
        }
        out.push(e.clone());
    }
    out.reverse();
    out
}

fn assert_gap_free(user: &str, entries: &[Entry], head: u64) {
    let expected: Vec<u64> = (1..=head).collect();
    assert_eq!(
        seqs(entries),
        expected,
        "{user:?}'s timeline must hold entries 1..={head} with no gaps or duplicates"
    );
}

// ---------------------------------------------------------------------------
// Epoch and accounts
// ---------------------------------------------------------------------------

/// The epoch is non-empty and stable across calls.
pub async fn epoch_is_stable(store: &dyn Store) {
    let a = store.epoch().to_owned();
    assert!(!a.is_empty(), "epoch() must not be empty");
    store
        .ensure_account("alice", T0_MS)
        .await
        .unwrap_or_else(|e| panic!("ensure_account failed: {e}"));
    assert_eq!(store.epoch(), a, "epoch() must be stable across calls");
}

/// `ensure_account` creates an account once; a second call returns it unchanged.
pub async fn ensure_account_creates_once(store: &dyn Store) {
    let first = store
        .ensure_account("alice", 1_000)
        .await
        .unwrap_or_else(|e| panic!("ensure_account(alice) failed: {e}"));
    assert_eq!(
        first,
        Account {
            user_id: "alice".into(),
            nick: String::new(),
            face_url: String::new(),
            created_ms: 1_000,
        },
        "a new account has an empty profile and created_ms = now_ms"
    );
    let again = store
        .ensure_account("alice", 2_000)
        .await
        .unwrap_or_else(|e| panic!("second ensure_account(alice) failed: {e}"));
    assert_eq!(
        again, first,
        "a second ensure_account must return the existing account (same created_ms)"
    );
    let found = store
        .account("alice")
        .await
        .unwrap_or_else(|e| panic!("account(alice) failed: {e}"));
    assert_eq!(found, Some(first), "account() must find an ensured account");
}

/// `login` creates a missing account (head 0) and later returns the same
/// account with the head its timeline has reached.
pub async fn login_gives_account_and_head(store: &dyn Store) {
    let kit = Kit::new(store);
    let (alice, head) = store
        .login("alice", 1_000)
        .await
        .unwrap_or_else(|e| panic!("login(alice) failed: {e}"));
    assert_eq!(
        (alice.user_id.as_str(), alice.created_ms, head),
        ("alice", 1_000, 0)
    );
    kit.users(&["bob"]).await;
    kit.say("bob", "alice", "one").await;
    kit.say("alice", "bob", "two").await;
    let (again, head) = store
        .login("alice", 5_000)
        .await
        .unwrap_or_else(|e| panic!("second login(alice) failed: {e}"));
    assert_eq!(again, alice, "the same account (created_ms kept)");
    assert_eq!(head, 2, "alice's head after receiving one and sending one");
    assert_eq!(head, kit.head("alice").await);
}

/// `account()` of an unknown user is `None`; its head is 0.
pub async fn account_unknown_is_none(store: &dyn Store) {
    let found = store
        .account("nobody")
        .await
        .unwrap_or_else(|e| panic!("account(nobody) failed: {e}"));
    assert_eq!(found, None, "account() of an unknown user must be None");
    let head = store
        .head("nobody")
        .await
        .unwrap_or_else(|e| panic!("head(nobody) failed: {e}"));
    assert_eq!(head, 0, "head() of an unknown user must be 0");
}

/// `set_profile` updates only the fields given.
pub async fn set_profile_updates_given_fields(store: &dyn Store) {
    store
        .ensure_account("alice", 1_000)
        .await
        .unwrap_or_else(|e| panic!("ensure_account failed: {e}"));
    let a = store
        .set_profile("alice", Some("Alice".into()), None, 5_000)
        .await
        .unwrap_or_else(|e| panic!("set_profile(nick) failed: {e}"));
    assert_eq!(a.nick, "Alice", "set_profile must set the nick given");
    assert_eq!(a.face_url, "", "set_profile(nick only) must leave face_url");
    assert_eq!(
        a.created_ms, 1_000,
        "set_profile must not change created_ms"
    );
    let b = store
        .set_profile("alice", None, Some("https://f/1.png".into()), 6_000)
        .await
        .unwrap_or_else(|e| panic!("set_profile(face) failed: {e}"));
    assert_eq!(
        b.nick, "Alice",
        "set_profile(face only) must leave the nick"
    );
    assert_eq!(
        b.face_url, "https://f/1.png",
        "set_profile must set the face given"
    );
    let c = store
        .set_profile("alice", None, None, 7_000)
        .await
        .unwrap_or_else(|e| panic!("set_profile(nothing) failed: {e}"));
    assert_eq!(c, b, "set_profile with no fields must change nothing");
    let found = store
        .account("alice")
        .await
        .unwrap_or_else(|e| panic!("account failed: {e}"));
    assert_eq!(found, Some(b), "account() must show the updated profile");
}

/// `set_profile` on a missing account creates it.
pub async fn set_profile_creates_missing(store: &dyn Store) {
    let a = store
        .set_profile("zed", Some("Zed".into()), None, 9_000)
        .await
        .unwrap_or_else(|e| panic!("set_profile(zed) failed: {e}"));
    assert_eq!(
        a,
        Account {
            user_id: "zed".into(),
            nick: "Zed".into(),
            face_url: String::new(),
            created_ms: 9_000,
        },
        "set_profile must create a missing account with the fields given"
    );
    let found = store
        .account("zed")
        .await
        .unwrap_or_else(|e| panic!("account(zed) failed: {e}"));
    assert_eq!(found, Some(a), "the created account must be readable");
}

// ---------------------------------------------------------------------------
// Send
// ---------------------------------------------------------------------------

/// A send to an unknown recipient fails with `UnknownAccount(to)` and writes nothing.
pub async fn send_unknown_recipient_writes_nothing(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    kit.say("alice", "bob", "hello").await;
    let head = kit.head("alice").await;

    let m = kit.msg("alice", "ghost", "anyone there?");
    let err = store
        .send(m.clone())
        .await
        .expect_err("a send to an unknown recipient must fail");
    assert_eq!(
        err,
        StoreError::UnknownAccount("ghost".into()),
        "a send to an unknown recipient must fail with UnknownAccount(to)"
    );
    assert_eq!(
        kit.head("alice").await,
        head,
        "a failed send must not move the sender's head"
    );
    assert_eq!(
        kit.head("ghost").await,
        0,
        "a failed send must not write to the unknown user"
    );
    let ghost = store
        .account("ghost")
        .await
        .unwrap_or_else(|e| panic!("account(ghost) failed: {e}"));
    assert_eq!(
        ghost, None,
        "a send must not create the recipient's account"
    );
    assert!(
        kit.all_history("alice", "ghost").await.is_empty(),
        "a failed send must not appear in the sender's history"
    );
    let convs = kit.conversations("alice").await;
    assert!(
        convs.iter().all(|c| c.peer != "ghost"),
        "a failed send must not create a conversation"
    );

    // Nothing was stored, so the same message is not a duplicate once the recipient exists.
    kit.users(&["ghost"]).await;
    match store.send(m).await {
        Ok(SendOutcome::Stored { .. }) => {}
        other => panic!(
            "after a failed send, the same message must store normally (nothing was kept), got {other:?}"
        ),
    }
}

/// A send from an unknown sender fails with `UnknownAccount(from)` and writes
/// nothing (not even to the existing recipient).
pub async fn send_unknown_sender_writes_nothing(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["bob", "carol"]).await;
    kit.say("carol", "bob", "hi").await;
    let head = kit.head("bob").await;
    let convs = kit.conversations("bob").await;
    for copy in [SenderCopy::Timeline, SenderCopy::None] {
        let mut m = kit.msg("ghost", "bob", "boo");
        m.sender_copy = copy;
        let r = store.send(m).await;
        assert_eq!(
            r,
            Err(StoreError::UnknownAccount("ghost".into())),
            "a send from an unknown sender ({copy:?}) must fail with UnknownAccount(from)"
        );
    }
    assert_eq!(
        kit.head("bob").await,
        head,
        "a failed send must not move the recipient's head"
    );
    assert_eq!(
        kit.conversations("bob").await,
        convs,
        "a failed send must not touch conversations"
    );
    assert!(
        kit.all_history("bob", "ghost").await.is_empty(),
        "a failed send stores nothing"
    );
    let ghost = store
        .account("ghost")
        .await
        .unwrap_or_else(|e| panic!("account(ghost) failed: {e}"));
    assert_eq!(ghost, None, "a send must not create the sender's account");
}

/// A stored message carries the sender's nick and face at send time, and a later
/// profile change does not alter it.
pub async fn send_snapshots_sender_profile(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    store
        .set_profile(
            "alice",
            Some("Al".into()),
            Some("https://f/al.png".into()),
            T0_MS,
        )
        .await
        .unwrap_or_else(|e| panic!("set_profile failed: {e}"));
    let old = kit.say("alice", "bob", "one").await;
    assert_eq!(old.nick, "Al", "the message must carry the sender's nick");
    assert_eq!(
        old.face_url, "https://f/al.png",
        "the message must carry the sender's face URL"
    );

    store
        .set_profile(
            "alice",
            Some("Alice".into()),
            Some("https://f/new.png".into()),
            T0_MS,
        )
        .await
        .unwrap_or_else(|e| panic!("set_profile failed: {e}"));
    let new = kit.say("alice", "bob", "two").await;
    assert_eq!(new.nick, "Alice", "a later message carries the new nick");
    assert_eq!(
        new.face_url, "https://f/new.png",
        "a later message carries the new face URL"
    );

    for user in ["alice", "bob"] {
        let h = kit
            .all_history(user, if user == "alice" { "bob" } else { "alice" })
            .await;
        let first = h
            .iter()
            .find(|i| i.message.msg_key == old.msg_key)
            .unwrap_or_else(|| panic!("{user:?}'s history lacks the first message"));
        assert_eq!(
            (first.message.nick.as_str(), first.message.face_url.as_str()),
            ("Al", "https://f/al.png"),
            "a profile change must not alter the snapshot of an earlier message ({user:?}'s history)"
        );
    }
    let bob = kit.timeline("bob").await;
    let first = bob
        .iter()
        .filter_map(entry_message)
        .find(|m| m.msg_key == old.msg_key)
        .unwrap_or_else(|| panic!("bob's timeline lacks the first message"));
    assert_eq!(first.nick, "Al", "sync must show the send-time nick");
}

/// The recipient's and sender's entries are each their head + 1, with the write
/// time and the stored message; the message fields are those sent.
pub async fn send_entries_follow_heads(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    kit.say("alice", "carol", "warm up").await;
    kit.say("carol", "alice", "warm up").await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);

    let mut m = kit.msg("alice", "bob", "hi bob");
    m.body.push(MsgElem::custom("data", "desc", "ext"));
    m.body_json = body_json(&m.body);
    m.cloud_custom_data = "ccd".into();
    let sent = m.clone();
    let (message, r, s) = kit.send(m).await;

    assert_eq!(message.from, "alice", "From_Account");
    assert_eq!(message.to, "bob", "To_Account");
    assert_eq!(
        message.msg_seq, sent.msg_seq,
        "MsgSeq must be stored as sent"
    );
    assert_eq!(
        message.msg_random, sent.msg_random,
        "MsgRandom must be stored as sent"
    );
    assert_eq!(
        message.msg_time, sent.msg_time,
        "MsgTime must be stored as sent"
    );
    assert_eq!(message.flag_bits, 0, "a new message has flag_bits 0");
    assert_eq!(message.body, sent.body, "the body must be stored as sent");
    assert_eq!(
        message.cloud_custom_data, "ccd",
        "CloudCustomData must be stored"
    );
    assert!(!message.online_only, "a stored message is not online-only");

    assert_eq!(r.seq, hb + 1, "the recipient's entry must be its head + 1");
    assert_eq!(r.ts, sent.now_ms, "an entry's ts is the write time now_ms");
    assert_eq!(
        r.kind,
        EntryKind::Message {
            message: message.clone()
        },
        "the recipient's entry holds the message"
    );
    let s = s.expect("with SenderCopy::Timeline the sender gets an entry");
    assert_eq!(s.seq, ha + 1, "the sender's entry must be its head + 1");
    assert_eq!(s.ts, sent.now_ms, "an entry's ts is the write time now_ms");
    assert_eq!(
        s.kind,
        EntryKind::Message {
            message: message.clone()
        },
        "the sender's entry holds the message"
    );
    assert_eq!(
        kit.head("bob").await,
        hb + 1,
        "the recipient's head moves by one"
    );
    assert_eq!(
        kit.head("alice").await,
        ha + 1,
        "the sender's head moves by one"
    );

    let bob = kit.sync("bob", hb, hb + 1, u32::MAX).await;
    assert_eq!(
        bob,
        vec![r],
        "sync must return exactly the recipient's entry"
    );
    let alice = kit.sync("alice", ha, ha + 1, u32::MAX).await;
    assert_eq!(
        alice,
        vec![s],
        "sync must return exactly the sender's entry"
    );
    let h = kit.history("bob", "alice", None, 1).await;
    assert_eq!(
        h,
        vec![HistoryItem {
            seq: hb + 1,
            message
        }],
        "history must return the stored message unchanged"
    );
}

/// Entries are numbered 1, 2, 3, … without gaps across many sends, reads and
/// recalls between several users in both directions.
pub async fn send_assigns_gap_free_entries(store: &dyn Store) {
    let kit = Kit::new(store);
    let users = ["alice", "bob", "carol", "dave"];
    kit.users(&users).await;
    let mut expect: HashMap<&str, u64> = users.iter().map(|u| (*u, 0)).collect();
    let mut bump = |user: &str, seq: u64, what: &str| {
        let h = expect
            .get_mut(user)
            .unwrap_or_else(|| panic!("unexpected user {user:?}"));
        *h += 1;
        assert_eq!(seq, *h, "{what}: {user:?}'s new entry must be number {h}");
    };
    let mut sent: Vec<Message> = Vec::new();
    for i in 0..48usize {
        let from = users[i % 4];
        let to = users[(i / 4 + i + 1) % 4];
        if from == to {
            continue;
        }
        let mut m = kit.msg(from, to, &format!("m{i}"));
        if i % 7 == 0 {
            m.sender_copy = SenderCopy::None;
        }
        let (message, r, s) = kit.send(m).await;
        bump(to, r.seq, "send (recipient)");
        if let Some(s) = s {
            bump(from, s.seq, "send (sender)");
        }
        sent.push(message);
        if i % 9 == 4 {
            let out = store
                .mark_read(to, from, kit.tick() / 1000, kit.tick())
                .await
                .unwrap_or_else(|e| panic!("mark_read failed: {e}"));
            bump(to, out.reader_entry.seq, "mark_read (reader)");
            let p = out
                .peer_entry
                .expect("the peer exists, so it gets a read entry");
            bump(from, p.seq, "mark_read (peer)");
        }
        if i % 11 == 3 {
            let m = sent
                .iter()
                .rev()
                .find(|m| !m.is_recalled())
                .cloned()
                .expect("a message to recall");
            let out = kit
                .recall(&m.from, &m)
                .await
                .unwrap_or_else(|e| panic!("recall failed: {e}"));
            bump(&m.to, out.recipient_entry.seq, "recall (recipient)");
            if let Some(s) = out.sender_entry {
                bump(&m.from, s.seq, "recall (sender)");
            }
            for x in sent.iter_mut().filter(|x| x.msg_key == m.msg_key) {
                x.flag_bits = duet_proto::model::FLAG_RECALLED;
            }
        }
    }
    for user in users {
        let head = kit.head(user).await;
        assert_eq!(
            head, expect[user],
            "{user:?}'s head must equal its number of entries"
        );
        assert_gap_free(user, &kit.timeline(user).await, head);
    }
}

/// With `SenderCopy::None` only the recipient's entry is written.
pub async fn send_without_sender_copy(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let mut m = kit.msg("alice", "bob", "recipient only");
    m.sender_copy = SenderCopy::None;
    let (message, r, s) = kit.send(m).await;
    assert_eq!(s, None, "SenderCopy::None must not write a sender entry");
    assert_eq!(r.seq, hb + 1, "the recipient still gets its entry");
    assert_eq!(
        kit.head("alice").await,
        ha,
        "SenderCopy::None must not move the sender's head"
    );
    assert_eq!(
        kit.head("bob").await,
        hb + 1,
        "the recipient's head moves by one"
    );
    let bob = kit.all_history("bob", "alice").await;
    assert_eq!(
        history_keys(&bob),
        vec![message.msg_key.as_str()],
        "the recipient's history has the message"
    );
    assert!(
        kit.all_history("alice", "bob").await.is_empty(),
        "SenderCopy::None: the sender's history must lack the message"
    );
    assert!(
        kit.conversations("alice").await.is_empty(),
        "SenderCopy::None: the sender's conversations must not change"
    );
}

/// A retry (same sender, `MsgSeq`, `MsgRandom`; different time and body) is a
/// duplicate: the original message and the sender's entry number come back,
/// nothing is written.
pub async fn send_duplicate_returns_original(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let first = kit.msg("alice", "bob", "original");
    let (original, _r, s) = kit.send(first.clone()).await;
    let sender_seq = s.map(|s| s.seq);
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let unread = kit.conversation("bob", "alice").await.unread;

    let mut retry = first.clone();
    retry.msg_time += 30;
    retry.now_ms += 30_000;
    retry.body = vec![MsgElem::text("changed")];
    retry.body_json = body_json(&retry.body);
    match store.send(retry).await {
        Ok(SendOutcome::Duplicate {
            message,
            sender_entry_seq,
        }) => {
            assert_eq!(
                message, original,
                "a duplicate must return the original message"
            );
            assert_eq!(
                message.msg_key, original.msg_key,
                "a duplicate must return the original MsgKey"
            );
            assert_eq!(
                sender_entry_seq, sender_seq,
                "a duplicate must return the original sender entry number"
            );
        }
        other => panic!(
            "a retry with the same (from, MsgSeq, MsgRandom) must be Duplicate, got {other:?}"
        ),
    }
    assert_eq!(
        kit.head("alice").await,
        ha,
        "a duplicate must not write to the sender"
    );
    assert_eq!(
        kit.head("bob").await,
        hb,
        "a duplicate must not write to the recipient"
    );
    assert_eq!(
        kit.all_history("bob", "alice").await.len(),
        1,
        "a duplicate must not store a second copy"
    );
    assert_eq!(
        kit.conversation("bob", "alice").await.unread,
        unread,
        "a duplicate must not count as unread"
    );

    // A recipient-only original has no sender entry number.
    let mut solo = kit.msg("alice", "bob", "recipient only");
    solo.sender_copy = SenderCopy::None;
    kit.send(solo.clone()).await;
    match store.send(solo).await {
        Ok(SendOutcome::Duplicate {
            sender_entry_seq, ..
        }) => assert_eq!(
            sender_entry_seq, None,
            "a duplicate of a SenderCopy::None message has no sender entry number"
        ),
        other => panic!("a retry must be Duplicate, got {other:?}"),
    }
}

/// The same `MsgSeq`/`MsgRandom` from a different sender is a different message.
pub async fn send_same_ids_other_sender_not_duplicate(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    let a = kit.msg("alice", "bob", "from alice");
    let mut c = a.clone();
    c.from = "carol".into();
    c.body = vec![MsgElem::text("from carol")];
    c.body_json = body_json(&c.body);
    let (ma, ..) = kit.send(a).await;
    match store.send(c).await {
        Ok(SendOutcome::Stored { message, .. }) => {
            assert_eq!(message.from, "carol", "the second message is carol's");
            assert_eq!(message.msg_key, ma.msg_key, "both have the same MsgKey");
        }
        other => {
            panic!("the same MsgSeq/MsgRandom from another sender must be stored, got {other:?}")
        }
    }
    assert_eq!(kit.head("bob").await, 2, "bob must have two entries");
}

/// `MsgKey` is `"<MsgSeq>_<MsgRandom>_<MsgTime>"`.
pub async fn send_msg_key_format(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let mut m = kit.msg("alice", "bob", "key");
    m.msg_seq = 4_000_000_000;
    m.msg_random = 123;
    let (message, ..) = kit.send(m.clone()).await;
    assert_eq!(
        message.msg_key,
        format!("{}_{}_{}", m.msg_seq, m.msg_random, m.msg_time),
        "MsgKey must be <MsgSeq>_<MsgRandom>_<MsgTime>"
    );
}

/// The same message sent 10 times at once is stored once; the others are duplicates of it.
pub async fn concurrent_duplicates_store_once(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let m = kit.msg("alice", "bob", "retry storm");
    let futs: Vec<BoxFut<'_, StoreResult<SendOutcome>>> =
        (0..10).map(|_| store.send(m.clone())).collect();
    let mut stored = Vec::new();
    let mut dups = Vec::new();
    for r in join_all(futs).await {
        match r {
            Ok(SendOutcome::Stored {
                message,
                sender_seq,
                ..
            }) => stored.push((message, sender_seq)),
            Ok(SendOutcome::Duplicate {
                message,
                sender_entry_seq,
            }) => dups.push((message, sender_entry_seq)),
            Err(e) => panic!("a concurrent retry failed: {e}"),
        }
    }
    assert_eq!(
        stored.len(),
        1,
        "exactly one of 10 concurrent identical sends is stored"
    );
    assert!(
        dups.iter().all(|d| *d == stored[0]),
        "every duplicate returns the stored message and its sender entry number"
    );
    assert_eq!(kit.head("bob").await, 1, "the recipient has one entry");
    assert_eq!(kit.head("alice").await, 1, "the sender has one entry");
    assert_eq!(
        kit.conversation("bob", "alice").await.unread,
        1,
        "counted as unread once"
    );
}

// ---------------------------------------------------------------------------
// Sync
// ---------------------------------------------------------------------------

/// `sync` returns exactly the entries in `(after, upto]`, in order.
pub async fn sync_returns_window_in_order(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let mut expected = Vec::new();
    for i in 0..6 {
        if i % 2 == 0 {
            let (_, r, _) = kit.send(kit.msg("bob", "alice", &format!("b{i}"))).await;
            expected.push(r);
        } else {
            let (_, _, s) = kit.send(kit.msg("alice", "bob", &format!("a{i}"))).await;
            expected.push(s.expect("sender entry"));
        }
    }
    assert_eq!(kit.head("alice").await, 6, "alice has six entries");
    let all = kit.sync("alice", 0, 6, u32::MAX).await;
    assert_eq!(
        all, expected,
        "sync(0, head) must return every entry as written, in order"
    );
    let mid = kit.sync("alice", 2, 5, u32::MAX).await;
    assert_eq!(
        seqs(&mid),
        vec![3, 4, 5],
        "sync(2, 5) must return entries 3, 4, 5"
    );
    assert_eq!(
        mid,
        expected[2..5].to_vec(),
        "sync(2, 5) entries must match those written"
    );
    let mut joined = kit.sync("alice", 0, 2, u32::MAX).await;
    joined.extend(kit.sync("alice", 2, 6, u32::MAX).await);
    assert_eq!(
        joined, all,
        "consecutive windows must join without overlap or gap"
    );
    assert!(
        kit.sync("alice", 6, 6, u32::MAX).await.is_empty(),
        "sync(head, head) must be empty"
    );
    assert!(
        kit.sync("alice", 4, 3, u32::MAX).await.is_empty(),
        "sync with upto < after must be empty"
    );
    assert!(
        kit.sync("nobody", 0, 10, u32::MAX).await.is_empty(),
        "sync of an unknown user must be empty"
    );
}

/// Message entries are cut to the newest `per_conversation` per peer; recall
/// and read entries are never cut.
pub async fn sync_cuts_per_conversation(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    let mut carol_msgs = Vec::new();
    for i in 0..5 {
        kit.say("bob", "alice", &format!("bob {i}")).await;
        if i % 2 == 0 && carol_msgs.len() < 2 {
            carol_msgs.push(kit.say("carol", "alice", &format!("carol {i}")).await);
        }
    }
    // Four read entries with bob (more than the cut) and a recall entry from carol.
    for _ in 0..4 {
        store
            .mark_read("alice", "bob", kit.tick() / 1000, kit.tick())
            .await
            .unwrap_or_else(|e| panic!("mark_read failed: {e}"));
    }
    let carol_first = carol_msgs.first().cloned().expect("carol sent a message");
    kit.recall("carol", &carol_first)
        .await
        .unwrap_or_else(|e| panic!("recall failed: {e}"));
    // The window holds: 5 bob messages, 2 carol messages, 4 reads, 1 recall.
    let head = kit.head("alice").await;
    assert_eq!(head, 12, "alice has 12 entries");

    let full = kit.sync("alice", 0, head, u32::MAX).await;
    assert_gap_free("alice", &full, head);
    let cut = kit.sync("alice", 0, head, 3).await;

    // Expected: the newest 3 message entries per peer, plus every other entry.
    let expected = cut_newest("alice", &full, 3);
    assert_eq!(
        seqs(&cut),
        seqs(&expected),
        "sync with per_conversation = 3 must keep bob's newest 3 and carol's 2 messages, and \
         every read and recall entry, in seq order"
    );
    assert_eq!(cut, expected, "cut entries must equal the uncut ones");
    let count = |f: fn(&Entry) -> bool| cut.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| entry_message(e).is_some()),
        5,
        "3 + 2 message entries survive the cut"
    );
    assert_eq!(
        count(|e| matches!(e.kind, EntryKind::Read(_))),
        4,
        "read entries are never cut"
    );
    assert_eq!(
        count(|e| matches!(e.kind, EntryKind::Recall(_))),
        1,
        "recall entries are never cut"
    );

    // Windows: the cut applies to the messages inside (after, upto] only.
    for after in 0..head {
        for upto in after + 1..=head {
            let window: Vec<Entry> = full
                .iter()
                .filter(|e| e.seq > after && e.seq <= upto)
                .cloned()
                .collect();
            let got = kit.sync("alice", after, upto, 2).await;
            assert_eq!(
                seqs(&got),
                seqs(&cut_newest("alice", &window, 2)),
                "sync(alice, {after}, {upto}, 2) must cut within the window"
            );
        }
    }

    let one = kit.sync("alice", 0, head, 1).await;
    let newest_bob = full
        .iter()
        .rev()
        .find(|e| entry_message(e).is_some_and(|m| m.from == "bob"))
        .map(|e| e.seq);
    let bob_kept: Vec<u64> = one
        .iter()
        .filter(|e| entry_message(e).is_some_and(|m| m.from == "bob"))
        .map(|e| e.seq)
        .collect();
    assert_eq!(
        bob_kept,
        newest_bob.into_iter().collect::<Vec<_>>(),
        "per_conversation = 1 keeps only bob's newest message"
    );
}

/// After a recall, the message's `Message` entry shows flag_bits 8 on both timelines.
pub async fn sync_shows_recalled_flag(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let (m, r, s) = kit.send(kit.msg("alice", "bob", "oops")).await;
    let s = s.expect("sender entry");
    kit.recall("alice", &m)
        .await
        .unwrap_or_else(|e| panic!("recall failed: {e}"));
    for (user, seq) in [("bob", r.seq), ("alice", s.seq)] {
        let entries = kit.sync(user, seq - 1, seq, u32::MAX).await;
        let msg = entries
            .first()
            .and_then(entry_message)
            .unwrap_or_else(|| panic!("{user:?}'s entry {seq} must still be the message"));
        assert_eq!(
            msg.flag_bits,
            duet_proto::model::FLAG_RECALLED,
            "a recalled message's entry in {user:?}'s sync must show flag_bits 8"
        );
    }
}

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

/// History is the user's own view, newest first, paged by `before`, `count`
/// respected, messages with that peer only.
pub async fn history_pages_newest_first(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    let mut with_bob: Vec<Message> = Vec::new();
    for i in 0..7 {
        let m = if i % 2 == 0 {
            kit.say("alice", "bob", &format!("a{i}")).await
        } else {
            kit.say("bob", "alice", &format!("b{i}")).await
        };
        with_bob.push(m);
        kit.say("carol", "alice", &format!("c{i}")).await;
        if i == 3 {
            store
                .mark_read("alice", "bob", kit.tick() / 1000, kit.tick())
                .await
                .unwrap_or_else(|e| panic!("mark_read failed: {e}"));
        }
    }
    let recalled = with_bob[1].clone();
    kit.recall("bob", &recalled)
        .await
        .unwrap_or_else(|e| panic!("recall failed: {e}"));
    with_bob[1].flag_bits = duet_proto::model::FLAG_RECALLED;
    with_bob.reverse(); // newest first

    let all = kit.all_history("alice", "bob").await;
    let got: Vec<&Message> = all.iter().map(|i| &i.message).collect();
    let want: Vec<&Message> = with_bob.iter().collect();
    assert_eq!(
        got, want,
        "history must hold exactly the messages with that peer (no recall/read entries), newest first"
    );
    let hs = history_seqs(&all);
    assert!(
        hs.windows(2).all(|w| w[0] > w[1]),
        "history entry numbers must decrease: {hs:?}"
    );
    let timeline = kit.timeline("alice").await;
    for item in &all {
        let e = timeline
            .iter()
            .find(|e| e.seq == item.seq)
            .unwrap_or_else(|| panic!("history seq {} is not in alice's timeline", item.seq));
        assert_eq!(
            entry_message(e).map(|m| m.msg_key.as_str()),
            Some(item.message.msg_key.as_str()),
            "a history item's seq must be the user's own entry number of that message"
        );
    }

    // Paging with `before` = the smallest seq of the previous page.
    let mut pages: Vec<HistoryItem> = Vec::new();
    let mut before = None;
    loop {
        let page = kit.history("alice", "bob", before, 3).await;
        assert!(
            page.len() <= 3,
            "history must respect count (got {})",
            page.len()
        );
        if page.is_empty() {
            break;
        }
        before = page.last().map(|i| i.seq);
        pages.extend(page);
        assert!(pages.len() <= all.len(), "paging must terminate");
    }
    assert_eq!(pages, all, "pages joined must equal the whole history");
    assert_eq!(
        kit.history("alice", "bob", None, 3).await.len(),
        3,
        "count 3 must return 3 items when more exist"
    );
    if let Some(smallest) = all.last() {
        assert!(
            kit.history("alice", "bob", Some(smallest.seq), 10)
                .await
                .is_empty(),
            "nothing lies before the oldest message"
        );
    }

    // Bob's view: his own entry numbers, the same messages.
    let bob = kit.all_history("bob", "alice").await;
    assert_eq!(
        history_keys(&bob),
        history_keys(&all),
        "both sides see the same messages"
    );
    assert!(
        kit.all_history("alice", "nobody").await.is_empty(),
        "history with a stranger is empty"
    );
}

/// With `SenderCopy::None` the sender's history lacks the message; the recipient's has it.
pub async fn history_without_sender_copy(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let visible = kit.say("alice", "bob", "both").await;
    let mut m = kit.msg("alice", "bob", "bob only");
    m.sender_copy = SenderCopy::None;
    let (hidden, ..) = kit.send(m).await;
    let alice = kit.all_history("alice", "bob").await;
    assert_eq!(
        history_keys(&alice),
        vec![visible.msg_key.as_str()],
        "the sender's history must lack the SenderCopy::None message"
    );
    let bob = kit.all_history("bob", "alice").await;
    assert_eq!(
        history_keys(&bob),
        vec![hidden.msg_key.as_str(), visible.msg_key.as_str()],
        "the recipient's history must have both"
    );
}

// ---------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------

/// Conversations are most recent first (by last time, ties by the most recent
/// entry) and show the newest message.
pub async fn conversations_order_and_last_message(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol", "dave", "erin"]).await;
    kit.say("erin", "alice", "0").await;
    kit.say("alice", "bob", "1").await;
    let carol = kit.say("carol", "alice", "2").await;
    kit.say("alice", "dave", "3").await;
    let bob = kit.say("bob", "alice", "4").await;
    // dave and erin at the same second: erin's entry is newer, so erin comes
    // first (although erin's conversation is the older one).
    let t = kit.tick();
    let dave = kit.send(new_msg("dave", "alice", 9001, t, "5")).await.0;
    let erin = kit.send(new_msg("erin", "alice", 9002, t, "6")).await.0;

    let convs = kit.conversations("alice").await;
    let order: Vec<&str> = convs.iter().map(|c| c.peer.as_str()).collect();
    assert_eq!(
        order,
        vec!["erin", "dave", "bob", "carol"],
        "conversations must be most recent first (ties: most recent entry first)"
    );
    for (conv, m) in convs.iter().zip([&erin, &dave, &bob, &carol]) {
        assert_eq!(
            conv.last_message.as_ref(),
            Some(m),
            "conversation with {:?}: last_message must be the newest message",
            conv.peer
        );
        assert_eq!(
            conv.last_time, m.msg_time,
            "conversation with {:?}: last_time must be its MsgTime",
            conv.peer
        );
    }
    // The sender side: bob's conversation with alice shows his own newest message.
    let b = kit.conversation("bob", "alice").await;
    assert_eq!(
        b.last_message.as_ref().map(|m| m.msg_key.as_str()),
        Some(bob.msg_key.as_str()),
        "the sender's conversation shows its own newest message"
    );
    assert!(
        kit.conversations("nobody").await.is_empty(),
        "an unknown user has no conversations"
    );
}

/// Unread counts only received messages; `no_unread` is not counted;
/// `no_last_msg` leaves the last message as it was.
pub async fn conversations_unread_rules(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    for i in 0..3 {
        kit.say("bob", "alice", &format!("b{i}")).await;
    }
    for i in 0..2 {
        kit.say("alice", "bob", &format!("a{i}")).await;
    }
    kit.say("carol", "alice", "c").await;
    let a = kit.conversation("alice", "bob").await;
    assert_eq!(
        a.unread, 3,
        "alice received 3 from bob: unread 3 (her own sends don't count)"
    );
    let b = kit.conversation("bob", "alice").await;
    assert_eq!(b.unread, 2, "bob received 2 from alice: unread 2");
    assert_eq!(
        kit.conversation("alice", "carol").await.unread,
        1,
        "unread is per conversation"
    );

    let mut quiet = kit.msg("bob", "alice", "no unread");
    quiet.no_unread = true;
    let (quiet, ..) = kit.send(quiet).await;
    let a = kit.conversation("alice", "bob").await;
    assert_eq!(a.unread, 3, "a no_unread message must not be counted");
    assert_eq!(
        a.last_message.as_ref().map(|m| m.msg_key.as_str()),
        Some(quiet.msg_key.as_str()),
        "a no_unread message still becomes the last message"
    );

    let mut hidden = kit.msg("bob", "alice", "no last msg");
    hidden.no_last_msg = true;
    kit.send(hidden).await;
    let a = kit.conversation("alice", "bob").await;
    assert_eq!(
        a.last_message.as_ref().map(|m| m.msg_key.as_str()),
        Some(quiet.msg_key.as_str()),
        "a no_last_msg message must not change the recipient's last message"
    );
    assert_eq!(
        a.last_time, quiet.msg_time,
        "no_last_msg must not change last_time"
    );
    assert_eq!(a.unread, 4, "a no_last_msg message still counts as unread");
    let b = kit.conversation("bob", "alice").await;
    assert_eq!(
        b.last_message.as_ref().map(|m| m.msg_key.as_str()),
        Some(quiet.msg_key.as_str()),
        "a no_last_msg message must not change the sender's last message"
    );
}

/// Unread is capped at 250; the messages are still stored.
pub async fn conversations_unread_capped(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let n = UNREAD_CAP + 10;
    let msgs: Vec<NewMessage> = (0..n)
        .map(|i| kit.msg("bob", "alice", &format!("{i}")))
        .collect();
    let futs: Vec<BoxFut<'_, StoreResult<SendOutcome>>> =
        msgs.into_iter().map(|m| store.send(m)).collect();
    for r in join_all(futs).await {
        if let Err(e) = r {
            panic!("send failed: {e}");
        }
    }
    let a = kit.conversation("alice", "bob").await;
    assert_eq!(
        a.unread, UNREAD_CAP,
        "unread must be capped at {UNREAD_CAP}"
    );
    assert_eq!(
        kit.all_history("alice", "bob").await.len(),
        n as usize,
        "messages over the unread cap are still stored"
    );
}

/// `offset`/`count` page through the list.
pub async fn conversations_paging(store: &dyn Store) {
    let kit = Kit::new(store);
    let peers = ["p1", "p2", "p3", "p4", "p5"];
    kit.users(&["alice"]).await;
    kit.users(&peers).await;
    for p in peers {
        kit.say(p, "alice", "hi").await;
    }
    let all = kit.conversations("alice").await;
    let order: Vec<&str> = all.iter().map(|c| c.peer.as_str()).collect();
    assert_eq!(
        order,
        vec!["p5", "p4", "p3", "p2", "p1"],
        "most recent first"
    );
    let mut joined = Vec::new();
    for offset in (0..6).step_by(2) {
        let page = kit.conversations_page("alice", offset, 2).await;
        let want = all.len().saturating_sub(offset as usize).min(2);
        assert_eq!(page.len(), want, "page at offset {offset} must hold {want}");
        joined.extend(page);
    }
    assert_eq!(joined, all, "pages joined must equal the whole list");
    assert!(
        kit.conversations_page("alice", 5, 10).await.is_empty(),
        "an offset past the end gives an empty page"
    );
    assert!(
        kit.conversations_page("alice", 0, 0).await.is_empty(),
        "count 0 gives an empty page"
    );
}

// ---------------------------------------------------------------------------
// Read reports
// ---------------------------------------------------------------------------

/// `mark_read` zeroes that conversation's unread, writes read entries to both
/// timelines, and sets both sides' read positions.
pub async fn mark_read_zeroes_unread_and_writes_entries(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    for i in 0..3 {
        kit.say("bob", "alice", &format!("b{i}")).await;
    }
    for i in 0..2 {
        kit.say("carol", "alice", &format!("c{i}")).await;
    }
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let now = kit.tick();
    let read_time = now / 1000;
    let out = store
        .mark_read("alice", "bob", read_time, now)
        .await
        .unwrap_or_else(|e| panic!("mark_read failed: {e}"));
    let report = ReadReport {
        reader: "alice".into(),
        peer: "bob".into(),
        read_time,
    };
    assert_eq!(
        out.reader_entry,
        Entry {
            seq: ha + 1,
            ts: now,
            kind: EntryKind::Read(report.clone()),
        },
        "the reader's entry is its head + 1 and holds Read{{reader, peer, read_time}}"
    );
    let peer_entry = out
        .peer_entry
        .expect("the peer exists, so it gets an entry");
    assert_eq!(
        peer_entry,
        Entry {
            seq: hb + 1,
            ts: now,
            kind: EntryKind::Read(report),
        },
        "the peer's entry is its head + 1 and holds the same read report"
    );
    assert_eq!(
        kit.sync("alice", ha, ha + 1, u32::MAX).await,
        vec![out.reader_entry.clone()],
        "the reader's entry is in its timeline"
    );
    assert_eq!(
        kit.sync("bob", hb, hb + 1, u32::MAX).await,
        vec![peer_entry],
        "the peer's entry is in its timeline"
    );

    let a = kit.conversation("alice", "bob").await;
    assert_eq!(a.unread, 0, "mark_read must zero the unread count");
    assert_eq!(
        a.read_time, read_time,
        "mark_read must set the reader's read_time"
    );
    let c = kit.conversation("alice", "carol").await;
    assert_eq!(c.unread, 2, "mark_read must not touch other conversations");
    let b = kit.conversation("bob", "alice").await;
    assert_eq!(
        b.peer_read_time, read_time,
        "the peer's conversation must show peer_read_time = read_time"
    );

    // A peer that does not exist gets no entry; the reader still does.
    let out = store
        .mark_read("alice", "ghost", read_time, kit.tick())
        .await
        .unwrap_or_else(|e| panic!("mark_read(ghost) failed: {e}"));
    assert_eq!(out.peer_entry, None, "an unknown peer gets no entry");
    assert_eq!(
        out.reader_entry.seq,
        ha + 2,
        "the reader still gets its entry"
    );
    assert_eq!(
        kit.head("ghost").await,
        0,
        "nothing is written for an unknown peer"
    );
}

// ---------------------------------------------------------------------------
// Recall
// ---------------------------------------------------------------------------

/// A recall by the sender writes recall entries to both timelines and flags the message.
pub async fn recall_by_sender(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let m = kit.say("alice", "bob", "oops").await;
    kit.say("bob", "alice", "what?").await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let out = kit
        .recall("alice", &m)
        .await
        .unwrap_or_else(|e| panic!("recall by the sender failed: {e}"));
    let recall = EntryKind::Recall(Recall {
        msg_key: m.msg_key.clone(),
        from: "alice".into(),
        to: "bob".into(),
    });
    assert_eq!(
        out.recipient_entry.seq,
        hb + 1,
        "the recipient's recall entry is its head + 1"
    );
    assert_eq!(
        out.recipient_entry.kind, recall,
        "the recipient's entry is Recall{{msg_key, from, to}}"
    );
    let s = out
        .sender_entry
        .clone()
        .expect("the sender has a copy, so it gets a recall entry");
    assert_eq!(s.seq, ha + 1, "the sender's recall entry is its head + 1");
    assert_eq!(
        s.kind, recall,
        "the sender's entry is Recall{{msg_key, from, to}}"
    );
    assert_eq!(
        kit.sync("bob", hb, hb + 1, u32::MAX).await,
        vec![out.recipient_entry],
        "the recipient's recall entry is in its timeline"
    );
    assert_eq!(
        kit.sync("alice", ha, ha + 1, u32::MAX).await,
        vec![s],
        "the sender's recall entry is in its timeline"
    );
    for (user, peer) in [("alice", "bob"), ("bob", "alice")] {
        let h = kit.all_history(user, peer).await;
        let item = h
            .iter()
            .find(|i| i.message.msg_key == m.msg_key)
            .unwrap_or_else(|| panic!("{user:?}'s history must still hold the recalled message"));
        assert_eq!(
            item.message.flag_bits,
            duet_proto::model::FLAG_RECALLED,
            "the recalled message shows flag_bits 8 in {user:?}'s history"
        );
        assert!(
            h.iter()
                .filter(|i| i.message.msg_key != m.msg_key)
                .all(|i| i.message.flag_bits == 0),
            "other messages are not flagged"
        );
    }
}

/// Recalling an already recalled message fails with `AlreadyRecalled`.
pub async fn recall_twice_already_recalled(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let m = kit.say("alice", "bob", "oops").await;
    kit.recall("alice", &m)
        .await
        .unwrap_or_else(|e| panic!("first recall failed: {e}"));
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    assert_eq!(
        kit.recall("alice", &m).await,
        Err(StoreError::AlreadyRecalled),
        "a second recall must fail with AlreadyRecalled"
    );
    assert_eq!(
        (kit.head("alice").await, kit.head("bob").await),
        (ha, hb),
        "a refused recall writes nothing"
    );
}

/// Only the sender may recall: anyone else gets `MessageNotFound`.
pub async fn recall_by_other_not_found(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    let m = kit.say("alice", "bob", "mine").await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    for by in ["bob", "carol"] {
        assert_eq!(
            kit.recall(by, &m).await,
            Err(StoreError::MessageNotFound),
            "a recall by {by:?} (not the sender) must fail with MessageNotFound"
        );
    }
    assert_eq!(
        (kit.head("alice").await, kit.head("bob").await),
        (ha, hb),
        "a refused recall writes nothing"
    );
    let h = kit.all_history("bob", "alice").await;
    assert_eq!(
        h.first().map(|i| i.message.flag_bits),
        Some(0),
        "the message is not recalled"
    );
}

/// Recalling a key that does not exist fails with `MessageNotFound`.
pub async fn recall_unknown_key_not_found(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let m = kit.say("alice", "bob", "real").await;
    let real = key_of(&m);
    let keys = [
        MsgKey {
            seq: 424_242,
            random: 1,
            time: 1,
        },
        // Right MsgSeq and MsgRandom, wrong MsgTime.
        MsgKey {
            time: real.time + 1,
            ..real
        },
    ];
    for key in keys {
        let r = store
            .recall(RecallRequest {
                by: "alice".into(),
                key,
                not_before: None,
                now_ms: kit.tick(),
            })
            .await;
        assert_eq!(
            r,
            Err(StoreError::MessageNotFound),
            "recall of unknown key {key} must fail with MessageNotFound"
        );
    }
}

/// A recall after the window (`MsgTime` before `not_before`) fails with
/// `RecallWindowPassed` and changes nothing; at the edge it succeeds.
pub async fn recall_window_passed(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let m = kit.say("alice", "bob", "old").await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let late = store
        .recall(RecallRequest {
            by: "alice".into(),
            key: key_of(&m),
            not_before: Some(m.msg_time + 1),
            now_ms: kit.tick(),
        })
        .await;
    assert_eq!(
        late,
        Err(StoreError::RecallWindowPassed),
        "a recall with not_before later than MsgTime must fail with RecallWindowPassed"
    );
    assert_eq!(
        (kit.head("alice").await, kit.head("bob").await),
        (ha, hb),
        "a refused recall writes nothing"
    );
    let h = kit.all_history("bob", "alice").await;
    assert_eq!(
        h.first().map(|i| i.message.flag_bits),
        Some(0),
        "a refused recall must leave the message unrecalled"
    );
    let edge = store
        .recall(RecallRequest {
            by: "alice".into(),
            key: key_of(&m),
            not_before: Some(m.msg_time),
            now_ms: kit.tick(),
        })
        .await;
    assert!(
        edge.is_ok(),
        "a recall with not_before == MsgTime is inside the window, got {edge:?}"
    );
}

/// The recall of a `SenderCopy::None` message writes only the recipient's entry.
pub async fn recall_without_sender_copy(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob"]).await;
    let mut m = kit.msg("alice", "bob", "recipient only");
    m.sender_copy = SenderCopy::None;
    let (m, ..) = kit.send(m).await;
    let (ha, hb) = (kit.head("alice").await, kit.head("bob").await);
    let out = kit
        .recall("alice", &m)
        .await
        .unwrap_or_else(|e| panic!("recall failed: {e}"));
    assert_eq!(
        out.sender_entry, None,
        "the sender had no copy, so no sender entry"
    );
    assert_eq!(
        out.recipient_entry.seq,
        hb + 1,
        "the recipient gets its recall entry"
    );
    assert_eq!(
        kit.head("alice").await,
        ha,
        "the sender's head does not move"
    );
}

// ---------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------

/// A sweep removes only what is older than the cutoff, in chunks; numbering
/// continues; a conversation whose last message expired disappears.
pub async fn sweep_removes_expired_only(store: &dyn Store) {
    let kit = Kit::new(store);
    kit.users(&["alice", "bob", "carol"]).await;
    let t_old = T0_MS;
    let t_new = T0_MS + 10 * DAY_MS;
    let mut seq = 100;
    let mut at = |from: &str, to: &str, t: u64| {
        seq += 1;
        new_msg(from, to, seq, t + u64::from(seq), "x")
    };
    // Old: 3 alice↔bob messages and 1 alice→carol message (8 entries, 4 messages).
    let old_msgs = [
        at("alice", "bob", t_old),
        at("bob", "alice", t_old),
        at("alice", "bob", t_old),
        at("alice", "carol", t_old),
    ];
    let new_msgs = [at("alice", "bob", t_new), at("bob", "alice", t_new)];
    for m in old_msgs {
        kit.send(m).await;
    }
    let mut kept = Vec::new();
    for m in new_msgs {
        kept.push(kit.send(m).await.0);
    }
    let heads: BTreeMap<&str, u64> = BTreeMap::from([
        ("alice", kit.head("alice").await),
        ("bob", kit.head("bob").await),
        ("carol", kit.head("carol").await),
    ]);

    let cutoff = t_old + DAY_MS;
    let mut total = crate::SweepReport::default();
    let mut rounds = 0;
    loop {
        let r = store
            .sweep(cutoff, 2)
            .await
            .unwrap_or_else(|e| panic!("sweep failed: {e}"));
        assert!(
            r.entries <= 3 * 2 && r.messages <= 2 && r.conversations <= 2 * 2,
            "a sweep must remove at most `chunk` messages (with their entries) and other \
             entries, and `2 × chunk` conversations, got {r:?}"
        );
        total.entries += r.entries;
        total.messages += r.messages;
        total.conversations += r.conversations;
        if !r.more {
            break;
        }
        rounds += 1;
        assert!(rounds <= 100, "sweep must finish");
    }
    assert_eq!(
        total,
        crate::SweepReport {
            entries: 8,
            messages: 4,
            conversations: 2,
            more: false,
        },
        "the sweep must remove the 8 old entries, 4 old messages and the 2 alice↔carol \
         conversations (whose last message expired), nothing else"
    );
    assert!(
        rounds >= 2,
        "chunk 2 must take several rounds to remove 4 messages"
    );

    let h = kit.all_history("alice", "bob").await;
    let kept_keys: Vec<&str> = kept.iter().rev().map(|m| m.msg_key.as_str()).collect();
    assert_eq!(
        history_keys(&h),
        kept_keys,
        "history keeps only the new messages"
    );
    assert!(
        kit.all_history("alice", "carol").await.is_empty(),
        "expired history is gone"
    );
    for (user, head) in &heads {
        assert_eq!(
            kit.head(user).await,
            *head,
            "a sweep must not change {user:?}'s head"
        );
        let entries = kit.sync(user, 0, *head, u32::MAX).await;
        assert!(
            entries.iter().all(|e| e.ts >= cutoff),
            "sync of {user:?} must not return swept entries"
        );
    }
    assert_eq!(
        kit.sync("alice", 0, heads["alice"], u32::MAX).await.len(),
        2,
        "alice keeps her 2 new entries"
    );
    assert!(
        kit.sync("carol", 0, heads["carol"], u32::MAX)
            .await
            .is_empty(),
        "carol's only entry expired"
    );

    let convs = kit.conversations("alice").await;
    let peers: Vec<&str> = convs.iter().map(|c| c.peer.as_str()).collect();
    assert_eq!(
        peers,
        vec!["bob"],
        "the conversation whose last message expired disappears"
    );
    assert!(
        kit.conversations("carol").await.is_empty(),
        "carol's conversation expired"
    );

    // Numbers are never reused.
    let (_, r, s) = kit.send(kit.msg("carol", "alice", "after sweep")).await;
    assert_eq!(
        r.seq,
        heads["alice"] + 1,
        "the next entry after a sweep is head + 1"
    );
    assert_eq!(
        s.map(|s| s.seq),
        Some(heads["carol"] + 1),
        "numbers are never reused after a sweep"
    );
}

/// A sweep over many conversations (more than a backend may look at in one
/// call) removes exactly the expired ones, whatever their place in the
/// table, and then reports that it is finished.
pub async fn sweep_finds_every_expired_conversation(store: &dyn Store) {
    let kit = Kit::new(store);
    // 100 users, one message per pair: 4,950 pairs, 9,900 conversation rows
    // (one on each side of a pair).
    const USERS: usize = 100;
    let names: Vec<String> = (0..USERS).map(|i| format!("w{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    kit.users(&refs).await;
    let t_old = T0_MS;
    let t_new = T0_MS + 10 * DAY_MS;
    // Old pairs (their only message expires): some among the first users,
    // and all pairs of the last ten users, so that in key order the expired
    // rows sit at the start and at the end, with thousands of live rows
    // between them.
    let is_old = |i: usize, j: usize| {
        (i >= 90 && j >= 90) || (i < 40 && j < 40 && (i + j).is_multiple_of(7))
    };
    let mut msgs = Vec::new();
    let mut seq = 10_000u32;
    let mut old_pairs = 0u64;
    for i in 0..USERS {
        for j in (i + 1)..USERS {
            seq += 1;
            let old = is_old(i, j);
            old_pairs += u64::from(old);
            let t = if old { t_old } else { t_new } + u64::from(seq);
            msgs.push(new_msg(&names[i], &names[j], seq, t, "x"));
        }
    }
    while !msgs.is_empty() {
        let rest = msgs.split_off(msgs.len().min(200));
        let sends: Vec<BoxFut<'_, ()>> = std::mem::replace(&mut msgs, rest)
            .into_iter()
            .map(|m| {
                let kit = &kit;
                Box::pin(async move {
                    kit.send(m).await;
                }) as BoxFut<'_, ()>
            })
            .collect();
        join_all(sends).await;
    }
    let cutoff = t_old + DAY_MS;
    let mut removed = 0u64;
    let mut calls = 0;
    loop {
        let r = store
            .sweep(cutoff, 5000)
            .await
            .unwrap_or_else(|e| panic!("sweep failed: {e}"));
        removed += r.conversations;
        calls += 1;
        assert!(calls <= 1000, "sweep must finish");
        if !r.more {
            break;
        }
    }
    assert_eq!(
        removed,
        2 * old_pairs,
        "every expired conversation (both sides of each old pair) is removed, nothing else"
    );
    for (i, name) in names.iter().enumerate() {
        let convs = kit.conversations(name).await;
        let mut peers: Vec<&str> = convs.iter().map(|c| c.peer.as_str()).collect();
        peers.sort_unstable();
        let expected: Vec<&str> = (0..USERS)
            .filter(|&j| j != i && !is_old(i.min(j), i.max(j)))
            .map(|j| names[j].as_str())
            .collect();
        assert_eq!(
            peers, expected,
            "{name} keeps exactly its unexpired conversations"
        );
    }
    let again = store
        .sweep(cutoff, 5000)
        .await
        .unwrap_or_else(|e| panic!("sweep failed: {e}"));
    assert_eq!(again.total(), 0, "a finished sweep finds nothing more");
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

/// 200 concurrent sends: every timeline is gap-free with no duplicate numbers.
pub async fn concurrent_sends_gap_free(store: &dyn Store) {
    let kit = Kit::new(store);
    let users = ["alice", "bob", "carol", "dave"];
    kit.users(&users).await;
    const N: usize = 200;
    let msgs: Vec<NewMessage> = (0..N)
        .map(|i| {
            let from = users[i % 4];
            let to = users[(i + 1 + i / 4 % 3) % 4];
            kit.msg(from, to, &format!("c{i}"))
        })
        .collect();
    let futs: Vec<BoxFut<'_, StoreResult<SendOutcome>>> =
        msgs.into_iter().map(|m| store.send(m)).collect();
    let mut per_user: HashMap<String, Vec<u64>> = HashMap::new();
    for r in join_all(futs).await {
        match r {
            Ok(SendOutcome::Stored {
                message,
                recipient_seq,
                sender_seq,
                ..
            }) => {
                per_user
                    .entry(message.to.clone())
                    .or_default()
                    .push(recipient_seq);
                if let Some(s) = sender_seq {
                    per_user.entry(message.from.clone()).or_default().push(s);
                }
            }
            other => panic!("a concurrent send must be stored, got {other:?}"),
        }
    }
    let mut total = 0;
    for user in users {
        let head = kit.head(user).await;
        total += head;
        let mut got = per_user.remove(user).unwrap_or_default();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=head).collect::<Vec<_>>(),
            "the entry numbers returned to {user:?}'s sends must be 1..={head}, each once"
        );
        assert_gap_free(user, &kit.timeline(user).await, head);
    }
    assert_eq!(total, 2 * N as u64, "every send writes two entries");
}
