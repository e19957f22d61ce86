//! Tencent Cloud Chat compatible UserSig (TLSSigAPIv2, HMAC-SHA256).
//!
//! A UserSig is a compact token that proves a client was allowed, by whoever
//! holds the application's secret key, to log in as a given UserID. This crate
//! issues and verifies UserSigs that are bit-compatible with the official
//! `TLSSigAPIv2` libraries:
//!
//! 1. The string to sign is
//!    `"TLS.identifier:<id>\nTLS.sdkappid:<appid>\nTLS.time:<time>\nTLS.expire:<expire>\n"`
//!    (plus `"TLS.userbuf:<base64>\n"` when a userbuf is present).
//! 2. `TLS.sig` is the standard base64 (padded) HMAC-SHA256 of that string,
//!    keyed with the secret key's UTF-8 bytes.
//! 3. A JSON object with `TLS.ver`, `TLS.identifier`, `TLS.sdkappid`,
//!    `TLS.expire`, `TLS.time` and `TLS.sig` is zlib-compressed,
//!    base64-encoded and made URL-safe by replacing `+` → `*`, `/` → `-` and
//!    `=` → `_`.
//!
//! ```
//! use duet_usersig::UserSigKey;
//!
//! let key = UserSigKey::new(1_400_000_000, "my-secret");
//! let sig = key.issue_at("alice", 1_700_000_000, 86_400);
//! let claims = key.verify_at(&sig, "alice", 1_700_000_001).unwrap();
//! assert_eq!(claims.identifier, "alice");
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Default validity of an issued UserSig: 180 days, in seconds.
pub const DEFAULT_EXPIRE_SECS: u64 = 15_552_000;

/// Largest inflated JSON payload accepted when decoding (zip-bomb guard).
const MAX_INFLATED_BYTES: usize = 64 * 1024;

/// Standard alphabet, padding optional on decode (lenient like Python's
/// `base64.b64decode` for sigs whose padding was stripped).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a UserSig was rejected. [`UserSigError::code`] gives the Tencent
/// Cloud Chat error code for each variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserSigError {
    /// The UserSig is past `time + expire` (code 70001).
    #[error("usersig expired")]
    Expired,
    /// The UserSig is empty (code 70002).
    #[error("usersig is empty")]
    Empty,
    /// The UserSig could not be decoded: bad base64, not zlib, too large,
    /// not JSON, or a required field is missing or of the wrong type
    /// (code 70003).
    #[error("usersig is malformed: {0}")]
    Malformed(String),
    /// The `TLS.sig` HMAC does not match the one computed with this key
    /// (code 70009).
    #[error("usersig HMAC mismatch")]
    HmacMismatch,
    /// The UserSig was issued for another UserID (code 70013).
    #[error("usersig identifier does not match the UserID")]
    IdentifierMismatch,
    /// The UserSig was issued for another SDKAppID (code 70014).
    #[error("usersig SDKAppID does not match")]
    SdkAppIdMismatch,
}

impl UserSigError {
    /// The Tencent Cloud Chat error code for this failure
    /// (70001, 70002, 70003, 70009, 70013 or 70014).
    pub fn code(&self) -> u32 {
        match self {
            UserSigError::Expired => 70001,
            UserSigError::Empty => 70002,
            UserSigError::Malformed(_) => 70003,
            UserSigError::HmacMismatch => 70009,
            UserSigError::IdentifierMismatch => 70013,
            UserSigError::SdkAppIdMismatch => 70014,
        }
    }
}

/// The fields carried by a UserSig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `TLS.identifier`: the UserID the sig was issued for.
    pub identifier: String,
    /// `TLS.sdkappid`: the application the sig was issued for.
    pub sdkappid: u64,
    /// `TLS.time`: issue time, unix seconds.
    pub time: u64,
    /// `TLS.expire`: validity in seconds from `time`.
    pub expire: u64,
}

/// Everything decoded from a UserSig, including the parts needed to
/// recompute the HMAC.
struct Decoded {
    claims: Claims,
    sig: String,
    userbuf: Option<String>,
}

