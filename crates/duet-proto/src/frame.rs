//! Client protocol frames: JSON text frames over WebSocket, tagged by `type`.
//!
//! The frame enums are defined through `internally_tagged!`: `Serialize` is
//! serde's derive with `#[serde(tag = "type", rename_all = "snake_case")]`, and
//! `Deserialize` reads a frame in one pass instead of buffering it (see `tagged`).

use crate::codes;
use crate::elem::MsgElem;
use crate::model::{Conversation, Entry, HistoryItem, Message};
use crate::tagged::internally_tagged;

internally_tagged! {
    tag = "type", tags = ClientFrameType;
    /// A frame from a client to the server. Every request carries a `req_id`
    /// chosen by the client; the answer (or an `error` frame) carries it back.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ClientFrame {
        /// First frame of a connection.
        Login {
            req_id: u64,
            user_id: String,
            user_sig: String,
            device_id: String,
            #[serde(default)]
            platform: String,
            #[serde(default)]
            protocol_version: u32,
        },
        /// Heartbeat.
        Ping { req_id: u64 },
        /// Send a C2C message.
        Send {
            req_id: u64,
            #[serde(rename = "To_Account")]
            to: String,
            #[serde(rename = "MsgBody")]
            body: Vec<MsgElem>,
            #[serde(rename = "MsgRandom", default)]
            msg_random: Option<u32>,
            #[serde(rename = "MsgSeq", default)]
            msg_seq: Option<u32>,
            #[serde(rename = "CloudCustomData", default)]
            cloud_custom_data: String,
            /// Deliver to online devices only: never stored, never pushed.
            #[serde(default)]
            online_only: bool,
            /// Do not count as unread for the recipient.
            #[serde(default)]
            no_unread: bool,
            /// Do not update the conversation list.
            #[serde(default)]
            no_last_msg: bool,
        },
        /// Ask for timeline entries after `after`.
        Sync { req_id: u64, after: u64 },
        /// A page of history with `peer`, newest first, entries before `before`.
        History {
            req_id: u64,
            peer: String,
            #[serde(default)]
            before: Option<u64>,
            #[serde(default = "default_count")]
            count: u32,
        },
        /// A page of the conversation list, most recent first.
        Conversations {
            req_id: u64,
            #[serde(default)]
            cursor: u32,
            #[serde(default = "default_conv_count")]
            count: u32,
        },
        /// Mark everything from `peer` read.
        MarkRead { req_id: u64, peer: String },
        /// Recall one's own message.
        Recall {
            req_id: u64,
            #[serde(rename = "MsgKey")]
            msg_key: String,
        },
        /// Set one's nickname and face URL (carried in later messages).
        SetProfile {
            req_id: u64,
            #[serde(default)]
            nick: Option<String>,
            #[serde(default)]
            face_url: Option<String>,
        },
        /// Close the session; no more pushes to this device.
        Logout { req_id: u64 },
    }
}

fn default_count() -> u32 {
    20
}
fn default_conv_count() -> u32 {
    100
}

impl ClientFrame {
    /// The request id.
    pub fn req_id(&self) -> u64 {
        match self {
            ClientFrame::Login { req_id, .. }
            | ClientFrame::Ping { req_id }
            | ClientFrame::Send { req_id, .. }
            | ClientFrame::Sync { req_id, .. }
            | ClientFrame::History { req_id, .. }
            | ClientFrame::Conversations { req_id, .. }
            | ClientFrame::MarkRead { req_id, .. }
            | ClientFrame::Recall { req_id, .. }
            | ClientFrame::SetProfile { req_id, .. }
            | ClientFrame::Logout { req_id } => *req_id,
        }
    }
}

