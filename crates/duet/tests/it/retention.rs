//! The retention sweep, driven by a manual clock (no sleeps).

use std::time::Duration;

use duet_server::ManualClock;
use duet_testkit::TestServer;

#[tokio::test]
async fn retention_sweep_removes_expired_entries_only() {
    let clock = ManualClock::starting_now();
    let server = TestServer::builder()
        .clock(clock.clone())
        .config(|c| {
            c.retention = Some(Duration::from_secs(7 * 24 * 3600));
            c.sweep_chunk = 3; // several rounds
        })
        .spawn()
        .await;
    let (bob, _) = server.login_raw("bob", "phone").await;
    let (alice, _) = server.login_raw("alice", "phone").await;
    let (carol, _) = server.login_raw("carol", "phone").await;
    for i in 0..10 {
        alice
            .send(
                "bob",
                vec![duet_proto::MsgElem::text(format!("old{i}"))],
                Default::default(),
            )
            .await
            .unwrap();
    }
    carol
        .send(
            "bob",
            vec![duet_proto::MsgElem::text("old carol")],
            Default::default(),
        )
        .await
        .unwrap();
    clock.advance_secs(6 * 24 * 3600);
    alice
        .send(
            "bob",
            vec![duet_proto::MsgElem::text("new")],
            Default::default(),
        )
        .await
        .unwrap();
    let head_before = bob.sync(0).await.unwrap().1;

    // Not yet expired: nothing to do.
    let r = server.services().sweep_once().await.unwrap();
    assert_eq!(r.total(), 0);

    clock.advance_secs(2 * 24 * 3600); // old ones are now 8 days old, "new" 2 days
    let r = server.services().sweep_once().await.unwrap();
    assert!(r.entries >= 11 && r.messages == 11, "{r:?}");
    let (page, _) = bob.history("alice", None, 100).await.unwrap();
    let texts: Vec<_> = page
        .iter()
        .map(|i| i.message.body[0].as_text().unwrap().into_owned())
        .collect();
    assert_eq!(texts, ["new"]);
    let (entries, head, _) = bob.sync(0).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(head, head_before, "numbering is not rewound");
    let convs = bob.all_conversations().await.unwrap();
    assert_eq!(
        convs.len(),
        1,
        "carol's conversation expired with its last message"
    );
    assert_eq!(convs[0].peer, "alice");
    // New entries continue the numbering.
    let ack = bob
        .send(
            "alice",
            vec![duet_proto::MsgElem::text("next")],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(ack.entry, Some(head_before + 1));
}
