//! Idempotency keys: `(sender, MsgSeq, MsgRandom)` → message id (Law 2).
//!
//! A unique index on `messages` kept these, and it cost each commit one
//! B-tree leaf per distinct sender in its batch (the senders' keys are spread
//! over the whole index): at 25,000 sends a second, 46 of a commit's 57 WAL
//! frames, so the batches queued behind any stall took several times longer
//! to commit. Now the keys of recent messages live in the writer's memory
//! ([`Keys`]) and are written to `message_keys` later, many at a time, in key
//! order: one leaf per sender per flush instead of one per batch.
//!
//! **What holds.** Every message below `meta.keys_below` has its key in
//! `message_keys`; every stored message from there on has its key in
//! [`Keys`] (the writer's, as of its last commit). A flush writes the oldest
//! keys and moves `keys_below` past them in one transaction, and only once
//! that committed drops them from memory. Recovery at open writes the keys
//! of the messages from `keys_below` on (what a stopped run still held in
//! memory) and moves it past the newest message.
//!
//! A send looks its key up in memory first, then in `message_keys`: a retry
//! finds its original whether it was sent a moment ago (still in this
//! batch) or days ago.

use std::collections::VecDeque;

use foldhash::HashMap;
use rusqlite::{Connection, OptionalExtension, Statement, params};

/// A message's idempotency key: its sender's account, `MsgSeq`, `MsgRandom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) sender_uid: i64,
    pub(crate) msg_seq: u32,
    pub(crate) msg_random: u32,
}

/// The keys not yet in `message_keys` (the writer's; see the module doc),
/// by sender: a flush writes whole senders' keys, so each sender's keys
/// share the index leaves they land on.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    ids: HashMap<Key, i64>,
    /// Each sender's keys, oldest first: `(msg_id, msg_seq, msg_random)`.
    senders: HashMap<i64, VecDeque<(i64, u32, u32)>>,
    /// Senders with keys, in the order their oldest waiting key arrived;
    /// each at most once.
    order: VecDeque<i64>,
    /// Keys added since the last [`Keys::commit`], oldest first.
    recent: Vec<Key>,
}

/// What [`Keys::write_oldest`] wrote: how many of each sender's keys.
#[derive(Debug, Default)]
pub(crate) struct Written {
    senders: Vec<(i64, usize)>,
    /// Keys written.
    pub(crate) keys: usize,
    /// `keys_below` once they are dropped (set by the caller).
    pub(crate) below: i64,
}

impl Keys {
    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The message of `key`, if it is held here.
    pub(crate) fn get(&self, key: &Key) -> Option<i64> {
        self.ids.get(key).copied()
    }

    /// Adds the key of message `msg_id` (newer than every key held).
    pub(crate) fn push(&mut self, key: Key, msg_id: i64) {
        self.ids.insert(key, msg_id);
        let q = self.senders.entry(key.sender_uid).or_default();
        if q.is_empty() {
            self.order.push_back(key.sender_uid);
        }
        q.push_back((msg_id, key.msg_seq, key.msg_random));
        self.recent.push(key);
    }

    /// Where [`Keys::truncate`] goes back to.
    pub(crate) fn mark(&self) -> usize {
        self.recent.len()
    }

    /// Drops the keys added after `mark` (a job or transaction that did not
    /// commit).
    pub(crate) fn truncate(&mut self, mark: usize) {
        while self.recent.len() > mark {
            let Some(key) = self.recent.pop() else {
                break;
            };
            self.ids.remove(&key);
            let uid = key.sender_uid;
            if let Some(q) = self.senders.get_mut(&uid) {
                q.pop_back();
                if q.is_empty() {
                    self.senders.remove(&uid);
                    // It joined the order with this key: near the back.
                    if let Some(i) = self.order.iter().rposition(|u| *u == uid) {
                        self.order.remove(i);
                    }
                }
            }
        }
    }

    /// The keys added so far are committed.
    pub(crate) fn commit(&mut self) {
        self.recent.clear();
    }

