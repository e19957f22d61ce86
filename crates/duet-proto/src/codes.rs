//! Error codes. Tencent's numbering where it defines one; see `docs/protocol.md`.

/// Success.
pub const OK: u32 = 0;
/// Sender's signature problem on send (REST `sendmsg`).
pub const SEND_BAD_SIG: u32 = 20001;
/// Bad or unknown recipient UserID.
pub const UNKNOWN_RECIPIENT: u32 = 20003;
/// Rejected by the before-send webhook.
pub const REJECTED_BY_WEBHOOK: u32 = 20006;
/// The recipient blocked the sender (when configured to report it).
pub const BLOCKED: u32 = 20007;
/// Recall window has passed.
pub const RECALL_WINDOW_PASSED: u32 = 20016;
/// Message to recall not found.
pub const MSG_NOT_FOUND: u32 = 20022;
/// Message already recalled.
pub const ALREADY_RECALLED: u32 = 20023;
/// Message content over 8,000 bytes.
pub const CONTENT_TOO_LARGE: u32 = 80002;
/// Not logged in (client SDK code).
pub const NOT_LOGGED_IN: u32 = 6014;
/// Kicked offline by another login (client SDK code).
pub const KICKED_OFFLINE: u32 = 6208;
/// Unknown request path or frame type.
pub const UNKNOWN_COMMAND: u32 = 60009;
/// JSON parse failure.
pub const BAD_JSON: u32 = 90001;
/// `MsgBody` invalid or not an array.
pub const BAD_MSG_BODY: u32 = 90002;
/// Bad element format.
pub const BAD_ELEMENT: u32 = 90010;
/// Bad `MsgKey`.
pub const BAD_MSG_KEY: u32 = 90054;
/// Internal error.
pub const INTERNAL: u32 = 91000;
/// UserSig expired.
pub const SIG_EXPIRED: u32 = 70001;
/// UserSig empty.
pub const SIG_EMPTY: u32 = 70002;
/// UserSig malformed.
pub const SIG_MALFORMED: u32 = 70003;
/// UserSig HMAC mismatch.
pub const SIG_HMAC: u32 = 70009;
/// UserSig identifier mismatch.
pub const SIG_IDENTIFIER: u32 = 70013;
/// UserSig SDKAppID mismatch.
pub const SIG_SDKAPPID: u32 = 70014;
/// Bad parameters (login).
pub const BAD_PARAMS: u32 = 70402;
/// Server is shutting down or overloaded; retry.
pub const UNAVAILABLE: u32 = 70500;
