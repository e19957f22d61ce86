//! Differential tests: the hand-written `Deserialize` impls of the tagged wire
//! types against verbatim copies of the serde-derived definitions they replace
//! (`mod old`). Every input must be accepted or refused alike, and accepted
//! input must give the same value.

#![allow(dead_code)]

mod old {
    //! The derived definitions as they were (internally tagged, `flatten`).
    use serde::{Deserialize, Serialize};

    use crate::frame::FrameError;
    use crate::model::{ReadReport, Recall};

    /// `MsgElem` as it was (content as a `Value` tree; serde's `Content`
    /// buffering cannot hold a `RawValue`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct MsgElem {
        #[serde(rename = "MsgType")]
        pub msg_type: String,
        #[serde(rename = "MsgContent")]
        pub msg_content: serde_json::Value,
    }

    fn is_false(b: &bool) -> bool {
        !*b
    }

    /// `Message` as it was, with the old `MsgElem`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Message {
        #[serde(rename = "From_Account")]
        pub from: String,
        #[serde(rename = "To_Account")]
        pub to: String,
        #[serde(rename = "MsgSeq")]
        pub msg_seq: u32,
        #[serde(rename = "MsgRandom")]
        pub msg_random: u32,
        #[serde(rename = "MsgTimeStamp")]
        pub msg_time: u64,
        #[serde(rename = "MsgKey")]
        pub msg_key: String,
        #[serde(rename = "MsgFlagBits", default)]
        pub flag_bits: u32,
        #[serde(rename = "MsgBody")]
        pub body: Vec<MsgElem>,
        #[serde(rename = "CloudCustomData", default)]
        pub cloud_custom_data: String,
        #[serde(rename = "Nick", default)]
        pub nick: String,
        #[serde(rename = "FaceUrl", default)]
        pub face_url: String,
        #[serde(rename = "OnlineOnlyFlag", default, skip_serializing_if = "is_false")]
        pub online_only: bool,
    }

    /// `HistoryItem` as it was.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct HistoryItem {
        pub seq: u64,
        pub message: Message,
    }

    /// `Conversation` as it was.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Conversation {
        pub peer: String,
        pub last_message: Option<Message>,
        pub last_time: u64,
        pub unread: u32,
        pub read_time: u64,
        pub peer_read_time: u64,
    }

    fn default_count() -> u32 {
        20
    }
    fn default_conv_count() -> u32 {
        100
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
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

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
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

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Entry {
        /// Entry number in the user's timeline.
        pub seq: u64,
        /// Server time the entry was written, Unix milliseconds.
        pub ts: u64,
        /// The content.
        #[serde(flatten)]
        pub kind: EntryKind,
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
    pub fn parse_client_frame_old(text: &str) -> Result<ClientFrame, FrameError> {
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
}

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::frame::{ClientFrame, FrameError, ServerFrame, parse_client_frame};
use crate::model::{Entry, EntryKind};
use crate::tests::{all_client_frames, all_server_frames, pairs_text, text_pairs};

/// `text` must parse alike with the new type `N` and the old one `O`, from a
/// string, from a `Value` and from a borrowed `&Value`. Returns whether it parsed.
fn same<N, O>(text: &str) -> bool
where
    N: DeserializeOwned + Serialize + Debug,
    O: DeserializeOwned + Serialize + Debug,
{
    fn agree<N: Serialize + Debug, O: Serialize + Debug, E1: Debug, E2: Debug>(
        how: &str,
        text: &str,
        new: Result<N, E1>,
        old: Result<O, E2>,
    ) -> bool {
        match (new, old) {
            (Ok(n), Ok(o)) => {
                let (n, o) = (
                    serde_json::to_string(&n).unwrap(),
                    serde_json::to_string(&o).unwrap(),
                );
                assert_eq!(n, o, "{how} {text}");
                true
            }
            (Err(_), Err(_)) => false,
            (n, o) => panic!("{how} {text}:\n  new: {n:?}\n  old: {o:?}"),
        }
    }
    let parsed = agree(
        "from_str",
        text,
        serde_json::from_str::<N>(text),
        serde_json::from_str::<O>(text),
    );
    // A reader hands out no borrowed strings.
    agree(
        "from_reader",
        text,
        serde_json::from_reader::<_, N>(text.as_bytes()),
        serde_json::from_reader::<_, O>(text.as_bytes()),
    );
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        agree("&Value", text, N::deserialize(&v), O::deserialize(&v));
        agree(
            "from_value",
            text,
            serde_json::from_value::<N>(v.clone()),
            serde_json::from_value::<O>(v),
        );
    }
    parsed
}

/// Variations of an object: members moved, dropped, doubled, retyped, added.
fn variations(text: &str) -> Vec<String> {
    let pairs = text_pairs(text);
    let replacements: Vec<Value> = [
        "null",
        "true",
        "0",
        "-1",
        "1",
        "2",
        "3",
        "1.5",
        "4294967296",
        "18446744073709551616",
        "\"s\"",
        "\"\"",
        "\"login\"",
        "\"message\"",
        "[]",
        "{}",
        "[1]",
        r#"{"a":1}"#,
    ]
    .iter()
    .map(|t| serde_json::from_str(t).unwrap())
    .collect();
    let mut out = vec![pairs_text(&pairs)];
    let mut reversed = pairs.clone();
    reversed.reverse();
    out.push(pairs_text(&reversed));
    for i in 0..pairs.len() {
        // Member i moved to every position.
        for j in 0..pairs.len() {
            let mut p = pairs.clone();
            let m = p.remove(i);
            p.insert(j, m);
            out.push(pairs_text(&p));
        }
        // Dropped.
        let mut p = pairs.clone();
        p.remove(i);
        out.push(pairs_text(&p));
        // Doubled, next to it and at the end, same value and another.
        let mut p = pairs.clone();
        p.insert(i, pairs[i].clone());
        out.push(pairs_text(&p));
        let mut p = pairs.clone();
        p.push((pairs[i].0.clone(), Value::Null));
        out.push(pairs_text(&p));
        // The key written with an escape (read as a copied, not borrowed, str).
        let mut p = pairs.clone();
        let marker = format!("@@{i}@@");
        p[i].0 = marker.clone();
        let first = pairs[i].0.chars().next().map_or(0, u32::from);
        let rest: String = pairs[i].0.chars().skip(1).collect();
        out.push(pairs_text(&p).replace(
            &format!("\"{marker}\""),
            &format!("\"\\u{first:04x}{rest}\""),
        ));
        // Renamed (unknown).
        let mut p = pairs.clone();
        p[i].0 = p[i].0.to_uppercase() + "_";
        out.push(pairs_text(&p));
        // Retyped.
        for r in &replacements {
            let mut p = pairs.clone();
            p[i].1 = r.clone();
            out.push(pairs_text(&p));
        }
    }
    // Unknown members at the start and at the end.
    let unknown = (
        "zz".to_string(),
        serde_json::json!({"type": "ping", "kind": "read", "n": [1, {"x": null}]}),
    );
    let mut p = pairs.clone();
    p.insert(0, unknown.clone());
    out.push(pairs_text(&p));
    let mut p = pairs.clone();
    p.push(unknown);
    out.push(pairs_text(&p));
    out.push("{}".into());
    out
}

/// The sequence forms `[tag, field, ...]` serde also accepts for internally
/// tagged enums, and a few broken ones.
fn seq_forms(text: &str, tag: &str) -> Vec<String> {
    let pairs = text_pairs(text);
    let Some((_, tag_value)) = pairs.iter().find(|(k, _)| k == tag) else {
        return vec![];
    };
    let mut items = vec![tag_value.clone()];
    items.extend(
        pairs
            .iter()
            .filter(|(k, _)| k != tag)
            .map(|(_, v)| v.clone()),
    );
    let mut out = vec![];
    for n in 0..=items.len() {
        out.push(Value::Array(items[..n].to_vec()).to_string());
    }
    let mut more = items.clone();
    more.push(Value::Null);
    out.push(Value::Array(more).to_string());
    out
}

/// Replaces the member `key` of the object `text` by each of `values`.
fn with_member(text: &str, key: &str, values: &[String]) -> Vec<String> {
    let pairs = text_pairs(text);
    values
        .iter()
        .filter_map(|v| {
            let v: Value = serde_json::from_str(v).ok()?;
            let mut p = pairs.clone();
            let i = p.iter().position(|(k, _)| k == key)?;
            p[i].1 = v;
            Some(pairs_text(&p))
        })
        .collect()
}

fn classify<F: Serialize>(r: Result<F, FrameError>) -> String {
    match r {
        Ok(f) => serde_json::to_string(&f).unwrap(),
        Err(FrameError::Malformed(_)) => "Malformed".into(),
        Err(FrameError::UnknownType(t)) => format!("UnknownType({t})"),
        Err(FrameError::BadField { kind, req_id, .. }) => format!("BadField({kind}, {req_id:?})"),
    }
}

#[test]
fn client_frames_parse_as_before() {
    let (mut ok, mut total) = (0, 0);
    for f in all_client_frames() {
        let text = serde_json::to_string(&f).unwrap();
        let mut inputs = variations(&text);
        inputs.extend(seq_forms(&text, "type"));
        inputs.extend(with_member(
            &text,
            "type",
            &["\"PING\"", "\"dance\"", "0", "1", "null", "\"send_ack\""].map(String::from),
        ));
        if text.contains("MsgBody") {
            let body = text_pairs(&text)
                .into_iter()
                .find(|(k, _)| k == "MsgBody")
                .map(|(_, v)| v[0].to_string())
                .unwrap();
            let elems: Vec<String> = variations(&body)
                .into_iter()
                .map(|e| format!("[{e}]"))
                .collect();
            inputs.extend(with_member(&text, "MsgBody", &elems));
        }
        assert!(inputs.iter().any(|i| i.starts_with(r#"{"\u0074ype":"#)));
        for input in &inputs {
            total += 1;
            if same::<ClientFrame, old::ClientFrame>(input) {
                ok += 1;
            }
            assert_eq!(
                classify(parse_client_frame(input)),
                classify(old::parse_client_frame_old(input)),
                "{input}"
            );
        }
    }
    for input in [
        "",
        "{",
        "null",
        "1",
        "\"ping\"",
        "[]",
        "[1]",
        "{}",
        "[\"ping\"]",
        "[\"ping\",1]",
    ] {
        total += 1;
        same::<ClientFrame, old::ClientFrame>(input);
        assert_eq!(
            classify(parse_client_frame(input)),
            classify(old::parse_client_frame_old(input)),
            "{input}"
        );
    }
    // The variations must exercise both outcomes.
    println!("{ok} of {total} parsed");
    assert!(ok > 100 && total - ok > 100, "{ok} of {total} parsed");
}

#[test]
fn server_frames_and_entries_parse_as_before() {
    let (mut ok, mut total) = (0, 0);
    let mut count = |parsed: bool| {
        total += 1;
        if parsed {
            ok += 1;
        }
    };
    for f in all_server_frames() {
        let text = serde_json::to_string(&f).unwrap();
        let mut inputs = variations(&text);
        inputs.extend(seq_forms(&text, "type"));
        inputs.extend(with_member(
            &text,
            "type",
            &["\"OK\"", "\"dance\"", "0", "null", "\"send\""].map(String::from),
        ));
        // The entry inside an `entry` frame, and the first of a sync batch.
        let pairs = text_pairs(&text);
        if let Some((_, entry)) = pairs
            .iter()
            .find(|(k, _)| k == "entry" && v_is_object(&pairs, k))
        {
            let entry_text = entry.to_string();
            let mut entries = variations(&entry_text);
            entries.extend(seq_forms(&entry_text, "kind"));
            if let Some(m) = entry.get("message") {
                entries.extend(with_member(
                    &entry_text,
                    "message",
                    &variations(&m.to_string()),
                ));
            }
            for e in &entries {
                count(same::<Entry, old::Entry>(e));
                count(same::<EntryKind, old::EntryKind>(e));
            }
            inputs.extend(with_member(&text, "entry", &entries));
        }
        if let Some((_, entries)) = pairs.iter().find(|(k, _)| k == "entries") {
            let first = entries[0].to_string();
            let batch: Vec<String> = variations(&first)
                .into_iter()
                .map(|e| format!("[{e}]"))
                .collect();
            inputs.extend(with_member(&text, "entries", &batch));
        }
        for input in &inputs {
            count(same::<ServerFrame, old::ServerFrame>(input));
        }
    }
    println!("{ok} of {total} parsed");
    assert!(ok > 100 && total - ok > 100, "{ok} of {total} parsed");
}

fn v_is_object(pairs: &[(String, Value)], key: &str) -> bool {
    pairs.iter().any(|(k, v)| k == key && v.is_object())
}

/// The one intended difference: values of ignored fields are skipped as serde
/// skips them for any plain struct, checked for syntax only. serde's derive
/// for internally tagged enums parsed them fully into its buffer first.
#[test]
fn ignored_values_are_only_syntax_checked() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for text in [
        r#"{"type":"ping","req_id":1,"x":1e999}"#.to_string(),
        format!(r#"{{"type":"ping","req_id":1,"x":{deep}}}"#),
    ] {
        assert!(
            serde_json::from_str::<old::ClientFrame>(&text).is_err(),
            "{text}"
        );
        assert_eq!(
            parse_client_frame(&text).unwrap(),
            ClientFrame::Ping { req_id: 1 },
            "{text}"
        );
    }
    // Broken syntax in an ignored value is still refused.
    for text in [
        r#"{"type":"ping","req_id":1,"x":[1,}"#,
        r#"{"type":"ping","req_id":1,"x":01}"#,
        r#"{"type":"ping","req_id":1,"x":"a\qb"}"#,
    ] {
        assert!(
            matches!(parse_client_frame(text), Err(FrameError::Malformed(_))),
            "{text}"
        );
    }
}
