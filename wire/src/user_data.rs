//! WeChat's user data: `encryptedData` (AES-128-CBC, PKCS#7, key = session_key, JSON inside
//! with a watermark) and `rawData` + `signature` (hex sha1(rawData + session_key)).
//!
//! Errors never carry the data, the key or the plaintext: they are shown to clients.
use std::time::Duration;

use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::user::UserInfo;

type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Largest encryptedData accepted, decoded. Real user data is well under 2 KiB.
pub const MAX_ENCRYPTED_LEN: usize = 16 * 1024;
/// Largest rawData accepted.
pub const MAX_RAW_DATA_LEN: usize = 8 * 1024;

/// Standard alphabet, padding optional: some clients and proxies drop it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("{field} must be {expected} bytes long")]
    Length {
        field: &'static str,
        expected: &'static str,
    },
    #[error("encryptedData does not decrypt with this login's session key")]
    Decrypt,
    #[error("decrypted user data is not the JSON WeChat sends")]
    NotJson,
    #[error("user data was issued for another mini-program (watermark appid mismatch)")]
    ForeignWatermark,
    #[error("user data is too old or from the future (watermark timestamp outside {0}s of now)")]
    Stale(u64),
    #[error("user data belongs to another user than the login code")]
    OpenIdMismatch,
    #[error("rawData signature does not match")]
    SignatureMismatch,
    #[error("rawData is not a JSON object")]
    RawDataNotJson,
}

/// Decodes base64 that may have travelled through a query string, where `+` became a space.
pub fn decode_base64(field: &'static str, value: &str) -> Result<Vec<u8>, UserDataError> {
    // The repairs are all of ASCII bytes, which never occur inside a multi-byte character, so
    // they can work on bytes; and what needs none (nearly every payload) is decoded in place.
    let decoded = if value
        .bytes()
        .any(|b| matches!(b, b'\n' | b'\r' | b'\t' | b' '))
    {
        // No trim(): a leading or trailing space is a mangled '+', not padding.
        let repaired: Vec<u8> = value
            .bytes()
            .filter(|b| !matches!(b, b'\n' | b'\r' | b'\t'))
            .map(|b| if b == b' ' { b'+' } else { b })
            .collect();
        LENIENT.decode(repaired)
    } else {
        LENIENT.decode(value)
    };
    decoded.map_err(|_| UserDataError::Base64(field))
}

/// Checks shape before anything is spent: the code is single-use, so a malformed payload must
/// be refused before the code goes to WeChat.
pub fn precheck_encrypted(
    encrypted_data: &str,
    iv: &str,
) -> Result<(Vec<u8>, [u8; 16]), UserDataError> {
    let ciphertext = decode_base64("encryptedData", encrypted_data)?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 || ciphertext.len() > MAX_ENCRYPTED_LEN {
        return Err(UserDataError::Length {
            field: "encryptedData",
            expected: "a non-zero multiple of 16 (and at most 16 KiB)",
        });
    }
    let iv: [u8; 16] = decode_base64("iv", iv)?
        .try_into()
        .map_err(|_| UserDataError::Length {
            field: "iv",
            expected: "16",
        })?;
    Ok((ciphertext, iv))
}

pub fn precheck_signature(raw_data: &str, signature: &str) -> Result<(), UserDataError> {
    if raw_data.len() > MAX_RAW_DATA_LEN {
        return Err(UserDataError::Length {
            field: "rawData",
            expected: "at most 8 KiB",
        });
    }
    if signature.len() != 40 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UserDataError::SignatureMismatch);
    }
    Ok(())
}

fn session_key_bytes(session_key_b64: &str) -> Result<[u8; 16], UserDataError> {
    decode_base64("session_key", session_key_b64)?
        .try_into()
        .map_err(|_| UserDataError::Length {
            field: "session_key",
            expected: "16",
        })
}

pub fn decrypt(
    session_key_b64: &str,
    ciphertext: &[u8],
    iv: &[u8; 16],
) -> Result<Vec<u8>, UserDataError> {
    let key = session_key_bytes(session_key_b64)?;
    Aes128CbcDec::new(&key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| UserDataError::Decrypt)
}

#[derive(Deserialize)]
struct Watermark {
    appid: String,
    timestamp: i64,
}

/// The parts of the decrypted data that are checked; the object itself is kept whole.
struct Checked<'a> {
    open_id: Option<&'a str>,
    watermark: Watermark,
}

