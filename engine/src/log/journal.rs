//! The records a [`Keyspace`](crate::Keyspace) produces as it mutates, waiting to be written to
//! the shard's log.
//!
//! A [`Journal`] attached to a keyspace (see [`Keyspace::attach_journal`](crate::Keyspace::attach_journal))
//! receives one encoded record per mutation that took effect, with consecutive sequences. The
//! node drains the bytes with [`Journal::take_pending`] and writes them to the current segment;
//! the bytes are whole records back to back, exactly as they go on disk.

use super::format::{encode_record, Record, RecordType};

/// Encoded records not yet handed to the log writer. See the module doc.
#[derive(Debug)]
pub struct Journal {
    next_seq: u64,
    pending: Vec<u8>,
    pending_records: u64,
    enabled: bool,
}

impl Journal {
    /// A journal whose first record will carry sequence `next_seq` (the recovery report's next
    /// sequence).
    pub fn new(next_seq: u64) -> Self {
        Journal {
            next_seq,
            pending: Vec::new(),
            pending_records: 0,
            enabled: true,
        }
    }

    /// The sequence the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence of the last record produced (0 before the first record of a new log).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Bytes of encoded records waiting.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Records waiting.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// The encoded records waiting, back to back.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Moves the waiting bytes into `into` (which should be empty) and keeps `into`'s old
    /// allocation as the journal's buffer, so that a writer alternating two buffers never
    /// allocates in steady state.
    pub fn take_pending(&mut self, into: &mut Vec<u8>) {
        into.clear();
        std::mem::swap(&mut self.pending, into);
        self.pending_records = 0;
    }

