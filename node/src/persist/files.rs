//! The file operations a shard's log writer needs, and their io_uring implementation.
//!
//! [`LogFiles`] is the seam between the writer's logic (group commit, roll-over, failure rules)
//! and the disk: [`DmaLogFiles`] writes segments with glommio's DMA files (O_DIRECT, io_uring);
//! the tests drive the same writer over the engine's fault-injecting storage instead.
//!
//! Every write covers whole [`BLOCK`]-sized blocks at a block-aligned offset, as O_DIRECT demands.
//!
//! No I/O polling: glommio sends the O_DIRECT reads and writes of a file to its polled ring
//! (`IORING_SETUP_IOPOLL`) when a test read through that ring succeeds on the file's device, and
//! an executor with a polled request in flight cannot sleep: it spins until the request is done.
//! The test read succeeds on ordinary ext4 or xfs files even when the device has no polling queues
//! (`/sys/block/*/queue/io_poll` is 0 on most machines, and NVMe needs `poll_queues` set), so every
//! log write would cost its whole duration in CPU: measured on a 2-shard node, 750–790 µs of CPU per
//! `always` SET at one connection against 170–220 µs without (`benches/RESULTS.md`). Segments are
//! therefore opened write-only: glommio's test read fails on such a file, and it then serves every
//! file of that device on its executor from the interrupt-driven ring. The segment is the first
//! file a shard opens through glommio, which decides it for the shard's thread (glommio caches the
//! outcome per device and thread).

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use corekv_engine::log::dir_storage::segment_file_name;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

/// The O_DIRECT alignment every write and buffer honours (safe on every device we know of).
pub const BLOCK: u64 = 4096;

pub fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

pub fn align_down(n: u64) -> u64 {
    n / BLOCK * BLOCK
}

/// What the writer asks of the disk. Segments are named by number; the writer keeps at most two
/// open (the current one and a pre-allocated spare). Methods take `&self` so that a periodic
/// sync can be in flight while later records are written.
#[allow(async_fn_in_trait)] // single-threaded executor: the futures need not be Send
pub trait LogFiles {
    type Buf: AsMut<[u8]>;

    /// A zeroed buffer of `len` bytes (a multiple of [`BLOCK`]) suitable for [`LogFiles::write`].
    fn alloc(&self, len: usize) -> Self::Buf;
    /// Creates segment `n` and reserves `size` bytes for it, then syncs the directory. Its header
    /// block is written later (by [`LogFiles::write`] and [`LogFiles::sync`]) before any record.
    /// The reservation itself comes first (a full disk fails at once); writing the reserved bytes,
    /// if the implementation does, goes only as far as `pace` allows.
    async fn create(&self, n: u64, size: u64, pace: &FillPace) -> io::Result<()>;
    /// Writes `buf` at `offset` (both block-aligned) of segment `n`.
    async fn write(&self, n: u64, offset: u64, buf: Self::Buf) -> io::Result<()>;
    /// fdatasync of segment `n`.
    async fn sync(&self, n: u64) -> io::Result<()>;
    /// No more writes go to segment `n`: release its handle.
    async fn close(&self, n: u64) -> io::Result<()>;
    /// Deletes segment `n` (closed or never opened here) and syncs the directory.
    async fn remove(&self, n: u64) -> io::Result<()>;
}

/// How far the zero-fill of a segment being created may go: the writer raises the limit as it
/// appends to the current segment, so the zeros reach the disk spread over many syncs instead of
/// in one burst that every sync behind it would wait for.
#[derive(Debug)]
pub struct FillPace {
    allowed: Cell<u64>,
    waker: RefCell<Option<Waker>>,
}

impl FillPace {
    /// A pace that never holds the fill back.
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// A pace that lets the first `allowed` bytes go.
    pub fn new(allowed: u64) -> Self {
        FillPace {
            allowed: Cell::new(allowed),
            waker: RefCell::new(None),
        }
    }