internally_tagged! {
    tag = "type", tags = ServerFrameType;
    /// A frame from the server to a client.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ServerFrame {
        /// Login accepted.
        LoginOk {
            req_id: u64,
            user_id: String,
            /// The store epoch; a client holding a cursor from another epoch resyncs from 0.
            epoch: String,
            /// The user's newest timeline entry number.
            head: u64,
            /// Server time, Unix milliseconds.
            server_time: u64,
            protocol_version: u32,
            /// Idle timeout in seconds: send something (e.g. `ping`) more often.
            heartbeat_timeout: u64,
        },
        /// Heartbeat answer, with the user's newest timeline entry number: a
        /// device whose cursor is behind it syncs (this heals lost live hints).
        Pong {
            req_id: u64,
            server_time: u64,
            #[serde(default)]
            head: u64,
        },
        /// A send was committed (or was a retry of one already committed).
        SendAck {
            req_id: u64,
            #[serde(rename = "MsgKey")]
            msg_key: String,
            #[serde(rename = "MsgTime")]
            msg_time: u64,
            #[serde(rename = "MsgSeq")]
            msg_seq: u32,
            #[serde(rename = "MsgRandom")]
            msg_random: u32,
            /// The sender's timeline entry for this message (absent when online-only).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            entry: Option<u64>,
            /// This was a retry; the original result is returned.
            #[serde(default)]
            duplicate: bool,
        },
        /// Part of a sync answer, entries in increasing order.
        SyncBatch { req_id: u64, entries: Vec<Entry> },
        /// The sync answer is complete; the device's cursor is now `cursor`.
        SyncFinished {
            req_id: u64,
            cursor: u64,
            epoch: String,
        },
        /// A history page, newest first.
        HistoryPage {
            req_id: u64,
            peer: String,
            messages: Vec<HistoryItem>,
            /// No older messages remain.
            complete: bool,
        },
        /// A page of conversations.
        ConversationPage {
            req_id: u64,
            conversations: Vec<Conversation>,
            next_cursor: u32,
            complete: bool,
        },
        /// A request without other data succeeded.
        Ok { req_id: u64 },
        /// A new timeline entry (live delivery hint carrying the entry).
        Entry { entry: Entry },
        /// An online-only message (not in the timeline).
        OnlineMessage { message: Message },
        /// This device was logged out by a newer login; the connection closes.
        KickedOffline { code: u32, reason: String },
        /// A request failed, or the frame could not be understood.
        Error {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            req_id: Option<u64>,
            code: u32,
            info: String,
        },
    }
}

impl ServerFrame {
    /// The request id this frame answers, if it answers one.
    pub fn req_id(&self) -> Option<u64> {
        match self {
            ServerFrame::LoginOk { req_id, .. }
            | ServerFrame::Pong { req_id, .. }
            | ServerFrame::SendAck { req_id, .. }
            | ServerFrame::SyncBatch { req_id, .. }
            | ServerFrame::SyncFinished { req_id, .. }
            | ServerFrame::HistoryPage { req_id, .. }
            | ServerFrame::ConversationPage { req_id, .. }
            | ServerFrame::Ok { req_id } => Some(*req_id),
            ServerFrame::Error { req_id, .. } => *req_id,
            ServerFrame::Entry { .. }
            | ServerFrame::OnlineMessage { .. }
            | ServerFrame::KickedOffline { .. } => None,
        }
    }
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, or not an object with a string `type`.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A `type` this server does not know.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A known type with missing or wrongly typed fields.
    #[error("bad {kind} frame: {reason}")]
    BadField {
        /// The frame type.
        kind: String,
        /// What is wrong.
        reason: String,
        /// The request id, if it could be read.
        req_id: Option<u64>,
    },
}

impl FrameError {
    /// The error code sent back.
    pub fn code(&self) -> u32 {
        match self {
            FrameError::Malformed(_) | FrameError::BadField { .. } => codes::BAD_JSON,
            FrameError::UnknownType(_) => codes::UNKNOWN_COMMAND,
        }
    }

    /// The request id, if the frame carried one.
    pub fn req_id(&self) -> Option<u64> {
        match self {
            FrameError::BadField { req_id, .. } => *req_id,
            _ => None,
        }
    }
}

const KNOWN_TYPES: &[&str] = &[
    "login",
    "ping",
    "send",
    "sync",
    "history",
    "conversations",
    "mark_read",
    "recall",
    "set_profile",
    "logout",
];

/// Parses a client frame, telling malformed JSON, unknown types and bad fields apart.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(f) => Ok(f),
        Err(err) => {
            // Slow path, only for bad frames: find out what is wrong.
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
            let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
                return Err(FrameError::Malformed(
                    "expected a JSON object with a string \"type\"".into(),
                ));
            };
            if !KNOWN_TYPES.contains(&kind) {
                return Err(FrameError::UnknownType(kind.chars().take(64).collect()));
            }
            Err(FrameError::BadField {
                kind: kind.to_string(),
                reason: err.to_string(),
                req_id: value.get("req_id").and_then(|r| r.as_u64()),
            })
        }
    }
}

