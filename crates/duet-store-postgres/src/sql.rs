//! The SQL statements, all prepared once per connection (`prepare_cached`).
//!
//! Every write is one statement (or two, sent back to back) that takes its
//! locks, allocates its entry numbers and writes its rows; it is sent together
//! with `BEGIN` and `COMMIT` in one pipelined round trip (see
//! [`crate::pipelined_tx`]).
//!
//! Lock order (no deadlocks between writers): a write first locks the
//! `accounts` rows it allocates from, in `user_id` order, with
//! `SELECT … ORDER BY user_id FOR UPDATE` in a CTE (such a CTE is always
//! materialized and locks in sort order), and only then touches other rows.
//! A user's `conversations` rows are only written while holding that user's
//! account lock.

/// The message columns decoded by [`crate::rows::message_at`], from alias `m`.
macro_rules! msg_cols {
    ($m:literal) => {
        concat!(
            $m,
            ".sender, ",
            $m,
            ".receiver, ",
            $m,
            ".msg_seq, ",
            $m,
            ".msg_random, ",
            $m,
            ".msg_time, ",
            $m,
            ".flags, ",
            $m,
            ".body, ",
            $m,
            ".cloud_custom_data, ",
            $m,
            ".nick, ",
            $m,
            ".face_url"
        )
    };
}

pub(crate) const SELECT_ACCOUNT: &str =
    "SELECT user_id, nick, face_url, created_ms FROM accounts WHERE user_id = $1::text";

/// Creates the account unless it exists; returns it only if this call created it.
pub(crate) const INSERT_ACCOUNT: &str = "INSERT INTO accounts (user_id, created_ms) \
     VALUES ($1::text, $2::bigint) ON CONFLICT (user_id) DO NOTHING \
     RETURNING user_id, nick, face_url, created_ms";

pub(crate) const SET_PROFILE: &str = "INSERT INTO accounts AS a (user_id, nick, face_url, created_ms) \
     VALUES ($1::text, COALESCE($2::text, ''), COALESCE($3::text, ''), $4::bigint) \
     ON CONFLICT (user_id) DO UPDATE SET \
       nick = COALESCE($2::text, a.nick), face_url = COALESCE($3::text, a.face_url) \
     RETURNING user_id, nick, face_url, created_ms";

/// The original of a message (by its idempotency key), with its sender entry number.
pub(crate) const FIND_DUPLICATE: &str = concat!(
    "SELECT ",
    msg_cols!("m"),
    ", m.sender_seq FROM messages m \
     WHERE m.sender = $1::text AND m.msg_seq = $2::bigint AND m.msg_random = $3::bigint"
);

