//! The business routes: which prefixes go to which upstream (`route_table.rs`) and forwarding
//! (`forward.rs`, the session's identity added) over a keep-alive pool per upstream
//! (`upstream.rs`, also the relay's and the health probe's HTTP client).
pub mod forward;
pub mod h1;
pub mod route_table;
pub mod upstream;
