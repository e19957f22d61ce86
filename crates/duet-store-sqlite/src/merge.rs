//! Writing message entries into the views' chunks: the writer's merges of
//! the tail, recovery at open, migration 5 and the retention sweep.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chunk::{self, ChunkEntry};
use crate::rows::sql_u64;

/// The last chunk of a view: `first_seq, last_seq, entries`.
const LAST_CHUNK: &str = "SELECT first_seq, last_seq, entries FROM chunks \
     WHERE uid = ?1 AND peer_uid = ?2 ORDER BY first_seq DESC LIMIT 1";
const INSERT_CHUNK: &str =
    "INSERT INTO chunks (uid, peer_uid, first_seq, last_seq, entries) VALUES (?1, ?2, ?3, ?4, ?5)";
const UPDATE_CHUNK: &str = "UPDATE chunks SET last_seq = ?4, entries = ?5 \
     WHERE uid = ?1 AND peer_uid = ?2 AND first_seq = ?3";
const DELETE_CHUNK: &str = "DELETE FROM chunks WHERE uid = ?1 AND peer_uid = ?2 AND first_seq = ?3";

/// A chunk that does not decode, as an SQLite error (the column is `entries`).
pub(crate) fn corrupt(e: chunk::CorruptChunk) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Blob, Box::new(e))
}

/// Message entries to write, grouped by view `(uid, peer_uid)`; each view's
/// in increasing `seq`.
#[derive(Debug, Default)]
pub(crate) struct Views {
    views: BTreeMap<(i64, i64), Vec<ChunkEntry>>,
}

impl Views {
    /// Adds an entry of `uid`'s view of `peer_uid` (entries of a view must
    /// come in increasing `seq`).
    pub(crate) fn push(&mut self, uid: i64, peer_uid: i64, entry: ChunkEntry) {
        self.views.entry((uid, peer_uid)).or_default().push(entry);
    }

    /// Views touched.
    pub(crate) fn len(&self) -> usize {
        self.views.len()
    }

    /// Appends every view's entries to its chunks, in key order (neighbouring
    /// views share pages). With `skip_present`, entries a view already holds
    /// (numbers up to its last chunk's last) are skipped: recovery re-merges
    /// messages of which a part may be merged already.
    /// Returns the entries written.
    pub(crate) fn append(&self, conn: &Connection, skip_present: bool) -> rusqlite::Result<usize> {
        let mut buf = Vec::new();
        let mut written = 0;
        for (&(uid, peer_uid), entries) in &self.views {
            written += append_to_view(conn, uid, peer_uid, entries, skip_present, &mut buf)?;
        }
        Ok(written)
    }
}