    /// Stops (or resumes) collecting records. While disabled, mutations produce nothing and the
    /// sequence does not advance: once the node's log has failed nothing more can be made
    /// durable, and buffering would only grow memory without bound.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Drops the waiting records without writing them; their sequences are not reused.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
        self.pending_records = 0;
    }

    /// Appends one record with the next sequence. The caller guarantees the fields fit the
    /// record type's rules (see `engine/FORMAT.md`).
    pub fn append(&mut self, kind: RecordType, db: u16, key: &[u8], value: &[u8], expiry_ms: u64) {
        if !self.enabled {
            return;
        }
        let rec = Record {
            kind,
            db,
            flags: 0,
            sequence: self.next_seq,
            expiry_ms,
            key,
            value,
        };
        let start = self.pending.len();
        self.pending.resize(start + rec.encoded_len(), 0);
        // The keyspace only logs shapes it controls (key and value sizes are bounded by the
        // engine's own 512 MiB limit), so a failure here is a bug, not bad input.
        encode_record(&rec, &mut self.pending[start..]).expect("journal records are well-formed");
        self.next_seq += 1;
        self.pending_records += 1;
    }

    /// Appends a SwapDb record for databases `a` and `b`.
    pub fn append_swap_db(&mut self, a: u16, b: u16) {
        self.append(RecordType::SwapDb, a, &b.to_le_bytes(), b"", 0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::decode_record;
    use super::super::recovery::{KeyspaceReplay, ReplayOp};
    use super::super::test_writer::live;
    use super::*;
    use crate::{EngineConfig, EvictionPolicy, Expiry, Keyspace};
    use proptest::prelude::*;

    const DBS: usize = 3;

    fn keyspace(maxmemory_bytes: u64, policy: EvictionPolicy) -> Keyspace {
        Keyspace::new(EngineConfig {
            databases: DBS,
            maxmemory_bytes,
            policy,
            eviction_samples: 5,
        })
    }

    /// Decodes `bytes` (records from sequence `first`) and replays them into a fresh keyspace.
    fn replayed(bytes: &[u8], first: u64, now: u64) -> Keyspace {
        let mut ks = keyspace(0, EvictionPolicy::NoEviction);
        let mut rp = KeyspaceReplay::new(&mut ks);
        let (mut at, mut seq) = (0, first);
        while at < bytes.len() {
            let rec = decode_record(&bytes[at..], seq).unwrap();
            rp.apply(&ReplayOp::from_record(&rec).unwrap()).unwrap();
            at += rec.encoded_len();
            seq += 1;
        }
        rp.finish(now);
        ks
    }

    #[derive(Clone, Debug)]
    enum Ttl {
        Persist,
        Keep,
        Future(u64),
        Past(u64),
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set(usize, u8, usize, Ttl),
        Remove(usize, u8),
        SetExpiry(usize, u8, Option<i64>),
        FlushDb(usize),
        FlushAll,
        Move(usize, usize, u8),
        Swap(usize, usize),
        Get(usize, u8),
        Advance(u64),
        ActiveExpire,
    }

    fn op() -> impl Strategy<Value = Op> {
        let db = 0..DBS;
        let key = 0..16u8;
        let len = prop_oneof![0..40usize, 200..2000usize, Just(20_000usize)];
        let ttl = prop_oneof![
            Just(Ttl::Persist),
            Just(Ttl::Keep),
            (1..3000u64).prop_map(Ttl::Future),
            (0..500u64).prop_map(Ttl::Past),
        ];
        prop_oneof![
            10 => (db.clone(), key.clone(), len, ttl).prop_map(|(d, k, l, t)| Op::Set(d, k, l, t)),
            2 => (db.clone(), key.clone()).prop_map(|(d, k)| Op::Remove(d, k)),
            3 => (db.clone(), key.clone(), prop::option::of(-500..3000i64)).prop_map(|(d, k, t)| Op::SetExpiry(d, k, t)),
            1 => db.clone().prop_map(Op::FlushDb),
            1 => Just(Op::FlushAll),
            2 => (db.clone(), db.clone(), key.clone()).prop_map(|(a, b, k)| Op::Move(a, b, k)),
            1 => (db.clone(), db.clone()).prop_map(|(a, b)| Op::Swap(a, b)),
            2 => (db, key).prop_map(|(d, k)| Op::Get(d, k)),
            3 => (0..1000u64).prop_map(Op::Advance),
            1 => Just(Op::ActiveExpire),
        ]
    }

    fn run(ks: &mut Keyspace, ops: &[Op], now: &mut u64) {
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Op::Set(db, k, len, ref ttl) => {
                    let expiry = match *ttl {
                        Ttl::Persist => Expiry::Persist,
                        Ttl::Keep => Expiry::Keep,
                        Ttl::Future(t) => Expiry::At(*now + t),
                        Ttl::Past(t) => Expiry::At(now.saturating_sub(t).max(1)),
                    };
                    // Under a tight budget a write may be refused; its evictions still count.
                    let _ = ks.set(db, &[k], &vec![i as u8; len], expiry, *now);
                }
                Op::Remove(db, k) => {
                    ks.remove(db, &[k], *now);
                }
                Op::SetExpiry(db, k, t) => {
                    let at = t.map(|t| (*now as i64 + t).max(1) as u64);
                    ks.set_expiry(db, &[k], at, *now);
                }
                Op::FlushDb(db) => ks.flush_db(db),
                Op::FlushAll => ks.flush_all(),
                Op::Move(a, b, k) => {
                    ks.move_key(a, b, &[k], *now);
                }
                Op::Swap(a, b) => ks.swap_db(a, b),
                Op::Get(db, k) => {
                    ks.get(db, &[k], *now);
                }
                Op::Advance(ms) => *now += ms,
                Op::ActiveExpire => {
                    ks.active_expire_cycle(*now, &mut || false);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Replaying the journal into a fresh keyspace gives exactly the live state.
        #[test]
        fn journal_replay_matches_keyspace(ops in prop::collection::vec(op(), 1..250), budget in 0..3usize) {
            let (max, policy) = [
                (0, EvictionPolicy::NoEviction),
                (400_000, EvictionPolicy::AllKeysLru),
                (400_000, EvictionPolicy::VolatileTtl),
            ][budget];
            let mut ks = keyspace(max, policy);
            ks.attach_journal(Journal::new(1));
            let mut now = 1_000;
            run(&mut ks, &ops, &mut now);
            let j = ks.detach_journal().unwrap();
            prop_assert_eq!(j.next_seq() - 1, j.pending_records());
            let mut copy = replayed(j.pending(), 1, now);
            prop_assert_eq!(live(&mut copy, now), live(&mut ks, now));
        }
    }

    #[test]
    fn evictions_are_logged_as_deletes() {
        let mut ks = keyspace(300_000, EvictionPolicy::AllKeysLru);
        ks.attach_journal(Journal::new(1));
        for i in 0..2000u32 {
            ks.set(
                (i % 3) as usize,
                &i.to_le_bytes(),
                &[i as u8; 700],
                Expiry::Persist,
                1000,
            )
            .unwrap();
        }
        assert!(ks.stats().evicted_keys > 500);
        let j = ks.journal_mut().unwrap();
        let mut bytes = Vec::new();
        j.take_pending(&mut bytes);
        let mut copy = replayed(&bytes, 1, 1000);
        let expected = live(&mut ks, 1000);
        assert_eq!(expected.len() as u64, 2000 - ks.stats().evicted_keys);
        assert_eq!(live(&mut copy, 1000), expected);
    }

    #[test]
    fn each_mutation_logs_its_final_effect() {
        let mut ks = keyspace(0, EvictionPolicy::NoEviction);
        ks.set(0, b"pre", b"v", Expiry::At(5000), 1000).unwrap();
        ks.attach_journal(Journal::new(100));
        let now = 1000;
        ks.set(0, b"pre", b"w", Expiry::Keep, now).unwrap(); // Set with the kept absolute expiry
        ks.set(0, b"gone", b"v", Expiry::At(10), now).unwrap(); // nothing: never existed
        ks.set(0, b"pre", b"v", Expiry::At(10), now).unwrap(); // Delete
        assert!(!ks.remove(0, b"pre", now)); // nothing
        ks.set(1, b"k", b"v", Expiry::Persist, now).unwrap(); // Set
        assert!(ks.set_expiry(1, b"k", None, now)); // nothing: no TTL to remove
        assert!(ks.set_expiry(1, b"k", Some(7000), now)); // Expire
        assert!(ks.set_expiry(1, b"k", None, now)); // Persist
        assert!(ks.move_key(1, 2, b"k", now)); // Delete + Set
        let epoch = ks.swap_epoch();
        ks.swap_db(0, 2); // SwapDb
        ks.swap_db(1, 1); // nothing
        assert_eq!(ks.swap_epoch(), epoch + 1);
        assert!(ks.set_expiry(0, b"k", Some(now), now)); // Delete
        ks.flush_db(1); // FlushDb
        ks.flush_all(); // FlushAll
        let j = ks.detach_journal().unwrap();
        let mut got = Vec::new();
        let (mut at, mut seq) = (0, 100);
        while at < j.pending_len() {
            let r = decode_record(&j.pending()[at..], seq).unwrap();
            got.push((r.kind, r.db, r.key.to_vec(), r.value.to_vec(), r.expiry_ms));
            at += r.encoded_len();
            seq += 1;
        }
        use RecordType as T;
        let expected = vec![
            (T::Set, 0, b"pre".to_vec(), b"w".to_vec(), 5000),
            (T::Delete, 0, b"pre".to_vec(), vec![], 0),
            (T::Set, 1, b"k".to_vec(), b"v".to_vec(), 0),
            (T::Expire, 1, b"k".to_vec(), vec![], 7000),
            (T::Persist, 1, b"k".to_vec(), vec![], 0),
            (T::Delete, 1, b"k".to_vec(), vec![], 0),
            (T::Set, 2, b"k".to_vec(), b"v".to_vec(), 0),
            (T::SwapDb, 0, 2u16.to_le_bytes().to_vec(), vec![], 0),
            (T::Delete, 0, b"k".to_vec(), vec![], 0),
            (T::FlushDb, 1, vec![], vec![], 0),
            (T::FlushAll, 0, vec![], vec![], 0),
        ];
        assert_eq!(got, expected);
        assert_eq!(j.next_seq(), 100 + expected.len() as u64);
        // Without a journal nothing is recorded, and re-attaching continues the sequence.
        ks.set(0, b"x", b"y", Expiry::Persist, now).unwrap();
        ks.attach_journal(Journal::new(j.next_seq()));
        ks.remove(0, b"x", now);
        assert_eq!(ks.journal_mut().unwrap().pending_records(), 1);
    }

    #[test]
    fn records_are_consecutive_and_take_pending_reuses_buffers() {
        let mut j = Journal::new(10);
        assert_eq!((j.next_seq(), j.last_seq(), j.pending_len()), (10, 9, 0));
        j.append(RecordType::Set, 1, b"k", b"v", 0);
        j.append(RecordType::Delete, 1, b"k", b"", 0);
        j.append_swap_db(0, 3);
        assert_eq!((j.next_seq(), j.last_seq(), j.pending_records()), (13, 12, 3));
        let mut at = 0;
        for (seq, kind) in [
            (10, RecordType::Set),
            (11, RecordType::Delete),
            (12, RecordType::SwapDb),
        ] {
            let rec = decode_record(&j.pending()[at..], seq).unwrap();
            assert_eq!(rec.kind, kind);
            at += rec.encoded_len();
        }
        assert_eq!(at, j.pending_len());

        let mut spare = Vec::with_capacity(4096);
        let spare_ptr = spare.as_ptr();
        let pending_ptr = j.pending().as_ptr();
        j.take_pending(&mut spare);
        assert_eq!((spare.len(), spare.as_ptr()), (at, pending_ptr));
        assert_eq!((j.pending_len(), j.pending_records()), (0, 0));
        j.append(RecordType::FlushAll, 0, b"", b"", 0);
        assert_eq!(j.pending().as_ptr(), spare_ptr, "the caller's buffer is reused");
        assert_eq!(decode_record(j.pending(), 13).unwrap().kind, RecordType::FlushAll);
    }

    #[test]
    fn disabled_journal_drops_records() {
        let mut j = Journal::new(1);
        j.set_enabled(false);
        j.append(RecordType::Set, 0, b"k", b"v", 0);
        assert_eq!((j.next_seq(), j.pending_len(), j.last_seq()), (1, 0, 0));
        j.set_enabled(true);
        j.append(RecordType::Set, 0, b"k", b"v", 0);
        assert_eq!(j.next_seq(), 2);
        j.discard_pending();
        assert_eq!((j.pending_len(), j.next_seq()), (0, 2));
    }
}
