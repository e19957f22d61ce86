//! Snapshot tests: the exact JSON of wire types. A change here is a protocol change.

use serde::Deserialize;
use serde_json::json;

use crate::model::{FLAG_RECALLED, ReadReport, Recall};
use crate::*;

fn sample_message() -> Message {
    Message {
        from: "alice".into(),
        to: "bob".into(),
        msg_seq: 7,
        msg_random: 42,
        msg_time: 1_700_000_000,
        msg_key: "7_42_1700000000".into(),
        flag_bits: 0,
        body: vec![MsgElem::text("hi")],
        cloud_custom_data: "ccd".into(),
        nick: "Alice".into(),
        face_url: "https://x/a.png".into(),
        online_only: false,
    }
}

#[test]
fn message_snapshot() {
    let v = serde_json::to_value(sample_message()).unwrap();
    assert_eq!(
        v,
        json!({
            "From_Account": "alice", "To_Account": "bob", "MsgSeq": 7, "MsgRandom": 42,
            "MsgTimeStamp": 1700000000u64, "MsgKey": "7_42_1700000000", "MsgFlagBits": 0,
            "MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}],
            "CloudCustomData": "ccd", "Nick": "Alice", "FaceUrl": "https://x/a.png"
        })
    );
}

#[test]
fn entry_snapshots() {
    let e = Entry {
        seq: 3,
        ts: 1_700_000_000_123,
        kind: EntryKind::Message {
            message: sample_message(),
        },
    };
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["seq"], 3);
    assert_eq!(v["kind"], "message");
    assert_eq!(v["message"]["MsgKey"], "7_42_1700000000");
    let back: Entry = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);

    let r = Entry {
        seq: 4,
        ts: 5,
        kind: EntryKind::Recall(Recall {
            msg_key: "1_2_3".into(),
            from: "alice".into(),
            to: "bob".into(),
        }),
    };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"seq": 4, "ts": 5, "kind": "recall", "MsgKey": "1_2_3", "From_Account": "alice", "To_Account": "bob"})
    );
    let rd = Entry {
        seq: 5,
        ts: 6,
        kind: EntryKind::Read(ReadReport {
            reader: "bob".into(),
            peer: "alice".into(),
            read_time: 9,
        }),
    };
    assert_eq!(
        serde_json::to_value(&rd).unwrap(),
        json!({"seq": 5, "ts": 6, "kind": "read", "reader": "bob", "peer": "alice", "read_time": 9})
    );
}

#[test]
fn client_frame_snapshots() {
    let f = parse_client_frame(
        r#"{"type":"send","req_id":1,"To_Account":"bob","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"x"}}],"MsgRandom":5}"#,
    )
    .unwrap();
    match f {
        ClientFrame::Send {
            req_id: 1,
            ref to,
            msg_random: Some(5),
            msg_seq: None,
            online_only: false,
            ..
        } if to == "bob" => {}
        other => panic!("unexpected {other:?}"),
    }
    let login = ClientFrame::Login {
        req_id: 1,
        user_id: "a".into(),
        user_sig: "s".into(),
        device_id: "d".into(),
        platform: "Linux".into(),
        protocol_version: 1,
    };
    assert_eq!(
        serde_json::to_value(&login).unwrap(),
        json!({"type":"login","req_id":1,"user_id":"a","user_sig":"s","device_id":"d","platform":"Linux","protocol_version":1})
    );
}

#[test]
fn server_frame_snapshots() {
    let ack = ServerFrame::SendAck {
        req_id: 9,
        msg_key: "1_2_3".into(),
        msg_time: 3,
        msg_seq: 1,
        msg_random: 2,
        entry: Some(12),
        duplicate: false,
    };
    assert_eq!(
        serde_json::to_value(&ack).unwrap(),
        json!({"type":"send_ack","req_id":9,"MsgKey":"1_2_3","MsgTime":3,"MsgSeq":1,"MsgRandom":2,"entry":12,"duplicate":false})
    );
    let err = ServerFrame::Error {
        req_id: None,
        code: 90001,
        info: "x".into(),
    };
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"type":"error","code":90001,"info":"x"})
    );
    let k = ServerFrame::KickedOffline {
        code: 6208,
        reason: "r".into(),
    };
    assert_eq!(
        serde_json::to_value(&k).unwrap(),
        json!({"type":"kicked_offline","code":6208,"reason":"r"})
    );
}

