#![no_main]
//! The Referer's reading never panics, and an AppId it reads came from the exact form.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(app_id) = weapp_wire::referer::mini_program_app_id(data) {
        let expected = format!("https://servicewechat.com/{app_id}/");
        assert!(data.starts_with(expected.as_bytes()));
        assert!(data.ends_with(b"/page-frame.html"));
    }
});
