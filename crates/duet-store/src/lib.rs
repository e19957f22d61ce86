//! Store traits for Duet (Law 8: handlers never see SQL).
//!
//! A [`Store`] owns accounts, messages, every user's gap-free timeline
//! (Law 3) and the per-user conversation views. Every mutating call is one
//! atomic transaction: it either happens whole or not at all (Law 7), and it
//! returns only after the data is durable (Law 1).
//!
//! Backends: `duet-store-sqlite` (embedded). Each backend runs the
//! [`conformance`] suite in its own tests.

pub mod conformance;

use async_trait::async_trait;
use duet_proto::{Conversation, Entry, HistoryItem, Message, MsgElem, MsgKey};

/// Errors a store can return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An account the operation needs does not exist.
    #[error("account {0:?} does not exist")]
    UnknownAccount(String),
    /// The message does not exist (or is not this user's to act on).
    #[error("message not found")]
    MessageNotFound,
    /// The message was already recalled.
    #[error("message already recalled")]
    AlreadyRecalled,
    /// The recall window has passed.
    #[error("recall window has passed")]
    RecallWindowPassed,
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// Too many writes are waiting: retry later (nothing was written).
    #[error("the store is overloaded: too many writes waiting")]
    Overloaded,
    /// The backend failed (I/O, SQL, corruption).
    #[error("store backend error: {0}")]
    Backend(String),
}

/// Result alias.
pub type StoreResult<T> = Result<T, StoreError>;

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// UserID.
    pub user_id: String,
    /// Nickname.
    pub nick: String,
    /// Face (avatar) URL.
    pub face_url: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

/// Whose timelines a new message is written to besides the recipient's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderCopy {
    /// Write the message into the sender's timeline (their history and other devices).
    Timeline,
    /// Recipient-only copy (REST `SyncOtherMachine=2`).
    None,
}

/// A message to commit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender (must exist).
    pub from: String,
    /// Recipient (must exist, else [`StoreError::UnknownAccount`]).
    pub to: String,
    /// `MsgSeq`.
    pub msg_seq: u32,
    /// `MsgRandom`.
    pub msg_random: u32,
    /// `MsgTime`, Unix seconds (server clock).
    pub msg_time: u64,
    /// The body, already validated.
    pub body: Vec<MsgElem>,
    /// The body as JSON, as validated (stored as-is).
    pub body_json: String,
    /// `CloudCustomData`.
    pub cloud_custom_data: String,
    /// Sender copy policy.
    pub sender_copy: SenderCopy,
    /// Do not count as unread for the recipient.
    pub no_unread: bool,
    /// Do not update the conversations' last message.
    pub no_last_msg: bool,
    /// Write time, Unix milliseconds (timeline `ts`).
    pub now_ms: u64,
}

impl NewMessage {
    /// A one-text-element message from `from` to `to`, written at `now_ms`
    /// (`MsgTime` its second), with a sender copy, counted unread and as the
    /// last message: the usual send, for tests and benchmarks.
    pub fn text(
        from: &str,
        to: &str,
        msg_seq: u32,
        msg_random: u32,
        now_ms: u64,
        text: &str,
    ) -> NewMessage {
        let body = vec![MsgElem::text(text)];
        NewMessage {
            from: from.into(),
            to: to.into(),
            msg_seq,
            msg_random,
            msg_time: now_ms / 1000,
            // A body of text elements always serializes.
            body_json: serde_json::to_string(&body).unwrap_or_default(),
            body,
            cloud_custom_data: String::new(),
            sender_copy: SenderCopy::Timeline,
            no_unread: false,
            no_last_msg: false,
            now_ms,
        }
    }
}

/// What a send committed.
// Returned once per send and never stored in bulk, so the size difference
// between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Newly stored: one message entry on the recipient's timeline and, unless
    /// [`SenderCopy::None`], one on the sender's, both of `message` and
    /// written at `ts` ([`SendOutcome::recipient_entry`] and
    /// [`SendOutcome::sender_entry`] build them). The entries are given by
    /// number so that the message is not copied into each of them.
    Stored {
        /// The stored message (with the sender's profile snapshot).
        message: Message,
        /// The recipient's new entry number.
        recipient_seq: u64,
        /// The sender's new entry number, unless [`SenderCopy::None`].
        sender_seq: Option<u64>,
        /// When the entries were written, Unix milliseconds.
        ts: u64,
    },
    /// A retry of a message already stored (same sender, `MsgSeq`, `MsgRandom`):
    /// nothing was written.
    Duplicate {
        /// The original message.
        message: Message,
        /// The sender's entry number for it, if it has one.
        sender_entry_seq: Option<u64>,
    },
}

