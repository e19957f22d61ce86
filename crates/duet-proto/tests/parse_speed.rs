//! A small measurement of frame parsing (not a benchmark suite): parses typical
//! frames N times and prints the median ns per parse over a few rounds.
//!
//! ```text
//! cargo test -p duet-proto --release --test parse_speed -- --ignored --nocapture
//! ```
//!
//! `PARSE_SPEED_N` sets the parses per round (default 100000); each case runs
//! 5.1 N parses (N/10 warm-up, 5 rounds). `PARSE_SPEED_ONLY=<substring>` runs
//! only the cases whose name contains it, e.g. for instruction counts with
//! `valgrind --tool=callgrind` (compare against a run with `PARSE_SPEED_N=0`).

use std::hint::black_box;
use std::time::Instant;

use duet_proto::{
    ClientFrame, Entry, EntryKind, Message, MsgElem, ServerFrame, parse_client_frame,
};

fn message(body: Vec<MsgElem>) -> Message {
    Message {
        from: "bench_user_0001".into(),
        to: "bench_user_0002".into(),
        msg_seq: 48374,
        msg_random: 2837546,
        msg_time: 1_757_000_000,
        msg_key: "48374_2837546_1757000000".into(),
        flag_bits: 0,
        body,
        cloud_custom_data: String::new(),
        nick: "Bench User".into(),
        face_url: "https://example.invalid/face/0001.png".into(),
        online_only: false,
    }
}

fn send_text() -> String {
    serde_json::to_string(&ClientFrame::Send {
        req_id: 123456,
        to: "bench_user_0002".into(),
        body: vec![MsgElem::text(
            "hello there, this is a typical short chat message",
        )],
        msg_random: Some(2837546),
        msg_seq: Some(48374),
        cloud_custom_data: String::new(),
        online_only: false,
        no_unread: false,
        no_last_msg: false,
    })
    .expect("serialize")
}

fn send_custom() -> String {
    serde_json::to_string(&ClientFrame::Send {
        req_id: 123457,
        to: "bench_user_0002".into(),
        body: vec![MsgElem::custom("17:48374:1757000000123456789", "", "")],
        msg_random: Some(2837546),
        msg_seq: Some(48374),
        cloud_custom_data: String::new(),
        online_only: false,
        no_unread: false,
        no_last_msg: false,
    })
    .expect("serialize")
}

fn send_ack() -> String {
    serde_json::to_string(&ServerFrame::SendAck {
        req_id: 123456,
        msg_key: "48374_2837546_1757000000".into(),
        msg_time: 1_757_000_000,
        msg_seq: 48374,
        msg_random: 2837546,
        entry: Some(991),
        duplicate: false,
    })
    .expect("serialize")
}

fn entry_frame() -> String {
    serde_json::to_string(&ServerFrame::Entry {
        entry: Entry {
            seq: 992,
            ts: 1_757_000_000_123,
            kind: EntryKind::Message {
                message: message(vec![MsgElem::text(
                    "hello there, this is a typical short chat message",
                )]),
            },
        },
    })
    .expect("serialize")
}

/// The same object with `type` moved to the end (as some clients build it).
fn tag_last(json: &str, tag: &str) -> String {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).expect("object");
    let t = v.remove(tag).expect("tag");
    let mut out = serde_json::to_string(&v).expect("serialize");
    out.pop();
    out.push_str(&format!(",{:?}:{}}}", tag, t));
    out
}

fn measure(name: &str, n: usize, mut f: impl FnMut()) {
    if let Ok(only) = std::env::var("PARSE_SPEED_ONLY")
        && !name.contains(only.as_str())
    {
        return;
    }
    for _ in 0..n / 10 {
        f();
    }
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "{name:<34} median {:>7.0} ns/parse  (min {:.0}, max {:.0})",
        rounds[2], rounds[0], rounds[4]
    );
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn parse_speed() {
    let n: usize = std::env::var("PARSE_SPEED_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let text = send_text();
    let custom = send_custom();
    let ack = send_ack();
    let entry = entry_frame();
    let text_tag_last = tag_last(&text, "type");
    let entry_value: serde_json::Value = serde_json::from_str(&entry).expect("value");
    assert!(parse_client_frame(&text).is_ok());
    assert!(parse_client_frame(&text_tag_last).is_ok());
    println!("send (text)   {} bytes: {text}", text.len());
    println!("send (custom) {} bytes", custom.len());
    println!("send_ack      {} bytes", ack.len());
    println!("entry         {} bytes", entry.len());

    measure("client send TIMTextElem", n, || {
        black_box(parse_client_frame(black_box(&text)).ok());
    });
    measure("client send TIMCustomElem", n, || {
        black_box(parse_client_frame(black_box(&custom)).ok());
    });
    measure("client send, type last", n, || {
        black_box(parse_client_frame(black_box(&text_tag_last)).ok());
    });
    measure("server send_ack", n, || {
        black_box(serde_json::from_str::<ServerFrame>(black_box(&ack)).ok());
    });
    measure("server entry (message)", n, || {
        black_box(serde_json::from_str::<ServerFrame>(black_box(&entry)).ok());
    });
    measure("server entry from_value (clone+)", n, || {
        black_box(serde_json::from_value::<ServerFrame>(black_box(entry_value.clone())).ok());
    });
    measure("  (Value clone alone)", n, || {
        black_box(black_box(&entry_value).clone());
    });

    // The floor: the same send read by a plain derived struct (no tag logic;
    // `type` is an ignored field), and a pass that only skips over the frame.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct PlainSend {
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
        #[serde(default)]
        online_only: bool,
        #[serde(default)]
        no_unread: bool,
        #[serde(default)]
        no_last_msg: bool,
    }
    measure("  floor: plain struct, same send", n, || {
        black_box(serde_json::from_str::<PlainSend>(black_box(&text)).ok());
    });
    measure("  floor: skip the send (IgnoredAny)", n, || {
        black_box(serde_json::from_str::<serde::de::IgnoredAny>(black_box(&text)).ok());
    });

    // How much of a send is the MsgBody (MsgContent is a serde_json::Value)?
    let body = serde_json::to_string(&[MsgElem::text(
        "hello there, this is a typical short chat message",
    )])
    .expect("serialize");
    measure("  MsgBody alone (Vec<MsgElem>)", n, || {
        black_box(serde_json::from_str::<Vec<MsgElem>>(black_box(&body)).ok());
    });
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct SkipContent {
        #[serde(rename = "MsgType")]
        msg_type: String,
        #[serde(rename = "MsgContent")]
        msg_content: serde::de::IgnoredAny,
    }
    measure("  MsgBody, MsgContent skipped", n, || {
        black_box(serde_json::from_str::<Vec<SkipContent>>(black_box(&body)).ok());
    });
}
