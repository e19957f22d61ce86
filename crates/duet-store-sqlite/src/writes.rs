//! Write jobs: each runs on the writer connection inside its own savepoint,
//! so an `Err` return leaves nothing behind (Law 7).

use duet_proto::model::FLAG_RECALLED;
use duet_proto::{Entry, EntryKind, Message, MsgKey, ReadReport, Recall};
use duet_store::{
    Account, NewMessage, ReadOutcome, RecallOutcome, RecallRequest, SendOutcome, SenderCopy,
    StoreError, StoreResult, SweepReport,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::rows::{
    KIND_MESSAGE, KIND_READ, KIND_RECALL, account_at, message_at, msg_cols, sql_u64, u64_at,
};
use crate::{UNREAD_CAP, db};

const SELECT_ACCOUNT: &str =
    "SELECT user_id, nick, face_url, created_ms FROM accounts WHERE user_id = ?1";

/// The account, if it exists (also used by the read path).
pub(crate) fn account(conn: &Connection, user: &str) -> StoreResult<Option<Account>> {
    conn.prepare_cached(SELECT_ACCOUNT)
        .and_then(|mut s| s.query_row([user], account_at).optional())
        .map_err(db)
}

pub(crate) fn ensure_account(conn: &Connection, user: &str, now_ms: u64) -> StoreResult<Account> {
    conn.prepare_cached(
        "INSERT INTO accounts (user_id, created_ms) VALUES (?1, ?2) ON CONFLICT (user_id) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![user, sql_u64(now_ms)]))
    .map_err(db)?;
    account(conn, user)?
        .ok_or_else(|| StoreError::Backend(format!("account {user:?} vanished after insert")))
}

pub(crate) fn set_profile(
    conn: &Connection,
    user: &str,
    nick: Option<&str>,
    face_url: Option<&str>,
    now_ms: u64,
) -> StoreResult<Account> {
    conn.prepare_cached(
        "INSERT INTO accounts (user_id, nick, face_url, created_ms) \
         VALUES (?1, COALESCE(?2, ''), COALESCE(?3, ''), ?4) \
         ON CONFLICT (user_id) DO UPDATE SET \
           nick = COALESCE(?2, nick), face_url = COALESCE(?3, face_url) \
         RETURNING user_id, nick, face_url, created_ms",
    )
    .and_then(|mut s| s.query_row(params![user, nick, face_url, sql_u64(now_ms)], account_at))
    .map_err(db)
}

/// Takes the next entry number of `user`'s timeline; `None` if no such account.
fn next_seq(conn: &Connection, user: &str) -> StoreResult<Option<u64>> {
    conn.prepare_cached("UPDATE accounts SET head = head + 1 WHERE user_id = ?1 RETURNING head")
        .and_then(|mut s| s.query_row([user], |r| u64_at(r, 0)).optional())
        .map_err(db)
}

fn insert_message_entry(
    conn: &Connection,
    user: &str,
    seq: u64,
    ts: u64,
    peer: &str,
    msg_id: i64,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO timeline (user_id, seq, ts, kind, peer, msg_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![user, sql_u64(seq), sql_u64(ts), KIND_MESSAGE, peer, msg_id])
    })
    .map_err(db)?;
    Ok(())
}

fn insert_payload_entry(
    conn: &Connection,
    user: &str,
    seq: u64,
    ts: u64,
    kind: i64,
    peer: &str,
    payload: &str,
) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO timeline (user_id, seq, ts, kind, peer, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![user, sql_u64(seq), sql_u64(ts), kind, peer, payload]))
    .map_err(db)?;
    Ok(())
}

/// Updates `user`'s view of the conversation with `peer` for a new message.
/// `unread` counts the message as unread; `msg.no_last_msg` keeps the last message.
fn touch_conversation(
    conn: &Connection,
    msg: &NewMessage,
    msg_id: i64,
    user: &str,
    peer: &str,
    seq: u64,
    unread: bool,
) -> StoreResult<()> {
    let unread = i64::from(unread);
    let msg_time = msg.msg_time;
    let result = if !msg.no_last_msg {
        conn.prepare_cached(
            "INSERT INTO conversations (user_id, peer, last_msg_id, last_time, last_seq, unread) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (user_id, peer) DO UPDATE SET \
               last_msg_id = excluded.last_msg_id, last_time = excluded.last_time, \
               last_seq = excluded.last_seq, unread = MIN(unread + excluded.unread, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                user,
                peer,
                msg_id,
                sql_u64(msg_time),
                sql_u64(seq),
                unread,
                UNREAD_CAP
            ])
        })
    } else {
        // A no-last-msg message: a new conversation starts without a last message.
        conn.prepare_cached(
            "INSERT INTO conversations (user_id, peer, last_msg_id, last_time, last_seq, unread) \
             VALUES (?1, ?2, NULL, ?3, ?4, ?5) \
             ON CONFLICT (user_id, peer) DO UPDATE SET unread = MIN(unread + excluded.unread, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                user,
                peer,
                sql_u64(msg_time),
                sql_u64(seq),
                unread,
                UNREAD_CAP
            ])
        })
    };
    result.map_err(db)?;
    Ok(())
}

