//! Session and login parameters, from any headers and any query string: never a panic, and
//! "no session parameters" only when neither the id nor the skey was given.
//!
//! Input, so that seeds are readable requests: the first line is the query string, every
//! further line a header `Name: value` (bytes hyper would refuse as a header are skipped, as
//! hyper never hands them over).
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weapp_wire::params::{self as wafer, SessionParams};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let query = lines
        .next()
        .and_then(|q| std::str::from_utf8(q).ok())
        .filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    match wafer::session_params(&headers, query) {
        SessionParams::Absent => {
            assert!(wafer::param(&headers, query, wafer::HEADER_ID).is_none());
            assert!(wafer::param(&headers, query, wafer::HEADER_SKEY).is_none());
        }
        SessionParams::Present { id, skey } => assert!(!id.is_empty() || !skey.is_empty()),
    }
    let login = wafer::login_params(&headers, query);
    for value in [
        login.code,
        login.encrypted_data,
        login.iv,
        login.raw_data,
        login.signature,
    ] {
        assert!(
            value.is_none_or(|v| !v.is_empty()),
            "empty counts as absent"
        );
    }
});
