//! Tests of the native codec: a round trip for every opcode, the documented hex examples, hostile
//! inputs, and property tests (round trips, split invariance, arbitrary bytes).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn encode_req(req: &Request, id: u64, crc: bool) -> BytesMut {
    let mut out = BytesMut::new();
    req.encode(id, crc, &mut out);
    out
}

fn encode_resp(resp: &Response, id: u64, crc: bool) -> BytesMut {
    let mut out = BytesMut::new();
    resp.encode(id, crc, &mut out);
    out
}

fn one_frame(mut buf: BytesMut) -> Frame {
    let mut dec = FrameDecoder::default();
    let frame = dec.decode(&mut buf).expect("valid frame").expect("complete frame");
    assert!(buf.is_empty(), "one frame, nothing after it");
    frame
}

/// Decodes `bytes` as one frame, expecting a fatal error.
fn fatal(bytes: &[u8]) -> FrameError {
    fatal_with(Limits::default(), bytes)
}

fn fatal_with(limits: Limits, bytes: &[u8]) -> FrameError {
    let mut dec = FrameDecoder::new(limits);
    let mut buf = BytesMut::from(bytes);
    let err = dec.decode(&mut buf).expect_err("fatal error");
    assert!(err.is_fatal(), "{err:?} should be fatal");
    // Poisoned: the same error again, whatever follows.
    buf.extend_from_slice(&encode_req(&Request::Ping, 1, false));
    assert_eq!(dec.decode(&mut buf), Err(err.clone()));
    err
}

fn req_err(bytes: BytesMut) -> FrameError {
    let frame = one_frame(bytes);
    let err = Request::decode(frame, &Limits::default()).expect_err("invalid request");
    assert!(!err.is_fatal(), "{err:?} should not be fatal");
    err
}

fn resp_err(bytes: BytesMut) -> FrameError {
    let frame = one_frame(bytes);
    let err = Response::decode(frame, &Limits::default()).expect_err("invalid response");
    assert!(!err.is_fatal(), "{err:?} should not be fatal");
    err
}

fn set_u32(buf: &mut BytesMut, at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(buf: &mut BytesMut, at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Topology,
        Request::Get { key: b(b"user:1") },
        Request::Get { key: b(b"") },
        Request::Del { key: b(b"k") },
        Request::Ttl { key: b(b"k") },
        Request::Exists { key: b(b"k") },
        Request::Set {
            key: b(b"k"),
            value: b(b"v\r\n\0"),
            ttl_ms: 0,
            condition: SetCondition::Always,
        },
        Request::Set {
            key: b(b"k"),
            value: b(b""),
            ttl_ms: 1500,
            condition: SetCondition::IfAbsent,
        },
        Request::Set {
            key: b(b"k"),
            value: b(b"x"),
            ttl_ms: u64::MAX,
            condition: SetCondition::IfPresent,
        },
        Request::Cas {
            key: b(b"k"),
            expected: b(b"old"),
            value: b(b"new"),
            ttl_ms: 10,
        },
        Request::Cas {
            key: b(b"k"),
            expected: b(b""),
            value: b(b""),
            ttl_ms: 0,
        },
        Request::Incr {
            key: b(b"n"),
            delta: -7,
        },
        Request::Incr {
            key: b(b"n"),
            delta: i64::MIN,
        },
        Request::Expire {
            key: b(b"k"),
            ttl_ms: 0,
        },
        Request::Expire {
            key: b(b"k"),
            ttl_ms: 60_000,
        },
        Request::MGet(Batch::build(BatchKind::Keys, [(&b"a"[..], None), (&b"bb"[..], None)])),
        Request::MGet(Batch::build(BatchKind::Keys, [])),
        Request::MSet(Batch::build(
            BatchKind::Pairs,
            [(&b"a"[..], Some(&b"1"[..])), (&b""[..], Some(&b""[..]))],
        )),
    ]
}

