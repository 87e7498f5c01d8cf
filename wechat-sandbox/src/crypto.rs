//! The sandbox side of WeChat's user-data crypto: what WeChat does to produce `encryptedData`
//! and `signature`, so that session-svc's decryption is tested against an independent encoder.
use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use sha1::{Digest, Sha1};

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The sandbox is a test tool; if the OS cannot give randomness nothing else will work either.
    getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("OS random source failed: {e}"));
    buf
}

/// AES-128-CBC with PKCS#7 padding, base64-encoded, as WeChat's `encryptedData`.
pub fn encrypt(session_key: &[u8; 16], iv: &[u8; 16], plaintext: &[u8]) -> String {
    let ciphertext =
        Aes128CbcEnc::new(session_key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    STANDARD.encode(ciphertext)
}

/// WeChat's rawData signature: hex `sha1(rawData + session_key)`, with the base64 session_key.
pub fn signature(raw_data: &str, session_key_b64: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(raw_data.as_bytes());
    hasher.update(session_key_b64.as_bytes());
    hex::encode(hasher.finalize())
}
