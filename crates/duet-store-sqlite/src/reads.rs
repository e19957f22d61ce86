//! Read queries. Message entries are read from two places: the views'
//! chunks (merged) and the tail (not merged yet); see `tail` for why a
//! reader takes the tail first and then only the chunk entries below the
//! account's floor. Recalls and read reports are rows of `timeline`.

use std::collections::HashMap;
use std::ops::ControlFlow;

use duet_proto::{Conversation, Entry, EntryKind, HistoryItem, Message};
use duet_store::StoreResult;
use rusqlite::{Connection, OptionalExtension, params};

use crate::chunk::{self, ChunkEntry};
use crate::merge::corrupt;
use crate::rows::{ENTRY_NO_LAST, ENTRY_UNREAD, event_at, message_at, msg_cols, sql_u64, u64_at};
use crate::tail::{Tail, UserTail, Visible};
use crate::{UNREAD_CAP, db};

pub(crate) fn head(conn: &Connection, user: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT COALESCE(h.head, 0) FROM accounts a LEFT JOIN heads h ON h.uid = a.uid \
         WHERE a.user_id = ?1",
    )
    .and_then(|mut s| s.query_row([user], |r| u64_at(r, 0)).optional())
    .map(Option::unwrap_or_default)
}

/// The account key of `user` (accounts are never deleted and their keys
/// never change, so this may be read outside a reader's snapshot).
fn uid_of(conn: &Connection, user: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT uid FROM accounts WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()
}

/// The message `msg_id`, unless it is gone (swept).
fn message(conn: &Connection, msg_id: i64) -> rusqlite::Result<Option<Message>> {
    conn.prepare_cached(concat!(
        "SELECT ",
        msg_cols!(),
        " FROM messages m WHERE m.msg_id = ?1"
    ))?
    .query_row([msg_id], |r| message_at(r, 0))
    .optional()
}

/// A message entry of a view, wherever it was read.
#[derive(Debug, Clone, Copy)]
struct ViewEntry {
    peer_uid: i64,
    entry: ChunkEntry,
}

impl From<&crate::tail::TailEntry> for ViewEntry {
    fn from(e: &crate::tail::TailEntry) -> Self {
        ViewEntry {
            peer_uid: e.peer_uid,
            entry: ChunkEntry::from(e),
        }
    }
}

/// Chunks of `?1` that hold an entry in `(?2, ?3]`.
const SYNC_CHUNKS: &str = "SELECT peer_uid, first_seq, entries FROM chunks INDEXED BY chunks_by_seq \
     WHERE uid = ?1 AND last_seq > ?2 AND first_seq <= ?3";
/// Recalls and read reports of `?1` in `(?2, ?3]`.
const SYNC_EVENTS: &str = "SELECT seq, ts, kind, payload FROM timeline \
     WHERE uid = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq";

