//! Write jobs. Each runs on the writer thread inside its batch's transaction
//! and follows one rule: **check everything that can refuse the write before
//! the first write** (unknown accounts, missing or recalled messages, …). A
//! refusal then leaves nothing behind and fails alone, without a savepoint;
//! an error after the first write can only be a backend failure, and the
//! writer isolates it by re-running the batch in parts (see `writer`).
//! Jobs read their input by reference: they may run more than once.
//!
//! Timeline numbers come from [`Tx::next_seq`], taken only once the job is
//! sure to write the entry (Law 3). A message's entries are not rows: they
//! go to the tail with the transaction ([`Tx::push_entry`]) and are merged
//! into their views' chunks later (see `tail`, `merge`).

use std::collections::BTreeMap;
use std::sync::Arc;

use duet_proto::model::FLAG_RECALLED;
use duet_proto::{Entry, EntryKind, Message, MsgKey, ReadReport, Recall};
use duet_store::{
    Account, NewMessage, ReadOutcome, RecallOutcome, RecallRequest, SendOutcome, SenderCopy,
    StoreError, StoreResult, SweepReport,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::accounts::AccountState;
use crate::db;
use crate::keys::{self, Key};
use crate::merge;
use crate::rows::{
    ENTRY_NO_LAST, ENTRY_UNREAD, KIND_READ, KIND_RECALL, account_at, message_at, msg_cols, sql_u64,
    u64_at,
};
use crate::tail::TailEntry;
use crate::writer::Tx;

const SELECT_ACCOUNT: &str = "SELECT a.user_id, a.nick, a.face_url, a.created_ms, \
     COALESCE(h.head, 0) FROM accounts a LEFT JOIN heads h ON h.uid = a.uid WHERE a.user_id = ?1";

/// The account and its timeline head, if it exists (the read path).
pub(crate) fn account(conn: &Connection, user: &str) -> rusqlite::Result<Option<(Account, u64)>> {
    conn.prepare_cached(SELECT_ACCOUNT).and_then(|mut s| {
        s.query_row([user], |r| Ok((account_at(r)?, u64_at(r, 4)?)))
            .optional()
    })
}

/// Input of [`ensure_account`].
pub(crate) struct EnsureAccount {
    pub(crate) user: String,
    pub(crate) now_ms: u64,
}

/// Returns the account and its timeline head, creating the account (empty
/// profile) if missing.
pub(crate) fn ensure_account(
    tx: &mut Tx<'_, '_>,
    req: &EnsureAccount,
) -> StoreResult<(Account, u64)> {
    if let Some(state) = tx.account(&req.user)? {
        return Ok((state.to_account(&req.user), state.head));
    }
    tx.conn()
        .prepare_cached("INSERT INTO accounts (user_id, created_ms) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![req.user, sql_u64(req.now_ms)]))
        .map_err(db)?;
    let state = AccountState {
        uid: tx.conn().last_insert_rowid(),
        head: 0,
        nick: Arc::from(""),
        face_url: Arc::from(""),
        created_ms: req.now_ms,
    };
    let account = state.to_account(&req.user);
    tx.put_account(&req.user, state);
    Ok((account, 0))
}

/// Input of [`set_profile`].
pub(crate) struct SetProfile {
    pub(crate) user: String,
    pub(crate) nick: Option<String>,
    pub(crate) face_url: Option<String>,
    pub(crate) now_ms: u64,
}

/// Updates the profile fields given; creates the account if missing.
pub(crate) fn set_profile(tx: &mut Tx<'_, '_>, req: &SetProfile) -> StoreResult<Account> {
    let user = req.user.as_str();
    let (nick, face_url) = (req.nick.as_deref(), req.face_url.as_deref());
    let Some(mut state) = tx.account(user)? else {
        tx.conn()
            .prepare_cached(
                "INSERT INTO accounts (user_id, nick, face_url, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    user,
                    nick.unwrap_or_default(),
                    face_url.unwrap_or_default(),
                    sql_u64(req.now_ms)
                ])
            })
            .map_err(db)?;
        let state = AccountState {
            uid: tx.conn().last_insert_rowid(),
            head: 0,
            nick: Arc::from(nick.unwrap_or_default()),
            face_url: Arc::from(face_url.unwrap_or_default()),
            created_ms: req.now_ms,
        };
        let account = state.to_account(user);
        tx.put_account(user, state);
        return Ok(account);
    };
    let nick = nick.filter(|n| *n != &*state.nick);
    let face_url = face_url.filter(|f| *f != &*state.face_url);
    if nick.is_none() && face_url.is_none() {
        return Ok(state.to_account(user));
    }
    let n = tx
        .conn()
        .prepare_cached(
            "UPDATE accounts SET nick = COALESCE(?3, nick), face_url = COALESCE(?4, face_url) \
             WHERE uid = ?1 AND user_id = ?2",
        )
        .and_then(|mut s| s.execute(params![state.uid, user, nick, face_url]))
        .map_err(db)?;
    if n != 1 {
        return Err(StoreError::Backend(format!(
            "account {user:?} is not where the writer's cache says"
        )));
    }
    if let Some(nick) = nick {
        state.nick = Arc::from(nick);
    }
    if let Some(face_url) = face_url {
        state.face_url = Arc::from(face_url);
    }
    let account = state.to_account(user);
    tx.put_account(user, state);
    Ok(account)
}

