//! Snapshot tests: the exact JSON of wire types. A change here is a protocol change.

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
    let bad = vec![MsgElem {
        msg_type: "TIMTextElem".into(),
        msg_content: json!({"Text": 5}),
    }];
    assert_eq!(
        validate_body(&bad, "", 8000).unwrap_err().code(),
        codes::BAD_ELEMENT
    );
    let unknown = vec![MsgElem {
        msg_type: "TIMNopeElem".into(),
        msg_content: json!({}),
    }];
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
    let loc = vec![MsgElem {
        msg_type: "TIMLocationElem".into(),
        msg_content: json!({"Desc": "here", "Latitude": 1.5, "Longitude": 2.5}),
    }];
    assert!(validate_body(&loc, "", 8000).is_ok());
    let img = vec![MsgElem {
        msg_type: "TIMImageElem".into(),
        msg_content: json!({"UUID": "u", "ImageFormat": 1, "ImageInfoArray": [{"Type": 1, "Size": 1, "Width": 1, "Height": 1, "URL": "http://x"}]}),
    }];
    assert!(validate_body(&img, "", 8000).is_ok());
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
