//! Request paths, as the gateway normalizes them before routing: never a panic, and what comes
//! out is what a framework would read the same way — no dot segment, no empty segment, no
//! encoded separator, no `;`, no `\`, unchanged by a second normalization.
//!
//! Input: the path, as bytes hyper would hand over (visible ASCII; anything else is skipped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weapp_wire::path::normalize;

fuzz_target!(|data: &[u8]| {
    if !data.iter().all(|b| b.is_ascii_graphic()) {
        return;
    }
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = normalize(path) else {
        return;
    };
    if !path.starts_with('/') {
        assert_eq!(normal, path, "only paths are normalized");
        return;
    }
    assert!(normal.starts_with('/'));
    let inner = normal.trim_end_matches('/');
    for segment in inner.split('/').skip(1) {
        assert!(!segment.is_empty(), "{path} -> {normal}: an empty segment");
        assert!(segment != "." && segment != "..", "{path} -> {normal}: a dot segment");
    }
    let upper = normal.to_ascii_uppercase();
    for refused in ["%2F", "%5C", "%3B", "%00", "%2E", "\\", ";"] {
        assert!(!upper.contains(refused), "{path} -> {normal}: {refused}");
    }
    assert!(!normal.contains("//"), "{path} -> {normal}");
    assert_eq!(normalize(&normal).as_deref(), Ok(&*normal), "{path}: not idempotent");
});
