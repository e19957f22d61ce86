//! Read queries, run on the reader pool.

use duet_proto::{Conversation, Entry, HistoryItem};
use duet_store::StoreResult;
use rusqlite::{Connection, OptionalExtension, params};

use crate::rows::{entry_at, message_at, msg_cols, sql_u64, u64_at};
use crate::{UNREAD_CAP, db};

pub(crate) fn head(conn: &Connection, user: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT head FROM accounts WHERE user_id = ?1")
        .and_then(|mut s| s.query_row([user], |r| u64_at(r, 0)).optional())
        .map(Option::unwrap_or_default)
}

/// The account key of the UserID in parameter `$param` (NULL when it has
/// none, so that no row matches).
macro_rules! uid_of {
    ($param:literal) => {
        concat!("(SELECT uid FROM accounts WHERE user_id = ", $param, ")")
    };
}

/// Every entry in the window; message entries whose message was swept are skipped.
const SYNC_ALL: &str = concat!(
    "SELECT t.seq, t.ts, t.kind, t.payload, ",
    msg_cols!(),
    " FROM timeline t LEFT JOIN messages m ON m.msg_id = t.msg_id WHERE t.uid = ",
    uid_of!("?1"),
    " AND t.seq > ?2 AND t.seq <= ?3 \
       AND (t.kind <> 0 OR m.msg_id IS NOT NULL) \
     ORDER BY t.seq LIMIT ?4"
);

/// As [`SYNC_ALL`], keeping only the newest `?4` message entries per peer.
const SYNC_CUT: &str = concat!(
    "WITH w AS ( \
       SELECT t.seq, t.ts, t.kind, t.payload, t.msg_id, \
              ROW_NUMBER() OVER (PARTITION BY t.kind, t.peer_uid ORDER BY t.seq DESC) AS rn \
       FROM timeline t WHERE t.uid = ",
    uid_of!("?1"),
    " AND t.seq > ?2 AND t.seq <= ?3 \
         AND (t.kind <> 0 OR EXISTS (SELECT 1 FROM messages x WHERE x.msg_id = t.msg_id)) \
     ) \
     SELECT w.seq, w.ts, w.kind, w.payload, ",
    msg_cols!(),
    " FROM w LEFT JOIN messages m ON m.msg_id = w.msg_id \
     WHERE w.kind <> 0 OR w.rn <= ?4 \
     ORDER BY w.seq LIMIT ?5"
);

