//! Chunked bodies as the gateway follows them (`weapp_wire::framing::Chunked`): never a
//! panic, and the same answer however the bytes arrive — where the body ends, or that it is
//! malformed, does not depend on how the stream was cut into reads.
//!
//! Input: the first byte says where to cut; the rest is the body as sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weapp_wire::framing::Chunked;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = Chunked::default().feed(body).map_err(|_| ());
    let at = usize::from(cut).min(body.len());
    let mut pieces = Chunked::default();
    let split = match pieces.feed(&body[..at]) {
        Ok(Some(end)) => Ok(Some(end)),
        Ok(None) => pieces.feed(&body[at..]).map(|end| end.map(|e| e + at)).map_err(|_| ()),
        Err(_) => Err(()),
    };
    assert_eq!(whole, split, "cut at {at}");
    let sound = Chunked::default().sound_prefix(body);
    match whole {
        Ok(Some(end)) => {
            assert_eq!(sound, end);
            assert!(body[..end].ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert_eq!(sound, body.len()),
        Err(()) => assert!(sound < body.len()),
    }
});
