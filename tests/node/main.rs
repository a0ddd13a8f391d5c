//! Black-box tests of corekv-node: each test starts the real binary on a free loopback port and
//! talks to it with real clients.
//!
//! `COREKV_TEST_TARGET=redis cargo test -p corekv-node --test node` runs the same suite against a
//! real redis-server instead (see `support`), to check the expectations themselves.

mod support;

mod client;
mod concurrency;
mod differential;
mod expiry;
mod hostile;
mod keys;
mod memory;
mod native;
mod persistence;
mod pipeline;
mod rdma;
mod server;
mod shutdown;
mod strings;