    /// Writes the oldest senders' keys to `message_keys` (inside the
    /// caller's transaction, between the writer's batches): whole senders
    /// while they fit in `max` keys (the first sender's oldest `max` if it
    /// alone has more), each sender's in key order. Drop them with
    /// [`Keys::drop_written`] once the transaction committed.
    pub(crate) fn write_oldest(&self, conn: &Connection, max: usize) -> rusqlite::Result<Written> {
        let mut written = Written::default();
        let mut room = max;
        // (sender, seq, random, msg_id), in key order.
        let mut rows: Vec<(i64, u32, u32, i64)> = Vec::new();
        for &uid in &self.order {
            let Some(q) = self.senders.get(&uid) else {
                continue;
            };
            if room == 0 || (q.len() > room && written.keys > 0) {
                break;
            }
            let n = q.len().min(room);
            let first = rows.len();
            rows.extend(
                q.iter()
                    .take(n)
                    .map(|&(id, seq, random)| (uid, seq, random, id)),
            );
            if let Some(mine) = rows.get_mut(first..) {
                mine.sort_unstable();
            }
            written.senders.push((uid, n));
            written.keys += n;
            room -= n;
        }
        // (32 rows per statement measured no cheaper: a row's cost is its
        // two B-tree seeks, the primary key's check and the insert.)
        let mut stmt = conn.prepare_cached(INSERT_KEY)?;
        for (uid, seq, random, id) in &rows {
            stmt.execute(params![uid, seq, random, id])?;
        }
        Ok(written)
    }

    /// Drops what a committed [`Keys::write_oldest`] wrote.
    pub(crate) fn drop_written(&mut self, written: &Written) {
        for &(uid, n) in &written.senders {
            let Some(q) = self.senders.get_mut(&uid) else {
                continue;
            };
            for (_, seq, random) in q.drain(..n.min(q.len())) {
                self.ids.remove(&Key {
                    sender_uid: uid,
                    msg_seq: seq,
                    msg_random: random,
                });
            }
            if q.is_empty() {
                self.senders.remove(&uid);
                // Written senders come from the front of the order.
                if let Some(i) = self.order.iter().position(|u| *u == uid) {
                    self.order.remove(i);
                }
            }
        }
    }

    /// The smallest message id of a key held (`None`: none held).
    #[cfg(test)]
    pub(crate) fn oldest(&self) -> Option<i64> {
        self.oldest_besides(&Written::default())
    }

    /// The smallest message id of a key held that `written` does not cover:
    /// what stays in memory once it is dropped.
    pub(crate) fn oldest_besides(&self, written: &Written) -> Option<i64> {
        let skip: HashMap<i64, usize> = written.senders.iter().copied().collect();
        self.senders
            .iter()
            .filter_map(|(uid, q)| q.get(skip.get(uid).copied().unwrap_or(0)))
            .map(|&(id, _, _)| id)
            .min()
    }
}

const INSERT_KEY: &str =
    "INSERT INTO message_keys (sender_uid, msg_seq, msg_random, msg_id) VALUES (?1, ?2, ?3, ?4)";

/// Finds a key in `message_keys`: run with [`find`].
pub(crate) const FIND_KEY: &str =
    "SELECT msg_id FROM message_keys WHERE sender_uid = ?1 AND msg_seq = ?2 AND msg_random = ?3";

/// The message of `key` in `message_keys`, by `stmt` (prepared [`FIND_KEY`]).
pub(crate) fn find(stmt: &mut Statement<'_>, key: &Key) -> rusqlite::Result<Option<i64>> {
    stmt.query_row(params![key.sender_uid, key.msg_seq, key.msg_random], |r| {
        r.get(0)
    })
    .optional()
}

/// The message of `key` in `message_keys`.
#[cfg(test)]
pub(crate) fn stored(conn: &Connection, key: &Key) -> rusqlite::Result<Option<i64>> {
    let mut stmt = conn.prepare_cached(FIND_KEY)?;
    find(&mut stmt, key)
}

/// Removes swept message `msg_id`'s key from `message_keys`.
pub(crate) fn remove(conn: &Connection, key: &Key, msg_id: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM message_keys \
         WHERE sender_uid = ?1 AND msg_seq = ?2 AND msg_random = ?3 AND msg_id = ?4",
    )?
    .execute(params![key.sender_uid, key.msg_seq, key.msg_random, msg_id])
}