fn all_responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::NotFound,
        Response::Value(b(b"hello")),
        Response::Value(b(b"")),
        Response::Values(Batch::build(
            BatchKind::Values,
            [
                (&b""[..], Some(&b"v"[..])),
                (&b""[..], None),
                (&b""[..], Some(&b""[..])),
            ],
        )),
        Response::Integer(0),
        Response::Integer(-2),
        Response::Integer(i64::MAX),
        Response::Error {
            code: ErrorCode::MALFORMED,
            message: b(b"boom"),
        },
        Response::Error {
            code: ErrorCode(0xFFFF),
            message: b(b""),
        },
        Response::Topology(Topology::build(HASH_COREKV_V1, ["10.0.0.1:7000", "10.0.0.1:7001"])),
        Response::Topology(Topology::build(7, [""])),
    ]
}

#[test]
fn every_request_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for crc in [false, true] {
        for (i, req) in all_requests().into_iter().enumerate() {
            let id = 1 + i as u64 * 0x0101_0101_0101;
            let bytes = encode_req(&req, id, crc);
            let frame = one_frame(bytes.clone());
            assert_eq!(frame.request_id(), id);
            assert_eq!(frame.header.opcode, req.opcode() as u8);
            assert_eq!(frame.header.frame_len as usize, bytes.len());
            assert_eq!(frame.header.flags.contains(Flags::HAS_CRC), crc);
            let decoded = Request::decode(frame, &Limits::default()).expect("valid request");
            assert_eq!(decoded, req);
            seen.insert(req.opcode());
        }
    }
    assert_eq!(seen.len(), 12, "every request opcode");
}

#[test]
fn every_response_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for crc in [false, true] {
        for (i, resp) in all_responses().into_iter().enumerate() {
            let id = i as u64 * 77;
            let frame = one_frame(encode_resp(&resp, id, crc));
            assert_eq!(frame.request_id(), id);
            let decoded = Response::decode(frame, &Limits::default()).expect("valid response");
            assert_eq!(decoded, resp);
            seen.insert(resp.opcode());
        }
    }
    assert_eq!(seen.len(), 6, "every response opcode");
}

#[test]
fn batch_and_topology_accessors() {
    let mut out = BytesMut::new();
    let mut enc = BatchEncoder::begin(&mut out, Opcode::MSet, 9, true);
    enc.pair(b"a", b"1");
    enc.pair(b"b", b"");
    enc.finish();
    let Request::MSet(batch) = Request::decode(one_frame(out), &Limits::default()).unwrap() else {
        panic!("not MSET");
    };
    let entries: Vec<_> = batch.iter().map(|e| (e.key, e.value)).collect();
    assert_eq!(entries, vec![(b(b"a"), Some(b(b"1"))), (b(b"b"), Some(b(b"")))]);

    let mut out = BytesMut::new();
    {
        // Dropping the encoder completes the frame too.
        let mut enc = BatchEncoder::begin(&mut out, Opcode::MGet, 3, false);
        enc.key(b"x");
    }
    let Request::MGet(batch) = Request::decode(one_frame(out), &Limits::default()).unwrap() else {
        panic!("not MGET");
    };
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch.iter().next(),
        Some(BatchEntry {
            key: b(b"x"),
            value: None
        })
    );

    let mut out = BytesMut::new();
    let mut enc = BatchEncoder::begin(&mut out, Opcode::Value, 3, false);
    enc.value(Some(b"v"));
    enc.value(None);
    enc.finish();
    let Response::Values(batch) = Response::decode(one_frame(out), &Limits::default()).unwrap() else {
        panic!("not VALUE batch");
    };
    let values: Vec<_> = batch.iter().map(|e| e.value).collect();
    assert_eq!(values, vec![Some(b(b"v")), None]);

    let t = Topology::build(HASH_COREKV_V1, ["a:1", "b:2", "c:3"]);
    assert_eq!(t.shard_count(), 3);
    assert_eq!(t.hash_id(), HASH_COREKV_V1);
    assert_eq!(t.endpoints().collect::<Vec<_>>(), ["a:1", "b:2", "c:3"]);
}

