#![no_main]
//! A message push's body, XML or JSON: never a panic; what parses is an object whose dedupe
//! key, when there is one, names its MsgId or its sender.
use libfuzzer_sys::fuzz_target;
use weapp_wire::wechat_event::{dedupe_key, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(fields) = parse(data) {
        if let Some(key) = dedupe_key(&fields) {
            assert!(!key.is_empty());
        }
    }
});