/// A whole send in one statement.
///
/// Parameters: `$1` from, `$2` to, `$3` msg_seq, `$4` msg_random, `$5` msg_time,
/// `$6` body, `$7` cloud_custom_data, `$8` sender gets a copy (and is not the
/// recipient), `$9` now_ms, `$10` update the last message, `$11` counts as unread.
///
/// - `dup`: an already committed original; then nothing is written.
/// - `known`: whether both accounts exist (accounts are never deleted, so the
///   statement snapshot is enough); otherwise nothing is written.
/// - `lck`, `alloc`: the recipient's (and the sender's) account rows, locked in
///   `user_id` order, then their heads incremented (Law 3).
/// - `snap`: the sender's profile snapshot, from the locked row when there is one.
/// - `msg`: the message; `ON CONFLICT DO NOTHING` waits for a concurrent
///   identical send and, if that one committed, inserts nothing: `entries` then
///   writes a message entry without a `msg_id`, which the
///   `timeline_message_ref` check rejects, rolling everything back (the caller
///   then returns the original as a duplicate).
/// - `convs`: both conversation views (`ON CONFLICT` sees the latest row).
///
/// Returns one row: `known` sender and recipient counts, the recipient's entry
/// number, the new message's id, nick, face and sender entry number, then the
/// duplicate's columns (NULL unless a duplicate).
pub(crate) const SEND: &str = concat!(
    "WITH dup AS ( \
       SELECT ",
    msg_cols!("m"),
    ", m.sender_seq FROM messages m \
       WHERE m.sender = $1::text AND m.msg_seq = $3::bigint AND m.msg_random = $4::bigint \
     ), \
     known AS ( \
       SELECT count(*) FILTER (WHERE user_id = $1::text) AS sender, \
              count(*) FILTER (WHERE user_id = $2::text) AS recipient \
       FROM accounts WHERE user_id IN ($1::text, $2::text) \
     ), \
     lck AS ( \
       SELECT user_id FROM accounts \
       WHERE user_id IN ($2::text, CASE WHEN $8::bool THEN $1::text END) \
         AND NOT EXISTS (SELECT 1 FROM dup) \
         AND (SELECT sender > 0 AND recipient > 0 FROM known) \
       ORDER BY user_id \
       FOR UPDATE \
     ), \
     alloc AS ( \
       UPDATE accounts a SET head = a.head + 1 FROM lck \
       WHERE a.user_id = lck.user_id \
       RETURNING a.user_id, a.head, a.nick, a.face_url \
     ), \
     snap AS ( \
       SELECT COALESCE(s.nick, a.nick) AS nick, COALESCE(s.face_url, a.face_url) AS face_url \
       FROM accounts a LEFT JOIN alloc s ON s.user_id = a.user_id \
       WHERE a.user_id = $1::text \
     ), \
     msg AS ( \
       INSERT INTO messages (sender, receiver, msg_seq, msg_random, msg_time, body, \
                             cloud_custom_data, nick, face_url, flags, sender_seq) \
       SELECT $1::text, $2::text, $3::bigint, $4::bigint, $5::bigint, $6::text, $7::text, \
              snap.nick, snap.face_url, 0, \
              (SELECT head FROM alloc WHERE user_id = $1::text AND $8::bool) \
       FROM snap \
       WHERE EXISTS (SELECT 1 FROM alloc WHERE user_id = $2::text) \
       ON CONFLICT (sender, msg_seq, msg_random) DO NOTHING \
       RETURNING msg_id, nick, face_url, sender_seq \
     ), \
     entries AS ( \
       INSERT INTO timeline (user_id, seq, ts, kind, peer, msg_id) \
       SELECT alloc.user_id, alloc.head, $9::bigint, 0, \
              CASE WHEN alloc.user_id = $2::text THEN $1::text ELSE $2::text END, msg.msg_id \
       FROM alloc LEFT JOIN msg ON true \
     ), \
     convs AS ( \
       INSERT INTO conversations AS c (user_id, peer, last_msg_id, last_time, last_seq, unread) \
       SELECT alloc.user_id, \
              CASE WHEN alloc.user_id = $2::text THEN $1::text ELSE $2::text END, \
              CASE WHEN $10::bool THEN msg.msg_id END, $5::bigint, alloc.head, \
              CASE WHEN alloc.user_id = $2::text AND $11::bool THEN 1 ELSE 0 END \
       FROM alloc JOIN msg ON true \
       ON CONFLICT (user_id, peer) DO UPDATE SET \
         last_msg_id = CASE WHEN $10::bool THEN excluded.last_msg_id ELSE c.last_msg_id END, \
         last_time = CASE WHEN $10::bool THEN excluded.last_time ELSE c.last_time END, \
         last_seq = CASE WHEN $10::bool THEN excluded.last_seq ELSE c.last_seq END, \
         unread = LEAST(c.unread + excluded.unread, $12::integer) \
     ) \
     SELECT k.sender, k.recipient, (SELECT head FROM alloc WHERE user_id = $2::text), \
            n.msg_id, n.nick, n.face_url, n.sender_seq, ",
    msg_cols!("d"),
    ", d.sender_seq \
     FROM known k LEFT JOIN msg n ON true LEFT JOIN dup d ON true"
);

