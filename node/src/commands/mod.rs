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
    /// Whether the command may change data (Redis's `write` flag).
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }

    /// A command on one key, the first argument, run on that key's shard.
    pub const fn keyed(
        name: &'static str,
        arity: i32,
        flags: &'static [&'static str],
        group: &'static str,
        summary: &'static str,
        since: &'static str,
        run: KeyedFn,
    ) -> CommandSpec {
        CommandSpec {
            name,
            arity,
            flags,
            first_key: 1,
            last_key: 1,
            step: 1,
            group,
            summary,
            since,
            handler: Handler::Keyed(run),
        }
    }

    /// Whether `argc` arguments (including the name) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }
}

/// Every command corekv knows.
pub fn all() -> impl Iterator<Item = &'static CommandSpec> {
    strings::SPECS.iter().chain(keys::SPECS).chain(crate::coord::SPECS)
}

/// Replies a HELP text: one simple string per line, as Redis does.
pub fn reply_help(enc: &mut ReplyEncoder<'_>, lines: &[&str]) {
    enc.array_len(lines.len());
    for line in lines {
        enc.simple(line);
    }
}

/// Longest command name corekv knows, for the case-folding buffer of [`lookup`].
const MAX_NAME_LEN: usize = 32;

fn table() -> &'static ahash::HashMap<&'static [u8], &'static CommandSpec> {
    static TABLE: std::sync::OnceLock<ahash::HashMap<&'static [u8], &'static CommandSpec>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map = ahash::HashMap::default();
        for spec in all() {
            assert!(spec.name.len() <= MAX_NAME_LEN, "command name too long: {}", spec.name);
            assert!(
                spec.name.bytes().all(|b| !b.is_ascii_uppercase()),
                "{} is not lower-case",
                spec.name
            );
            let previous = map.insert(spec.name.as_bytes(), spec);
            assert!(previous.is_none(), "command {} defined twice", spec.name);
        }
        map
    })
}

/// Finds a command by name, ignoring ASCII case, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > MAX_NAME_LEN {
        return None;
    }
    let mut folded = [0u8; MAX_NAME_LEN];
    let folded = &mut folded[..name.len()];
    folded.copy_from_slice(name);
    folded.make_ascii_lowercase();
    table().get(&*folded).copied()
}

/// Redis's text for an unknown command: the name and the start of the arguments, each cut at
/// 128 bytes in total.
pub fn unknown_command_error(args: &[Bytes]) -> String {
    let name = String::from_utf8_lossy(&args[0]);
    let name: String = name.chars().take(128).collect();
    let mut listed = String::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        let text = String::from_utf8_lossy(arg);
        let cut: String = text.chars().take(room).collect();
        listed.push('\'');
        listed.push_str(&cut);
        listed.push_str("' ");
    }
    format!("ERR unknown command '{name}', with args beginning with: {listed}")
}