/// An application's SDKAppID together with its secret key; issues and
/// verifies UserSigs.
#[derive(Clone)]
pub struct UserSigKey {
    sdkappid: u64,
    secret_key: String,
}

impl std::fmt::Debug for UserSigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSigKey")
            .field("sdkappid", &self.sdkappid)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl UserSigKey {
    /// A key for `sdkappid` with the given secret (used as raw UTF-8 bytes
    /// for the HMAC key).
    pub fn new(sdkappid: u64, secret_key: impl Into<String>) -> Self {
        Self {
            sdkappid,
            secret_key: secret_key.into(),
        }
    }

    /// The SDKAppID this key belongs to.
    pub fn sdkappid(&self) -> u64 {
        self.sdkappid
    }

    /// The secret key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// `TLS.sig` for the given fields: the HMAC-SHA256 of the string to sign,
    /// standard base64 with padding.
    pub fn hmac_sig(&self, identifier: &str, time: u64, expire: u64) -> String {
        STANDARD.encode(self.hmac_bytes(identifier, time, expire, None))
    }

    fn hmac_bytes(
        &self,
        identifier: &str,
        time: u64,
        expire: u64,
        userbuf: Option<&str>,
    ) -> [u8; 32] {
        let mut content = format!(
            "TLS.identifier:{identifier}\nTLS.sdkappid:{}\nTLS.time:{time}\nTLS.expire:{expire}\n",
            self.sdkappid
        );
        if let Some(buf) = userbuf {
            content.push_str("TLS.userbuf:");
            content.push_str(buf);
            content.push('\n');
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.secret_key.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
        };
        mac.update(content.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A full UserSig for `identifier` issued at `time` (unix seconds),
    /// valid for `expire` seconds.
    pub fn issue_at(&self, identifier: &str, time: u64, expire: u64) -> String {
        let sig = self.hmac_sig(identifier, time, expire);
        // Same field order and separators as the official Python library.
        let json = format!(
            "{{\"TLS.ver\": \"2.0\", \"TLS.identifier\": {}, \"TLS.sdkappid\": {}, \
             \"TLS.expire\": {expire}, \"TLS.time\": {time}, \"TLS.sig\": \"{sig}\"}}",
            Value::String(identifier.to_owned()),
            self.sdkappid
        );
        encode_payload(json.as_bytes(), Compression::default())
    }

    /// A full UserSig for `identifier` issued now (system clock), valid for
    /// `expire` seconds.
    pub fn issue(&self, identifier: &str, expire: u64) -> String {
        self.issue_at(identifier, unix_now(), expire)
    }

    /// Verify `usersig` for `identifier` at time `now` (unix seconds).
    ///
    /// Checks run in this order: empty → [`UserSigError::Empty`];
    /// decode/inflate/JSON/missing fields → [`UserSigError::Malformed`];
    /// SDKAppID → [`UserSigError::SdkAppIdMismatch`]; identifier →
    /// [`UserSigError::IdentifierMismatch`]; HMAC →
    /// [`UserSigError::HmacMismatch`]; expiry (`now > time + expire`) →
    /// [`UserSigError::Expired`].
    pub fn verify_at(
        &self,
        usersig: &str,
        identifier: &str,
        now: u64,
    ) -> Result<Claims, UserSigError> {
        let Decoded {
            claims,
            sig,
            userbuf,
        } = decode_full(usersig)?;
        if claims.sdkappid != self.sdkappid {
            return Err(UserSigError::SdkAppIdMismatch);
        }
        if claims.identifier != identifier {
            return Err(UserSigError::IdentifierMismatch);
        }
        let expected = STANDARD.encode(self.hmac_bytes(
            &claims.identifier,
            claims.time,
            claims.expire,
            userbuf.as_deref(),
        ));
        if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            return Err(UserSigError::HmacMismatch);
        }
        if now > claims.time.saturating_add(claims.expire) {
            return Err(UserSigError::Expired);
        }
        Ok(claims)
    }

    /// Verify `usersig` for `identifier` at the current system time.
    /// See [`UserSigKey::verify_at`].
    pub fn verify(&self, usersig: &str, identifier: &str) -> Result<Claims, UserSigError> {
        self.verify_at(usersig, identifier, unix_now())
    }
}

/// Decode a UserSig without checking its HMAC, SDKAppID, identifier or
/// expiry (for tools and error messages).
pub fn decode(usersig: &str) -> Result<Claims, UserSigError> {
    decode_full(usersig).map(|d| d.claims)
}

/// Generate a fresh random secret key: 64 lowercase hex characters
/// (32 random bytes).
pub fn generate_secret_key() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// zlib-compress `json`, base64 it and apply the UserSig alphabet.
fn encode_payload(json: &[u8], level: Compression) -> String {
    let mut enc = ZlibEncoder::new(Vec::with_capacity(json.len()), level);
    // Writing to a Vec cannot fail.
    let compressed = match enc.write_all(json).and_then(|()| enc.finish()) {
        Ok(v) => v,
        Err(e) => unreachable!("zlib into a Vec failed: {e}"),
    };
    STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

fn malformed(msg: impl Into<String>) -> UserSigError {
    UserSigError::Malformed(msg.into())
}

fn decode_full(usersig: &str) -> Result<Decoded, UserSigError> {
    let usersig = usersig.trim();
    if usersig.is_empty() {
        return Err(UserSigError::Empty);
    }
    let b64: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed = LENIENT_STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| malformed(format!("base64: {e}")))?;

    // One-shot inflate into the output (no streaming state with its 32 KiB
    // window to allocate and clear for a payload of a few hundred bytes).
    let json = match miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(
        &compressed,
        MAX_INFLATED_BYTES,
    ) {
        Ok(json) => json,
        Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
            return Err(malformed(format!(
                "inflated payload exceeds {MAX_INFLATED_BYTES} bytes"
            )));
        }
        Err(e) => return Err(malformed(format!("zlib: {e}"))),
    };
    if json.is_empty() {
        return Err(malformed("zlib: empty payload"));
    }

    let value: Value =
        serde_json::from_slice(&json).map_err(|e| malformed(format!("json: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| malformed("json: not an object"))?;

    let string_field = |name: &str| -> Result<String, UserSigError> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(malformed(format!("{name} is not a string"))),
            None => Err(malformed(format!("missing {name}"))),
        }
    };
    let number_field = |name: &str| -> Result<u64, UserSigError> {
        match obj.get(name) {
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| malformed(format!("{name} is not an unsigned integer"))),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| malformed(format!("{name} is not an unsigned integer"))),
            Some(_) => Err(malformed(format!("{name} is not a number"))),
            None => Err(malformed(format!("missing {name}"))),
        }
    };

    let claims = Claims {
        identifier: string_field("TLS.identifier")?,
        sdkappid: number_field("TLS.sdkappid")?,
        time: number_field("TLS.time")?,
        expire: number_field("TLS.expire")?,
    };
    let sig = string_field("TLS.sig")?;
    let userbuf = match obj.get("TLS.userbuf") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(malformed("TLS.userbuf is not a string")),
    };
    Ok(Decoded {
        claims,
        sig,
        userbuf,
    })
}

