//! Session resolution: every request's wafer session parameters become a user (or the reason
//! there is none) through the cache (`cache.rs`) and session-svc (`client.rs`, over its
//! replicas: `replicas.rs`, `failover.rs`), with the identity a business gets of that session
//! rendered once (`identity.rs`, weapp's names and Cloud Run's).
pub mod cache;
pub mod client;
pub mod failover;
pub mod identity;
pub mod replicas;
pub mod resolver;
pub mod user;
