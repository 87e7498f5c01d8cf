//! A local WeChat sandbox: `GET /sns/jscode2session` as WeChat documents it, plus a
//! sandbox-only `POST /sandbox/mint` that hands out a one-time login code together with the
//! matching `encryptedData`/`iv`/`rawData`/`signature` a real `wx.getUserInfo()` would give;
//! and the server APIs a central control server calls (`cgi-bin/token`, `stable_token`,
//! `getuserphonenumber`, `checksession`, `resetusersessionkey`) with sandbox-only ways to mint
//! phone codes and encrypted user data; and the APIs a backend calls most through session-svc's
//! open-API proxy (content security, subscribe messages, mini-program codes, URL links).
//!
//! It exists so that the whole stack can run and be tested on a machine that cannot reach
//! `api.weixin.qq.com`. Production points session-svc at the real WeChat.

mod config;
mod crypto;
mod server;
mod server_api;
mod wxa;

pub use server::{
    App, CodeStats, Fault, MintRequest, MintedLogin, Profile, Sandbox, SandboxConfig, router, serve,
};
pub use server_api::{
    EncryptedUserData, MintedPhoneCode, PhoneCodeRequest, TokenFailure, TokenStats, UserDataRequest,
};
pub use wxa::{RISKY_WORDS, SentMessage, Subscription, WxaApis, WxaCall, wxacode_image};
