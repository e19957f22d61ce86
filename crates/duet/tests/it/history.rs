//! History pages, the conversation list, unread counts and read reports.

use duet_sdk::Event;
use duet_testkit::TestServer;

#[tokio::test]
async fn history_pages_back_through_a_conversation() {
    let server = TestServer::start().await;
    let alice = server.client("alice").connect().await;
    let bob = server.client("bob").connect().await;
    for i in 0..25 {
        let (from, to) = if i % 2 == 0 {
            (&alice, "bob")
        } else {
            (&bob, "alice")
        };
        from.session.send_text(to, &format!("h{i}")).await.unwrap();
    }
    // Someone else's conversation does not leak in.
    let carol = server.client("carol").connect().await;
    carol
        .session
        .send_text("alice", "not in this history")
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let (page, complete) = alice.session.history("bob", before, 10).await.unwrap();
        pages += 1;
        assert!(page.len() <= 10);
        for w in page.windows(2) {
            assert!(w[0].seq > w[1].seq, "newest first");
        }
        seen.extend(
            page.iter()
                .map(|i| i.message.body[0].as_text().unwrap().to_string()),
        );
        before = page.last().map(|i| i.seq);
        if complete {
            break;
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|i| format!("h{i}")).collect();
    assert_eq!(seen, expected);
    // bob's own view holds the same conversation.
    let (bob_page, _) = bob.session.history("alice", None, 100).await.unwrap();
    assert_eq!(bob_page.len(), 25);
}

#[tokio::test]
async fn conversations_show_last_message_and_unread_and_mark_read_reaches_the_peer() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").device("phone").connect().await;
    let mut alice_pc = server
        .client("alice")
        .device("pc")
        .platform("PC")
        .connect()
        .await;
    let mut bob = server.client("bob").connect().await;
    let carol = server.client("carol").connect().await;
    alice.until_synced().await;
    alice_pc.until_synced().await;
    bob.until_synced().await;
    for i in 0..3 {
        alice
            .session
            .send_text("bob", &format!("a{i}"))
            .await
            .unwrap();
    }
    carol.session.send_text("bob", "from carol").await.unwrap();
    bob.session.send_text("alice", "bob's reply").await.unwrap();
    alice.session.send_text("bob", "latest").await.unwrap();

    let list = bob.session.conversations().await.unwrap();
    assert_eq!(list[0].peer, "alice", "most recent first");
    assert_eq!(list[0].unread, 4, "only received messages count");
    let last = list[0].last_message.as_ref().unwrap();
    assert_eq!(last.body[0].as_text().as_deref(), Some("latest"));
    assert_eq!(list[1].peer, "carol");
    assert_eq!(list[1].unread, 1);

    bob.session.mark_read("alice").await.unwrap();
    let list = bob.session.conversations().await.unwrap();
    let a = list.iter().find(|c| c.peer == "alice").unwrap();
    assert_eq!(a.unread, 0);
    assert!(a.read_time > 0);
    let c = list.iter().find(|c| c.peer == "carol").unwrap();
    assert_eq!(c.unread, 1, "other conversations untouched");

    // Both of alice's devices get the read report.
    for dev in [&mut alice, &mut alice_pc] {
        let ev = dev.wait_for(|e| matches!(e, Event::ReadReceipt(_))).await;
        let Event::ReadReceipt(r) = ev else {
            unreachable!()
        };
        assert_eq!(r.reader, "bob");
        assert_eq!(r.peer, "alice");
    }
    let alice_view = alice.session.conversations().await.unwrap();
    let b = alice_view.iter().find(|c| c.peer == "bob").unwrap();
    assert!(b.peer_read_time > 0);
    assert_eq!(b.unread, 1, "alice has bob's reply unread");
}
