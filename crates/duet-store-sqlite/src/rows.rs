//! Row decoding shared by the read and write paths.

use duet_proto::{Entry, EntryKind, Message, MsgElem, ReadReport, Recall};
use duet_store::Account;
use rusqlite::Row;
use rusqlite::types::Type;

/// Timeline entry kind of a message in schemas before 5 (`msg_id` set):
/// message entries are chunks since.
pub(crate) const KIND_MESSAGE: i64 = 0;
/// Timeline entry kind: a recall (`payload` is a [`Recall`]).
pub(crate) const KIND_RECALL: i64 = 1;
/// Timeline entry kind: a read report (`payload` is a [`ReadReport`]).
pub(crate) const KIND_READ: i64 = 2;

/// Message entry flag: a received message that counts as unread.
pub(crate) const ENTRY_UNREAD: u8 = 1;
/// Message entry flag: sent with no-last-msg (not its view's last message).
pub(crate) const ENTRY_NO_LAST: u8 = 2;

/// The message columns read by [`message_at`], from table alias `m`.
macro_rules! msg_cols {
    () => {
        "m.sender, m.receiver, m.msg_seq, m.msg_random, m.msg_time, m.flags, \
         m.body, m.cloud_custom_data, m.nick, m.face_url"
    };
}
pub(crate) use msg_cols;

/// A row that does not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CorruptRow {
    /// Unknown (or message) `timeline.kind`.
    #[error("unknown timeline entry kind {0}")]
    UnknownKind(i64),
    /// A JSON column does not parse.
    #[error("bad JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn corrupt(column: usize, ty: Type, e: impl Into<CorruptRow>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, ty, Box::new(e.into()))
}

/// A non-negative integer column as `u64`.
pub(crate) fn u64_at(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Integer, Box::new(e)))
}

/// A `u64` as an SQL integer (saturating at `i64::MAX`).
pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

macro_rules! json_at {
    ($row:expr, $i:expr) => {{
        let i = $i;
        let text = $row
            .get_ref(i)?
            .as_str()
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))?;
        serde_json::from_str(text).map_err(|e| corrupt(i, Type::Text, e))?
    }};
}

/// The message whose [`msg_cols!`] start at column `i`.
pub(crate) fn message_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Message> {
    let msg_seq: u32 = row.get(i + 2)?;
    let msg_random: u32 = row.get(i + 3)?;
    let msg_time = u64_at(row, i + 4)?;
    let body: Vec<MsgElem> = json_at!(row, i + 6);
    Ok(Message {
        from: row.get(i)?,
        to: row.get(i + 1)?,
        msg_seq,
        msg_random,
        msg_time,
        msg_key: duet_proto::MsgKey::text(msg_seq, msg_random, msg_time),
        flag_bits: row.get(i + 5)?,
        body,
        cloud_custom_data: row.get(i + 7)?,
        nick: row.get(i + 8)?,
        face_url: row.get(i + 9)?,
        online_only: false,
    })
}

/// A recall or read report entry from `seq, ts, kind, payload`.
pub(crate) fn event_at(row: &Row<'_>) -> rusqlite::Result<Entry> {
    let kind = match row.get::<_, i64>(2)? {
        KIND_RECALL => {
            let recall: Recall = json_at!(row, 3);
            EntryKind::Recall(recall)
        }
        KIND_READ => {
            let read: ReadReport = json_at!(row, 3);
            EntryKind::Read(read)
        }
        other => return Err(corrupt(2, Type::Integer, CorruptRow::UnknownKind(other))),
    };
    Ok(Entry {
        seq: u64_at(row, 0)?,
        ts: u64_at(row, 1)?,
        kind,
    })
}

/// An account from `user_id, nick, face_url, created_ms`.
pub(crate) fn account_at(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user_id: row.get(0)?,
        nick: row.get(1)?,
        face_url: row.get(2)?,
        created_ms: u64_at(row, 3)?,
    })
}
