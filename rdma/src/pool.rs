//! The data path: values moved by one-sided RDMA Read and Write between registered buffer pools.
//!
//! A [`BufferPool`] is one registered region carved by the [`buddy`](crate::buddy) allocator: the
//! local end of every transfer. A [`RemotePool`] carves the *peer's* pool, known from its
//! [`RegionDesc`] in the handshake, the same way, for a side that owns the placement of values in
//! the peer's memory (as a leader allocating in a shared pool does). [`post_write`] and
//! [`post_read`] post the transfers; [`wait_for`] parks until a given one completes.
//!
//! The data path runs on its own queue pair and completion queue, not the control channel's: one
//! queue pair's completions belong to one owner, and large transfers do not queue behind control
//! messages.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::buddy::{Block, BuddyAllocator, BuddyError};
use crate::handshake::RegionDesc;
use crate::provider::{
    check_range, CompletionQueue, MemoryRegion, QueuePair, RdmaError, RemoteAddr, SendOp, SendWr, Sge, WcStatus,
    WorkCompletion,
};

/// Errors from the data path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool's settings do not fit the region.
    #[error("pool of {region_len} bytes cannot hold blocks of {min_block} bytes")]
    BadGeometry {
        /// The region's length.
        region_len: usize,
        /// The minimum block asked for.
        min_block: usize,
    },
    /// From the allocator.
    #[error(transparent)]
    Buddy(#[from] BuddyError),
    /// From the provider.
    #[error(transparent)]
    Provider(#[from] RdmaError),
    /// The transfer failed.
    #[error("transfer {wr_id:#x} failed: {status:?}")]
    Failed {
        /// The work request.
        wr_id: u64,
        /// Its status.
        status: WcStatus,
    },
    /// A completion for another work request arrived while waiting (completions are in order, so
    /// the one waited for was never posted or was already taken).
    #[error("waiting for {expected:#x}, got a completion for {got:#x}")]
    Unexpected {
        /// The work request waited for.
        expected: u64,
        /// The one that completed.
        got: u64,
    },
    /// No completion in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
}

/// A buffer allocated from a pool: `len` bytes at the start of `block`.
#[derive(Debug, PartialEq, Eq)]
pub struct PoolBuf {
    block: Block,
    offset: usize,
    len: usize,
}

impl PoolBuf {
    /// Offset in the pool's region.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Length asked for.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether zero bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The buddy geometry for a region: the largest power-of-two number of `min_block`s it holds.
fn geometry(region_len: usize, min_block: usize) -> Result<BuddyAllocator, PoolError> {
    let bad = PoolError::BadGeometry { region_len, min_block };
    if !min_block.is_power_of_two() || region_len < min_block {
        return Err(bad);
    }
    let max_order = (region_len / min_block).ilog2();
    Ok(BuddyAllocator::new(min_block, max_order)?)
}

/// A registered region carved by a buddy allocator.
#[derive(Debug)]
pub struct BufferPool<M: MemoryRegion> {
    mr: M,
    alloc: BuddyAllocator,
}

impl<M: MemoryRegion> BufferPool<M> {
    /// A pool over `mr` (its first power-of-two multiple of `min_block` bytes).
    pub fn new(mr: M, min_block: usize) -> Result<Self, PoolError> {
        let alloc = geometry(mr.len(), min_block)?;
        Ok(Self { mr, alloc })
    }

    /// The region.
    pub fn mr(&self) -> &M {
        &self.mr
    }

    /// The allocator (for statistics).
    pub fn allocator(&self) -> &BuddyAllocator {
        &self.alloc
    }

    /// A buffer of `len` bytes, or `None` when no free block is large enough.
    pub fn alloc(&mut self, len: usize) -> Option<PoolBuf> {
        let block = self.alloc.alloc(len)?;
        Some(PoolBuf {
            block,
            offset: block.offset,
            len,
        })
    }

    /// Returns a buffer to the pool.
    pub fn free(&mut self, buf: PoolBuf) -> Result<(), PoolError> {
        Ok(self.alloc.free(buf.block)?)
    }

    /// Copies `data` into the buffer (at most its length).
    pub fn write(&self, buf: &PoolBuf, data: &[u8]) -> Result<(), PoolError> {
        check_range(0, data.len(), buf.len)?;
        Ok(self.mr.write_at(buf.offset, data)?)
    }

    /// Copies the first `out.len()` bytes of the buffer out.
    pub fn read(&self, buf: &PoolBuf, out: &mut [u8]) -> Result<(), PoolError> {
        check_range(0, out.len(), buf.len)?;
        Ok(self.mr.read_at(buf.offset, out)?)
    }

    /// The buffer as a local scatter/gather element.
    pub fn sge(&self, buf: &PoolBuf) -> Sge<'_, M> {
        Sge {
            mr: &self.mr,
            offset: buf.offset,
            len: buf.len,
        }
    }

    /// Where the peer finds the buffer.
    pub fn remote(&self, buf: &PoolBuf) -> RemoteAddr {
        self.mr.remote_at(buf.offset)
    }
}

/// A peer's pool, carved on this side.
#[derive(Debug)]
pub struct RemotePool {
    desc: RegionDesc,
    alloc: BuddyAllocator,
}

impl RemotePool {
    /// Carves the region `desc` (from the peer's handshake) in blocks of `min_block` bytes.
    pub fn new(desc: RegionDesc, min_block: usize) -> Result<Self, PoolError> {
        let len = usize::try_from(desc.len).unwrap_or(usize::MAX);
        let alloc = geometry(len, min_block)?;
        Ok(Self { desc, alloc })
    }

    /// A place for `len` bytes in the peer's pool, or `None` when it is full.
    pub fn alloc(&mut self, len: usize) -> Option<(PoolBuf, RemoteAddr)> {
        let block = self.alloc.alloc(len)?;
        let remote = RemoteAddr {
            addr: self.desc.addr + block.offset as u64,
            rkey: self.desc.rkey,
        };
        Some((
            PoolBuf {
                block,
                offset: block.offset,
                len,
            },
            remote,
        ))
    }

    /// Returns a place to the pool.
    pub fn free(&mut self, buf: PoolBuf) -> Result<(), PoolError> {
        Ok(self.alloc.free(buf.block)?)
    }
}

/// Posts an RDMA Write of the whole of `buf` to `remote` (signaled).
pub fn post_write<Q: QueuePair>(
    qp: &Q,
    pool: &BufferPool<Q::Mr>,
    buf: &PoolBuf,
    remote: RemoteAddr,
    wr_id: u64,
) -> Result<(), PoolError> {
    let wr = SendWr {
        wr_id,
        op: SendOp::RdmaWrite { remote },
        local: pool.sge(buf),
        signaled: true,
    };
    Ok(qp.post_send(&wr)?)
}

/// Posts an RDMA Read of `buf.len()` bytes at `remote` into `buf` (signaled).
pub fn post_read<Q: QueuePair>(
    qp: &Q,
    pool: &BufferPool<Q::Mr>,
    buf: &PoolBuf,
    remote: RemoteAddr,
    wr_id: u64,
) -> Result<(), PoolError> {
    let wr = SendWr {
        wr_id,
        op: SendOp::RdmaRead { remote },
        local: pool.sge(buf),
        signaled: true,
    };
    Ok(qp.post_send(&wr)?)
}

/// Parks until the completion of `wr_id` arrives on `cq` (the next completion, since a data queue
/// pair's transfers complete in order and are all signaled).
pub fn wait_for(cq: &impl CompletionQueue, wr_id: u64, timeout: Duration) -> Result<WorkCompletion, PoolError> {
    let deadline = Instant::now() + timeout;
    let mut wc = [WorkCompletion::EMPTY; 1];
    loop {
        if cq.poll(&mut wc)? == 1 {
            let wc = wc[0];
            if wc.wr_id != wr_id {
                return Err(PoolError::Unexpected {
                    expected: wr_id,
                    got: wc.wr_id,
                });
            }
            if !wc.status.is_success() {
                return Err(PoolError::Failed {
                    wr_id,
                    status: wc.status,
                });
            }
            return Ok(wc);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PoolError::Timeout(timeout));
        }
        cq.wait(deadline - now)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ProtectionDomain, QpCaps};
    use crate::soft::{SoftLink, SoftPd};

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn values_from_one_byte_to_four_mib_survive_write_and_read() {
        let pd = SoftPd::new();
        let connect = || {
            let cq = pd.create_cq(16).unwrap();
            let caps = QpCaps {
                max_send_wr: 8,
                max_recv_wr: 1,
            };
            let qp = pd.create_qp(&cq, &cq, caps).unwrap();
            qp.to_init().unwrap();
            (qp, cq, BufferPool::new(pd.register(16 << 20).unwrap(), 64).unwrap())
        };
        let ((qa, ca, mut pa), (qb, _cb, pb)) = (connect(), connect());
        let (la, lb) = SoftLink::pair();
        for (qp, link) in [(&qa, la), (&qb, lb)] {
            qp.to_rtr(link).unwrap();
            qp.to_rts().unwrap();
        }
        let mut remote = RemotePool::new(pb.mr().desc(), 64).unwrap();
        let sizes = [1, 2, 3, 4095, 4096, 4097, 64 << 10, (64 << 10) + 1, 1 << 20, 4 << 20];
        for (n, len) in sizes.into_iter().enumerate() {
            let value: Vec<u8> = (0..len).map(|i| (i * 31 + n * 7 + i / 251) as u8).collect();
            let (out, back) = (pa.alloc(len).unwrap(), pa.alloc(len).unwrap());
            let (place, addr) = remote.alloc(len).unwrap();
            pa.write(&out, &value).unwrap();
            post_write(&qa, &pa, &out, addr, 2 * n as u64).unwrap();
            wait_for(&ca, 2 * n as u64, WAIT).unwrap();
            let mut landed = vec![0u8; len];
            pb.mr().read_at(place.offset(), &mut landed).unwrap();
            assert!(landed == value, "write of {len} bytes");
            post_read(&qa, &pa, &back, addr, 2 * n as u64 + 1).unwrap();
            assert_eq!(wait_for(&ca, 2 * n as u64 + 1, WAIT).unwrap().byte_len as usize, len);
            let mut got = vec![0u8; len];
            pa.read(&back, &mut got).unwrap();
            assert!(got == value, "read of {len} bytes");
            pa.free(out).unwrap();
            pa.free(back).unwrap();
            remote.free(place).unwrap();
        }
        assert_eq!(pa.allocator().used_bytes(), 0);
    }

    #[test]
    fn pools_check_their_bounds() {
        let pd = SoftPd::new();
        assert!(matches!(
            BufferPool::new(pd.register(100).unwrap(), 128),
            Err(PoolError::BadGeometry { .. })
        ));
        // A 3 KiB region is used as its first 2 KiB.
        let mut pool = BufferPool::new(pd.register(3 << 10).unwrap(), 1024).unwrap();
        assert_eq!(pool.allocator().total_bytes(), 2048);
        let buf = pool.alloc(10).unwrap();
        assert!(pool.write(&buf, &[0; 11]).is_err(), "longer than the buffer");
        assert!(pool.read(&buf, &mut [0; 11]).is_err());
        assert!(pool.alloc(2048).is_none());
    }
}
