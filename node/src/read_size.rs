//! Reading a socket into a connection's input buffer, with a read size that follows the traffic.
//!
//! The read size doubles while reads fill it and shrinks back otherwise: the spare room has to be
//! zeroed before each read, and small requests should not pay for zeroing a large chunk.

use bytes::BytesMut;
use futures::AsyncReadExt;
use glommio::net::TcpStream;

/// Bytes asked of a read, at first and at most.
const READ_CHUNK_MIN: usize = 4 * 1024;
const READ_CHUNK_MAX: usize = 256 * 1024;

pub struct AdaptiveRead {
    chunk: usize,
}

impl Default for AdaptiveRead {
    fn default() -> Self {
        AdaptiveRead { chunk: READ_CHUNK_MIN }
    }
}

impl AdaptiveRead {
    /// The capacity a fresh input or output buffer starts with.
    pub const INITIAL: usize = READ_CHUNK_MIN;

    /// Appends what one read returns to `buf`; `Ok(0)` at end of stream.
    pub async fn read(&mut self, stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
        let filled = buf.len();
        buf.resize(filled + self.chunk, 0);
        let read = stream.read(&mut buf[filled..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        buf.truncate(filled + n);
        self.chunk = if n == self.chunk {
            (self.chunk * 2).min(READ_CHUNK_MAX)
        } else {
            (self.chunk / 2).max(READ_CHUNK_MIN)
        };
        read
    }
}
