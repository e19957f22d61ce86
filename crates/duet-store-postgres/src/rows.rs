//! Row decoding and integer conversions (checked: corrupt data is an error,
//! never a panic).

use duet_proto::{Entry, EntryKind, Message, MsgElem, ReadReport, Recall};
use duet_store::{Account, StoreError, StoreResult};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::db;

/// Timeline entry kind: a message (`msg_id` set).
pub(crate) const KIND_MESSAGE: i16 = 0;
/// Timeline entry kind: a recall (`payload` is a [`Recall`]).
pub(crate) const KIND_RECALL: i16 = 1;
/// Timeline entry kind: a read report (`payload` is a [`ReadReport`]).
pub(crate) const KIND_READ: i16 = 2;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}"))
}

/// Column `i`, typed.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> StoreResult<T> {
    row.try_get(i).map_err(db)
}

/// A non-negative `bigint` column as `u64`.
pub(crate) fn u64_at(row: &Row, i: usize) -> StoreResult<u64> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| corrupt(format_args!("column {i} is negative ({v})")))
}

/// A nullable non-negative `bigint` column as `Option<u64>`.
pub(crate) fn opt_u64_at(row: &Row, i: usize) -> StoreResult<Option<u64>> {
    let v: Option<i64> = get(row, i)?;
    v.map(|v| u64::try_from(v).map_err(|_| corrupt(format_args!("column {i} is negative ({v})"))))
        .transpose()
}

/// A `bigint` (or `integer`) column holding a `u32`.
fn u32_at(row: &Row, i: usize) -> StoreResult<u32> {
    let v: i64 = get(row, i)?;
    u32::try_from(v).map_err(|_| corrupt(format_args!("column {i} is not a u32 ({v})")))
}

/// An `integer` column holding a `u32`.
pub(crate) fn u32_at_int(row: &Row, i: usize) -> StoreResult<u32> {
    let v: i32 = get(row, i)?;
    u32::try_from(v).map_err(|_| corrupt(format_args!("column {i} is negative ({v})")))
}

/// A `u64` about to be stored: it must fit in a `bigint`.
pub(crate) fn sql_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

/// A `u64` used as a bound in a query (saturating at `i64::MAX`).
pub(crate) fn bound_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| corrupt(format_args!("bad {what} JSON: {e}")))
}

/// The message whose `msg_cols!` start at column `i`.
pub(crate) fn message_at(row: &Row, i: usize) -> StoreResult<Message> {
    let msg_seq = u32_at(row, i + 2)?;
    let msg_random = u32_at(row, i + 3)?;
    let msg_time = u64_at(row, i + 4)?;
    let body: Vec<MsgElem> = json(get::<&str>(row, i + 6)?, "message body")?;
    Ok(Message {
        from: get(row, i)?,
        to: get(row, i + 1)?,
        msg_seq,
        msg_random,
        msg_time,
        msg_key: duet_proto::MsgKey::text(msg_seq, msg_random, msg_time),
        flag_bits: u32_at(row, i + 5)?,
        body,
        cloud_custom_data: get(row, i + 7)?,
        nick: get(row, i + 8)?,
        face_url: get(row, i + 9)?,
        online_only: false,
    })
}

/// A timeline entry from `seq, ts, kind, payload, msg_cols!`.
pub(crate) fn entry_at(row: &Row) -> StoreResult<Entry> {
    let kind = match get::<i16>(row, 2)? {
        KIND_MESSAGE => EntryKind::Message {
            message: message_at(row, 4)?,
        },
        KIND_RECALL => {
            let payload: &str = get(row, 3)?;
            EntryKind::Recall(json::<Recall>(payload, "recall")?)
        }
        KIND_READ => {
            let payload: &str = get(row, 3)?;
            EntryKind::Read(json::<ReadReport>(payload, "read report")?)
        }
        other => return Err(corrupt(format_args!("unknown timeline entry kind {other}"))),
    };
    Ok(Entry {
        seq: u64_at(row, 0)?,
        ts: u64_at(row, 1)?,
        kind,
    })
}

/// An account from `user_id, nick, face_url, created_ms`.
pub(crate) fn account_at(row: &Row) -> StoreResult<Account> {
    Ok(Account {
        user_id: get(row, 0)?,
        nick: get(row, 1)?,
        face_url: get(row, 2)?,
        created_ms: u64_at(row, 3)?,
    })
}