/// Read report, part 1: the reader's (and the peer's, if it exists) entry.
/// Writes nothing unless the reader exists.
///
/// Parameters: `$1` reader, `$2` peer, `$3` now_ms, `$4` payload (JSON).
/// Returns the reader's and the peer's entry numbers (NULL if none).
pub(crate) const READ_ENTRIES: &str = "WITH lck AS ( \
       SELECT user_id FROM accounts \
       WHERE user_id IN ($1::text, $2::text) \
         AND EXISTS (SELECT 1 FROM accounts WHERE user_id = $1::text) \
       ORDER BY user_id \
       FOR UPDATE \
     ), \
     alloc AS ( \
       UPDATE accounts a SET head = a.head + 1 FROM lck \
       WHERE a.user_id = lck.user_id \
       RETURNING a.user_id, a.head \
     ), \
     entries AS ( \
       INSERT INTO timeline (user_id, seq, ts, kind, peer, payload) \
       SELECT user_id, head, $3::bigint, 2, \
              CASE WHEN user_id = $1::text THEN $2::text ELSE $1::text END, $4::text \
       FROM alloc \
     ) \
     SELECT (SELECT head FROM alloc WHERE user_id = $1::text), \
            (SELECT head FROM alloc WHERE user_id = $2::text AND $1::text <> $2::text)";

/// Read report, part 2 (run after part 1, in the same transaction, so its
/// snapshot follows the account locks): the reader's unread count and read
/// time, the peer's view of the reader's read time. Conversations exist only
/// between existing accounts, so this is a no-op for an unknown reader.
///
/// Parameters: `$1` reader, `$2` peer, `$3` read_time.
pub(crate) const READ_CONVERSATIONS: &str = "WITH mine AS ( \
       UPDATE conversations SET unread = 0, read_time = GREATEST(read_time, $3::bigint) \
       WHERE user_id = $1::text AND peer = $2::text \
       RETURNING 1 \
     ) \
     UPDATE conversations SET peer_read_time = GREATEST(peer_read_time, $3::bigint) \
     WHERE user_id = $2::text AND peer = $1::text AND $1::text <> $2::text";

/// The message a recall targets.
pub(crate) const FIND_FOR_RECALL: &str = "SELECT msg_id, receiver, msg_time, flags, sender_seq \
     FROM messages \
     WHERE sender = $1::text AND msg_seq = $2::bigint AND msg_random = $3::bigint";

/// A recall: locks the accounts (recipient, and the sender if it gets an
/// entry), then flags the message if not yet recalled, then writes the
/// entries. Writes nothing if the message is already recalled (or gone) or an
/// account is missing.
///
/// Parameters: `$1` sender (`by`), `$2` recipient, `$3` msg_id, `$4` now_ms,
/// `$5` the sender gets an entry, `$6` payload (JSON), `$7` the recalled flag,
/// `$8` the number of accounts to lock.
/// Returns: accounts locked, whether the message was flagged, the recipient's
/// and the sender's entry numbers.
pub(crate) const RECALL: &str = "WITH lck AS ( \
       SELECT user_id FROM accounts \
       WHERE user_id IN ($2::text, CASE WHEN $5::bool THEN $1::text END) \
       ORDER BY user_id \
       FOR UPDATE \
     ), \
     upd AS ( \
       UPDATE messages SET flags = flags | $7::bigint \
       WHERE msg_id = $3::bigint AND flags & $7::bigint = 0 \
         AND (SELECT count(*) FROM lck) = $8::bigint \
       RETURNING msg_id \
     ), \
     alloc AS ( \
       UPDATE accounts a SET head = a.head + 1 FROM lck \
       WHERE a.user_id = lck.user_id AND EXISTS (SELECT 1 FROM upd) \
       RETURNING a.user_id, a.head \
     ), \
     entries AS ( \
       INSERT INTO timeline (user_id, seq, ts, kind, peer, payload) \
       SELECT user_id, head, $4::bigint, 1, \
              CASE WHEN user_id = $2::text THEN $1::text ELSE $2::text END, $6::text \
       FROM alloc \
     ) \
     SELECT (SELECT count(*) FROM lck), EXISTS (SELECT 1 FROM upd), \
            (SELECT head FROM alloc WHERE user_id = $2::text), \
            (SELECT head FROM alloc WHERE user_id = $1::text AND $5::bool)";

