//! Connection and server commands: PING, ECHO, HELLO, AUTH, QUIT, RESET, SELECT, CLIENT *,
//! COMMAND *, CONFIG *, INFO, DBSIZE, FLUSHDB, FLUSHALL, TIME, unknown commands and arity errors.

use crate::support::*;
use std::time::Duration;

const WRONG_ARGS: fn(&str) -> R = |cmd| err(&format!("ERR wrong number of arguments for '{cmd}' command"));

#[test]
fn ping_and_echo() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "PING", simple("PONG"));
    check(&mut c, "ping", simple("PONG"));
    check(&mut c, "PING hello", bulk("hello"));
    check(&mut c, "PING \"\"", bulk(""));
    check(&mut c, "PING a b", WRONG_ARGS("ping"));
    check(&mut c, "ECHO hello", bulk("hello"));
    check(&mut c, "ECHO \"\"", bulk(""));
    check(&mut c, "ECHO", WRONG_ARGS("echo"));
    check(&mut c, "ECHO a b", WRONG_ARGS("echo"));
    // Binary-safe.
    let bin: Vec<u8> = (0u8..=255).collect();
    assert_eq!(qa(&mut c, &[b"ECHO".as_slice(), &bin]), R::Bulk(bin.clone()));
}

#[test]
fn unknown_commands_and_arity_errors() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(
        &mut c,
        "FOO a b",
        err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' "),
    );
    check(
        &mut c,
        "nosuchcmd",
        err("ERR unknown command 'nosuchcmd', with args beginning with: "),
    );
    check(&mut c, "GET", WRONG_ARGS("get"));
    check(&mut c, "GET a b", WRONG_ARGS("get"));
    check(&mut c, "SET a", WRONG_ARGS("set"));
    check(&mut c, "MSET a", WRONG_ARGS("mset"));
    check(&mut c, "MSET a b c", WRONG_ARGS("mset"));
    check(&mut c, "DEL", WRONG_ARGS("del"));
    check(&mut c, "dbsize x", WRONG_ARGS("dbsize"));
    check(&mut c, "TIME x", WRONG_ARGS("time"));
    // Command names are case-insensitive.
    check(&mut c, "sEt a 1", ok());
    check(&mut c, "gEt a", bulk("1"));
    // The connection is still usable after errors.
    check(&mut c, "PING", simple("PONG"));
}

#[test]
fn hello_resp2_and_resp3() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let id = q(&mut c, "CLIENT ID").as_int();

    // HELLO without arguments: current protocol (2), flat array.
    let r = q(&mut c, "HELLO");
    assert!(matches!(r, R::Arr(_)), "HELLO in RESP2 is a flat array: {r:?}");
    assert_eq!(r.field("proto"), Some(int(2)), "{r:?}");
    assert_eq!(r.field("id"), Some(int(id)), "{r:?}");
    assert_eq!(r.field("mode"), Some(bulk("standalone")), "{r:?}");
    assert_eq!(r.field("role"), Some(bulk("master")), "{r:?}");
    assert_eq!(r.field("modules"), Some(arr(vec![])), "{r:?}");
    assert!(r.field("server").is_some(), "{r:?}");
    assert!(r.field("version").is_some(), "{r:?}");

    let r = q(&mut c, "HELLO 2");
    assert!(matches!(r, R::Arr(_)), "{r:?}");
    assert_eq!(r.field("proto"), Some(int(2)));

    // HELLO 3 switches to RESP3: the reply is a map.
    let r = q(&mut c, "HELLO 3");
    assert!(matches!(r, R::Map(_)), "HELLO 3 replies a RESP3 map: {r:?}");
    assert_eq!(r.field("proto"), Some(int(3)));
    assert_eq!(r.field("id"), Some(int(id)));

    check(&mut c, "HELLO 4", err("NOPROTO unsupported protocol version"));
    check(&mut c, "HELLO 1", err("NOPROTO unsupported protocol version"));
    check(
        &mut c,
        "HELLO abc",
        err("ERR Protocol version is not an integer or out of range"),
    );
    check(&mut c, "HELLO 2 foo", err("ERR Syntax error in HELLO option 'foo'"));
    check(&mut c, "HELLO 2 AUTH", err("ERR Syntax error in HELLO option 'AUTH'"));
    check(
        &mut c,
        "HELLO 2 auth default",
        err("ERR Syntax error in HELLO option 'auth'"),
    );
}

