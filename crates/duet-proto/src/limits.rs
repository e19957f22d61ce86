//! Limits named by the reference and by the protocol.

/// UserID length in bytes.
pub const MAX_USER_ID_BYTES: usize = 32;
/// Client message content (`MsgBody` JSON plus `CloudCustomData`), bytes (error 80002).
pub const MAX_CONTENT_BYTES: usize = 8_000;
/// Largest client WebSocket frame or message the server accepts, bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest REST JSON body, bytes (error 93000).
pub const MAX_REST_BODY_BYTES: usize = 12 * 1024;
/// Elements in one `MsgBody`.
pub const MAX_ELEMENTS: usize = 32;
/// Largest history page a client may ask for.
pub const MAX_HISTORY_PAGE: u32 = 100;
/// Largest conversation page a client may ask for.
pub const MAX_CONVERSATION_PAGE: u32 = 100;
/// Device id length in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 64;
/// Nickname length in bytes (`Tag_Profile_IM_Nick`).
pub const MAX_NICK_BYTES: usize = 500;
/// Face URL length in bytes (`Tag_Profile_IM_Image`).
pub const MAX_FACE_URL_BYTES: usize = 500;