/// Entries of `user` in `(after, upto]` (`upto` a committed head), message
/// entries cut to the newest `per_conversation` per peer, at most `limit`.
pub(crate) fn sync(
    conn: &Connection,
    tail: &Tail,
    user: &str,
    after: u64,
    upto: u64,
    per_conversation: u32,
    limit: u32,
) -> StoreResult<Vec<Entry>> {
    if upto <= after || limit == 0 {
        return Ok(Vec::new());
    }
    let Some(uid) = uid_of(conn, user).map_err(db)? else {
        return Ok(Vec::new());
    };
    let waiting = tail.read(uid, Visible::All, |e| e.seq > after && e.seq <= upto);
    let tx = conn.unchecked_transaction().map_err(db)?;
    let mut messages: Vec<ViewEntry> = Vec::new();
    {
        let mut stmt = tx.prepare_cached(SYNC_CHUNKS).map_err(db)?;
        let mut rows = stmt
            .query(params![uid, sql_u64(after), sql_u64(upto)])
            .map_err(db)?;
        let mut buf = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            let peer_uid: i64 = r.get(0).map_err(db)?;
            let first = u64_at(r, 1).map_err(db)?;
            let blob = r.get_ref(2).and_then(|v| Ok(v.as_blob()?)).map_err(db)?;
            buf.clear();
            chunk::decode_into(blob, first, &mut buf)
                .map_err(corrupt)
                .map_err(db)?;
            messages.extend(
                buf.iter()
                    .filter(|e| e.seq > after && e.seq <= upto && waiting.below_floor(e.seq))
                    .map(|&entry| ViewEntry { peer_uid, entry }),
            );
        }
    }
    messages.extend(waiting.entries.iter().map(ViewEntry::from));
    // The cut: the newest `per_conversation` of each peer.
    messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.entry.seq));
    let mut per_peer: HashMap<i64, u32> = HashMap::new();
    messages.retain(|m| {
        let n = per_peer.entry(m.peer_uid).or_default();
        *n += 1;
        *n <= per_conversation
    });
    messages.reverse();

    let events: Vec<Entry> = tx
        .prepare_cached(SYNC_EVENTS)
        .and_then(|mut s| {
            s.query_map(params![uid, sql_u64(after), sql_u64(upto)], event_at)?
                .collect()
        })
        .map_err(db)?;

    // Both in order; a message entry whose message is gone is skipped.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(limit.min(messages.len() + events.len()));
    let mut events = events.into_iter().peekable();
    let mut messages = messages.into_iter().peekable();
    while out.len() < limit {
        let take_event = match (events.peek(), messages.peek()) {
            (Some(e), Some(m)) => e.seq < m.entry.seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_event {
            out.extend(events.next());
        } else if let Some(m) = messages.next()
            && let Some(message) = message(&tx, m.entry.msg_id).map_err(db)?
        {
            out.push(Entry {
                seq: m.entry.seq,
                ts: m.entry.ts,
                kind: EntryKind::Message { message },
            });
        }
    }
    tx.finish().map_err(db)?;
    Ok(out)
}

/// A view's chunks holding entries below `?3`, newest first.
const VIEW_CHUNKS: &str = "SELECT first_seq, entries FROM chunks \
     WHERE uid = ?1 AND peer_uid = ?2 AND first_seq < ?3 ORDER BY first_seq DESC";

