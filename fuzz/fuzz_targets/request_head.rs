//! HTTP/1 request heads, as the gateway reads every one before anything serves it
//! (`weapp_wire::request_head`): never a panic, and what passes is what every reader reads
//! one way — a head that ends where it says (the bytes after it change nothing), no bare LF,
//! no fragment, at most one length, no transfer coding beside it, one Host in HTTP/1.1.
//!
//! Input: a client's first bytes.
#![no_main]

use http::{HeaderMap, header};
use libfuzzer_sys::fuzz_target;
use weapp_wire::request_head::{Body, Limits, Parsed, Serve, parse};

const LIMITS: Limits = Limits {
    max_headers: 64,
    max_bytes: 16 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut fields = HeaderMap::new();
    let Parsed::Head(head) = parse(data, LIMITS, &mut fields, true) else {
        return;
    };
    assert!(head.len <= data.len());
    let bytes = &data[..head.len];
    assert!(bytes.ends_with(b"\r\n\r\n"), "{bytes:?}");
    for (i, b) in bytes.iter().enumerate() {
        assert!(*b != b'\n' || (i > 0 && bytes[i - 1] == b'\r'), "a bare LF passed");
    }
    assert!(!head.target.contains('#'));
    // The head alone reads the same: nothing after it was looked at.
    let mut alone = HeaderMap::new();
    match parse(bytes, LIMITS, &mut alone, true) {
        Parsed::Head(again) => {
            assert_eq!((again.len, again.body, again.serve), (head.len, head.body, head.serve));
            assert_eq!(alone, fields);
        }
        other => panic!("the head alone read as {other:?}"),
    }
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let lines = |name: &str| text.split("\r\n").skip(1).filter(|l| l.starts_with(name)).count();
    if text.split("\r\n").next().is_some_and(|line| line.ends_with(" http/1.1")) {
        assert_eq!(lines("host:"), 1, "{text}");
    }
    if head.body == Body::Chunked {
        assert_eq!(lines("content-length:"), 0, "{text}");
        assert_eq!(lines("transfer-encoding:"), 1, "{text}");
    }
    if head.serve == Serve::Fast {
        assert!(fields.get_all(header::CONTENT_LENGTH).iter().count() <= 1);
        assert!(!fields.contains_key(header::TRANSFER_ENCODING));
        assert!(head.target.starts_with('/'));
    }
});
