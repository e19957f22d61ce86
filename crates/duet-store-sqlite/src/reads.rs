//! Read queries, run on the reader pool.

use duet_proto::{Conversation, Entry, HistoryItem};
use duet_store::StoreResult;
use rusqlite::{Connection, OptionalExtension, params};

use crate::db;
use crate::rows::{entry_at, message_at, msg_cols, sql_u64, u64_at};

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

pub(crate) fn history(
    conn: &Connection,
    user: &str,
    peer: &str,
    before: Option<u64>,
    count: u32,
) -> rusqlite::Result<Vec<HistoryItem>> {
    const SQL: &str = concat!(
        "SELECT t.seq, ",
        msg_cols!(),
        " FROM timeline t JOIN messages m ON m.msg_id = t.msg_id \
         WHERE t.uid = ",
        uid_of!("?1"),
        " AND t.peer_uid = ",
        uid_of!("?2"),
        " AND t.kind = 0 AND t.seq < ?3 \
         ORDER BY t.seq DESC LIMIT ?4"
    );
    let before = before.map_or(i64::MAX, sql_u64);
    conn.prepare_cached(SQL).and_then(|mut s| {
        s.query_map(params![user, peer, before, i64::from(count)], |r| {
            Ok(HistoryItem {
                seq: u64_at(r, 0)?,
                message: message_at(r, 1)?,
            })
        })?
        .collect()
    })
}

pub(crate) fn conversations(
    conn: &Connection,
    user: &str,
    offset: u32,
    count: u32,
) -> StoreResult<Vec<Conversation>> {
    const SQL: &str = concat!(
        "SELECT p.user_id, c.last_time, c.unread, c.read_time, c.peer_read_time, m.msg_id, ",
        msg_cols!(),
        " FROM conversations c JOIN accounts p ON p.uid = c.peer_uid \
         LEFT JOIN messages m ON m.msg_id = c.last_msg_id WHERE c.uid = ",
        uid_of!("?1"),
        " ORDER BY c.last_time DESC, c.last_seq DESC LIMIT ?3 OFFSET ?2"
    );
    conn.prepare_cached(SQL)
        .and_then(|mut s| {
            s.query_map(params![user, i64::from(offset), i64::from(count)], |r| {
                let last_message = match r.get::<_, Option<i64>>(5)? {
                    Some(_) => Some(message_at(r, 6)?),
                    None => None,
                };
                Ok(Conversation {
                    peer: r.get(0)?,
                    last_message,
                    last_time: u64_at(r, 1)?,
                    unread: r.get(2)?,
                    read_time: u64_at(r, 3)?,
                    peer_read_time: u64_at(r, 4)?,
                })
            })?
            .collect()
        })
        .map_err(db)
}