#[test]
fn hello_resp3_changes_reply_encoding() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    raw.send_cmd(&["GET", "missing"]).unwrap();
    raw.expect(b"$-1\r\n");
    raw.send_cmd(&["HELLO", "3"]).unwrap();
    let hello = raw.read_reply(Duration::from_secs(10)).unwrap();
    assert_eq!(hello[0], b'%', "HELLO 3 reply is a map: {}", show(&hello));
    raw.send_cmd(&["GET", "missing"]).unwrap();
    raw.expect(b"_\r\n");
    raw.send_cmd(&["HELLO", "2"]).unwrap();
    let hello = raw.read_reply(Duration::from_secs(10)).unwrap();
    assert_eq!(hello[0], b'*', "HELLO 2 reply is an array: {}", show(&hello));
    raw.send_cmd(&["GET", "missing"]).unwrap();
    raw.expect(b"$-1\r\n");
}

#[test]
fn hello_auth_and_setname_without_passwords() {
    // corekv has no passwords, like Redis's default user with `nopass`: any password is accepted
    // for "default", other user names are WRONGPASS.
    let node = Node::start(&[]);
    let mut c = node.client();
    let r = q(&mut c, "HELLO 3 AUTH default anything");
    assert_eq!(r.field("proto"), Some(int(3)), "{r:?}");
    let r = q(&mut c, "HELLO 2 AUTH default \"\"");
    assert_eq!(r.field("proto"), Some(int(2)), "{r:?}");
    check(
        &mut c,
        "HELLO 2 AUTH other secret",
        err("WRONGPASS invalid username-password pair or user is disabled."),
    );
    check(&mut c, "AUTH default whatever", ok());
    check(
        &mut c,
        "AUTH other whatever",
        err("WRONGPASS invalid username-password pair or user is disabled."),
    );
    check(
        &mut c,
        "AUTH whatever",
        err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
    );

    let r = q(&mut c, "HELLO 2 SETNAME myname");
    assert_eq!(r.field("proto"), Some(int(2)), "{r:?}");
    check(&mut c, "CLIENT GETNAME", bulk("myname"));
    let r = q(&mut c, "HELLO 3 AUTH default pw SETNAME other");
    assert_eq!(r.field("proto"), Some(int(3)), "{r:?}");
    check(&mut c, "CLIENT GETNAME", bulk("other"));
    check(
        &mut c,
        "HELLO 3 SETNAME \"a b\"",
        err("ERR Client names cannot contain spaces, newlines or special characters."),
    );
    check(&mut c, "CLIENT GETNAME", bulk("other"));
}

#[test]
fn quit_replies_ok_and_closes() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    raw.send(b"*1\r\n$4\r\nQUIT\r\n").unwrap();
    raw.expect_then_closed(b"+OK\r\n");
    node.assert_alive();
}

#[test]
fn reset_restores_connection_defaults() {
    let node = Node::start(&[]);
    let mut raw = node.raw();
    for (cmd, reply) in [
        (vec!["SELECT", "1"], b"+OK\r\n".to_vec()),
        (vec!["SET", "k", "in-db1"], b"+OK\r\n".to_vec()),
        (vec!["CLIENT", "SETNAME", "before"], b"+OK\r\n".to_vec()),
    ] {
        raw.send_cmd(&cmd).unwrap();
        raw.expect(&reply);
    }
    raw.send_cmd(&["HELLO", "3"]).unwrap();
    raw.read_reply(Duration::from_secs(10)).unwrap();
    raw.send_cmd(&["RESET"]).unwrap();
    raw.expect(b"+RESET\r\n");
    // Back to db 0, no name, RESP2.
    raw.send_cmd(&["GET", "k"]).unwrap();
    raw.expect(b"$-1\r\n");
    raw.send_cmd(&["CLIENT", "GETNAME"]).unwrap();
    raw.expect(b"$-1\r\n");
    raw.send_cmd(&["SELECT", "1"]).unwrap();
    raw.expect(b"+OK\r\n");
    raw.send_cmd(&["GET", "k"]).unwrap();
    raw.expect(b"$6\r\nin-db1\r\n");
    raw.send_cmd(&["RESET", "x"]).unwrap();
    raw.expect(b"-ERR wrong number of arguments for 'reset' command\r\n");
}

