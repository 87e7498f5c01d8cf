//! Everything weapp reads from outside before it trusts it, with no I/O: HTTP/1 request heads
//! (`request_head`: the one strict reading every request gets at the gateway) and bodies'
//! framing (`framing`), request paths (`path`: normalized before the gateway routes on
//! them), wafer's parameters
//! (`params`), the mini-program `Referer` WeChat writes (`referer`), WeChat's user data (`user_data`: base64, AES-128-CBC, PKCS#7, JSON with a
//! watermark, rawData signatures) and WeChat's `jscode2session` answers (`wechat_answer`).
//! A crate of its own so that the fuzz targets in `fuzz/` build in seconds, not minutes.

pub mod framing;
pub mod params;
pub mod path;
pub mod push_request;
pub mod referer;
pub mod request_head;
pub mod since;
pub mod user;
pub mod user_data;
pub mod wechat_answer;
pub mod wechat_event;
pub mod wechat_push;

pub use user::UserInfo;

use sha2::{Digest as _, Sha256};

/// A short, stable stand-in for an identifier that must not be shown in full (a session id,
/// an openId in a log line): the first 4 bytes of its SHA-256, in hex. Both services compute
/// it, so a session's `sid` in an identity assertion matches the gateway's `X-Weapp-Session`.
pub fn short_hash(value: &str) -> String {
    hex::encode(&Sha256::digest(value.as_bytes())[..4])
}
