//! A shard's log writer: group commit, segment roll-over, and the rules for a failing disk.
//!
//! Commands append records to the journal of the shard's keyspace (in memory, as they run). One
//! writer task per shard takes everything pending in one go, writes it after the last record of
//! the current segment and, in `always` mode, syncs it, then wakes the connections waiting for
//! it. Records that arrive while a flush is in flight wait for the next flush, so one fdatasync
//! acknowledges every write that arrived during the previous one (group commit).
//!
//! ```text
//!  commands ─▶ journal (in keyspace) ─take─▶ [tail block | records | zeros] ─write_at─▶ segment
//!                                                                   fdatasync ─▶ durable_seq ─▶ wake waiters
//! ```
//!
//! The order on disk follows `engine/FORMAT.md`: a segment's header is synced before any record
//! goes into it; a segment is synced before the next one receives records; a failed write or
//! sync stops the log for good (after a failed fsync the kernel may have dropped the data while a
//! later fsync succeeds, so nothing is ever acknowledged again until a restart has recovered).
//! A full disk is seen early: the next segment's space is reserved as soon as the current one
//! starts, and if that fails the shard refuses new writes (`DiskFull`) while the records already
//! taken still fit in the current segment; it retries every second and resumes once the space is
//! there.
//!
//! Creating a segment means writing its whole size with zeros (see [`LogFiles::create`]), which
//! takes a good fraction of a second for 64 MiB on a slow disk. It runs in a task of its own,
//! started as soon as a segment becomes the current one, so the writes and syncs go on meanwhile.
//! Its zeros keep pace with the log ([`FillPace`]): for every byte appended to the current segment
//! it may write [`FILL_RATIO`] bytes of the next one, so it is done by the time the current segment
//! is half full, and each sync carries a share of the zeros proportional to the records it syncs
//! instead of some syncs waiting behind a burst of megabytes. A roll-over that comes before the
//! spare is ready lifts the pace and waits for it; a stop cancels it and removes the spare.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

use futures::FutureExt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use corekv_engine::log::format::{peek_record_len, SegmentHeader, SEGMENT_HEADER_LEN};

use super::files::{align_down, align_up, FillPace, LogFiles, BLOCK};
use crate::config::Durability;

/// Largest single write: a long backlog goes out in pieces of this size, so the staging buffer
/// stays small.
const MAX_WRITE: usize = 4 << 20;
/// How long after a failed attempt to create the next segment (disk full) the writer tries again.
const SPARE_RETRY: Duration = Duration::from_secs(1);
/// Bytes of zeros the next segment's creation may write per byte appended to the current segment.
const FILL_RATIO: u64 = 2;
/// Bytes of zeros the next segment's creation may write before the current segment grows.
const FILL_HEAD_START: u64 = 1 << 20;
/// Journal bytes beyond which writers wait for the log to catch up (backpressure).
pub const BACKLOG_LIMIT: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogState {
    Ok,
    /// The next segment could not be created for lack of space: new writes are refused.
    DiskFull,
    /// A write or sync failed: nothing is acknowledged any more until a restart.
    Failed,
}

impl LogState {
    pub fn name(self) -> &'static str {
        match self {
            LogState::Ok => "ok",
            LogState::DiskFull => "disk_full",
            LogState::Failed => "failed",
        }
    }
}

/// Why a wait for durability ended without it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the log of shard {shard} failed: {reason}")]
pub struct LogFailed {
    pub shard: u32,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct LogStats {
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub last_fsync: Option<Instant>,
    /// Records per sync, summed (records_synced / fsyncs is the group-commit factor).
    pub records_synced: u64,
    pub last_error: String,
}

/// Where the next record goes.
struct Position {
    segment: u64,
    /// Bytes of the segment holding data (header included).
    end: u64,
    /// Reserved size of the segment.
    size: u64,
    /// The bytes of the last, partly filled block (from `align_down(end)` to `end`), which every
    /// O_DIRECT write rewrites unchanged in front of the new records.
    tail: Vec<u8>,
    /// A pre-allocated next segment (number, size), header not written yet.
    spare: Option<(u64, u64)>,
    spare_failed_at: Option<Instant>,
}

/// The next segment, being created by a task of its own.
struct SpareJob {
    n: u64,
    size: u64,
    /// The current segment's end when the creation started (its pace counts from there).
    from_end: u64,
    pace: Rc<FillPace>,
    task: glommio::Task<std::io::Result<()>>,
}

/// One shard's log writer; see the module documentation.
pub struct LogWriter<F: LogFiles + 'static> {
    pub shard_id: u32,
    pub shard_count: u32,
    pub durability: Durability,
    pub fsync_interval: Duration,
    pub segment_size: u64,
    /// Shared with the task that creates the spare segment.
    files: Rc<F>,
    spare_job: RefCell<Option<SpareJob>>,
    /// Segments covered by a snapshot through this sequence are removed by the writer task.
    remove_through: Cell<Option<u64>>,
    pos: RefCell<Position>,
    state: Cell<LogState>,
    /// Every record with a sequence ≤ this is on disk and synced.
    durable_seq: Cell<u64>,
    /// Every record with a sequence ≤ this has been written (maybe not synced).
    written_seq: Cell<u64>,
    /// Segments on disk (number, first record sequence), oldest first; the last is the current one.
    segments: RefCell<Vec<(u64, u64)>>,
    roll_requested: Cell<bool>,
    stop_requested: Cell<bool>,
    stopped: Cell<bool>,
    kicked: Cell<bool>,
    writer_waker: RefCell<Option<Waker>>,
    waiters: RefCell<Vec<Waker>>,
    pub stats: RefCell<LogStats>,
    /// Told of every state change (the node mirrors it where other shards can see it).
    observer: RefCell<Option<StateObserver>>,
}

