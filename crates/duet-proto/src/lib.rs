//! Wire types shared by the Duet server, SDK, store and tools.
//!
//! A message looks the same everywhere: the `MsgBody` elements are exactly the
//! Tencent REST `MsgBody` JSON (`{"MsgType": "TIMTextElem", "MsgContent": {...}}`)
//! and a [`Message`] uses the field names of the REST history (`From_Account`,
//! `MsgKey`, ...). The client protocol frames ([`ClientFrame`], [`ServerFrame`])
//! are specified in `docs/protocol.md`.

pub mod codes;
pub mod elem;
pub mod frame;
pub mod limits;
pub mod model;
mod tagged;

pub use elem::{BodyError, MsgElem, validate_body};
pub use frame::{
    ClientFrame, FrameError, ServerFrame, message_entry_frame, parse_client_frame, send_ack_frame,
    server_frame_text,
};
pub use model::{Conversation, Entry, EntryKind, HistoryItem, Message, MsgKey, ReadReport, Recall};

/// Version of the client wire protocol described in `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Checks a UserID: 1..=32 bytes of printable ASCII (0x20..=0x7e).
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::MAX_USER_ID_BYTES
        && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;