impl<'a> Checked<'a> {
    /// Read from the parsed object in place, not from a copy of it (the object can be large, and
    /// every login with user data reads it): `openId` a string or absent (or null), `watermark`
    /// required, as serde's derive read them before.
    fn read(payload: &'a Map<String, Value>) -> Result<Self, UserDataError> {
        let open_id = match payload.get("openId") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id.as_str()),
            Some(_) => return Err(UserDataError::NotJson),
        };
        let watermark = payload.get("watermark").ok_or(UserDataError::NotJson)?;
        let watermark = Watermark::deserialize(watermark).map_err(|_| UserDataError::NotJson)?;
        Ok(Self { open_id, watermark })
    }
}

/// What the caller already knows from the code exchange, against which the data is checked.
pub struct Expected<'a> {
    pub app_id: &'a str,
    pub open_id: &'a str,
    pub union_id: Option<&'a str>,
    pub now_secs: i64,
    pub max_age: Duration,
}

/// Reads decrypted user data, checking its watermark (appid and freshness) and that it is
/// about the user the code belongs to. The user is the whole object, as wafer kept it.
pub fn parse_decrypted(
    plaintext: &[u8],
    expected: &Expected<'_>,
) -> Result<UserInfo, UserDataError> {
    let payload: Map<String, Value> =
        serde_json::from_slice(plaintext).map_err(|_| UserDataError::NotJson)?;
    let data = Checked::read(&payload)?;
    if !bool::from(
        data.watermark
            .appid
            .as_bytes()
            .ct_eq(expected.app_id.as_bytes()),
    ) {
        return Err(UserDataError::ForeignWatermark);
    }
    let window = i64::try_from(expected.max_age.as_secs()).unwrap_or(i64::MAX);
    if expected.now_secs.abs_diff(data.watermark.timestamp) > window.unsigned_abs() {
        return Err(UserDataError::Stale(expected.max_age.as_secs()));
    }
    if data.open_id.is_some_and(|id| id != expected.open_id) {
        return Err(UserDataError::OpenIdMismatch);
    }
    Ok(UserInfo::from_payload(
        payload,
        expected.open_id,
        expected.union_id,
    ))
}

/// Checks `signature == sha1(rawData + session_key)` in constant time.
pub fn verify_signature(
    raw_data: &str,
    session_key_b64: &str,
    signature: &str,
) -> Result<(), UserDataError> {
    let mut hasher = Sha1::new();
    hasher.update(raw_data.as_bytes());
    hasher.update(session_key_b64.as_bytes());
    let expected = hasher.finalize();
    let presented = hex::decode(signature).map_err(|_| UserDataError::SignatureMismatch)?;
    if bool::from(expected.as_slice().ct_eq(&presented)) {
        Ok(())
    } else {
        Err(UserDataError::SignatureMismatch)
    }
}