/// The hex dumps of PROTOCOL.md.
#[test]
fn documented_examples() {
    let get = encode_req(&Request::Get { key: b(b"foo") }, 1, false);
    assert_eq!(
        hex(&get),
        "43 4b 01 02 00 00 00 00 2b 00 00 00 03 00 00 00 \
         01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 66 6f 6f"
    );
    let set = encode_req(
        &Request::Set {
            key: b(b"k"),
            value: b(b"hi"),
            ttl_ms: 1000,
            condition: SetCondition::IfAbsent,
        },
        2,
        true,
    );
    assert_eq!(
        hex(&set),
        "43 4b 01 03 03 00 00 00 2f 00 00 00 01 00 00 00 \
             02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 \
             e8 03 00 00 00 00 00 00 6b 68 69 70 0d b8 c2"
    );
    let mut mget = BytesMut::new();
    let mut enc = BatchEncoder::begin(&mut mget, Opcode::MGet, 3, false);
    enc.key(b"a");
    enc.key(b"bc");
    enc.finish();
    assert_eq!(
        hex(&mget),
        "43 4b 01 05 08 00 00 00 3b 00 00 00 00 00 00 00 \
         03 00 00 00 00 00 00 00 13 00 00 00 00 00 00 00 \
         02 00 00 00 00 00 00 00 \
         01 00 00 00 00 00 00 00 61 \
         02 00 00 00 00 00 00 00 62 63"
    );
    let value = encode_resp(&Response::Value(b(b"bar")), 1, false);
    assert_eq!(
        hex(&value),
        "43 4b 01 81 00 00 00 00 2b 00 00 00 00 00 00 00 \
         01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 62 61 72"
    );
    let topo = Topology::build(HASH_COREKV_V1, ["h:1", "h:2"]);
    assert_eq!(
        hex(topo.body()),
        "02 00 00 00 01 00 00 00 03 00 68 3a 31 03 00 68 3a 32"
    );
    assert_eq!(hex(&crc32fast::hash(b"123456789").to_le_bytes()), "26 39 f4 cb");
}

#[test]
fn pipelined_frames_and_partial_feeds() {
    let mut stream = BytesMut::new();
    for (i, req) in all_requests().iter().enumerate() {
        req.encode(100 + i as u64, i % 2 == 0, &mut stream);
    }
    let whole = run_chunks(&[&stream[..]]);
    assert_eq!(whole.len(), all_requests().len() + 1);
    assert_eq!(whole.last(), Some(&Out::More));
    for size in [1, 2, 7, 39, 40, 41, 1000] {
        let chunks: Vec<&[u8]> = stream.chunks(size).collect();
        assert_eq!(run_chunks(&chunks), whole, "chunks of {size}");
    }
    // Truncated frames wait, whatever is missing.
    let get = encode_req(&Request::Get { key: b(b"foo") }, 1, true);
    for cut in 0..get.len() {
        assert_eq!(run_chunks(&[&get[..cut]]), vec![Out::More], "cut at {cut}");
    }
}

