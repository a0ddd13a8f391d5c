//! What each request is: the operation (by `--ratio`), the key (by `--key-pattern`) and the SET
//! value's size (by `--value-size`). One [`Generator`] per connection, seeded from `--seed` and
//! the connection's index, so a run's request sequence is reproducible (except for the
//! interleaving of the sequential pattern's shared counter).
//!
//! Keys are `--key-prefix` followed by the key's index zero-padded to the width of the largest
//! index (`key:00042` for 100,000 keys), so every key has the same length whatever its index.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::config::{KeyPattern, Workload};
use crate::target::Op;

/// Draws operations, keys and value sizes for one connection.
pub struct Generator {
    rng: SmallRng,
    read_weight: u32,
    total_weight: u32,
    keys: u64,
    pattern: KeyPattern,
    zipf: Option<Zipf<f64>>,
    /// Shared by every connection of a round for [`KeyPattern::Sequential`].
    sequence: Arc<AtomicU64>,
    /// The current key: prefix then `width` digits, rewritten in place.
    key: Vec<u8>,
    width: usize,
    value_min: usize,
    value_max: usize,
}

/// Number of decimal digits of the largest key index.
pub fn key_width(keys: u64) -> usize {
    keys.saturating_sub(1).max(1).ilog10() as usize + 1
}

/// The name of key `index` (what [`Generator::next_key`] returns for it).
pub fn key_name(workload: &Workload, index: u64) -> Vec<u8> {
    let width = key_width(workload.keys);
    let mut key = workload.key_prefix.as_bytes().to_vec();
    key.resize(key.len() + width, b'0');
    write_digits(&mut key, index);
    key
}

/// Writes `index` zero-padded into the trailing digits of `key`.
fn write_digits(key: &mut [u8], mut index: u64) {
    for digit in key.iter_mut().rev() {
        if !digit.is_ascii_digit() {
            break;
        }
        *digit = b'0' + (index % 10) as u8;
        index /= 10;
    }
}

impl Generator {
    /// `stream` tells connections apart (their random sequences differ).
    pub fn new(workload: &Workload, stream: u64, sequence: Arc<AtomicU64>) -> Generator {
        let seed = workload.seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let zipf = match workload.key_pattern {
            KeyPattern::Zipf => Some(Zipf::new(workload.keys, workload.zipf_skew).expect("validated zipf parameters")),
            _ => None,
        };
        let width = key_width(workload.keys);
        let mut key = workload.key_prefix.as_bytes().to_vec();
        key.resize(key.len() + width, b'0');
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            read_weight: workload.ratio.read,
            total_weight: workload.ratio.read + workload.ratio.write,
            keys: workload.keys,
            pattern: workload.key_pattern,
            zipf,
            sequence,
            key,
            width,
            value_min: workload.value_size.min,
            value_max: workload.value_size.max,
        }
    }

    pub fn next_op(&mut self) -> Op {
        if self.read_weight == self.total_weight || self.rng.gen_range(0..self.total_weight) < self.read_weight {
            Op::Get
        } else {
            Op::Set
        }
    }

    /// The next key's index in `0..keys`.
    pub fn next_index(&mut self) -> u64 {
        match self.pattern {
            KeyPattern::Uniform => self.rng.gen_range(0..self.keys),
            // Zipf samples ranks 1..=keys (as floats); rank 1 is the most popular.
            KeyPattern::Zipf => {
                let zipf = self.zipf.as_ref().expect("zipf pattern has a distribution");
                (zipf.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1
            }
            KeyPattern::Sequential => self.sequence.fetch_add(1, Ordering::Relaxed) % self.keys,
        }
    }

    /// The next key; valid until the next call.
    pub fn next_key(&mut self) -> &[u8] {
        let index = self.next_index();
        let len = self.key.len();
        write_digits(&mut self.key[len - self.width..], index);
        &self.key
    }

    pub fn next_value_len(&mut self) -> usize {
        if self.value_min == self.value_max {
            self.value_min
        } else {
            self.rng.gen_range(self.value_min..=self.value_max)
        }
    }
}

/// `len` printable pseudo-random bytes: the source every SET value is a prefix of.
pub fn value_source(len: usize, seed: u64) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ratio, ValueSize};

    fn workload(pattern: KeyPattern, keys: u64, ratio: Ratio) -> Workload {
        Workload {
            ratio,
            keys,
            key_pattern: pattern,
            zipf_skew: 0.99,
            key_prefix: "key:".into(),
            value_size: ValueSize { min: 10, max: 20 },
            seed: 1,
        }
    }

    #[test]
    fn key_names_are_padded() {
        let w = workload(KeyPattern::Uniform, 100_000, Ratio { read: 1, write: 1 });
        assert_eq!(key_name(&w, 42), b"key:00042");
        assert_eq!(key_name(&w, 99_999), b"key:99999");
        assert_eq!(key_width(1), 1);
        assert_eq!(key_width(10), 1);
        assert_eq!(key_width(11), 2);
    }

    #[test]
    fn sequential_keys_cover_the_keyspace_once() {
        let w = workload(KeyPattern::Sequential, 1000, Ratio { read: 0, write: 1 });
        let shared = Arc::new(AtomicU64::new(0));
        let mut a = Generator::new(&w, 0, shared.clone());
        let mut b = Generator::new(&w, 1, shared);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let g = if i % 3 == 0 { &mut a } else { &mut b };
            assert_eq!(g.next_op(), Op::Set);
            assert!(seen.insert(g.next_key().to_vec()));
        }
        assert!(seen.contains(&key_name(&w, 0)) && seen.contains(&key_name(&w, 999)));
    }

    #[test]
    fn ratio_and_sizes_are_respected() {
        let w = workload(KeyPattern::Zipf, 1000, Ratio { read: 9, write: 1 });
        let mut g = Generator::new(&w, 0, Arc::default());
        let gets = (0..10_000).filter(|_| g.next_op() == Op::Get).count();
        assert!((8_500..9_500).contains(&gets), "{gets}");
        for _ in 0..1000 {
            assert!((10..=20).contains(&g.next_value_len()));
            assert!(g.next_index() < 1000);
        }
        // Zipf: the most popular key is drawn far more often than 1 in 1000.
        let hot = (0..10_000).filter(|_| g.next_index() == 0).count();
        assert!(hot > 100, "{hot}");
    }
}
