//! End-to-end suite: one test binary, every test on its own stack (sandbox + session-svc +
//! gateway-svc in-process, each on a reserved port).
mod access;
mod access_token;
mod admin;
mod auth_request;
mod cache;
mod conformance;
mod example_backend;
mod forwarding;
mod grpc;
mod identity;
mod lifecycle;
mod limits;
mod login;
mod mongo_store;
mod nginx;
mod observability;
mod push;
mod readme;
mod relay;
mod resilience;
mod sandbox;
mod sessions;
mod spoofing;
mod wafer_fidelity;
mod websocket;
mod wechat_users;