#[test]
fn hostile_headers_are_fatal() {
    let good = encode_req(&Request::Get { key: b(b"foo") }, 1, false);

    let mut bad = good.clone();
    bad[0] = b'*';
    assert_eq!(fatal(&bad), FrameError::BadMagic(0x4B2A));
    assert_eq!(
        fatal(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*1\r\n$4\r\nPING\r\n*1\r\n"),
        FrameError::BadMagic(0x322A)
    );

    let mut bad = good.clone();
    bad[offset::VERSION] = 2;
    assert_eq!(fatal(&bad), FrameError::UnsupportedVersion(2));
    assert_eq!(fatal(&bad).code(), ErrorCode::UNSUPPORTED_VERSION);

    let mut bad = good.clone();
    bad[offset::RESERVED + 1] = 1;
    assert_eq!(fatal(&bad), FrameError::ReservedNotZero);

    // The declared frame length must match the sections.
    let mut bad = good.clone();
    set_u32(&mut bad, offset::FRAME_LEN, 44);
    assert_eq!(
        fatal(&bad),
        FrameError::LengthMismatch {
            declared: 44,
            computed: 43
        }
    );
    let mut bad = good.clone();
    set_u32(&mut bad, offset::KEY_LEN, 2);
    assert!(matches!(fatal(&bad), FrameError::LengthMismatch { .. }));
    let mut bad = good.clone();
    bad[offset::FLAGS] |= Flags::HAS_CRC.0 as u8;
    assert!(matches!(fatal(&bad), FrameError::LengthMismatch { .. }));

    // Oversize lengths fail from the header alone, before the body arrives.
    let mut bad = good.clone();
    set_u32(&mut bad, offset::KEY_LEN, 64 * 1024 + 1);
    assert_eq!(
        fatal(&bad[..HEADER_LEN]),
        FrameError::KeyTooLarge {
            len: 64 * 1024 + 1,
            max: 64 * 1024
        }
    );
    for field in [offset::VALUE_LEN, offset::EXTRA_LEN] {
        let mut bad = good.clone();
        set_u32(&mut bad, field, u32::MAX);
        assert!(matches!(fatal(&bad[..HEADER_LEN]), FrameError::ValueTooLarge { .. }));
    }
    // Sections each within limits whose sum overflows u32: no wrap-around.
    let limits = Limits {
        max_value_len: u32::MAX,
        ..Limits::default()
    };
    let mut bad = good.clone();
    set_u32(&mut bad, offset::VALUE_LEN, u32::MAX);
    set_u32(&mut bad, offset::EXTRA_LEN, u32::MAX);
    assert!(matches!(
        fatal_with(limits, &bad[..HEADER_LEN]),
        FrameError::LengthMismatch { .. }
    ));
    // A consistent frame above the frame limit.
    let big = 512 * 1024 * 1024u32;
    let mut bad = good.clone();
    set_u32(&mut bad, offset::VALUE_LEN, big);
    set_u32(&mut bad, offset::FRAME_LEN, HEADER_LEN as u32 + 3 + big);
    assert!(matches!(fatal(&bad[..HEADER_LEN]), FrameError::FrameTooLarge { .. }));
    let small = Limits {
        max_frame_len: 42,
        ..Limits::default()
    };
    assert_eq!(fatal_with(small, &good), FrameError::FrameTooLarge { len: 43, max: 42 });
}

#[test]
fn crc_mismatch_is_fatal() {
    let good = encode_req(&Request::Get { key: b(b"foo") }, 1, true);
    for at in [0usize, offset::REQUEST_ID, offset::ARG + 7, HEADER_LEN, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let err = {
            let mut dec = FrameDecoder::default();
            dec.decode(&mut bad.clone())
        };
        match err {
            // Flipping a header bit may break the magic instead; any fatal error is right.
            Err(e) => assert!(e.is_fatal(), "byte {at}: {e:?}"),
            Ok(f) => panic!("byte {at}: corrupted frame accepted: {f:?}"),
        }
    }
    let mut bad = good.clone();
    bad[HEADER_LEN] ^= 0x20;
    assert!(matches!(fatal(&bad), FrameError::CrcMismatch { .. }));
    assert_eq!(fatal(&bad).code(), ErrorCode::CRC_MISMATCH);
}

#[test]
fn per_frame_errors_keep_the_stream() {
    // An unknown opcode is skipped; the next frame still decodes.
    let mut stream = encode_req(&Request::Get { key: b(b"k") }, 5, false);
    stream[offset::OPCODE] = 0x7E;
    Request::Ping.encode(6, false, &mut stream);
    let mut dec = FrameDecoder::default();
    let first = dec.decode(&mut stream).unwrap().unwrap();
    assert_eq!(
        Request::decode(first, dec.limits()),
        Err(FrameError::UnknownOpcode(0x7E))
    );
    let second = dec.decode(&mut stream).unwrap().unwrap();
    assert_eq!(second.request_id(), 6);
    assert_eq!(Request::decode(second, dec.limits()), Ok(Request::Ping));

    assert_eq!(
        req_err(encode_resp(&Response::Ok, 1, false)),
        FrameError::WrongDirection(0x80)
    );
    assert_eq!(
        resp_err(encode_req(&Request::Ping, 1, false)),
        FrameError::WrongDirection(0x01)
    );
    assert_eq!(
        req_err(encode_req(&Request::Ping, 0, false)).code(),
        ErrorCode::MALFORMED
    );

    // Flags: NX and XX together, NX outside SET, BATCH outside batches, unknown bits, BATCH missing.
    let set = encode_req(
        &Request::Set {
            key: b(b"k"),
            value: b(b"v"),
            ttl_ms: 0,
            condition: SetCondition::IfAbsent,
        },
        1,
        false,
    );
    let mut bad = set.clone();
    bad[offset::FLAGS] |= Flags::XX.0 as u8;
    assert_eq!(req_err(bad).code(), ErrorCode::INVALID_FLAGS);
    let mut bad = encode_req(&Request::Get { key: b(b"k") }, 1, false);
    bad[offset::FLAGS] |= Flags::NX.0 as u8;
    assert_eq!(req_err(bad).code(), ErrorCode::INVALID_FLAGS);
    let mut bad = encode_req(&Request::Get { key: b(b"k") }, 1, false);
    bad[offset::FLAGS] |= Flags::BATCH.0 as u8;
    assert_eq!(req_err(bad).code(), ErrorCode::INVALID_FLAGS);
    let mut bad = encode_req(&Request::Get { key: b(b"k") }, 1, false);
    bad[offset::FLAGS + 1] = 0x80;
    assert_eq!(req_err(bad).code(), ErrorCode::INVALID_FLAGS);
    let mut bad = encode_req(&Request::MGet(Batch::build(BatchKind::Keys, [])), 1, false);
    bad[offset::FLAGS] &= !(Flags::BATCH.0 as u8);
    assert_eq!(req_err(bad).code(), ErrorCode::INVALID_FLAGS);

    // Fields an opcode does not use must be zero.
    let mut bad = encode_req(&Request::Get { key: b(b"k") }, 1, false);
    set_u64(&mut bad, offset::ARG, 1);
    assert_eq!(req_err(bad).code(), ErrorCode::MALFORMED);
    let ping_with_key = {
        let mut out = BytesMut::new();
        super::frame::write_frame(&mut out, Opcode::Ping as u8, Flags::NONE, 1, 0, [b"k", b"", b""]);
        out
    };
    assert_eq!(req_err(ping_with_key).code(), ErrorCode::MALFORMED);
    let get_with_value = {
        let mut out = BytesMut::new();
        super::frame::write_frame(&mut out, Opcode::Get as u8, Flags::NONE, 1, 0, [b"k", b"v", b""]);
        out
    };
    assert_eq!(req_err(get_with_value).code(), ErrorCode::MALFORMED);
    let set_with_extra = {
        let mut out = BytesMut::new();
        super::frame::write_frame(&mut out, Opcode::Set as u8, Flags::NONE, 1, 0, [b"k", b"v", b"x"]);
        out
    };
    assert_eq!(req_err(set_with_extra).code(), ErrorCode::MALFORMED);

    // An error code above u16.
    let mut bad = encode_resp(
        &Response::Error {
            code: ErrorCode(1),
            message: b(b"m"),
        },
        1,
        false,
    );
    set_u64(&mut bad, offset::ARG, 0x1_0000);
    assert_eq!(resp_err(bad).code(), ErrorCode::MALFORMED);
}

/// A batch frame with a hand-written count and section.
fn raw_batch(opcode: Opcode, count: u64, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    super::frame::write_frame(&mut out, opcode as u8, Flags::BATCH, 1, count, [b"", body, b""]);
    out
}

fn entry(key: &[u8], value_len: u32, value: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&(key.len() as u32).to_le_bytes());
    e.extend_from_slice(&value_len.to_le_bytes());
    e.extend_from_slice(key);
    e.extend_from_slice(value);
    e
}

