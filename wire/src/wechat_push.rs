//! The cryptography of WeChat's message push (消息推送), as WeChat documents it and its sample
//! code (`WXBizMsgCrypt`) does it: the URL check's `signature`, safe mode's `msg_signature`,
//! and the `Encrypt` field — AES-256-CBC with the key from the EncodingAESKey, IV its first
//! 16 bytes, PKCS#7 to a 32-byte block, plaintext = 16 random bytes ‖ 4-byte big-endian length
//! ‖ message ‖ appid. No I/O: session-svc decides what to do with what this says, and the fuzz
//! target feeds it anything.
use aes::cipher::{
    BlockDecryptMut as _, BlockEncryptMut as _, KeyIvInit as _, block_padding::NoPadding,
};
use base64::{
    Engine as _,
    alphabet::STANDARD,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose},
};
use sha1::{Digest as _, Sha1};
use subtle::ConstantTimeEq as _;

type Decryptor = cbc::Decryptor<aes::Aes256>;
type Encryptor = cbc::Encryptor<aes::Aes256>;

/// WeChat pads to a 32-byte block (not AES's 16).
const BLOCK: usize = 32;
/// Largest `Encrypt` field read, in base64 characters (WeChat's events are a few KiB).
pub const MAX_ENCRYPTED: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushCryptoError {
    #[error("the EncodingAESKey must be 43 characters of base64")]
    Key,
    #[error("Encrypt is not base64, or not whole blocks")]
    Encoding,
    #[error("Encrypt is longer than {MAX_ENCRYPTED} characters")]
    TooLong,
    #[error("Encrypt does not decrypt to WeChat's layout (padding or length)")]
    Layout,
    #[error("the message was encrypted for another app")]
    AppId,
}

/// The 32-byte key behind an EncodingAESKey. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(..)")
    }
}

