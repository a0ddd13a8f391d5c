//! Tests of the sans-IO parts: the connection state, the router and the plan (retry policy,
//! batch splitting and reassembly). The drivers are tested against a fake node in
//! `net/tests/client/`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::config::{Backoff, Reply};
use super::connection::{Connection, MAX_UNANSWERED_BYTES};
use super::error::ClientError;
use super::plan::{Op, Plan};
use super::router::Router;
use crate::native::{
    Batch, BatchKind, ErrorCode, FrameDecoder, FrameError, Limits, Opcode, Request, RequestRef, Response, Topology,
    HASH_COREKV_V1,
};
use crate::routing::key_shard;

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Decodes what a connection wrote: `(request id, request)`.
fn sent(out: &mut BytesMut) -> Vec<(u64, Request)> {
    let mut decoder = FrameDecoder::default();
    let mut requests = Vec::new();
    while let Some(frame) = decoder.decode(out).unwrap() {
        let id = frame.request_id();
        requests.push((id, Request::decode(frame, &Limits::default()).unwrap()));
    }
    assert!(out.is_empty());
    requests
}

fn respond(conn: &mut Connection<&'static str>, id: u64, response: Response) {
    let mut out = BytesMut::new();
    response.encode(id, false, &mut out);
    conn.input().extend_from_slice(&out);
}

fn router(shards: usize) -> Router {
    let endpoints: Vec<String> = (0..shards).map(|i| format!("h:{i}")).collect();
    Router::new(Topology::build(HASH_COREKV_V1, endpoints.iter().map(String::as_str))).unwrap()
}

#[test]
fn ids_start_at_one_and_responses_complete_out_of_order() {
    let mut conn = Connection::new(false, Limits::default());
    assert_eq!(conn.send(RequestRef::Get { key: b"a" }, "get a", later()), 1);
    assert_eq!(conn.send(RequestRef::Incr { key: b"n", delta: 2 }, "incr", later()), 2);
    assert_eq!(conn.send_mget([&b"x"[..], b"y"], "mget", later()), 3);
    let requests = sent(&mut conn.take_output());
    assert_eq!(requests.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        requests[0].1,
        Request::Get {
            key: Bytes::from_static(b"a")
        }
    );
    assert_eq!(requests[2].1.opcode(), Opcode::MGet);
    assert_eq!(conn.outstanding(), 3);

    // Answers in reverse order, fed one byte at a time.
    let mut answers = BytesMut::new();
    Response::Values(Batch::build(
        BatchKind::Values,
        [(&b""[..], Some(&b"1"[..])), (&b""[..], None)],
    ))
    .encode(3, true, &mut answers);
    Response::Integer(2).encode(2, false, &mut answers);
    Response::Value(Bytes::from_static(b"va")).encode(1, false, &mut answers);
    let mut done = Vec::new();
    for byte in answers.iter() {
        conn.input().extend_from_slice(&[*byte]);
        while let Some(completion) = conn.poll_completion().unwrap() {
            done.push((completion.request_id, completion.token, completion.response));
        }
    }
    assert_eq!(
        done.iter().map(|(id, token, _)| (*id, *token)).collect::<Vec<_>>(),
        [(3, "mget"), (2, "incr"), (1, "get a")]
    );
    assert_eq!(done[2].2, Response::Value(Bytes::from_static(b"va")));
    assert_eq!(conn.outstanding(), 0);
    assert_eq!(conn.unanswered_bytes(), 0);
    assert_eq!(conn.next_deadline(), None);
}

#[test]
fn a_fatal_error_frame_fails_the_connection() {
    let mut conn = Connection::new(false, Limits::default());
    conn.send(RequestRef::Ping, "ping", later());
    conn.take_output();
    let mut out = BytesMut::new();
    Response::encode_error(&FrameError::CrcMismatch { stored: 1, computed: 2 }, 0, false, &mut out);
    conn.input().extend_from_slice(&out);
    let failed = conn.poll_completion().unwrap_err();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1.code(), Some(ErrorCode::CRC_MISMATCH));
    assert!(conn.is_failed());
    assert!(conn.poll_completion().is_err(), "stays failed");
}