/// `meta.keys_below` (0 if unset).
pub(crate) fn keys_below(conn: &Connection) -> rusqlite::Result<i64> {
    let value: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'keys_below'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Records that every message below `below` has its key in `message_keys`.
pub(crate) fn set_keys_below(conn: &Connection, below: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('keys_below', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([below.to_string()])?;
    Ok(())
}

/// At open, inside recovery's transaction: writes the keys of the messages
/// from `keys_below` on (those a stopped run held in memory; any already
/// written are skipped) and moves `keys_below` to `next`. Returns the keys
/// written.
pub(crate) fn recover(conn: &Connection, next: i64) -> rusqlite::Result<usize> {
    let from = keys_below(conn)?;
    let written = conn
        .prepare(
            "INSERT OR IGNORE INTO message_keys (sender_uid, msg_seq, msg_random, msg_id) \
             SELECT sender_uid, msg_seq, msg_random, msg_id FROM messages WHERE msg_id >= ?1 \
             ORDER BY sender_uid, msg_seq, msg_random",
        )?
        .execute([from])?;
    if next != from {
        set_keys_below(conn, next)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sender_uid: i64, msg_seq: u32) -> Key {
        Key {
            sender_uid,
            msg_seq,
            msg_random: 7,
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut conn = Connection::open(dir.path().join("k.db")).expect("open");
        crate::schema::migrate(&mut conn).expect("migrate");
        (dir, conn)
    }

    #[test]
    fn truncate_forgets_only_the_newest() {
        let mut keys = Keys::default();
        keys.push(key(1, 1), 10);
        keys.push(key(2, 1), 11);
        keys.commit();
        let mark = keys.mark();
        keys.push(key(1, 2), 12);
        keys.push(key(3, 1), 13);
        keys.truncate(mark);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&key(1, 1)), Some(10));
        assert_eq!(keys.get(&key(2, 1)), Some(11));
        assert_eq!(keys.get(&key(1, 2)), None);
        assert_eq!(keys.get(&key(3, 1)), None);
        assert_eq!(
            keys.order,
            [1, 2],
            "a sender whose keys all went leaves the order"
        );
        assert_eq!(keys.oldest(), Some(10));
    }

    #[test]
    fn many_keys_of_interleaved_senders_are_all_written() {
        let (_dir, conn) = db();
        let mut keys = Keys::default();
        // 75 keys of three senders, pushed interleaved, each sender's in
        // falling key order.
        for id in 0..75 {
            let sender = id % 3;
            keys.push(key(sender, u32::try_from(1000 - id).expect("small")), id);
        }
        keys.commit();
        let w = keys.write_oldest(&conn, 1000).expect("write");
        assert_eq!(w.keys, 75);
        keys.drop_written(&w);
        assert_eq!(keys.len(), 0);
        let rows: Vec<(i64, u32, i64)> = conn
            .prepare("SELECT sender_uid, msg_seq, msg_id FROM message_keys")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("rows");
        assert_eq!(rows.len(), 75);
        for id in 0..75 {
            let seq = u32::try_from(1000 - id).expect("small");
            assert!(rows.contains(&(id % 3, seq, id)), "key of message {id}");
        }
    }

    #[test]
    fn whole_senders_are_written_oldest_first_and_the_rest_stay_in_memory() {
        let (_dir, conn) = db();
        let mut keys = Keys::default();
        // Sender 3 first (ids 100, 104), then 1 (101, 103, 105), then 2 (102).
        for (id, sender) in [(100, 3), (101, 1), (102, 2), (103, 1), (104, 3), (105, 1)] {
            keys.push(key(sender, u32::try_from(id).expect("small")), id);
        }
        keys.commit();
        // Room for 4: sender 3's two keys, and sender 1's three do not fit.
        let w = keys.write_oldest(&conn, 4).expect("write");
        assert_eq!(w.keys, 2);
        keys.drop_written(&w);
        assert_eq!(stored(&conn, &key(3, 100)).expect("read"), Some(100));
        assert_eq!(stored(&conn, &key(3, 104)).expect("read"), Some(104));
        assert_eq!(stored(&conn, &key(1, 101)).expect("read"), None);
        assert_eq!(keys.get(&key(3, 104)), None, "dropped once written");
        assert_eq!(keys.get(&key(1, 105)), Some(105));
        assert_eq!(keys.oldest(), Some(101));
        // A first sender with more keys than room gives its oldest.
        let w = keys.write_oldest(&conn, 2).expect("write");
        assert_eq!(w.keys, 2);
        keys.drop_written(&w);
        assert_eq!(stored(&conn, &key(1, 103)).expect("read"), Some(103));
        assert_eq!(keys.get(&key(1, 105)), Some(105));
        assert_eq!(keys.oldest(), Some(102));
        let w = keys.write_oldest(&conn, 100).expect("write");
        assert_eq!(w.keys, 2);
        keys.drop_written(&w);
        assert_eq!((keys.len(), keys.oldest()), (0, None));
        assert!(keys.order.is_empty() && keys.senders.is_empty());

        assert_eq!(
            remove(&conn, &key(1, 103), 999).expect("remove"),
            0,
            "another message's"
        );
        assert_eq!(remove(&conn, &key(1, 103), 103).expect("remove"), 1);
        assert_eq!(stored(&conn, &key(1, 103)).expect("read"), None);
    }
}
