//! The run journal: an append-only log of every run's events, the durable home of checkpoints.
//!
//! A checkpoint is not a separate snapshot: it is the `node_finished` event, which names the
//! items the node produced (references, not copies) and its usage. A run's state is the fold of
//! its events (see [`crate::state`]), so resuming after a crash replays the journal.
//!
//! Appends are framed into an in-memory buffer under a short lock. A synced append then makes
//! everything buffered so far durable: the first caller to get the file lock (the leader)
//! takes the whole buffer, writes it and `fdatasync`s once; callers whose records that sync
//! covered return without syncing (group commit). Alone, a checkpoint costs one write and one
//! sync on the caller's thread, with no hand-off to another thread. Under load, callers that
//! find a sync in progress do not block their thread on the file lock: they wait
//! asynchronously for the leader's notification and, if their record came too late for that
//! sync, one of them leads the next. So at most one executor thread is ever blocked in a sync,
//! and the other keeps running nodes. Records that need no durability of their own (a node
//! started, a context routed) wait in the buffer for the next synced record, which makes them
//! durable in order.
//!
//! A sync costs the machine about 70 µs of CPU (in the kernel) whatever it covers. When many
//! runs are active (at least [`Journal::set_commit_siblings`] others) and checkpoints arrive
//! faster than two per [`Journal::set_commit_delay`] (CPU-bound), a would-be leader first
//! waits that long for company, so several checkpoints share one sync (PostgreSQL's
//! `commit_delay` and `commit_siblings`); the callers that append meanwhile wait for its sync.
//! A lone checkpoint, a trickle of them, or a few runs (whose waiting would idle the cores
//! rather than let others work) are never delayed.
//!
//! The file is preallocated in chunks of written zeros ([`CHUNK`]), and records overwrite the
//! zeros in place. An `fdatasync` of an append that grows the file must also commit the new
//! size through the file system's journal; an overwrite inside allocated blocks flushes only
//! the data, so a checkpoint's sync costs about the same whatever its size. The zeros also
//! mark the end: a frame never starts with a zero length.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is one JSON
//! object, zstd-compressed when it is large (routing manifests): a checkpoint's sync costs
//! about the bytes it flushes, and manifests shrink several times. On open, a torn or
//! corrupt tail (a crash mid-append) is cut off; everything before it is intact.
//!
//! The trade-off: one file for all runs keeps appends sequential and syncs shared, at the cost
//! of a scan on open. Compaction of finished runs is future work.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::event::Event;

const FILE_NAME: &str = "journal.log";
const HEADER: usize = 8;
/// Largest record accepted on read; a larger length field is corruption.
const MAX_RECORD: usize = 256 << 20;
/// Payloads from this size are zstd-compressed.
const COMPRESS_FROM: usize = 1024;
/// The zstd frame magic number (a JSON payload starts with `{`).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Buffered bytes from which an unsynced append writes the buffer out itself.
const FLUSH_AT: usize = 1 << 20;
/// The file grows by this many bytes of written zeros at a time.
pub const CHUNK: u64 = 4 << 20;
/// How long a busy leader waits for other checkpoints before syncing, by default.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
/// Other active runs from which a leader waits for company, by default. Measured with
/// `agentd bench runtime` on 2 cores: waiting cost 10 active runs 9-40% of their durable
/// throughput, and gained 30 and 100 runs up to 20%.
pub const DEFAULT_COMMIT_SIBLINGS: usize = 16;
/// How long after its commit delay callers still wait for a gathering leader's sync. tokio's
/// timers tick in milliseconds, so the leader's sleep ends up to about a millisecond late;
/// past the slack its task is waiting for its executor (busy with other tasks, such as a burst
/// of requests), and a caller syncs without it instead of waiting as long.
const GATHER_SLACK: Duration = Duration::from_millis(2);

/// How run state is persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every checkpoint is fsynced before the run moves on (the default): a finished node
    /// survives power loss.
    #[default]
    Durable,
    /// Written to the OS, not synced: survives a killed process, not power loss.
    Buffered,
    /// Nothing persisted: runs cannot resume.
    Off,
}

