//! Criterion micro-benchmarks of corekv's hot paths: the RESP codec, the native codec, the routing
//! hash and (below) the storage engine. Run with `cargo bench -p corekv-benches`.

use bytes::{Bytes, BytesMut};
use corekv_engine::slab_memory::SlabMemory;
use corekv_engine::{EngineConfig, EvictionPolicy, Expiry, Keyspace};
use corekv_net::native::{
    BatchEncoder, FrameDecoder, Limits, Opcode, Request, Response, SetCondition as NativeSetCondition,
};
use corekv_net::resp::{ParseLimits, Protocol, ReplyEncoder, RequestParser};
use corekv_net::routing::{key_shard, key_slot};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

// ---------------------------------------------------------------------------------------------
// net benches
// ---------------------------------------------------------------------------------------------

fn get_request() -> Vec<u8> {
    b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000042\r\n".to_vec()
}

fn set_request() -> Vec<u8> {
    let mut req = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$100\r\n".to_vec();
    req.extend_from_slice(&[b'v'; 100]);
    req.extend_from_slice(b"\r\n");
    req
}

/// Parses every request in `input` once, as a connection does after a read: append to the
/// connection's buffer (reused, so its memory is reclaimed once the previous arguments are
/// dropped), parse, then drop the arguments once the commands ran.
fn parse_all(parser: &mut RequestParser, buf: &mut BytesMut, args: &mut Vec<Bytes>, input: &[u8]) -> usize {
    buf.extend_from_slice(input);
    let mut arguments = 0;
    while parser.next(buf, args).expect("valid input") {
        arguments += args.len();
    }
    args.clear();
    arguments
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("resp_parse");
    let cases = [
        ("get", get_request(), 1u64),
        ("set_100b", set_request(), 1),
        ("pipeline_16_get", get_request().repeat(16), 16),
    ];
    for (name, input, requests) in cases {
        group.throughput(Throughput::Elements(requests));
        let mut parser = RequestParser::new(ParseLimits::default());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut args = Vec::new();
        group.bench_function(name, |b| {
            b.iter(|| parse_all(&mut parser, &mut buf, &mut args, black_box(&input)))
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("resp_encode");
    let value = [b'v'; 100];
    for (name, protocol) in [
        ("bulk_100b_resp2", Protocol::Resp2),
        ("bulk_100b_resp3", Protocol::Resp3),
    ] {
        let mut out = BytesMut::with_capacity(4096);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                ReplyEncoder::new(&mut out, protocol).bulk(black_box(&value));
                black_box(out.len())
            })
        });
    }
    let mut out = BytesMut::with_capacity(4096);
    group.bench_function("double_resp3", |b| {
        b.iter(|| {
            out.clear();
            ReplyEncoder::new(&mut out, Protocol::Resp3).double(black_box(1.1));
            black_box(out.len())
        })
    });
    group.finish();
}

fn bench_routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    let key = b"user:00000000042";
    assert_eq!(key.len(), 16);
    group.bench_function("key_slot_16b", |b| b.iter(|| key_slot(black_box(key))));
    group.bench_function("key_shard_16b_8_shards", |b| {
        b.iter(|| key_shard(black_box(key), black_box(8)))
    });
    group.finish();
}