#[test]
fn select_isolates_databases() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET k db0", ok());
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "GET k", nil());
    check(&mut c, "EXISTS k", int(0));
    check(&mut c, "SET k db1", ok());
    check(&mut c, "DBSIZE", int(1));
    check(&mut c, "SELECT 15", ok());
    check(&mut c, "GET k", nil());
    check(&mut c, "SELECT 16", err("ERR DB index is out of range"));
    check(&mut c, "SELECT -1", err("ERR DB index is out of range"));
    check(&mut c, "SELECT abc", err("ERR value is not an integer or out of range"));
    check(&mut c, "SELECT", WRONG_ARGS("select"));
    // A failed SELECT keeps the current database.
    check(&mut c, "SET here 15", ok());
    check(&mut c, "GET here", bulk("15"));
    check(&mut c, "SELECT 0", ok());
    check(&mut c, "GET k", bulk("db0"));
    check(&mut c, "GET here", nil());
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "GET k", bulk("db1"));
    // Another connection starts in db 0.
    let mut c2 = node.client();
    check(&mut c2, "GET k", bulk("db0"));
}

#[test]
fn databases_flag_limits_select() {
    let node = Node::start(&["--databases", "4"]);
    let mut c = node.client();
    check(&mut c, "SELECT 3", ok());
    check(&mut c, "SET k three", ok());
    check(&mut c, "SELECT 4", err("ERR DB index is out of range"));
    check(&mut c, "GET k", bulk("three"));
    check(&mut c, "SELECT 0", ok());
    check(&mut c, "GET k", nil());
    check(&mut c, "SET k zero", ok());
    let r = q(&mut c, "CONFIG GET databases");
    assert_eq!(r, bulks(&["databases", "4"]));
    let info = Info::get(&mut c, "keyspace");
    assert_eq!(info.db_keys(0).map(|k| k.0), Some(1), "{}", info.text);
    assert_eq!(info.db_keys(3).map(|k| k.0), Some(1), "{}", info.text);
    assert_eq!(info.db_keys(1), None, "empty databases are not listed: {}", info.text);
    // MOVE and COPY ... DB honour the limit too.
    check(&mut c, "MOVE k 4", err("ERR DB index is out of range"));
    check(&mut c, "COPY k k2 DB 4", err("ERR DB index is out of range"));
    check(&mut c, "MOVE k 2", int(1));
    check(&mut c, "SELECT 2", ok());
    check(&mut c, "GET k", bulk("zero"));
}

