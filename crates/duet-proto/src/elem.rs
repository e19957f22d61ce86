//! `MsgBody` elements, exactly as Tencent's REST `MsgBody` JSON.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{codes, limits};

/// One `MsgBody` element: `{"MsgType": "...", "MsgContent": {...}}`.
///
/// `MsgContent` is kept as the JSON text it came in: every field a client
/// sends survives the round trip, reading it builds no tree, and writing it
/// is a copy. [`validate_body`] checks the fields each type requires;
/// [`MsgElem::content`] parses it when a caller wants the fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgElem {
    /// `TIMTextElem`, `TIMFaceElem`, `TIMLocationElem`, `TIMCustomElem`,
    /// `TIMImageElem`, `TIMSoundElem`, `TIMFileElem`, `TIMVideoFileElem`, `TIMRelayElem`.
    #[serde(rename = "MsgType")]
    pub msg_type: String,
    /// The element's fields, as JSON text.
    #[serde(rename = "MsgContent")]
    pub msg_content: Box<RawValue>,
}

/// Elements are equal when their type and content text are.
impl PartialEq for MsgElem {
    fn eq(&self, other: &Self) -> bool {
        self.msg_type == other.msg_type && self.msg_content.get() == other.msg_content.get()
    }
}

impl MsgElem {
    /// An element of `msg_type` with `content` (normally a JSON object).
    pub fn new(msg_type: impl Into<String>, content: &Value) -> Self {
        MsgElem {
            msg_type: msg_type.into(),
            // A `Value` always serializes.
            msg_content: serde_json::value::to_raw_value(content)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
        }
    }

    /// A `TIMTextElem`.
    pub fn text(text: impl Into<String>) -> Self {
        MsgElem::new("TIMTextElem", &serde_json::json!({ "Text": text.into() }))
    }

    /// A `TIMCustomElem` with `Data`, `Desc` and `Ext`.
    pub fn custom(
        data: impl Into<String>,
        desc: impl Into<String>,
        ext: impl Into<String>,
    ) -> Self {
        MsgElem::new(
            "TIMCustomElem",
            &serde_json::json!({ "Data": data.into(), "Desc": desc.into(), "Ext": ext.into() }),
        )
    }

    /// The content's fields, parsed (`None` if it is not a JSON object).
    pub fn content(&self) -> Option<serde_json::Map<String, Value>> {
        serde_json::from_str(self.msg_content.get()).ok()
    }

    /// The string field `name` of the content, if it has one (parsed
    /// without building the other fields).
    pub fn str_field(&self, name: &str) -> Option<Cow<'_, str>> {
        let fields: Fields<'_> = serde_json::from_str(self.msg_content.get()).ok()?;
        let raw = fields.get(name)?;
        if kind(raw) != Kind::Str {
            return None;
        }
        serde_json::from_str::<Cow<'_, str>>(raw.get()).ok()
    }

    /// The text of a `TIMTextElem`, if this is one.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        if self.msg_type == "TIMTextElem" {
            self.str_field("Text")
        } else {
            None
        }
    }
}

/// A JSON object's fields, borrowed from its text, in order.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// The last value of `name` (as a JSON object parser keeps it).
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Fields<'a>, M::Error> {
                let mut fields = Vec::with_capacity(m.size_hint().unwrap_or(4));
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    fields.push((key, m.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// What kind of JSON value a raw value is (from its first byte).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Array,
    Other,
}

fn kind(v: &RawValue) -> Kind {
    match v.get().trim_start().as_bytes().first() {
        Some(b'"') => Kind::Str,
        Some(b'-' | b'0'..=b'9') => Kind::Num,
        Some(b'[') => Kind::Array,
        _ => Kind::Other,
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
    let Ok(fields) = serde_json::from_str::<Fields<'_>>(e.msg_content.get()) else {
        return Err(bad("MsgContent must be an object".into()));
    };
    if e.msg_type == "TIMImageElem" {
        let items = fields
            .get("ImageInfoArray")
            .filter(|v| kind(v) == Kind::Array)
            .and_then(|v| serde_json::from_str::<Vec<&RawValue>>(v.get()).ok())
            .filter(|items| !items.is_empty());
        let Some(items) = items else {
            return Err(bad("ImageInfoArray must be a non-empty array".into()));
        };
        for item in items {
            let url = serde_json::from_str::<Fields<'_>>(item.get())
                .ok()
                .and_then(|f| f.get("URL"))
                .is_some_and(|v| kind(v) == Kind::Str);
            if !url {
                return Err(bad("each ImageInfoArray item needs a URL string".into()));
            }
        }
    } else {
        for (field, want) in req {
            if fields.get(field).map(kind) != Some(*want) {
                let what = match want {
                    Kind::Num => "a number",
                    _ => "a string",
                };
                return Err(bad(format!("{field} is required and must be {what}")));
            }
        }
    }
    for field in STRING_FIELDS {
        if fields.get(field).is_some_and(|v| kind(v) != Kind::Str) {
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