/// The native protocol's codec (`corekv_net::native`), as the bench tool and the node use it:
/// encode a GET and a SET request, decode a pipeline of 16 VALUE responses, and encode/decode
/// an MGET of 16 keys with its VALUE batch answer. Buffers are reused across iterations.
fn bench_native_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("native_codec");
    group.measurement_time(std::time::Duration::from_secs(2));
    group.warm_up_time(std::time::Duration::from_millis(500));
    let key = Bytes::from_static(b"key:000000000042");
    let value = Bytes::from(vec![b'v'; 100]);
    let limits = Limits::default();
    let mut out = BytesMut::with_capacity(16 * 1024);

    group.throughput(Throughput::Elements(1));
    let get = Request::Get { key: key.clone() };
    group.bench_function("encode_get_16b", |b| {
        b.iter(|| {
            out.clear();
            black_box(&get).encode(black_box(42), false, &mut out);
            out.len()
        })
    });
    let set = Request::Set {
        key: key.clone(),
        value: value.clone(),
        ttl_ms: 0,
        condition: NativeSetCondition::Always,
    };
    group.bench_function("encode_set_16b_100b", |b| {
        b.iter(|| {
            out.clear();
            black_box(&set).encode(black_box(42), false, &mut out);
            out.len()
        })
    });

    // 16 VALUE responses of 100 bytes back to back, as one socket read delivers them.
    let mut pipeline = BytesMut::new();
    for id in 1..=16u64 {
        Response::Value(value.clone()).encode(id, false, &mut pipeline);
    }
    let pipeline = pipeline.freeze();
    let mut decoder = FrameDecoder::new(limits);
    let mut input = BytesMut::with_capacity(16 * 1024);
    group.throughput(Throughput::Elements(16));
    group.bench_function("decode_pipeline_16_value_100b", |b| {
        b.iter(|| {
            input.extend_from_slice(black_box(&pipeline));
            let mut ids = 0u64;
            while let Some(frame) = decoder.decode(&mut input).expect("valid frames") {
                let id = frame.request_id();
                match Response::decode(frame, &limits).expect("valid response") {
                    Response::Value(v) => ids += id + v.len() as u64,
                    other => panic!("unexpected {other:?}"),
                }
            }
            ids
        })
    });

    let keys: Vec<Vec<u8>> = (0..16).map(|i| format!("key:{i:012}").into_bytes()).collect();
    group.bench_function("encode_mget_16_keys", |b| {
        b.iter(|| {
            out.clear();
            let mut batch = BatchEncoder::begin(&mut out, Opcode::MGet, black_box(7), false);
            for key in &keys {
                batch.key(key);
            }
            batch.finish();
            out.len()
        })
    });
    let mut mget = BytesMut::new();
    {
        let mut batch = BatchEncoder::begin(&mut mget, Opcode::MGet, 7, false);
        for key in &keys {
            batch.key(key);
        }
    }
    let mget = mget.freeze();
    group.bench_function("decode_mget_16_keys", |b| {
        b.iter(|| {
            input.extend_from_slice(black_box(&mget));
            let frame = decoder.decode(&mut input).expect("valid frame").expect("a whole frame");
            match Request::decode(frame, &limits).expect("valid request") {
                Request::MGet(batch) => batch.iter().map(|e| e.key.len()).sum::<usize>(),
                other => panic!("unexpected {other:?}"),
            }
        })
    });
    let mut values = BytesMut::new();
    {
        let mut batch = BatchEncoder::begin(&mut values, Opcode::Value, 7, false);
        for i in 0..16 {
            batch.value((i % 4 != 3).then_some(&value[..]));
        }
    }
    let values = values.freeze();
    group.bench_function("decode_mget_16_values_100b", |b| {
        b.iter(|| {
            input.extend_from_slice(black_box(&values));
            let frame = decoder.decode(&mut input).expect("valid frame").expect("a whole frame");
            match Response::decode(frame, &limits).expect("valid response") {
                Response::Values(batch) => batch.iter().filter_map(|e| e.value).map(|v| v.len()).sum::<usize>(),
                other => panic!("unexpected {other:?}"),
            }
        })
    });
    group.finish();
}

// Engine benches join with their own groups (`engine_benches`, `resident_get_benches`) defined in
// the section below.
criterion_group!(
    net_benches,
    bench_parse,
    bench_encode,
    bench_native_codec,
    bench_routing
);
criterion_main!(net_benches, engine_benches, resident_get_benches);

// ---------------------------------------------------------------------------------------------
// engine benches
// ---------------------------------------------------------------------------------------------

// The engine benches work on a keyspace shaped like `benches/memory-per-key.sh`'s: 1,000,000 keys
// of 16 bytes ("key:" + 12 digits) with 32-byte values, i.e. 54-byte items in 56-byte chunks.

