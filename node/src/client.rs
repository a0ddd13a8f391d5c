//! What the node knows about one client connection (CLIENT LIST, CLIENT KILL, HELLO, SELECT).

use std::net::SocketAddr;
use std::time::Instant;

use corekv_net::resp::Protocol;

#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub fd: i32,
    pub shard: usize,
    pub name: String,
    pub lib_name: String,
    pub lib_ver: String,
    pub db: usize,
    pub protocol: Protocol,
    pub created: Instant,
    pub last_interaction: Instant,
    pub last_command: &'static str,
    /// Set by CLIENT KILL: the connection closes after its current batch.
    pub killed: bool,
}

impl ClientInfo {
    /// One line of CLIENT LIST / CLIENT INFO, in Redis 7's field order (fields corekv does not
    /// track are reported with their idle values).
    pub fn describe(&self, now: Instant) -> String {
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags=N db={} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={} shard={}",
            self.id,
            self.addr,
            self.local_addr,
            self.fd,
            self.name,
            now.duration_since(self.created).as_secs(),
            now.duration_since(self.last_interaction).as_secs(),
            self.db,
            self.last_command,
            if self.protocol == Protocol::Resp3 { 3 } else { 2 },
            self.lib_name,
            self.lib_ver,
            self.shard,
        )
    }
}

/// Which clients CLIENT KILL closes.
#[derive(Debug, Clone, Default)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub local_addr: Option<String>,
    /// The id of the client issuing the command, when it must be spared (SKIPME yes, the default).
    pub skip_id: Option<u64>,
}

impl KillFilter {
    pub fn matches(&self, info: &ClientInfo) -> bool {
        if self.skip_id == Some(info.id) {
            return false;
        }
        self.id.is_none_or(|id| id == info.id)
            && self.addr.as_ref().is_none_or(|a| *a == info.addr.to_string())
            && self
                .local_addr
                .as_ref()
                .is_none_or(|a| *a == info.local_addr.to_string())
    }
}

/// Names (CLIENT SETNAME, lib-name) may not contain spaces, newlines or special characters.
pub fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}