/// Fills profile fields from a verified rawData where the encrypted data did not provide them.
pub fn merge_raw_profile(user: &mut UserInfo, raw_data: &str) -> Result<(), UserDataError> {
    let raw: Map<String, Value> =
        serde_json::from_str(raw_data).map_err(|_| UserDataError::RawDataNotJson)?;
    user.fill_profile(&raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use aes::cipher::BlockEncryptMut;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";
    const IV: [u8; 16] = *b"fedcba9876543210";

    fn encrypt(plain: &str) -> Vec<u8> {
        cbc::Encryptor::<aes::Aes128>::new(&KEY.into(), &IV.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes())
    }

    fn expected(now_secs: i64) -> Expected<'static> {
        Expected {
            app_id: "wxapp",
            open_id: "oUser",
            union_id: None,
            now_secs,
            max_age: Duration::from_secs(600),
        }
    }

    #[test]
    fn query_string_mangled_base64_is_repaired() {
        let original = STANDARD.encode([0xfbu8, 0xff, 0xbf, 0x01]);
        assert!(original.contains('+') || original.contains('/'));
        let mangled = original.replace('+', " ");
        assert_eq!(
            decode_base64("x", &mangled).unwrap(),
            vec![0xfb, 0xff, 0xbf, 0x01]
        );
        assert_eq!(
            decode_base64("x", original.trim_end_matches('=')).unwrap(),
            vec![0xfb, 0xff, 0xbf, 0x01]
        );
        assert_eq!(decode_base64("x", "%%%"), Err(UserDataError::Base64("x")));
    }

    #[test]
    fn line_breaks_are_dropped_and_what_is_not_base64_is_refused() {
        let original = STANDARD.encode(b"a payload long enough to wrap");
        let wrapped = format!("{}\r\n\t{}", &original[..8], &original[8..]);
        assert_eq!(
            decode_base64("x", &wrapped).unwrap(),
            b"a payload long enough to wrap"
        );
        // Non-ASCII is refused whether or not the value needed a repair.
        assert_eq!(decode_base64("x", "AAé="), Err(UserDataError::Base64("x")));
        assert_eq!(decode_base64("x", "A Aé="), Err(UserDataError::Base64("x")));
    }

    #[test]
    fn decrypts_checks_watermark_and_freshness() {
        let body = r#"{"openId":"oUser","nickName":"N","gender":2,"watermark":{"appid":"wxapp","timestamp":1000}}"#;
        let ct = encrypt(body);
        let key = STANDARD.encode(KEY);
        let plain = decrypt(&key, &ct, &IV).unwrap();
        let user = parse_decrypted(&plain, &expected(1100)).unwrap();
        assert_eq!(user.nick_name(), Some("N"));
        assert_eq!(user.integer("gender"), Some(2));
        assert_eq!(user.fields()["watermark"]["appid"], "wxapp");
        assert_eq!(
            parse_decrypted(&plain, &expected(1000 + 601)),
            Err(UserDataError::Stale(600))
        );
        assert_eq!(
            parse_decrypted(&plain, &expected(1000 - 601)),
            Err(UserDataError::Stale(600))
        );

        let foreign =
            encrypt(r#"{"openId":"oUser","watermark":{"appid":"wxother","timestamp":1000}}"#);
        let plain = decrypt(&key, &foreign, &IV).unwrap();
        assert_eq!(
            parse_decrypted(&plain, &expected(1000)),
            Err(UserDataError::ForeignWatermark)
        );

        let other_user =
            encrypt(r#"{"openId":"oOther","watermark":{"appid":"wxapp","timestamp":1000}}"#);
        let plain = decrypt(&key, &other_user, &IV).unwrap();
        assert_eq!(
            parse_decrypted(&plain, &expected(1000)),
            Err(UserDataError::OpenIdMismatch)
        );
    }

    #[test]
    fn the_checked_fields_must_have_their_types() {
        let checked = |body: &str| parse_decrypted(body.as_bytes(), &expected(1000)).map(drop);
        let mark = r#""watermark":{"appid":"wxapp","timestamp":1000}"#;
        assert_eq!(checked(&format!("{{{mark}}}")), Ok(()));
        assert_eq!(checked(&format!(r#"{{"openId":null,{mark}}}"#)), Ok(()));
        for bad in [
            format!(r#"{{"openId":5,{mark}}}"#),
            r#"{"openId":"oUser"}"#.to_owned(),
            r#"{"openId":"oUser","watermark":{"appid":"wxapp"}}"#.to_owned(),
            r#"{"openId":"oUser","watermark":{"appid":1,"timestamp":1000}}"#.to_owned(),
            r#"{"openId":"oUser","watermark":[]}"#.to_owned(),
            "[]".to_owned(),
        ] {
            assert_eq!(checked(&bad), Err(UserDataError::NotJson), "{bad}");
        }
    }

    #[test]
    fn wrong_key_or_garbage_does_not_decrypt() {
        let ct = encrypt(r#"{"watermark":{"appid":"wxapp","timestamp":1}}"#);
        let wrong_key = STANDARD.encode(*b"another key 16b!");
        // A wrong key almost always breaks the padding; when it happens not to, the JSON check
        // catches it.
        let outcome = decrypt(&wrong_key, &ct, &IV).and_then(|p| parse_decrypted(&p, &expected(1)));
        assert!(matches!(
            outcome,
            Err(UserDataError::Decrypt | UserDataError::NotJson)
        ));
        assert!(precheck_encrypted("", &STANDARD.encode(IV)).is_err());
        assert!(precheck_encrypted(&STANDARD.encode([0u8; 15]), &STANDARD.encode(IV)).is_err());
        assert!(
            precheck_encrypted(&STANDARD.encode([0u8; 16]), &STANDARD.encode([0u8; 8])).is_err()
        );
    }

    #[test]
    fn signature_is_sha1_of_raw_data_and_session_key() {
        let key = STANDARD.encode(KEY);
        let raw = r#"{"nickName":"N"}"#;
        let mut h = Sha1::new();
        h.update(raw.as_bytes());
        h.update(key.as_bytes());
        let sig = hex::encode(h.finalize());
        assert_eq!(verify_signature(raw, &key, &sig), Ok(()));
        assert_eq!(verify_signature(raw, &key, &sig.to_uppercase()), Ok(()));
        assert_eq!(
            verify_signature(r#"{"nickName":"M"}"#, &key, &sig),
            Err(UserDataError::SignatureMismatch)
        );
    }
}
