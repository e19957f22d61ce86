//! `offline`: a user comes back to M messages over C conversations. Time
//! from login to `sync_finished`, and messages per second.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use duet_proto::EntryKind;
use duet_sdk::{Connection, Push};

use crate::client::{self, DEVICE, PLATFORM, Target};
use crate::fill::{FillSender, fill};
use crate::report::Summary;

/// Shape of an offline run.
#[derive(Debug, Clone)]
pub struct OfflineSpec {
    /// Messages waiting.
    pub messages: u64,
    /// Over this many conversations (senders).
    pub conversations: u64,
    /// Sends in flight per sender while filling.
    pub window: usize,
}

/// Runs the scenario.
pub async fn run(target: &Target, spec: &OfflineSpec, s: &mut Summary) -> Result<()> {
    if spec.conversations == 0 || spec.messages < spec.conversations {
        bail!("need at least one message per conversation");
    }
    let me = format!("{}-fr", target.prefix);
    let my_sig = target.sig(&me);

    // 1. The user has been here before: its device is up to date at `head`.
    let mut c = client::login(target.first_server(), &me, &my_sig)
        .await
        .context("first login of the returning user")?;
    let cursor = c.head;
    c.conn.close().await;
    if let Some(mut rx) = c.pushes.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(p) = rx.recv().await {
                if p == Push::Closed {
                    break;
                }
            }
        })
        .await;
    }
    drop(c);

    // 2. While it is away, C peers write M messages to it.
    let names: Vec<String> = (0..spec.conversations as usize)
        .map(|j| target.user("fs", j))
        .collect();
    let senders = client::login_all(target, names, 64).await?;
    let per = spec.messages / spec.conversations;
    let extra = spec.messages % spec.conversations;
    let fills: Vec<FillSender> = senders
        .iter()
        .enumerate()
        .map(|(j, c)| FillSender {
            conn: c.conn.clone(),
            to: me.clone(),
            count: per + u64::from((j as u64) < extra),
        })
        .collect();
    let filled = fill(&fills, spec.window).await;
    s.add_errors(filled.errors);
    s.fill_per_sec = Some(filled.acked as f64 / filled.elapsed.as_secs_f64().max(1e-9));
    if filled.acked != spec.messages {
        s.notes.push(format!(
            "only {} of {} messages were written",
            filled.acked, spec.messages
        ));
    }
    drop(fills);
    for c in &senders {
        c.conn.close().await;
    }
    drop(senders);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. It comes back: connect, log in, sync from its cursor.
    let t_connect = Instant::now();
    let (conn, _pushes) = Connection::connect(target.first_server()).await?;
    let t_login = Instant::now();
    conn.login(&me, &my_sig, DEVICE, PLATFORM)
        .await
        .context("logging in again")?;
    let (entries, _cursor, _epoch) = conn.sync(cursor).await.context("syncing")?;
    let t_done = Instant::now();
    // Then the conversation list, as the SDK's session does before it reports
    // "sync finished".
    let conversations = conn
        .all_conversations()
        .await
        .context("reading the conversation list")?;
    let t_listed = Instant::now();
    let synced = entries
        .iter()
        .filter(|e| matches!(&e.kind, EntryKind::Message { message } if message.from != me))
        .count() as u64;
    conn.close().await;

    let login_to_synced = t_done.duration_since(t_login);
    s.measured_secs = login_to_synced.as_secs_f64();
    s.messages = Some(filled.acked);
    s.synced = Some(synced);
    s.login_to_synced_ms = Some(login_to_synced.as_secs_f64() * 1000.0);
    s.connect_to_synced_ms = Some(t_done.duration_since(t_connect).as_secs_f64() * 1000.0);
    s.conversation_list_ms = Some(t_listed.duration_since(t_done).as_secs_f64() * 1000.0);
    s.conversations = Some(conversations.len() as u64);
    s.login_to_sync_finished_ms = Some(t_listed.duration_since(t_login).as_secs_f64() * 1000.0);
    let unread: u64 = conversations.iter().map(|c| u64::from(c.unread)).sum();
    if conversations.len() as u64 != spec.conversations {
        s.notes.push(format!(
            "the conversation list holds {} conversations, not {}",
            conversations.len(),
            spec.conversations
        ));
    }
    if unread != filled.acked.min(spec.conversations * 250) {
        s.notes.push(format!(
            "the conversation list counts {unread} unread messages for {} written",
            filled.acked
        ));
    }
    s.messages_per_sec = Some(synced as f64 / login_to_synced.as_secs_f64().max(1e-9));
    if synced < filled.acked {
        s.notes.push(format!(
            "sync handed over {synced} of {} messages: the server keeps only the newest \
             sync_per_conversation (default 100) per conversation in a sync",
            filled.acked
        ));
    }
    Ok(())
}
