//! Tests of `corekv_net::client` against an in-process fake node (`fake.rs`).

mod blocking;
mod fake;
#[cfg(feature = "tokio")]
mod tokio;
