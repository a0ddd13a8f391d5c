//! The fixed 40-byte frame header, the opcodes and the flags (PROTOCOL.md, "Frame header").
//!
//! Every field is little-endian and every 8-byte field sits at an 8-byte offset, so a frame
//! placed in registered memory can be read in place. [`Header::parse`] checks only what does not
//! depend on the decoder's limits (magic, version, reserved bytes); the frame decoder checks the
//! lengths.

use super::error::FrameError;

/// `"CK"` on the wire: bytes `43 4B`.
pub const MAGIC: u16 = 0x4B43;
/// The only protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header that starts every frame.
pub const HEADER_LEN: usize = 40;
/// Size of the CRC32 trailer of a frame with [`Flags::HAS_CRC`].
pub const CRC_LEN: usize = 4;

/// Byte offsets of the header fields.
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 2;
    pub const OPCODE: usize = 3;
    pub const FLAGS: usize = 4;
    pub const RESERVED: usize = 6;
    pub const FRAME_LEN: usize = 8;
    pub const KEY_LEN: usize = 12;
    pub const REQUEST_ID: usize = 16;
    pub const VALUE_LEN: usize = 24;
    pub const EXTRA_LEN: usize = 28;
    pub const ARG: usize = 32;
    /// One past the last header byte.
    pub const END: usize = 40;
}

// The header is exactly its fields, laid end to end, with the 8-byte fields 8-aligned.
const _: () = assert!(HEADER_LEN == 2 + 1 + 1 + 2 + 2 + 4 + 4 + 8 + 4 + 4 + 8);
const _: () = assert!(offset::END == HEADER_LEN);
// (A mask rather than `is_multiple_of`, which is newer than the workspace's rust-version 1.80.)
const _: () = assert!(offset::REQUEST_ID & 7 == 0 && offset::ARG & 7 == 0 && HEADER_LEN & 7 == 0);

/// Operation codes. Requests are `0x01..=0x7F`, responses `0x80..=0xFF`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Ping = 0x01,
    Get = 0x02,
    Set = 0x03,
    Del = 0x04,
    MGet = 0x05,
    MSet = 0x06,
    Cas = 0x07,
    Incr = 0x08,
    Expire = 0x09,
    Ttl = 0x0A,
    Exists = 0x0B,
    Topology = 0x0C,
    Ok = 0x80,
    Value = 0x81,
    NotFound = 0x82,
    Integer = 0x83,
    Error = 0x84,
    TopologyReply = 0x85,
}

impl Opcode {
    pub const ALL: [Opcode; 18] = [
        Opcode::Ping,
        Opcode::Get,
        Opcode::Set,
        Opcode::Del,
        Opcode::MGet,
        Opcode::MSet,
        Opcode::Cas,
        Opcode::Incr,
        Opcode::Expire,
        Opcode::Ttl,
        Opcode::Exists,
        Opcode::Topology,
        Opcode::Ok,
        Opcode::Value,
        Opcode::NotFound,
        Opcode::Integer,
        Opcode::Error,
        Opcode::TopologyReply,
    ];

    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Self::ALL.into_iter().find(|op| *op as u8 == byte)
    }

    /// Response opcodes have the high bit set.
    pub fn is_response(self) -> bool {
        (self as u8) & 0x80 != 0
    }
}

/// The header's flag bits. Bits other than [`Flags::KNOWN`] must be zero in version 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    /// The frame ends with a CRC32 of all its preceding bytes.
    pub const HAS_CRC: Flags = Flags(1 << 0);
    /// SET only: store only if the key does not exist.
    pub const NX: Flags = Flags(1 << 1);
    /// SET only: store only if the key exists.
    pub const XX: Flags = Flags(1 << 2);
    /// The value section is a batch of entries and `arg` is their count.
    pub const BATCH: Flags = Flags(1 << 3);
    /// Every flag version 1 defines.
    pub const KNOWN: Flags = Flags(0x000F);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// The flags with `HAS_CRC` cleared (it is allowed on every frame).
    pub fn without_crc(self) -> Flags {
        Flags(self.0 & !Self::HAS_CRC.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A frame header as read from (or written to) the wire, magic and version aside.
///
/// `opcode` is the raw byte: an unknown opcode still frames correctly and is rejected per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub opcode: u8,
    pub flags: Flags,
    /// Total frame length: header, key, value, extra and CRC trailer.
    pub frame_len: u32,
    pub key_len: u32,
    pub request_id: u64,
    pub value_len: u32,
    pub extra_len: u32,
    /// Opcode-specific argument: TTL, delta, integer, batch count or error code.
    pub arg: u64,
}

impl Header {
    /// Reads a header, checking the magic, the version and the reserved bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let magic = u16_at(bytes, offset::MAGIC);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = bytes[offset::VERSION];
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if u16_at(bytes, offset::RESERVED) != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        Ok(Header {
            opcode: bytes[offset::OPCODE],
            flags: Flags(u16_at(bytes, offset::FLAGS)),
            frame_len: u32_at(bytes, offset::FRAME_LEN),
            key_len: u32_at(bytes, offset::KEY_LEN),
            request_id: u64_at(bytes, offset::REQUEST_ID),
            value_len: u32_at(bytes, offset::VALUE_LEN),
            extra_len: u32_at(bytes, offset::EXTRA_LEN),
            arg: u64_at(bytes, offset::ARG),
        })
    }

    /// The frame length these section lengths and flags imply (never overflows: at most ~12 GiB).
    pub fn computed_frame_len(&self) -> u64 {
        let crc = if self.flags.contains(Flags::HAS_CRC) {
            CRC_LEN
        } else {
            0
        };
        HEADER_LEN as u64 + u64::from(self.key_len) + u64::from(self.value_len) + u64::from(self.extra_len) + crc as u64
    }

    /// Writes the header, with magic, version and zero reserved bytes.
    pub fn write(&self, bytes: &mut [u8; HEADER_LEN]) {
        bytes[offset::MAGIC..offset::MAGIC + 2].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[offset::VERSION] = VERSION;
        bytes[offset::OPCODE] = self.opcode;
        bytes[offset::FLAGS..offset::FLAGS + 2].copy_from_slice(&self.flags.0.to_le_bytes());
        bytes[offset::RESERVED..offset::RESERVED + 2].copy_from_slice(&[0, 0]);
        bytes[offset::FRAME_LEN..offset::FRAME_LEN + 4].copy_from_slice(&self.frame_len.to_le_bytes());
        bytes[offset::KEY_LEN..offset::KEY_LEN + 4].copy_from_slice(&self.key_len.to_le_bytes());
        bytes[offset::REQUEST_ID..offset::REQUEST_ID + 8].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[offset::VALUE_LEN..offset::VALUE_LEN + 4].copy_from_slice(&self.value_len.to_le_bytes());
        bytes[offset::EXTRA_LEN..offset::EXTRA_LEN + 4].copy_from_slice(&self.extra_len.to_le_bytes());
        bytes[offset::ARG..offset::ARG + 8].copy_from_slice(&self.arg.to_le_bytes());
    }
}

pub(crate) fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