#[test]
fn frame_errors_are_told_apart() {
    assert_eq!(
        parse_client_frame("{nope").unwrap_err().code(),
        codes::BAD_JSON
    );
    assert!(matches!(
        parse_client_frame("[1]"),
        Err(FrameError::Malformed(_))
    ));
    let e = parse_client_frame(r#"{"type":"dance","req_id":1}"#).unwrap_err();
    assert_eq!(e, FrameError::UnknownType("dance".into()));
    assert_eq!(e.code(), codes::UNKNOWN_COMMAND);
    let e = parse_client_frame(r#"{"type":"send","req_id":4,"To_Account":5}"#).unwrap_err();
    assert!(
        matches!(
            e,
            FrameError::BadField {
                req_id: Some(4),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn body_validation() {
    let ok = vec![MsgElem::text("hi")];
    assert!(validate_body(&ok, "", 8000).is_ok());
    assert_eq!(
        validate_body(&[], "", 8000).unwrap_err().code(),
        codes::BAD_MSG_BODY
    );
    let bad = vec![MsgElem::new("TIMTextElem", &json!({"Text": 5}))];
    assert_eq!(
        validate_body(&bad, "", 8000).unwrap_err().code(),
        codes::BAD_ELEMENT
    );
    let unknown = vec![MsgElem::new("TIMNopeElem", &json!({}))];
    assert!(validate_body(&unknown, "", 8000).is_err());
    let two = vec![MsgElem::custom("a", "", ""), MsgElem::custom("b", "", "")];
    assert_eq!(
        validate_body(&two, "", 8000).unwrap_err(),
        BodyError::TwoCustomElems
    );
    let big = vec![MsgElem::text("x".repeat(8000))];
    assert_eq!(
        validate_body(&big, "", 8000).unwrap_err().code(),
        codes::CONTENT_TOO_LARGE
    );
    let loc = vec![MsgElem::new(
        "TIMLocationElem",
        &json!({"Desc": "here", "Latitude": 1.5, "Longitude": 2.5}),
    )];
    assert!(validate_body(&loc, "", 8000).is_ok());
    let img = vec![MsgElem::new(
        "TIMImageElem",
        &json!({"UUID": "u", "ImageFormat": 1, "ImageInfoArray": [{"Type": 1, "Size": 1, "Width": 1, "Height": 1, "URL": "http://x"}]}),
    )];
    assert!(validate_body(&img, "", 8000).is_ok());
}

/// The element checks read the content text as sent: whitespace, escaped
/// keys and nested values; every malformed shape is refused with 90010.
#[test]
fn body_validation_reads_raw_content() {
    let raw = |t: &str, c: &str| MsgElem {
        msg_type: t.into(),
        msg_content: serde_json::value::RawValue::from_string(c.into()).unwrap(),
    };
    let ok = [
        raw(
            "TIMTextElem",
            r#" { "Text" : "hi" , "Extra": {"a": [1, 2]} } "#,
        ),
        raw("TIMTextElem", r#"{"\u0054ext":"escaped key"}"#),
        raw("TIMFaceElem", r#"{"Index":-1,"Data":"x"}"#),
        raw("TIMLocationElem", r#"{"Latitude":1e3,"Longitude":0}"#),
        raw("TIMImageElem", r#"{"ImageInfoArray":[ {"URL":"u"} ]}"#),
        raw("TIMCustomElem", r#"{}"#),
    ];
    for e in &ok {
        assert!(
            validate_body(std::slice::from_ref(e), "", 8000).is_ok(),
            "{e:?}"
        );
    }
    let bad = [
        raw("TIMTextElem", r#"["Text"]"#),
        raw("TIMTextElem", r#""Text""#),
        raw("TIMTextElem", r#"{"Text":null}"#),
        raw("TIMTextElem", r#"{"Text":"a","Desc":7}"#),
        raw("TIMFaceElem", r#"{"Index":"1"}"#),
        raw("TIMLocationElem", r#"{"Latitude":1}"#),
        raw("TIMImageElem", r#"{"ImageInfoArray":[]}"#),
        raw("TIMImageElem", r#"{"ImageInfoArray":"u"}"#),
        raw("TIMImageElem", r#"{"ImageInfoArray":[{"URL":1}]}"#),
        raw("TIMImageElem", r#"{"ImageInfoArray":["u"]}"#),
    ];
    for e in &bad {
        assert_eq!(
            validate_body(std::slice::from_ref(e), "", 8000).map_err(|e| e.code()),
            Err(codes::BAD_ELEMENT),
            "{e:?}"
        );
    }
    // Text with escapes reads back decoded.
    let e = raw("TIMTextElem", r#"{"Text":"a\"b\u00e9"}"#);
    assert_eq!(e.as_text().as_deref(), Some("a\"bé"));
    assert_eq!(MsgElem::text("x").content().unwrap()["Text"], "x");
}

#[test]
fn msg_key_round_trip() {
    let k: MsgKey = "48374_2837546_1557481126".parse().unwrap();
    assert_eq!(k.seq, 48374);
    assert_eq!(k.to_string(), "48374_2837546_1557481126");
    assert!("1_2".parse::<MsgKey>().is_err());
    assert!("a_b_c".parse::<MsgKey>().is_err());
    assert!("1_2_3_4".parse::<MsgKey>().is_err());
    let _ = FLAG_RECALLED;
}

#[test]
fn user_ids() {
    assert!(valid_user_id("alice"));
    assert!(!valid_user_id(""));
    assert!(!valid_user_id(&"a".repeat(33)));
    assert!(valid_user_id(&"a".repeat(32)));
    assert!(!valid_user_id("tab\there"));
}

// ---- Deserialization of the tagged types (hand-written `Deserialize`) ----

fn sample_entries() -> Vec<Entry> {
    vec![
        Entry {
            seq: 3,
            ts: 1_700_000_000_123,
            kind: EntryKind::Message {
                message: sample_message(),
            },
        },
        Entry {
            seq: 4,
            ts: 5,
            kind: EntryKind::Recall(Recall {
                msg_key: "1_2_3".into(),
                from: "alice".into(),
                to: "bob".into(),
            }),
        },
        Entry {
            seq: 5,
            ts: 6,
            kind: EntryKind::Read(ReadReport {
                reader: "bob".into(),
                peer: "alice".into(),
                read_time: 9,
            }),
        },
    ]
}

/// Every `ClientFrame` variant, optional fields both set and unset.
pub(crate) fn all_client_frames() -> Vec<ClientFrame> {
    vec![
        ClientFrame::Login {
            req_id: 1,
            user_id: "alice".into(),
            user_sig: "sig".into(),
            device_id: "d1".into(),
            platform: "Linux".into(),
            protocol_version: 1,
        },
        ClientFrame::Ping { req_id: 2 },
        ClientFrame::Send {
            req_id: 3,
            to: "bob".into(),
            body: vec![
                MsgElem::text("hi \"there\" \u{e9}"),
                MsgElem::custom("d", "e", "x"),
            ],
            msg_random: Some(5),
            msg_seq: Some(6),
            cloud_custom_data: "ccd".into(),
            online_only: true,
            no_unread: true,
            no_last_msg: true,
        },
        ClientFrame::Send {
            req_id: 4,
            to: "bob".into(),
            body: vec![MsgElem::text("x")],
            msg_random: None,
            msg_seq: None,
            cloud_custom_data: String::new(),
            online_only: false,
            no_unread: false,
            no_last_msg: false,
        },
        ClientFrame::Sync {
            req_id: 5,
            after: 10,
        },
        ClientFrame::History {
            req_id: 6,
            peer: "bob".into(),
            before: Some(7),
            count: 3,
        },
        ClientFrame::History {
            req_id: 7,
            peer: "bob".into(),
            before: None,
            count: 20,
        },
        ClientFrame::Conversations {
            req_id: 8,
            cursor: 2,
            count: 5,
        },
        ClientFrame::MarkRead {
            req_id: 9,
            peer: "bob".into(),
        },
        ClientFrame::Recall {
            req_id: 10,
            msg_key: "1_2_3".into(),
        },
        ClientFrame::SetProfile {
            req_id: 11,
            nick: Some("Al".into()),
            face_url: None,
        },
        ClientFrame::Logout { req_id: 12 },
    ]
}

/// Every `ServerFrame` variant (and every `EntryKind` inside `entry` frames).
pub(crate) fn all_server_frames() -> Vec<ServerFrame> {
    let mut frames = vec![
        ServerFrame::LoginOk {
            req_id: 1,
            user_id: "alice".into(),
            epoch: "e1".into(),
            head: 4,
            server_time: 1_700_000_000_000,
            protocol_version: 1,
            heartbeat_timeout: 60,
        },
        ServerFrame::Pong {
            req_id: 2,
            server_time: 3,
            head: 4,
        },
        ServerFrame::SendAck {
            req_id: 3,
            msg_key: "1_2_3".into(),
            msg_time: 3,
            msg_seq: 1,
            msg_random: 2,
            entry: Some(12),
            duplicate: true,
        },
        ServerFrame::SendAck {
            req_id: 4,
            msg_key: "1_2_3".into(),
            msg_time: 3,
            msg_seq: 1,
            msg_random: 2,
            entry: None,
            duplicate: false,
        },
        ServerFrame::SyncBatch {
            req_id: 5,
            entries: sample_entries(),
        },
        ServerFrame::SyncFinished {
            req_id: 6,
            cursor: 5,
            epoch: "e1".into(),
        },
        ServerFrame::HistoryPage {
            req_id: 7,
            peer: "bob".into(),
            messages: vec![HistoryItem {
                seq: 3,
                message: sample_message(),
            }],
            complete: true,
        },
        ServerFrame::ConversationPage {
            req_id: 8,
            conversations: vec![
                Conversation {
                    peer: "bob".into(),
                    last_message: Some(sample_message()),
                    last_time: 1,
                    unread: 2,
                    read_time: 3,
                    peer_read_time: 4,
                },
                Conversation {
                    peer: "carol".into(),
                    last_message: None,
                    last_time: 1,
                    unread: 0,
                    read_time: 0,
                    peer_read_time: 0,
                },
            ],
            next_cursor: 2,
            complete: false,
        },
        ServerFrame::Ok { req_id: 9 },
        ServerFrame::OnlineMessage {
            message: Message {
                online_only: true,
                ..sample_message()
            },
        },
        ServerFrame::KickedOffline {
            code: 6208,
            reason: "r".into(),
        },
        ServerFrame::Error {
            req_id: Some(10),
            code: 90001,
            info: "x".into(),
        },
        ServerFrame::Error {
            req_id: None,
            code: 90001,
            info: "x".into(),
        },
    ];
    frames.extend(
        sample_entries()
            .into_iter()
            .map(|entry| ServerFrame::Entry { entry }),
    );
    frames
}

#[test]
fn every_variant_round_trips_through_str_and_value() {
    for f in all_client_frames() {
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(parse_client_frame(&text).unwrap(), f, "{text}");
        assert_eq!(serde_json::from_str::<ClientFrame>(&text).unwrap(), f);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(ClientFrame::deserialize(&v).unwrap(), f, "{v}");
        assert_eq!(serde_json::from_value::<ClientFrame>(v).unwrap(), f);
    }
    for f in all_server_frames() {
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&text).unwrap(),
            f,
            "{text}"
        );
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(ServerFrame::deserialize(&v).unwrap(), f, "{v}");
        assert_eq!(serde_json::from_value::<ServerFrame>(v).unwrap(), f);
    }
    for e in sample_entries() {
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e, "{text}");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(serde_json::from_value::<Entry>(v.clone()).unwrap(), e);
        // `EntryKind` on its own: the object without seq/ts (and with them, ignored).
        let kind_text = serde_json::to_string(&e.kind).unwrap();
        assert_eq!(
            serde_json::from_str::<EntryKind>(&kind_text).unwrap(),
            e.kind
        );
        assert_eq!(serde_json::from_value::<EntryKind>(v).unwrap(), e.kind);
        let kv = serde_json::to_value(&e.kind).unwrap();
        assert_eq!(serde_json::from_value::<EntryKind>(kv).unwrap(), e.kind);
    }
}

/// `text` as an object with its key `key` moved to the end.
fn key_last(text: &str, key: &str) -> String {
    let mut pairs: Vec<(String, serde_json::Value)> = text_pairs(text);
    let i = pairs.iter().position(|(k, _)| k == key).unwrap();
    let p = pairs.remove(i);
    pairs.push(p);
    pairs_text(&pairs)
}

/// The members of a JSON object in their order.
pub(crate) fn text_pairs(text: &str) -> Vec<(String, serde_json::Value)> {
    struct Pairs(Vec<(String, serde_json::Value)>);
    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Pairs;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Pairs, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = map.next_entry()? {
                        v.push(e);
                    }
                    Ok(Pairs(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Pairs>(text).unwrap().0
}

/// An object from members (kept in order, duplicates kept).
pub(crate) fn pairs_text(pairs: &[(String, serde_json::Value)]) -> String {
    let members: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
        .collect();
    format!("{{{}}}", members.join(","))
}

#[test]
fn tag_anywhere_in_the_object() {
    for f in all_client_frames() {
        let text = key_last(&serde_json::to_string(&f).unwrap(), "type");
        assert!(!text.starts_with("{\"type\""), "{text}");
        assert_eq!(parse_client_frame(&text).unwrap(), f, "{text}");
    }
    let browser = r#"{"req_id":7,"To_Account":"bob","MsgBody":[{"MsgContent":{"Text":"hi"},"MsgType":"TIMTextElem"}],"type":"send","no_unread":true}"#;
    match parse_client_frame(browser).unwrap() {
        ClientFrame::Send {
            req_id: 7,
            to,
            body,
            no_unread: true,
            msg_random: None,
            ..
        } => {
            assert_eq!(to, "bob");
            assert_eq!(body, vec![MsgElem::text("hi")]);
        }
        other => panic!("{other:?}"),
    }
    for f in all_server_frames() {
        let text = key_last(&serde_json::to_string(&f).unwrap(), "type");
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&text).unwrap(),
            f,
            "{text}"
        );
    }
    for e in sample_entries() {
        let text = serde_json::to_string(&e).unwrap();
        // Serialized, `kind` comes third (after seq, ts); try it first and last.
        let first = {
            let mut p = text_pairs(&text);
            let i = p.iter().position(|(k, _)| k == "kind").unwrap();
            let kind = p.remove(i);
            p.insert(0, kind);
            pairs_text(&p)
        };
        let last = key_last(&text, "kind");
        let seq_last = key_last(&last, "seq");
        for t in [first, last, seq_last] {
            assert_eq!(serde_json::from_str::<Entry>(&t).unwrap(), e, "{t}");
            assert_eq!(
                serde_json::from_str::<EntryKind>(&t).unwrap(),
                e.kind,
                "{t}"
            );
            let frame = format!(r#"{{"entry":{t},"type":"entry"}}"#);
            assert_eq!(
                serde_json::from_str::<ServerFrame>(&frame).unwrap(),
                ServerFrame::Entry { entry: e.clone() },
                "{frame}"
            );
        }
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let f = parse_client_frame(
        r#"{"x":{"deep":[1,{"type":"login"}]},"type":"ping","y":null,"req_id":3,"z":"type"}"#,
    )
    .unwrap();
    assert_eq!(f, ClientFrame::Ping { req_id: 3 });
    let f = parse_client_frame(r#"{"type":"ping","req_id":3,"kind":"x","MsgBody":5}"#).unwrap();
    assert_eq!(f, ClientFrame::Ping { req_id: 3 });
    let ack: ServerFrame = serde_json::from_str(
        r#"{"type":"ok","req_id":1,"new_field":[1,2,3],"entry":{"bogus":true}}"#,
    )
    .unwrap();
    assert_eq!(ack, ServerFrame::Ok { req_id: 1 });
    let e: Entry = serde_json::from_str(
        r#"{"extra":1,"seq":1,"ts":2,"kind":"read","reader":"a","peer":"b","read_time":3,"more":{}}"#,
    )
    .unwrap();
    assert_eq!(
        e.kind,
        EntryKind::Read(ReadReport {
            reader: "a".into(),
            peer: "b".into(),
            read_time: 3
        })
    );
}

#[test]
fn bad_fields_are_told_apart() {
    let bad = |text: &str| match parse_client_frame(text) {
        Err(FrameError::BadField { kind, req_id, .. }) => (kind, req_id),
        other => panic!("{text}: {other:?}"),
    };
    // Missing required fields, tag first and not first.
    assert_eq!(
        bad(r#"{"type":"send","req_id":4,"To_Account":"bob"}"#),
        ("send".into(), Some(4))
    );
    assert_eq!(
        bad(r#"{"req_id":5,"To_Account":"bob","type":"send"}"#),
        ("send".into(), Some(5))
    );
    assert_eq!(
        bad(r#"{"type":"login","req_id":6,"user_id":"a","device_id":"d"}"#),
        ("login".into(), Some(6))
    );
    // Missing req_id: no req_id to answer with.
    assert_eq!(bad(r#"{"type":"ping"}"#), ("ping".into(), None));
    // Wrong types.
    assert_eq!(
        bad(r#"{"type":"sync","req_id":7,"after":"1"}"#),
        ("sync".into(), Some(7))
    );
    assert_eq!(
        bad(r#"{"type":"sync","req_id":"8","after":1}"#),
        ("sync".into(), None)
    );
    assert_eq!(
        bad(r#"{"type":"send","req_id":9,"To_Account":"b","MsgBody":[{"MsgType":"TIMTextElem"}]}"#),
        ("send".into(), Some(9))
    );
    assert_eq!(
        bad(r#"{"type":"history","req_id":10,"peer":"b","count":-1}"#),
        ("history".into(), Some(10))
    );
    // Duplicate fields and a second tag are refused as before.
    assert_eq!(
        bad(r#"{"type":"ping","req_id":1,"req_id":2}"#),
        ("ping".into(), Some(2))
    );
    assert_eq!(
        bad(r#"{"type":"ping","req_id":1,"type":"ping"}"#),
        ("ping".into(), Some(1))
    );
    // Defaults stay optional.
    assert_eq!(
        parse_client_frame(r#"{"type":"history","req_id":1,"peer":"b"}"#).unwrap(),
        ClientFrame::History {
            req_id: 1,
            peer: "b".into(),
            before: None,
            count: 20
        }
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"conversations","req_id":1}"#).unwrap(),
        ClientFrame::Conversations {
            req_id: 1,
            cursor: 0,
            count: 100
        }
    );
}

#[test]
fn unknown_types_and_non_objects() {
    for (text, kind) in [
        (r#"{"type":"dance","req_id":1}"#, "dance"),
        (r#"{"req_id":1,"type":"dance"}"#, "dance"),
        (r#"{"type":"Ping","req_id":1}"#, "Ping"),
        (r#"{"type":"","req_id":1}"#, ""),
        // A server frame type is not a client frame type.
        (r#"{"type":"pong","req_id":1,"server_time":1}"#, "pong"),
    ] {
        assert_eq!(
            parse_client_frame(text),
            Err(FrameError::UnknownType(kind.into())),
            "{text}"
        );
    }
    for text in [
        "",
        "{nope",
        "null",
        "1",
        "\"ping\"",
        "[]",
        "[1]",
        "{}",
        r#"{"req_id":1}"#,
        r#"{"type":5,"req_id":1}"#,
        r#"{"type":null,"req_id":1}"#,
        r#"{"type":"ping","req_id":1"#,
        r#"{"type":"ping","req_id":1} x"#,
    ] {
        assert!(
            matches!(parse_client_frame(text), Err(FrameError::Malformed(_))),
            "{text}: {:?}",
            parse_client_frame(text)
        );
    }
    assert!(serde_json::from_str::<ServerFrame>(r#"{"type":"dance"}"#).is_err());
    assert!(serde_json::from_str::<ServerFrame>("[]").is_err());
    assert!(serde_json::from_str::<ServerFrame>("\"ok\"").is_err());
    assert!(serde_json::from_str::<Entry>(r#"{"seq":1,"ts":2}"#).is_err());
    assert!(serde_json::from_str::<Entry>(r#"{"seq":1,"ts":2,"kind":"nope"}"#).is_err());
    assert!(
        serde_json::from_str::<Entry>(
            r#"{"seq":1,"kind":"read","reader":"a","peer":"b","read_time":3}"#
        )
        .is_err()
    );
    assert!(serde_json::from_str::<Entry>("[1,2,\"read\"]").is_err());
    assert!(serde_json::from_value::<ClientFrame>(json!(["x"])).is_err());
    assert!(serde_json::from_value::<ClientFrame>(json!({"type": "nope"})).is_err());
}

/// The borrowed writer of message `entry` frames gives exactly the text of
/// the owned frame, whatever the message holds.
#[test]
fn message_entry_frame_matches_the_owned_frame() {
    let mut recalled = sample_message();
    recalled.flag_bits = FLAG_RECALLED;
    let mut online = sample_message();
    online.online_only = true;
    online.body.push(MsgElem::custom("d\"ata\n", "", "é"));
    for message in [sample_message(), recalled, online] {
        let owned = serde_json::to_string(&ServerFrame::Entry {
            entry: Entry {
                seq: 42,
                ts: 1_700_000_000_123,
                kind: EntryKind::Message {
                    message: message.clone(),
                },
            },
        })
        .unwrap();
        assert_eq!(message_entry_frame(42, 1_700_000_000_123, &message), owned);
    }
}

/// The hand-written frames escape every string as serde_json does and copy
/// the content text as it came (whitespace and key order kept).
#[test]
fn hand_written_frames_match_serde() {
    let awkward = [
        "",
        "plain",
        "quote\"back\\slash",
        "ctrl\u{1}\n\t\r\u{7f}",
        "é ü 中文 🙂 </script>",
    ];
    for s in awkward {
        let mut m = sample_message();
        m.from = s.into();
        m.to = format!("{s}-to");
        m.cloud_custom_data = s.into();
        m.nick = s.into();
        m.face_url = s.into();
        m.msg_seq = u32::MAX;
        m.msg_random = 0;
        m.msg_time = u64::MAX;
        m.body = vec![
            MsgElem::new(s, &json!({ "Text": s })),
            MsgElem {
                msg_type: "TIMCustomElem".into(),
                msg_content: serde_json::value::RawValue::from_string(
                    r#" { "z" : 1, "a" : [ ] } "#.trim().into(),
                )
                .unwrap(),
            },
        ];
        let owned = serde_json::to_string(&ServerFrame::Entry {
            entry: Entry {
                seq: u64::MAX,
                ts: 0,
                kind: EntryKind::Message { message: m.clone() },
            },
        })
        .unwrap();
        assert_eq!(message_entry_frame(u64::MAX, 0, &m), owned);
    }
    for (entry, duplicate) in [(None, false), (Some(7), true), (Some(u64::MAX), false)] {
        let ack = ServerFrame::SendAck {
            req_id: 99,
            msg_key: MsgKey::text(u32::MAX, 0, 1_700_000_000),
            msg_time: 1_700_000_000,
            msg_seq: u32::MAX,
            msg_random: 0,
            entry,
            duplicate,
        };
        assert_eq!(
            send_ack_frame(
                99,
                &format!("{}_0_1700000000", u32::MAX),
                1_700_000_000,
                u32::MAX,
                0,
                entry,
                duplicate
            ),
            serde_json::to_string(&ack).unwrap()
        );
        assert_eq!(
            server_frame_text(&ack).unwrap(),
            serde_json::to_string(&ack).unwrap()
        );
    }
    assert_eq!(
        MsgKey::text(1, 22, 333),
        MsgKey {
            seq: 1,
            random: 22,
            time: 333
        }
        .to_string()
    );
}
