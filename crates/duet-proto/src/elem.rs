//! `MsgBody` elements, exactly as Tencent's REST `MsgBody` JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{codes, limits};

/// One `MsgBody` element: `{"MsgType": "...", "MsgContent": {...}}`.
///
/// `MsgContent` is kept as JSON so that every field a client sends survives
/// the round trip; [`validate_body`] checks the fields each type requires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgElem {
    /// `TIMTextElem`, `TIMFaceElem`, `TIMLocationElem`, `TIMCustomElem`,
    /// `TIMImageElem`, `TIMSoundElem`, `TIMFileElem`, `TIMVideoFileElem`, `TIMRelayElem`.
    #[serde(rename = "MsgType")]
    pub msg_type: String,
    /// The element's fields.
    #[serde(rename = "MsgContent")]
    pub msg_content: Value,
}

impl MsgElem {
    /// A `TIMTextElem`.
    pub fn text(text: impl Into<String>) -> Self {
        MsgElem {
            msg_type: "TIMTextElem".into(),
            msg_content: serde_json::json!({ "Text": text.into() }),
        }
    }

    /// A `TIMCustomElem` with `Data`, `Desc` and `Ext`.
    pub fn custom(
        data: impl Into<String>,
        desc: impl Into<String>,
        ext: impl Into<String>,
    ) -> Self {
        MsgElem {
            msg_type: "TIMCustomElem".into(),
            msg_content: serde_json::json!({ "Data": data.into(), "Desc": desc.into(), "Ext": ext.into() }),
        }
    }

    /// The text of a `TIMTextElem`, if this is one.
    pub fn as_text(&self) -> Option<&str> {
        if self.msg_type == "TIMTextElem" {
            self.msg_content.get("Text").and_then(Value::as_str)
        } else {
            None
        }
    }
}

/// Why a `MsgBody` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Empty body or too many elements (90002).
    #[error("MsgBody must hold 1 to {max} elements", max = limits::MAX_ELEMENTS)]
    BadLength,
    /// An element is malformed (90010).
    #[error("MsgBody[{index}] ({msg_type}): {reason}")]
    BadElement {
        /// Position in the body.
        index: usize,
        /// Its `MsgType`.
        msg_type: String,
        /// What is wrong.
        reason: String,
    },
    /// More than one `TIMCustomElem` (90010).
    #[error("MsgBody may hold at most one TIMCustomElem")]
    TwoCustomElems,
    /// Content over the limit (80002).
    #[error("message content is {size} bytes, over the {max}-byte limit", max = limits::MAX_CONTENT_BYTES)]
    TooLarge {
        /// Measured size.
        size: usize,
    },
}

impl BodyError {
    /// The Tencent-style error code.
    pub fn code(&self) -> u32 {
        match self {
            BodyError::BadLength => codes::BAD_MSG_BODY,
            BodyError::BadElement { .. } | BodyError::TwoCustomElems => codes::BAD_ELEMENT,
            BodyError::TooLarge { .. } => codes::CONTENT_TOO_LARGE,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Num,
}

/// Required fields per element type (others are optional and kept as sent).
fn required(msg_type: &str) -> Option<&'static [(&'static str, Kind)]> {
    use Kind::*;
    Some(match msg_type {
        "TIMTextElem" => &[("Text", Str)],
        "TIMFaceElem" => &[("Index", Num)],
        "TIMLocationElem" => &[("Latitude", Num), ("Longitude", Num)],
        "TIMCustomElem" => &[],
        "TIMSoundElem" => &[("Url", Str)],
        "TIMImageElem" => &[("ImageInfoArray", Str)], // checked specially below
        "TIMFileElem" => &[("Url", Str)],
        "TIMVideoFileElem" => &[("VideoUrl", Str)],
        "TIMRelayElem" => &[],
        _ => return None,
    })
}

/// Fields that, when present, must be strings.
const STRING_FIELDS: &[&str] = &[
    "Text",
    "Desc",
    "Data",
    "Ext",
    "Sound",
    "Url",
    "UUID",
    "FileName",
    "VideoUrl",
    "VideoUUID",
    "VideoFormat",
    "ThumbUrl",
    "ThumbUUID",
    "ThumbFormat",
    "Title",
    "CompatibleText",
];

fn check_element(index: usize, e: &MsgElem) -> Result<(), BodyError> {
    let bad = |reason: String| BodyError::BadElement {
        index,
        msg_type: e.msg_type.clone(),
        reason,
    };
    let Some(req) = required(&e.msg_type) else {
        return Err(bad("unknown MsgType".into()));
    };
    let Some(obj) = e.msg_content.as_object() else {
        return Err(bad("MsgContent must be an object".into()));
    };
    if e.msg_type == "TIMImageElem" {
        match obj.get("ImageInfoArray") {
            Some(Value::Array(items)) if !items.is_empty() => {
                for item in items {
                    if !item.get("URL").is_some_and(Value::is_string) {
                        return Err(bad("each ImageInfoArray item needs a URL string".into()));
                    }
                }
            }
            _ => return Err(bad("ImageInfoArray must be a non-empty array".into())),
        }
    } else {
        for (field, kind) in req {
            let ok = match (obj.get(*field), kind) {
                (Some(v), Kind::Str) => v.is_string(),
                (Some(v), Kind::Num) => v.is_number(),
                (None, _) => false,
            };
            if !ok {
                let what = match kind {
                    Kind::Str => "a string",
                    Kind::Num => "a number",
                };
                return Err(bad(format!("{field} is required and must be {what}")));
            }
        }
    }
    for field in STRING_FIELDS {
        if obj.get(*field).is_some_and(|v| !v.is_string()) {
            return Err(bad(format!("{field} must be a string")));
        }
    }
    Ok(())
}

/// Validates a `MsgBody` and the content size (body JSON + `CloudCustomData`)
/// against `max_content` bytes. Returns the serialized body on success, so the
/// caller does not serialize it twice.
pub fn validate_body(
    body: &[MsgElem],
    cloud_custom_data: &str,
    max_content: usize,
) -> Result<String, BodyError> {
    if body.is_empty() || body.len() > limits::MAX_ELEMENTS {
        return Err(BodyError::BadLength);
    }
    let mut customs = 0;
    for (i, e) in body.iter().enumerate() {
        check_element(i, e)?;
        if e.msg_type == "TIMCustomElem" {
            customs += 1;
        }
    }
    if customs > 1 {
        return Err(BodyError::TwoCustomElems);
    }
    let json = serde_json::to_string(body).map_err(|e| BodyError::BadElement {
        index: 0,
        msg_type: String::new(),
        reason: e.to_string(),
    })?;
    let size = json.len() + cloud_custom_data.len();
    if size > max_content {
        return Err(BodyError::TooLarge { size });
    }
    Ok(json)
}
