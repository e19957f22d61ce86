//! Messages, timeline entries and conversations as they travel on the wire.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::elem::MsgElem;
use crate::tagged::{self, Buf, BufSeed, Rest, Tagged};

/// `MsgFlagBits` value of a normal message.
pub const FLAG_NORMAL: u32 = 0;
/// `MsgFlagBits` value of a recalled message.
pub const FLAG_RECALLED: u32 = 8;

/// A C2C message, with the field names of the REST history (`admin_getroammsg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    #[serde(rename = "From_Account")]
    pub from: String,
    /// Recipient.
    #[serde(rename = "To_Account")]
    pub to: String,
    /// Sender-chosen (or server-generated) sequence, u32.
    #[serde(rename = "MsgSeq")]
    pub msg_seq: u32,
    /// Sender-chosen (or server-generated) random, u32.
    #[serde(rename = "MsgRandom")]
    pub msg_random: u32,
    /// Server time of the send, Unix seconds.
    #[serde(rename = "MsgTimeStamp")]
    pub msg_time: u64,
    /// `"<MsgSeq>_<MsgRandom>_<MsgTime>"`.
    #[serde(rename = "MsgKey")]
    pub msg_key: String,
    /// 0 normal, 8 recalled.
    #[serde(rename = "MsgFlagBits", default)]
    pub flag_bits: u32,
    /// The elements.
    #[serde(rename = "MsgBody")]
    pub body: Vec<MsgElem>,
    /// Opaque per-message string.
    #[serde(rename = "CloudCustomData", default)]
    pub cloud_custom_data: String,
    /// Sender's nickname when sent.
    #[serde(rename = "Nick", default)]
    pub nick: String,
    /// Sender's face URL when sent.
    #[serde(rename = "FaceUrl", default)]
    pub face_url: String,
    /// Sent online-only (never stored, never pushed).
    #[serde(rename = "OnlineOnlyFlag", default, skip_serializing_if = "is_false")]
    pub online_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Message {
    /// The other party, seen from `user`.
    pub fn peer_of(&self, user: &str) -> &str {
        if self.from == user {
            &self.to
        } else {
            &self.from
        }
    }

    /// Whether the message is recalled.
    pub fn is_recalled(&self) -> bool {
        self.flag_bits & FLAG_RECALLED != 0
    }
}

/// A parsed `MsgKey`: `"<MsgSeq>_<MsgRandom>_<MsgTime>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgKey {
    /// `MsgSeq`.
    pub seq: u32,
    /// `MsgRandom`.
    pub random: u32,
    /// `MsgTime`, Unix seconds.
    pub time: u64,
}

impl MsgKey {
    /// The `MsgKey` text of these parts (what `Display` writes, without the
    /// formatting machinery: it is made for every message).
    pub fn text(seq: u32, random: u32, time: u64) -> String {
        let mut b = itoa::Buffer::new();
        let mut out = String::with_capacity(32);
        out.push_str(b.format(seq));
        out.push('_');
        out.push_str(b.format(random));
        out.push('_');
        out.push_str(b.format(time));
        out
    }
}

impl fmt::Display for MsgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}_{}", self.seq, self.random, self.time)
    }
}

/// A `MsgKey` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad MsgKey {0:?}: expected <MsgSeq>_<MsgRandom>_<MsgTime>")]
pub struct BadMsgKey(pub String);

impl FromStr for MsgKey {
    type Err = BadMsgKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMsgKey(s.chars().take(64).collect());
        let mut it = s.split('_');
        let (Some(a), Some(b), Some(c), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        Ok(MsgKey {
            seq: a.parse().map_err(|_| bad())?,
            random: b.parse().map_err(|_| bad())?,
            time: c.parse().map_err(|_| bad())?,
        })
    }
}

/// A recall notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recall {
    /// Key of the recalled message.
    #[serde(rename = "MsgKey")]
    pub msg_key: String,
    /// Its sender.
    #[serde(rename = "From_Account")]
    pub from: String,
    /// Its recipient.
    #[serde(rename = "To_Account")]
    pub to: String,
}

/// A conversation read report: `reader` has read everything `peer` sent up to `read_time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReport {
    /// Who read.
    pub reader: String,
    /// Whose messages were read.
    pub peer: String,
    /// Everything at or before this time (Unix seconds) is read.
    pub read_time: u64,
}

