//! End-to-end suite: one test binary, every test on its own stack (sandbox + session-svc +
//! gateway-svc on port 0).
mod cache;
mod conformance;
mod grpc;
mod lifecycle;
mod limits;
mod login;
mod mongo_store;
mod nginx;
mod resilience;
mod sessions;
mod websocket;