/// The text of the `entry` frame of a message entry, written from a borrowed
/// message: exactly what serializing `ServerFrame::Entry` with an
/// `EntryKind::Message` gives (a test checks it), without copying the
/// message into an [`Entry`] first. Written by hand: keys are literals, the
/// body's content is copied as it is, and the buffer is sized once (serde
/// escaped every key and grew the buffer twice: a twelfth of the server's
/// instructions per message).
pub fn message_entry_frame(seq: u64, ts: u64, message: &Message) -> String {
    let content: usize = message
        .body
        .iter()
        .map(|e| e.msg_type.len() + e.msg_content.get().len() + 32)
        .sum();
    let mut out = String::with_capacity(
        256 + content
            + message.from.len()
            + message.to.len()
            + message.cloud_custom_data.len()
            + message.nick.len()
            + message.face_url.len(),
    );
    out.push_str(r#"{"type":"entry","entry":{"seq":"#);
    json::u64(&mut out, seq);
    out.push_str(r#","ts":"#);
    json::u64(&mut out, ts);
    out.push_str(r#","kind":"message","message":"#);
    json::message(&mut out, message);
    out.push_str("}}");
    out
}

/// The text of any server frame: the per-message `send_ack` written by hand
/// ([`send_ack_frame`]), every other frame by serde.
pub fn server_frame_text(frame: &ServerFrame) -> serde_json::Result<String> {
    match frame {
        ServerFrame::SendAck {
            req_id,
            msg_key,
            msg_time,
            msg_seq,
            msg_random,
            entry,
            duplicate,
        } => Ok(send_ack_frame(
            *req_id,
            msg_key,
            *msg_time,
            *msg_seq,
            *msg_random,
            *entry,
            *duplicate,
        )),
        _ => serde_json::to_string(frame),
    }
}

/// The text of a `send_ack` frame: exactly what serializing
/// `ServerFrame::SendAck` gives (a test checks it).
pub fn send_ack_frame(
    req_id: u64,
    msg_key: &str,
    msg_time: u64,
    msg_seq: u32,
    msg_random: u32,
    entry: Option<u64>,
    duplicate: bool,
) -> String {
    let mut out = String::with_capacity(160 + msg_key.len());
    out.push_str(r#"{"type":"send_ack","req_id":"#);
    json::u64(&mut out, req_id);
    out.push_str(r#","MsgKey":"#);
    json::str(&mut out, msg_key);
    out.push_str(r#","MsgTime":"#);
    json::u64(&mut out, msg_time);
    out.push_str(r#","MsgSeq":"#);
    json::u64(&mut out, u64::from(msg_seq));
    out.push_str(r#","MsgRandom":"#);
    json::u64(&mut out, u64::from(msg_random));
    if let Some(entry) = entry {
        out.push_str(r#","entry":"#);
        json::u64(&mut out, entry);
    }
    out.push_str(if duplicate {
        r#","duplicate":true}"#
    } else {
        r#","duplicate":false}"#
    });
    out
}

/// The JSON writing of the hand-built frames, byte for byte serde_json's.
mod json {
    use crate::model::Message;

    /// A number as serde_json writes it.
    pub(super) fn u64(out: &mut String, v: u64) {
        out.push_str(itoa::Buffer::new().format(v));
    }

    /// A string as serde_json writes it: quoted, with `"`, `\` and control
    /// characters escaped (nothing else).
    pub(super) fn str(out: &mut String, s: &str) {
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            out.push('"');
            out.push_str(s);
            out.push('"');
        } else {
            // Serializing a string cannot fail.
            out.push_str(&serde_json::to_string(s).unwrap_or_default());
        }
    }

    /// A message as its derived `Serialize` writes it.
    pub(super) fn message(out: &mut String, m: &Message) {
        out.push_str(r#"{"From_Account":"#);
        str(out, &m.from);
        out.push_str(r#","To_Account":"#);
        str(out, &m.to);
        out.push_str(r#","MsgSeq":"#);
        u64(out, u64::from(m.msg_seq));
        out.push_str(r#","MsgRandom":"#);
        u64(out, u64::from(m.msg_random));
        out.push_str(r#","MsgTimeStamp":"#);
        u64(out, m.msg_time);
        out.push_str(r#","MsgKey":"#);
        str(out, &m.msg_key);
        out.push_str(r#","MsgFlagBits":"#);
        u64(out, u64::from(m.flag_bits));
        out.push_str(r#","MsgBody":["#);
        for (i, e) in m.body.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"MsgType":"#);
            str(out, &e.msg_type);
            out.push_str(r#","MsgContent":"#);
            out.push_str(e.msg_content.get());
            out.push('}');
        }
        out.push_str(r#"],"CloudCustomData":"#);
        str(out, &m.cloud_custom_data);
        out.push_str(r#","Nick":"#);
        str(out, &m.nick);
        out.push_str(r#","FaceUrl":"#);
        str(out, &m.face_url);
        if m.online_only {
            out.push_str(r#","OnlineOnlyFlag":true"#);
        }
        out.push('}');
    }
}