fn insert_payload_entry(
    conn: &Connection,
    uid: i64,
    seq: u64,
    ts: u64,
    kind: i64,
    peer_uid: i64,
    payload: &str,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO timeline (uid, seq, ts, kind, peer_uid, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![uid, sql_u64(seq), sql_u64(ts), kind, peer_uid, payload]))
    .map_err(db)?;
    Ok(())
}

/// What [`send`] wrote; [`send_outcome`] turns it into the caller's answer
/// (off the writer thread).
#[derive(Debug)]
pub(crate) enum SendWritten {
    /// Stored with these numbers and this sender profile snapshot.
    Stored {
        nick: Arc<str>,
        face_url: Arc<str>,
        recipient_seq: u64,
        sender_seq: Option<u64>,
    },
    /// A retry: the original, with the sender's entry number if it has one.
    Duplicate {
        message: Message,
        sender_entry_seq: Option<u64>,
    },
}

/// The original of a retried message: message `msg_id`, which its key found.
fn original(conn: &Connection, msg_id: i64) -> StoreResult<SendWritten> {
    conn.prepare_cached(concat!(
        "SELECT ",
        msg_cols!(),
        ", m.sender_seq FROM messages m WHERE m.msg_id = ?1"
    ))
    .and_then(|mut s| {
        s.query_row([msg_id], |r| {
            Ok(SendWritten::Duplicate {
                message: message_at(r, 0)?,
                sender_entry_seq: r
                    .get::<_, Option<i64>>(10)?
                    .and_then(|s| u64::try_from(s).ok()),
            })
        })
        .optional()
    })
    .map_err(db)?
    .ok_or_else(|| StoreError::Backend(format!("message {msg_id}: its key outlived it")))
}

/// Commits a message (see `Store::send`).
pub(crate) fn send(tx: &mut Tx<'_, '_>, msg: &NewMessage) -> StoreResult<SendWritten> {
    // Refusals first: the recipient, then the sender must exist.
    let Some(recipient) = tx.account(&msg.to)? else {
        return Err(StoreError::UnknownAccount(msg.to.clone()));
    };
    // A message to oneself gets one entry (the recipient's) and no unread.
    let self_send = msg.from == msg.to;
    let sender = if self_send {
        recipient.clone()
    } else {
        match tx.account(&msg.from)? {
            Some(sender) => sender,
            None => return Err(StoreError::UnknownAccount(msg.from.clone())),
        }
    };
    let sender_copy = msg.sender_copy == SenderCopy::Timeline && !self_send;
    // The numbers the entries will get, if the message is new.
    let recipient_seq = recipient.head + 1;
    let sender_seq = sender_copy.then_some(sender.head + 1);
    // The conversation views are derived from the entries (see migration 4):
    // the recipient's counts as unread unless told otherwise.
    let no_last = if msg.no_last_msg { ENTRY_NO_LAST } else { 0 };
    let unread = if msg.no_unread || self_send {
        0
    } else {
        ENTRY_UNREAD
    };
    // Idempotency (Law 2): a retry gets the original, even when the store
    // is too busy to take a new message.
    let key = Key {
        sender_uid: sender.uid,
        msg_seq: msg.msg_seq,
        msg_random: msg.msg_random,
    };
    if let Some(msg_id) = tx.find_key(&key)? {
        return original(tx.conn(), msg_id);
    }
    if tx.tail_full() {
        return Err(StoreError::Overloaded);
    }

    // The row also keeps what its entries need for recovery (`entry_ts`,
    // the recipient's `entry_flags`).
    let msg_id = tx.take_msg_id();
    tx.stmt(
        "INSERT INTO messages (msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq, \
           msg_random, msg_time, body, cloud_custom_data, nick, face_url, flags, \
           sender_seq, recipient_seq, entry_ts, entry_flags) \
         VALUES (?14, ?11, ?12, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, ?13, ?15, ?16)",
    )?
    .execute(params![
        msg.from,
        msg.to,
        msg.msg_seq,
        msg.msg_random,
        sql_u64(msg.msg_time),
        msg.body_json,
        msg.cloud_custom_data,
        &*sender.nick,
        &*sender.face_url,
        sender_seq.map(sql_u64),
        sender.uid,
        recipient.uid,
        sql_u64(recipient_seq),
        msg_id,
        sql_u64(msg.now_ms),
        unread | no_last,
    ])
    .map_err(db)?;
    tx.push_key(key, msg_id);
    let (to, from) = (recipient.uid, sender.uid);
    let entry = |seq: u64, peer_uid: i64, flags: u8| TailEntry {
        seq,
        ts: msg.now_ms,
        peer_uid,
        msg_id,
        flags,
        batch: 0,
    };
    tx.push_entry(to, entry(recipient_seq, from, unread | no_last));
    if let Some(seq) = sender_seq {
        tx.push_entry(from, entry(seq, to, no_last));
    }
    tx.next_seq(&msg.to, &recipient);
    if sender_seq.is_some() {
        tx.next_seq(&msg.from, &sender);
    }
    Ok(SendWritten::Stored {
        nick: sender.nick,
        face_url: sender.face_url,
        recipient_seq,
        sender_seq,
    })
}