#[test]
fn bad_bytes_and_unknown_ids_fail_the_connection_without_panicking() {
    let mut conn = Connection::new(false, Limits::default());
    conn.send(RequestRef::Ping, "ping", later());
    conn.take_output();
    conn.input().extend_from_slice(&[0xFF; 40]);
    let failed = conn.poll_completion().unwrap_err();
    assert!(matches!(failed[0].1, ClientError::Protocol(FrameError::BadMagic(_))));

    let mut conn = Connection::new(false, Limits::default());
    conn.send(RequestRef::Ping, "ping", later());
    conn.take_output();
    respond(&mut conn, 99, Response::Ok);
    let failed = conn.poll_completion().unwrap_err();
    assert!(matches!(failed[0].1, ClientError::Disconnected { .. }));

    // A request frame where a response belongs: a protocol error.
    let mut conn = Connection::new(false, Limits::default());
    conn.send(RequestRef::Ping, "ping", later());
    conn.take_output();
    let mut out = BytesMut::new();
    Request::Ping.encode(1, false, &mut out);
    conn.input().extend_from_slice(&out);
    assert!(matches!(
        conn.poll_completion().unwrap_err()[0].1,
        ClientError::Protocol(FrameError::WrongDirection(_))
    ));
}

#[test]
fn failing_reports_what_may_have_been_applied() {
    let mut conn = Connection::new(false, Limits::default());
    let set = RequestRef::Set {
        key: b"k",
        value: b"v",
        ttl_ms: 0,
        condition: Default::default(),
    };
    conn.send(RequestRef::Get { key: b"k" }, "sent read", later());
    conn.send(set, "sent write", later());
    conn.take_output();
    conn.send(set, "unsent write", later());
    let io = ClientError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    let failed = conn.fail(io);
    assert_eq!(failed.len(), 3);
    assert!(matches!(failed[0], ("sent read", ClientError::Io(_))));
    assert!(matches!(
        failed[1],
        (
            "sent write",
            ClientError::Disconnected {
                outcome_unknown: true,
                ..
            }
        )
    ));
    assert!(matches!(
        failed[2],
        (
            "unsent write",
            ClientError::Disconnected {
                outcome_unknown: false,
                ..
            }
        )
    ));

    let mut conn = Connection::new(false, Limits::default());
    let start = Instant::now();
    conn.send(RequestRef::Get { key: b"k" }, "read", start + Duration::from_millis(10));
    conn.send(set, "write", start + Duration::from_millis(20));
    conn.take_output();
    assert!(!conn.timed_out(start));
    assert!(conn.timed_out(start + Duration::from_millis(10)));
    let failed = conn.fail(ClientError::Timeout { outcome_unknown: false });
    assert!(matches!(failed[0].1, ClientError::Timeout { outcome_unknown: false }));
    assert!(matches!(failed[1].1, ClientError::Timeout { outcome_unknown: true }));
}

#[test]
fn unanswered_bytes_bound_the_writes() {
    let mut conn: Connection<()> = Connection::new(false, Limits::default());
    let value = vec![0u8; 1000];
    let set = RequestRef::Set {
        key: b"k",
        value: &value,
        ttl_ms: 0,
        condition: Default::default(),
    };
    // Nothing sent yet: however much is encoded, it may be written.
    for _ in 0..100 {
        conn.send(set, (), later());
    }
    assert!(!conn.must_read_before_write());
    conn.take_output();
    conn.send(set, (), later());
    assert!(conn.unanswered_bytes() > MAX_UNANSWERED_BYTES);
    assert!(conn.must_read_before_write());
}

#[test]
fn the_router_refuses_unknown_hashes_and_splits_by_shard() {
    let err = Router::new(Topology::build(2, ["h:1"])).unwrap_err();
    assert!(matches!(err, ClientError::Topology(_)), "{err}");
    assert!(Router::from_response(Response::Ok).is_err());

    let router = router(4);
    assert_eq!(router.endpoints()[3], "h:3");
    let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
    let groups = router.split(&keys);
    let mut seen: Vec<u32> = Vec::new();
    for (shard, indices) in &groups {
        assert!(indices.windows(2).all(|w| w[0] < w[1]), "caller's order within a shard");
        for &i in indices {
            assert_eq!(key_shard(keys[i as usize].as_bytes(), 4), *shard);
        }
        seen.extend(indices);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..100).collect::<Vec<u32>>());
    assert_eq!(groups.len(), 4);
}