/// Compare two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::ZlibDecoder;

    use super::*;

    const APPID: u64 = 1_400_000_000;
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    const TIME: u64 = 1_700_000_000;
    const EXPIRE: u64 = 86_400;
    const GOLDEN_SIG: &str = "SNF4FmVCPucoXsBOpbVF3fFCf57JPm0ezZ1jeVILlVc=";
    const GOLDEN_USERSIG: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpQJlLMxM4IIlmbkgIUNzNMXFmekg44P93EzccsOcA0qT8yOKnfwLksLcjNPcnNNMzb0Ccg1Sq6IMs1LDPH1ywpJtlWoBk68y0A__";

    fn key() -> UserSigKey {
        UserSigKey::new(APPID, KEY)
    }

    fn golden_claims() -> Claims {
        Claims {
            identifier: "xiaojun".into(),
            sdkappid: APPID,
            time: TIME,
            expire: EXPIRE,
        }
    }

    /// Build a UserSig from an arbitrary JSON string at a given level.
    fn sig_from_json(json: &str, level: Compression) -> String {
        encode_payload(json.as_bytes(), level)
    }

    fn golden_json(sig: &str) -> String {
        format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.time":{TIME},"TLS.sig":"{sig}"}}"#
        )
    }

    #[test]
    fn golden_hmac_sig() {
        assert_eq!(key().hmac_sig("xiaojun", TIME, EXPIRE), GOLDEN_SIG);
    }

    #[test]
    fn golden_usersig_verifies() {
        let claims = key()
            .verify_at(GOLDEN_USERSIG, "xiaojun", TIME + 1)
            .expect("golden usersig verifies");
        assert_eq!(claims, golden_claims());
    }

    #[test]
    fn golden_usersig_verifies_at_window_edges() {
        assert!(key().verify_at(GOLDEN_USERSIG, "xiaojun", TIME).is_ok());
        assert!(
            key()
                .verify_at(GOLDEN_USERSIG, "xiaojun", TIME + EXPIRE)
                .is_ok()
        );
    }

    #[test]
    fn golden_usersig_decodes() {
        assert_eq!(decode(GOLDEN_USERSIG), Ok(golden_claims()));
    }

    #[test]
    fn issue_at_matches_golden_fields() {
        let sig = key().issue_at("xiaojun", TIME, EXPIRE);
        assert_eq!(decode(&sig), Ok(golden_claims()));
        let full = decode_full(&sig).expect("decodes");
        assert_eq!(full.sig, GOLDEN_SIG);
        assert_eq!(full.userbuf, None);
    }

    #[test]
    fn issued_json_has_all_fields() {
        let sig = key().issue_at("xiaojun", TIME, EXPIRE);
        let b64: String = sig
            .chars()
            .map(|c| match c {
                '*' => '+',
                '-' => '/',
                '_' => '=',
                o => o,
            })
            .collect();
        let mut json = String::new();
        ZlibDecoder::new(STANDARD.decode(b64).expect("b64").as_slice())
            .read_to_string(&mut json)
            .expect("zlib");
        let v: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["TLS.ver"], "2.0");
        assert_eq!(v["TLS.identifier"], "xiaojun");
        assert_eq!(v["TLS.sdkappid"], APPID);
        assert_eq!(v["TLS.expire"], EXPIRE);
        assert_eq!(v["TLS.time"], TIME);
        assert_eq!(v["TLS.sig"], GOLDEN_SIG);
    }

    #[test]
    fn round_trip() {
        let k = key();
        for id in ["alice", "user with spaces", "用户\"quoted\"\\", ""] {
            let sig = k.issue_at(id, TIME, EXPIRE);
            let claims = k.verify_at(&sig, id, TIME + 10).expect("round trip");
            assert_eq!(claims.identifier, id);
            assert_eq!(claims.sdkappid, APPID);
            assert_eq!(claims.time, TIME);
            assert_eq!(claims.expire, EXPIRE);
        }
    }

    #[test]
    fn issue_now_verifies_now() {
        let k = key();
        let sig = k.issue("bob", DEFAULT_EXPIRE_SECS);
        let claims = k.verify(&sig, "bob").expect("fresh sig verifies");
        assert_eq!(claims.expire, DEFAULT_EXPIRE_SECS);
    }

    #[test]
    fn output_uses_usersig_alphabet() {
        let k = key();
        let mut seen_special = false;
        for i in 0..200u64 {
            let sig = k.issue_at(&format!("user-{i}"), TIME + i, EXPIRE + i);
            assert!(!sig.contains(['+', '/', '=']), "{sig}");
            seen_special |= sig.contains(['*', '-', '_']);
        }
        assert!(seen_special);
        assert!(GOLDEN_USERSIG.ends_with('_'));
    }

    #[test]
    fn expired_one_second_after() {
        let err = key()
            .verify_at(GOLDEN_USERSIG, "xiaojun", TIME + EXPIRE + 1)
            .unwrap_err();
        assert_eq!(err, UserSigError::Expired);
        assert_eq!(err.code(), 70001);
    }

    #[test]
    fn empty() {
        for s in ["", "   "] {
            let err = key().verify_at(s, "xiaojun", TIME).unwrap_err();
            assert_eq!(err, UserSigError::Empty);
            assert_eq!(err.code(), 70002);
        }
        assert_eq!(decode(""), Err(UserSigError::Empty));
    }

    fn assert_malformed(s: &str) {
        let err = key().verify_at(s, "xiaojun", TIME).unwrap_err();
        assert!(matches!(err, UserSigError::Malformed(_)), "{s}: {err:?}");
        assert_eq!(err.code(), 70003);
    }

    #[test]
    fn malformed_garbage() {
        assert_malformed("not a usersig!!");
        assert_malformed("%%%%");
    }

    #[test]
    fn malformed_bad_base64() {
        assert_malformed("eJy");
        assert_malformed("eJyrVgrx#CdYrSy1");
        // Truncated golden sig.
        assert_malformed(&GOLDEN_USERSIG[..40]);
    }

    #[test]
    fn malformed_not_zlib() {
        let raw = STANDARD.encode(golden_json(GOLDEN_SIG));
        assert_malformed(&raw);
        // Corrupt the adler32 checksum of a valid stream.
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
        enc.write_all(golden_json(GOLDEN_SIG).as_bytes()).unwrap();
        let mut bytes = enc.finish().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert_malformed(&STANDARD.encode(bytes));
    }

    #[test]
    fn malformed_json() {
        assert_malformed(&sig_from_json("not json", Compression::default()));
        assert_malformed(&sig_from_json("[1,2,3]", Compression::default()));
        assert_malformed(&sig_from_json("", Compression::default()));
    }

    #[test]
    fn malformed_missing_fields() {
        let no_sig = format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.time":{TIME}}}"#
        );
        assert_malformed(&sig_from_json(&no_sig, Compression::default()));
        let no_time = format!(
            r#"{{"TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.sig":"{GOLDEN_SIG}"}}"#
        );
        assert_malformed(&sig_from_json(&no_time, Compression::default()));
        let bad_type = format!(
            r#"{{"TLS.identifier":7,"TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.time":{TIME},"TLS.sig":"{GOLDEN_SIG}"}}"#
        );
        assert_malformed(&sig_from_json(&bad_type, Compression::default()));
        let negative = format!(
            r#"{{"TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":-1,"TLS.time":{TIME},"TLS.sig":"{GOLDEN_SIG}"}}"#
        );
        assert_malformed(&sig_from_json(&negative, Compression::default()));
    }

    #[test]
    fn malformed_zip_bomb() {
        let padding = " ".repeat(MAX_INFLATED_BYTES);
        let json = format!("{}{padding}", golden_json(GOLDEN_SIG));
        let sig = sig_from_json(&json, Compression::best());
        assert!(sig.len() < 4096);
        assert_malformed(&sig);
    }

    #[test]
    fn hmac_mismatch_other_key() {
        let other = UserSigKey::new(APPID, generate_secret_key());
        let sig = other.issue_at("xiaojun", TIME, EXPIRE);
        let err = key().verify_at(&sig, "xiaojun", TIME).unwrap_err();
        assert_eq!(err, UserSigError::HmacMismatch);
        assert_eq!(err.code(), 70009);
    }

    #[test]
    fn hmac_mismatch_tampered_fields() {
        // Golden TLS.sig, but the expire was extended.
        let json = format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{},"TLS.time":{TIME},"TLS.sig":"{GOLDEN_SIG}"}}"#,
            EXPIRE * 2
        );
        let sig = sig_from_json(&json, Compression::default());
        assert_eq!(
            key().verify_at(&sig, "xiaojun", TIME),
            Err(UserSigError::HmacMismatch)
        );
    }

    #[test]
    fn hmac_checked_before_expiry() {
        let other = UserSigKey::new(APPID, "other");
        let sig = other.issue_at("xiaojun", TIME, EXPIRE);
        assert_eq!(
            key().verify_at(&sig, "xiaojun", TIME + EXPIRE + 1),
            Err(UserSigError::HmacMismatch)
        );
    }

    #[test]
    fn identifier_mismatch() {
        let err = key()
            .verify_at(GOLDEN_USERSIG, "someone-else", TIME)
            .unwrap_err();
        assert_eq!(err, UserSigError::IdentifierMismatch);
        assert_eq!(err.code(), 70013);
    }

    #[test]
    fn sdkappid_mismatch() {
        let other = UserSigKey::new(APPID + 1, KEY);
        let err = other
            .verify_at(GOLDEN_USERSIG, "xiaojun", TIME)
            .unwrap_err();
        assert_eq!(err, UserSigError::SdkAppIdMismatch);
        assert_eq!(err.code(), 70014);
        // SDKAppID is checked before the identifier.
        assert_eq!(
            other.verify_at(GOLDEN_USERSIG, "someone-else", TIME),
            Err(UserSigError::SdkAppIdMismatch)
        );
    }

    #[test]
    fn any_compression_level_verifies() {
        for level in [
            Compression::none(),
            Compression::fast(),
            Compression::best(),
        ] {
            let sig = sig_from_json(&golden_json(GOLDEN_SIG), level);
            assert_eq!(
                key().verify_at(&sig, "xiaojun", TIME + 1),
                Ok(golden_claims()),
                "level {level:?}"
            );
        }
    }

    #[test]
    fn numeric_strings_accepted() {
        let json = format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":"{APPID}","TLS.expire":"{EXPIRE}","TLS.time":"{TIME}","TLS.sig":"{GOLDEN_SIG}"}}"#
        );
        let sig = sig_from_json(&json, Compression::default());
        assert_eq!(
            key().verify_at(&sig, "xiaojun", TIME + 1),
            Ok(golden_claims())
        );
    }

    #[test]
    fn unpadded_base64_accepted() {
        let stripped = GOLDEN_USERSIG.trim_end_matches('_');
        assert_eq!(
            key().verify_at(stripped, "xiaojun", TIME + 1),
            Ok(golden_claims())
        );
    }

    #[test]
    fn userbuf_included_in_hmac() {
        let k = key();
        let userbuf = STANDARD.encode(b"hello");
        let mac = STANDARD.encode(k.hmac_bytes("xiaojun", TIME, EXPIRE, Some(&userbuf)));
        let json = format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.time":{TIME},"TLS.userbuf":"{userbuf}","TLS.sig":"{mac}"}}"#
        );
        let sig = sig_from_json(&json, Compression::default());
        assert_eq!(k.verify_at(&sig, "xiaojun", TIME + 1), Ok(golden_claims()));
        // The plain (no-userbuf) HMAC does not verify when a userbuf is present.
        let json = format!(
            r#"{{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":{APPID},"TLS.expire":{EXPIRE},"TLS.time":{TIME},"TLS.userbuf":"{userbuf}","TLS.sig":"{GOLDEN_SIG}"}}"#
        );
        let sig = sig_from_json(&json, Compression::default());
        assert_eq!(
            k.verify_at(&sig, "xiaojun", TIME + 1),
            Err(UserSigError::HmacMismatch)
        );
    }

    #[test]
    fn expire_overflow_does_not_panic() {
        let k = key();
        let sig = k.issue_at("xiaojun", u64::MAX - 1, u64::MAX);
        assert!(k.verify_at(&sig, "xiaojun", u64::MAX).is_ok());
    }

    #[test]
    fn generated_secret_key_shape() {
        let a = generate_secret_key();
        let b = generate_secret_key();
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn accessors_and_debug_redacts_secret() {
        let k = key();
        assert_eq!(k.sdkappid(), APPID);
        assert_eq!(k.secret_key(), KEY);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(KEY));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
