//! Routing: the topology a node announces, and which shard (so which connection) each key goes to.

use crate::native::{Response, Topology, HASH_COREKV_V1};
use crate::routing::key_shard;

use super::error::ClientError;

/// A validated topology: shard `i` is served at `endpoints()[i]`, keys are mapped with
/// [`crate::routing::key_shard`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    topology: Topology,
    endpoints: Vec<String>,
}

impl Router {
    /// Accepts a topology whose routing hash this client implements ([`HASH_COREKV_V1`]).
    pub fn new(topology: Topology) -> Result<Router, ClientError> {
        if topology.hash_id() != HASH_COREKV_V1 {
            return Err(ClientError::Topology(format!(
                "unsupported routing hash id {} (this client implements {HASH_COREKV_V1})",
                topology.hash_id()
            )));
        }
        let endpoints: Vec<String> = topology.endpoints().map(str::to_owned).collect();
        // Topology::parse validated the section, so every endpoint is there.
        if endpoints.len() != topology.shard_count() as usize || endpoints.is_empty() {
            return Err(ClientError::Topology(
                "endpoint list does not match the shard count".into(),
            ));
        }
        Ok(Router { topology, endpoints })
    }

    /// Accepts the response to a TOPOLOGY request.
    pub fn from_response(response: Response) -> Result<Router, ClientError> {
        match response {
            Response::Topology(topology) => Router::new(topology),
            Response::Error { code, message } => Err(ClientError::Server {
                code,
                message: String::from_utf8_lossy(&message).into_owned(),
            }),
            other => Err(ClientError::UnexpectedResponse {
                request: crate::native::Opcode::Topology,
                response: other.opcode(),
            }),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn shard_count(&self) -> u32 {
        self.topology.shard_count()
    }

    /// The endpoints, shard 0 first.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> u32 {
        key_shard(key, self.shard_count())
    }

    /// Groups keys by shard, for one batch frame per shard: `(shard, indices into keys)`, shards
    /// ascending, each shard's indices in the caller's order. A caller puts the per-shard results
    /// back with the indices.
    pub fn split<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<(u32, Vec<u32>)> {
        self.group(keys.iter().enumerate().map(|(index, key)| (index as u32, key.as_ref())))
    }

    /// [`Router::split`] of `(index, key)` pairs.
    pub fn group<'k>(&self, keys: impl IntoIterator<Item = (u32, &'k [u8])>) -> Vec<(u32, Vec<u32>)> {
        let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
        for (index, key) in keys {
            let shard = self.shard_of(key);
            match groups.binary_search_by_key(&shard, |(s, _)| *s) {
                Ok(at) => groups[at].1.push(index),
                Err(at) => groups.insert(at, (shard, vec![index])),
            }
        }
        groups
    }
}
