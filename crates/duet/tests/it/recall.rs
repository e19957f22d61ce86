//! Recall within the window, and after it.

use duet_proto::codes;
use duet_sdk::Event;
use duet_server::ManualClock;
use duet_testkit::TestServer;

#[tokio::test]
async fn recall_within_the_window_reaches_both_sides_and_after_it_is_refused() {
    let clock = ManualClock::starting_now();
    let server = TestServer::builder().clock(clock.clone()).spawn().await;
    let mut alice = server.client("alice").device("phone").connect().await;
    let mut alice_pc = server
        .client("alice")
        .device("pc")
        .platform("PC")
        .connect()
        .await;
    let mut bob = server.client("bob").connect().await;
    for c in [&mut alice, &mut alice_pc, &mut bob] {
        c.until_synced().await;
    }
    let ack = alice.session.send_text("bob", "oops").await.unwrap();
    bob.next_message().await;
    alice_pc.next_message().await;
    clock.advance_secs(60);
    alice.session.recall(&ack.msg_key).await.unwrap();
    for dev in [&mut bob, &mut alice_pc, &mut alice] {
        let ev = dev
            .wait_for(|e| matches!(e, Event::MessageRecalled(_)))
            .await;
        let Event::MessageRecalled(r) = ev else {
            unreachable!()
        };
        assert_eq!(r.msg_key, ack.msg_key);
        assert_eq!(r.from, "alice");
    }
    let (page, _) = bob.session.history("alice", None, 10).await.unwrap();
    assert!(
        page[0].message.is_recalled(),
        "recalled messages stay in history, flagged"
    );
    // Again: already recalled.
    let err = alice.session.recall(&ack.msg_key).await.unwrap_err();
    assert_eq!(err.code(), codes::ALREADY_RECALLED);
    // Someone else's message: not found.
    let err = bob.session.recall(&ack.msg_key).await.unwrap_err();
    assert_eq!(err.code(), codes::MSG_NOT_FOUND);
    // A bad key.
    let err = alice.session.recall("nonsense").await.unwrap_err();
    assert_eq!(err.code(), codes::BAD_MSG_KEY);

    let late = alice
        .session
        .send_text("bob", "too late to take back")
        .await
        .unwrap();
    clock.advance_secs(121);
    let err = alice.session.recall(&late.msg_key).await.unwrap_err();
    assert_eq!(err.code(), codes::RECALL_WINDOW_PASSED);
    let (page, _) = bob.session.history("alice", None, 10).await.unwrap();
    assert!(!page[0].message.is_recalled(), "nothing changed");
}