#[test]
fn batch_count_lies() {
    let two = [entry(b"a", 0, b""), entry(b"b", 0, b"")].concat();
    assert!(Request::decode(one_frame(raw_batch(Opcode::MGet, 2, &two)), &Limits::default()).is_ok());
    // More entries claimed than present, fewer claimed than present, absurd counts.
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 3, &two)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 1, &two)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 0, &two)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, u64::MAX, &two)),
        FrameError::BatchTooLarge {
            count: u64::MAX,
            max: 65_536
        }
    );
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 65_536, &two)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    // An entry whose lengths run past the section.
    let lying = [entry(b"a", 0, b""), entry(b"b", 100, b"xy")].concat();
    assert_eq!(
        req_err(raw_batch(Opcode::MSet, 2, &lying)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    let mut lying_key = entry(b"a", 1, b"v");
    lying_key[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        req_err(raw_batch(Opcode::MSet, 1, &lying_key)).code(),
        ErrorCode::ENTRY_KEY_TOO_LARGE
    );
    let mut short_key = entry(b"abc", 0, b"");
    short_key[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 1, &short_key)).code(),
        ErrorCode::BATCH_MISMATCH
    );
    // Entries of the wrong shape for the opcode.
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 1, &entry(b"a", 1, b"v"))).code(),
        ErrorCode::BATCH_MISMATCH
    );
    assert_eq!(
        req_err(raw_batch(Opcode::MSet, 1, &entry(b"a", ABSENT, b""))).code(),
        ErrorCode::BATCH_MISMATCH
    );
    assert_eq!(
        resp_err(raw_batch(Opcode::Value, 1, &entry(b"a", 1, b"v"))).code(),
        ErrorCode::BATCH_MISMATCH
    );
    // A truncated entry header.
    assert_eq!(
        req_err(raw_batch(Opcode::MGet, 1, &[1, 0, 0])).code(),
        ErrorCode::BATCH_MISMATCH
    );
}