/// The answer to a send, from its message and what [`send`] wrote.
pub(crate) fn send_outcome(msg: NewMessage, written: SendWritten) -> SendOutcome {
    let (nick, face_url, recipient_seq, sender_seq) = match written {
        SendWritten::Duplicate {
            message,
            sender_entry_seq,
        } => {
            return SendOutcome::Duplicate {
                message,
                sender_entry_seq,
            };
        }
        SendWritten::Stored {
            nick,
            face_url,
            recipient_seq,
            sender_seq,
        } => (nick, face_url, recipient_seq, sender_seq),
    };
    let message = Message {
        msg_key: MsgKey::text(msg.msg_seq, msg.msg_random, msg.msg_time),
        from: msg.from,
        to: msg.to,
        msg_seq: msg.msg_seq,
        msg_random: msg.msg_random,
        msg_time: msg.msg_time,
        flag_bits: 0,
        body: msg.body,
        cloud_custom_data: msg.cloud_custom_data,
        nick: nick.to_string(),
        face_url: face_url.to_string(),
        online_only: false,
    };
    SendOutcome::Stored {
        message,
        recipient_seq,
        sender_seq,
        ts: msg.now_ms,
    }
}

/// Input of [`mark_read`].
pub(crate) struct MarkRead {
    pub(crate) user: String,
    pub(crate) peer: String,
    pub(crate) read_time: u64,
    pub(crate) now_ms: u64,
}

