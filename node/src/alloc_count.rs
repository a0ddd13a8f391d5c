//! A counting global allocator for tests: proves that the hot request path (parse, execute a
//! resident GET, encode) allocates nothing once its buffers are warm.
//!
//! Counts are per thread, so tests running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only a
// thread-local integer and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use corekv_engine::{EngineConfig, Keyspace};
    use corekv_net::resp::{Protocol, ReplyEncoder, RequestParser};
    use corekv_net::routing::key_shard;

    use super::allocations;
    use crate::commands::{self, ExecCtx, Handler};

    #[test]
    fn resident_get_allocates_nothing_once_warm() {
        let mut keyspace = Keyspace::new(EngineConfig {
            databases: 16,
            maxmemory_bytes: 0,
            policy: Default::default(),
            eviction_samples: 5,
        });
        keyspace
            .set(0, b"key:000000000042", &[b'v'; 32], corekv_engine::Expiry::Persist, 1)
            .unwrap();
        let request = b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000042\r\n";
        let mut parser = RequestParser::new(Default::default());
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(4096);
        let mut args: Vec<Bytes> = Vec::with_capacity(8);
        let mut scratch = Vec::new();
        let mut run_once = |keyspace: &mut Keyspace| {
            rbuf.extend_from_slice(request);
            assert!(parser.next(&mut rbuf, &mut args).unwrap());
            let spec = commands::lookup(&args[0]).unwrap();
            let Handler::Keyed(run) = spec.handler else {
                panic!("GET is keyed")
            };
            assert_eq!(key_shard(&args[1], 2), key_shard(b"key:000000000042", 2));
            let mut ctx = ExecCtx {
                keyspace,
                db: 0,
                now_ms: 2,
                scratch: &mut scratch,
            };
            run(&mut ctx, &args, &mut ReplyEncoder::new(&mut out, Protocol::Resp2));
            args.clear();
            assert_eq!(&out[..], &b"$32\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n"[..]);
            out.clear();
        };
        // Warm-up: the command table, the buffers' shared representation.
        for _ in 0..4 {
            run_once(&mut keyspace);
        }
        let before = allocations();
        for _ in 0..1000 {
            run_once(&mut keyspace);
        }
        assert_eq!(allocations() - before, 0, "a resident GET allocated");
    }
}