/// Calls `f` with the merged entries of `uid`'s view of `peer_uid` below
/// `below`, newest first, until it breaks.
fn walk_view(
    conn: &Connection,
    uid: i64,
    peer_uid: i64,
    below: u64,
    mut f: impl FnMut(ChunkEntry) -> rusqlite::Result<ControlFlow<()>>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(VIEW_CHUNKS)?;
    let mut rows = stmt.query(params![uid, peer_uid, sql_u64(below)])?;
    let mut buf = Vec::new();
    while let Some(r) = rows.next()? {
        let first = u64_at(r, 0)?;
        buf.clear();
        chunk::decode_into(r.get_ref(1)?.as_blob()?, first, &mut buf).map_err(corrupt)?;
        for e in buf.iter().rev().filter(|e| e.seq < below) {
            if f(*e)?.is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The tail's entries of one peer, newest first.
fn waiting_of(waiting: &UserTail, peer_uid: i64) -> impl Iterator<Item = ChunkEntry> + '_ {
    waiting
        .entries
        .iter()
        .rev()
        .filter(move |e| e.peer_uid == peer_uid)
        .map(ChunkEntry::from)
}

/// Every message entry of a view below `below`, newest first: the tail's,
/// then the merged ones under the floor.
fn walk_all(
    conn: &Connection,
    waiting: &UserTail,
    uid: i64,
    peer_uid: i64,
    below: u64,
    mut f: impl FnMut(ChunkEntry) -> rusqlite::Result<ControlFlow<()>>,
) -> rusqlite::Result<()> {
    for e in waiting_of(waiting, peer_uid).filter(|e| e.seq < below) {
        if f(e)?.is_break() {
            return Ok(());
        }
    }
    let below = waiting.floor.map_or(below, |floor| floor.min(below));
    walk_view(conn, uid, peer_uid, below, f)
}

pub(crate) fn history(
    conn: &Connection,
    tail: &Tail,
    user: &str,
    peer: &str,
    before: Option<u64>,
    count: u32,
) -> rusqlite::Result<Vec<HistoryItem>> {
    let (Some(uid), Some(peer_uid)) = (uid_of(conn, user)?, uid_of(conn, peer)?) else {
        return Ok(Vec::new());
    };
    let before = before.unwrap_or(u64::MAX);
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let waiting = tail.read(uid, Visible::Committed, |e| {
        e.peer_uid == peer_uid && e.seq < before
    });
    let tx = conn.unchecked_transaction()?;
    let mut out = Vec::new();
    walk_all(&tx, &waiting, uid, peer_uid, before, |e| {
        if let Some(message) = message(&tx, e.msg_id)? {
            out.push(HistoryItem {
                seq: e.seq,
                message,
            });
        }
        Ok(if out.len() >= count {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    tx.finish()?;
    Ok(out)
}

/// Where a view's order comes from: its last message (or, when every
/// message has no-last-msg, its first, without a last message).
struct ViewHead {
    peer_uid: i64,
    last_seq: u64,
    last_time: u64,
    message: Option<Message>,
}

/// The view after `?2`, in account key order.
pub(crate) const VIEW_NEXT: &str = "SELECT peer_uid FROM chunks \
     WHERE uid = ?1 AND peer_uid > ?2 ORDER BY peer_uid LIMIT 1";
/// A view's first chunk.
const VIEW_FIRST: &str = "SELECT first_seq, entries FROM chunks \
     WHERE uid = ?1 AND peer_uid = ?2 ORDER BY first_seq LIMIT 1";

/// `user`'s conversation views, derived from the message entries of its
/// timeline (see migration 4): each peer with a message entry is a view.
pub(crate) fn conversations(
    conn: &Connection,
    tail: &Tail,
    user: &str,
    offset: u32,
    count: u32,
) -> StoreResult<Vec<Conversation>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let Some(uid) = uid_of(conn, user).map_err(db)? else {
        return Ok(Vec::new());
    };
    let waiting = tail.read(uid, Visible::Committed, |_| true);
    let tx = conn.unchecked_transaction().map_err(db)?;
    let mut peers: Vec<i64> = waiting.entries.iter().map(|e| e.peer_uid).collect();
    {
        let mut next = tx.prepare_cached(VIEW_NEXT).map_err(db)?;
        let mut after = i64::MIN;
        while let Some(peer_uid) = next
            .query_row(params![uid, after], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(db)?
        {
            peers.push(peer_uid);
            after = peer_uid;
        }
    }
    peers.sort_unstable();
    peers.dedup();
    let mut views = Vec::with_capacity(peers.len());
    for peer_uid in peers {
        if let Some(head) = view_head(&tx, &waiting, uid, peer_uid).map_err(db)? {
            views.push(head);
        }
    }
    views.sort_by_key(|v| std::cmp::Reverse((v.last_time, v.last_seq)));
    let page = views
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(usize::MAX));
    let out = page
        .map(|view| view_at(&tx, &waiting, uid, view))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db)?;
    tx.finish().map_err(db)?;
    Ok(out)
}

/// A view's head: its newest message without no-last-msg, else its first
/// entry; `None` if it holds no message any more.
fn view_head(
    conn: &Connection,
    waiting: &UserTail,
    uid: i64,
    peer_uid: i64,
) -> rusqlite::Result<Option<ViewHead>> {
    let mut head = None;
    walk_all(conn, waiting, uid, peer_uid, u64::MAX, |e| {
        if e.flags & ENTRY_NO_LAST != 0 {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(match message(conn, e.msg_id)? {
            Some(m) => {
                head = Some(ViewHead {
                    peer_uid,
                    last_seq: e.seq,
                    last_time: m.msg_time,
                    message: Some(m),
                });
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        })
    })?;
    if head.is_some() {
        return Ok(head);
    }
    // Every message has no-last-msg: the view is ordered by its first.
    let first_merged = conn
        .prepare_cached(VIEW_FIRST)?
        .query_row(params![uid, peer_uid], |r| {
            let first = u64_at(r, 0)?;
            chunk::decode(r.get_ref(1)?.as_blob()?, first).map_err(corrupt)
        })
        .optional()?
        .and_then(|entries| entries.first().copied())
        .filter(|e| waiting.below_floor(e.seq));
    let first = first_merged.or_else(|| waiting_of(waiting, peer_uid).last());
    let Some(first) = first else {
        return Ok(None);
    };
    Ok(message(conn, first.msg_id)?.map(|m| ViewHead {
        peer_uid,
        last_seq: first.seq,
        last_time: m.msg_time,
        message: None,
    }))
}

/// One view: its peer, last message, unread count and read state.
fn view_at(
    conn: &Connection,
    waiting: &UserTail,
    uid: i64,
    view: ViewHead,
) -> rusqlite::Result<Conversation> {
    let peer: String = conn
        .prepare_cached("SELECT user_id FROM accounts WHERE uid = ?1")?
        .query_row([view.peer_uid], |r| r.get(0))?;
    let (read_seq, read_time, peer_read_time) = conn
        .prepare_cached(
            "SELECT read_seq, read_time, peer_read_time FROM conversation_state \
             WHERE uid = ?1 AND peer_uid = ?2",
        )?
        .query_row(params![uid, view.peer_uid], |r| {
            Ok((u64_at(r, 0)?, u64_at(r, 1)?, u64_at(r, 2)?))
        })
        .optional()?
        .unwrap_or((0, 0, 0));
    let mut unread = 0u32;
    walk_all(conn, waiting, uid, view.peer_uid, u64::MAX, |e| {
        if e.seq <= read_seq {
            return Ok(ControlFlow::Break(()));
        }
        if e.flags & ENTRY_UNREAD != 0 {
            unread += 1;
        }
        Ok(if i64::from(unread) >= UNREAD_CAP {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })?;
    Ok(Conversation {
        peer,
        last_message: view.message,
        last_time: view.last_time,
        unread,
        read_time,
        peer_read_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let params = sql.matches('?').count().min(5);
        let mut s = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("prepare");
        let args: Vec<i64> = (0..params).map(|_| 1).collect();
        s.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            r.get::<_, String>(3)
        })
        .expect("plan")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
    }

    /// Every read of chunks seeks by (account, …) instead of scanning:
    /// views by (uid, peer_uid), sync by (uid, last_seq).
    #[test]
    fn chunk_queries_seek_their_keys() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut conn =
            crate::schema::open_writer(&dir.path().join("duet.db"), 1 << 20).expect("open");
        crate::schema::migrate(&mut conn).expect("migrate");
        for (sql, want) in [
            (VIEW_CHUNKS, "(uid=? AND peer_uid=? AND first_seq<?)"),
            (VIEW_FIRST, "(uid=? AND peer_uid=?)"),
            (VIEW_NEXT, "(uid=? AND peer_uid>?)"),
            (crate::merge::HAS_CHUNKS, "(uid=? AND peer_uid=?)"),
            (SYNC_CHUNKS, "INDEX chunks_by_seq (uid=? AND last_seq>?)"),
            (SYNC_EVENTS, "(uid=? AND seq>? AND seq<?)"),
        ] {
            let steps = plan(&conn, sql);
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH") && s.contains(want)),
                "{sql}\nmust seek {want}, plan: {steps:?}"
            );
            assert!(
                !steps
                    .iter()
                    .any(|s| s.starts_with("SCAN")
                        && (s.contains("chunks") || s.contains("timeline"))),
                "{sql}\nmust not scan a table, plan: {steps:?}"
            );
        }
    }
}
