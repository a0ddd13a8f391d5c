//! The command table and the commands that run on the shard owning their key.
//!
//! Every command corekv knows is described by a [`CommandSpec`] (name, Redis arity, flags, key
//! positions, documentation), which the dispatcher uses to check arity, find keys and route, and
//! which `COMMAND` reports. Commands on a single key run where that key lives through a
//! [`KeyedFn`]; commands that touch several shards or the connection are coordinated elsewhere
//! (`crate::dispatch`, `crate::server_commands`).

pub mod keys;
pub mod strings;

use bytes::Bytes;
use corekv_engine::Keyspace;
use corekv_net::resp::ReplyEncoder;

/// What a keyed command may touch while it runs: its shard's keyspace and nothing else.
pub struct ExecCtx<'a> {
    pub keyspace: &'a mut Keyspace,
    /// The client's selected database.
    pub db: usize,
    /// Milliseconds since the Unix epoch, read once per batch of commands.
    pub now_ms: u64,
    /// A reusable buffer for read-modify-write commands (APPEND, SETRANGE, INCR...), so they do not
    /// allocate per call. Its contents on entry are unspecified.
    pub scratch: &'a mut Vec<u8>,
}

/// A command whose keys all live on one shard, run on that shard. `args[0]` is the command name
/// as the client sent it; arity has already been checked against the spec.
pub type KeyedFn = fn(&mut ExecCtx<'_>, &[Bytes], &mut ReplyEncoder<'_>);

/// How the dispatcher runs a command.
#[derive(Clone, Copy)]
pub enum Handler {
    /// One key (at `first_key`), run on its owner shard.
    Keyed(KeyedFn),
    /// Coordinated by the dispatcher (multi-key, keyspace-wide, connection or server commands).
    Coordinated,
}

/// A command's static description (what `COMMAND INFO` reports, and what routing needs).
pub struct CommandSpec {
    /// Lower-case name, e.g. `"get"`.
    pub name: &'static str,
    /// Redis arity: n means exactly n arguments including the name; -n means at least n.
    pub arity: i32,
    /// Redis command flags, e.g. `&["write", "denyoom", "fast"]`.
    pub flags: &'static [&'static str],
    /// 1-based position of the first key, 0 if none.
    pub first_key: i32,
    /// Position of the last key; -1 means the last argument.
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// Redis ACL categories / group for COMMAND DOCS, e.g. `"string"`, `"generic"`, `"connection"`, `"server"`.
    pub group: &'static str,
    /// One-line summary for COMMAND DOCS.
    pub summary: &'static str,
    /// The Redis version that introduced the command, for COMMAND DOCS.
    pub since: &'static str,
    pub handler: Handler,
}

impl CommandSpec {
    /// Whether `argc` arguments (including the name) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }
}