/// Receives the new state and, unless it is `Ok`, the reason.
pub type StateObserver = Box<dyn Fn(LogState, &str)>;

/// A sync running beside the writes: resolves to the last sequence it covers and its outcome.
type SyncFuture<'a> = Pin<Box<dyn Future<Output = (u64, std::io::Result<()>)> + 'a>>;

/// Takes every pending journal record into the buffer (cleared first) and returns the sequence of
/// the last record taken (or of the last record ever journaled when nothing was pending).
pub type TakePending<'a> = &'a dyn Fn(&mut Vec<u8>) -> u64;

impl<F: LogFiles + 'static> LogWriter<F> {
    /// Starts a log whose next segment is `next_segment` and whose next record gets `next_seq`.
    /// `existing` lists the segments already on disk (number, first sequence), oldest first. The
    /// first segment is created and its header synced before this returns.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        files: F,
        shard_id: u32,
        shard_count: u32,
        durability: Durability,
        fsync_interval: Duration,
        segment_size: u64,
        existing: Vec<(u64, u64)>,
        next_segment: u64,
        next_seq: u64,
    ) -> std::io::Result<Self> {
        assert!(segment_size >= 2 * BLOCK, "segment size below two blocks");
        files.create(next_segment, segment_size, &FillPace::unlimited()).await?;
        let writer = LogWriter {
            shard_id,
            shard_count,
            durability,
            fsync_interval,
            segment_size,
            files: Rc::new(files),
            spare_job: RefCell::new(None),
            remove_through: Cell::new(None),
            pos: RefCell::new(Position {
                segment: next_segment,
                end: 0,
                size: segment_size,
                tail: Vec::new(),
                spare: None,
                spare_failed_at: None,
            }),
            state: Cell::new(LogState::Ok),
            durable_seq: Cell::new(next_seq - 1),
            written_seq: Cell::new(next_seq - 1),
            segments: RefCell::new(existing),
            roll_requested: Cell::new(false),
            stop_requested: Cell::new(false),
            stopped: Cell::new(false),
            kicked: Cell::new(false),
            writer_waker: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            stats: RefCell::new(LogStats::default()),
            observer: RefCell::new(None),
        };
        writer.start_segment(next_segment, next_seq).await?;
        Ok(writer)
    }

    pub fn state(&self) -> LogState {
        self.state.get()
    }

    pub fn set_observer(&self, observer: StateObserver) {
        *self.observer.borrow_mut() = Some(observer);
    }

    fn set_state(&self, state: LogState) {
        self.state.set(state);
        if let Some(observer) = self.observer.borrow().as_ref() {
            observer(state, &self.stats.borrow().last_error);
        }
    }

    #[cfg(test)]
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.get()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.borrow().len()
    }

    #[cfg(test)]
    /// Segments on disk (number, first record sequence), oldest first.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        self.segments.borrow().clone()
    }

    /// Tells the writer task there may be records to take.
    pub fn kick(&self) {
        self.kicked.set(true);
        if let Some(waker) = self.writer_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Asks the writer to start a new segment at its next flush (compaction).
    pub fn request_roll(&self) {
        self.roll_requested.set(true);
        self.kick();
    }

    /// Resolves once every record with a sequence ≤ `seq` is durable, or fails if the log failed
    /// first.
    pub fn wait_durable(&self, seq: u64) -> WaitDurable<'_, F> {
        self.kick();
        WaitDurable { log: self, seq }
    }

    /// Resolves once the records up to `seq` have at least been written (backpressure).
    pub fn wait_written(&self, seq: u64) -> WaitWritten<'_, F> {
        self.kick();
        WaitWritten { log: self, seq }
    }

    fn wake_waiters(&self) {
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn fail(&self, what: &str, error: &std::io::Error) {
        let disk_full = error.kind() == std::io::ErrorKind::StorageFull;
        let reason = format!("{what}: {error}");
        tracing::error!(
            "shard {}: log {}; writes are refused from now on{}",
            self.shard_id,
            reason,
            if disk_full {
                " (disk full)"
            } else {
                " (restart the node once the disk is healthy: recovery keeps every acknowledged write)"
            }
        );
        self.stats.borrow_mut().last_error = reason;
        self.set_state(LogState::Failed);
        self.wake_waiters();
    }

    /// Writes the header of segment `n` (already created) and syncs it.
    async fn start_segment(&self, n: u64, first_seq: u64) -> std::io::Result<()> {
        let header = SegmentHeader {
            shard_id: self.shard_id,
            shard_count: self.shard_count,
            segment_seq: n,
            first_record_seq: first_seq,
        };
        let mut buf = self.files.alloc(SEGMENT_HEADER_LEN);
        header.encode(&mut buf.as_mut()[..SEGMENT_HEADER_LEN]);
        self.files.write(n, 0, buf).await?;
        self.files.sync(n).await?;
        let mut pos = self.pos.borrow_mut();
        pos.end = SEGMENT_HEADER_LEN as u64;
        pos.tail.clear();
        self.segments.borrow_mut().push((n, first_seq));
        Ok(())
    }

    /// Moves to the next segment; the next record written has sequence `first_seq`.
    /// `min_size` is the room the first record needs.
    async fn roll(&self, first_seq: u64, min_size: u64) -> std::io::Result<()> {
        let old = self.pos.borrow().segment;
        // The old segment must be complete on disk before a later one holds records. (Records of
        // the batch being written may be in it without `written_seq` showing them yet.)
        self.sync_current().await?;
        self.files.close(old).await?;
        self.finish_spare().await;
        let spare = self.pos.borrow().spare;
        let want = self.segment_size.max(align_up(SEGMENT_HEADER_LEN as u64 + min_size));
        let (n, size) = match spare {
            Some((n, size)) if size >= want => (n, size),
            Some((n, _)) => {
                self.files.remove(n).await?;
                self.files.create(n, want, &FillPace::unlimited()).await?;
                (n, want)
            }
            None => {
                self.files.create(old + 1, want, &FillPace::unlimited()).await?;
                (old + 1, want)
            }
        };
        {
            let mut pos = self.pos.borrow_mut();
            pos.segment = n;
            pos.size = size;
            pos.spare = None;
        }
        self.start_segment(n, first_seq).await
    }

    async fn sync_current(&self) -> std::io::Result<()> {
        let segment = self.pos.borrow().segment;
        // Only what was written before the sync began is covered by it.
        let through = self.written_seq.get();
        self.files.sync(segment).await?;
        self.mark_durable(through);
        Ok(())
    }

    fn mark_durable(&self, through: u64) {
        let before = self.durable_seq.get();
        let mut stats = self.stats.borrow_mut();
        stats.fsyncs += 1;
        stats.last_fsync = Some(Instant::now());
        if through > before {
            stats.records_synced += through - before;
            self.durable_seq.set(through);
        }
        drop(stats);
        self.wake_waiters();
    }

    /// Writes `data` (whole records) after the current segment's data, in pieces of at most
    /// [`MAX_WRITE`]. The caller made sure they fit.
    async fn write_records(&self, data: &[u8]) -> std::io::Result<()> {
        for piece in data.chunks(MAX_WRITE) {
            let (segment, offset, buf) = {
                let pos = self.pos.borrow();
                let start = align_down(pos.end);
                let tail = pos.tail.len();
                debug_assert_eq!(start + tail as u64, pos.end);
                let total = tail + piece.len();
                let mut buf = self.files.alloc(align_up(total as u64) as usize);
                let bytes = buf.as_mut();
                bytes[..tail].copy_from_slice(&pos.tail);
                bytes[tail..total].copy_from_slice(piece);
                (pos.segment, start, buf)
            };
            let mut buf = buf;
            let new_end = self.pos.borrow().end + piece.len() as u64;
            let new_tail = {
                let bytes = buf.as_mut();
                let keep = (new_end - align_down(new_end)) as usize;
                let at = (align_down(new_end) - offset) as usize;
                bytes[at..at + keep].to_vec()
            };
            let len = buf.as_mut().len() as u64;
            self.files.write(segment, offset, buf).await?;
            let mut pos = self.pos.borrow_mut();
            pos.end = new_end;
            pos.tail = new_tail;
            let mut stats = self.stats.borrow_mut();
            stats.bytes_written += len;
            drop((pos, stats));
            self.pace_spare();
        }
        Ok(())
    }

    /// Writes a batch of records (sequences `first_seq..`), rolling over where they do not fit.
    async fn append(&self, mut data: &[u8], mut next_seq: u64) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.roll_requested.replace(false) && self.pos.borrow().end > SEGMENT_HEADER_LEN as u64 {
                self.roll(next_seq, 0).await?;
            }
            let room = {
                let pos = self.pos.borrow();
                pos.size - pos.end
            };
            let (fit, records) = fitting(data, room);
            if records == 0 {
                let first = peek_record_len(data).unwrap_or(0) as u64;
                self.roll(next_seq, first).await?;
                continue;
            }
            self.write_records(&data[..fit]).await?;
            data = &data[fit..];
            next_seq += records;
        }
        Ok(())
    }

    /// Starts creating the next segment (or, after a failure, retries once [`SPARE_RETRY`] has
    /// passed); its space is reserved first, so a full disk is noticed while the current segment
    /// still has room for what was already accepted.
    fn start_spare(&self) {
        let (segment, end, has_spare, failed_at) = {
            let pos = self.pos.borrow();
            (pos.segment, pos.end, pos.spare.is_some(), pos.spare_failed_at)
        };
        if has_spare || self.spare_job.borrow().is_some() || failed_at.is_some_and(|t| t.elapsed() < SPARE_RETRY) {
            return;
        }
        let (n, size) = (segment + 1, self.segment_size);
        let pace = Rc::new(FillPace::new(FILL_HEAD_START));
        let (files, fill_pace) = (self.files.clone(), pace.clone());
        let task = glommio::spawn_local(async move { files.create(n, size, &fill_pace).await });
        *self.spare_job.borrow_mut() = Some(SpareJob {
            n,
            size,
            from_end: end,
            pace,
            task,
        });
    }

    /// Lets the spare's zero-fill follow what the current segment received.
    fn pace_spare(&self) {
        if let Some(job) = self.spare_job.borrow().as_ref() {
            let grown = self.pos.borrow().end.saturating_sub(job.from_end);
            job.pace.raise(FILL_HEAD_START + FILL_RATIO * grown);
        }
    }

    /// Polls the spare's creation, taking its outcome if it is over.
    fn poll_spare(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.spare_job.borrow_mut();
        let Some(job) = slot.as_mut() else {
            return Poll::Pending;
        };
        let Poll::Ready(result) = Pin::new(&mut job.task).poll(cx) else {
            return Poll::Pending;
        };
        let (n, size) = (job.n, job.size);
        *slot = None;
        drop(slot);
        self.spare_created(n, size, result);
        Poll::Ready(())
    }

    /// Waits for the spare's creation, if one is running (no longer paced), and takes its outcome.
    async fn finish_spare(&self) {
        let job = self.spare_job.borrow_mut().take();
        if let Some(job) = job {
            job.pace.raise(u64::MAX);
            let result = job.task.await;
            self.spare_created(job.n, job.size, result);
        }
    }

    /// At the end: stops the spare's creation and removes the spare, so that a stopped log leaves
    /// no segment without a header behind (recovery would report it as a torn creation).
    async fn discard_spare(&self) {
        let job = self.spare_job.borrow_mut().take();
        let mut unused = self.pos.borrow_mut().spare.take().map(|(n, _)| n);
        if let Some(job) = job {
            let _ = job.task.cancel().await;
            unused = Some(job.n);
        }
        if let Some(n) = unused {
            if let Err(e) = self.files.remove(n).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("shard {}: cannot remove the unused log segment {n}: {e}", self.shard_id);
                }
            }
        }
    }

    fn spare_created(&self, n: u64, size: u64, result: std::io::Result<()>) {
        let mut pos = self.pos.borrow_mut();
        match result {
            Ok(()) => {
                pos.spare = Some((n, size));
                pos.spare_failed_at = None;
                if self.state.get() == LogState::DiskFull {
                    tracing::info!("shard {}: log has room again; writes are accepted", self.shard_id);
                    self.set_state(LogState::Ok);
                }
            }
            Err(e) => {
                pos.spare_failed_at = Some(Instant::now());
                if self.state.get() == LogState::Ok {
                    tracing::error!(
                        "shard {}: cannot create the next log segment: {e}; writes are refused until there is room",
                        self.shard_id
                    );
                    self.stats.borrow_mut().last_error = format!("cannot create the next log segment: {e}");
                    self.set_state(LogState::DiskFull);
                }
            }
        }
    }

    /// The writer task: runs until [`LogWriter::stop`] (then everything taken is synced) or a
    /// failure.
    ///
    /// In `always` mode each turn writes and then syncs before taking more. In `periodic` mode a
    /// due sync runs beside the writes (records keep reaching the kernel while the disk syncs), so
    /// a killed process loses only what was not yet written, however slow the sync.
    pub async fn run(&self, take: TakePending<'_>) {
        let mut batch = Vec::new();
        let mut background: Option<SyncFuture<'_>> = None;
        loop {
            let stopping = self.stop_requested.get();
            // Takes the spare's outcome if its creation is over (the idle wait polls it for real).
            let _ = self.poll_spare(&mut Context::from_waker(futures::task::noop_waker_ref()));
            if let Some(done) = background.as_mut().and_then(|f| f.now_or_never()) {
                background = None;
                if let Err(e) = self.synced(done) {
                    self.fail("fdatasync failed", &e);
                    break;
                }
            }
            batch.clear();
            let last = take(&mut batch);
            if !batch.is_empty() {
                let first = last + 1 - count_records(&batch);
                if let Err(e) = self.append(&batch, first).await {
                    self.fail("write failed", &e);
                    break;
                }
                self.written_seq.set(last);
                self.wake_waiters();
            } else if self.roll_requested.get() && self.pos.borrow().end > SEGMENT_HEADER_LEN as u64 {
                self.roll_requested.set(false);
                if let Err(e) = self.roll(self.written_seq.get() + 1, 0).await {
                    self.fail("segment roll-over failed", &e);
                    break;
                }
            }
            let unsynced = self.written_seq.get() > self.durable_seq.get();
            if self.durability == Durability::Always || stopping {
                if let Some(pending) = background.take() {
                    if let Err(e) = self.synced(pending.await) {
                        self.fail("fdatasync failed", &e);
                        break;
                    }
                }
                if self.written_seq.get() > self.durable_seq.get() {
                    if let Err(e) = self.sync_current().await {
                        self.fail("fdatasync failed", &e);
                        break;
                    }
                }
            } else if unsynced && background.is_none() && self.periodic_sync_due() {
                let segment = self.pos.borrow().segment;
                let through = self.written_seq.get();
                let mut sync: SyncFuture<'_> = Box::pin(async move { (through, self.files.sync(segment).await) });
                // Polled once now, so it holds the segment's file before a roll-over closes it.
                match (&mut sync).now_or_never() {
                    Some(done) => {
                        if let Err(e) = self.synced(done) {
                            self.fail("fdatasync failed", &e);
                            break;
                        }
                    }
                    None => background = Some(sync),
                }
            }
            if stopping && batch.is_empty() {
                // Nothing was pending when this turn began, and everything written is synced.
                break;
            }
            if let Some(through) = self.remove_through.take() {
                if let Err(e) = self.remove_covered(through).await {
                    tracing::warn!(
                        "shard {}: cannot remove log segments covered by a snapshot: {e}",
                        self.shard_id
                    );
                }
            }
            self.start_spare();
            if !stopping {
                if let Some(done) = self.idle(&mut background).await {
                    background = None;
                    if let Err(e) = self.synced(done) {
                        self.fail("fdatasync failed", &e);
                        break;
                    }
                }
            }
        }
        self.discard_spare().await;
        self.stopped.set(true);
        self.wake_waiters();
    }

    fn periodic_sync_due(&self) -> bool {
        self.stats
            .borrow()
            .last_fsync
            .is_none_or(|t| t.elapsed() >= self.fsync_interval)
    }

    /// Records the outcome of a background sync that covered the records up to `through`.
    fn synced(&self, (through, result): (u64, std::io::Result<()>)) -> std::io::Result<()> {
        result?;
        self.mark_durable(through);
        Ok(())
    }

    /// Waits for a kick, for the periodic sync to fall due while data is unsynced, or for the
    /// background sync to finish (whose outcome it returns).
    async fn idle(&self, background: &mut Option<SyncFuture<'_>>) -> Option<(u64, std::io::Result<()>)> {
        let unsynced = self.written_seq.get() > self.durable_seq.get();
        let timeout = if unsynced && background.is_none() && self.durability != Durability::Always {
            let since = self
                .stats
                .borrow()
                .last_fsync
                .map_or(self.fsync_interval, |t| t.elapsed());
            Some(self.fsync_interval.saturating_sub(since))
        } else {
            None
        };
        // While the disk is full nothing is written, so nothing kicks the writer: it wakes by
        // itself to try the spare again.
        let retry = if self.spare_job.borrow().is_none() {
            let failed_at = self.pos.borrow().spare_failed_at;
            failed_at.map(|t| SPARE_RETRY.saturating_sub(t.elapsed()))
        } else {
            None
        };
        let timeout = match (timeout, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let kicked = Kicked { log: self };
        let spare = std::future::poll_fn(|cx| self.poll_spare(cx));
        let kicked = futures::future::select(kicked, spare);
        let sleep = async {
            match timeout {
                Some(d) => glommio::timer::sleep(d).await,
                None => futures::future::pending().await,
            }
        };
        let sync = async {
            match background.as_mut() {
                Some(f) => Some(f.await),
                None => futures::future::pending().await,
            }
        };
        futures::pin_mut!(sleep, sync);
        let wake = futures::future::select(kicked, sleep);
        match futures::future::select(wake, sync).await {
            futures::future::Either::Left(_) => None,
            futures::future::Either::Right((done, _)) => done,
        }
    }

    /// Asks the writer task to write and sync everything pending and stop; resolves when it has.
    pub async fn stop(&self) {
        self.stop_requested.set(true);
        self.kick();
        Stopped { log: self }.await
    }

    /// Asks the writer task to remove the segments a snapshot through `through_seq` covers.
    pub fn request_removal(&self, through_seq: u64) {
        self.remove_through.set(Some(through_seq));
        self.kick();
    }

    /// Removes segments entirely covered by a snapshot through `through_seq`: those whose
    /// successor starts at or before `through_seq + 1`. Never the current segment.
    async fn remove_covered(&self, through_seq: u64) -> std::io::Result<usize> {
        let covered: Vec<u64> = {
            let segments = self.segments.borrow();
            segments
                .windows(2)
                .filter(|w| w[1].1 <= through_seq + 1)
                .map(|w| w[0].0)
                .collect()
        };
        for &n in &covered {
            self.files.remove(n).await?;
            self.segments.borrow_mut().retain(|(m, _)| *m != n);
        }
        Ok(covered.len())
    }
}