pub(crate) fn send(conn: &Connection, msg: NewMessage) -> StoreResult<SendOutcome> {
    // Idempotency: a retry gets the original back and writes nothing.
    let original = conn
        .prepare_cached(concat!(
            "SELECT ",
            msg_cols!(),
            ", m.sender_seq FROM messages m \
             WHERE m.sender = ?1 AND m.msg_seq = ?2 AND m.msg_random = ?3"
        ))
        .and_then(|mut s| {
            s.query_row(params![msg.from, msg.msg_seq, msg.msg_random], |r| {
                Ok((message_at(r, 0)?, r.get::<_, Option<i64>>(10)?))
            })
            .optional()
        })
        .map_err(db)?;
    if let Some((message, sender_seq)) = original {
        return Ok(SendOutcome::Duplicate {
            message,
            sender_entry_seq: sender_seq.and_then(|s| u64::try_from(s).ok()),
        });
    }

    // The recipient's entry number (and its existence).
    let Some(recipient_seq) = next_seq(conn, &msg.to)? else {
        return Err(StoreError::UnknownAccount(msg.to));
    };
    // A message to oneself gets one entry (the recipient's) and no unread.
    let self_send = msg.from == msg.to;
    let sender_copy = msg.sender_copy == SenderCopy::Timeline && !self_send;
    // The sender's profile snapshot (and its existence), with its entry number if it gets one.
    let sender =
        if sender_copy {
            conn.prepare_cached(
            "UPDATE accounts SET head = head + 1 WHERE user_id = ?1 RETURNING nick, face_url, head",
        )
        .and_then(|mut s| {
            s.query_row([&msg.from], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, Some(u64_at(r, 2)?)))
            })
            .optional()
        })
        } else {
            conn.prepare_cached("SELECT nick, face_url FROM accounts WHERE user_id = ?1")
                .and_then(|mut s| {
                    s.query_row([&msg.from], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, None))
                    })
                    .optional()
                })
        };
    let Some((nick, face_url, sender_seq)) = sender.map_err(db)? else {
        return Err(StoreError::UnknownAccount(msg.from));
    };

    conn.prepare_cached(
        "INSERT INTO messages (sender, receiver, msg_seq, msg_random, msg_time, body, \
           cloud_custom_data, nick, face_url, flags, sender_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            msg.from,
            msg.to,
            msg.msg_seq,
            msg.msg_random,
            sql_u64(msg.msg_time),
            msg.body_json,
            msg.cloud_custom_data,
            nick,
            face_url,
            sender_seq.map(sql_u64),
        ])
    })
    .map_err(db)?;
    let msg_id = conn.last_insert_rowid();

    insert_message_entry(conn, &msg.to, recipient_seq, msg.now_ms, &msg.from, msg_id)?;
    let unread = !msg.no_unread && !self_send;
    touch_conversation(
        conn,
        &msg,
        msg_id,
        &msg.to,
        &msg.from,
        recipient_seq,
        unread,
    )?;
    if let Some(seq) = sender_seq {
        insert_message_entry(conn, &msg.from, seq, msg.now_ms, &msg.to, msg_id)?;
        touch_conversation(conn, &msg, msg_id, &msg.from, &msg.to, seq, false)?;
    }

    let message = Message {
        msg_key: format!("{}_{}_{}", msg.msg_seq, msg.msg_random, msg.msg_time),
        from: msg.from,
        to: msg.to,
        msg_seq: msg.msg_seq,
        msg_random: msg.msg_random,
        msg_time: msg.msg_time,
        flag_bits: 0,
        body: msg.body,
        cloud_custom_data: msg.cloud_custom_data,
        nick,
        face_url,
        online_only: false,
    };
    let entry = |seq| Entry {
        seq,
        ts: msg.now_ms,
        kind: EntryKind::Message {
            message: message.clone(),
        },
    };
    let recipient_entry = entry(recipient_seq);
    let sender_entry = sender_seq.map(entry);
    Ok(SendOutcome::Stored {
        message,
        recipient_entry,
        sender_entry,
    })
}

