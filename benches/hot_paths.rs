//! Criterion micro-benchmarks of corekv's hot paths: the RESP codec, the routing hash and (below)
//! the storage engine. Run with `cargo bench -p corekv-benches`.

use bytes::{Bytes, BytesMut};
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
fn parse_all(
    parser: &mut RequestParser,
    buf: &mut BytesMut,
    args: &mut Vec<Bytes>,
    input: &[u8],
) -> usize {
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

// Engine benches join with their own `criterion_group!(engine_benches, ...)` in the section below,
// listed here as `criterion_main!(net_benches, engine_benches)`.
criterion_group!(net_benches, bench_parse, bench_encode, bench_routing);
criterion_main!(net_benches);

// ---------------------------------------------------------------------------------------------
// engine benches
// ---------------------------------------------------------------------------------------------