#[test]
fn topology_lies() {
    let topo = |body: &[u8]| {
        let mut out = BytesMut::new();
        super::frame::write_frame(
            &mut out,
            Opcode::TopologyReply as u8,
            Flags::NONE,
            1,
            0,
            [b"", body, b""],
        );
        resp_err(out)
    };
    let good = Topology::build(1, ["a:1"]).body().to_vec();
    assert_eq!(topo(&good[..4]).code(), ErrorCode::MALFORMED);
    assert_eq!(topo(&good[..good.len() - 1]).code(), ErrorCode::MALFORMED);
    assert_eq!(topo(&[good.clone(), vec![0]].concat()).code(), ErrorCode::MALFORMED);
    let mut zero = good.clone();
    zero[0] = 0;
    assert_eq!(topo(&zero).code(), ErrorCode::MALFORMED);
    let mut many = good.clone();
    many[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(topo(&many).code(), ErrorCode::BATCH_TOO_LARGE);
    let mut two = good.clone();
    two[0] = 2;
    assert_eq!(topo(&two).code(), ErrorCode::MALFORMED);
    let mut reserved = good.clone();
    reserved[7] = 1;
    assert_eq!(topo(&reserved).code(), ErrorCode::MALFORMED);
    let mut not_utf8 = good.clone();
    *not_utf8.last_mut().unwrap() = 0xFF;
    assert_eq!(topo(&not_utf8).code(), ErrorCode::MALFORMED);
}

#[test]
fn error_frames_for_decoding_errors() {
    let err = FrameError::UnsupportedVersion(9);
    let mut out = BytesMut::new();
    Response::encode_error(&err, 0, true, &mut out);
    let Response::Error { code, message } = Response::decode(one_frame(out), &Limits::default()).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
    assert_eq!(&message[..], b"unsupported protocol version 9");
    assert!(!FrameError::UnknownOpcode(1).is_fatal());
    assert!(FrameError::CrcMismatch { stored: 0, computed: 1 }.is_fatal());
}

#[test]
fn decoded_sections_share_the_buffer() {
    let bytes = encode_req(
        &Request::Set {
            key: b(b"key"),
            value: Bytes::from(vec![7u8; 4096]),
            ttl_ms: 0,
            condition: SetCondition::Always,
        },
        1,
        false,
    );
    let base = bytes.as_ptr() as usize;
    let frame = one_frame(bytes);
    assert_eq!(frame.key.as_ptr() as usize, base + HEADER_LEN);
    assert_eq!(frame.value.as_ptr() as usize, base + HEADER_LEN + 3);
}

/// One observable outcome of feeding a decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Frame(Frame),
    Err(FrameError),
    More,
}

