//! The Duet client SDK.
//!
//! - [`Connection`]: the protocol layer (one WebSocket, request/response by
//!   `req_id`, server pushes on a channel). The load generator uses this.
//! - [`Session`]: a logged-in user on one device: offline sync from a cursor
//!   kept in a local SQLite [`Cache`], then live entries, as [`Event`]s in
//!   timeline order, exactly once per device.

mod cache;
mod conn;
mod session;

pub use cache::Cache;
pub use conn::{Connection, Push, SendOptions, SentAck, ws_url};
pub use session::{Event, Session, SessionOptions};

pub use duet_proto as proto;

/// Errors of the SDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// The server refused the request.
    #[error("server error {code}: {info}")]
    Server {
        /// Tencent-style code.
        code: u32,
        /// Readable reason.
        info: String,
    },
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// Could not connect or the socket failed.
    #[error("connection failed: {0}")]
    Io(String),
    /// The server sent something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local cache failed.
    #[error("local cache: {0}")]
    Cache(String),
}

impl SdkError {
    /// The error code (server code, or 0 for local errors).
    pub fn code(&self) -> u32 {
        match self {
            SdkError::Server { code, .. } => *code,
            _ => 0,
        }
    }
}

/// Result alias.
pub type SdkResult<T> = Result<T, SdkError>;
