//! The NATS bus: nodes carry live-delivery hints to each other over NATS core
//! pub/sub (no JetStream: a lost hint is healed by timeline sync, Law 4).
//!
//! Subjects: `duet.<namespace>.u.<hex(UserID)>` (namespace: the SDKAppID), one per user. A node
//! subscribes to a user's subject while it holds at least one device of that
//! user, and publishes every committed entry for a user to that subject, so
//! NATS routes each hint only to the nodes that need it. Each payload starts
//! with the publishing node's id and a newline; a node ignores its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use duet_server::{Bus, LocalDelivery};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bus errors.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not connect to NATS.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

enum Cmd {
    Publish(String, Bytes),
    Interest(String),
    Disinterest(String),
}

/// Counters of the bus.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Hints published.
    pub published: AtomicU64,
    /// Hints received from other nodes and delivered locally.
    pub received: AtomicU64,
    /// Publishes that failed (NATS down); healed by sync.
    pub failed: AtomicU64,
}

/// A NATS-backed [`Bus`].
pub struct NatsBus {
    tx: mpsc::UnboundedSender<Cmd>,
    stats: Arc<BusStats>,
    task: JoinHandle<()>,
}

fn subject(prefix: &str, user: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + user.len() * 2);
    s.push_str(prefix);
    for b in user.bytes() {
        s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
    }
    s
}

impl NatsBus {
    /// Connects to NATS at `url` as node `node_id`; frames for local devices
    /// that arrive from other nodes go to `local`. `namespace` separates apps
    /// (and test runs) sharing one NATS server: the SDKAppID in production.
    pub async fn connect(
        url: &str,
        namespace: &str,
        node_id: &str,
        local: Arc<dyn LocalDelivery>,
    ) -> Result<NatsBus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("duet-node-{node_id}"))
            .retry_on_initial_connect()
            .connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        // Fail fast if the server is not there at start.
        tokio::time::timeout(std::time::Duration::from_secs(5), client.flush())
            .await
            .map_err(|_| BusError::Connect {
                url: url.to_string(),
                reason: "no answer within 5 s".into(),
            })?
            .map_err(|e| BusError::Connect {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BusStats::default());
        let prefix = format!("duet.{namespace}.u.");
        let origin = Bytes::from(format!("{node_id}\n"));
        let task = tokio::spawn(run(client, rx, prefix, origin, local, stats.clone()));
        Ok(NatsBus { tx, stats, task })
    }

    /// The bus counters.
    pub fn stats(&self) -> &Arc<BusStats> {
        &self.stats
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bus for NatsBus {
    fn publish(&self, user: &str, frame: &Utf8Bytes) {
        let _ = self.tx.send(Cmd::Publish(
            user.to_string(),
            Bytes::copy_from_slice(frame.as_bytes()),
        ));
    }
    fn interest(&self, user: &str) {
        let _ = self.tx.send(Cmd::Interest(user.to_string()));
    }
    fn disinterest(&self, user: &str) {
        let _ = self.tx.send(Cmd::Disinterest(user.to_string()));
    }
}

async fn run(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    prefix: String,
    origin: Bytes,
    local: Arc<dyn LocalDelivery>,
    stats: Arc<BusStats>,
) {
    let mut subs: HashMap<String, JoinHandle<()>> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Publish(user, frame) => {
                let mut payload = Vec::with_capacity(origin.len() + frame.len());
                payload.extend_from_slice(&origin);
                payload.extend_from_slice(&frame);
                match client
                    .publish(subject(&prefix, &user), payload.into())
                    .await
                {
                    Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!("bus publish failed (healed by sync): {e}");
                        stats.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            Cmd::Interest(user) => {
                if subs.contains_key(&user) {
                    continue;
                }
                let sub = match client.subscribe(subject(&prefix, &user)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("bus subscribe for {user:?} failed: {e}");
                        continue;
                    }
                };
                let local = local.clone();
                let origin = origin.clone();
                let stats = stats.clone();
                let u = user.clone();
                let h = tokio::spawn(async move {
                    let mut sub = sub;
                    while let Some(msg) = sub.next().await {
                        let p = &msg.payload;
                        if p.starts_with(&origin) {
                            continue; // our own publish: already delivered locally
                        }
                        let Some(nl) = p.iter().position(|b| *b == b'\n') else {
                            continue;
                        };
                        let Ok(text) = Utf8Bytes::try_from(p.slice(nl + 1..)) else {
                            continue;
                        };
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        local.deliver_local(&u, text);
                    }
                });
                subs.insert(user, h);
            }
            Cmd::Disinterest(user) => {
                if let Some(h) = subs.remove(&user) {
                    // Dropping the subscriber (with its task) unsubscribes.
                    h.abort();
                }
            }
        }
    }
    for (_, h) in subs {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_are_safe_tokens() {
        assert_eq!(subject("duet.1.u.", "a.b c*"), "duet.1.u.612e6220632a");
    }
}
