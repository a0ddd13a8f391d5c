//! Decoding errors and the error codes an ERROR frame carries (PROTOCOL.md, "Error codes").
//!
//! A *fatal* error means the byte stream can no longer be framed or trusted (bad magic, unknown
//! version, impossible lengths, CRC mismatch): the decoder is poisoned and the connection should
//! send one ERROR frame with request id 0 and close. Any other error concerns one well-framed
//! frame whose bytes were consumed: the peer answers it with an ERROR frame carrying that frame's
//! request id and carries on.

/// The error code of an ERROR frame. Any `u16` may appear on the wire; the constants are the ones
/// version 1 defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    // Fatal framing errors (the connection closes).
    pub const BAD_MAGIC: ErrorCode = ErrorCode(1);
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    pub const RESERVED_NOT_ZERO: ErrorCode = ErrorCode(3);
    pub const LENGTH_MISMATCH: ErrorCode = ErrorCode(4);
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(5);
    pub const KEY_TOO_LARGE: ErrorCode = ErrorCode(6);
    pub const VALUE_TOO_LARGE: ErrorCode = ErrorCode(7);
    pub const CRC_MISMATCH: ErrorCode = ErrorCode(8);
    // Per-frame errors (the frame is skipped, the connection stays open).
    pub const UNKNOWN_OPCODE: ErrorCode = ErrorCode(16);
    pub const WRONG_DIRECTION: ErrorCode = ErrorCode(17);
    pub const INVALID_FLAGS: ErrorCode = ErrorCode(18);
    pub const MALFORMED: ErrorCode = ErrorCode(19);
    pub const BATCH_TOO_LARGE: ErrorCode = ErrorCode(20);
    pub const BATCH_MISMATCH: ErrorCode = ErrorCode(21);
    pub const ENTRY_KEY_TOO_LARGE: ErrorCode = ErrorCode(22);
    // Errors of the operation itself (the request was well formed; the connection stays open).
    /// The key (or a batch's key) belongs to another shard: nothing was done. The message names
    /// the owning shard; a client refreshes its topology and sends the request there.
    pub const WRONG_SHARD: ErrorCode = ErrorCode(32);
    /// The write needs memory the node's budget cannot give (Redis's OOM error).
    pub const OUT_OF_MEMORY: ErrorCode = ErrorCode(33);
    /// INCR on a value that is not a 64-bit decimal integer.
    pub const NOT_AN_INTEGER: ErrorCode = ErrorCode(34);
    /// INCR would overflow a signed 64-bit integer.
    pub const OVERFLOW: ErrorCode = ErrorCode(35);
    /// The node refuses writes because its log cannot take records (disk failure or disk full);
    /// reads keep working.
    pub const WRITES_REFUSED: ErrorCode = ErrorCode(36);
    /// A key or value larger than the store accepts.
    pub const TOO_LARGE: ErrorCode = ErrorCode(37);
    /// The node is shutting down; nothing was done.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(38);
    /// The node already serves `maxclients` connections; it closes this one.
    pub const TOO_MANY_CONNECTIONS: ErrorCode = ErrorCode(39);
}

/// Why bytes could not be decoded into a frame, a request or a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad magic 0x{0:04x}")]
    BadMagic(u16),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("frame length {declared} does not match its sections ({computed} bytes)")]
    LengthMismatch { declared: u32, computed: u64 },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge { len: u64, max: u64 },
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge { len: u64, max: u64 },
    #[error("CRC mismatch: frame says 0x{stored:08x}, bytes give 0x{computed:08x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("opcode 0x{0:02x} travels the other way")]
    WrongDirection(u8),
    #[error("flags 0x{flags:04x} are not valid for opcode 0x{opcode:02x}")]
    InvalidFlags { opcode: u8, flags: u16 },
    #[error("malformed frame (opcode 0x{opcode:02x}): {reason}")]
    Malformed { opcode: u8, reason: &'static str },
    #[error("batch of {count} entries exceeds the limit of {max}")]
    BatchTooLarge { count: u64, max: u64 },
    #[error("batch entry key of {len} bytes exceeds the limit of {max}")]
    EntryKeyTooLarge { len: u64, max: u64 },
    #[error("batch does not match its count: {0}")]
    BatchMismatch(&'static str),
}

impl FrameError {
    /// The code an ERROR frame reporting this error carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic(_) => ErrorCode::BAD_MAGIC,
            FrameError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            FrameError::ReservedNotZero => ErrorCode::RESERVED_NOT_ZERO,
            FrameError::LengthMismatch { .. } => ErrorCode::LENGTH_MISMATCH,
            FrameError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            FrameError::KeyTooLarge { .. } => ErrorCode::KEY_TOO_LARGE,
            FrameError::ValueTooLarge { .. } => ErrorCode::VALUE_TOO_LARGE,
            FrameError::CrcMismatch { .. } => ErrorCode::CRC_MISMATCH,
            FrameError::UnknownOpcode(_) => ErrorCode::UNKNOWN_OPCODE,
            FrameError::WrongDirection(_) => ErrorCode::WRONG_DIRECTION,
            FrameError::InvalidFlags { .. } => ErrorCode::INVALID_FLAGS,
            FrameError::Malformed { .. } => ErrorCode::MALFORMED,
            FrameError::BatchTooLarge { .. } => ErrorCode::BATCH_TOO_LARGE,
            FrameError::BatchMismatch(_) => ErrorCode::BATCH_MISMATCH,
            FrameError::EntryKeyTooLarge { .. } => ErrorCode::ENTRY_KEY_TOO_LARGE,
        }
    }

    /// True when the stream can no longer be framed: the decoder is poisoned by this error.
    pub fn is_fatal(&self) -> bool {
        self.code().0 < ErrorCode::UNKNOWN_OPCODE.0
    }
}
