//! Shared presence across nodes: the hub reports every device that logs in
//! or leaves; a reporter task writes the changes to a [`PresenceStore`] in
//! batches and keeps this node marked alive. A node that dies stops
//! reporting, and its devices expire after the presence TTL.

use std::sync::Arc;
use std::time::Duration;

use duet_store::{PresenceChange, PresenceDevice, PresenceStore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;

/// Most changes written in one update.
const MAX_BATCH: usize = 1000;

/// Where the hub sends presence changes.
#[derive(Clone)]
pub struct PresenceSink {
    node: Arc<str>,
    tx: mpsc::UnboundedSender<PresenceChange>,
}

impl PresenceSink {
    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A device of `user` connected here.
    pub fn online(&self, user: &str, conn_id: u64, device_id: &str, platform: &str) {
        let _ = self.tx.send(PresenceChange::Online(PresenceDevice {
            user_id: user.to_string(),
            node_id: self.node.to_string(),
            conn_id,
            device_id: device_id.to_string(),
            platform: platform.to_string(),
        }));
    }

    /// A connection here closed.
    pub fn offline(&self, conn_id: u64) {
        let _ = self.tx.send(PresenceChange::Offline { conn_id });
    }
}

/// Shared presence settings and the store behind them.
#[derive(Clone)]
pub struct SharedPresence {
    /// The store.
    pub store: Arc<dyn PresenceStore>,
    /// A node not heard from for this long counts as dead.
    pub ttl: Duration,
}

/// Starts the reporter for `node`: forgets the node's earlier life, then
/// writes changes every `interval` (and at least a heartbeat). Returns the
/// sink for the hub and the task.
pub async fn start_reporter(
    store: Arc<dyn PresenceStore>,
    node: &str,
    clock: Arc<dyn Clock>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(PresenceSink, JoinHandle<()>), duet_store::StoreError> {
    store.presence_node_start(node, clock.now_ms()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink = PresenceSink {
        node: node.into(),
        tx,
    };
    let node = node.to_string();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<PresenceChange> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            while pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => pending.push(c),
                    Err(_) => break,
                }
            }
            let batch = std::mem::take(&mut pending);
            if let Err(e) = store
                .presence_update(&node, batch.clone(), clock.now_ms())
                .await
            {
                tracing::warn!("presence update failed, will retry: {e}");
                pending = batch;
            }
        }
    });
    Ok((sink, task))
}