    /// Lets the fill go up to `allowed` bytes (never lowers the limit).
    pub fn raise(&self, allowed: u64) {
        if allowed > self.allowed.get() {
            self.allowed.set(allowed);
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// How many bytes from the start may be written now.
    pub fn allowed(&self) -> u64 {
        self.allowed.get()
    }

    /// Resolves once the first `through` bytes may be written.
    pub async fn wait_for(&self, through: u64) {
        std::future::poll_fn(|cx| {
            if self.allowed.get() >= through {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Segments of one shard directory, through glommio's DMA files.
pub struct DmaLogFiles {
    dir: PathBuf,
    /// Open segments; never borrowed across an await (a file is cloned out first).
    open: RefCell<Vec<(u64, Rc<DmaFile>)>>,
}

impl DmaLogFiles {
    pub fn new(dir: &Path) -> Self {
        DmaLogFiles {
            dir: dir.to_owned(),
            open: RefCell::new(Vec::with_capacity(2)),
        }
    }

    fn file(&self, n: u64) -> io::Result<Rc<DmaFile>> {
        self.open
            .borrow()
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, f)| f.clone())
            .ok_or_else(|| io::Error::other(format!("segment {n} is not open")))
    }

    async fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir).await
    }
}

/// fsync of a directory through io_uring, so that files created, renamed or removed in it are
/// durable.
pub async fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = glommio::io::Directory::open(path).await.map_err(io::Error::from)?;
    dir.sync().await.map_err(io::Error::from)?;
    dir.close().await.map_err(io::Error::from)
}

/// Writes zeros over the first `size` bytes of `file`, as far as `pace` allows at a time: in
/// small pieces while it follows the log (each sync then carries a few KiB of zeros, not a burst),
/// in large ones when it is not held back.
async fn zero_fill(file: &DmaFile, size: u64, pace: &FillPace) -> io::Result<()> {
    const MIN_CHUNK: u64 = 32 << 10;
    const MAX_CHUNK: u64 = 1 << 20;
    let mut at = 0;
    while at < size {
        pace.wait_for(at + MIN_CHUNK.min(size - at)).await;
        let room = pace.allowed().saturating_sub(at).min(MAX_CHUNK);
        let len = if room >= size - at { size - at } else { align_down(room) };
        let mut buf = file.alloc_dma_buffer(align_up(len) as usize);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, at).await.map_err(io::Error::from)?;
        at += len;
    }
    Ok(())
}

impl LogFiles for DmaLogFiles {
    type Buf = DmaBuffer;

    fn alloc(&self, len: usize) -> DmaBuffer {
        debug_assert_eq!(len as u64 % BLOCK, 0);
        let mut buf = match self.open.borrow().first() {
            Some((_, f)) => f.alloc_dma_buffer(len),
            None => glommio::allocate_dma_buffer(len),
        };
        buf.as_bytes_mut().fill(0);
        buf
    }

    async fn create(&self, n: u64, size: u64, pace: &FillPace) -> io::Result<()> {
        let path = self.dir.join(segment_file_name(n));
        // Write-only on purpose, so that the segments' writes complete by interrupt and a shard
        // can sleep while they are in flight (module documentation, "No I/O polling").
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(io::Error::from)?;
        // Blocks allocated by an append would turn our asynchronous writes synchronous, and a
        // full disk should show up here, before any acknowledged write depends on the space.
        // The blocks are then written with zeros: a sync after writing into merely allocated
        // ("unwritten") blocks must also commit their conversion to the filesystem's journal,
        // which made each fdatasync several times slower here (see benches/RESULTS.md).
        let prepared = async {
            file.pre_allocate(size, false).await.map_err(io::Error::from)?;
            zero_fill(&file, size, pace).await?;
            file.fdatasync().await.map_err(io::Error::from)
        };
        if let Err(e) = prepared.await {
            let _ = file.close().await;
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.open.borrow_mut().push((n, Rc::new(file)));
        self.sync_dir().await
    }

    async fn write(&self, n: u64, offset: u64, buf: DmaBuffer) -> io::Result<()> {
        let len = buf.len();
        let written = self.file(n)?.write_at(buf, offset).await.map_err(io::Error::from)?;
        if written != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to segment {n}: {written} of {len} bytes at offset {offset}"),
            ));
        }
        Ok(())
    }

    async fn sync(&self, n: u64) -> io::Result<()> {
        self.file(n)?.fdatasync().await.map_err(io::Error::from)
    }

    async fn close(&self, n: u64) -> io::Result<()> {
        let position = self.open.borrow().iter().position(|(m, _)| *m == n);
        if let Some(i) = position {
            let (_, file) = self.open.borrow_mut().swap_remove(i);
            // A sync still in flight holds another reference; the last one closes the file.
            file.close_rc().await.map_err(io::Error::from)?;
        }
        Ok(())
    }

    async fn remove(&self, n: u64) -> io::Result<()> {
        self.close(n).await?;
        match std::fs::remove_file(self.dir.join(segment_file_name(n))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.sync_dir().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_fill_pace_holds_the_fill_until_raised_far_enough() {
        let pace = FillPace::new(4096);
        assert!(pace.wait_for(4096).now_or_never().is_some());
        let wait = pace.wait_for(8192);
        futures::pin_mut!(wait);
        assert!(wait.as_mut().now_or_never().is_none());
        pace.raise(8191);
        assert!(wait.as_mut().now_or_never().is_none());
        pace.raise(1);
        assert!(wait.as_mut().now_or_never().is_none(), "a limit is never lowered");
        pace.raise(8192);
        assert!(wait.as_mut().now_or_never().is_some());
        assert!(FillPace::unlimited().wait_for(u64::MAX).now_or_never().is_some());
    }
}
