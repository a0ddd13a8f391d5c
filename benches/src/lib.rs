//! `corekv-bench`, corekv's latency benchmark tool, in the spirit of memtier_benchmark and
//! rpc-perf: GET/SET load against any RESP server (`resp://`) or a corekv node's native protocol
//! over TCP (`native://`) or RDMA (`rdma://`), closed loop or open loop (`--rate`) without
//! coordinated omission, latencies in HDR-style histograms, a text table, a versioned JSON
//! report, a percentile-spectrum plot and an alternating A/B comparison. Usage and the JSON schema: `benches/BENCH.md`.
//!
//! Modules, one job each:
//!
//! | module | job |
//! |---|---|
//! | [`config`] | command line, validation, the settings of a run |
//! | [`workload`] | which operation, key and value size each request has |
//! | [`target`] | target URLs, sockets and RDMA sessions, the RESP and native codecs |
//! | [`load`] | the load loops (tokio, blocking TCP, RDMA): threads, connections, pipelining, draining |
//! | [`pacing`] | the open loop's wait for each send time |
//! | [`latency`] | histograms and counters, merged across threads and rounds |
//! | [`progress`] | the live progress line |
//! | [`report`] | the JSON report and the text table |
//! | [`plot`] | the SVG percentile-spectrum plot |
//! | [`compare`] | the A/B table |
//! | [`app`] | the program: rounds, output files, exit code |

// The library exists for the binary and its tests: its module docs explain the internals and
// link to them (read with `cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod compare;
pub mod config;
pub mod latency;
pub mod load;
pub mod pacing;
pub mod plot;
pub mod progress;
pub mod report;
pub mod target;
pub mod workload;
