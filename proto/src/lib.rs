//! Generated code for the `weapp.session.v1` gRPC package (see `weapp/session/v1/session.proto`),
//! the conversions between its messages and weapp's own types, and the metadata keys both
//! sides of the link read.

// Generated code, written as tonic writes it.
#[allow(unused_qualifications, clippy::unwrap_used, clippy::expect_used)]
pub mod session {
    pub mod v1 {
        tonic::include_proto!("weapp.session.v1");
    }
}

mod user;
pub use user::user_json;

/// Encoded `FileDescriptorSet` of every weapp proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("weapp_descriptor");

/// Metadata keys on statuses from session-svc.
pub mod metadata {
    /// Seconds until a RESOURCE_EXHAUSTED caller may try again.
    pub const RETRY_AFTER: &str = "retry-after";
    /// WeChat's errcode, on statuses caused by a WeChat refusal.
    pub const WECHAT_ERRCODE: &str = "wechat-errcode";
    /// On UNAUTHENTICATED and PERMISSION_DENIED answers about the caller's API key (not about
    /// a session): a gateway must not tell its client that the client's session is invalid.
    pub const API_KEY_REFUSED: &str = "weapp-api-key-refused";
}