/// `user` has read `peer`'s messages up to `read_time` (see `Store::mark_read`).
pub(crate) fn mark_read(tx: &mut Tx<'_, '_>, req: &MarkRead) -> StoreResult<ReadOutcome> {
    let (user, peer) = (req.user.as_str(), req.peer.as_str());
    let Some(reader) = tx.account(user)? else {
        return Err(StoreError::UnknownAccount(user.to_owned()));
    };
    // A missing peer gets no receipt (not an error).
    let peer_account = if user == peer {
        None
    } else {
        tx.account(peer)?
    };
    let report = ReadReport {
        reader: user.to_owned(),
        peer: peer.to_owned(),
        read_time: req.read_time,
    };
    let payload = serde_json::to_string(&report).map_err(|e| StoreError::Backend(e.to_string()))?;

    let reader_seq = reader.head + 1;
    // The peer's account key: the reader's own for a conversation with
    // oneself, 0 for a peer without an account (it has no conversation).
    let peer_uid = match &peer_account {
        Some(account) => account.uid,
        None if user == peer => reader.uid,
        None => 0,
    };
    // Only a view that exists has a read state.
    let reader_view = peer_uid != 0 && tx.has_messages(reader.uid, peer_uid)?;
    let peer_view = match &peer_account {
        Some(account) => tx.has_messages(account.uid, reader.uid)?,
        None => false,
    };
    let conn = tx.conn();
    insert_payload_entry(
        conn, reader.uid, reader_seq, req.now_ms, KIND_READ, peer_uid, &payload,
    )?;
    // Everything in the reader's timeline so far is read: its unread count
    // is zero until the next message.
    if reader_view {
        conn.prepare_cached(
            "INSERT INTO conversation_state (uid, peer_uid, read_seq, read_time) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (uid, peer_uid) DO UPDATE SET \
               read_seq = MAX(read_seq, excluded.read_seq), \
               read_time = MAX(read_time, excluded.read_time)",
        )
        .and_then(|mut s| {
            s.execute(params![
                reader.uid,
                peer_uid,
                sql_u64(reader.head),
                sql_u64(req.read_time)
            ])
        })
        .map_err(db)?;
    }
    let peer_entry = match &peer_account {
        Some(account) => {
            let seq = account.head + 1;
            insert_payload_entry(
                conn,
                account.uid,
                seq,
                req.now_ms,
                KIND_READ,
                reader.uid,
                &payload,
            )?;
            if peer_view {
                conn.prepare_cached(
                    "INSERT INTO conversation_state (uid, peer_uid, peer_read_time) \
                     VALUES (?1, ?2, ?3) \
                     ON CONFLICT (uid, peer_uid) DO UPDATE SET \
                       peer_read_time = MAX(peer_read_time, excluded.peer_read_time)",
                )
                .and_then(|mut s| {
                    s.execute(params![account.uid, reader.uid, sql_u64(req.read_time)])
                })
                .map_err(db)?;
            }
            Some(Entry {
                seq,
                ts: req.now_ms,
                kind: EntryKind::Read(report.clone()),
            })
        }
        None => None,
    };
    tx.next_seq(user, &reader);
    if let Some(account) = &peer_account {
        tx.next_seq(peer, account);
    }
    Ok(ReadOutcome {
        reader_entry: Entry {
            seq: reader_seq,
            ts: req.now_ms,
            kind: EntryKind::Read(report),
        },
        peer_entry,
    })
}

/// Recalls a message (see `Store::recall`).
pub(crate) fn recall(tx: &mut Tx<'_, '_>, req: &RecallRequest) -> StoreResult<RecallOutcome> {
    let MsgKey { seq, random, time } = req.key;
    // Without an account, nobody has sent anything.
    let Some(by) = tx.account(&req.by)? else {
        return Err(StoreError::MessageNotFound);
    };
    let key = Key {
        sender_uid: by.uid,
        msg_seq: seq,
        msg_random: random,
    };
    let Some(msg_id) = tx.find_key(&key)? else {
        return Err(StoreError::MessageNotFound);
    };
    let found = tx
        .conn()
        .prepare_cached(
            "SELECT msg_id, receiver, msg_time, flags, sender_seq FROM messages \
             WHERE msg_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([msg_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    u64_at(r, 2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()
        })
        .map_err(db)?;
    let Some((msg_id, receiver, msg_time, flags, sender_seq)) = found else {
        return Err(StoreError::MessageNotFound);
    };
    if msg_time != time {
        return Err(StoreError::MessageNotFound);
    }
    if flags & FLAG_RECALLED != 0 {
        return Err(StoreError::AlreadyRecalled);
    }
    if req.not_before.is_some_and(|nb| msg_time < nb) {
        return Err(StoreError::RecallWindowPassed);
    }
    let Some(recipient) = tx.account(&receiver)? else {
        return Err(StoreError::UnknownAccount(receiver));
    };
    let sender = (sender_seq.is_some() && req.by != receiver).then_some(by);
    let recall = Recall {
        msg_key: req.key.to_string(),
        from: req.by.clone(),
        to: receiver.clone(),
    };
    let payload = serde_json::to_string(&recall).map_err(|e| StoreError::Backend(e.to_string()))?;

    let conn = tx.conn();
    conn.prepare_cached("UPDATE messages SET flags = flags | ?2 WHERE msg_id = ?1")
        .and_then(|mut s| s.execute(params![msg_id, FLAG_RECALLED]))
        .map_err(db)?;
    let recipient_seq = recipient.head + 1;
    let by_uid = sender.as_ref().map_or(recipient.uid, |a| a.uid);
    insert_payload_entry(
        conn,
        recipient.uid,
        recipient_seq,
        req.now_ms,
        KIND_RECALL,
        by_uid,
        &payload,
    )?;
    let sender_entry = match &sender {
        Some(account) => {
            let seq = account.head + 1;
            insert_payload_entry(
                conn,
                account.uid,
                seq,
                req.now_ms,
                KIND_RECALL,
                recipient.uid,
                &payload,
            )?;
            Some(Entry {
                seq,
                ts: req.now_ms,
                kind: EntryKind::Recall(recall.clone()),
            })
        }
        None => None,
    };
    tx.next_seq(&receiver, &recipient);
    if let Some(account) = &sender {
        tx.next_seq(&req.by, account);
    }
    Ok(RecallOutcome {
        sender_entry,
        recipient_entry: Entry {
            seq: recipient_seq,
            ts: req.now_ms,
            kind: EntryKind::Recall(recall),
        },
    })
}

