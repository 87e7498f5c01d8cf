#![no_main]
//! The `Encrypt` field of WeChat's message push, decrypted with a fixed key: never a panic,
//! and what opens re-encrypts (with its random prefix) to the same message and appid.
use libfuzzer_sys::fuzz_target;
use weapp_wire::wechat_push::{AesKey, encrypt, open};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = AesKey::from_encoding("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG") else {
        return;
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(opened) = open(&key, text) {
        let again = encrypt(&key, &[0; 16], &opened.message, &opened.app_id);
        let reopened = open(&key, &again).expect("what was encrypted opens");
        assert_eq!(reopened, opened);
    }
});