/// Number of whole records in `data`.
fn count_records(data: &[u8]) -> u64 {
    let mut at = 0;
    let mut n = 0;
    while at < data.len() {
        let len = peek_record_len(&data[at..]).expect("journal holds whole records") as usize;
        at += len;
        n += 1;
    }
    n
}

/// The longest prefix of whole records of `data` that fits in `room` bytes: (bytes, records).
fn fitting(data: &[u8], room: u64) -> (usize, u64) {
    let mut at = 0usize;
    let mut n = 0;
    while at < data.len() {
        let len = peek_record_len(&data[at..]).expect("journal holds whole records") as usize;
        if (at + len) as u64 > room {
            break;
        }
        at += len;
        n += 1;
    }
    (at, n)
}

struct Kicked<'a, F: LogFiles + 'static> {
    log: &'a LogWriter<F>,
}

impl<F: LogFiles + 'static> Future for Kicked<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.log.kicked.replace(false) || self.log.stop_requested.get() {
            return Poll::Ready(());
        }
        *self.log.writer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Stopped<'a, F: LogFiles + 'static> {
    log: &'a LogWriter<F>,
}

impl<F: LogFiles + 'static> Future for Stopped<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.log.stopped.get() {
            return Poll::Ready(());
        }
        self.log.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

pub struct WaitDurable<'a, F: LogFiles + 'static> {
    log: &'a LogWriter<F>,
    seq: u64,
}