const RESIDENT_KEYS: u64 = 1_000_000;
const VALUE: [u8; 32] = [b'v'; 32];
/// A fixed clock (ms since the epoch): nothing in these benches has a TTL, so time only feeds the
/// LRU clock. The node reads the real clock once per request; that read is not measured here.
const NOW_MS: u64 = 1_700_000_000_000;
/// A key of the resident set (the one `get_request()` asks for).
const RESIDENT_KEY: &[u8; 16] = b"key:000000000042";
/// A 16-byte key that is not in the resident set.
const MISSING_KEY: &[u8; 16] = b"nokey:0000000042";

fn resident_key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key.copy_from_slice(format!("key:{i:012}").as_bytes());
    key
}

/// A keyspace configured like a node's shard with default settings (16 databases, no memory
/// limit), holding `RESIDENT_KEYS` keys in database 0.
fn resident_keyspace() -> Keyspace {
    let mut keyspace = Keyspace::new(EngineConfig {
        databases: 16,
        maxmemory_bytes: 0,
        policy: EvictionPolicy::NoEviction,
        eviction_samples: 5,
    });
    for i in 0..RESIDENT_KEYS {
        keyspace
            .set(0, &resident_key(i), &VALUE, Expiry::Persist, NOW_MS)
            .expect("no memory limit");
    }
    assert_eq!(keyspace.len(0), RESIDENT_KEYS as usize);
    keyspace
}

fn bench_keyspace(c: &mut Criterion) {
    let mut keyspace = resident_keyspace();
    assert_eq!(keyspace.get(0, RESIDENT_KEY, NOW_MS), Some(&VALUE[..]));
    assert_eq!(keyspace.get(0, MISSING_KEY, NOW_MS), None);

    let mut group = c.benchmark_group("keyspace_1m");
    group.throughput(Throughput::Elements(1));
    // The same key every iteration: its index slot and item stay in cache (the best case, as for
    // a hot key).
    group.bench_function("get_hit_16b_32b", |b| {
        b.iter(|| keyspace.get(0, black_box(RESIDENT_KEY), NOW_MS).map(<[u8]>::len))
    });
    // A different resident key every iteration, in a pseudo-random order over all 1,000,000: the
    // index slot and the item are usually not in cache (closer to a uniform random workload).
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let random_keys: Vec<[u8; 16]> = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            resident_key(rng % RESIDENT_KEYS)
        })
        .collect();
    let mut next = 0usize;
    group.bench_function("get_hit_16b_32b_random_key", |b| {
        b.iter(|| {
            next = (next + 1) & (random_keys.len() - 1);
            keyspace.get(0, black_box(&random_keys[next]), NOW_MS).map(<[u8]>::len)
        })
    });
    group.bench_function("get_miss_16b", |b| {
        b.iter(|| keyspace.get(0, black_box(MISSING_KEY), NOW_MS).map(<[u8]>::len))
    });
    // Same key, same value size: rewritten in place in its chunk.
    group.bench_function("set_overwrite_16b_32b", |b| {
        b.iter(|| keyspace.set(0, black_box(RESIDENT_KEY), black_box(&VALUE), Expiry::Persist, NOW_MS))
    });
    // A key not in the keyspace is written (chunk allocation + index insert) and removed again
    // (index removal with backward shift + chunk free).
    let fresh_key = b"fresh:0000000042";
    group.bench_function("set_remove_fresh_16b_32b", |b| {
        b.iter(|| {
            keyspace
                .set(0, black_box(fresh_key), black_box(&VALUE), Expiry::Persist, NOW_MS)
                .expect("no memory limit");
            keyspace.remove(0, black_box(fresh_key), NOW_MS)
        })
    });
    // MSET of 10 resident keys: `set_all` (all or nothing, copying the values it overwrites into
    // its undo buffer) against the same 10 `set`s one by one.
    let mset_keys: Vec<[u8; 16]> = (0..10).map(|i| resident_key(i * 7919)).collect();
    group.throughput(Throughput::Elements(10));
    group.bench_function("mset_10_overwrite_set_all", |b| {
        b.iter(|| {
            let pairs = mset_keys.iter().map(|k| (&k[..], &VALUE[..]));
            keyspace.set_all(0, black_box(pairs), NOW_MS)
        })
    });
    group.bench_function("mset_10_overwrite_one_by_one", |b| {
        b.iter(|| {
            for k in &mset_keys {
                keyspace.set(0, black_box(k), black_box(&VALUE), Expiry::Persist, NOW_MS)?;
            }
            Ok::<(), corekv_engine::EngineError>(())
        })
    });
    group.finish();
    assert_eq!(keyspace.len(0), RESIDENT_KEYS as usize);
}

