//! The seam between nodes. After a commit, a node delivers live hints to its
//! own devices through the [`Hub`](crate::hub::Hub) and hands the same frame
//! to the [`Bus`], which carries it to the other nodes holding devices of that
//! user. A lost publish is healed by timeline sync (Law 4): devices learn the
//! head on every heartbeat and sync when they are behind, so a bus needs no
//! durability.

use axum::extract::ws::Utf8Bytes;

/// Cross-node delivery. Implementations never block the caller.
pub trait Bus: Send + Sync + 'static {
    /// Carries `frame` to the other nodes holding devices of `user`. Best effort.
    fn publish(&self, user: &str, frame: &Utf8Bytes);
    /// This node now holds a device of `user`: start receiving its frames.
    fn interest(&self, user: &str);
    /// This node no longer holds a device of `user`.
    fn disinterest(&self, user: &str);
}

/// Where a bus hands frames that arrive from other nodes.
pub trait LocalDelivery: Send + Sync + 'static {
    /// Queues `frame` to every local device of `user`.
    fn deliver_local(&self, user: &str, frame: Utf8Bytes);
}