#[test]
fn client_id_name_list_info() {
    let node = Node::start(&[]);
    let mut c1 = node.client();
    let mut c2 = node.client();
    let id1 = q(&mut c1, "CLIENT ID").as_int();
    let id2 = q(&mut c2, "CLIENT ID").as_int();
    assert_ne!(id1, id2);
    assert_eq!(q(&mut c1, "CLIENT ID").as_int(), id1, "CLIENT ID is stable");

    check(&mut c1, "CLIENT GETNAME", nil());
    check(&mut c1, "CLIENT SETNAME alpha", ok());
    check(&mut c1, "CLIENT GETNAME", bulk("alpha"));
    check(
        &mut c1,
        "CLIENT SETNAME \"a b\"",
        err("ERR Client names cannot contain spaces, newlines or special characters."),
    );
    check(
        &mut c1,
        "CLIENT SETNAME \"a\\nb\"",
        err("ERR Client names cannot contain spaces, newlines or special characters."),
    );
    check(&mut c1, "CLIENT GETNAME", bulk("alpha"));
    check(&mut c2, "CLIENT GETNAME", nil());
    check(
        &mut c1,
        "CLIENT FOO",
        err("ERR unknown subcommand 'FOO'. Try CLIENT HELP."),
    );

    check(&mut c1, "SELECT 3", ok());
    let list = q(&mut c2, "CLIENT LIST").as_string();
    let lines: Vec<&str> = list.split('\n').filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "{list}");
    let l1 = lines
        .iter()
        .find(|l| l.starts_with(&format!("id={id1} ")))
        .unwrap_or_else(|| panic!("client {id1} not in CLIENT LIST:\n{list}"));
    assert!(l1.contains(" name=alpha "), "{l1}");
    assert!(l1.contains(" db=3 "), "{l1}");
    assert!(l1.contains(" addr=127.0.0.1:"), "{l1}");
    assert!(lines.iter().any(|l| l.starts_with(&format!("id={id2} "))), "{list}");
    let only1 = q(&mut c2, &format!("CLIENT LIST ID {id1}")).as_string();
    assert_eq!(only1.lines().count(), 1, "{only1}");
    assert!(only1.starts_with(&format!("id={id1} ")), "{only1}");

    let info = q(&mut c1, "CLIENT INFO").as_string();
    assert!(info.starts_with(&format!("id={id1} ")), "{info}");
    assert!(info.contains(" name=alpha "), "{info}");
    assert!(info.ends_with('\n'), "{info:?}");
    assert_eq!(info.lines().count(), 1);

    // Clearing the name.
    check(&mut c1, "CLIENT SETNAME \"\"", ok());
    check(&mut c1, "CLIENT GETNAME", nil());
}

#[test]
fn client_setinfo() {
    // CLIENT SETINFO is Redis 7.2 (redis-rs sends it on connect); not in Redis 7.0.
    if corekv_only() {
        return;
    }
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "CLIENT SETINFO LIB-NAME mylib", ok());
    check(&mut c, "CLIENT SETINFO lib-ver 1.2.3", ok());
    let info = q(&mut c, "CLIENT INFO").as_string();
    assert!(info.contains(" lib-name=mylib "), "{info}");
    assert!(info.contains(" lib-ver=1.2.3"), "{info}");
    assert!(q(&mut c, "CLIENT SETINFO nosuch x").is_err());
    assert!(q(&mut c, "CLIENT SETINFO lib-name \"a b\"").is_err());
    check(&mut c, "CLIENT SETINFO lib-name", WRONG_ARGS("client|setinfo"));
}

#[test]
fn client_kill() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let mut victim = node.raw();
    victim.send_cmd(&["CLIENT", "ID"]).unwrap();
    let idr = victim.read_reply(Duration::from_secs(10)).unwrap();
    let vid: i64 = String::from_utf8_lossy(&idr[1..idr.len() - 2]).parse().unwrap();
    check(&mut c, "CLIENT KILL ID 999999999", int(0));
    check(&mut c, "CLIENT KILL 1.2.3.4:5", err("ERR No such client"));
    check(&mut c, &format!("CLIENT KILL ID {vid}"), int(1));
    victim.expect_closed(Duration::from_secs(10));

    // By address, old and new forms.
    let mut v2 = node.raw();
    let addr = v2.stream.local_addr().unwrap().to_string();
    v2.send_cmd(&["PING"]).unwrap();
    v2.expect(b"+PONG\r\n");
    check(&mut c, &format!("CLIENT KILL {addr}"), ok());
    v2.expect_closed(Duration::from_secs(10));
    let mut v3 = node.raw();
    let addr = v3.stream.local_addr().unwrap().to_string();
    v3.send_cmd(&["PING"]).unwrap();
    v3.expect(b"+PONG\r\n");
    check(&mut c, &format!("CLIENT KILL ADDR {addr}"), int(1));
    v3.expect_closed(Duration::from_secs(10));
    // SKIPME yes (the default) does not kill the caller.
    let my = q(&mut c, "CLIENT ID").as_int();
    check(&mut c, &format!("CLIENT KILL ID {my}"), int(0));
    check(&mut c, "PING", simple("PONG"));
}