impl<F: LogFiles + 'static> Future for WaitDurable<'_, F> {
    type Output = Result<(), LogFailed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let log = self.log;
        if log.durable_seq.get() >= self.seq {
            return Poll::Ready(Ok(()));
        }
        if log.state.get() == LogState::Failed || log.stopped.get() {
            return Poll::Ready(Err(LogFailed {
                shard: log.shard_id,
                reason: log.stats.borrow().last_error.clone(),
            }));
        }
        log.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

pub struct WaitWritten<'a, F: LogFiles + 'static> {
    log: &'a LogWriter<F>,
    seq: u64,
}

impl<F: LogFiles + 'static> Future for WaitWritten<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let log = self.log;
        if log.written_seq.get() >= self.seq || log.state.get() == LogState::Failed || log.stopped.get() {
            return Poll::Ready(());
        }
        log.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    //! The writer over the engine's fault-injecting storage: what is acknowledged survives a
    //! crash, and a failing disk is never papered over.

    use std::cell::RefCell;
    use std::rc::Rc;

    use corekv_engine::log::format::RecordType;
    use corekv_engine::log::journal::Journal;
    use corekv_engine::log::recovery::{recover_shard, RecoveryOptions, ReplayOp};
    use corekv_engine::log::storage::{FaultyStorage, SegmentStorage, StorageError};