pub(crate) fn sync(
    conn: &Connection,
    user: &str,
    after: u64,
    upto: u64,
    per_conversation: u32,
    limit: u32,
) -> StoreResult<Vec<Entry>> {
    if upto <= after || limit == 0 {
        return Ok(Vec::new());
    }
    let (after, upto) = (sql_u64(after), sql_u64(upto));
    // A window no wider than the cut cannot hold more than `per_conversation`
    // messages of one peer: skip the window function.
    let uncut = u64::try_from(upto - after).is_ok_and(|w| w <= u64::from(per_conversation));
    let result = if uncut {
        conn.prepare_cached(SYNC_ALL).and_then(|mut s| {
            s.query_map(params![user, after, upto, i64::from(limit)], entry_at)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
    } else {
        conn.prepare_cached(SYNC_CUT).and_then(|mut s| {
            s.query_map(
                params![
                    user,
                    after,
                    upto,
                    i64::from(per_conversation),
                    i64::from(limit)
                ],
                entry_at,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
    };
    result.map_err(db)
}

/// A history page: the view's message entries before `?3`, newest first.
pub(crate) const HISTORY: &str = concat!(
    "SELECT t.seq, ",
    msg_cols!(),
    " FROM timeline t INDEXED BY timeline_history JOIN messages m ON m.msg_id = t.msg_id \
     WHERE t.uid = ",
    uid_of!("?1"),
    " AND t.peer_uid = ",
    uid_of!("?2"),
    " AND t.kind = 0 AND t.seq < ?3 \
     ORDER BY t.seq DESC LIMIT ?4"
);

pub(crate) fn history(
    conn: &Connection,
    user: &str,
    peer: &str,
    before: Option<u64>,
    count: u32,
) -> rusqlite::Result<Vec<HistoryItem>> {
    let before = before.map_or(i64::MAX, sql_u64);
    conn.prepare_cached(HISTORY).and_then(|mut s| {
        s.query_map(params![user, peer, before, i64::from(count)], |r| {
            Ok(HistoryItem {
                seq: u64_at(r, 0)?,
                message: message_at(r, 1)?,
            })
        })?
        .collect()
    })
}

/// Where a view's order comes from: its last message (or, when every
/// message has no-last-msg, its first, without a last message).
struct ViewHead {
    peer_uid: i64,
    last_seq: i64,
    last_time: i64,
    msg_id: Option<i64>,
}

// The flag bits in these queries are `ENTRY_UNREAD` (1) and `ENTRY_NO_LAST`
// (2) of `rows`. Every query on a view names its index: without statistics the planner
// would rather walk the user's whole timeline by its primary key (a test
// checks the plans).

/// The view after `?2`, in account key order.
pub(crate) const VIEW_NEXT: &str = "SELECT peer_uid FROM timeline INDEXED BY timeline_history \
     WHERE uid = ?1 AND kind = 0 AND peer_uid > ?2 ORDER BY peer_uid LIMIT 1";
/// The newest message entry of a view without no-last-msg.
pub(crate) const VIEW_LAST: &str = "SELECT t.seq, m.msg_time, m.msg_id \
     FROM timeline t INDEXED BY timeline_history JOIN messages m ON m.msg_id = t.msg_id \
     WHERE t.uid = ?1 AND t.peer_uid = ?2 AND t.kind = 0 AND (t.flags & 2) = 0 \
     ORDER BY t.seq DESC LIMIT 1";
/// A view's unread-counting entries after `?3`, at most `?4`.
pub(crate) const VIEW_UNREAD: &str = "SELECT count(*) FROM (SELECT 1 \
     FROM timeline INDEXED BY timeline_history \
     WHERE uid = ?1 AND peer_uid = ?2 AND kind = 0 AND seq > ?3 AND (flags & 1) <> 0 LIMIT ?4)";
/// A view's first message entry.
pub(crate) const VIEW_FIRST: &str = "SELECT t.seq, m.msg_time \
     FROM timeline t INDEXED BY timeline_history JOIN messages m ON m.msg_id = t.msg_id \
     WHERE t.uid = ?1 AND t.peer_uid = ?2 AND t.kind = 0 ORDER BY t.seq LIMIT 1";

/// `user`'s conversation views, derived from the message entries of its
/// timeline (see migration 4): each peer in `timeline_history` is a view,
/// found one index seek after the other, in one read transaction.
pub(crate) fn conversations(
    conn: &Connection,
    user: &str,
    offset: u32,
    count: u32,
) -> StoreResult<Vec<Conversation>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let tx = conn.unchecked_transaction().map_err(db)?;
    let views = view_heads(&tx, user).map_err(db)?;
    let Some((uid, mut views)) = views else {
        return Ok(Vec::new());
    };
    views.sort_by_key(|v| std::cmp::Reverse((v.last_time, v.last_seq)));
    let page = views
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(usize::MAX));
    let out = page
        .map(|view| view_at(&tx, uid, &view))
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db)?;
    tx.finish().map_err(db)?;
    Ok(out)
}

/// `user`'s account key and the head of each of its views.
fn view_heads(conn: &Connection, user: &str) -> rusqlite::Result<Option<(i64, Vec<ViewHead>)>> {
    let uid: Option<i64> = conn
        .prepare_cached("SELECT uid FROM accounts WHERE user_id = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    let Some(uid) = uid else {
        return Ok(None);
    };
    let mut next = conn.prepare_cached(VIEW_NEXT)?;
    let mut last = conn.prepare_cached(VIEW_LAST)?;
    let mut views = Vec::new();
    let mut after = i64::MIN;
    while let Some(peer_uid) = next
        .query_row(params![uid, after], |r| r.get::<_, i64>(0))
        .optional()?
    {
        after = peer_uid;
        let head = last
            .query_row(params![uid, peer_uid], |r| {
                Ok(ViewHead {
                    peer_uid,
                    last_seq: r.get(0)?,
                    last_time: r.get(1)?,
                    msg_id: Some(r.get(2)?),
                })
            })
            .optional()?;
        let head = match head {
            Some(head) => head,
            None => conn
                .prepare_cached(VIEW_FIRST)?
                .query_row(params![uid, peer_uid], |r| {
                    Ok(ViewHead {
                        peer_uid,
                        last_seq: r.get(0)?,
                        last_time: r.get(1)?,
                        msg_id: None,
                    })
                })?,
        };
        views.push(head);
    }
    Ok(Some((uid, views)))
}

/// One view: its peer, last message, unread count and read state.
fn view_at(conn: &Connection, uid: i64, view: &ViewHead) -> rusqlite::Result<Conversation> {
    let peer: String = conn
        .prepare_cached("SELECT user_id FROM accounts WHERE uid = ?1")?
        .query_row([view.peer_uid], |r| r.get(0))?;
    let (read_seq, read_time, peer_read_time) = conn
        .prepare_cached(
            "SELECT read_seq, read_time, peer_read_time FROM conversation_state \
             WHERE uid = ?1 AND peer_uid = ?2",
        )?
        .query_row(params![uid, view.peer_uid], |r| {
            Ok((r.get::<_, i64>(0)?, u64_at(r, 1)?, u64_at(r, 2)?))
        })
        .optional()?
        .unwrap_or((0, 0, 0));
    let unread: u32 = conn
        .prepare_cached(VIEW_UNREAD)?
        .query_row(params![uid, view.peer_uid, read_seq, UNREAD_CAP], |r| {
            r.get(0)
        })?;
    let last_message = match view.msg_id {
        Some(msg_id) => Some(
            conn.prepare_cached(concat!(
                "SELECT ",
                msg_cols!(),
                " FROM messages m WHERE m.msg_id = ?1"
            ))?
            .query_row([msg_id], |r| message_at(r, 0))?,
        ),
        None => None,
    };
    Ok(Conversation {
        peer,
        last_message,
        last_time: u64::try_from(view.last_time).unwrap_or_default(),
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

    /// Every read of a conversation view seeks `timeline_history` by
    /// (account, peer) instead of walking the account's whole timeline.
    #[test]
    fn view_queries_seek_the_history_index() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut conn =
            crate::schema::open_writer(&dir.path().join("duet.db"), 1 << 20).expect("open");
        crate::schema::migrate(&mut conn).expect("migrate");
        for sql in [
            HISTORY,
            VIEW_NEXT,
            VIEW_LAST,
            VIEW_FIRST,
            VIEW_UNREAD,
            crate::writes::HAS_MESSAGES,
        ] {
            let steps = plan(&conn, sql);
            let on_timeline: Vec<&String> = steps
                .iter()
                .filter(|s| s.contains("timeline") || s.starts_with("SEARCH t "))
                .collect();
            assert!(
                !on_timeline.is_empty()
                    && on_timeline.iter().all(|s| s.starts_with("SEARCH")
                        && s.contains("INDEX timeline_history (uid=? AND peer_uid")),
                "{sql}\nmust seek timeline_history by (uid, peer_uid), plan: {steps:?}"
            );
        }
    }
}
