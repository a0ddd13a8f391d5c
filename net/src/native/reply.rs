//! Responses written from borrowed slices, for a server answering straight out of its store:
//! [`Response::encode`](super::Response::encode) needs owned `Bytes`, which would mean a copy (and
//! an allocation) per value or error message.

use bytes::BytesMut;

use super::error::ErrorCode;
use super::frame::write_frame;
use super::header::{Flags, Opcode};

fn crc_flag(crc: bool) -> Flags {
    if crc {
        Flags::HAS_CRC
    } else {
        Flags::NONE
    }
}

/// Appends a VALUE response carrying `value`.
pub fn write_value(out: &mut BytesMut, request_id: u64, crc: bool, value: &[u8]) {
    write_frame(
        out,
        Opcode::Value as u8,
        crc_flag(crc),
        request_id,
        0,
        [&[], value, &[]],
    );
}

/// Appends an ERROR response with `code` and a message for people.
pub fn write_error(out: &mut BytesMut, request_id: u64, crc: bool, code: ErrorCode, message: &str) {
    write_frame(
        out,
        Opcode::Error as u8,
        crc_flag(crc),
        request_id,
        code.0.into(),
        [&[], message.as_bytes(), &[]],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{FrameDecoder, Limits, Response};
    use bytes::Bytes;

    #[test]
    fn slices_encode_like_owned_responses() {
        for crc in [false, true] {
            let mut out = BytesMut::new();
            write_value(&mut out, 7, crc, b"bar");
            write_error(&mut out, 8, crc, ErrorCode::WRONG_SHARD, "key belongs to shard 1");
            let mut decoder = FrameDecoder::new(Limits::default());
            let first = decoder.decode(&mut out).unwrap().unwrap();
            assert_eq!(first.request_id(), 7);
            assert_eq!(
                Response::decode(first, &Limits::default()).unwrap(),
                Response::Value(Bytes::from_static(b"bar"))
            );
            let second = decoder.decode(&mut out).unwrap().unwrap();
            assert_eq!(second.request_id(), 8);
            assert_eq!(
                Response::decode(second, &Limits::default()).unwrap(),
                Response::Error {
                    code: ErrorCode::WRONG_SHARD,
                    message: Bytes::from_static(b"key belongs to shard 1")
                }
            );
            assert!(out.is_empty());
        }
    }
}
