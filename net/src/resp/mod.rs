//! The Redis serialization protocol, as spoken by corekv's RESP port.
//!
//! [`RequestParser`] turns the bytes a client sent into commands (arrays of `Bytes` arguments that
//! share the connection's read buffer), and [`ReplyEncoder`] writes replies in RESP2 or RESP3.

mod encode;
mod parse;

pub use encode::{Protocol, ReplyEncoder};
pub use parse::{ParseError, ParseLimits, RequestParser};