impl SendOutcome {
    /// The message, stored or original.
    pub fn message(&self) -> &Message {
        match self {
            SendOutcome::Stored { message, .. } | SendOutcome::Duplicate { message, .. } => message,
        }
    }

    /// The recipient's new entry (a copy of the message), if newly stored.
    pub fn recipient_entry(&self) -> Option<Entry> {
        match self {
            SendOutcome::Stored {
                message,
                recipient_seq,
                ts,
                ..
            } => Some(message_entry(*recipient_seq, *ts, message)),
            SendOutcome::Duplicate { .. } => None,
        }
    }

    /// The sender's new entry (a copy of the message), if newly stored with
    /// a sender copy.
    pub fn sender_entry(&self) -> Option<Entry> {
        match self {
            SendOutcome::Stored {
                message,
                sender_seq: Some(seq),
                ts,
                ..
            } => Some(message_entry(*seq, *ts, message)),
            _ => None,
        }
    }
}

fn message_entry(seq: u64, ts: u64, message: &Message) -> Entry {
    Entry {
        seq,
        ts,
        kind: duet_proto::EntryKind::Message {
            message: message.clone(),
        },
    }
}

/// What a read report wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOutcome {
    /// The reader's own entry (for its other devices).
    pub reader_entry: Entry,
    /// The peer's entry (the read receipt), if the peer exists.
    pub peer_entry: Option<Entry>,
}

/// A recall request by a user of their own message.
#[derive(Debug, Clone)]
pub struct RecallRequest {
    /// Who asks; must be the sender.
    pub by: String,
    /// The message.
    pub key: MsgKey,
    /// Refuse with [`StoreError::RecallWindowPassed`] if `MsgTime` is before this (Unix seconds).
    pub not_before: Option<u64>,
    /// Write time, Unix milliseconds.
    pub now_ms: u64,
}

/// What a recall wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallOutcome {
    /// The sender's entry (if the sender has a copy).
    pub sender_entry: Option<Entry>,
    /// The recipient's entry.
    pub recipient_entry: Entry,
}

/// What a retention sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Timeline entries removed.
    pub entries: u64,
    /// Messages removed.
    pub messages: u64,
    /// Conversations removed (their last message expired).
    pub conversations: u64,
    /// The sweep is not finished: call again, even if this call removed
    /// nothing (a backend may look at its rows a bounded part at a time).
    pub more: bool,
}

impl SweepReport {
    /// Total rows removed.
    pub fn total(&self) -> u64 {
        self.entries + self.messages + self.conversations
    }
}

/// Told about every group commit (metrics).
pub trait CommitObserver: Send + Sync {
    /// A batch of `jobs` writes was committed in `latency` (queue to durable).
    fn batch_committed(&self, jobs: usize, latency: std::time::Duration);
}