#[test]
fn a_plan_reassembles_mget_in_key_order_and_retries_only_failed_shards() {
    let router = router(3);
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    let mut plan = Plan::new(vec![Op::MGet(keys.iter().map(String::as_bytes).collect())]);
    let frames = plan.frames(&router);
    assert_eq!(frames.len(), 3, "one frame per shard");
    // Shard 0 and 2 answer, shard 1 says WRONG_SHARD.
    for frame in &frames {
        let response = if frame.shard == 1 {
            Response::Error {
                code: ErrorCode::WRONG_SHARD,
                message: Bytes::from_static(b"key belongs to shard 0"),
            }
        } else {
            let values: Vec<String> = frame.parts.iter().map(|&i| format!("v{i}")).collect();
            Response::Values(Batch::build(
                BatchKind::Values,
                values.iter().map(|v| (&b""[..], Some(v.as_bytes()))),
            ))
        };
        plan.complete(frame, Ok(response));
    }
    assert_eq!(plan.next_round(3), Some(true), "retry after a topology refresh");
    let retry = plan.frames(&router);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].shard, 1);
    let values: Vec<String> = retry[0].parts.iter().map(|&i| format!("v{i}")).collect();
    let response = Response::Values(Batch::build(
        BatchKind::Values,
        values.iter().map(|v| (&b""[..], Some(v.as_bytes()))),
    ));
    plan.complete(&retry[0], Ok(response));
    assert_eq!(plan.next_round(3), None);
    let Ok(Reply::Values(values)) = plan.into_results().pop().unwrap() else {
        panic!("values");
    };
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()));
    }
}

#[test]
fn a_plan_never_retries_a_write_of_unknown_outcome() {
    let router = router(2);
    let ops = vec![
        Op::Set {
            key: &b"a"[..],
            value: &b"1"[..],
            ttl_ms: 0,
            condition: Default::default(),
        },
        Op::Get(&b"a"[..]),
        Op::Incr {
            key: &b"n"[..],
            delta: 1,
        },
    ];
    let mut plan = Plan::new(ops);
    let frames = plan.frames(&router);
    let lost = |outcome_unknown| ClientError::Disconnected {
        outcome_unknown,
        reason: "reset".into(),
    };
    plan.complete(&frames[0], Err(lost(true)));
    plan.complete(&frames[1], Err(lost(false)));
    plan.complete(&frames[2], Err(lost(false)));
    assert_eq!(plan.next_round(3), Some(false));
    let retry = plan.frames(&router);
    assert_eq!(retry.iter().map(|f| f.op).collect::<Vec<_>>(), [1, 2]);
    plan.complete(&retry[0], Ok(Response::NotFound));
    plan.complete(&retry[1], Ok(Response::Integer(1)));
    assert_eq!(plan.next_round(3), None);
    let results = plan.into_results();
    assert!(results[0].as_ref().unwrap_err().is_outcome_unknown());
    assert_eq!(results[1].as_ref().unwrap(), &Reply::Value(None));
    assert_eq!(results[2].as_ref().unwrap(), &Reply::Integer(1));
}

#[test]
fn retries_stop_after_max_retries_and_server_errors_are_final() {
    let router = router(1);
    let mut plan = Plan::new(vec![
        Op::Get(&b"a"[..]),
        Op::Incr {
            key: &b"s"[..],
            delta: 1,
        },
    ]);
    for round in 0..=2 {
        let frames = plan.frames(&router);
        if round == 0 {
            assert_eq!(frames.len(), 2);
            let not_an_integer = Response::Error {
                code: ErrorCode::NOT_AN_INTEGER,
                message: Bytes::new(),
            };
            plan.complete(&frames[1], Ok(not_an_integer));
        }
        plan.complete(&frames[0], Err(ClientError::Timeout { outcome_unknown: false }));
        let next = plan.next_round(2);
        assert_eq!(next.is_some(), round < 2, "round {round}");
    }
    let results = plan.into_results();
    assert!(matches!(results[0], Err(ClientError::Timeout { .. })));
    assert!(results[1].as_ref().unwrap_err().is_not_an_integer());
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    let delays: Vec<u128> = (0..5).map(|r| backoff.delay(r).as_millis()).collect();
    assert_eq!(delays, [10, 20, 40, 50, 50]);
    assert_eq!(backoff.delay(1000), Duration::from_millis(50));
}