#[test]
fn command_introspection() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let count = q(&mut c, "COMMAND COUNT").as_int();
    // COMMAND LIST also names subcommands ("client|list"); COMMAND COUNT only top-level ones.
    let list = q(&mut c, "COMMAND LIST").sorted_strings();
    let top: Vec<&String> = list.iter().filter(|n| !n.contains('|')).collect();
    assert_eq!(count as usize, top.len(), "COMMAND COUNT vs COMMAND LIST");
    let all = q(&mut c, "COMMAND").as_arr();
    assert_eq!(all.len(), top.len(), "COMMAND vs COMMAND LIST");
    for name in [
        "get",
        "set",
        "setnx",
        "setex",
        "psetex",
        "getset",
        "getdel",
        "getex",
        "mget",
        "mset",
        "msetnx",
        "append",
        "strlen",
        "getrange",
        "substr",
        "setrange",
        "incr",
        "decr",
        "incrby",
        "decrby",
        "incrbyfloat",
        "del",
        "unlink",
        "exists",
        "touch",
        "type",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "ttl",
        "pttl",
        "expiretime",
        "pexpiretime",
        "persist",
        "keys",
        "scan",
        "randomkey",
        "rename",
        "renamenx",
        "copy",
        "move",
        "object",
        "ping",
        "echo",
        "hello",
        "quit",
        "reset",
        "select",
        "client",
        "command",
        "config",
        "info",
        "dbsize",
        "flushdb",
        "flushall",
        "time",
        "shutdown",
        "auth",
    ] {
        assert!(list.iter().any(|n| n == name), "COMMAND LIST lacks {name}: {list:?}");
    }

    // COMMAND INFO: name, arity, flags, first key, last key, step.
    let info = q(&mut c, "COMMAND INFO get set mget nosuch");
    let items = info.as_arr();
    assert_eq!(items.len(), 4, "{info:?}");
    let get = items[0].as_arr();
    assert_eq!(get[0], bulk("get"));
    assert_eq!(get[1], int(2));
    let flags: Vec<String> = get[2].as_arr().iter().map(|f| f.as_string()).collect();
    assert!(flags.contains(&"readonly".to_string()), "{flags:?}");
    assert_eq!(&get[3..6], &[int(1), int(1), int(1)]);
    let set = items[1].as_arr();
    assert_eq!(set[0], bulk("set"));
    assert_eq!(set[1], int(-3));
    let flags: Vec<String> = set[2].as_arr().iter().map(|f| f.as_string()).collect();
    assert!(flags.contains(&"write".to_string()), "{flags:?}");
    let mget = items[2].as_arr();
    assert_eq!(mget[1], int(-2));
    assert_eq!(&mget[3..6], &[int(1), int(-1), int(1)]);
    assert_eq!(items[3], nil());

    // COMMAND DOCS: a map from name to its docs.
    let docs = q(&mut c, "COMMAND DOCS get");
    let get_docs = docs.field("get").unwrap_or_else(|| panic!("{docs:?}"));
    let summary = get_docs.field("summary").unwrap_or_else(|| panic!("{get_docs:?}"));
    assert!(!summary.as_string().is_empty());
    let docs = q(&mut c, "COMMAND DOCS nosuch");
    assert!(docs == arr(vec![]) || docs == R::Map(vec![]), "{docs:?}");

    // COMMAND GETKEYS.
    check(&mut c, "COMMAND GETKEYS MSET a 1 b 2", bulks(&["a", "b"]));
    check(&mut c, "COMMAND GETKEYS GET k", bulks(&["k"]));
    check(&mut c, "COMMAND GETKEYS SET k v EX 10", bulks(&["k"]));
    check(&mut c, "COMMAND GETKEYS COPY a b", bulks(&["a", "b"]));
    check(&mut c, "COMMAND GETKEYS RENAME a b", bulks(&["a", "b"]));
    check(&mut c, "COMMAND GETKEYS DEL a b c", bulks(&["a", "b", "c"]));
    check(&mut c, "COMMAND GETKEYS foo bar", err("ERR Invalid command specified"));
    check(
        &mut c,
        "COMMAND GETKEYS PING x",
        err("ERR The command has no key arguments"),
    );
    check(
        &mut c,
        "COMMAND GETKEYS GET a b",
        err("ERR Invalid number of arguments specified for command"),
    );
    check(
        &mut c,
        "COMMAND FOO",
        err("ERR unknown subcommand 'FOO'. Try COMMAND HELP."),
    );

    let getlike = q(&mut c, "COMMAND LIST FILTERBY PATTERN get*").sorted_strings();
    for name in ["get", "getdel", "getex", "getrange", "getset"] {
        assert!(getlike.iter().any(|n| n == name), "{getlike:?}");
    }
    assert!(getlike.iter().all(|n| n.starts_with("get")), "{getlike:?}");
}