/// Feeds `chunks` one after another, draining frames after each; stops at the first error.
fn run_chunks(chunks: &[&[u8]]) -> Vec<Out> {
    run_chunks_with(Limits::default(), chunks)
}

fn run_chunks_with(limits: Limits, chunks: &[&[u8]]) -> Vec<Out> {
    let mut dec = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    // Interpreting a frame must never panic either.
                    let _ = Request::decode(frame.clone(), &limits);
                    let _ = Response::decode(frame.clone(), &limits);
                    outs.push(Out::Frame(frame));
                }
                Ok(None) => break,
                Err(e) => {
                    outs.push(Out::Err(e));
                    return outs;
                }
            }
        }
    }
    outs.push(Out::More);
    outs
}

fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(&input[from..cut]);
        from = cut;
    }
    chunks.push(&input[from..]);
    chunks
}

fn bytes_strategy(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn condition_strategy() -> impl Strategy<Value = SetCondition> {
    prop_oneof![
        Just(SetCondition::Always),
        Just(SetCondition::IfAbsent),
        Just(SetCondition::IfPresent)
    ]
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let key = || bytes_strategy(24);
    let value = || bytes_strategy(64);
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Topology),
        key().prop_map(|key| Request::Get { key }),
        key().prop_map(|key| Request::Del { key }),
        key().prop_map(|key| Request::Ttl { key }),
        key().prop_map(|key| Request::Exists { key }),
        (key(), value(), any::<u64>(), condition_strategy()).prop_map(|(key, value, ttl_ms, condition)| {
            Request::Set {
                key,
                value,
                ttl_ms,
                condition,
            }
        }),
        (key(), value(), value(), any::<u64>()).prop_map(|(key, expected, value, ttl_ms)| Request::Cas {
            key,
            expected,
            value,
            ttl_ms
        }),
        (key(), any::<i64>()).prop_map(|(key, delta)| Request::Incr { key, delta }),
        (key(), any::<u64>()).prop_map(|(key, ttl_ms)| Request::Expire { key, ttl_ms }),
        proptest::collection::vec(key(), 0..8)
            .prop_map(|keys| Request::MGet(Batch::build(BatchKind::Keys, keys.iter().map(|k| (&k[..], None))))),
        proptest::collection::vec((key(), value()), 0..8).prop_map(|pairs| Request::MSet(Batch::build(
            BatchKind::Pairs,
            pairs.iter().map(|(k, v)| (&k[..], Some(&v[..])))
        ))),
    ]
}

