//! Bad input gets a clear error frame; the server keeps serving everyone.

use duet_proto::{MsgElem, codes};
use duet_sdk::{Push, SdkError};
use duet_testkit::{SDKAPPID, SECRET, TestServer, WAIT};
use duet_usersig::UserSigKey;

async fn next_error(pushes: &mut tokio::sync::mpsc::UnboundedReceiver<Push>) -> (u32, String) {
    loop {
        match tokio::time::timeout(WAIT, pushes.recv())
            .await
            .expect("timed out")
            .expect("closed")
        {
            Push::Error { code, info } => return (code, info),
            Push::Entry(_) | Push::OnlineMessage(_) => continue,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}

fn code(e: SdkError) -> u32 {
    match e {
        SdkError::Server { code, .. } => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_error_frames_and_the_connection_lives_on() {
    let server = TestServer::start().await;
    let (conn, mut pushes) = server.login_raw("alice", "d").await;
    conn.send_raw("{not json".into()).await.unwrap();
    let (c, info) = next_error(&mut pushes).await;
    assert_eq!(c, codes::BAD_JSON);
    assert!(info.contains("malformed"), "{info}");
    conn.send_raw(r#"{"type":"teleport","req_id":3}"#.into())
        .await
        .unwrap();
    let (c, info) = next_error(&mut pushes).await;
    assert_eq!(c, codes::UNKNOWN_COMMAND);
    assert!(info.contains("teleport"), "{info}");
    conn.send_raw("[1,2,3]".into()).await.unwrap();
    assert_eq!(next_error(&mut pushes).await.0, codes::BAD_JSON);
    // A known type with a wrongly typed field answers its req_id.
    let err = conn
        .request(serde_json::from_str(r#"{"type":"ping","req_id":99}"#).unwrap())
        .await;
    assert!(err.is_ok());
    conn.ping().await.unwrap();
}

#[tokio::test]
async fn bad_sends_are_refused_with_codes_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let (alice, _) = server.login_raw("alice", "d").await;
    // Oversize content.
    let big = vec![MsgElem::text("x".repeat(8_001))];
    assert_eq!(
        code(
            alice
                .send("bob", big, Default::default())
                .await
                .unwrap_err()
        ),
        codes::CONTENT_TOO_LARGE
    );
    // Exactly at the limit is fine (JSON overhead counts, so a bit less text).
    let fits = vec![MsgElem::text("y".repeat(7_900))];
    alice.send("bob", fits, Default::default()).await.unwrap();
    bob.next_message().await;
    // Unknown recipient, and a UserID over 32 bytes.
    let hi = || vec![MsgElem::text("hi")];
    assert_eq!(
        code(
            alice
                .send("nobody", hi(), Default::default())
                .await
                .unwrap_err()
        ),
        codes::UNKNOWN_RECIPIENT
    );
    assert_eq!(
        code(
            alice
                .send(&"z".repeat(33), hi(), Default::default())
                .await
                .unwrap_err()
        ),
        codes::UNKNOWN_RECIPIENT
    );
    // Bad elements.
    let bad = vec![MsgElem::new("TIMTextElem", &serde_json::json!({"Text": 1}))];
    assert_eq!(
        code(
            alice
                .send("bob", bad, Default::default())
                .await
                .unwrap_err()
        ),
        codes::BAD_ELEMENT
    );
    assert_eq!(
        code(
            alice
                .send("bob", vec![], Default::default())
                .await
                .unwrap_err()
        ),
        codes::BAD_MSG_BODY
    );
    // None of the refused sends reached bob or the store.
    bob.expect_quiet(std::time::Duration::from_millis(200))
        .await;
    let (page, _) = bob.session.history("alice", None, 50).await.unwrap();
    assert_eq!(page.len(), 1);
    // A frame over the size limit closes only that connection.
    let (huge, mut huge_pushes) = server.login_raw("carol", "d").await;
    let _ = huge
        .send_raw(format!(
            r#"{{"type":"ping","req_id":1,"pad":"{}"}}"#,
            "p".repeat(70_000)
        ))
        .await;
    loop {
        match tokio::time::timeout(WAIT, huge_pushes.recv())
            .await
            .expect("closed in time")
        {
            Some(Push::Closed) | None => break,
            Some(_) => {}
        }
    }
    alice.ping().await.unwrap();
}

#[tokio::test]
async fn send_before_login_is_refused_with_6014() {
    let server = TestServer::start().await;
    let (conn, _) = server.raw().await;
    let err = conn
        .send("bob", vec![MsgElem::text("hi")], Default::default())
        .await
        .unwrap_err();
    assert_eq!(code(err), codes::NOT_LOGGED_IN);
    // Still usable: log in now.
    conn.login("alice", &server.sig("alice"), "d", "Linux")
        .await
        .unwrap();
    conn.ping().await.unwrap();
}

#[tokio::test]
async fn each_usersig_failure_has_its_code() {
    let server = TestServer::start().await;
    let key = UserSigKey::new(SDKAPPID, SECRET);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let cases: Vec<(&str, String, u32)> = vec![
        (
            "expired",
            key.issue_at("alice", now - 1000, 10),
            codes::SIG_EXPIRED,
        ),
        ("empty", String::new(), codes::SIG_EMPTY),
        ("malformed", "not-a-usersig".into(), codes::SIG_MALFORMED),
        (
            "wrong key",
            UserSigKey::new(SDKAPPID, "another-key").issue("alice", 3600),
            codes::SIG_HMAC,
        ),
        (
            "other user",
            key.issue("mallory", 3600),
            codes::SIG_IDENTIFIER,
        ),
        (
            "other app",
            UserSigKey::new(SDKAPPID + 1, SECRET).issue("alice", 3600),
            codes::SIG_SDKAPPID,
        ),
    ];
    for (name, sig, want) in cases {
        let (conn, _) = server.raw().await;
        let err = conn.login("alice", &sig, "d", "Linux").await.unwrap_err();
        assert_eq!(code(err), want, "{name}");
    }
    // UserID over 32 bytes.
    let (conn, _) = server.raw().await;
    let long = "u".repeat(33);
    let err = conn
        .login(&long, &key.issue(&long, 3600), "d", "Linux")
        .await
        .unwrap_err();
    assert_eq!(code(err), codes::BAD_PARAMS);
    // The server still serves a good login.
    let (ok, _) = server.login_raw("alice", "d").await;
    ok.ping().await.unwrap();
}