#[test]
fn config_get_set_resetstat() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "CONFIG GET maxmemory", bulks(&["maxmemory", "0"]));
    check(&mut c, "CONFIG GET databases", bulks(&["databases", "16"]));
    check(&mut c, "CONFIG GET nosuch", arr(vec![]));
    // Glob patterns.
    let r = q(&mut c, "CONFIG GET maxmemory*");
    let pairs: Vec<(String, String)> = r
        .as_arr()
        .chunks(2)
        .map(|p| (p[0].as_string(), p[1].as_string()))
        .collect();
    assert!(pairs.contains(&("maxmemory".into(), "0".into())), "{r:?}");
    assert!(
        pairs.contains(&("maxmemory-policy".into(), "noeviction".into())),
        "{r:?}"
    );
    assert!(pairs.iter().all(|(k, _)| k.starts_with("maxmemory")), "{r:?}");
    let r = q(&mut c, "CONFIG GET max?emory");
    assert_eq!(r, bulks(&["maxmemory", "0"]));
    // Several parameters at once (Redis 7).
    let r = q(&mut c, "CONFIG GET maxmemory databases");
    assert_eq!(r.field("maxmemory"), Some(bulk("0")));
    assert_eq!(r.field("databases"), Some(bulk("16")));

    check(&mut c, "CONFIG SET maxmemory 10mb", ok());
    check(&mut c, "CONFIG GET maxmemory", bulks(&["maxmemory", "10485760"]));
    check(&mut c, "CONFIG SET maxmemory 1gb", ok());
    check(&mut c, "CONFIG GET maxmemory", bulks(&["maxmemory", "1073741824"]));
    let info = Info::get(&mut c, "memory");
    assert_eq!(info.int("maxmemory"), 1073741824, "{}", info.text);
    check(&mut c, "CONFIG SET maxmemory 0", ok());
    check(&mut c, "CONFIG SET maxmemory-policy allkeys-lru", ok());
    check(
        &mut c,
        "CONFIG GET maxmemory-policy",
        bulks(&["maxmemory-policy", "allkeys-lru"]),
    );
    let bad = q(&mut c, "CONFIG SET maxmemory-policy bogus");
    assert!(
        bad.as_err_text()
            .starts_with("ERR CONFIG SET failed (possibly related to argument 'maxmemory-policy')"),
        "{bad:?}"
    );
    check(
        &mut c,
        "CONFIG GET maxmemory-policy",
        bulks(&["maxmemory-policy", "allkeys-lru"]),
    );
    check(
        &mut c,
        "CONFIG SET nosuch x",
        err("ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"),
    );

    // RESETSTAT zeroes the counters.
    check(&mut c, "SET k v", ok());
    for _ in 0..5 {
        check(&mut c, "GET k", bulk("v"));
        check(&mut c, "GET missing", nil());
    }
    let info = Info::get(&mut c, "stats");
    assert!(info.int("keyspace_hits") >= 5, "{}", info.text);
    assert!(info.int("keyspace_misses") >= 5, "{}", info.text);
    check(&mut c, "CONFIG RESETSTAT", ok());
    let info = Info::get(&mut c, "stats");
    assert_eq!(info.int("keyspace_hits"), 0, "{}", info.text);
    assert_eq!(info.int("keyspace_misses"), 0, "{}", info.text);
    // Data is untouched.
    check(&mut c, "GET k", bulk("v"));
}