/// Input of [`sweep`].
pub(crate) struct Sweep {
    pub(crate) cutoff_ms: u64,
    pub(crate) chunk: u32,
}

/// Removes up to `chunk` expired messages and `chunk` other entries (see
/// `Store::sweep`).
///
/// Messages are found through their time index, among those whose entries
/// are merged and whose idempotency keys are in `message_keys` (the store
/// merges both before it sweeps; a message stored since is not expired);
/// their entries leave their views' chunks with them, their keys with them. The other entries (recalls, read reports) are found through
/// `timeline_events`. A conversation view is derived from its message
/// entries, so it goes with the last of them; the sweep counts it then,
/// and removes its read state.
pub(crate) fn sweep(tx: &mut Tx<'_, '_>, req: &Sweep) -> StoreResult<SweepReport> {
    let chunk = i64::from(req.chunk);
    let settled_below = tx.settled_below();
    let conn = tx.conn();
    // Messages are dated in whole seconds:
    // `msg_time * 1000 < cutoff_ms` is `msg_time < ceil(cutoff_ms / 1000)`.
    let cutoff_s = req.cutoff_ms.div_ceil(1000);
    let mut entries = conn
        .prepare_cached(
            "DELETE FROM timeline WHERE (uid, seq) IN \
             (SELECT uid, seq FROM timeline WHERE kind <> 0 AND ts < ?1 LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![sql_u64(req.cutoff_ms), chunk]))
        .map_err(db)? as u64;

    // Expired messages, their entries gathered by view.
    let mut views: BTreeMap<(i64, i64), Vec<(u64, i64)>> = BTreeMap::new();
    let mut expired = Vec::new();
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT msg_id, sender_uid, sender_seq, receiver_uid, recipient_seq, msg_seq, \
                        msg_random \
                 FROM messages WHERE msg_time < ?1 AND msg_id < ?3 LIMIT ?2",
            )
            .map_err(db)?;
        let mut rows = stmt
            .query(params![sql_u64(cutoff_s), chunk, settled_below])
            .map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let read = || -> rusqlite::Result<_> {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, u32>(6)?,
                ))
            };
            let (msg_id, sender, sender_seq, receiver, recipient_seq, msg_seq, msg_random) =
                read().map_err(db)?;
            let key = Key {
                sender_uid: sender,
                msg_seq,
                msg_random,
            };
            expired.push((msg_id, key));
            let seq = |s: i64| u64::try_from(s).unwrap_or_default();
            if let Some(s) = sender_seq {
                views
                    .entry((sender, receiver))
                    .or_default()
                    .push((seq(s), msg_id));
            }
            if let Some(s) = recipient_seq {
                views
                    .entry((receiver, sender))
                    .or_default()
                    .push((seq(s), msg_id));
            }
        }
    }
    let mut conversations = 0u64;
    for ((uid, peer_uid), mut gone) in views {
        gone.sort_unstable();
        let removed = merge::remove_from_view(conn, uid, peer_uid, &gone).map_err(db)?;
        entries += removed;
        if removed > 0 && !tx.has_messages(uid, peer_uid)? {
            tx.conn()
                .prepare_cached("DELETE FROM conversation_state WHERE uid = ?1 AND peer_uid = ?2")
                .and_then(|mut s| s.execute(params![uid, peer_uid]))
                .map_err(db)?;
            conversations += 1;
        }
    }
    let conn = tx.conn();
    let mut messages = 0u64;
    for (msg_id, key) in &expired {
        messages += conn
            .prepare_cached("DELETE FROM messages WHERE msg_id = ?1")
            .and_then(|mut s| s.execute([msg_id]))
            .map_err(db)? as u64;
        keys::remove(conn, key, *msg_id).map_err(db)?;
    }
    let report = SweepReport {
        entries,
        messages,
        conversations,
        more: false,
    };
    Ok(SweepReport {
        more: report.total() > 0,
        ..report
    })
}