/// Errors of the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or syncing the journal failed (a full disk, a missing folder...).
    #[error("run journal {path}: {message}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// An earlier write failed; nothing more is accepted (restart to recover what is on disk).
    #[error("run journal {path} is closed after an earlier write failure: {message}")]
    Poisoned {
        /// The journal file.
        path: PathBuf,
        /// The first failure.
        message: String,
    },
}

/// Records appended but not yet written.
struct Pending {
    buf: Vec<u8>,
    /// Number of records appended so far.
    appended: u64,
    /// Where the next appended record will be in the file: records are written in the order
    /// they are appended, each right after the previous one.
    next_offset: u64,
}

/// The file and the leader's state.
struct Writer {
    file: File,
    /// Where the next record goes (the end of the intact records).
    end: u64,
    /// The file's length: zeros from `end` to here.
    allocated: u64,
    /// A spare buffer, swapped with the pending one to keep both allocations.
    spare: Vec<u8>,
    /// The first write failure, after which nothing more is written.
    failure: Option<String>,
}

/// What the journal's syncs have cost so far (see [`Journal::sync_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Synced writes (each one `fdatasync`, covering every record buffered before it).
    pub syncs: u64,
    /// Time spent in them, writing included.
    pub time: std::time::Duration,
}

/// The append-only run journal. Share it behind an `Arc`.
pub struct Journal {
    path: PathBuf,
    durability: Durability,
    /// A read-only handle for [`Journal::read_at`] (positioned reads need no lock).
    reader: File,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    /// Records known to be written (and synced, when durable).
    durable: AtomicU64,
    /// The end of the records written to the file so far (see [`Journal::written_end`]).
    written_end: AtomicU64,
    /// Wakes callers waiting for a leader's sync.
    synced: Notify,
    /// Synced appends in progress (a leader alone does not hand its thread's tasks over).
    syncing: AtomicUsize,
    /// Synced writes so far, and nanoseconds spent in them.
    syncs: AtomicU64,
    sync_ns: AtomicU64,
    /// How long a busy leader waits for company before syncing (zero: never).
    commit_delay_ns: AtomicU64,
    /// Other active runs from which a leader waits for company.
    commit_siblings: AtomicUsize,
    /// While a leader waits out the commit delay: when the callers waiting for its sync stop
    /// trusting it (ns since `epoch`, see [`GATHER_SLACK`]); 0: no leader is gathering.
    gathering_until_ns: AtomicU64,
    /// When the last synced append arrived (ns since `epoch`), and a moving average of the
    /// intervals between them.
    last_arrival_ns: AtomicU64,
    arrival_interval_ns: AtomicU64,
    epoch: std::time::Instant,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and returns it with every intact event and its
    /// record's offset (for [`Journal::read_at`]), in append order. A torn tail is truncated.
    pub fn open(
        dir: &Path,
        durability: Durability,
    ) -> Result<(Journal, Vec<(Event, u64)>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |what: &str, e: std::io::Error| JournalError::Io {
            path: path.clone(),
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
        let (events, good) = decode_all(&bytes);
        let mut allocated = bytes.len() as u64;
        if bytes[good..].iter().any(|&b| b != 0) {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - good,
                "run journal had a torn tail (a crash mid-append); cutting it off"
            );
            file.set_len(good as u64)
                .map_err(|e| io("truncating a torn tail", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            allocated = good as u64;
        }
        drop(bytes);
        let reader = File::open(&path).map_err(|e| io("opening for reading", e))?;
        Ok((
            Journal {
                path,
                durability,
                reader,
                pending: Mutex::new(Pending {
                    buf: Vec::with_capacity(64 << 10),
                    appended: 0,
                    next_offset: good as u64,
                }),
                writer: Mutex::new(Writer {
                    file,
                    end: good as u64,
                    allocated,
                    spare: Vec::with_capacity(64 << 10),
                    failure: None,
                }),
                durable: AtomicU64::new(0),
                written_end: AtomicU64::new(good as u64),
                synced: Notify::new(),
                syncing: AtomicUsize::new(0),
                syncs: AtomicU64::new(0),
                sync_ns: AtomicU64::new(0),
                commit_delay_ns: AtomicU64::new(DEFAULT_COMMIT_DELAY.as_nanos() as u64),
                commit_siblings: AtomicUsize::new(DEFAULT_COMMIT_SIBLINGS),
                gathering_until_ns: AtomicU64::new(0),
                last_arrival_ns: AtomicU64::new(0),
                arrival_interval_ns: AtomicU64::new(u64::MAX),
                epoch: std::time::Instant::now(),
            },
            events,
        ))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffers `event`; a later [`Journal::append_synced`] (or [`Journal::flush`]) writes it.
    /// Returns the record's offset in the file (see [`Journal::read_at`]).
    pub fn append(&self, event: &Event) -> Result<u64, JournalError> {
        let (appended, offset) = self.push(event);
        if self.pending.lock().buf.len() >= FLUSH_AT {
            self.write_through(appended, false)?;
        }
        Ok(offset)
    }

    /// Appends `event` and returns once it, and everything appended before it, is written (and
    /// synced, under [`Durability::Durable`]). The caller leads the sync on its own thread when
    /// no other sync is in progress; otherwise it waits, without blocking its thread, until a
    /// leader's sync covers its record (or leads the next one). Returns the record's offset.
    pub async fn append_synced(&self, event: &Event) -> Result<u64, JournalError> {
        self.append_synced_busy(event, 0).await
    }

    /// [`Journal::append_synced`], told how many other runs are active. With any, a caller
    /// that leads a sync hands its thread's other tasks to another thread first, so a sync
    /// never stalls a core that has work (alone, it syncs on its own thread, which costs no
    /// hand-over); with at least the commit siblings, it may wait for company first (see the
    /// module docs).
    pub async fn append_synced_busy(
        &self,
        event: &Event,
        others: usize,
    ) -> Result<u64, JournalError> {
        let (upto, offset) = self.push(event);
        let sync = self.durability == Durability::Durable;
        let busy = others > 0;
        let company =
            sync && others >= self.commit_siblings.load(Ordering::Relaxed) && self.expect_company();
        self.syncing.fetch_add(1, Ordering::Relaxed);
        let _syncing = DecrementOnDrop(&self.syncing);
        loop {
            let notified = self.synced.notified();
            tokio::pin!(notified);
            // Registered before the checks below, so a leader finishing after them wakes us.
            notified.as_mut().enable();
            if self.durable.load(Ordering::Acquire) >= upto {
                return Ok(offset);
            }
            let until = self.gathering_until_ns.load(Ordering::Acquire);
            if until != 0 {
                let now = self.now_ns();
                if now < until {
                    // A leader is waiting for company; its sync covers this record, or wakes
                    // us to lead the next one.
                    let _ =
                        tokio::time::timeout(Duration::from_nanos(until - now), notified.as_mut())
                            .await;
                    continue;
                }
                // The leader is overdue: its task has not run since its delay ended (its
                // executor is busy with other tasks). Sync without it; it finds its record
                // covered when it runs.
            }
            if company && can_block_in_place() {
                let delay = self.commit_delay_ns.load(Ordering::Relaxed);
                let until = self.now_ns() + delay + GATHER_SLACK.as_nanos() as u64;
                if self
                    .gathering_until_ns
                    .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let _gathering = StopGathering(self, until);
                    tokio::time::sleep(Duration::from_nanos(delay)).await;
                    tokio::task::block_in_place(|| {
                        let writer = self.writer.lock();
                        self.lead(writer, upto, sync)
                    })?;
                    return Ok(offset);
                }
            }
            if let Some(writer) = self.writer.try_lock() {
                // With other appends in flight (or the caller's word for it), runs are busy:
                // the executor moves this thread's other tasks to another thread while it
                // syncs. Alone, the hand-over would only add latency.
                let busy = busy || self.syncing.load(Ordering::Relaxed) > 1;
                if sync && busy && can_block_in_place() {
                    tokio::task::block_in_place(|| self.lead(writer, upto, sync))?;
                } else {
                    self.lead(writer, upto, sync)?;
                }
                return Ok(offset);
            }
            notified.await;
        }
    }

    /// How long a busy leader waits for other checkpoints to share its sync (default
    /// [`DEFAULT_COMMIT_DELAY`]; zero never waits). It only waits when synced appends have
    /// lately arrived more often than twice per delay.
    pub fn set_commit_delay(&self, delay: Duration) {
        self.commit_delay_ns.store(
            delay.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Other active runs from which a leader waits for company (default
    /// [`DEFAULT_COMMIT_SIBLINGS`]): with fewer, the runs waiting would leave the cores idle
    /// instead of letting others work.
    pub fn set_commit_siblings(&self, siblings: usize) {
        self.commit_siblings.store(siblings, Ordering::Relaxed);
    }

    /// Nanoseconds since the journal opened, at least 1 (a gathering deadline of 0 means
    /// none).
    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// Records a synced append's arrival; true when at least two others are expected within
    /// the commit delay (a moving average of the last intervals is under half of it), which
    /// only happens when runs keep the cores busy: waiting for fewer would add latency for
    /// little gain.
    fn expect_company(&self) -> bool {
        let delay = self.commit_delay_ns.load(Ordering::Relaxed);
        let now = self.now_ns();
        let last = self.last_arrival_ns.swap(now, Ordering::Relaxed);
        let interval = now.saturating_sub(last);
        let average = self.arrival_interval_ns.load(Ordering::Relaxed);
        let average = if average == u64::MAX {
            interval
        } else {
            average - average / 8 + interval / 8
        };
        // Racing updates may lose a sample; the average stays an average.
        self.arrival_interval_ns.store(average, Ordering::Relaxed);
        delay > 0 && average < delay / 2
    }

    /// Writes (and syncs, when durable) everything appended so far. Blocks the calling thread.
    pub fn flush(&self) -> Result<(), JournalError> {
        let appended = self.pending.lock().appended;
        self.write_through(appended, self.durability == Durability::Durable)
    }

    /// Synced writes so far and the time spent in them: with group commit, fewer syncs than
    /// synced appends.
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            syncs: self.syncs.load(Ordering::Relaxed),
            time: std::time::Duration::from_nanos(self.sync_ns.load(Ordering::Relaxed)),
        }
    }

    /// Buffers `event`'s record; returns its number (1-based, in append order) and offset.
    fn push(&self, event: &Event) -> (u64, u64) {
        let frame = encode(event);
        let mut pending = self.pending.lock();
        pending.buf.extend_from_slice(&frame);
        pending.appended += 1;
        let offset = pending.next_offset;
        pending.next_offset += frame.len() as u64;
        (pending.appended, offset)
    }

    /// The end of the records written to the file so far: a record at an offset below it can
    /// be read back with [`Journal::read_at`].
    pub fn written_end(&self) -> u64 {
        self.written_end.load(Ordering::Acquire)
    }

    /// Reads back the event whose record is at `offset` (as returned by an append or by
    /// [`Journal::open`]). The record must have been written: appended with
    /// [`Journal::append_synced`], or before a record that was.
    pub fn read_at(&self, offset: u64) -> Result<Event, JournalError> {
        let corrupt = |message: String| JournalError::Io {
            path: self.path.clone(),
            message: format!("reading the record at offset {offset}: {message}"),
        };
        let mut header = [0u8; HEADER];
        self.reader
            .read_exact_at(&mut header, offset)
            .map_err(|e| corrupt(e.to_string()))?;
        let (len, crc) = frame_header(&header);
        if len == 0 || len > MAX_RECORD {
            return Err(corrupt(format!("no record there (length {len})")));
        }
        let mut payload = vec![0u8; len];
        self.reader
            .read_exact_at(&mut payload, offset + HEADER as u64)
            .map_err(|e| corrupt(e.to_string()))?;
        if crc32fast::hash(&payload) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        decode(&payload).map_err(corrupt)
    }

    /// Makes records up to `upto` written (and synced if `sync`), blocking on the file lock.
    fn write_through(&self, upto: u64, sync: bool) -> Result<(), JournalError> {
        if self.durable.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        let writer = self.writer.lock();
        self.lead(writer, upto, sync)
    }

    /// As the holder of the file lock: writes everything buffered (and syncs it if `sync`)
    /// unless a previous leader already covered `upto`, then wakes the waiters.
    fn lead(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        upto: u64,
        sync: bool,
    ) -> Result<(), JournalError> {
        if let Some(message) = &writer.failure {
            return Err(JournalError::Poisoned {
                path: self.path.clone(),
                message: message.clone(),
            });
        }
        if self.durable.load(Ordering::Acquire) >= upto {
            return Ok(());
        }
        let covered = {
            let mut pending = self.pending.lock();
            std::mem::swap(&mut pending.buf, &mut writer.spare);
            pending.appended
        };
        let started = sync.then(std::time::Instant::now);
        let result = write_records(&mut writer, sync);
        if let Some(started) = started {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.sync_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        writer.spare.clear();
        let outcome = match result {
            Ok(()) => {
                self.written_end.store(writer.end, Ordering::Release);
                self.durable.store(covered, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let message = format!("appending: {e}");
                tracing::error!(path = %self.path.display(), %message, "run journal write failed; runs cannot checkpoint");
                writer.failure = Some(message.clone());
                Err(JournalError::Io {
                    path: self.path.clone(),
                    message,
                })
            }
        };
        // Unlock before waking: a woken caller whose record missed this sync must be able to
        // lead the next one.
        drop(writer);
        self.synced.notify_waiters();
        outcome
    }

    /// Writes and syncs what is buffered.
    pub fn close(&self) {
        let appended = self.pending.lock().appended;
        let _ = self.write_through(appended, self.durability != Durability::Off);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Decrements a counter when dropped (also when the future holding it is dropped).
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends a leader's wait for company (also when its future is dropped mid-wait): wakes the
/// callers that waited for it, so one of them leads if it did not. Holds the leader's
/// `gathering_until_ns`.
struct StopGathering<'a>(&'a Journal, u64);

impl Drop for StopGathering<'_> {
    fn drop(&mut self) {
        let _ = self.0.gathering_until_ns.compare_exchange(
            self.1,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.0.synced.notify_waiters();
    }
}

/// Whether the current executor lets a task block its thread while others run on (a
/// multi-threaded tokio runtime).
fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Writes the leader's buffer at the end of the records, first growing the file by whole
/// chunks of zeros (synced with its new length) when the records would pass its end.
fn write_records(writer: &mut Writer, sync: bool) -> std::io::Result<()> {
    let need = writer.end + writer.spare.len() as u64;
    if need > writer.allocated {
        let grown = need.div_ceil(CHUNK) * CHUNK;
        let zeros = vec![0u8; (grown - writer.allocated).min(CHUNK) as usize];
        let mut at = writer.allocated;
        while at < grown {
            let n = (grown - at).min(zeros.len() as u64) as usize;
            writer.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        if sync {
            writer.file.sync_all()?;
        }
        writer.allocated = grown;
    }
    writer.file.write_all_at(&writer.spare, writer.end)?;
    writer.end = need;
    if sync {
        writer.file.sync_data()?;
    }
    Ok(())
}

fn encode(event: &Event) -> Vec<u8> {
    // Serialising our own types into a Vec cannot fail.
    let json = serde_json::to_vec(event).expect("events serialise");
    let payload = if json.len() >= COMPRESS_FROM {
        match compress(&json) {
            Some(packed) if packed.len() < json.len() => packed,
            _ => json,
        }
    } else {
        json
    };
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

thread_local! {
    /// A zstd compression context per thread: creating one allocates and zeroes its tables,
    /// which costs more than compressing a manifest.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd level 1 with this thread's reused context; `None` if zstd fails (stored raw then).
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(1).ok()?);
        }
        slot.as_mut()?.compress(data).ok()
    })
}

fn decode(payload: &[u8]) -> Result<Event, String> {
    if payload.starts_with(&ZSTD_MAGIC) {
        let json = zstd::stream::decode_all(payload).map_err(|e| e.to_string())?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }
}

/// Decodes frames until the first torn or corrupt one; returns the events and the length of
/// the intact prefix.
/// A record's payload length and checksum, from the `HEADER` bytes that start it.
fn frame_header(header: &[u8]) -> (usize, u32) {
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    (word(0) as usize, word(4))
}

fn decode_all(bytes: &[u8]) -> (Vec<(Event, u64)>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let (len, crc) = frame_header(&bytes[at..at + HEADER]);
        if len == 0 {
            // The preallocated zeros after the last record.
            break;
        }
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode(payload) {
            Ok(event) => events.push((event, at as u64)),
            Err(e) => {
                tracing::warn!(error = %e, "run journal record does not decode; stopping there");
                break;
            }
        }
        at += HEADER + len;
    }
    (events, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use std::sync::Arc;

    /// Opens the journal; its events without their offsets.
    fn open(dir: &std::path::Path, durability: Durability) -> (Journal, Vec<Event>) {
        let (journal, events) = Journal::open(dir, durability).unwrap();
        (journal, events.into_iter().map(|(e, _)| e).collect())
    }

    /// Floats come back bit for bit (serde_json's default parser may be off by one ulp).
    #[tokio::test]
    async fn floats_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), Durability::Durable);
        let latency = 1.3316510000000001_f64;
        let mut call = event("a", 1);
        call.kind = EventKind::LlmCall {
            node: "n".into(),
            role: "r".into(),
            round: 1,
            provider: "p".into(),
            model: "m".into(),
            usage: Default::default(),
            usage_estimated: false,
            attempts: 1,
            latency_ms: latency,
            cost_usd: 0.1 + 0.2,
        };
        let at = j.append_synced(&call).await.unwrap();
        match j.read_at(at).unwrap().kind {
            EventKind::LlmCall {
                latency_ms,
                cost_usd,
                ..
            } => {
                assert_eq!(latency_ms.to_bits(), latency.to_bits());
                assert_eq!(cost_usd.to_bits(), (0.1_f64 + 0.2).to_bits());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_record_reads_back_at_the_offset_its_append_returned() {
        let dir = tempfile::tempdir().unwrap();
        let mut big = event("a", 1);
        big.kind = EventKind::RunFailed {
            error: "x".repeat(4000),
        };
        let offsets = {
            let (j, _) = open(dir.path(), Durability::Durable);
            let first = j.append(&big).unwrap();
            let second = j.append_synced(&event("b", 2)).await.unwrap();
            assert_eq!(j.read_at(first).unwrap().seq, 1);
            assert_eq!(&*j.read_at(second).unwrap().run, "b");
            assert!(j.read_at(first + 1).is_err(), "not at a record's start");
            vec![first, second]
        };
        // After a restart, open reports the same offsets, and later appends continue after them.
        let (j, events) = Journal::open(dir.path(), Durability::Durable).unwrap();
        let reopened: Vec<u64> = events.iter().map(|(_, at)| *at).collect();
        assert_eq!(reopened, offsets);
        match j.read_at(offsets[0]).unwrap().kind {
            EventKind::RunFailed { error } => assert_eq!(error.len(), 4000, "a compressed record"),
            other => panic!("{other:?}"),
        }
        let third = j.append_synced(&event("c", 3)).await.unwrap();
        assert!(third > offsets[1]);
        assert_eq!(&*j.read_at(third).unwrap().run, "c");
    }

    fn event(run: &str, seq: u64) -> Event {
        Event {
            run: run.into(),
            seq,
            at_ms: 1,
            kind: EventKind::RoundStarted { round: seq as u32 },
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, old) = open(dir.path(), Durability::Durable);
            assert!(old.is_empty());
            j.append(&event("a", 1)).unwrap();
            j.append_synced(&event("a", 2)).await.unwrap();
            j.append_synced(&event("b", 1)).await.unwrap();
            // One sync per synced append when they come one at a time; none for a plain one.
            assert_eq!(j.sync_stats().syncs, 2);
            assert!(j.sync_stats().time > std::time::Duration::ZERO);
        }
        // The file is preallocated: records, then zeros.
        let path = dir.path().join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, CHUNK);
        let end = decode_all(&bytes).1;
        assert!(bytes[end..].iter().all(|&b| b == 0));
        // A crash mid-append leaves half a frame.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&encode(&event("c", 1))[..10], end as u64)
            .unwrap();
        drop(f);
        let (j, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 3);
        assert_eq!(&*events[2].run, "b");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end as u64);
        j.append_synced(&event("d", 1)).await.unwrap();
        drop(j);
        let (_, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 4);
        assert_eq!(&*events[3].run, "d");
    }

    #[tokio::test]
    async fn large_records_are_compressed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let big = Event {
            run: "a".into(),
            seq: 1,
            at_ms: 1,
            kind: EventKind::RunFailed {
                error: "the same words again and again ".repeat(200),
            },
        };
        let frame = encode(&big);
        assert!(frame[HEADER..].starts_with(&ZSTD_MAGIC));
        assert!(frame.len() < 1000, "{}", frame.len());
        {
            let (j, _) = open(dir.path(), Durability::Durable);
            j.append_synced(&big).await.unwrap();
            j.append_synced(&event("a", 2)).await.unwrap();
        }
        let (_, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 2);
        match &events[0].kind {
            EventKind::RunFailed { error } => assert_eq!(error.len(), 6200),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_stops_replay_at_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = open(dir.path(), Durability::Buffered);
            for i in 0..5 {
                j.append_synced(&event("a", i)).await.unwrap();
            }
            assert_eq!(j.sync_stats(), SyncStats::default(), "buffered: no syncs");
        }
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let frame_len = encode(&event("a", 0)).len();
        bytes[frame_len * 2 + HEADER + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (_, events) = open(dir.path(), Durability::Buffered);
        assert_eq!(events.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_synced_appends_share_syncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), Durability::Durable);
        let j = Arc::new(j);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let j = Arc::clone(&j);
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    j.append_synced(&event(&format!("r{t}"), i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let syncs = j.sync_stats().syncs;
        assert!((1..=320).contains(&syncs), "{syncs}");
        drop(j);
        let (_, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 320);
        let mut per_run = std::collections::HashMap::<String, Vec<u64>>::new();
        for e in &events {
            per_run.entry(e.run.to_string()).or_default().push(e.seq);
        }
        assert!(
            per_run
                .values()
                .all(|seqs| *seqs == (0..20).collect::<Vec<_>>())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_checkpoints_wait_for_company_and_share_syncs() {
        // Checkpoints trickle in (each task pauses between appends, like runs doing work);
        // with no commit delay nearly every one syncs alone, with one they share syncs.
        async fn trickle(delay: Duration) -> (u64, Vec<Event>) {
            let dir = tempfile::tempdir().unwrap();
            let (j, _) = open(dir.path(), Durability::Durable);
            j.set_commit_delay(delay);
            let j = Arc::new(j);
            let mut tasks = Vec::new();
            for t in 0..8u64 {
                let j = Arc::clone(&j);
                tasks.push(tokio::spawn(async move {
                    for i in 0..10 {
                        tokio::time::sleep(Duration::from_micros(300 + 150 * t)).await;
                        j.append_synced_busy(&event(&format!("r{t}"), i), DEFAULT_COMMIT_SIBLINGS)
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let syncs = j.sync_stats().syncs;
            drop(j);
            let (_, events) = open(dir.path(), Durability::Durable);
            (syncs, events)
        }
        let (alone, events) = trickle(Duration::ZERO).await;
        assert_eq!(events.len(), 80);
        let (shared, events) = trickle(Duration::from_millis(20)).await;
        assert_eq!(events.len(), 80);
        let mut per_run = std::collections::HashMap::<String, Vec<u64>>::new();
        for e in &events {
            per_run.entry(e.run.to_string()).or_default().push(e.seq);
        }
        assert!(per_run.values().all(|s| *s == (0..10).collect::<Vec<_>>()));
        // Here about 35 syncs without a delay (some sharing already), 10 with one.
        assert!(shared * 4 <= 80, "{shared} syncs for 80 checkpoints");
        assert!(
            shared < alone,
            "{shared} syncs with a delay, {alone} without"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn few_active_runs_never_wait_for_company() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open(dir.path(), Durability::Durable);
        j.set_commit_delay(Duration::ZERO);
        for i in 0..8 {
            j.append_synced_busy(&event("warm", i), DEFAULT_COMMIT_SIBLINGS)
                .await
                .unwrap();
        }
        // Company is expected, but with fewer other runs than the siblings nobody waits.
        j.set_commit_delay(Duration::from_secs(600));
        let started = std::time::Instant::now();
        for i in 0..4 {
            j.append_synced_busy(&event("few", i), DEFAULT_COMMIT_SIBLINGS - 1)
                .await
                .unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(60));
        assert_eq!(j.sync_stats().syncs, 12);
    }

    /// A journal in `dir` that expects company: 8 quick synced appends (run `warm`) made with
    /// no commit delay.
    async fn expecting_company(dir: &std::path::Path) -> Arc<Journal> {
        let (j, _) = open(dir, Durability::Durable);
        let j = Arc::new(j);
        j.set_commit_delay(Duration::ZERO);
        for i in 0..8 {
            j.append_synced_busy(&event("warm", i), DEFAULT_COMMIT_SIBLINGS)
                .await
                .unwrap();
        }
        j
    }

    /// The runs of the records after [`expecting_company`]'s, reopening the journal in `dir`.
    fn runs_after_warm_up(dir: &std::path::Path) -> Vec<String> {
        let (_, events) = open(dir, Durability::Durable);
        events[8..].iter().map(|e| e.run.to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_waiting_leader_hands_over_to_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let j = expecting_company(dir.path()).await;
        // With a long delay the next busy append waits for it; it is cancelled mid-wait.
        j.set_commit_delay(Duration::from_millis(300));
        let leader = {
            let j = Arc::clone(&j);
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(150),
                    j.append_synced_busy(&event("a", 0), DEFAULT_COMMIT_SIBLINGS),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        j.append_synced_busy(&event("b", 0), DEFAULT_COMMIT_SIBLINGS)
            .await
            .unwrap();
        assert!(leader.await.unwrap().is_err(), "the leader was cancelled");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(j.gathering_until_ns.load(Ordering::Acquire), 0);
        drop(j);
        assert_eq!(runs_after_warm_up(dir.path()), ["a", "b"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_do_not_wait_for_a_gathering_leader_whose_executor_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let j = expecting_company(dir.path()).await;
        // The leader runs on an executor of one thread, which another task then blocks for a
        // second: its commit delay ends, but it cannot run to sync.
        let busy = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        j.set_commit_delay(Duration::from_millis(20));
        let (gathering_tx, gathering_rx) = tokio::sync::oneshot::channel();
        let leader = {
            let j = Arc::clone(&j);
            busy.spawn(async move {
                let record = event("a", 0);
                let append = j.append_synced_busy(&record, DEFAULT_COMMIT_SIBLINGS);
                tokio::pin!(append);
                // Polled once: it starts gathering and sleeps out the delay.
                assert!(futures_poll_once(append.as_mut()).await.is_none());
                let _ = gathering_tx.send(());
                append.await
            })
        };
        gathering_rx.await.unwrap();
        assert_ne!(j.gathering_until_ns.load(Ordering::Acquire), 0);
        busy.spawn(async { std::thread::sleep(Duration::from_secs(1)) });
        let started = std::time::Instant::now();
        j.append_synced_busy(&event("b", 0), DEFAULT_COMMIT_SIBLINGS)
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "waited {waited:?} for a leader that could not run"
        );
        // The leader finds its record synced when it runs, and everything is on disk once.
        leader.await.unwrap().unwrap();
        busy.shutdown_background();
        drop(j);
        assert_eq!(runs_after_warm_up(dir.path()), ["a", "b"]);
    }

    /// Polls `future` once: its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn records_past_a_chunk_grow_the_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let big = Event {
            run: "a".into(),
            seq: 1,
            at_ms: 1,
            // Incompressible enough to stay large.
            kind: EventKind::RunFailed {
                error: {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64;
                    (0..25_000)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            format!("{x:016x}")
                        })
                        .collect()
                },
            },
        };
        {
            let (j, _) = open(dir.path(), Durability::Durable);
            for _ in 0..30 {
                j.append_synced(&big).await.unwrap();
            }
        }
        let len = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert!(len > CHUNK && len.is_multiple_of(CHUNK), "{len}");
        let (j, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 30);
        j.append_synced(&event("b", 1)).await.unwrap();
        drop(j);
        let (_, events) = open(dir.path(), Durability::Durable);
        assert_eq!(events.len(), 31);
    }
}