fn bench_slab(c: &mut Criterion) {
    // `SlabMemory` is public: allocate and free one 56-byte chunk (the chunk of a 16-byte key with
    // a 32-byte value) in a slab memory whose 56-byte class already holds live chunks, so the page
    // stays in use and the pair is the steady-state free-list pop and push (freeing the last chunk
    // of a page would release the page instead).
    let mut mem = SlabMemory::new();
    let live: Vec<_> = (0..10_000).map(|_| mem.alloc(56).expect("page available")).collect();
    let mut group = c.benchmark_group("slab_memory");
    group.throughput(Throughput::Elements(1));
    group.bench_function("alloc_free_56b", |b| {
        b.iter(|| {
            let h = mem.alloc(black_box(56)).expect("page available");
            mem.free(black_box(h));
            h
        })
    });
    group.finish();
    assert_eq!(mem.live(), live.len() as u64);
}

criterion_group!(engine_benches, bench_keyspace, bench_slab);

// ---------------------------------------------------------------------------------------------
// resident GET: the whole per-request CPU path of a local GET
// ---------------------------------------------------------------------------------------------

/// One `GET key:000000000042` as a shard runs it when the key lives on this shard: parse the
/// request from the connection buffer, route the key (2 shards), look it up in a keyspace of
/// 1,000,000 resident keys and encode the bulk reply into the connection's output buffer.
///
/// The node's command functions cannot be called from here (corekv-node is a binary crate), so the
/// GET steps are done directly, as `node/src/commands/strings.rs`'s `get` does them
/// (`keyspace.get(db, &args[1], now_ms)` then `enc.bulk(v)`). Not measured: the socket read and
/// write, the clock read, the command-table lookup and the hop to another shard (the key is
/// routed but the lookup always runs here, as it would for a key this shard owns).
///
/// Buffers and the argument vector are reused across iterations (the request buffer is refilled
/// with `extend_from_slice`, the reply buffer cleared), so this is the allocation-free steady state
/// of a connection.
fn bench_resident_get(c: &mut Criterion) {
    let mut keyspace = resident_keyspace();
    let request = get_request();
    let mut parser = RequestParser::new(ParseLimits::default());
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut args: Vec<Bytes> = Vec::new();
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut step = |input: &mut BytesMut, out: &mut BytesMut| -> u32 {
        input.extend_from_slice(black_box(&request));
        assert!(parser.next(input, &mut args).expect("valid request"));
        let key = &args[1];
        let shard = key_shard(key, 2);
        out.clear();
        let mut enc = ReplyEncoder::new(out, Protocol::Resp2);
        match keyspace.get(0, key, NOW_MS) {
            Some(v) => enc.bulk(v),
            None => enc.null(),
        }
        shard
    };
    step(&mut input, &mut out);
    assert_eq!(&out[..], &b"$32\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n"[..]);
    assert!(input.is_empty());

    let mut group = c.benchmark_group("resident_get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_route_lookup_encode_16b_32b", |b| {
        b.iter(|| step(&mut input, &mut out))
    });
    group.finish();
}

criterion_group!(resident_get_benches, bench_resident_get);
