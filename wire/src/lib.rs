//! Everything weapp reads from outside before it trusts it, with no I/O: wafer's parameters
//! (`params`), WeChat's user data (`user_data`: base64, AES-128-CBC, PKCS#7, JSON with a
//! watermark, rawData signatures) and WeChat's `jscode2session` answers (`wechat_answer`).
//! A crate of its own so that the fuzz targets in `fuzz/` build in seconds, not minutes.

pub mod params;
pub mod user;
pub mod user_data;
pub mod wechat_answer;

pub use user::UserInfo;