    use super::*;

    /// [`LogFiles`] over a shared [`FaultyStorage`]; pre-allocation writes zeros, so a capacity
    /// limit makes segment creation fail with ENOSPC as on a real disk. While `hold_creates` is
    /// set, creating a segment does not finish (a slow disk zero-filling it).
    struct FaultyFiles {
        storage: Rc<RefCell<FaultyStorage>>,
        hold_creates: Rc<Cell<bool>>,
    }

    fn io(e: StorageError) -> std::io::Error {
        match e {
            StorageError::NoSpace(_) => std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()),
            other => std::io::Error::other(other.to_string()),
        }
    }

    impl LogFiles for FaultyFiles {
        type Buf = Vec<u8>;
        fn alloc(&self, len: usize) -> Vec<u8> {
            vec![0; len]
        }
        async fn create(&self, n: u64, size: u64, _pace: &FillPace) -> std::io::Result<()> {
            while self.hold_creates.get() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let mut s = self.storage.borrow_mut();
            s.create(n).map_err(io)?;
            if let Err(e) = s.write_at(n, 0, &vec![0; size as usize]) {
                let _ = s.remove(n);
                return Err(io(e));
            }
            Ok(())
        }
        async fn write(&self, n: u64, offset: u64, buf: Vec<u8>) -> std::io::Result<()> {
            self.storage.borrow_mut().write_at(n, offset, &buf).map_err(io)
        }
        async fn sync(&self, n: u64) -> std::io::Result<()> {
            self.storage.borrow_mut().sync(n).map_err(io)
        }
        async fn close(&self, _n: u64) -> std::io::Result<()> {
            Ok(())
        }
        async fn remove(&self, n: u64) -> std::io::Result<()> {
            self.storage.borrow_mut().remove(n).map_err(io)
        }
    }

    const SEGMENT: u64 = 64 * 1024;

    fn run_test(test: impl std::future::Future<Output = ()>) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(test);
    }

    struct Harness {
        storage: Rc<RefCell<FaultyStorage>>,
        hold_creates: Rc<Cell<bool>>,
        journal: Rc<RefCell<Journal>>,
        log: Rc<LogWriter<FaultyFiles>>,
    }

    async fn harness(durability: Durability, storage: FaultyStorage) -> Harness {
        harness_with(durability, storage, false).await
    }

    /// With `hold_creates`, every segment creation after the first stalls until it is cleared.
    async fn harness_with(durability: Durability, storage: FaultyStorage, hold_creates: bool) -> Harness {
        let storage = Rc::new(RefCell::new(storage));
        let hold = hold_creates;
        let hold_creates = Rc::new(Cell::new(false));
        let files = FaultyFiles {
            storage: storage.clone(),
            hold_creates: hold_creates.clone(),
        };
        let log = LogWriter::open(
            files,
            0,
            1,
            durability,
            Duration::from_millis(50),
            SEGMENT,
            Vec::new(),
            1,
            1,
        )
        .await
        .expect("open log");
        hold_creates.set(hold);
        let log = Rc::new(log);
        let journal = Rc::new(RefCell::new(Journal::new(1)));
        let (writer_log, writer_journal) = (log.clone(), journal.clone());
        glommio::spawn_local(async move {
            let take = |buf: &mut Vec<u8>| {
                let mut j = writer_journal.borrow_mut();
                j.take_pending(buf);
                j.last_seq()
            };
            writer_log.run(&take).await;
        })
        .detach();
        Harness {
            storage,
            hold_creates,
            journal,
            log,
        }
    }

    impl Harness {
        /// Journals a Set of `key` with a value of `len` bytes; returns its sequence.
        fn set(&self, key: &str, len: usize) -> u64 {
            let mut j = self.journal.borrow_mut();
            j.append(RecordType::Set, 0, key.as_bytes(), &vec![b'v'; len], 0);
            j.last_seq()
        }

        /// The keys a crash and a recovery leave, in log order.
        fn keys_after_crash(&self) -> Vec<String> {
            let mut storage = self.storage.borrow_mut();
            storage.crash();
            let mut keys = Vec::new();
            let opts = RecoveryOptions {
                shard_id: 0,
                shard_count: 1,
                repair: false,
                read_only: false,
            };
            recover_shard(&mut *storage, &opts, &mut |_| {}, &mut |op| {
                if let ReplayOp::Set { key, .. } = op {
                    keys.push(String::from_utf8_lossy(key).into_owned());
                }
                Ok(())
            })
            .expect("recovery");
            keys
        }
    }

    #[test]
    fn group_commit_acknowledges_durable_writes_across_segments() {
        run_test(async {
            let h = harness(Durability::Always, FaultyStorage::new()).await;
            let mut acked = Vec::new();
            for round in 0..20 {
                // Ten writers arrive together: they share the flushes that follow.
                let seqs: Vec<(String, u64)> = (0..10)
                    .map(|i| {
                        let key = format!("k{round}-{i}");
                        let seq = h.set(&key, 1500);
                        (key, seq)
                    })
                    .collect();
                let waits = seqs.iter().map(|(_, seq)| h.log.wait_durable(*seq));
                for result in futures::future::join_all(waits).await {
                    result.expect("durable");
                }
                acked.extend(seqs.into_iter().map(|(k, _)| k));
            }
            let stats = h.log.stats.borrow().clone();
            assert!(stats.fsyncs < 200, "one sync per write: {stats:?}");
            assert!(
                h.log.segments().len() > 3,
                "200 records of 1.5 KB must roll 64 KiB segments"
            );
            assert_eq!(h.log.durable_seq(), 200);
            assert_eq!(
                h.keys_after_crash(),
                acked,
                "every acknowledged write survives, in order"
            );
        });
    }

    #[test]
    fn a_failed_write_is_never_acknowledged_and_stops_the_log() {
        run_test(async {
            let h = harness(Durability::Always, FaultyStorage::new()).await;
            let first = h.set("before", 10);
            h.log.wait_durable(first).await.expect("durable");
            h.storage.borrow_mut().fail_next_write();
            let lost = h.set("lost", 10);
            let err = h.log.wait_durable(lost).await.expect_err("the write failed");
            assert!(err.reason.contains("write failed"), "{err}");
            assert_eq!(h.log.state(), LogState::Failed);
            // Nothing is acknowledged afterwards either.
            let later = h.set("later", 10);
            assert!(h.log.wait_durable(later).await.is_err());
            assert_eq!(h.keys_after_crash(), vec!["before".to_string()]);
        });
    }

    #[test]
    fn a_failed_fsync_is_never_retried_as_if_it_had_worked() {
        run_test(async {
            let h = harness(Durability::Always, FaultyStorage::new()).await;
            let first = h.set("before", 10);
            h.log.wait_durable(first).await.expect("durable");
            let syncs = h.log.stats.borrow().fsyncs;
            h.storage.borrow_mut().fail_next_sync();
            let lost = h.set("lost", 10);
            let err = h.log.wait_durable(lost).await.expect_err("the sync failed");
            assert!(err.reason.contains("fdatasync failed"), "{err}");
            let later = h.set("later", 10);
            assert!(h.log.wait_durable(later).await.is_err());
            assert_eq!(h.log.stats.borrow().fsyncs, syncs, "no sync counted after the failure");
            assert_eq!(
                h.storage.borrow().failed_syncs().len(),
                1,
                "no second sync was attempted"
            );
            assert_eq!(h.keys_after_crash(), vec!["before".to_string()]);
        });
    }

    /// A log on a disk with room for its first segment only (the spare cannot be pre-allocated),
    /// written to until it leaves `Ok`; returns it with the keys acknowledged so far.
    async fn log_on_a_full_disk() -> (Harness, Vec<String>) {
        let mut storage = FaultyStorage::new();
        storage.set_capacity(Some(SEGMENT + SEGMENT / 2));
        let h = harness(Durability::Always, storage).await;
        let mut acked = Vec::new();
        while h.log.state() == LogState::Ok {
            let key = format!("k{}", acked.len());
            let seq = h.set(&key, 1000);
            durable_soon(&h.log, seq, "durable while there is room").await;
            acked.push(key);
            assert!(acked.len() < 100, "the spare segment never failed");
        }
        (h, acked)
    }

    #[test]
    fn a_full_disk_refuses_new_writes_keeps_acknowledged_ones_and_recovers() {
        run_test(async {
            let (h, mut acked) = log_on_a_full_disk().await;
            let mut n = acked.len();
            assert_eq!(h.log.state(), LogState::DiskFull);
            assert!(
                h.log.stats.borrow().last_error.contains("no space"),
                "{:?}",
                h.log.stats.borrow()
            );
            // Space comes back: the writer notices on its next attempt and accepts writes again.
            h.storage.borrow_mut().set_capacity(None);
            let deadline = Instant::now() + Duration::from_secs(10);
            while h.log.state() != LogState::Ok {
                assert!(Instant::now() < deadline, "writer never left DiskFull");
                let key = format!("k{n}");
                let seq = h.set(&key, 10);
                h.log
                    .wait_durable(seq)
                    .await
                    .expect("still durable: the current segment had room");
                acked.push(key);
                n += 1;
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(h.keys_after_crash(), acked);
        });
    }

    /// `wait_durable`, failing the test instead of hanging it.
    async fn durable_soon(log: &LogWriter<FaultyFiles>, seq: u64, what: &str) {
        let wait = log.wait_durable(seq);
        let timeout = glommio::timer::sleep(Duration::from_secs(10));
        futures::pin_mut!(wait, timeout);
        match futures::future::select(wait, timeout).await {
            futures::future::Either::Left((result, _)) => result.expect(what),
            futures::future::Either::Right(_) => panic!("{what}: not durable after 10 s"),
        }
    }

    #[test]
    fn writes_go_on_while_the_next_segment_is_created_and_a_roll_over_waits_for_it() {
        run_test(async {
            // The spare's creation starts with segment 1 and stalls until told to go on.
            let h = harness_with(Durability::Always, FaultyStorage::new(), true).await;
            let mut acked = Vec::new();
            for n in 0..40 {
                let key = format!("k{n}");
                let seq = h.set(&key, 1000);
                durable_soon(&h.log, seq, "durable while the spare is being created").await;
                acked.push(key);
            }
            assert!(h.log.spare_job.borrow().is_some(), "the spare's creation never started");
            assert_eq!(h.log.segment_count(), 1, "{:?}", h.log.segments());
            // Past the end of segment 1: the roll-over waits for the spare, then carries on.
            let key = "big".to_string();
            let seq = h.set(&key, 40_000);
            h.log.kick();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert!(
                h.log.durable_seq() < seq,
                "written past a segment that does not exist yet"
            );
            h.hold_creates.set(false);
            durable_soon(&h.log, seq, "durable once the spare exists").await;
            acked.push(key);
            assert_eq!(h.log.segments().len(), 2, "{:?}", h.log.segments());
            assert_eq!(h.keys_after_crash(), acked);
        });
    }

    #[test]
    fn a_full_disk_is_retried_without_new_writes() {
        run_test(async {
            let (h, _) = log_on_a_full_disk().await;
            assert_eq!(h.log.state(), LogState::DiskFull);
            // A full node refuses writes, so nothing kicks the writer: it must try again itself.
            h.storage.borrow_mut().set_capacity(None);
            let deadline = Instant::now() + Duration::from_secs(10);
            while h.log.state() != LogState::Ok {
                assert!(Instant::now() < deadline, "writer never left DiskFull by itself");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    #[test]
    fn periodic_mode_syncs_within_the_interval_and_on_stop() {
        run_test(async {
            let h = harness(Durability::Periodic, FaultyStorage::new()).await;
            let seq = h.set("a", 10);
            h.log.kick();
            let deadline = Instant::now() + Duration::from_secs(10);
            while h.log.durable_seq() < seq {
                assert!(Instant::now() < deadline, "periodic sync never happened");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            let last = h.set("b", 10);
            h.log.stop().await;
            assert_eq!(h.log.durable_seq(), last, "stop syncs everything taken");
            assert_eq!(
                h.storage.borrow().list().expect("list"),
                vec![1],
                "a stopped log leaves no spare segment behind"
            );
            assert_eq!(h.keys_after_crash(), vec!["a".to_string(), "b".to_string()]);
        });
    }
}
