//! Commands the connection's own shard coordinates: connection and server commands, multi-key
//! commands that fan out to the shards owning their keys, and keyspace-wide commands.
//!
//! Each runs after the connection's queued remote work has been collected, so a coordinated
//! command sees every earlier command of its connection applied (per-connection order).
//! Cross-shard writes (MSET, MSETNX, RENAME, COPY over two shards) apply shard by shard: their
//! result is correct, but another client may observe them half-applied (see README).

use std::collections::BTreeMap;

use bytes::Bytes;
use corekv_net::resp::Protocol;

use crate::client::{valid_client_name, KillFilter};
use crate::commands::strings::parse_i64;
use crate::commands::{self, CommandSpec, Handler};
use crate::conn::{Connection, Flow};
use crate::info;
use crate::node::Settings;
use crate::shard::{CallReply, ShardCall};

macro_rules! spec {
    ($name:literal, $arity:expr, [$($flag:literal),*], $first:expr, $last:expr, $step:expr, $group:literal, $since:literal, $summary:literal) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: &[$($flag),*],
            first_key: $first,
            last_key: $last,
            step: $step,
            group: $group,
            summary: $summary,
            since: $since,
            handler: Handler::Coordinated,
        }
    };
}

pub static SPECS: &[CommandSpec] = &[
    spec!(
        "ping",
        -1,
        ["fast", "stale"],
        0,
        0,
        0,
        "connection",
        "1.0.0",
        "Returns the server's liveliness response."
    ),
    spec!(
        "echo",
        2,
        ["fast", "stale"],
        0,
        0,
        0,
        "connection",
        "1.0.0",
        "Returns the given string."
    ),
    spec!(
        "hello",
        -1,
        ["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
        "connection",
        "6.0.0",
        "Handshakes with the server."
    ),
    spec!(
        "auth",
        -2,
        ["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
        "connection",
        "1.0.0",
        "Authenticates the connection."
    ),
    spec!(
        "quit",
        -1,
        ["allow_busy", "noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
        "connection",
        "1.0.0",
        "Closes the connection."
    ),
    spec!(
        "reset",
        1,
        ["noscript", "loading", "stale", "fast", "no_auth"],
        0,
        0,
        0,
        "connection",
        "6.2.0",
        "Resets the connection."
    ),
    spec!(
        "select",
        2,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        "connection",
        "1.0.0",
        "Changes the selected database."
    ),
    spec!(
        "client",
        -2,
        [],
        0,
        0,
        0,
        "connection",
        "2.4.0",
        "A container for client connection commands."
    ),
    spec!(
        "command",
        -1,
        ["loading", "stale"],
        0,
        0,
        0,
        "server",
        "2.8.13",
        "Returns detailed information about all commands."
    ),
    spec!(
        "config",
        -2,
        [],
        0,
        0,
        0,
        "server",
        "2.0.0",
        "A container for server configuration commands."
    ),
    spec!(
        "info",
        -1,
        ["loading", "stale"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Returns information and statistics about the server."
    ),
    spec!(
        "dbsize",
        1,
        ["readonly", "fast"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Returns the number of keys in the database."
    ),
    spec!(
        "flushdb",
        -1,
        ["write"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Removes all keys from the current database."
    ),
    spec!(
        "flushall",
        -1,
        ["write"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Removes all keys from all databases."
    ),
    spec!(
        "swapdb",
        3,
        ["write", "fast"],
        0,
        0,
        0,
        "server",
        "4.0.0",
        "Swaps two Redis databases."
    ),
    spec!(
        "time",
        1,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        "server",
        "2.6.0",
        "Returns the server time."
    ),
    spec!(
        "save",
        1,
        ["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Writes a snapshot of every shard and drops the log it covers; replies when done."
    ),
    spec!(
        "bgsave",
        -1,
        ["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Starts a snapshot of every shard in the background."
    ),
    spec!(
        "bgrewriteaof",
        1,
        ["admin", "noscript", "no_async_loading", "no_multi"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Compacts every shard's log in the background (a snapshot, then the covered segments go)."
    ),
    spec!(
        "lastsave",
        1,
        ["loading", "stale", "fast"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Returns the Unix time of the last snapshot that completed on every shard."
    ),
    spec!(
        "shutdown",
        -1,
        ["admin", "noscript", "loading", "stale", "no_multi", "allow_busy"],
        0,
        0,
        0,
        "server",
        "1.0.0",
        "Synchronously saves the database(s) to disk and shuts down the server."
    ),
    spec!(
        "keys",
        2,
        ["readonly"],
        0,
        0,
        0,
        "generic",
        "1.0.0",
        "Returns all key names that match a pattern."
    ),
    spec!(
        "scan",
        -2,
        ["readonly"],
        0,
        0,
        0,
        "generic",
        "2.8.0",
        "Iterates over the key names in the database."
    ),
    spec!(
        "randomkey",
        1,
        ["readonly"],
        0,
        0,
        0,
        "generic",
        "1.0.0",
        "Returns a random key name from the database."
    ),
    spec!(
        "rename",
        3,
        ["write"],
        1,
        2,
        1,
        "generic",
        "1.0.0",
        "Renames a key and overwrites the destination."
    ),
    spec!(
        "renamenx",
        3,
        ["write", "fast"],
        1,
        2,
        1,
        "generic",
        "1.0.0",
        "Renames a key only when the target key name doesn't exist."
    ),
    spec!(
        "copy",
        -3,
        ["write", "denyoom"],
        1,
        2,
        1,
        "generic",
        "6.2.0",
        "Copies the value of a key to a new key."
    ),
    spec!(
        "del",
        -2,
        ["write"],
        1,
        -1,
        1,
        "generic",
        "1.0.0",
        "Deletes one or more keys."
    ),
    spec!(
        "unlink",
        -2,
        ["write", "fast"],
        1,
        -1,
        1,
        "generic",
        "4.0.0",
        "Asynchronously deletes one or more keys."
    ),
    spec!(
        "exists",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        "generic",
        "1.0.0",
        "Determines whether one or more keys exist."
    ),
    spec!(
        "touch",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        "generic",
        "3.2.1",
        "Returns the number of existing keys out of those specified after updating the time they were last accessed."
    ),
    spec!(
        "mget",
        -2,
        ["readonly", "fast"],
        1,
        -1,
        1,
        "string",
        "1.0.0",
        "Atomically returns the string values of one or more keys."
    ),
    spec!(
        "mset",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        "string",
        "1.0.1",
        "Atomically creates or modifies the string values of one or more keys."
    ),
    spec!(
        "msetnx",
        -3,
        ["write", "denyoom"],
        1,
        -1,
        2,
        "string",
        "1.0.1",
        "Atomically modifies the string values of one or more keys only when all keys don't exist."
    ),
];

const SYNTAX_ERROR: &str = "ERR syntax error";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";

/// Subcommands of the container commands, with Redis 7's arity (counting the container's name).
const CLIENT_SUBCOMMANDS: &[(&str, i32)] = &[
    ("id", 2),
    ("setname", 3),
    ("getname", 2),
    ("list", -2),
    ("info", 2),
    ("setinfo", 4),
    ("kill", -3),
    ("help", 2),
];
const CONFIG_SUBCOMMANDS: &[(&str, i32)] = &[("get", -3), ("set", -4), ("resetstat", 2), ("help", 2)];
const COMMAND_SUBCOMMANDS: &[(&str, i32)] = &[
    ("count", 2),
    ("list", -2),
    ("info", -2),
    ("docs", -2),
    ("getkeys", -4),
    ("help", 2),
];

/// Checks a container command's subcommand and its arity, replying Redis's error if either is
/// wrong. Returns the lower-case subcommand name when the command may run.
fn subcommand(conn: &mut Connection, args: &[Bytes], container: &str, table: &[(&str, i32)]) -> Option<String> {
    let name = lower(&args[1]);
    let Some(&(_, arity)) = table.iter().find(|(n, _)| *n == name) else {
        conn.encoder().error(&format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            String::from_utf8_lossy(&args[1]),
            container.to_ascii_uppercase()
        ));
        return None;
    };
    let fits = if arity >= 0 {
        args.len() == arity as usize
    } else {
        args.len() >= arity.unsigned_abs() as usize
    };
    if !fits {
        conn.encoder().error(&format!(
            "ERR wrong number of arguments for '{container}|{name}' command"
        ));
        return None;
    }
    Some(name)
}

fn lower(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

/// Runs a coordinated command (`conn.args` holds the request).
pub async fn run(conn: &mut Connection, spec: &'static CommandSpec) -> Flow {
    if spec.is_write() {
        if let Some(error) = conn.shard.node.write_refusal() {
            conn.encoder().error(&error);
            return Flow::Continue;
        }
    }
    let started = std::time::Instant::now();
    let flow = dispatch(conn, spec).await;
    conn.shard.commands.borrow_mut().record(spec, started.elapsed());
    if spec.is_write() {
        // A write on other shards is acknowledged only once each of them has it durable.
        if let Err(reason) = conn.shard.durable_barrier_all().await {
            tracing::warn!("closing a client whose writes could not be made durable: {reason}");
            conn.log_failed = true;
            return Flow::Close;
        }
    }
    flow
}

/// Whether a write must hold the node-wide turn: it writes on more than one shard.
fn needs_sequencing(conn: &Connection, spec: &CommandSpec, args: &[Bytes]) -> bool {
    let shards = conn.shard.shards;
    if shards == 1 || !spec.flags.contains(&"write") {
        return false;
    }
    if spec.first_key == 0 {
        return true; // FLUSHDB, FLUSHALL
    }
    let mut owners = key_positions(spec, args.len())
        .into_iter()
        .map(|p| conn.shard.owner_of(&args[p]));
    let first = owners.next();
    owners.any(|owner| Some(owner) != first)
}

async fn dispatch(conn: &mut Connection, spec: &'static CommandSpec) -> Flow {
    let args = std::mem::take(&mut conn.args);
    let sequenced = needs_sequencing(conn, spec, &args);
    if sequenced {
        conn.shard.sequenced_begin().await;
    }
    let flow = run_command(conn, spec, &args).await;
    if sequenced {
        conn.shard.sequenced_end().await;
    }
    conn.args = args;
    flow
}

async fn run_command(conn: &mut Connection, spec: &'static CommandSpec, args: &[Bytes]) -> Flow {
    match spec.name {
        "ping" => {
            match args.len() {
                1 => conn.encoder().simple("PONG"),
                2 => conn.encoder().bulk(&args[1]),
                _ => conn.encoder().error("ERR wrong number of arguments for 'ping' command"),
            }
            Flow::Continue
        }
        "echo" => {
            conn.encoder().bulk(&args[1]);
            Flow::Continue
        }
        "hello" => hello(conn, args),
        "auth" => {
            auth(conn, &args[1..]);
            Flow::Continue
        }
        "quit" => {
            conn.encoder().ok();
            Flow::Close
        }
        "reset" => {
            conn.db = 0;
            conn.protocol = Protocol::Resp2;
            {
                let mut info = conn.info.borrow_mut();
                info.db = 0;
                info.protocol = Protocol::Resp2;
                info.name.clear();
            }
            conn.encoder().simple("RESET");
            Flow::Continue
        }
        "select" => {
            match parse_i64(&args[1]) {
                None => conn.encoder().error(NOT_AN_INTEGER),
                Some(db) if db < 0 || db as u64 >= conn.shard.node.config.databases as u64 => {
                    conn.encoder().error("ERR DB index is out of range")
                }
                Some(db) => {
                    conn.db = db as usize;
                    conn.info.borrow_mut().db = db as usize;
                    conn.encoder().ok();
                }
            }
            Flow::Continue
        }
        "client" => client(conn, args).await,
        "command" => {
            command(conn, args);
            Flow::Continue
        }
        "config" => {
            config(conn, args).await;
            Flow::Continue
        }
        "info" => {
            let text = info::render(conn, &args[1..]).await;
            if conn.protocol == Protocol::Resp3 {
                conn.encoder().verbatim("txt", text.as_bytes());
            } else {
                conn.encoder().bulk(text.as_bytes());
            }
            Flow::Continue
        }
        "dbsize" => {
            let db = conn.db;
            let total: i64 = count_all(conn.shard.call_all(|_| ShardCall::DbSize { db }).await);
            conn.encoder().integer(total);
            Flow::Continue
        }
        "flushdb" | "flushall" => {
            if args.len() > 2 || (args.len() == 2 && !matches!(lower(&args[1]).as_str(), "async" | "sync")) {
                conn.encoder().error(SYNTAX_ERROR);
                return Flow::Continue;
            }
            let db = conn.db;
            // Synchronous across shards: the reply leaves after every shard has flushed.
            if spec.name == "flushdb" {
                conn.shard.call_all(|_| ShardCall::FlushDb { db }).await;
            } else {
                conn.shard.call_all(|_| ShardCall::FlushAll).await;
            }
            conn.encoder().ok();
            Flow::Continue
        }
        "swapdb" => {
            let databases = conn.shard.node.config.databases as i64;
            let index = |arg: &Bytes| parse_i64(arg);
            match (index(&args[1]), index(&args[2])) {
                (Some(a), Some(b)) if (0..databases).contains(&a) && (0..databases).contains(&b) => {
                    let (a, b) = (a as usize, b as usize);
                    conn.shard.call_all(|_| ShardCall::SwapDb { a, b }).await;
                    conn.encoder().ok();
                }
                (Some(_), Some(_)) => conn.encoder().error("ERR DB index is out of range"),
                (None, _) => conn.encoder().error("ERR invalid first DB index"),
                (_, None) => conn.encoder().error("ERR invalid second DB index"),
            }
            Flow::Continue
        }
        "time" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut enc = conn.encoder();
            enc.array_len(2);
            enc.bulk(now.as_secs().to_string().as_bytes());
            enc.bulk(now.subsec_micros().to_string().as_bytes());
            Flow::Continue
        }
        "shutdown" => shutdown(conn, args),
        "save" | "bgsave" | "bgrewriteaof" => {
            save(conn, spec.name, args).await;
            Flow::Continue
        }
        "lastsave" => {
            let reports = conn.shard.call_all(|_| ShardCall::Report).await;
            let logs = reports.iter().filter_map(|r| match r {
                CallReply::Report(r) => r.persistence.as_ref(),
                _ => None,
            });
            let last = info::last_save_unix(&conn.shard.node, logs);
            conn.encoder().integer(last as i64);
            Flow::Continue
        }
        "keys" => {
            let db = conn.db;
            let pattern = args[1].clone();
            let replies = conn
                .shard
                .call_all(|_| ShardCall::Keys {
                    db,
                    pattern: pattern.clone(),
                })
                .await;
            let keys: Vec<Bytes> = replies
                .into_iter()
                .flat_map(|r| match r {
                    CallReply::Keys(keys) => keys,
                    _ => Vec::new(),
                })
                .collect();
            let mut enc = conn.encoder();
            enc.array_len(keys.len());
            for key in &keys {
                enc.bulk(key);
            }
            Flow::Continue
        }
        "scan" => {
            scan(conn, args).await;
            Flow::Continue
        }
        "randomkey" => {
            random_key(conn).await;
            Flow::Continue
        }
        "rename" | "renamenx" => {
            rename(conn, args, spec.name == "renamenx").await;
            Flow::Continue
        }
        "copy" => {
            copy(conn, args).await;
            Flow::Continue
        }
        "del" | "unlink" | "exists" | "touch" => {
            let db = conn.db;
            let keys = &args[1..];
            let total = count_all(
                fan_out(conn, keys, 1, |keys| match spec.name {
                    "exists" => ShardCall::Exists { db, keys },
                    "touch" => ShardCall::Touch { db, keys },
                    _ => ShardCall::Remove { db, keys },
                })
                .await
                .into_iter()
                .map(|(_, r)| r),
            );
            conn.encoder().integer(total);
            Flow::Continue
        }
        "mget" => {
            mget(conn, &args[1..]).await;
            Flow::Continue
        }
        "mset" | "msetnx" => {
            mset(conn, args, spec.name == "msetnx").await;
            Flow::Continue
        }
        other => unreachable!("coordinated command {other} has no implementation"),
    }
}

fn count_all(replies: impl IntoIterator<Item = CallReply>) -> i64 {
    replies
        .into_iter()
        .map(|r| match r {
            CallReply::Count(n) => n,
            _ => 0,
        })
        .sum()
}

/// Groups `args` (in groups of `stride`: a key then its values) by owner shard, runs one call per
/// shard concurrently, and returns each shard's reply with the original indexes of its groups.
async fn fan_out(
    conn: &Connection,
    args: &[Bytes],
    stride: usize,
    make: impl Fn(Vec<Bytes>) -> ShardCall,
) -> Vec<(Vec<usize>, CallReply)> {
    let shards = conn.shard.shards;
    let mut groups: Vec<(Vec<usize>, Vec<Bytes>)> = (0..shards).map(|_| (Vec::new(), Vec::new())).collect();
    for (index, group) in args.chunks(stride).enumerate() {
        let owner = conn.shard.owner_of(&group[0]);
        groups[owner].0.push(index);
        groups[owner].1.extend(group.iter().cloned());
    }
    let calls = groups
        .into_iter()
        .enumerate()
        .filter(|(_, (indexes, _))| !indexes.is_empty())
        .map(|(owner, (indexes, items))| {
            let call = make(items);
            let shard = &conn.shard;
            async move { (indexes, shard.call(owner, call).await) }
        });
    futures::future::join_all(calls).await
}

async fn mget(conn: &mut Connection, keys: &[Bytes]) {
    let db = conn.db;
    let mut values: Vec<Option<Bytes>> = vec![None; keys.len()];
    for (indexes, reply) in fan_out(conn, keys, 1, |keys| ShardCall::MGet { db, keys }).await {
        if let CallReply::Values(found) = reply {
            for (index, value) in indexes.into_iter().zip(found) {
                values[index] = value;
            }
        }
    }
    let mut enc = conn.encoder();
    enc.array_len(values.len());
    for value in &values {
        match value {
            Some(v) => enc.bulk(v),
            None => enc.null(),
        }
    }
}

async fn mset(conn: &mut Connection, args: &[Bytes], only_if_none_exist: bool) {
    if !(args.len() - 1).is_multiple_of(2) {
        let name = if only_if_none_exist { "msetnx" } else { "mset" };
        conn.encoder()
            .error(&format!("ERR wrong number of arguments for '{name}' command"));
        return;
    }
    let db = conn.db;
    if only_if_none_exist {
        let keys: Vec<Bytes> = args[1..].chunks(2).map(|pair| pair[0].clone()).collect();
        let existing = count_all(
            fan_out(conn, &keys, 1, |keys| ShardCall::Exists { db, keys })
                .await
                .into_iter()
                .map(|(_, r)| r),
        );
        if existing > 0 {
            conn.encoder().integer(0);
            return;
        }
    }
    let replies = fan_out(conn, &args[1..], 2, |items| ShardCall::MSet {
        db,
        pairs: items.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect(),
    })
    .await;
    let failure = replies.into_iter().find_map(|(_, r)| match r {
        CallReply::Stored(Err(e)) => Some(e),
        _ => None,
    });
    match (failure, only_if_none_exist) {
        (Some(error), _) => conn.encoder().error(&error.to_string()),
        (None, true) => conn.encoder().integer(1),
        (None, false) => conn.encoder().ok(),
    }
}

async fn read_entry(conn: &Connection, db: usize, key: &Bytes) -> Option<(Bytes, Option<u64>)> {
    let owner = conn.shard.owner_of(key);
    match conn.shard.call(owner, ShardCall::Read { db, key: key.clone() }).await {
        CallReply::Entry(entry) => entry,
        _ => None,
    }
}

async fn write_entry(
    conn: &Connection,
    db: usize,
    key: &Bytes,
    value: Bytes,
    expire_at_ms: Option<u64>,
    if_absent: bool,
) -> Result<bool, corekv_engine::EngineError> {
    let owner = conn.shard.owner_of(key);
    let call = ShardCall::Write {
        db,
        key: key.clone(),
        value,
        expire_at_ms,
        if_absent,
    };
    match conn.shard.call(owner, call).await {
        CallReply::Written(result) => result,
        _ => Ok(false),
    }
}

async fn remove_key(conn: &Connection, db: usize, key: &Bytes) {
    let owner = conn.shard.owner_of(key);
    conn.shard
        .call(
            owner,
            ShardCall::Remove {
                db,
                keys: vec![key.clone()],
            },
        )
        .await;
}

/// RENAME / RENAMENX: read the source, write the target (keeping the TTL), delete the source.
async fn rename(conn: &mut Connection, args: &[Bytes], only_if_absent: bool) {
    let db = conn.db;
    let (source, target) = (&args[1], &args[2]);
    let Some((value, expire_at)) = read_entry(conn, db, source).await else {
        conn.encoder().error("ERR no such key");
        return;
    };
    if source == target {
        if only_if_absent {
            conn.encoder().integer(0);
        } else {
            conn.encoder().ok();
        }
        return;
    }
    match write_entry(conn, db, target, value, expire_at, only_if_absent).await {
        Err(error) => conn.encoder().error(&error.to_string()),
        Ok(false) => conn.encoder().integer(0),
        Ok(true) => {
            remove_key(conn, db, source).await;
            if only_if_absent {
                conn.encoder().integer(1);
            } else {
                conn.encoder().ok();
            }
        }
    }
}

/// `COPY source destination [DB destination-db] [REPLACE]`
async fn copy(conn: &mut Connection, args: &[Bytes]) {
    let mut target_db = conn.db;
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        match lower(&args[i]).as_str() {
            "replace" => replace = true,
            "db" if i + 1 < args.len() => {
                i += 1;
                match parse_i64(&args[i]) {
                    Some(db) if db >= 0 && (db as u64) < conn.shard.node.config.databases as u64 => {
                        target_db = db as usize
                    }
                    Some(_) => {
                        conn.encoder().error("ERR DB index is out of range");
                        return;
                    }
                    None => {
                        conn.encoder().error(NOT_AN_INTEGER);
                        return;
                    }
                }
            }
            _ => {
                conn.encoder().error(SYNTAX_ERROR);
                return;
            }
        }
        i += 1;
    }
    let (source, target) = (&args[1], &args[2]);
    if source == target && target_db == conn.db {
        conn.encoder().error("ERR source and destination objects are the same");
        return;
    }
    let Some((value, expire_at)) = read_entry(conn, conn.db, source).await else {
        conn.encoder().integer(0);
        return;
    };
    match write_entry(conn, target_db, target, value, expire_at, !replace).await {
        Err(error) => conn.encoder().error(&error.to_string()),
        Ok(written) => conn.encoder().integer(i64::from(written)),
    }
}

/// SCAN over every shard: the cursor's low bits name the shard, the rest is that shard's own
/// reverse-binary cursor, so the scan walks shard 0 completely, then shard 1, and so on.
async fn scan(conn: &mut Connection, args: &[Bytes]) {
    let Some(cursor) = std::str::from_utf8(&args[1]).ok().and_then(|t| t.parse::<u64>().ok()) else {
        conn.encoder().error("ERR invalid cursor");
        return;
    };
    let mut count = 10usize;
    let mut pattern = None;
    let mut type_filter = None;
    let mut i = 2;
    while i < args.len() {
        let option = lower(&args[i]);
        if i + 1 >= args.len() {
            conn.encoder().error(SYNTAX_ERROR);
            return;
        }
        match option.as_str() {
            "count" => match parse_i64(&args[i + 1]) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => {
                    conn.encoder().error(SYNTAX_ERROR);
                    return;
                }
                None => {
                    conn.encoder().error(NOT_AN_INTEGER);
                    return;
                }
            },
            "match" => pattern = Some(args[i + 1].clone()).filter(|p| p.as_ref() != b"*"),
            "type" => type_filter = Some(args[i + 1].clone()),
            _ => {
                conn.encoder().error(SYNTAX_ERROR);
                return;
            }
        }
        i += 2;
    }
    let shards = conn.shard.shards as u64;
    let shard_bits = shard_bits(shards);
    let mut shard = cursor & ((1 << shard_bits) - 1);
    let mut inner = cursor >> shard_bits;
    if shard >= shards {
        // Not a cursor this node handed out: like Redis with a bogus cursor, end the scan.
        shard = shards;
    }
    let mut keys = Vec::new();
    let mut next = 0;
    while shard < shards {
        let call = ShardCall::Scan {
            db: conn.db,
            cursor: inner,
            count,
            pattern: pattern.clone(),
            type_filter: type_filter.clone(),
        };
        let CallReply::Scanned {
            next_cursor,
            keys: found,
        } = conn.shard.call(shard as usize, call).await
        else {
            break;
        };
        keys.extend(found);
        if next_cursor != 0 {
            next = (next_cursor << shard_bits) | shard;
            break;
        }
        shard += 1;
        inner = 0;
        if keys.len() >= count {
            if shard < shards {
                next = shard;
            }
            break;
        }
    }
    let mut enc = conn.encoder();
    enc.array_len(2);
    enc.bulk(next.to_string().as_bytes());
    enc.array_len(keys.len());
    for key in &keys {
        enc.bulk(key);
    }
}

fn shard_bits(shards: u64) -> u32 {
    64 - (shards.max(2) - 1).leading_zeros()
}

async fn random_key(conn: &mut Connection) {
    let db = conn.db;
    let shards = conn.shard.shards;
    // Start at a shard chosen by the clock so every shard's keys can come out; fall through to the
    // next shards when one is empty.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let first = (seed % shards as u64) as usize;
    for step in 0..shards {
        let target = (first + step) % shards;
        let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64);
        if let CallReply::Key(Some(key)) = conn.shard.call(target, ShardCall::RandomKey { db, seed }).await {
            conn.encoder().bulk(&key);
            return;
        }
    }
    conn.encoder().null();
}

fn hello(conn: &mut Connection, args: &[Bytes]) -> Flow {
    let mut protocol = conn.protocol;
    let mut i = 1;
    if args.len() > 1 {
        match parse_i64(&args[1]) {
            None => {
                conn.encoder()
                    .error("ERR Protocol version is not an integer or out of range");
                return Flow::Continue;
            }
            Some(2) => protocol = Protocol::Resp2,
            Some(3) => protocol = Protocol::Resp3,
            Some(_) => {
                conn.encoder().error("NOPROTO unsupported protocol version");
                return Flow::Continue;
            }
        }
        i = 2;
    }
    let mut name = None;
    while i < args.len() {
        let option = lower(&args[i]);
        if option == "auth" && i + 2 < args.len() {
            if args[i + 1].as_ref() != b"default" {
                conn.encoder()
                    .error("WRONGPASS invalid username-password pair or user is disabled.");
                return Flow::Continue;
            }
            i += 3;
        } else if option == "setname" && i + 1 < args.len() {
            if !valid_client_name(&args[i + 1]) {
                conn.encoder()
                    .error("ERR Client names cannot contain spaces, newlines or special characters.");
                return Flow::Continue;
            }
            name = Some(String::from_utf8_lossy(&args[i + 1]).into_owned());
            i += 2;
        } else {
            conn.encoder().error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
            return Flow::Continue;
        }
    }
    conn.protocol = protocol;
    let id = {
        let mut info = conn.info.borrow_mut();
        info.protocol = protocol;
        if let Some(name) = name {
            info.name = name;
        }
        info.id
    };
    let mut enc = conn.encoder();
    enc.map_len(7);
    enc.bulk(b"server");
    enc.bulk(b"redis");
    enc.bulk(b"version");
    enc.bulk(info::REDIS_COMPAT_VERSION.as_bytes());
    enc.bulk(b"proto");
    enc.integer(if protocol == Protocol::Resp3 { 3 } else { 2 });
    enc.bulk(b"id");
    enc.integer(id as i64);
    enc.bulk(b"mode");
    enc.bulk(b"standalone");
    enc.bulk(b"role");
    enc.bulk(b"master");
    enc.bulk(b"modules");
    enc.array_len(0);
    Flow::Continue
}

fn auth(conn: &mut Connection, args: &[Bytes]) {
    match args {
        [_password] => conn.encoder().error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        [user, _password] if user.as_ref() == b"default" => conn.encoder().ok(),
        [_, _] => conn.encoder().error("WRONGPASS invalid username-password pair or user is disabled."),
        _ => conn.encoder().error(SYNTAX_ERROR),
    }
}

/// SAVE (waits), BGSAVE and BGREWRITEAOF (start and reply at once): a compaction of every shard.
async fn save(conn: &mut Connection, name: &str, args: &[Bytes]) {
    if name == "bgsave" && args.len() > 1 && !(args.len() == 2 && lower(&args[1]) == "schedule") {
        conn.encoder().error(SYNTAX_ERROR);
        return;
    }
    let wait = name == "save";
    let shard = conn.shard.clone();
    let results = shard.compact_all(wait).await;
    use crate::persist::compaction::CompactionError;
    let error = results.iter().find_map(|r| r.as_ref().err());
    match (error, name) {
        (None, "save") => conn.encoder().ok(),
        (None, "bgsave") => conn.encoder().simple("Background saving started"),
        (None, _) => conn.encoder().simple("Background append only file rewriting started"),
        (Some(CompactionError::InProgress), "bgrewriteaof") => conn
            .encoder()
            .error("ERR Background append only file rewriting already in progress"),
        (Some(CompactionError::InProgress), _) => conn.encoder().error("ERR Background save already in progress"),
        (Some(e), _) => conn.encoder().error(&format!("ERR {e}")),
    }
}

fn shutdown(conn: &mut Connection, args: &[Bytes]) -> Flow {
    for arg in &args[1..] {
        match lower(arg).as_str() {
            "nosave" | "save" | "now" | "force" => {}
            "abort" => {
                conn.encoder().error("ERR No shutdown in progress.");
                return Flow::Continue;
            }
            _ => {
                conn.encoder().error(SYNTAX_ERROR);
                return Flow::Continue;
            }
        }
    }
    // Redis closes the connection without a reply on success; the node then stops gracefully.
    conn.shard.node.request_shutdown();
    Flow::Close
}

async fn client(conn: &mut Connection, args: &[Bytes]) -> Flow {
    let Some(sub) = subcommand(conn, args, "client", CLIENT_SUBCOMMANDS) else {
        return Flow::Continue;
    };
    let argc = args.len();
    match (sub.as_str(), argc) {
        ("id", 2) => {
            let id = conn.info.borrow().id;
            conn.encoder().integer(id as i64);
        }
        ("setname", 3) => {
            if !valid_client_name(&args[2]) {
                conn.encoder()
                    .error("ERR Client names cannot contain spaces, newlines or special characters.");
            } else {
                conn.info.borrow_mut().name = String::from_utf8_lossy(&args[2]).into_owned();
                conn.encoder().ok();
            }
        }
        ("getname", 2) => {
            let name = conn.info.borrow().name.clone();
            if name.is_empty() {
                conn.encoder().null();
            } else {
                conn.encoder().bulk(name.as_bytes());
            }
        }
        ("setinfo", 4) => {
            let attr = lower(&args[2]);
            if !valid_client_name(&args[3]) && !args[3].is_empty() {
                conn.encoder().error(&format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    attr
                ));
            } else {
                let value = String::from_utf8_lossy(&args[3]).into_owned();
                match attr.as_str() {
                    "lib-name" => {
                        conn.info.borrow_mut().lib_name = value;
                        conn.encoder().ok();
                    }
                    "lib-ver" => {
                        conn.info.borrow_mut().lib_ver = value;
                        conn.encoder().ok();
                    }
                    _ => conn.encoder().error(&format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&args[2])
                    )),
                }
            }
        }
        ("info", 2) => {
            let line = conn.info.borrow().describe(std::time::Instant::now());
            conn.encoder().bulk(format!("{line}\n").as_bytes());
        }
        ("list", _) => {
            let mut id_filter = None;
            if argc > 2 {
                if lower(&args[2]) == "id" && argc > 3 {
                    let mut ids = Vec::new();
                    for arg in &args[3..] {
                        match parse_i64(arg) {
                            Some(id) if id > 0 => ids.push(id as u64),
                            _ => {
                                conn.encoder().error("ERR Invalid client ID");
                                return Flow::Continue;
                            }
                        }
                    }
                    id_filter = Some(ids);
                } else if lower(&args[2]) == "type" && argc == 4 {
                    if lower(&args[3]) != "normal" {
                        conn.encoder().bulk(b"");
                        return Flow::Continue;
                    }
                } else {
                    conn.encoder().error(SYNTAX_ERROR);
                    return Flow::Continue;
                }
            }
            let replies = conn
                .shard
                .call_all(|_| ShardCall::ClientList {
                    id_filter: id_filter.clone(),
                })
                .await;
            let mut text = String::new();
            for reply in replies {
                if let CallReply::Lines(lines) = reply {
                    for line in lines {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
            conn.encoder().bulk(text.as_bytes());
        }
        ("kill", _) => {
            let my_id = conn.info.borrow().id;
            if argc == 3 {
                // Old form: CLIENT KILL addr:port
                let filter = KillFilter {
                    addr: Some(String::from_utf8_lossy(&args[2]).into_owned()),
                    ..Default::default()
                };
                let killed = count_all(
                    conn.shard
                        .call_all(|_| ShardCall::ClientKill { filter: filter.clone() })
                        .await,
                );
                if killed == 0 {
                    conn.encoder().error("ERR No such client");
                } else {
                    conn.encoder().ok();
                }
                return if conn.info.borrow().killed {
                    Flow::Close
                } else {
                    Flow::Continue
                };
            }
            let mut filter = KillFilter {
                skip_id: Some(my_id),
                ..Default::default()
            };
            let mut i = 2;
            while i < argc {
                if i + 1 >= argc {
                    conn.encoder().error(SYNTAX_ERROR);
                    return Flow::Continue;
                }
                let value = String::from_utf8_lossy(&args[i + 1]).into_owned();
                match lower(&args[i]).as_str() {
                    "id" => match parse_i64(&args[i + 1]) {
                        Some(id) if id > 0 => filter.id = Some(id as u64),
                        _ => {
                            conn.encoder().error("ERR client-id should be greater than 0");
                            return Flow::Continue;
                        }
                    },
                    "addr" => filter.addr = Some(value),
                    "laddr" => filter.local_addr = Some(value),
                    "skipme" => match value.to_ascii_lowercase().as_str() {
                        "yes" => filter.skip_id = Some(my_id),
                        "no" => filter.skip_id = None,
                        _ => {
                            conn.encoder().error(SYNTAX_ERROR);
                            return Flow::Continue;
                        }
                    },
                    _ => {
                        conn.encoder().error(SYNTAX_ERROR);
                        return Flow::Continue;
                    }
                }
                i += 2;
            }
            let killed = count_all(
                conn.shard
                    .call_all(|_| ShardCall::ClientKill { filter: filter.clone() })
                    .await,
            );
            conn.encoder().integer(killed);
            if conn.info.borrow().killed {
                return Flow::Close;
            }
        }
        ("help", 2) => {
            let lines = [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "KILL <ip:port>",
                "    Kill connection made from <ip:port>.",
                "KILL <option> <value> [<option> <value> [...]]",
                "    Kill connections. Options are: ID <client-id>, ADDR <ip:port>, LADDR <ip:port>, SKIPME (YES|NO).",
                "LIST [TYPE normal] [ID <id> [<id> ...]]",
                "    Return information about client connections.",
                "SETINFO <option> <value>",
                "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ];
            commands::reply_help(&mut conn.encoder(), &lines);
        }
        _ => unreachable!("CLIENT {sub} passed the subcommand table"),
    }
    Flow::Continue
}

fn command(conn: &mut Connection, args: &[Bytes]) {
    let sub = if args.len() > 1 {
        let Some(sub) = subcommand(conn, args, "command", COMMAND_SUBCOMMANDS) else {
            return;
        };
        Some(sub)
    } else {
        None
    };
    match sub.as_deref() {
        None => {
            let specs: Vec<_> = commands::all().collect();
            let mut enc = conn.encoder();
            enc.array_len(specs.len());
            for spec in specs {
                command_info(&mut enc, spec);
            }
        }
        Some("count") => {
            let n = commands::all().count();
            conn.encoder().integer(n as i64);
        }
        Some("list") => {
            let mut names: Vec<&str> = commands::all().map(|s| s.name).collect();
            if args.len() == 5 && lower(&args[2]) == "filterby" && lower(&args[3]) == "pattern" {
                names.retain(|n| corekv_engine::glob::glob_match(&args[4], n.as_bytes(), true));
            } else if args.len() != 2 {
                conn.encoder().error(SYNTAX_ERROR);
                return;
            }
            let mut enc = conn.encoder();
            enc.array_len(names.len());
            for name in names {
                enc.bulk(name.as_bytes());
            }
        }
        Some("info") => {
            let specs: Vec<_> = if args.len() == 2 {
                commands::all().map(Some).collect()
            } else {
                args[2..].iter().map(|n| commands::lookup(n)).collect()
            };
            let mut enc = conn.encoder();
            enc.array_len(specs.len());
            for spec in specs {
                match spec {
                    Some(spec) => command_info(&mut enc, spec),
                    None => enc.null_array(),
                }
            }
        }
        Some("docs") => {
            let specs: Vec<_> = if args.len() == 2 {
                commands::all().collect()
            } else {
                args[2..].iter().filter_map(|n| commands::lookup(n)).collect()
            };
            let mut enc = conn.encoder();
            enc.map_len(specs.len());
            for spec in specs {
                enc.bulk(spec.name.as_bytes());
                enc.map_len(4);
                enc.bulk(b"summary");
                enc.bulk(spec.summary.as_bytes());
                enc.bulk(b"since");
                enc.bulk(spec.since.as_bytes());
                enc.bulk(b"group");
                enc.bulk(spec.group.as_bytes());
                enc.bulk(b"complexity");
                enc.bulk(if spec.first_key != 0 && spec.last_key < 0 {
                    b"O(N)"
                } else {
                    b"O(1)"
                });
            }
        }
        Some("getkeys") => {
            let Some(spec) = commands::lookup(&args[2]) else {
                conn.encoder().error("ERR Invalid command specified");
                return;
            };
            let cmd = &args[2..];
            if !spec.arity_ok(cmd.len()) {
                conn.encoder()
                    .error("ERR Invalid number of arguments specified for command");
                return;
            }
            let keys = key_positions(spec, cmd.len());
            if keys.is_empty() {
                conn.encoder().error("ERR The command has no key arguments");
                return;
            }
            let mut enc = conn.encoder();
            enc.array_len(keys.len());
            for pos in keys {
                enc.bulk(&cmd[pos]);
            }
        }
        Some("help") => {
            let lines = [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands in this server.",
                "LIST [FILTERBY PATTERN <pattern>]",
                "    Return a list of all commands in this server.",
                "INFO [<command-name> ...]",
                "    Return details about multiple commands.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about multiple commands.",
                "GETKEYS <full-command>",
                "    Return the keys from a full command.",
                "HELP",
                "    Print this help.",
            ];
            commands::reply_help(&mut conn.encoder(), &lines);
        }
        Some(other) => unreachable!("COMMAND {other} passed the subcommand table"),
    }
}

/// Positions (0-based, in the full command) of the keys of a command with `argc` arguments.
pub fn key_positions(spec: &CommandSpec, argc: usize) -> Vec<usize> {
    if spec.first_key <= 0 || spec.step <= 0 {
        return Vec::new();
    }
    let first = spec.first_key as usize;
    let last = if spec.last_key < 0 {
        argc as i64 + spec.last_key as i64
    } else {
        spec.last_key as i64
    };
    let mut positions = Vec::new();
    let mut pos = first as i64;
    while pos <= last && (pos as usize) < argc {
        positions.push(pos as usize);
        pos += spec.step as i64;
    }
    positions
}

fn command_info(enc: &mut corekv_net::resp::ReplyEncoder<'_>, spec: &CommandSpec) {
    enc.array_len(10);
    enc.bulk(spec.name.as_bytes());
    enc.integer(spec.arity as i64);
    enc.set_len(spec.flags.len());
    for flag in spec.flags {
        enc.simple(flag);
    }
    enc.integer(spec.first_key as i64);
    enc.integer(spec.last_key as i64);
    enc.integer(spec.step as i64);
    enc.set_len(1);
    enc.simple(&format!("@{}", spec.group));
    enc.set_len(0);
    enc.array_len(0);
    enc.array_len(0);
}

async fn config(conn: &mut Connection, args: &[Bytes]) {
    let Some(sub) = subcommand(conn, args, "config", CONFIG_SUBCOMMANDS) else {
        return;
    };
    match (sub.as_str(), args.len()) {
        ("get", n) if n >= 3 => {
            let settings = conn.shard.node.settings();
            let mut found = BTreeMap::new();
            for pattern in &args[2..] {
                for (name, value) in info::config_values(&conn.shard.node, &settings) {
                    if corekv_engine::glob::glob_match(pattern, name.as_bytes(), true) {
                        found.insert(name, value);
                    }
                }
            }
            let mut enc = conn.encoder();
            enc.map_len(found.len());
            for (name, value) in found {
                enc.bulk(name.as_bytes());
                enc.bulk(value.as_bytes());
            }
        }
        ("set", n) if n >= 4 && n % 2 == 0 => {
            let mut settings = conn.shard.node.settings();
            for pair in args[2..].chunks(2) {
                let name = lower(&pair[0]);
                let value = String::from_utf8_lossy(&pair[1]).into_owned();
                if let Err(text) = apply_setting(&mut settings, &name, &value) {
                    conn.encoder().error(&text);
                    return;
                }
            }
            conn.shard.node.store_settings(&settings);
            let per_shard = settings.maxmemory_bytes / conn.shard.shards as u64;
            conn.shard
                .call_all(|_| ShardCall::SetLimits {
                    maxmemory_bytes: per_shard,
                    policy: settings.maxmemory_policy,
                    samples: settings.maxmemory_samples,
                })
                .await;
            conn.encoder().ok();
        }
        ("resetstat", 2) => {
            conn.shard.call_all(|_| ShardCall::ResetStats).await;
            conn.shard.node.reset_stats();
            conn.encoder().ok();
        }
        ("help", 2) => {
            let lines = [
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "SET <directive> <value>",
                "    Set the configuration <directive> to <value>.",
                "RESETSTAT",
                "    Reset statistics reported by the INFO command.",
                "HELP",
                "    Print this help.",
            ];
            commands::reply_help(&mut conn.encoder(), &lines);
        }
        ("set", _) => conn
            .encoder()
            .error("ERR wrong number of arguments for 'config|set' command"),
        _ => unreachable!("CONFIG {sub} passed the subcommand table"),
    }
}

fn apply_setting(settings: &mut Settings, name: &str, value: &str) -> Result<(), String> {
    let invalid = |reason: &str| format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {reason}");
    match name {
        "maxmemory" => {
            settings.maxmemory_bytes =
                crate::config::parse_size(value).map_err(|_| invalid("argument must be a memory value"))?;
        }
        "maxmemory-policy" => {
            settings.maxmemory_policy =
                crate::config::parse_policy(value).ok_or_else(|| invalid("argument(s) must be one of the following: volatile-lru, allkeys-lru, volatile-random, allkeys-random, volatile-ttl, noeviction"))?;
        }
        "maxmemory-samples" => {
            settings.maxmemory_samples = value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| invalid("argument must be between 1 and 64 inclusive"))?;
        }
        "maxclients" => {
            settings.max_clients = value
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("argument must be between 1 and 4294967295 inclusive"))?;
        }
        "databases" | "port" | "bind" | "dir" | "shards" => return Err(invalid("can't set immutable config")),
        _ => {
            return Err(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
            ))
        }
    }
    Ok(())
}