fn response_strategy() -> impl Strategy<Value = Response> {
    let endpoint = "[a-z0-9.:é]{0,20}";
    prop_oneof![
        Just(Response::Ok),
        Just(Response::NotFound),
        bytes_strategy(64).prop_map(Response::Value),
        proptest::collection::vec(proptest::option::of(bytes_strategy(32)), 0..8).prop_map(|values| {
            Response::Values(Batch::build(
                BatchKind::Values,
                values.iter().map(|v| (&b""[..], v.as_deref())),
            ))
        }),
        any::<i64>().prop_map(Response::Integer),
        (any::<u16>(), bytes_strategy(40)).prop_map(|(code, message)| Response::Error {
            code: ErrorCode(code),
            message
        }),
        (any::<u16>(), proptest::collection::vec(endpoint, 1..6))
            .prop_map(|(hash, eps)| Response::Topology(Topology::build(hash, eps.iter().map(String::as_str)))),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request_strategy(), id in 1..u64::MAX, crc in any::<bool>()) {
        let frame = one_frame(encode_req(&req, id, crc));
        prop_assert_eq!(frame.request_id(), id);
        prop_assert_eq!(Request::decode(frame, &Limits::default()), Ok(req));
    }

    #[test]
    fn responses_round_trip(resp in response_strategy(), id in any::<u64>(), crc in any::<bool>()) {
        let frame = one_frame(encode_resp(&resp, id, crc));
        prop_assert_eq!(frame.request_id(), id);
        prop_assert_eq!(Response::decode(frame, &Limits::default()), Ok(resp));
    }

    #[test]
    fn any_split_gives_the_same_frames(
        reqs in proptest::collection::vec((request_strategy(), any::<bool>()), 0..6),
        resps in proptest::collection::vec((response_strategy(), any::<bool>()), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        tail in proptest::collection::vec(any::<u8>(), 0..50),
    ) {
        let mut stream = BytesMut::new();
        for (i, (req, crc)) in reqs.iter().enumerate() {
            req.encode(i as u64 + 1, *crc, &mut stream);
        }
        for (i, (resp, crc)) in resps.iter().enumerate() {
            resp.encode(i as u64, *crc, &mut stream);
        }
        stream.extend_from_slice(&tail);
        let whole = run_chunks(&[&stream[..]]);
        prop_assert!(whole.len() > reqs.len() + resps.len());
        prop_assert_eq!(run_chunks(&split(&stream, &cuts)), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = run_chunks(&[&bytes[..]]);
        prop_assert_eq!(run_chunks(&split(&bytes, &cuts)), whole);
    }

    #[test]
    fn corrupted_frames_never_panic(
        reqs in proptest::collection::vec(request_strategy(), 1..4),
        resp in response_strategy(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        max_batch in 0u32..10,
    ) {
        let mut stream = BytesMut::new();
        for (i, req) in reqs.iter().enumerate() {
            req.encode(i as u64 + 1, false, &mut stream);
        }
        resp.encode(0, false, &mut stream);
        for (at, byte) in flips {
            let at = at % stream.len();
            stream[at] = byte;
        }
        let limits = Limits { max_batch_count: max_batch, ..Limits::default() };
        let whole = run_chunks_with(limits, &[&stream[..]]);
        prop_assert_eq!(run_chunks_with(limits, &split(&stream, &cuts)), whole);
    }
}

#[test]
fn request_ref_encodes_like_request_and_returns_the_frame_length() {
    let value = b"new".to_vec();
    let cases = [
        (
            RequestRef::Cas {
                key: b"k",
                expected: b"old",
                value: &value,
                ttl_ms: 10,
            },
            Request::Cas {
                key: b(b"k"),
                expected: b(b"old"),
                value: b(b"new"),
                ttl_ms: 10,
            },
        ),
        (
            RequestRef::Set {
                key: b"k",
                value: b"v",
                ttl_ms: 5,
                condition: SetCondition::IfPresent,
            },
            Request::Set {
                key: b(b"k"),
                value: b(b"v"),
                ttl_ms: 5,
                condition: SetCondition::IfPresent,
            },
        ),
        (
            RequestRef::Incr { key: b"n", delta: -3 },
            Request::Incr {
                key: b(b"n"),
                delta: -3,
            },
        ),
        (RequestRef::Topology, Request::Topology),
    ];
    for (borrowed, owned) in cases {
        for crc in [false, true] {
            let mut out = BytesMut::from(&b"prefix"[..]);
            let len = borrowed.encode(9, crc, &mut out);
            assert_eq!(len, out.len() - 6);
            assert_eq!(&out[6..], &encode_req(&owned, 9, crc)[..]);
            assert_eq!(borrowed.opcode(), owned.opcode());
        }
    }
}
