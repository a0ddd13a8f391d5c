//! The file operations a shard's log writer needs, and their io_uring implementation.
//!
//! [`LogFiles`] is the seam between the writer's logic (group commit, roll-over, failure rules)
//! and the disk: [`DmaLogFiles`] writes segments with glommio's DMA files (O_DIRECT, io_uring);
//! the tests drive the same writer over the engine's fault-injecting storage instead.
//!
//! Every write covers whole [`BLOCK`]-sized blocks at a block-aligned offset, as O_DIRECT demands.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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
    async fn create(&self, n: u64, size: u64) -> io::Result<()>;
    /// Writes `buf` at `offset` (both block-aligned) of segment `n`.
    async fn write(&self, n: u64, offset: u64, buf: Self::Buf) -> io::Result<()>;
    /// fdatasync of segment `n`.
    async fn sync(&self, n: u64) -> io::Result<()>;
    /// No more writes go to segment `n`: release its handle.
    async fn close(&self, n: u64) -> io::Result<()>;
    /// Deletes segment `n` (closed or never opened here) and syncs the directory.
    async fn remove(&self, n: u64) -> io::Result<()>;
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

/// Writes zeros over the first `size` bytes of `file`, a large block at a time.
async fn zero_fill(file: &DmaFile, size: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut at = 0;
    while at < size {
        let len = CHUNK.min(size - at);
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

    async fn create(&self, n: u64, size: u64) -> io::Result<()> {
        let path = self.dir.join(segment_file_name(n));
        let file = OpenOptions::new()
            .read(true)
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
            zero_fill(&file, size).await?;
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
