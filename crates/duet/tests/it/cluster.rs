//! Three nodes on one PostgreSQL schema, joined by the NATS bus (the real
//! servers on 127.0.0.1:5432 and :4222; the test fails if they are missing).

use duet_sdk::Event;
use duet_testkit::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_three_nodes_get_messages_read_reports_and_recalls() {
    let cluster = TestCluster::start(3).await;
    let mut alice = cluster
        .node(0)
        .client("alice")
        .device("phone")
        .connect()
        .await;
    let mut bob_phone = cluster
        .node(1)
        .client("bob")
        .device("phone")
        .platform("iPhone")
        .connect()
        .await;
    let mut bob_laptop = cluster
        .node(2)
        .client("bob")
        .device("laptop")
        .platform("Mac")
        .connect()
        .await;
    let mut alice_web = cluster
        .node(2)
        .client("alice")
        .device("web")
        .platform("Web")
        .connect()
        .await;
    for c in [&mut alice, &mut bob_phone, &mut bob_laptop, &mut alice_web] {
        c.until_synced().await;
    }
    // Subscriptions are set up asynchronously after login; give the bus a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let ack = alice
        .session
        .send_text("bob", "across nodes")
        .await
        .unwrap();
    for dev in [&mut bob_phone, &mut bob_laptop, &mut alice_web] {
        let m = dev.next_message().await;
        assert_eq!(m.msg_key, ack.msg_key);
    }
    let reply = bob_laptop
        .session
        .send_text("alice", "got it")
        .await
        .unwrap();
    for dev in [&mut alice, &mut alice_web, &mut bob_phone] {
        assert_eq!(dev.next_message().await.msg_key, reply.msg_key);
    }

    bob_phone.session.mark_read("alice").await.unwrap();
    for dev in [&mut alice, &mut alice_web, &mut bob_laptop] {
        let ev = dev.wait_for(|e| matches!(e, Event::ReadReceipt(_))).await;
        let Event::ReadReceipt(r) = ev else {
            unreachable!()
        };
        assert_eq!((r.reader.as_str(), r.peer.as_str()), ("bob", "alice"));
    }

    alice.session.recall(&ack.msg_key).await.unwrap();
    for dev in [&mut bob_phone, &mut bob_laptop, &mut alice_web] {
        let ev = dev
            .wait_for(|e| matches!(e, Event::MessageRecalled(_)))
            .await;
        let Event::MessageRecalled(r) = ev else {
            unreachable!()
        };
        assert_eq!(r.msg_key, ack.msg_key);
    }

    // History and conversations read through any node agree.
    let mut views = Vec::new();
    for i in 0..3 {
        let (conn, _) = cluster
            .node(i)
            .login_raw("bob", &format!("reader{i}"))
            .await;
        let (page, _) = conn.history("alice", None, 10).await.unwrap();
        let convs = conn.all_conversations().await.unwrap();
        views.push((page, convs));
    }
    assert_eq!(views[0].0.len(), 2);
    assert!(views[0].0[1].message.is_recalled());
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_shared_across_nodes_and_expires_with_a_dead_node() {
    let mut cluster = TestCluster::start(3).await;
    let mut phone = cluster
        .node(1)
        .client("bob")
        .device("phone")
        .platform("iPhone")
        .connect()
        .await;
    let mut laptop = cluster
        .node(2)
        .client("bob")
        .device("laptop")
        .platform("Mac")
        .connect()
        .await;
    phone.until_synced().await;
    laptop.until_synced().await;
    let users = vec!["bob".to_string(), "nobody".to_string()];
    let services = cluster.node(0).services().clone();
    let wait_for = |want: Vec<(&'static str, &'static str)>| {
        let services = services.clone();
        let users = users.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let mut got: Vec<(String, String)> = services
                    .online_devices(&users)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.node_id, d.platform))
                    .collect();
                got.sort();
                let want: Vec<(String, String)> = want
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect();
                if got == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "presence {got:?}, want {want:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    // Seen from node 0: bob's devices on nodes 1 and 2.
    wait_for(vec![("node1", "iPhone"), ("node2", "Mac")]).await;
    // The laptop logs out: gone.
    laptop.session.connection().logout().await.unwrap();
    wait_for(vec![("node1", "iPhone")]).await;
    // Node 1 stops reporting (as if it died): its devices expire after the TTL.
    cluster.node_mut(1).stop_presence();
    wait_for(vec![]).await;
    cluster.stop().await;
}

/// On PostgreSQL too, a device's pipelined sends are committed in the order
/// they were issued (each runs in its own pooled transaction, so the gateway
/// keeps them in line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_on_postgres_keep_their_order() {
    let cluster = TestCluster::start(1).await;
    let node = cluster.node(0);
    let (_bob, _) = node.login_raw("bob", "d").await;
    let mut senders = Vec::new();
    for s in 0..4 {
        senders.push(node.login_raw(&format!("s{s}"), "d").await.0);
    }
    crate::delivery::assert_sends_commit_in_issue_order(&senders, 40).await;
    cluster.stop().await;
}