/// What a timeline entry says.
///
/// `Deserialize` is written out (see `tagged`): serde's derive for internally
/// tagged enums buffers the whole object first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    /// A message this user received or sent.
    Message {
        /// The message (current status).
        message: Message,
    },
    /// A message of this conversation was recalled.
    Recall(Recall),
    /// A read report: this user read a conversation (on another device),
    /// or the peer read this user's messages.
    Read(ReadReport),
}

/// The `kind` values of [`EntryKind`].
#[derive(Deserialize)]
#[serde(variant_identifier, rename_all = "snake_case")]
pub(crate) enum EntryKindTag {
    Message,
    Recall,
    Read,
}

impl Tagged for EntryKind {
    const TAG: &'static str = "kind";
    const EXPECTING: &'static str = "internally tagged enum EntryKind";
    const CHECKS_SECOND_TAG: bool = false;
    type Tag = EntryKindTag;

    fn from_rest<'de, D: Deserializer<'de>>(tag: EntryKindTag, rest: D) -> Result<Self, D::Error> {
        match tag {
            EntryKindTag::Message => {
                #[derive(Deserialize)]
                struct Fields {
                    message: Message,
                }
                Fields::deserialize(rest).map(|f| EntryKind::Message { message: f.message })
            }
            EntryKindTag::Recall => Recall::deserialize(rest).map(EntryKind::Recall),
            EntryKindTag::Read => ReadReport::deserialize(rest).map(EntryKind::Read),
        }
    }
}

impl<'de> Deserialize<'de> for EntryKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        tagged::deserialize_tagged(deserializer)
    }
}

/// One entry of a user's timeline. Numbers run 1, 2, 3 ... with no gaps.
///
/// On the wire `kind` and its fields sit beside `seq` and `ts`
/// (`#[serde(flatten)]`); `Deserialize` is written out to read that in one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Entry number in the user's timeline.
    pub seq: u64,
    /// Server time the entry was written, Unix milliseconds.
    pub ts: u64,
    /// The content.
    #[serde(flatten)]
    pub kind: EntryKind,
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As serde's derive with a flattened field: a map (not a sequence).
        deserializer.deserialize_map(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct Entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        // `seq` and `ts` are read wherever they are; keys of the kind that
        // come before `kind` are buffered, the rest is read by the variant.
        let mut fields = [("seq", None), ("ts", None)];
        let mut prefix: Vec<(Buf<'de>, Buf<'de>)> = Vec::new();
        let kind = loop {
            let Some(key) = map.next_key_seed(BufSeed)? else {
                return Err(de::Error::missing_field(EntryKind::TAG));
            };
            if key.is_str(EntryKind::TAG) {
                // serde's `flatten` buffered the tag too, and read it back
                // from the buffer, which also takes a variant index: `"kind": 0`
                // is a message. Keep accepting that.
                let tag: EntryKindTag = tagged::from_buf(map.next_value_seed(BufSeed)?)?;
                break EntryKind::from_rest(
                    tag,
                    Rest::new(prefix, map, Some(EntryKind::TAG), &mut fields),
                )?;
            }
            match fields.iter_mut().find(|(name, _)| key.is_str(name)) {
                Some((name, slot)) => {
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value()?);
                }
                None => {
                    let value = map.next_value_seed(BufSeed)?;
                    prefix.push((key, value));
                }
            }
        };
        let [(_, seq), (_, ts)] = fields;
        Ok(Entry {
            seq: seq.ok_or_else(|| de::Error::missing_field("seq"))?,
            ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
            kind,
        })
    }
}

/// A message as it appears in a history page, with its timeline entry number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// Entry number in the reader's timeline (page with `before`).
    pub seq: u64,
    /// The message.
    pub message: Message,
}

/// One conversation in a user's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The other user.
    pub peer: String,
    /// The last message, if it is still kept.
    pub last_message: Option<Message>,
    /// Time of the last message, Unix seconds.
    pub last_time: u64,
    /// Unread messages from the peer (capped at 250).
    pub unread: u32,
    /// This user has read up to this time, Unix seconds.
    pub read_time: u64,
    /// The peer has read this user's messages up to this time, Unix seconds.
    pub peer_read_time: u64,
}