impl R {
    fn as_err_text(&self) -> String {
        match self {
            R::Err(e) => e.clone(),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

#[test]
fn info_sections_and_fields() {
    let node = Node::start(&[]);
    let mut c = node.client();
    check(&mut c, "SET a 1", ok());
    check(&mut c, "SET b 2 EX 1000", ok());
    check(&mut c, "SELECT 2", ok());
    check(&mut c, "SET c 3", ok());
    check(&mut c, "SELECT 0", ok());

    let all = Info::get(&mut c, "");
    let sections = all.sections();
    for s in ["Server", "Clients", "Memory", "Stats", "Keyspace"] {
        assert!(sections.iter().any(|x| x == s), "INFO lacks # {s}: {sections:?}");
    }
    assert!(all.text.contains("\r\n"), "INFO lines end with CRLF");
    assert_eq!(all.int("tcp_port"), node.port() as i64);
    assert!(all.field("redis_version").is_some(), "{}", all.text);
    assert!(all.int("connected_clients") >= 1);
    assert!(all.int("used_memory") > 0);
    assert_eq!(all.int("maxmemory"), 0);
    assert_eq!(all.field("maxmemory_policy").as_deref(), Some("noeviction"));
    assert!(all.int("total_commands_processed") >= 5);
    assert_eq!(all.int("expired_keys"), 0);
    assert_eq!(all.int("evicted_keys"), 0);
    assert_eq!(all.db_keys(0), Some((2, 1)), "{}", all.text);
    assert_eq!(all.db_keys(2), Some((1, 0)), "{}", all.text);
    assert_eq!(all.db_keys(1), None);

    for (section, header, field) in [
        ("server", "Server", "tcp_port"),
        ("clients", "Clients", "connected_clients"),
        ("memory", "Memory", "used_memory"),
        ("stats", "Stats", "expired_keys"),
        ("keyspace", "Keyspace", "db0"),
        ("SERVER", "Server", "tcp_port"),
    ] {
        let info = Info::get(&mut c, section);
        assert_eq!(
            info.sections(),
            vec![header.to_string()],
            "INFO {section}:\n{}",
            info.text
        );
        assert!(
            info.field(field).is_some(),
            "INFO {section} lacks {field}:\n{}",
            info.text
        );
    }
    for section in ["all", "everything", "default"] {
        let info = Info::get(&mut c, section);
        for s in ["Server", "Clients", "Memory", "Stats", "Keyspace"] {
            assert!(info.sections().iter().any(|x| x == s), "INFO {section} lacks {s}");
        }
        assert_eq!(info.db_keys(0), Some((2, 1)), "INFO {section}");
    }
    // Several sections at once (Redis 7).
    let two = Info::get(&mut c, "memory keyspace");
    assert_eq!(two.sections(), vec!["Memory".to_string(), "Keyspace".to_string()]);
    // Unknown section: empty.
    check(&mut c, "INFO nosuchsection", bulk(""));
}

#[test]
fn dbsize_flushdb_flushall() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let keys = spread_keys("flush");
    for k in &keys {
        check(&mut c, &format!("SET {k} v"), ok());
    }
    check(&mut c, "DBSIZE", int(20));
    check(&mut c, "SELECT 1", ok());
    check(&mut c, "SET x 1", ok());
    check(&mut c, "SET y 1", ok());
    check(&mut c, "DBSIZE", int(2));
    check(&mut c, "FLUSHDB", ok());
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "SELECT 0", ok());
    check(&mut c, "DBSIZE", int(20));
    check(&mut c, "FLUSHDB bogus", err("ERR syntax error"));
    check(&mut c, "FLUSHDB ASYNC", ok());
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "SET a 1", ok());
    check(&mut c, "FLUSHDB SYNC", ok());
    check(&mut c, "DBSIZE", int(0));

    for db in 0..3 {
        check(&mut c, &format!("SELECT {db}"), ok());
        for k in &keys {
            check(&mut c, &format!("SET {k} v EX 1000"), ok());
        }
    }
    check(&mut c, "FLUSHALL", ok());
    for db in 0..3 {
        check(&mut c, &format!("SELECT {db}"), ok());
        check(&mut c, "DBSIZE", int(0));
    }
    check(&mut c, "SET a 1", ok());
    check(&mut c, "FLUSHALL ASYNC", ok());
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "SET a 1", ok());
    check(&mut c, "FLUSHALL SYNC", ok());
    check(&mut c, "DBSIZE", int(0));
    check(&mut c, "FLUSHALL bogus", err("ERR syntax error"));
    check(&mut c, "FLUSHALL ASYNC x", err("ERR syntax error"));
    let info = Info::get(&mut c, "keyspace");
    assert_eq!(info.db_keys(0), None, "{}", info.text);
    assert_eq!(info.db_keys(2), None, "{}", info.text);
}