impl AesKey {
    /// `base64decode(EncodingAESKey + "=")`, read leniently: WeChat's keys may have non-zero
    /// unused bits in their last character.
    pub fn from_encoding(encoding_aes_key: &str) -> Result<Self, PushCryptoError> {
        let key = encoding_aes_key.trim();
        if key.len() != 43 {
            return Err(PushCryptoError::Key);
        }
        let lenient = GeneralPurpose::new(
            &STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let bytes = lenient
            .decode(format!("{key}="))
            .map_err(|_| PushCryptoError::Key)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| PushCryptoError::Key)?;
        Ok(Self(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }
}

/// `sha1` of the parts sorted and joined, in lowercase hex: the URL check's `signature`
/// (Token, timestamp, nonce) and safe mode's `msg_signature` (the same and `Encrypt`).
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut sha = Sha1::new();
    for part in sorted {
        sha.update(part.as_bytes());
    }
    hex::encode(sha.finalize())
}

/// Whether `presented` is the signature of `parts`, compared in constant time (case-blind:
/// hex).
pub fn signature_matches(presented: &str, parts: &[&str]) -> bool {
    let expected = signature(parts);
    let presented = presented.trim().to_ascii_lowercase();
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// A decrypted `Encrypt` field: the message (XML or JSON, as the console's format says) and
/// the appid it was encrypted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    pub message: Vec<u8>,
    pub app_id: String,
}

/// Decrypts an `Encrypt` field and checks that it was encrypted for `app_id`.
pub fn decrypt(key: &AesKey, encrypted: &str, app_id: &str) -> Result<Decrypted, PushCryptoError> {
    let decrypted = open(key, encrypted)?;
    if !bool::from(decrypted.app_id.as_bytes().ct_eq(app_id.as_bytes())) {
        return Err(PushCryptoError::AppId);
    }
    Ok(decrypted)
}

/// Decrypts an `Encrypt` field, whatever app it names.
pub fn open(key: &AesKey, encrypted: &str) -> Result<Decrypted, PushCryptoError> {
    let encrypted = encrypted.trim();
    if encrypted.len() > MAX_ENCRYPTED {
        return Err(PushCryptoError::TooLong);
    }
    let mut buffer = general_purpose::STANDARD
        .decode(encrypted)
        .map_err(|_| PushCryptoError::Encoding)?;
    if buffer.is_empty() || buffer.len() % 16 != 0 {
        return Err(PushCryptoError::Encoding);
    }
    let plain = Decryptor::new(&key.0.into(), &key.iv().into())
        .decrypt_padded_mut::<NoPadding>(&mut buffer)
        .map_err(|_| PushCryptoError::Encoding)?;
    let pad = usize::from(*plain.last().ok_or(PushCryptoError::Layout)?);
    if pad == 0 || pad > BLOCK || pad > plain.len() {
        return Err(PushCryptoError::Layout);
    }
    let (body, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) || body.len() < 20 {
        return Err(PushCryptoError::Layout);
    }
    let length = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let rest = &body[20..];
    if length > rest.len() {
        return Err(PushCryptoError::Layout);
    }
    let (message, app_id) = rest.split_at(length);
    let app_id = std::str::from_utf8(app_id).map_err(|_| PushCryptoError::Layout)?;
    Ok(Decrypted {
        message: message.to_vec(),
        app_id: app_id.to_owned(),
    })
}

/// Encrypts as WeChat does, with the 16 `random` bytes it would choose (for WeChat's replies
/// in safe mode, and for senders in tests).
pub fn encrypt(key: &AesKey, random: &[u8; 16], message: &[u8], app_id: &str) -> String {
    let mut plain = Vec::with_capacity(20 + message.len() + app_id.len() + BLOCK);
    plain.extend_from_slice(random);
    plain.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    plain.extend_from_slice(message);
    plain.extend_from_slice(app_id.as_bytes());
    let pad = BLOCK - plain.len() % BLOCK;
    plain.extend(std::iter::repeat_n(pad as u8, pad));
    let length = plain.len();
    let sealed = Encryptor::new(&key.0.into(), &key.iv().into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, length)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    general_purpose::STANDARD.encode(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeChat's own worked example (公众号消息加解密接入指引, and the `WXBizMsgCrypt` samples):
    /// Token, EncodingAESKey, appid, timestamp, nonce, the `Encrypt` field and its
    /// `msg_signature`.
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const WECHAT_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";

    #[test]
    fn wechats_worked_example_verifies_and_decrypts() {
        assert!(signature_matches(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
            &["spamtest", "1409735669", "1320562132", WECHAT_ENCRYPT],
        ));
        assert!(!signature_matches(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fb",
            &["spamtest", "1409735669", "1320562132", WECHAT_ENCRYPT],
        ));
        let key = AesKey::from_encoding(KEY).unwrap();
        let decrypted = decrypt(&key, WECHAT_ENCRYPT, "wx2c2769f8efd9abc2").unwrap();
        let xml = String::from_utf8(decrypted.message).unwrap();
        assert!(xml.starts_with("<xml>"), "{xml}");
        assert!(
            xml.contains("<Content><![CDATA[abcdteT]]></Content>"),
            "{xml}"
        );
        assert_eq!(
            decrypt(&key, WECHAT_ENCRYPT, "wx0000000000000000"),
            Err(PushCryptoError::AppId)
        );
    }

    /// WxJava's `WxCryptUtilTest` (and Tencent's Java sample test): a fixed random string
    /// gives a fixed ciphertext.
    #[test]
    fn wxjavas_vector_encrypts_byte_for_byte() {
        let key = AesKey::from_encoding(KEY).unwrap();
        let sealed = encrypt(
            &key,
            b"aaaabbbbccccdddd",
            "我是中文abcd123".as_bytes(),
            "wxb11529c136998cb6",
        );
        assert_eq!(
            sealed,
            "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
        );
        let opened = decrypt(&key, &sealed, "wxb11529c136998cb6").unwrap();
        assert_eq!(opened.message, "我是中文abcd123".as_bytes());
    }

    #[test]
    fn the_url_check_signature_is_over_the_sorted_parts() {
        // sha1("1409735669" + "1320562132" + "spamtest"), sorted as strings.
        let mut sha = Sha1::new();
        sha.update(b"13205621321409735669spamtest");
        assert_eq!(
            signature(&["spamtest", "1409735669", "1320562132"]),
            hex::encode(sha.finalize())
        );
    }

    #[test]
    fn what_is_not_wechats_layout_is_refused_not_panicked_on() {
        let key = AesKey::from_encoding(KEY).unwrap();
        assert_eq!(
            AesKey::from_encoding("short").err(),
            Some(PushCryptoError::Key)
        );
        for bad in ["", "not base64!", "AAAA", &"A".repeat(MAX_ENCRYPTED + 4)] {
            assert!(open(&key, bad).is_err(), "{bad:.20}");
        }
        // Whole blocks of anything: a padding that is not PKCS#7 to 32.
        let garbage = general_purpose::STANDARD.encode([7u8; 64]);
        assert!(open(&key, &garbage).is_err());
        // A length past the end.
        let mut plain = vec![0u8; 16];
        plain.extend_from_slice(&1000u32.to_be_bytes());
        plain.extend_from_slice(b"short");
        let pad = BLOCK - plain.len() % BLOCK;
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let length = plain.len();
        let sealed = Encryptor::new(&key.0.into(), &key.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, length)
            .unwrap()
            .to_vec();
        assert_eq!(
            open(&key, &general_purpose::STANDARD.encode(sealed)),
            Err(PushCryptoError::Layout)
        );
    }
}
