//! kill -9 right after acks: every acked message is there after a restart, none twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use duet_proto::MsgElem;
use duet_sdk::{Connection, SendOptions};
use duet_testkit::{SDKAPPID, SECRET};
use duet_usersig::UserSigKey;

use crate::serve_proc::ServeProc;

async fn login(url: &str, user: &str, device: &str) -> Connection {
    let key = UserSigKey::new(SDKAPPID, SECRET);
    let (c, _) = Connection::connect(url).await.expect("connect");
    c.login(user, &key.issue(user, 3600), device, "Linux")
        .await
        .expect("login");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_acks_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = ["--sdkappid", "1400000000", "--secret-key", SECRET];
    let server = ServeProc::start(dir.path(), &app);
    let bob = login(&server.url, "bob", "phone").await;
    bob.close().await;

    // Four senders pipeline sends; the server is killed once 400 acks are in.
    let acked: Arc<Mutex<Vec<(String, u32, u32)>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    for s in 0..4u32 {
        let conn = login(&server.url, "alice", &format!("dev{s}")).await;
        let acked = acked.clone();
        let enough = enough_tx.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000u32 {
                let opts = SendOptions {
                    msg_seq: Some(s),
                    msg_random: Some(i),
                    ..Default::default()
                };
                match conn
                    .send("bob", vec![MsgElem::text(format!("{s}-{i}"))], opts)
                    .await
                {
                    Ok(ack) => {
                        let mut a = acked.lock().unwrap();
                        a.push((ack.msg_key, s, i));
                        if a.len() >= 400 {
                            let _ = enough.try_send(());
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    enough_rx.recv().await.unwrap();
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);

    let server = ServeProc::start(dir.path(), &app);
    let bob = login(&server.url, "bob", "laptop").await;
    let mut keys = Vec::new();
    let mut seqs = Vec::new();
    let mut before = None;
    loop {
        let (page, complete) = bob.history("alice", before, 100).await.unwrap();
        keys.extend(page.iter().map(|i| i.message.msg_key.clone()));
        seqs.extend(page.iter().map(|i| i.seq));
        before = page.last().map(|i| i.seq);
        if complete {
            break;
        }
    }
    let stored: HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(stored.len(), keys.len(), "no message stored twice");
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, _, _)| !stored.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acked messages lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // bob's timeline is gap-free from 1 (all of its entries are these messages).
    let (_, head, _) = bob.sync(0).await.unwrap();
    seqs.sort();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    // A retry of an acked send after the restart is recognised.
    let (key, s, i) = acked[0].clone();
    let alice = login(&server.url, "alice", "dev0").await;
    let opts = SendOptions {
        msg_seq: Some(s),
        msg_random: Some(i),
        ..Default::default()
    };
    let again = alice
        .send("bob", vec![MsgElem::text(format!("{s}-{i}"))], opts)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.msg_key, key);
    assert_eq!(server.terminate().code(), Some(0), "clean exit on SIGTERM");
}