/// The store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store epoch: fixed for the life of the data. A client whose cursor
    /// came from another epoch must resync from 0.
    fn epoch(&self) -> &str;

    /// Whether writes issued one after another (each call polled once before
    /// the next is made, none awaited) are committed in that order. When not,
    /// the gateway commits a connection's sends one at a time, so that a
    /// device's messages keep their order.
    fn keeps_issue_order(&self) -> bool {
        false
    }

    /// Returns the account, creating it (empty profile) if missing.
    async fn ensure_account(&self, user: &str, now_ms: u64) -> StoreResult<Account>;

    /// The account, if it exists.
    async fn account(&self, user: &str) -> StoreResult<Option<Account>>;

    /// For a login: the account (created with an empty profile if missing)
    /// and the newest entry number of its timeline, in one call.
    async fn login(&self, user: &str, now_ms: u64) -> StoreResult<(Account, u64)> {
        let account = self.ensure_account(user, now_ms).await?;
        Ok((account, self.head(user).await?))
    }

    /// Updates the profile fields given; creates the account if missing.
    async fn set_profile(
        &self,
        user: &str,
        nick: Option<String>,
        face_url: Option<String>,
        now_ms: u64,
    ) -> StoreResult<Account>;

    /// Commits a message: one stored copy, timeline entries for the
    /// recipient (and the sender unless [`SenderCopy::None`]), conversation
    /// views updated. Idempotent on (from, msg_seq, msg_random).
    async fn send(&self, msg: NewMessage) -> StoreResult<SendOutcome>;

    /// The newest entry number of `user`'s timeline (0 if none).
    async fn head(&self, user: &str) -> StoreResult<u64>;

    /// Entries of `user` with `after < seq <= upto`, in order, at most `limit`
    /// of them (Law 6: callers page). Message entries are cut to the newest
    /// `per_conversation` per peer; other entries are all returned. The cut
    /// only depends on newer entries, so paging with `after` = the last
    /// returned `seq` yields exactly the entries of one unlimited call.
    async fn sync(
        &self,
        user: &str,
        after: u64,
        upto: u64,
        per_conversation: u32,
        limit: u32,
    ) -> StoreResult<Vec<Entry>>;

    /// `user`'s view of the conversation with `peer`: up to `count` messages
    /// with entry number below `before` (all if `None`), newest first.
    async fn history(
        &self,
        user: &str,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> StoreResult<Vec<HistoryItem>>;

    /// `user`'s conversations, most recent first, `count` from `offset`.
    async fn conversations(
        &self,
        user: &str,
        offset: u32,
        count: u32,
    ) -> StoreResult<Vec<Conversation>>;

    /// `user` has read everything from `peer` up to `read_time` (Unix seconds):
    /// zeroes the unread count and writes read entries to both timelines.
    async fn mark_read(
        &self,
        user: &str,
        peer: &str,
        read_time: u64,
        now_ms: u64,
    ) -> StoreResult<ReadOutcome>;

    /// Recalls a message: status recalled, recall entries on both timelines.
    async fn recall(&self, req: RecallRequest) -> StoreResult<RecallOutcome>;

    /// Removes expired rows, a bounded part per call: at most `chunk`
    /// messages (with their timeline entries: up to two each), `chunk` other
    /// timeline entries and at most `2 × chunk` conversations (a backend that
    /// derives a view from its messages removes it with the last of them, up
    /// to two per message). Messages and conversations expire by message
    /// time, entries by write time, all before `cutoff_ms`.
    /// Call repeatedly until it returns a report with `more == false`.
    /// Timeline numbering is unaffected: numbers are never reused.
    async fn sweep(&self, cutoff_ms: u64, chunk: u32) -> StoreResult<SweepReport>;
}

/// One logged-in device, as shared presence records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceDevice {
    /// The user.
    pub user_id: String,
    /// The node holding the connection.
    pub node_id: String,
    /// The connection, unique on its node.
    pub conn_id: u64,
    /// The device id.
    pub device_id: String,
    /// The platform.
    pub platform: String,
}

/// A change of one node's connected devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// A device logged in on the node.
    Online(PresenceDevice),
    /// A connection of the node closed.
    Offline {
        /// The connection.
        conn_id: u64,
    },
}

/// Presence shared by the nodes of a cluster: which devices are connected
/// where. Nodes report changes and stay alive by reporting (possibly no
/// changes) regularly; the devices of a node not seen for a while count as
/// offline, so a dead node's devices expire by themselves.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// A node starts: forgets whatever it registered in an earlier life.
    async fn presence_node_start(&self, node: &str, now_ms: u64) -> StoreResult<()>;

    /// Applies `changes` of `node` in order and marks it alive at `now_ms`.
    async fn presence_update(
        &self,
        node: &str,
        changes: Vec<PresenceChange>,
        now_ms: u64,
    ) -> StoreResult<()>;

    /// The devices of `users` on nodes alive at or after `alive_since_ms`.
    async fn presence_online(
        &self,
        users: &[String],
        alive_since_ms: u64,
    ) -> StoreResult<Vec<PresenceDevice>>;
}
