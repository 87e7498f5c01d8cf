//! WeChat's user data as a client sends it: encryptedData and iv (base64 that may have lost
//! its '+' in a query string, AES-128-CBC, PKCS#7), the decrypted JSON with its watermark,
//! rawData and its signature. Any input: an error or a user, never a panic; a user is always
//! the one the login code belongs to.
//!
//! Input, one field per line so that seeds are real logins: encryptedData, iv, session_key,
//! rawData, signature, now (Unix seconds), max age (seconds), then the rest of the input is
//! handed to the JSON reader directly as decrypted data (ciphertext the fuzzer invents
//! rarely decrypts).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weapp_wire::user_data::{
    Expected, decrypt, merge_raw_profile, parse_decrypted, precheck_encrypted, precheck_signature,
    verify_signature,
};

/// The app and user the seeds were made for.
const APP_ID: &str = "wx0123456789abcdef";
const OPEN_ID: &str = "o-fuzz-user";

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(8, |b| *b == b'\n');
    let mut text = || {
        fields
            .next()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default()
    };
    let (encrypted_data, iv, session_key) = (text(), text(), text());
    let (raw_data, signature) = (text(), text());
    let now_secs = text().trim().parse::<i64>().unwrap_or_default();
    let max_age = Duration::from_secs(text().trim().parse::<u64>().unwrap_or(600));
    let plaintext = text();
    let expected = Expected {
        app_id: APP_ID,
        open_id: OPEN_ID,
        union_id: None,
        now_secs,
        max_age,
    };
    if let Ok((ciphertext, iv)) = precheck_encrypted(&encrypted_data, &iv) {
        assert!(!ciphertext.is_empty() && ciphertext.len() % 16 == 0);
        if let Ok(plaintext) = decrypt(&session_key, &ciphertext, &iv) {
            assert!(
                plaintext.len() < ciphertext.len(),
                "PKCS#7 removes 1 to 16 bytes"
            );
            if let Ok(user) = parse_decrypted(&plaintext, &expected) {
                assert_eq!(user.open_id(), OPEN_ID);
            }
        }
    }
    if let Ok(mut user) = parse_decrypted(plaintext.as_bytes(), &expected) {
        assert_eq!(user.open_id(), OPEN_ID);
        if precheck_signature(&raw_data, &signature).is_ok()
            && verify_signature(&raw_data, &session_key, &signature).is_ok()
        {
            let _ = merge_raw_profile(&mut user, &raw_data);
            assert_eq!(
                user.open_id(), OPEN_ID,
                "rawData cannot change who the user is"
            );
        }
    }
});
