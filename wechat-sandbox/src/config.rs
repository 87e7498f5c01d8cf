//! What the sandbox is told: the apps it knows, how long codes and tokens live, and the
//! transport faults it can be asked to answer with.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One mini-program registered with the sandbox.
#[derive(Clone, Debug)]
pub struct App {
    pub app_id: String,
    pub app_secret: String,
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Registered apps; the first is the default for minting.
    pub apps: Vec<App>,
    /// How long a minted code stays exchangeable (WeChat: five minutes).
    pub code_ttl: Duration,
    /// Lifetime of a new access_token (WeChat: two hours).
    pub token_ttl: Duration,
}

impl SandboxConfig {
    pub fn single(app_id: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            apps: vec![App {
                app_id: app_id.into(),
                app_secret: app_secret.into(),
            }],
            code_ttl: Duration::from_secs(300),
            token_ttl: Duration::from_secs(7200),
        }
    }
}

/// Transport-level misbehaviour the code's exchange answers with, to test clients of WeChat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// HTTP 500 with an HTML body.
    Http500,
    /// HTTP 200 whose body is not JSON.
    Malformed,
    /// HTTP 200 with the JSON cut off half-way.
    Truncated,
}
