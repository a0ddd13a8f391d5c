//! The layout of an item (header, key, value) inside its chunk.
//!
//! ```text
//! byte 0      flags: 0x80 live (so a free chunk, whose byte 0 is 0, is told apart),
//!                    0x01 has TTL, bits 1-2 key-length width code, bits 3-4 value-length width
//!                    code (0 = 1 byte, 1 = 2 bytes, 2 = 4 bytes)
//! bytes 1..4  LRU clock: seconds since the epoch, low 24 bits (wraps after ~194 days, as Redis's)
//! [8 bytes]   absolute expiry in ms, only when the TTL flag is set
//! 1|2|4 bytes key length, then 1|2|4 bytes value length (little endian)
//! key bytes, value bytes
//! ```
//!
//! A 16-byte key with a 32-byte value and no TTL takes 6 + 48 = 54 bytes (a 56-byte chunk).

pub const LIVE: u8 = 0x80;
const TTL: u8 = 0x01;
/// Largest key and largest value (Redis's 512 MiB).
pub const MAX_LEN: usize = 512 << 20;
pub const LRU_MASK: u32 = 0x00ff_ffff;

fn width_code(len: usize) -> u8 {
    if len < 1 << 8 {
        0
    } else if len < 1 << 16 {
        1
    } else {
        2
    }
}

fn width(code: u8) -> usize {
    1 << code
}

/// Bytes an item needs.
pub fn size(klen: usize, vlen: usize, ttl: bool) -> usize {
    4 + if ttl { 8 } else { 0 } + width(width_code(klen)) + width(width_code(vlen)) + klen + vlen
}

/// The parsed header of an item.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub expire_at: Option<u64>,
    pub key_at: usize,
    pub klen: usize,
    pub vlen: usize,
}

impl Layout {
    pub fn value_at(&self) -> usize {
        self.key_at + self.klen
    }
}

fn read_len(buf: &[u8], at: usize, code: u8) -> usize {
    match code {
        0 => buf[at] as usize,
        1 => u16::from_le_bytes([buf[at], buf[at + 1]]) as usize,
        _ => u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize,
    }
}

fn write_len(buf: &mut [u8], at: usize, code: u8, len: usize) {
    match code {
        0 => buf[at] = len as u8,
        1 => buf[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes()),
        _ => buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes()),
    }
}

pub fn layout(buf: &[u8]) -> Layout {
    let flags = buf[0];
    debug_assert!(flags & LIVE != 0);
    let (expire_at, mut at) = if flags & TTL != 0 {
        (Some(u64::from_le_bytes(buf[4..12].try_into().unwrap())), 12)
    } else {
        (None, 4)
    };
    let kc = (flags >> 1) & 3;
    let vc = (flags >> 3) & 3;
    let klen = read_len(buf, at, kc);
    at += width(kc);
    let vlen = read_len(buf, at, vc);
    at += width(vc);
    Layout {
        expire_at,
        key_at: at,
        klen,
        vlen,
    }
}

/// Writes the header and the key; returns where the value goes.
pub fn write_head(buf: &mut [u8], klen: usize, vlen: usize, expire_at: Option<u64>, lru: u32) -> usize {
    let kc = width_code(klen);
    let vc = width_code(vlen);
    buf[0] = LIVE | (kc << 1) | (vc << 3) | if expire_at.is_some() { TTL } else { 0 };
    buf[1..4].copy_from_slice(&lru.to_le_bytes()[..3]);
    let mut at = 4;
    if let Some(t) = expire_at {
        buf[4..12].copy_from_slice(&t.to_le_bytes());
        at = 12;
    }
    write_len(buf, at, kc, klen);
    at += width(kc);
    write_len(buf, at, vc, vlen);
    at + width(vc)
}

/// Writes a whole item into `buf` (which is at least [`size`] bytes).
pub fn write(buf: &mut [u8], key: &[u8], value: &[u8], expire_at: Option<u64>, lru: u32) {
    let at = write_head(buf, key.len(), value.len(), expire_at, lru);
    buf[at..at + key.len()].copy_from_slice(key);
    let at = at + key.len();
    buf[at..at + value.len()].copy_from_slice(value);
}

pub fn key(buf: &[u8]) -> &[u8] {
    let l = layout(buf);
    &buf[l.key_at..l.key_at + l.klen]
}

pub fn value(buf: &[u8]) -> &[u8] {
    let l = layout(buf);
    &buf[l.value_at()..l.value_at() + l.vlen]
}

pub fn expire_at(buf: &[u8]) -> Option<u64> {
    if buf[0] & TTL != 0 {
        Some(u64::from_le_bytes(buf[4..12].try_into().unwrap()))
    } else {
        None
    }
}

/// Changes the expiry of an item that already has one.
pub fn set_expire_at(buf: &mut [u8], t: u64) {
    debug_assert!(buf[0] & TTL != 0);
    buf[4..12].copy_from_slice(&t.to_le_bytes());
}

pub fn lru(buf: &[u8]) -> u32 {
    u32::from_le_bytes([buf[1], buf[2], buf[3], 0])
}

pub fn set_lru(buf: &mut [u8], lru: u32) {
    buf[1..4].copy_from_slice(&lru.to_le_bytes()[..3]);
}

/// The LRU clock value for a time.
pub fn lru_clock(now_ms: u64) -> u32 {
    ((now_ms / 1000) as u32) & LRU_MASK
}

/// Seconds between an item's LRU stamp and now (modulo the clock's wrap).
pub fn idle_secs(lru: u32, now_ms: u64) -> u64 {
    (lru_clock(now_ms).wrapping_sub(lru) & LRU_MASK) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_sizes() {
        assert_eq!(size(16, 32, false), 54);
        assert_eq!(size(16, 32, true), 62);
        for &(kl, vl) in &[(0, 0), (1, 255), (255, 256), (300, 70_000), (70_000, 3)] {
            for ttl in [None, Some(123_456_789u64)] {
                let key: Vec<u8> = (0..kl).map(|i| i as u8).collect();
                let val: Vec<u8> = (0..vl).map(|i| (i * 7) as u8).collect();
                let mut buf = vec![0u8; size(kl, vl, ttl.is_some())];
                write(&mut buf, &key, &val, ttl, 0xabcdef);
                assert_eq!(super::key(&buf), &key[..]);
                assert_eq!(value(&buf), &val[..]);
                assert_eq!(expire_at(&buf), ttl);
                assert_eq!(lru(&buf), 0xabcdef);
                assert_ne!(buf[0], 0);
            }
        }
    }

    #[test]
    fn idle_wraps() {
        assert_eq!(idle_secs(lru_clock(5_000), 7_999), 2);
        let wrap = (LRU_MASK as u64 + 1) * 1000;
        assert_eq!(idle_secs(lru_clock(wrap - 1000), wrap + 2000), 3);
    }
}