/// A retention sweep: at most `$3` rows of each kind. `FOR UPDATE SKIP LOCKED`
/// lets several nodes sweep at once (each takes rows the others do not hold)
/// and never waits for a writer.
///
/// Parameters: `$1` cutoff in ms (entries), `$2` cutoff in s (messages,
/// conversations), `$3` chunk. Returns the three counts.
pub(crate) const SWEEP: &str = "WITH e AS ( \
       DELETE FROM timeline WHERE (user_id, seq) IN ( \
         SELECT user_id, seq FROM timeline WHERE ts < $1::bigint \
         LIMIT $3::bigint FOR UPDATE SKIP LOCKED) \
       RETURNING 1 \
     ), \
     m AS ( \
       DELETE FROM messages WHERE msg_id IN ( \
         SELECT msg_id FROM messages WHERE msg_time < $2::bigint \
         LIMIT $3::bigint FOR UPDATE SKIP LOCKED) \
       RETURNING 1 \
     ), \
     c AS ( \
       DELETE FROM conversations WHERE (user_id, peer) IN ( \
         SELECT user_id, peer FROM conversations WHERE last_time < $2::bigint \
         LIMIT $3::bigint FOR UPDATE SKIP LOCKED) \
       RETURNING 1 \
     ) \
     SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM m), (SELECT count(*) FROM c)";

pub(crate) const HEAD: &str = "SELECT head FROM accounts WHERE user_id = $1::text";

/// Every entry of `$1` in `($2, $3]`; message entries whose message was swept are skipped.
pub(crate) const SYNC_ALL: &str = concat!(
    "SELECT t.seq, t.ts, t.kind, t.payload, ",
    msg_cols!("m"),
    " FROM timeline t LEFT JOIN messages m ON m.msg_id = t.msg_id \
     WHERE t.user_id = $1::text AND t.seq > $2::bigint AND t.seq <= $3::bigint \
       AND (t.kind <> 0 OR m.msg_id IS NOT NULL) \
     ORDER BY t.seq LIMIT $4::bigint"
);

/// As [`SYNC_ALL`], keeping only the newest `$4` message entries per peer.
pub(crate) const SYNC_CUT: &str = concat!(
    "WITH w AS ( \
       SELECT t.seq, t.ts, t.kind, t.payload, t.msg_id, \
              row_number() OVER (PARTITION BY t.kind, t.peer ORDER BY t.seq DESC) AS rn \
       FROM timeline t \
       WHERE t.user_id = $1::text AND t.seq > $2::bigint AND t.seq <= $3::bigint \
         AND (t.kind <> 0 OR EXISTS (SELECT 1 FROM messages x WHERE x.msg_id = t.msg_id)) \
     ) \
     SELECT w.seq, w.ts, w.kind, w.payload, ",
    msg_cols!("m"),
    " FROM w LEFT JOIN messages m ON m.msg_id = w.msg_id \
     WHERE w.kind <> 0 OR w.rn <= $4::bigint \
     ORDER BY w.seq LIMIT $5::bigint"
);

/// `$1`'s messages with `$2` below entry `$3`, newest first, at most `$4`.
pub(crate) const HISTORY: &str = concat!(
    "SELECT t.seq, ",
    msg_cols!("m"),
    " FROM timeline t JOIN messages m ON m.msg_id = t.msg_id \
     WHERE t.user_id = $1::text AND t.peer = $2::text AND t.kind = 0 AND t.seq < $3::bigint \
     ORDER BY t.seq DESC LIMIT $4::bigint"
);

/// `$1`'s conversations, most recent first, `$3` from `$2`.
pub(crate) const CONVERSATIONS: &str = concat!(
    "SELECT c.peer, c.last_time, c.unread, c.read_time, c.peer_read_time, m.msg_id, ",
    msg_cols!("m"),
    " FROM conversations c LEFT JOIN messages m ON m.msg_id = c.last_msg_id \
     WHERE c.user_id = $1::text \
     ORDER BY c.last_time DESC, c.last_seq DESC LIMIT $3::bigint OFFSET $2::bigint"
);
