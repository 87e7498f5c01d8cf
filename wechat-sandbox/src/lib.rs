//! A local WeChat sandbox: `GET /sns/jscode2session` as WeChat documents it, plus a
//! sandbox-only `POST /sandbox/mint` that hands out a one-time login code together with the
//! matching `encryptedData`/`iv`/`rawData`/`signature` a real `wx.getUserInfo()` would give.
//!
//! It exists so that the whole stack can run and be tested on a machine that cannot reach
//! `api.weixin.qq.com`. Production points session-svc at the real WeChat.

mod crypto;
mod server;

pub use server::{
    App, CodeStats, Fault, MintRequest, MintedLogin, Profile, Sandbox, SandboxConfig, router, serve,
};