/// Appends `entries` (increasing `seq`, newer than the view's) to the view's
/// chunks: the last chunk takes what it has room for, new chunks the rest.
/// Returns the entries written.
fn append_to_view(
    conn: &Connection,
    uid: i64,
    peer_uid: i64,
    entries: &[ChunkEntry],
    skip_present: bool,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<usize> {
    let last = conn
        .prepare_cached(LAST_CHUNK)?
        .query_row(params![uid, peer_uid], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .optional()?;
    let mut entries = entries;
    if skip_present && let Some((_, last_seq, _)) = &last {
        let held = entries.partition_point(|e| sql_u64(e.seq) <= *last_seq);
        entries = &entries[held..];
    }
    if entries.is_empty() {
        return Ok(0);
    }
    // The last chunk takes entries while it has room: rewritten whole.
    let mut joined = Vec::new();
    if let Some((first_seq, _, blob)) = last {
        let first = u64::try_from(first_seq).unwrap_or_default();
        joined = chunk::decode(&blob, first).map_err(corrupt)?;
        if !chunk::has_room(joined.len(), blob.len()) {
            joined.clear();
        }
    }
    let rest = if joined.is_empty() {
        entries
    } else {
        joined.extend_from_slice(entries);
        let head = chunk::split(&joined).next().unwrap_or_default();
        write_chunk(conn, UPDATE_CHUNK, uid, peer_uid, head, buf)?;
        &joined[head.len()..]
    };
    for part in chunk::split(rest) {
        write_chunk(conn, INSERT_CHUNK, uid, peer_uid, part, buf)?;
    }
    Ok(entries.len())
}

fn write_chunk(
    conn: &Connection,
    sql: &str,
    uid: i64,
    peer_uid: i64,
    entries: &[ChunkEntry],
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    chunk::encode(entries, buf);
    conn.prepare_cached(sql)?.execute(params![
        uid,
        peer_uid,
        sql_u64(first.seq),
        sql_u64(last.seq),
        &buf[..]
    ])?;
    Ok(())
}

/// Removes the entries `(seq, msg_id)` (increasing `seq`) from a view's
/// chunks; returns how many it removed.
pub(crate) fn remove_from_view(
    conn: &Connection,
    uid: i64,
    peer_uid: i64,
    gone: &[(u64, i64)],
) -> rusqlite::Result<u64> {
    let (Some(lo), Some(hi)) = (gone.first(), gone.last()) else {
        return Ok(0);
    };
    let chunks: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT first_seq, entries FROM chunks \
             WHERE uid = ?1 AND peer_uid = ?2 AND first_seq <= ?4 AND last_seq >= ?3",
        )?
        .query_map(params![uid, peer_uid, sql_u64(lo.0), sql_u64(hi.0)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = 0;
    let mut buf = Vec::new();
    for (first_seq, blob) in chunks {
        let first = u64::try_from(first_seq).unwrap_or_default();
        let entries = chunk::decode(&blob, first).map_err(corrupt)?;
        let kept: Vec<ChunkEntry> = entries
            .iter()
            .filter(|e| gone.binary_search(&(e.seq, e.msg_id)).is_err())
            .copied()
            .collect();
        if kept.len() == entries.len() {
            continue;
        }
        removed += (entries.len() - kept.len()) as u64;
        match kept.first() {
            Some(k) if k.seq == first => {
                write_chunk(conn, UPDATE_CHUNK, uid, peer_uid, &kept, &mut buf)?;
            }
            // Its first entry went: the chunk's key changes.
            _ => {
                conn.prepare_cached(DELETE_CHUNK)?
                    .execute(params![uid, peer_uid, first_seq])?;
                write_chunk(conn, INSERT_CHUNK, uid, peer_uid, &kept, &mut buf)?;
            }
        }
    }
    Ok(removed)
}

/// Whether the view `(uid, peer_uid)` holds a chunk.
pub(crate) const HAS_CHUNKS: &str =
    "SELECT EXISTS (SELECT 1 FROM chunks WHERE uid = ?1 AND peer_uid = ?2)";

/// Whether `uid`'s view of `peer_uid` holds a merged message entry.
pub(crate) fn has_chunks(conn: &Connection, uid: i64, peer_uid: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(HAS_CHUNKS)?
        .query_row(params![uid, peer_uid], |r| r.get(0))
}

/// The largest message id stored (0 if none).
pub(crate) fn max_msg_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COALESCE(max(msg_id), 0) FROM messages")?
        .query_row([], |r| r.get(0))
}

/// `meta.merged_below` (0 if unset: nothing is known to be merged).
pub(crate) fn merged_below(conn: &Connection) -> rusqlite::Result<i64> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'merged_below'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Records that every message below `below` has its entries merged.
pub(crate) fn set_merged_below(conn: &Connection, below: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('merged_below', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([below.to_string()])?;
    Ok(())
}

/// The message entries of the messages from id `from` on, by view.
fn entries_from(conn: &Connection, from: i64) -> rusqlite::Result<Views> {
    let mut views = Views::default();
    let mut stmt = conn.prepare(
        "SELECT msg_id, sender_uid, receiver_uid, sender_seq, recipient_seq, entry_ts, \
                entry_flags FROM messages WHERE msg_id >= ?1 ORDER BY msg_id",
    )?;
    let mut rows = stmt.query([from])?;
    // Entries of one view come in increasing `seq` only per account, so
    // gather them first and sort each view.
    while let Some(r) = rows.next()? {
        let msg_id: i64 = r.get(0)?;
        let (sender, receiver): (i64, i64) = (r.get(1)?, r.get(2)?);
        let (sender_seq, recipient_seq): (Option<i64>, Option<i64>) = (r.get(3)?, r.get(4)?);
        let ts = u64::try_from(r.get::<_, i64>(5)?).unwrap_or_default();
        let flags = u8::try_from(r.get::<_, i64>(6)?).unwrap_or_default();
        let entry = |seq: i64, flags: u8| ChunkEntry {
            seq: u64::try_from(seq).unwrap_or_default(),
            ts,
            msg_id,
            flags,
        };
        if let Some(seq) = recipient_seq {
            views.push(receiver, sender, entry(seq, flags));
        }
        if let Some(seq) = sender_seq {
            views.push(
                sender,
                receiver,
                entry(seq, flags & crate::rows::ENTRY_NO_LAST),
            );
        }
    }
    for entries in views.views.values_mut() {
        entries.sort_unstable_by_key(|e| e.seq);
        entries.dedup_by_key(|e| e.seq);
    }
    Ok(views)
}

/// What recovery found: the next message id and the merge point (every
/// stored message is merged once it returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The id the next message gets.
    pub(crate) next_msg_id: i64,
    /// Entries merged again (they were waiting in the tail of a
    /// store that stopped, cleanly or not, and were not merged yet).
    pub(crate) remerged: usize,
    /// Idempotency keys written to `message_keys` (a stopped store held
    /// them in memory).
    pub(crate) rekeyed: usize,
}

/// At open, before the writer starts: merges the entries of every message
/// from the merge point on (skipping what was merged already), writes the
/// idempotency keys the last run held in memory (`keys::recover`), in one
/// transaction, and moves both points past the newest message.
pub(crate) fn recover(conn: &Connection) -> rusqlite::Result<Recovered> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let run = || -> rusqlite::Result<Recovered> {
        let from = merged_below(conn)?;
        let remerged = entries_from(conn, from)?.append(conn, true)?;
        let next = (max_msg_id(conn)? + 1)
            .max(from)
            .max(crate::keys::keys_below(conn)?)
            .max(1);
        if next != from {
            set_merged_below(conn, next)?;
        }
        let rekeyed = crate::keys::recover(conn, next)?;
        Ok(Recovered {
            next_msg_id: next,
            remerged,
            rekeyed,
        })
    };
    match run() {
        Ok(r) => {
            conn.execute_batch("COMMIT")?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{ENTRY_NO_LAST, ENTRY_UNREAD};

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut conn =
            crate::schema::open_writer(&dir.path().join("duet.db"), 1 << 20).expect("open");
        crate::schema::migrate(&mut conn).expect("migrate");
        conn.execute_batch(
            "INSERT INTO accounts (uid, user_id, created_ms) VALUES \
               (1, 'alice', 0), (2, 'bob', 0); \
             INSERT INTO heads (uid, head) VALUES (1, 5), (2, 5);",
        )
        .expect("accounts");
        (dir, conn)
    }

    /// Message `id` from `from` to `to` at entry `seq` on both sides.
    fn message(conn: &Connection, id: i64, from: i64, to: i64, seq: i64, flags: u8) {
        conn.execute(
            "INSERT INTO messages (msg_id, sender_uid, receiver_uid, sender, receiver, msg_seq, \
               msg_random, msg_time, body, cloud_custom_data, nick, face_url, sender_seq, \
               recipient_seq, entry_ts, entry_flags) \
             VALUES (?1, ?2, ?3, '', '', ?1, 0, 0, '[]', '', '', '', ?4, ?4, 1000 + ?1, ?5)",
            params![id, from, to, seq, flags],
        )
        .expect("message");
    }

    fn view(conn: &Connection, uid: i64, peer_uid: i64) -> Vec<ChunkEntry> {
        let mut s = conn
            .prepare(
                "SELECT first_seq, entries FROM chunks WHERE uid = ?1 AND peer_uid = ?2 \
                 ORDER BY first_seq",
            )
            .expect("prepare");
        let chunks: Vec<(i64, Vec<u8>)> = s
            .query_map([uid, peer_uid], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        chunks
            .into_iter()
            .flat_map(|(first, blob)| {
                chunk::decode(&blob, u64::try_from(first).expect("seq")).expect("decode")
            })
            .collect()
    }

    fn entry(seq: u64, msg_id: i64, flags: u8) -> ChunkEntry {
        ChunkEntry {
            seq,
            ts: 1000 + u64::try_from(msg_id).expect("id"),
            msg_id,
            flags,
        }
    }

    /// Merging again and again into views of different accounts reuses the
    /// "last chunk" statement as prepared: it is never compiled anew (it was
    /// at every use while its plan depended on the bound values).
    #[test]
    fn merges_reuse_their_prepared_statements() {
        let (_dir, conn) = db();
        for round in 0..4u64 {
            let mut views = Views::default();
            views.push(1, 2, entry(round + 1, 0, 0));
            views.push(2, 1, entry(round + 1, 0, ENTRY_UNREAD));
            assert_eq!(views.append(&conn, false).expect("append"), 2);
        }
        let stmt = conn.prepare_cached(LAST_CHUNK).expect("cached");
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the last-chunk query was compiled again"
        );
        assert_eq!(view(&conn, 1, 2).len(), 4);
    }

    /// A store that stopped with messages 2..=5 not (or half) merged: recovery
    /// merges exactly what is missing, on both sides, with the flags each side
    /// gets, and moves the merge point past the newest message.
    #[test]
    fn recovery_merges_what_the_tail_held() {
        let (_dir, conn) = db();
        for (id, from, to) in [(1, 1, 2), (2, 2, 1), (3, 1, 2), (4, 2, 1), (5, 1, 2)] {
            let flags = if id == 4 {
                ENTRY_UNREAD | ENTRY_NO_LAST
            } else {
                ENTRY_UNREAD
            };
            message(&conn, id, from, to, id, flags);
        }
        // Merged before the stop: message 1 on both sides, message 2 on
        // alice's only (her account's merge took more).
        let mut half = Views::default();
        half.push(1, 2, entry(1, 1, 0));
        half.push(1, 2, entry(2, 2, ENTRY_UNREAD));
        half.push(2, 1, entry(1, 1, ENTRY_UNREAD));
        assert_eq!(half.append(&conn, false).expect("append"), 3);
        set_merged_below(&conn, 2).expect("merge point");

        let r = recover(&conn).expect("recover");
        assert_eq!(
            r,
            Recovered {
                next_msg_id: 6,
                remerged: 7,
                rekeyed: 5
            }
        );
        assert_eq!(merged_below(&conn).expect("merge point"), 6);
        assert_eq!(crate::keys::keys_below(&conn).expect("key point"), 6);
        let key = crate::keys::Key {
            sender_uid: 2,
            msg_seq: 4,
            msg_random: 0,
        };
        assert_eq!(crate::keys::stored(&conn, &key).expect("key"), Some(4));
        // Alice sent 1, 3, 5 (her copies are not unread) and received 2, 4.
        assert_eq!(
            view(&conn, 1, 2),
            vec![
                entry(1, 1, 0),
                entry(2, 2, ENTRY_UNREAD),
                entry(3, 3, 0),
                entry(4, 4, ENTRY_UNREAD | ENTRY_NO_LAST),
                entry(5, 5, 0),
            ]
        );
        assert_eq!(
            view(&conn, 2, 1),
            vec![
                entry(1, 1, ENTRY_UNREAD),
                entry(2, 2, 0),
                entry(3, 3, ENTRY_UNREAD),
                entry(4, 4, ENTRY_NO_LAST),
                entry(5, 5, ENTRY_UNREAD),
            ]
        );
        // Nothing left to do the second time.
        let again = recover(&conn).expect("again");
        assert_eq!((again.remerged, again.rekeyed), (0, 0));
        assert_eq!(view(&conn, 1, 2).len(), 5);
    }

    /// After a sweep removed the newest messages, ids still grow past the
    /// merge point, so recovery never misses a message stored later.
    #[test]
    fn ids_grow_past_the_merge_point_when_the_newest_messages_are_gone() {
        let (_dir, conn) = db();
        set_merged_below(&conn, 40).expect("merge point");
        assert_eq!(recover(&conn).expect("recover").next_msg_id, 40);
        // Likewise past the key point.
        crate::keys::set_keys_below(&conn, 50).expect("key point");
        assert_eq!(recover(&conn).expect("recover").next_msg_id, 50);
        assert_eq!(merged_below(&conn).expect("merge point"), 50);
    }

    /// Appends fill the last chunk, then open new ones; removals rewrite or
    /// drop the chunks they touch, renumbering a chunk whose first entry went.
    #[test]
    fn appends_and_removals_keep_every_entry_once_in_order() {
        let (_dir, conn) = db();
        let mut all = Vec::new();
        let mut seq = 0;
        for round in 0..7 {
            let mut views = Views::default();
            for _ in 0..(round * 13 + 1) {
                seq += 1;
                let e = entry(seq, i64::try_from(seq).expect("id"), ENTRY_UNREAD);
                views.push(1, 2, e);
                all.push(e);
            }
            views.append(&conn, false).expect("append");
            assert_eq!(view(&conn, 1, 2), all, "after round {round}");
        }
        let chunks: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .expect("count");
        assert!(
            chunks as usize <= all.len().div_ceil(chunk::MAX_ENTRIES) + 1,
            "chunks are filled before new ones open: {chunks} for {} entries",
            all.len()
        );
        // Remove the first entry, one in the middle and the last 40.
        let mut gone: Vec<(u64, i64)> = vec![(1, 1), (100, 100)];
        gone.extend(all.iter().rev().take(40).map(|e| (e.seq, e.msg_id)));
        gone.sort_unstable();
        // An entry whose message differs is not removed.
        gone.push((all.len() as u64 + 1, 0));
        let removed = remove_from_view(&conn, 1, 2, &gone).expect("remove");
        assert_eq!(removed, 42);
        all.retain(|e| gone.binary_search(&(e.seq, e.msg_id)).is_err());
        assert_eq!(view(&conn, 1, 2), all);
        let all_gone: Vec<(u64, i64)> = all.iter().map(|e| (e.seq, e.msg_id)).collect();
        assert_eq!(
            remove_from_view(&conn, 1, 2, &all_gone).expect("remove all"),
            all_gone.len() as u64
        );
        assert!(!has_chunks(&conn, 1, 2).expect("exists"));
    }
}
