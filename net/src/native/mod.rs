//! corekv's native binary protocol (specified in `net/PROTOCOL.md`): sans-IO codec.
//!
//! Every frame is a fixed 40-byte little-endian [`Header`] followed by a key section, a value
//! section, an extra section and an optional CRC32 trailer; the header carries the whole frame's
//! length, so a frame can be received (or placed by RDMA) before it is parsed.
//!
//! - [`FrameDecoder`] splits a byte stream into [`Frame`]s, incrementally and without copying.
//! - [`Request::decode`] / [`Response::decode`] interpret a frame; [`Request::encode`] /
//!   [`Response::encode`] and [`BatchEncoder`] write frames into an output buffer.
//! - [`FrameError`] says what went wrong and maps to the [`ErrorCode`] of an ERROR frame.
//!
//! Responses carry the request id of the request they answer, so a server may complete a
//! connection's pipelined requests in any order.

mod batch;
mod error;
mod frame;
mod header;
mod message;
mod reply;
#[cfg(test)]
mod tests;

pub use batch::{Batch, BatchEncoder, BatchEntry, BatchIter, BatchKind, ABSENT, ENTRY_HEADER_LEN};
pub use error::{ErrorCode, FrameError};
pub use frame::{Frame, FrameDecoder, Limits};
pub use header::{offset, Flags, Header, Opcode, CRC_LEN, HEADER_LEN, MAGIC, VERSION};
pub use message::{Request, RequestRef, Response, SetCondition, Topology, HASH_COREKV_V1, TOPOLOGY_HEADER_LEN};
pub use reply::{write_error, write_value};