#[test]
fn time_is_now() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let r = q(&mut c, "TIME").as_arr();
    assert_eq!(r.len(), 2);
    let secs: i64 = r[0].as_string().parse().expect("seconds");
    let micros: i64 = r[1].as_string().parse().expect("microseconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((secs - now).abs() <= 5, "TIME {secs} vs now {now}");
    assert!((0..1_000_000).contains(&micros), "{micros}");
}

#[test]
fn many_connections_see_each_others_writes() {
    let node = Node::start(&[]);
    let mut cons: Vec<_> = (0..8).map(|_| node.client()).collect();
    for (i, c) in cons.iter_mut().enumerate() {
        check(c, &format!("SET conn:{i} {i}"), ok());
    }
    for c in cons.iter_mut() {
        for i in 0..8 {
            check(c, &format!("GET conn:{i}"), bulk(i.to_string()));
        }
    }
    let info = Info::get(&mut cons[0], "clients");
    assert!(info.int("connected_clients") >= 8, "{}", info.text);
}

#[test]
fn container_command_arity_errors_do_not_hurt_the_server() {
    // Every case verified against redis-server 7.0.15. After each, the server must still serve
    // on every shard.
    let node = Node::start(&[]);
    let mut c = node.client();
    let wa = |name: &str| format!("ERR wrong number of arguments for '{name}' command");
    let cases: Vec<(&str, String)> = vec![
        ("OBJECT", wa("object")),
        ("OBJECT ENCODING", wa("object|encoding")),
        ("OBJECT IDLETIME", wa("object|idletime")),
        ("OBJECT FREQ", wa("object|freq")),
        ("OBJECT ENCODING a b", wa("object|encoding")),
        ("OBJECT HELP x", wa("object|help")),
        ("CLIENT", wa("client")),
        ("CLIENT KILL", wa("client|kill")),
        ("CLIENT SETNAME", wa("client|setname")),
        ("CLIENT INFO x", wa("client|info")),
        ("CLIENT GETNAME x", wa("client|getname")),
        ("CLIENT ID x", wa("client|id")),
        ("CLIENT LIST ID", "ERR syntax error".into()),
        ("CLIENT LIST ID abc", "ERR Invalid client ID".into()),
        ("CLIENT KILL ID abc", "ERR client-id should be greater than 0".into()),
        ("CLIENT KILL SKIPME maybe", "ERR syntax error".into()),
        ("CONFIG", wa("config")),
        ("CONFIG SET", wa("config|set")),
        ("CONFIG SET maxmemory", wa("config|set")),
        ("CONFIG GET", wa("config|get")),
        ("CONFIG RESETSTAT x", wa("config|resetstat")),
        ("COMMAND GETKEYS", wa("command|getkeys")),
        ("COMMAND GETKEYS GET", wa("command|getkeys")),
        ("COMMAND COUNT x", wa("command|count")),
        ("COMMAND LIST FILTERBY", "ERR syntax error".into()),
        ("COMMAND LIST FILTERBY PATTERN", "ERR syntax error".into()),
        ("HELLO 3 SETNAME", "ERR Syntax error in HELLO option 'SETNAME'".into()),
        ("HELLO 3 AUTH default", "ERR Syntax error in HELLO option 'AUTH'".into()),
        ("SELECT", wa("select")),
        ("MOVE k", wa("move")),
        ("COPY k", wa("copy")),
        ("GETEX", wa("getex")),
        ("SCAN", wa("scan")),
        ("EXPIRE", wa("expire")),
    ];
    let mut failures = Vec::new();
    for (line, expected) in &cases {
        let got = match try_r(cmd_of(&split_line(line)).query::<redis::Value>(&mut c)) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{line}: connection error {e}"));
                c = node.client();
                node.assert_alive();
                continue;
            }
        };
        if got != err(expected) {
            failures.push(format!("{line}: expected (error) {expected}, got {got:?}"));
        }
        node.assert_alive();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Redis 7.0:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
