//! Service errors, and their one mapping to Tencent-style codes (at the edge).

use duet_proto::{BodyError, codes};
use duet_store::StoreError;
use duet_usersig::UserSigError;

/// Why a service call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// UserSig check failed.
    #[error(transparent)]
    Sig(#[from] UserSigError),
    /// The message body is invalid or too large.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A request parameter is invalid.
    #[error("bad parameter: {0}")]
    BadParams(String),
    /// The recipient is malformed or does not exist.
    #[error("unknown recipient {0:?}")]
    UnknownRecipient(String),
    /// A `MsgKey` that does not parse.
    #[error("bad MsgKey: {0}")]
    BadMsgKey(String),
    /// The message is not found (or not the caller's).
    #[error("message not found")]
    MessageNotFound,
    /// Already recalled.
    #[error("message already recalled")]
    AlreadyRecalled,
    /// Recall window passed.
    #[error("recall window of {0} seconds has passed")]
    RecallWindowPassed(u64),
    /// The server is shutting down.
    #[error("server is shutting down; retry on another node or later")]
    Unavailable,
    /// Too many writes are waiting for the store.
    #[error("server is overloaded (too many writes waiting); retry later")]
    Overloaded,
    /// Storage failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The Tencent-style error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            ServiceError::Sig(e) => e.code(),
            ServiceError::Body(e) => e.code(),
            ServiceError::BadParams(_) => codes::BAD_PARAMS,
            ServiceError::UnknownRecipient(_) => codes::UNKNOWN_RECIPIENT,
            ServiceError::BadMsgKey(_) => codes::BAD_MSG_KEY,
            ServiceError::MessageNotFound => codes::MSG_NOT_FOUND,
            ServiceError::AlreadyRecalled => codes::ALREADY_RECALLED,
            ServiceError::RecallWindowPassed(_) => codes::RECALL_WINDOW_PASSED,
            ServiceError::Unavailable | ServiceError::Overloaded => codes::UNAVAILABLE,
            ServiceError::Internal(_) => codes::INTERNAL,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownAccount(u) => ServiceError::UnknownRecipient(u),
            StoreError::MessageNotFound => ServiceError::MessageNotFound,
            StoreError::AlreadyRecalled => ServiceError::AlreadyRecalled,
            StoreError::RecallWindowPassed => ServiceError::RecallWindowPassed(0),
            StoreError::Closed => ServiceError::Unavailable,
            StoreError::Overloaded => ServiceError::Overloaded,
            StoreError::Backend(m) => ServiceError::Internal(m),
        }
    }
}