pub(crate) fn mark_read(
    conn: &Connection,
    user: &str,
    peer: &str,
    read_time: u64,
    now_ms: u64,
) -> StoreResult<ReadOutcome> {
    let Some(reader_seq) = next_seq(conn, user)? else {
        return Err(StoreError::UnknownAccount(user.to_owned()));
    };
    let report = ReadReport {
        reader: user.to_owned(),
        peer: peer.to_owned(),
        read_time,
    };
    let payload = serde_json::to_string(&report).map_err(|e| StoreError::Backend(e.to_string()))?;
    insert_payload_entry(conn, user, reader_seq, now_ms, KIND_READ, peer, &payload)?;
    conn.prepare_cached(
        "UPDATE conversations SET unread = 0, read_time = MAX(read_time, ?3) \
         WHERE user_id = ?1 AND peer = ?2",
    )
    .and_then(|mut s| s.execute(params![user, peer, sql_u64(read_time)]))
    .map_err(db)?;

    let peer_seq = if user == peer {
        None
    } else {
        next_seq(conn, peer)?
    };
    let peer_entry = match peer_seq {
        Some(seq) => {
            insert_payload_entry(conn, peer, seq, now_ms, KIND_READ, user, &payload)?;
            conn.prepare_cached(
                "UPDATE conversations SET peer_read_time = MAX(peer_read_time, ?3) \
                 WHERE user_id = ?1 AND peer = ?2",
            )
            .and_then(|mut s| s.execute(params![peer, user, sql_u64(read_time)]))
            .map_err(db)?;
            Some(Entry {
                seq,
                ts: now_ms,
                kind: EntryKind::Read(report.clone()),
            })
        }
        None => None,
    };
    Ok(ReadOutcome {
        reader_entry: Entry {
            seq: reader_seq,
            ts: now_ms,
            kind: EntryKind::Read(report),
        },
        peer_entry,
    })
}

pub(crate) fn recall(conn: &Connection, req: RecallRequest) -> StoreResult<RecallOutcome> {
    let MsgKey { seq, random, time } = req.key;
    let found = conn
        .prepare_cached(
            "SELECT msg_id, receiver, msg_time, flags, sender_seq FROM messages \
             WHERE sender = ?1 AND msg_seq = ?2 AND msg_random = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![req.by, seq, random], |r| {
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
    conn.prepare_cached("UPDATE messages SET flags = flags | ?2 WHERE msg_id = ?1")
        .and_then(|mut s| s.execute(params![msg_id, FLAG_RECALLED]))
        .map_err(db)?;

    let recall = Recall {
        msg_key: req.key.to_string(),
        from: req.by.clone(),
        to: receiver.clone(),
    };
    let payload = serde_json::to_string(&recall).map_err(|e| StoreError::Backend(e.to_string()))?;
    let Some(recipient_seq) = next_seq(conn, &receiver)? else {
        return Err(StoreError::UnknownAccount(receiver));
    };
    insert_payload_entry(
        conn,
        &receiver,
        recipient_seq,
        req.now_ms,
        KIND_RECALL,
        &req.by,
        &payload,
    )?;
    let sender_entry = if sender_seq.is_some() && req.by != receiver {
        let Some(seq) = next_seq(conn, &req.by)? else {
            return Err(StoreError::UnknownAccount(req.by));
        };
        insert_payload_entry(
            conn,
            &req.by,
            seq,
            req.now_ms,
            KIND_RECALL,
            &receiver,
            &payload,
        )?;
        Some(Entry {
            seq,
            ts: req.now_ms,
            kind: EntryKind::Recall(recall.clone()),
        })
    } else {
        None
    };
    Ok(RecallOutcome {
        sender_entry,
        recipient_entry: Entry {
            seq: recipient_seq,
            ts: req.now_ms,
            kind: EntryKind::Recall(recall),
        },
    })
}

pub(crate) fn sweep(conn: &Connection, cutoff_ms: u64, chunk: u32) -> StoreResult<SweepReport> {
    let chunk = i64::from(chunk);
    let delete = |sql: &str, cutoff: u64| -> StoreResult<u64> {
        let n = conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![sql_u64(cutoff), chunk]))
            .map_err(db)?;
        Ok(n as u64)
    };
    // Messages and conversations are dated in whole seconds:
    // `msg_time * 1000 < cutoff_ms` is `msg_time < ceil(cutoff_ms / 1000)`.
    let cutoff_s = cutoff_ms.div_ceil(1000);
    Ok(SweepReport {
        entries: delete(
            "DELETE FROM timeline WHERE (user_id, seq) IN \
             (SELECT user_id, seq FROM timeline WHERE ts < ?1 LIMIT ?2)",
            cutoff_ms,
        )?,
        messages: delete(
            "DELETE FROM messages WHERE msg_id IN \
             (SELECT msg_id FROM messages WHERE msg_time < ?1 LIMIT ?2)",
            cutoff_s,
        )?,
        conversations: delete(
            "DELETE FROM conversations WHERE (user_id, peer) IN \
             (SELECT user_id, peer FROM conversations WHERE last_time < ?1 LIMIT ?2)",
            cutoff_s,
        )?,
    })
}
