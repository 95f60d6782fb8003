//! [`EmbeddedStore`]: the memory store on local disk.
//!
//! Layout of a store directory:
//! - `STORE`: a marker with the format name and on-disk schema version (written first);
//! - `items/`: sled, the source of truth: items, their embeddings, store metadata;
//! - `text/`: tantivy, the BM25 index, derived from sled, written without fsyncs and caught up
//!   (or rebuilt) on open (see `text.rs` and `textdir.rs`);
//! - `graphs/`: HNSW graphs of large namespaces, saved on a clean close and reused on open
//!   when they still match (derived; deleting them only costs a rebuild).
//!
//! Keys in sled: `i<id>` item record, `v<id>` embedding (f32 little-endian), `m<name>` metadata,
//! `d<namespace>` a namespace deletion not yet applied to the text index.
//!
//! A small write (the agents' write-back) counts tokens, embeds and analyses its text first,
//! outside any lock. Then, under the writer lock: assign sequence numbers and versions (the numbers
//! are spent from here on, whatever happens); write sled, no fsync (one atomic batch; a single item
//! goes in as plain inserts, which wait for no flush in progress and keep no reader waiting, see
//! `write_sled`); append the documents to the text index's in-memory tail, which BM25 searches
//! score exactly like committed documents; publish to the in-memory catalog and vectors. After the
//! lock, under [`Durability::Fsync`], the write waits for a sled flush that started after it was
//! applied: one writer flushes for all the writes queued behind the flush in progress (group
//! commit), and the write is acknowledged. Before it flushes, that writer waits (at most
//! [`StoreOptions::commit_delay`]) for the small writes already under way to be applied, so
//! concurrent writers on busy cores share an fsync instead of queueing for one each. A write is
//! thus visible to searches a little before it is durable, never acknowledged before; sled recovers
//! a prefix of its log, so a crash keeps a prefix of the writes. A write whose flush fails reports
//! the error but stays visible, and a later flush may still make it durable: as with any failed
//! fsync, its outcome is unknown. When the tail is full, a committer thread commits it to tantivy
//! off the write path (see `text.rs`).
//!
//! A search or listing ranks and filters under the catalog's read lock (a write publishing its
//! batch waits for it), then releases the lock before it reads and decodes the items from sled,
//! so that part keeps no writer waiting; an item whose namespace was deleted in between is
//! left out.
//!
//! A large batch (bulk ingest) goes under the writer lock from the start: its documents go to
//! tantivy's index writer first (its indexing thread works on them while this thread counts
//! tokens and embeds), then sled's write with its fsync and the text index commit run side by
//! side. If the sled write fails nothing is stored; if the index commit fails the items are
//! taken back out of sled. Either way the batch's sequence numbers are never reused, so index
//! documents of a failed write are orphans the catalog never admits. After a crash, items newer
//! than the text index's commit watermark are re-indexed on open (replacing any document with
//! the same sequence number), so nothing acknowledged is lost or duplicated; an index that may
//! have lost writes to a machine crash, or that tantivy cannot open, is rebuilt from sled.
//! Embeddings of a batch are stored as one sled value (see [`encode_blob`]), unless the
//! embedder is [recomputable](crate::embed::Embedder::recomputable) (the hashing embedder):
//! then they are not stored at all and are recomputed from the items' text on open, which
//! takes a multi-megabyte value off every bulk write. Stores with stored embeddings open as
//! before; an item without one is recomputed if the embedder allows it, an error otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, CompiledFilter, Sym};
use super::phases::Phases;
use super::text::{Pushdown, TailFill, TextIndex, TextWriter};
use super::vectors::VectorIndex;
use super::{MemoryStore, NamespaceStats, Page, SearchHit, SearchMode, SearchQuery};
use crate::embed::Embedder;
use crate::error::{MemoryError, Result};
use crate::filter::Filter;
use crate::item::{ItemId, MemoryItem, NewItem, Timestamp};
use crate::tokens::TokenCounter;
use crate::vector::hnsw::HnswParams;

/// The on-disk schema this build writes. Version 2: embeddings of a recomputable embedder are
/// not stored (see the module docs). This build also opens version 1 stores, and marks them
/// version 2 when it opens them with a recomputable embedder (from then on they may hold
/// items without a stored embedding, which a version 1 build would call corrupt).
pub const SCHEMA_VERSION: u32 = 2;
/// The oldest schema this build opens.
const OLDEST_SCHEMA: u32 = 1;
const FORMAT: &str = "agentd-memory";
const MARKER: &str = "STORE";
/// Record encoding version (first byte of every item record).
const RECORD_V1: u8 = 1;
/// Default breadth of approximate vector searches. Measured on the synthetic corpus at 1M
/// items (`agentd bench memory --ef-sweep`): recall@20 0.95 needs about 1,000-1,300 on hashing
/// embeddings of text, at a p95 of 6-8 ms; embeddings of lower intrinsic dimension (MiniLM)
/// reach it sooner. Callers that need speed over recall (the router's candidate searches) pass
/// a smaller `SearchQuery::ef`.
pub const DEFAULT_EF_SEARCH: usize = 1280;
/// The graph builder waits until no write is in progress and none came for this long...
const GRAPH_QUIET_MS: u64 = 300;
/// ...unless this many rows of a namespace wait for the graph.
const GRAPH_TAIL_CAP: usize = 200_000;
/// Rows per graph insertion step while writes stream in (the read lock is held for one step,
/// and a writer publishing a batch waits for it: keep it to a few tens of milliseconds).
const GRAPH_CHUNK: usize = 64;
/// Rows per step when the backlog is large: big enough for the graph's quantised bulk build.
const GRAPH_BULK_CHUNK: usize = 25_000;
/// Batches at least this large commit the text index (smaller ones join its tail), writing sled
/// and committing on two threads.
const PARALLEL_COMMIT_MIN: usize = 64;
/// Batches at least this large count tokens on several threads.
const PARALLEL_TOKENS_MIN: usize = 16;
/// Reciprocal rank fusion constant.
const RRF_K: f32 = 60.0;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// After an fsync of the batch (the default): an acknowledged item survives power loss.
    #[default]
    Fsync,
    /// Without waiting for a flush: sled buffers the write in the process and writes and fsyncs
    /// its buffers every `flush_every_ms` in the background. An acknowledged item is visible at
    /// once, but a crash of the process (not only of the machine) before the next flush loses
    /// it, with the other writes of the last `flush_every_ms` (sled 0.34 has no write-through
    /// without fsync). What survives is still consistent: whole batches, no duplicates.
    Background {
        /// Background flush interval.
        flush_every_ms: u64,
    },
}

/// How to open an [`EmbeddedStore`].
#[derive(Clone)]
pub struct StoreOptions {
    /// Embedder for items and queries; recorded in the store on creation.
    pub embedder: Arc<dyn Embedder>,
    /// Token counter; recorded in the store on creation.
    pub token_counter: Arc<dyn TokenCounter>,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// sled page cache, in bytes.
    pub cache_bytes: u64,
    /// HNSW parameters for large namespaces.
    pub hnsw: HnswParams,
    /// HNSW search breadth (candidates kept while walking the graph).
    pub ef_search: usize,
    /// Namespaces with at least this many items get an HNSW graph; smaller ones are searched
    /// exactly.
    pub ann_min_rows: usize,
    /// How long a small write about to flush sled for everyone waits, at most, for the small
    /// writes already under way to be applied, so that one fsync covers them all (default
    /// [`DEFAULT_COMMIT_DELAY`]; zero never waits). A lone writer never waits.
    pub commit_delay: Duration,
}

/// Default [`StoreOptions::commit_delay`].
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(1);

impl StoreOptions {
    /// Options with the given embedder and token counter and default everything else.
    pub fn new(embedder: Arc<dyn Embedder>, token_counter: Arc<dyn TokenCounter>) -> Self {
        let hnsw = HnswParams::default();
        StoreOptions {
            embedder,
            token_counter,
            durability: Durability::Fsync,
            cache_bytes: 256 * 1024 * 1024,
            ef_search: DEFAULT_EF_SEARCH,
            hnsw,
            ann_min_rows: super::vectors::ANN_MIN_ROWS,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: String,
    schema_version: u32,
}

/// Catalog and vectors, published together under one lock.
struct State {
    catalog: Catalog,
    vectors: VectorIndex,
}

/// What only the (single) writer touches.
struct Writer {
    next_seq: u64,
}

/// The text index with its writer, shared with the committer thread (see `text.rs`). Lock
/// order: the store's writer, then the index writer.
struct Text {
    index: TextIndex,
    writer: Mutex<TextWriter>,
    /// Set when the committer should commit the tail (or stop).
    wake: Mutex<bool>,
    wake_cv: Condvar,
    shutdown: std::sync::atomic::AtomicBool,
}

impl Text {
    fn wake_committer(&self) {
        *self.wake.lock() = true;
        self.wake_cv.notify_one();
    }
}

/// Group commit of sled: one fsync covers every write applied before it started.
#[derive(Default)]
struct SyncState {
    /// Every item with a sequence number up to this one is durable.
    durable: u64,
    /// A writer is flushing sled on everyone's behalf.
    flushing: bool,
}

/// Shared between the store and its background graph builder.
struct Shared {
    state: RwLock<State>,
    /// Set when the builder should look for work or stop.
    wake: Mutex<bool>,
    wake_cv: Condvar,
    shutdown: std::sync::atomic::AtomicBool,
    /// When the last write was published (ms since the epoch).
    last_write_ms: std::sync::atomic::AtomicU64,
    /// Writes in progress: while any is, writes are not quiet, however long it takes (a bulk
    /// batch of thousands of items takes longer than `GRAPH_QUIET_MS` on a loaded machine).
    writing: std::sync::atomic::AtomicUsize,
    /// Sequence number of the newest published item (0: none).
    last_seq: std::sync::atomic::AtomicU64,
}

/// The memory store on local disk. See the module docs for its layout and write protocol.
pub struct EmbeddedStore {
    path: PathBuf,
    db: sled::Db,
    /// sled's log file, synced after sled's own flush (see [`EmbeddedStore::flush_durable`]).
    sled_log: std::fs::File,
    text: Arc<Text>,
    writer: Mutex<Writer>,
    /// Sequence number of the newest item applied to sled (maybe not yet durable).
    applied_seq: std::sync::atomic::AtomicU64,
    sync: Mutex<SyncState>,
    /// Writers waiting for a flush (by another writer) to cover their items.
    sync_cv: Condvar,
    /// The flushing writer waiting for `unapplied` to reach zero. Apart from `sync_cv`, so an
    /// applied write wakes only the flusher, not every writer waiting for the flush (each of
    /// which would take the lock in turn to go back to sleep: a convoy under load).
    gather_cv: Condvar,
    /// Small writes under way that have not applied their batch yet (a flush waits for them).
    unapplied: std::sync::atomic::AtomicUsize,
    /// A flushing writer waits for `unapplied` to reach zero (appliers wake it).
    gathering: std::sync::atomic::AtomicBool,
    commit_delay: Duration,
    shared: Arc<Shared>,
    builder: Option<JoinHandle<()>>,
    committer: Option<JoinHandle<()>>,
    /// sled flushes made for writes (see [`EmbeddedStore::write_flushes`]).
    write_flushes: std::sync::atomic::AtomicU64,
    /// Writes that hold the writer lock for long (large batches, namespace deletions), under
    /// way or waiting for the lock: while there are any, a small write is not quick (see
    /// `MemoryStore::quick_write`).
    long_writes: std::sync::atomic::AtomicUsize,
    embedder: Arc<dyn Embedder>,
    token_counter: Arc<dyn TokenCounter>,
    durability: Durability,
    ef_search: std::sync::atomic::AtomicUsize,
}

fn item_key(id: &ItemId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'i';
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// Key of the embedding blob of the batch whose first sequence number is `first_seq`.
fn blob_key(first_seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'b';
    k[1..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'm');
    k.extend_from_slice(name.as_bytes());
    k
}

fn deletion_key(namespace: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + namespace.len());
    k.push(b'd');
    k.extend_from_slice(namespace.as_bytes());
    k
}

fn encode_item(item: &MemoryItem) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + item.content.len());
    out.push(RECORD_V1);
    rmp_serde::encode::write(&mut out, item).expect("encoding to a Vec cannot fail");
    out
}

/// One batch's embeddings in one sled value: `count: u32, dim: u32`, then `count` ids, then
/// `count * dim` little-endian f32. A batch's items have consecutive sequence numbers, so item
/// `seq` sits at index `seq - first_seq`. One large value costs far less to write than one key
/// per vector.
fn encode_blob(items: &[MemoryItem], vectors: &[Vec<f32>], dim: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + items.len() * (16 + dim * 4));
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    for item in items {
        out.extend_from_slice(item.id.as_bytes());
    }
    for v in vectors {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// A decoded embedding blob.
struct Blob<'a> {
    first_seq: u64,
    count: usize,
    dim: usize,
    bytes: &'a [u8],
}

impl<'a> Blob<'a> {
    fn parse(key: &[u8], bytes: &'a [u8], dim: usize) -> Option<Self> {
        let first_seq = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
        let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
        let stored_dim = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        if stored_dim != dim || bytes.len() != 8 + count * (16 + dim * 4) {
            return None;
        }
        Some(Blob {
            first_seq,
            count,
            dim,
            bytes,
        })
    }

    fn id(&self, i: usize) -> ItemId {
        let at = 8 + i * 16;
        ItemId::from_bytes(self.bytes[at..at + 16].try_into().expect("16 bytes"))
    }

    fn vector(&self, i: usize) -> Vec<f32> {
        let at = 8 + self.count * 16 + i * self.dim * 4;
        self.bytes[at..at + self.dim * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

impl EmbeddedStore {
    /// Opens the store in `path`, creating it if the directory is new or empty.
    ///
    /// Errors: [`MemoryError::ForeignDirectory`] for a non-empty directory that is not a store,
    /// [`MemoryError::UnsupportedSchema`], [`MemoryError::ConfigMismatch`] when the embedder or
    /// token counter differs from the one the store was created with,
    /// [`MemoryError::Locked`] when another process has it open, [`MemoryError::Corrupt`].
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let (created, schema) = prepare_directory(&path)?;
        let db = open_sled(&path, &options)?;
        let log_path = path.join("items").join("db");
        let sled_log = std::fs::File::open(&log_path)
            .map_err(|e| MemoryError::io(format!("opening {}", log_path.display()), e))?;
        if options.durability == Durability::Fsync {
            // What sled recovered may include a killed process's writes that only reached the
            // page cache: make them durable before anything is built on them (everything on
            // disk counts as durable from here on).
            sled_log
                .sync_data()
                .map_err(|e| MemoryError::io(format!("syncing {}", log_path.display()), e))?;
        }
        check_meta(&path, &db, &options, created)?;
        if schema < SCHEMA_VERSION && options.embedder.recomputable() {
            write_marker(&path)?;
        }

        let (text, mut index_writer, fresh) = TextIndex::open(&path.join("text"))?;
        let dim = options.embedder.dimension();
        let mut state = State {
            catalog: Catalog::default(),
            vectors: VectorIndex::new(dim, options.hnsw.clone(), options.ann_min_rows),
        };
        let mut max_seq = load(&path, &db, &mut state, options.embedder.as_ref())?;
        let graphs =
            super::vectors::saved::load(&path.join("graphs"), &mut state.vectors, &state.catalog);
        if graphs > 0 {
            tracing::info!(path = %path.display(), graphs, "loaded saved vector graphs");
        }

        // Catch the text index up: pending namespace deletions, then items it has not seen.
        let watermark = text.watermark()?;
        let mut repaired = false;
        for entry in db.scan_prefix(b"d") {
            let (key, _) = entry?;
            let ns = String::from_utf8_lossy(&key[1..]).into_owned();
            text.delete_namespace(&index_writer, &ns);
            repaired = true;
        }
        let mut behind = 0usize;
        for (_, space) in state.vectors.spaces.iter() {
            for &slot in &space.slots {
                let entry = state.catalog.entry(slot);
                if entry.seq > watermark {
                    let item =
                        read_item(&path, &db, &entry.id)?.ok_or_else(|| MemoryError::Corrupt {
                            path: path.clone(),
                            reason: format!("item {} is in the catalog but not in sled", entry.id),
                        })?;
                    // A fresh index holds no document to replace.
                    text.add(&index_writer, &item, !fresh)?;
                    behind += 1;
                }
            }
        }
        let stored_next: u64 = db
            .get(meta_key("next_seq"))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1);
        max_seq = max_seq.max(watermark);
        let next_seq = stored_next.max(max_seq + 1);
        if repaired || behind > 0 {
            tracing::info!(
                path = %path.display(),
                behind,
                watermark,
                "catching up the text index"
            );
            text.commit(&mut index_writer, Some(next_seq - 1))?;
            let mut batch = sled::Batch::default();
            for entry in db.scan_prefix(b"d") {
                batch.remove(entry?.0);
            }
            db.apply_batch(batch)?;
            db.flush()?;
        }

        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            wake: Mutex::new(true),
            wake_cv: Condvar::new(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            last_write_ms: std::sync::atomic::AtomicU64::new(0),
            writing: std::sync::atomic::AtomicUsize::new(0),
            last_seq: std::sync::atomic::AtomicU64::new(next_seq - 1),
        });
        let builder = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("agentd-hnsw".into())
                .spawn(move || build_graphs(&shared))
                .map_err(|e| MemoryError::io("starting the vector index builder", e))?
        };
        let text = Arc::new(Text {
            index: text,
            writer: Mutex::new(index_writer),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            shutdown: std::sync::atomic::AtomicBool::new(false),
        });
        let committer = {
            let text = Arc::clone(&text);
            std::thread::Builder::new()
                .name("agentd-text".into())
                .spawn(move || commit_text(&text))
                .map_err(|e| MemoryError::io("starting the text index committer", e))?
        };
        Ok(EmbeddedStore {
            path,
            db,
            sled_log,
            text,
            writer: Mutex::new(Writer { next_seq }),
            applied_seq: std::sync::atomic::AtomicU64::new(next_seq - 1),
            sync: Mutex::new(SyncState {
                durable: next_seq - 1,
                flushing: false,
            }),
            sync_cv: Condvar::new(),
            gather_cv: Condvar::new(),
            unapplied: std::sync::atomic::AtomicUsize::new(0),
            gathering: std::sync::atomic::AtomicBool::new(false),
            commit_delay: options.commit_delay,
            shared,
            builder: Some(builder),
            committer: Some(committer),
            write_flushes: std::sync::atomic::AtomicU64::new(0),
            long_writes: std::sync::atomic::AtomicUsize::new(0),
            embedder: options.embedder,
            token_counter: options.token_counter,
            durability: options.durability,
            ef_search: std::sync::atomic::AtomicUsize::new(options.ef_search.max(1)),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// sled flushes (fsyncs) made for writes so far: with concurrent writers sharing flushes
    /// (group commit), fewer than the writes.
    pub fn write_flushes(&self) -> u64 {
        self.write_flushes.load(Ordering::Relaxed)
    }

    /// Blocks until every large namespace's HNSW graph covers all its rows (benchmarks use this
    /// to measure the steady state; searches never need it).
    pub fn wait_for_vector_index(&self) {
        loop {
            let backlog = self.shared.state.read().vectors.ann_backlog();
            if backlog.is_empty() {
                return;
            }
            self.wake_builder();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Exact top-`k` by cosine, scanning every admitted vector: the ground truth for measuring
    /// the recall of [`MemoryStore::search`] in [`SearchMode::Vector`]. Returns (id, cosine).
    pub fn exact_vector_search(
        &self,
        query: &[f32],
        filter: &Filter,
        k: usize,
    ) -> Vec<(ItemId, f32)> {
        let state = self.shared.state.read();
        let compiled = state.catalog.compile(filter);
        let mut hits: Vec<(ItemId, f32)> = Vec::new();
        for ns in state.catalog.namespaces_of(&compiled) {
            let Some(space) = state.vectors.spaces.get(&ns) else {
                continue;
            };
            let catalog = &state.catalog;
            let found =
                crate::vector::hnsw::exact_top_k(&space.data, state.vectors.dim, query, k, |row| {
                    catalog.matches(&compiled, catalog.entry(space.slots[row as usize]))
                });
            hits.extend(
                found
                    .into_iter()
                    .map(|(row, s)| (catalog.entry(space.slots[row as usize]).id, s)),
            );
        }
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(k);
        hits
    }

    /// Changes the HNSW search breadth (recall against latency) for later searches.
    pub fn set_ef_search(&self, ef: usize) {
        self.ef_search.store(ef.max(1), Ordering::Relaxed);
    }

    /// Total bytes the store occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_size(&self.path)
    }

    fn wake_builder(&self) {
        *self.shared.wake.lock() = true;
        self.shared.wake_cv.notify_one();
    }

    /// Makes everything applied to sled so far durable. sled 0.34's flush writes its log
    /// buffers with `sync_file_range`, which flushes neither the drive's volatile write cache
    /// nor the file's size: a power loss could still lose an acknowledged write. An
    /// `fdatasync` of the log file after it does both (the data is already written, so it
    /// costs about one cache flush).
    fn flush_durable(&self) -> std::result::Result<(), sled::Error> {
        self.db.flush()?;
        self.sled_log.sync_data().map_err(sled::Error::Io)
    }

    /// Waits until every item up to `seq` (already applied to sled) is durable: flushes sled
    /// unless another writer's flush, started after the item was applied, covers it (group
    /// commit: one fsync for all the writes that queue behind the one in progress).
    ///
    /// Before it flushes, the flushing writer waits (at most the commit delay) for the small
    /// writes already under way to apply their batches, so the one fsync covers them too.
    fn sync_through(&self, seq: u64) -> Result<()> {
        let mut sync = self.sync.lock();
        loop {
            if sync.durable >= seq {
                return Ok(());
            }
            if !sync.flushing {
                break;
            }
            self.sync_cv.wait(&mut sync);
        }
        sync.flushing = true;
        if !self.commit_delay.is_zero() && self.unapplied.load(Ordering::SeqCst) > 0 {
            let deadline = std::time::Instant::now() + self.commit_delay;
            self.gathering.store(true, Ordering::SeqCst);
            while self.unapplied.load(Ordering::SeqCst) > 0 {
                if self.gather_cv.wait_until(&mut sync, deadline).timed_out() {
                    break;
                }
            }
            self.gathering.store(false, Ordering::SeqCst);
        }
        drop(sync);
        let target = self.applied_seq.load(Ordering::Acquire);
        let flushed = self.flush_durable();
        self.write_flushes.fetch_add(1, Ordering::Relaxed);
        let mut sync = self.sync.lock();
        sync.flushing = false;
        if flushed.is_ok() {
            sync.durable = sync.durable.max(target);
        }
        drop(sync);
        self.sync_cv.notify_all();
        flushed?;
        Ok(())
    }

    /// Counts tokens of the batch's items (on several threads for a batch of some size: a
    /// count costs tens of microseconds).
    fn count_tokens(&self, stored: &mut [MemoryItem]) {
        let counter = &self.token_counter;
        let tokens: Vec<u32> = if stored.len() < PARALLEL_TOKENS_MIN {
            stored.iter().map(|i| counter.count(&i.content)).collect()
        } else {
            stored
                .par_iter()
                .map(|i| counter.count(&i.content))
                .collect()
        };
        for (item, t) in stored.iter_mut().zip(tokens) {
            item.tokens = t;
        }
    }

    /// Assigns sequence numbers (spent from here on whatever happens: never reused, so index
    /// documents of a failed write can never be mistaken for a later item) and versions
    /// (after the current version of the key, or an earlier item of the batch). Returns the
    /// first sequence number.
    fn assign(&self, writer: &mut Writer, stored: &mut [MemoryItem]) -> u64 {
        let state = self.shared.state.read();
        let mut batch_versions: HashMap<(&str, &str), u32> = HashMap::new();
        let first_seq = writer.next_seq;
        for (i, item) in stored.iter_mut().enumerate() {
            item.seq = first_seq + i as u64;
            item.version = match item.key.as_deref() {
                None => 1,
                Some(key) => {
                    let prev = batch_versions
                        .get(&(item.namespace.as_str(), key))
                        .copied()
                        .or_else(|| {
                            state
                                .catalog
                                .current_version(&item.namespace, key)
                                .map(|(_, v)| v)
                        });
                    let v = prev.map_or(1, |p| p + 1);
                    batch_versions.insert((item.namespace.as_str(), key), v);
                    v
                }
            };
        }
        writer.next_seq = first_seq + stored.len() as u64;
        first_seq
    }

    /// Writes a batch to sled as one atomic batch, flushing it when `flush`.
    fn write_sled(
        &self,
        stored: &[MemoryItem],
        vectors: &[Vec<f32>],
        first_seq: u64,
        flush: bool,
    ) -> std::result::Result<(), sled::Error> {
        let mut phases = Phases::start();
        if let [item] = stored
            && !flush
        {
            // One item needs no atomic batch: sled's batches take its global write lock
            // (waiting for any flush in progress, and holding up every read meanwhile) and
            // roll its log buffer twice, which costs two disk writes. Plain inserts instead, in
            // an order whose every prefix is a valid store (a crash keeps a prefix of sled's
            // log), with the item last, so that an insert that fails leaves it unwritten: the
            // embedding (a blob without its item is ignored on open), the next sequence number
            // (numbers are spent once assigned anyway), the item.
            if !self.embedder.recomputable() {
                self.db.insert(
                    &blob_key(first_seq)[..],
                    encode_blob(stored, vectors, self.embedder.dimension()),
                )?;
            }
            self.db
                .insert(meta_key("next_seq"), &(first_seq + 1).to_be_bytes()[..])?;
            self.db.insert(&item_key(&item.id)[..], encode_item(item))?;
            phases.lap("sled_apply");
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in stored {
            batch.insert(&item_key(&item.id)[..], encode_item(item));
        }
        if !self.embedder.recomputable() {
            batch.insert(
                &blob_key(first_seq)[..],
                encode_blob(stored, vectors, self.embedder.dimension()),
            );
        }
        let next_seq = first_seq + stored.len() as u64;
        batch.insert(meta_key("next_seq"), &next_seq.to_be_bytes()[..]);
        phases.lap("sled_encode");
        self.db.apply_batch(batch)?;
        phases.lap("sled_apply");
        if flush {
            self.write_flushes.fetch_add(1, Ordering::Relaxed);
            self.flush_durable()?;
            phases.lap("sled_flush");
        }
        Ok(())
    }

    /// Publishes a written batch to the catalog and the vectors (searchable from here on) and
    /// records whether an item of the batch is superseded by a later one of the same batch.
    /// Returns whether a namespace has an approximate vector index to grow.
    fn publish(&self, stored: &mut [MemoryItem], vectors: &[Vec<f32>]) -> bool {
        let mut grew_large = false;
        let mut state = self.shared.state.write();
        let State {
            catalog,
            vectors: vindex,
        } = &mut *state;
        for (item, vector) in stored.iter().zip(vectors) {
            let ns = catalog.syms.intern(&item.namespace);
            let row = vindex.next_row(ns);
            let slot = catalog.insert(item, row);
            vindex.push(ns, slot, vector);
            grew_large |= vindex.spaces[&ns].ann.is_some();
        }
        for item in stored.iter_mut() {
            if item.key.is_some()
                && let Some(slot) = catalog.slot_of_id(&item.id)
            {
                item.superseded = catalog.entry(slot).superseded;
            }
        }
        grew_large
    }

    /// After a batch is published: lets the graph builder know.
    fn published(&self, last_seq: u64, grew_large: bool) {
        self.shared.last_seq.store(last_seq, Ordering::Release);
        self.shared.last_write_ms.store(now_ms(), Ordering::Release);
        if grew_large {
            self.wake_builder();
        }
    }

    /// `put_batch` (`sync`) or `put_batch_deferred`.
    fn write(&self, items: Vec<NewItem>, sync: bool) -> Result<Vec<MemoryItem>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for (i, item) in items.iter().enumerate() {
            item.validate().map_err(|e| match e {
                MemoryError::Invalid { field, reason } => MemoryError::Invalid {
                    field,
                    reason: if items.len() > 1 {
                        format!("{reason} (item {i} of the batch)")
                    } else {
                        reason
                    },
                },
                other => other,
            })?;
        }
        let now = Timestamp::now();
        let stored: Vec<MemoryItem> = items
            .into_iter()
            .map(|item| MemoryItem {
                id: ItemId::new_v7(),
                // Sequence numbers and versions are assigned under the writer lock.
                seq: 0,
                namespace: item.namespace,
                kind: item.kind,
                content: item.content,
                payload: item.payload,
                producer: item.producer,
                stage: item.stage,
                tags: item.tags,
                key: item.key,
                version: 0,
                confidence: item.confidence,
                created_at: now,
                tokens: 0,
                readers: item.readers,
                superseded: false,
            })
            .collect();
        let _writing = Writing::enter(&self.shared);
        if stored.len() >= PARALLEL_COMMIT_MIN {
            self.put_large(stored, sync)
        } else {
            self.put_small(stored, sync)
        }
    }

    /// A small batch: everything that needs no sequence number (token counts, embeddings, text
    /// analysis) happens before the writer lock; under it, sled's write (no fsync), the text
    /// index's tail and the catalog; after it, the group fsync.
    fn put_small(&self, mut stored: Vec<MemoryItem>, sync: bool) -> Result<Vec<MemoryItem>> {
        let mut phases = Phases::start();
        let unapplied = Unapplied::enter(self);
        self.count_tokens(&mut stored);
        phases.lap("tokens");
        let vectors = embed_parallel(self.embedder.as_ref(), &stored)?;
        phases.lap("embed");
        let mut analysed: Vec<_> = stored.iter().map(|i| self.text.index.analyse(i)).collect();
        phases.lap("analyse");

        let mut writer = self.writer.lock();
        phases.lap("lock");
        let first_seq = self.assign(&mut writer, &mut stored);
        let last_seq = writer.next_seq - 1;
        for (a, item) in analysed.iter_mut().zip(&stored) {
            a.assign(item.id, item.seq);
        }
        self.write_sled(&stored, &vectors, first_seq, false)?;
        let fill = self.text.index.append_tail(analysed);
        if fill == TailFill::Overfull {
            // The committer is falling behind: commit here, holding up other writers.
            let mut index = self.text.writer.lock();
            if let Err(e) = self.text.index.commit(&mut index, None) {
                // The items are in sled and searchable through the tail; the next commit
                // (or the catch-up on the next open) indexes them.
                tracing::error!(path = %self.path.display(), error = %e, "committing the text index");
            }
        }
        let grew_large = self.publish(&mut stored, &vectors);
        self.applied_seq.store(last_seq, Ordering::Release);
        drop(writer);
        drop(unapplied);
        phases.lap("publish");
        self.published(last_seq, grew_large);
        if fill == TailFill::Full {
            self.text.wake_committer();
        }
        if sync && self.durability == Durability::Fsync {
            self.sync_through(last_seq)?;
            phases.lap("sync");
        }
        Ok(stored)
    }

    /// A large batch, under the writer lock: queue the text index documents (tantivy's
    /// indexing thread works on them while this thread counts tokens and embeds), then write
    /// sled (with its fsync) and commit the text index side by side, then publish.
    fn put_large(&self, mut stored: Vec<MemoryItem>, sync: bool) -> Result<Vec<MemoryItem>> {
        let mut phases = Phases::start();
        let _long = LongWrite::enter(self);
        let mut writer = self.writer.lock();
        phases.lap("lock");
        let first_seq = self.assign(&mut writer, &mut stored);
        let last_seq = writer.next_seq - 1;
        let mut index = self.text.writer.lock();
        phases.lap("assign");
        // Sequence numbers are fresh (never indexed, never reused), so no delete is needed. If
        // anything fails from here on, queued documents are orphans the catalog never admits.
        if let Err(e) = stored
            .iter()
            .try_for_each(|item| self.text.index.add(&index, item, false))
        {
            if let Err(rollback) = index.rollback() {
                tracing::error!(path = %self.path.display(), error = %rollback, "rolling back the text index writer");
            }
            return Err(e);
        }
        phases.lap("text_add");
        self.count_tokens(&mut stored);
        phases.lap("tokens");
        let vectors = embed_parallel(self.embedder.as_ref(), &stored)?;
        phases.lap("embed");

        let flush = sync && self.durability == Durability::Fsync;
        let (stored_ok, indexed) = std::thread::scope(|scope| {
            let sled_side = scope.spawn(|| self.write_sled(&stored, &vectors, first_seq, flush));
            let indexed = self.text.index.commit(&mut index, Some(last_seq));
            let stored_ok = sled_side.join().unwrap_or_else(|_| {
                Err(sled::Error::ReportableBug(
                    "the item store writer thread panicked".into(),
                ))
            });
            (stored_ok, indexed)
        });
        drop(index);
        match (stored_ok, indexed) {
            (Ok(()), Ok(())) => {}
            // Nothing acknowledged; index documents that got committed are orphans the
            // catalog never admits.
            (Err(e), _) => return Err(e.into()),
            (Ok(()), Err(e)) => {
                // Take the items back out of sled so a failed write stores nothing; a crash
                // before this leaves them in sled, and the catch-up on open indexes them.
                let mut undo = sled::Batch::default();
                for item in &stored {
                    undo.remove(&item_key(&item.id)[..]);
                }
                undo.remove(&blob_key(first_seq)[..]);
                if let Err(undo_err) = self
                    .db
                    .apply_batch(undo)
                    .and_then(|()| self.flush_durable())
                {
                    tracing::error!(error = %undo_err, "could not undo a write whose indexing failed; it will be indexed on the next open");
                }
                return Err(e);
            }
        }
        phases.reset();
        let grew_large = self.publish(&mut stored, &vectors);
        self.applied_seq.store(last_seq, Ordering::Release);
        if flush {
            self.synced(last_seq);
        }
        drop(writer);
        self.published(last_seq, grew_large);
        phases.lap("publish");
        Ok(stored)
    }

    /// Records that sled was flushed after every item up to `seq` was applied.
    fn synced(&self, seq: u64) {
        let mut sync = self.sync.lock();
        sync.durable = sync.durable.max(seq);
    }

    fn read(&self, id: &ItemId) -> Result<Option<MemoryItem>> {
        let Some(mut item) = read_item(&self.path, &self.db, id)? else {
            return Ok(None);
        };
        let state = self.shared.state.read();
        match state.catalog.slot_of_id(id) {
            Some(slot) => item.superseded = state.catalog.entry(slot).superseded,
            // In sled but not in the catalog: a write that is not yet published (or failed).
            None => return Ok(None),
        }
        Ok(Some(item))
    }

    /// Reads the items of catalog `slots`: looks them up under `state` (the catalog's read
    /// lock), releases it, then reads and decodes them from sled, so that part keeps no writer
    /// waiting. An item whose namespace was deleted since the lookup is `None`; one still in
    /// the catalog but missing from sled is corruption.
    fn read_slots(
        &self,
        state: RwLockReadGuard<'_, State>,
        slots: &[u32],
    ) -> Result<Vec<Option<MemoryItem>>> {
        let refs: Vec<(ItemId, bool)> = slots
            .iter()
            .map(|&slot| {
                let entry = state.catalog.entry(slot);
                (entry.id, entry.superseded)
            })
            .collect();
        drop(state);
        refs.into_iter()
            .map(
                |(id, superseded)| match read_item(&self.path, &self.db, &id)? {
                    Some(mut item) => {
                        item.superseded = superseded;
                        Ok(Some(item))
                    }
                    None if self.shared.state.read().catalog.slot_of_id(&id).is_some() => {
                        Err(MemoryError::Corrupt {
                            path: self.path.clone(),
                            reason: format!("item {id} is in the catalog but not in sled"),
                        })
                    }
                    None => Ok(None),
                },
            )
            .collect()
    }

    /// Keys of the embedding blobs that hold only items of `namespace` (about to be deleted) or
    /// items already gone.
    fn orphaned_blobs(&self, namespace: &str, doomed: &[(ItemId, u64)]) -> Result<Vec<[u8; 9]>> {
        let mut firsts: Vec<(u64, usize)> = Vec::new();
        for &(_, seq) in doomed {
            if firsts
                .last()
                .is_some_and(|&(f, c)| seq >= f && seq < f + c as u64)
            {
                continue;
            }
            let Some(entry) = self
                .db
                .range(blob_key(0)..=blob_key(seq))
                .next_back()
                .transpose()?
            else {
                continue;
            };
            let (key, bytes) = entry;
            let first = u64::from_be_bytes(key[1..9].try_into().expect("9-byte key"));
            let count = bytes.get(0..4).map_or(0, |b| {
                u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
            });
            if seq >= first + count as u64 {
                // Written without a blob (a recomputable embedder).
                continue;
            }
            if !firsts.iter().any(|&(f, _)| f == first) {
                firsts.push((first, count));
            }
        }
        let state = self.shared.state.read();
        let ns = state.catalog.syms.get(namespace);
        Ok(firsts
            .into_iter()
            .filter(|&(first, count)| {
                (first..first + count as u64).all(|seq| {
                    state
                        .catalog
                        .slot_of_seq(seq)
                        .is_none_or(|slot| state.catalog.entry(slot).ns == ns)
                })
            })
            .map(|(first, _)| blob_key(first))
            .collect())
    }

    /// BM25 top-k as (slot, score).
    fn bm25(
        &self,
        state: &State,
        filter: &CompiledFilter,
        raw: &Filter,
        text: &str,
        k: usize,
    ) -> Result<Vec<(u32, f32)>> {
        let namespaces = state.catalog.namespaces_of(filter);
        // Push the namespace restriction into tantivy only when it narrows the search: scoring
        // the intersection costs more than checking the catalog when the namespaces hold most
        // of the store.
        let in_ns = state.catalog.count_in(&namespaces);
        let ns_names: Vec<&str> = if raw.namespaces.is_empty() || in_ns * 2 > state.catalog.len() {
            Vec::new()
        } else {
            raw.namespaces.iter().map(String::as_str).collect()
        };
        let kind_names: Vec<&str> = raw.kinds.iter().map(|k| k.as_str()).collect();
        let pushdown = Pushdown {
            namespaces: &ns_names,
            kinds: &kind_names,
        };
        let catalog = &state.catalog;
        let hits = self.text.index.search(text, &pushdown, k, |seq| {
            catalog.matches_seq(filter, seq).is_some()
        })?;
        Ok(hits
            .into_iter()
            .filter_map(|(seq, score)| Some((catalog.slot_of_seq(seq)?, score)))
            .collect())
    }

    fn vector_hits(
        &self,
        state: &State,
        filter: &CompiledFilter,
        query: &SearchQuery<'_>,
        k: usize,
    ) -> Result<Vec<(u32, f32)>> {
        let owned;
        let vector = match query.vector {
            Some(v) => {
                if v.len() != self.embedder.dimension() {
                    return Err(MemoryError::invalid(
                        "query vector",
                        format!(
                            "has {} dimensions; the store's embedder `{}` makes {}",
                            v.len(),
                            self.embedder.name(),
                            self.embedder.dimension()
                        ),
                    ));
                }
                v
            }
            None => {
                owned = self.embedder.embed_query(query.text)?;
                &owned[..]
            }
        };
        let namespaces = state.catalog.namespaces_of(filter);
        Ok(state.vectors.search(
            &state.catalog,
            filter,
            &namespaces,
            vector,
            k,
            query
                .ef
                .unwrap_or_else(|| self.ef_search.load(Ordering::Relaxed)),
        ))
    }
}

impl MemoryStore for EmbeddedStore {
    fn put_batch(&self, items: Vec<NewItem>) -> Result<Vec<MemoryItem>> {
        self.write(items, true)
    }

    fn put_batch_deferred(&self, items: Vec<NewItem>) -> Result<Vec<MemoryItem>> {
        self.write(items, false)
    }

    fn is_durable(&self, seq: u64) -> bool {
        self.durability != Durability::Fsync || self.sync.lock().durable >= seq
    }

    /// One item, a recomputable embedding, no long write under way: the write is tokens, a
    /// hash embedding, text analysis and a few sled inserts, tens of microseconds. (A
    /// multi-item batch is not quick: sled's batches wait for any flush in progress. Once one
    /// has run, sled's inserts also take the shared side of the lock such a batch holds, so a
    /// quick write can then wait behind one for a flush, about a millisecond: accepted.)
    fn quick_write(&self, items: usize) -> bool {
        items <= 1 && self.embedder.recomputable() && self.long_writes.load(Ordering::Acquire) == 0
    }

    fn make_durable(&self, seq: u64) -> Result<()> {
        if self.durability != Durability::Fsync || seq == 0 {
            return Ok(());
        }
        // Only what was applied can be flushed (a larger number was never handed out).
        self.sync_through(seq.min(self.applied_seq.load(Ordering::Acquire)))
    }

    fn get(&self, id: ItemId) -> Result<Option<MemoryItem>> {
        self.read(&id)
    }

    fn list(&self, filter: &Filter, page: &Page) -> Result<Vec<MemoryItem>> {
        let state = self.shared.state.read();
        let compiled = state.catalog.compile(filter);
        let namespaces = state.catalog.namespaces_of(&compiled);
        let catalog = &state.catalog;
        let seq_of = |s: &u32| catalog.entry(*s).seq;
        // Each namespace's slots are in write order: scan from the cursor towards the wanted
        // end and stop after `limit` matches, then merge the namespaces.
        let mut slots: Vec<u32> = Vec::new();
        for ns in &namespaces {
            let Some(entries) = catalog.namespaces.get(ns).filter(|e| e.may_hold(&compiled)) else {
                continue;
            };
            let all = &entries.slots[..];
            let admitted = |s: &&u32| catalog.matches(&compiled, catalog.entry(**s));
            if page.newest_first {
                let end = page.after_seq.map_or(all.len(), |after| {
                    all.partition_point(|s| seq_of(s) < after)
                });
                slots.extend(all[..end].iter().rev().filter(admitted).take(page.limit));
            } else {
                let start = page
                    .after_seq
                    .map_or(0, |after| all.partition_point(|s| seq_of(s) <= after));
                slots.extend(all[start..].iter().filter(admitted).take(page.limit));
            }
        }
        if namespaces.len() > 1 {
            if page.newest_first {
                slots.sort_unstable_by_key(|s| std::cmp::Reverse(seq_of(s)));
            } else {
                slots.sort_unstable_by_key(seq_of);
            }
        }
        slots.truncate(page.limit);
        Ok(self
            .read_slots(state, &slots)?
            .into_iter()
            .flatten()
            .collect())
    }

    fn count(&self, filter: &Filter) -> Result<usize> {
        let state = self.shared.state.read();
        let compiled = state.catalog.compile(filter);
        let namespaces = state.catalog.namespaces_of(&compiled);
        Ok(namespaces
            .iter()
            .filter_map(|ns| state.catalog.namespaces.get(ns))
            .filter(|n| n.may_hold(&compiled))
            .flat_map(|n| n.slots.iter())
            .filter(|&&s| state.catalog.matches(&compiled, state.catalog.entry(s)))
            .count())
    }

    fn history(&self, namespace: &str, key: &str) -> Result<Vec<MemoryItem>> {
        let state = self.shared.state.read();
        let slots = state.catalog.history(namespace, key);
        Ok(self
            .read_slots(state, &slots)?
            .into_iter()
            .flatten()
            .collect())
    }

    fn search(&self, query: &SearchQuery<'_>, filter: &Filter, k: usize) -> Result<Vec<SearchHit>> {
        if k == 0 {
            return Ok(Vec::new());
        }
        // Embed before taking the lock.
        let owned_vector;
        let query = if query.mode != SearchMode::Bm25 && query.vector.is_none() {
            owned_vector = self.embedder.embed_query(query.text)?;
            SearchQuery {
                vector: Some(&owned_vector),
                ..query.clone()
            }
        } else {
            query.clone()
        };
        let state = self.shared.state.read();
        // No search can return more than the store holds; this also keeps a huge `k` from
        // sizing buffers after it.
        let k = k.min(state.catalog.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let compiled = state.catalog.compile(filter);
        let ranked: Vec<(u32, f32, Option<f32>, Option<f32>)> = match query.mode {
            SearchMode::Bm25 => self
                .bm25(&state, &compiled, filter, query.text, k)?
                .into_iter()
                .map(|(s, score)| (s, score, Some(score), None))
                .collect(),
            SearchMode::Vector => self
                .vector_hits(&state, &compiled, &query, k)?
                .into_iter()
                .map(|(s, score)| (s, score, None, Some(score)))
                .collect(),
            SearchMode::Hybrid => {
                let depth = (k * 2).max(20);
                let lexical = self.bm25(&state, &compiled, filter, query.text, depth)?;
                let semantic = self.vector_hits(&state, &compiled, &query, depth)?;
                fuse(&state.catalog, &lexical, &semantic, k)
            }
        };
        let slots: Vec<u32> = ranked.iter().map(|r| r.0).collect();
        let items = self.read_slots(state, &slots)?;
        Ok(items
            .into_iter()
            .zip(ranked)
            .filter_map(|(item, (_, score, bm25, cosine))| {
                Some(SearchHit {
                    item: item?,
                    score,
                    bm25,
                    cosine,
                })
            })
            .collect())
    }

    fn embeddings(&self, ids: &[ItemId]) -> Result<Vec<Option<Vec<f32>>>> {
        let state = self.shared.state.read();
        Ok(ids
            .iter()
            .map(|id| {
                let slot = state.catalog.slot_of_id(id)?;
                let e = state.catalog.entry(slot);
                state.vectors.vector(e.ns, e.row).map(<[f32]>::to_vec)
            })
            .collect())
    }

    fn delete_namespace(&self, namespace: &str) -> Result<usize> {
        let _long = LongWrite::enter(self);
        let writer = self.writer.lock();
        let ids: Vec<(ItemId, u64)> = {
            let state = self.shared.state.read();
            let ns = state.catalog.syms.get(namespace);
            state
                .catalog
                .namespaces
                .get(&ns)
                .map(|n| {
                    n.slots
                        .iter()
                        .map(|&s| {
                            let e = state.catalog.entry(s);
                            (e.id, e.seq)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        // 1. sled: remove items and embedding blobs no live item needs any more, and leave a
        //    marker until the text index has caught up.
        let mut batch = sled::Batch::default();
        for (id, _) in &ids {
            batch.remove(&item_key(id)[..]);
        }
        for key in self.orphaned_blobs(namespace, &ids)? {
            batch.remove(&key[..]);
        }
        batch.insert(deletion_key(namespace), &[][..]);
        self.db.apply_batch(batch)?;
        self.flush_durable()?;
        // 2. Unpublish.
        {
            let mut state = self.shared.state.write();
            let ns = state.catalog.syms.get(namespace);
            state.catalog.remove_namespace(namespace);
            state.vectors.remove_namespace(ns);
        }
        super::vectors::saved::remove(&self.path.join("graphs"), namespace);
        // 3. Text index, then drop the marker. A crash before this is repaired on open; until
        // then stale documents are invisible because the catalog no longer admits them.
        let watermark = writer.next_seq - 1;
        let mut index = self.text.writer.lock();
        self.text.index.delete_namespace(&index, namespace);
        self.text.index.commit(&mut index, Some(watermark))?;
        drop(index);
        self.db.remove(deletion_key(namespace))?;
        if self.durability == Durability::Fsync {
            self.flush_durable()?;
        }
        Ok(ids.len())
    }

    fn namespaces(&self) -> Result<Vec<NamespaceStats>> {
        let state = self.shared.state.read();
        let mut out: Vec<NamespaceStats> = state
            .catalog
            .namespaces
            .iter()
            .map(|(ns, entries)| NamespaceStats {
                namespace: state.catalog.syms.name(*ns).to_owned(),
                items: entries.slots.len(),
            })
            .collect();
        out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(out)
    }

    fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    fn token_counter(&self) -> &Arc<dyn TokenCounter> {
        &self.token_counter
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Stop the committer, then commit the text index's tail, so the next open has nothing
        // to catch up.
        self.text.shutdown.store(true, Ordering::Release);
        self.text.wake_committer();
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
        {
            let next_seq = self.writer.get_mut().next_seq;
            let mut index = self.text.writer.lock();
            if self.text.index.has_tail()
                && let Err(e) = self.text.index.commit(&mut index, Some(next_seq - 1))
            {
                tracing::warn!(path = %self.path.display(), error = %e, "committing the text index on close (it will catch up on the next open)");
            }
        }
        self.shared.shutdown.store(true, Ordering::Release);
        self.wake_builder();
        if let Some(handle) = self.builder.take() {
            let _ = handle.join();
        }
        {
            let state = self.shared.state.read();
            if let Err(e) = super::vectors::saved::save(
                &self.path.join("graphs"),
                &state.vectors,
                &state.catalog,
            ) {
                tracing::warn!(path = %self.path.display(), error = %e, "saving vector graphs (they will be rebuilt)");
            }
        }
        if let Err(e) = self.flush_durable() {
            tracing::warn!(path = %self.path.display(), error = %e, "flushing the store on close");
        }
    }
}

/// Reciprocal rank fusion: each list contributes 1 / (RRF_K + rank).
fn fuse(
    catalog: &Catalog,
    lexical: &[(u32, f32)],
    semantic: &[(u32, f32)],
    k: usize,
) -> Vec<(u32, f32, Option<f32>, Option<f32>)> {
    let mut fused: HashMap<u32, (f32, Option<f32>, Option<f32>)> = HashMap::new();
    for (rank, &(slot, score)) in lexical.iter().enumerate() {
        let e = fused.entry(slot).or_default();
        e.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        e.1 = Some(score);
    }
    for (rank, &(slot, score)) in semantic.iter().enumerate() {
        let e = fused.entry(slot).or_default();
        e.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        e.2 = Some(score);
    }
    let mut out: Vec<(u32, f32, Option<f32>, Option<f32>)> = fused
        .into_iter()
        .map(|(slot, (score, b, c))| (slot, score, b, c))
        .collect();
    out.sort_unstable_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| catalog.entry(a.0).seq.cmp(&catalog.entry(b.0).seq))
    });
    out.truncate(k);
    out
}

/// Embeds the batch's contents, splitting large batches across threads.
fn embed_parallel(embedder: &dyn Embedder, items: &[MemoryItem]) -> Result<Vec<Vec<f32>>> {
    const CHUNK: usize = 256;
    let texts: Vec<&str> = items.iter().map(|i| i.content.as_str()).collect();
    let vectors: Vec<Vec<f32>> = if texts.len() <= CHUNK {
        embedder.embed_batch(&texts)?
    } else {
        let chunks: Vec<Vec<Vec<f32>>> = texts
            .par_chunks(CHUNK)
            .map(|chunk| embedder.embed_batch(chunk))
            .collect::<std::result::Result<_, _>>()?;
        chunks.into_iter().flatten().collect()
    };
    let dim = embedder.dimension();
    if vectors.len() != texts.len() || vectors.iter().any(|v| v.len() != dim) {
        return Err(MemoryError::invalid(
            "embedder output",
            format!(
                "embedder `{}` returned {} vectors for {} texts (or a vector of the wrong size)",
                embedder.name(),
                vectors.len(),
                texts.len()
            ),
        ));
    }
    Ok(vectors)
}

/// Writes (or upgrades) the store's marker with this build's schema version.
fn write_marker(path: &Path) -> Result<()> {
    let marker = serde_json::to_vec_pretty(&Marker {
        format: FORMAT.into(),
        schema_version: SCHEMA_VERSION,
    })
    .expect("marker serialises");
    write_synced(&path.join(MARKER), &marker)
}

/// Validates the directory: returns whether the store is being created, and its schema version.
fn prepare_directory(path: &Path) -> Result<(bool, u32)> {
    if path.exists() && !path.is_dir() {
        return Err(MemoryError::ForeignDirectory {
            path: path.to_owned(),
        });
    }
    let marker_path = path.join(MARKER);
    match std::fs::read(&marker_path) {
        Ok(bytes) => {
            let marker: Marker =
                serde_json::from_slice(&bytes).map_err(|e| MemoryError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("{MARKER} marker is unreadable: {e}"),
                })?;
            if marker.format != FORMAT {
                return Err(MemoryError::ForeignDirectory {
                    path: path.to_owned(),
                });
            }
            if !(OLDEST_SCHEMA..=SCHEMA_VERSION).contains(&marker.schema_version) {
                return Err(MemoryError::UnsupportedSchema {
                    path: path.to_owned(),
                    found: marker.schema_version,
                    supported: SCHEMA_VERSION,
                });
            }
            Ok((false, marker.schema_version))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.exists() {
                let mut entries = std::fs::read_dir(path)
                    .map_err(|e| MemoryError::io(format!("reading {}", path.display()), e))?;
                if entries.next().is_some() {
                    return Err(MemoryError::ForeignDirectory {
                        path: path.to_owned(),
                    });
                }
            }
            std::fs::create_dir_all(path)
                .map_err(|e| MemoryError::io(format!("creating {}", path.display()), e))?;
            write_marker(path)?;
            Ok((true, SCHEMA_VERSION))
        }
        Err(e) => Err(MemoryError::io(
            format!("reading {}", marker_path.display()),
            e,
        )),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let ctx = || format!("writing {}", path.display());
    let mut f = std::fs::File::create(path).map_err(|e| MemoryError::io(ctx(), e))?;
    f.write_all(bytes).map_err(|e| MemoryError::io(ctx(), e))?;
    f.sync_all().map_err(|e| MemoryError::io(ctx(), e))?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn open_sled(path: &Path, options: &StoreOptions) -> Result<sled::Db> {
    let flush = match options.durability {
        Durability::Fsync => Some(1000),
        Durability::Background { flush_every_ms } => Some(flush_every_ms.max(1)),
    };
    sled::Config::new()
        .path(path.join("items"))
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(flush)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                MemoryError::Locked {
                    path: path.to_owned(),
                    reason: io.to_string(),
                }
            }
            sled::Error::Io(io) => {
                MemoryError::io(format!("opening {}", path.join("items").display()), io)
            }
            other => MemoryError::Corrupt {
                path: path.to_owned(),
                reason: format!("item store: {other}"),
            },
        })
}

/// Records the embedder and token counter on creation; checks them on every later open.
fn check_meta(path: &Path, db: &sled::Db, options: &StoreOptions, created: bool) -> Result<()> {
    let embedder = format!(
        "{}/{}",
        options.embedder.name(),
        options.embedder.dimension()
    );
    let counter = options.token_counter.name().to_owned();
    for (name, what, given) in [
        ("embedder", "embedder", embedder),
        ("token_counter", "token counter", counter),
    ] {
        match db.get(meta_key(name))? {
            Some(stored) => {
                let stored = String::from_utf8_lossy(&stored).into_owned();
                if stored != given {
                    return Err(MemoryError::ConfigMismatch {
                        path: path.to_owned(),
                        what,
                        stored,
                        given,
                    });
                }
            }
            None if created || db.is_empty() => {
                db.insert(meta_key(name), given.as_bytes())?;
            }
            None => {
                return Err(MemoryError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("store metadata `{name}` is missing"),
                });
            }
        }
    }
    db.flush()?;
    Ok(())
}

fn decode_item(path: &Path, bytes: &[u8]) -> Result<MemoryItem> {
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => rmp_serde::from_slice(rest).map_err(|e| MemoryError::Corrupt {
            path: path.to_owned(),
            reason: format!("undecodable item record: {e}"),
        }),
        Some((v, _)) => Err(MemoryError::Corrupt {
            path: path.to_owned(),
            reason: format!("item record of unknown version {v}"),
        }),
        None => Err(MemoryError::Corrupt {
            path: path.to_owned(),
            reason: "empty item record".into(),
        }),
    }
}

fn read_item(path: &Path, db: &sled::Db, id: &ItemId) -> Result<Option<MemoryItem>> {
    match db.get(item_key(id))? {
        Some(bytes) => decode_item(path, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Loads every item's metadata and vector into `state`; returns the highest sequence number.
/// Vectors come from the embedding blobs; items no blob holds get theirs recomputed from
/// their text when the embedder is recomputable (see [`Embedder::recomputable`]).
fn load(path: &Path, db: &sled::Db, state: &mut State, embedder: &dyn Embedder) -> Result<u64> {
    let dim = embedder.dimension();
    let corrupt = |reason: String| MemoryError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    // Items, without their text (the catalog needs only metadata), in write order.
    let mut items: Vec<MemoryItem> = Vec::new();
    for entry in db.scan_prefix(b"i") {
        let (_, bytes) = entry?;
        let mut item = decode_item(path, &bytes)?;
        item.content = String::new();
        item.payload = None;
        items.push(item);
    }
    items.sort_unstable_by_key(|item| item.seq);

    // Embedding blobs, also in write order: walk both together.
    let State {
        catalog,
        vectors: vindex,
    } = state;
    let mut add = |item: &MemoryItem, vector: &[f32]| {
        let ns: Sym = catalog.syms.intern(&item.namespace);
        let row = vindex.next_row(ns);
        let slot = catalog.insert(item, row);
        vindex.push(ns, slot, vector);
    };
    let mut at = 0;
    for entry in db.scan_prefix(b"b") {
        let (key, bytes) = entry?;
        let blob = Blob::parse(&key, &bytes, dim)
            .ok_or_else(|| corrupt(format!("embedding blob {key:?} is malformed")))?;
        // Items written before this blob's batch without a blob of their own.
        let before = items[at..].partition_point(|item| item.seq < blob.first_seq);
        at += recompute(path, db, embedder, &items[at..at + before], &mut add)?;
        while let Some(item) = items.get(at) {
            let index = (item.seq - blob.first_seq) as usize;
            if index >= blob.count {
                break;
            }
            if blob.id(index) != item.id {
                return Err(corrupt(format!(
                    "the embedding stored for sequence {} belongs to another item than {}",
                    item.seq, item.id
                )));
            }
            add(item, &blob.vector(index));
            at += 1;
        }
    }
    recompute(path, db, embedder, &items[at..], &mut add)?;
    Ok(items.last().map_or(0, |i| i.seq))
}

/// Items whose vectors recompute at a time when a store opens.
const RECOMPUTE_CHUNK: usize = 4096;

/// Recomputes the vectors of `items` (which no embedding blob holds) from their text, read
/// back from sled, and adds them in order; returns how many. An error if the embedder is not
/// recomputable: such an item has lost its embedding.
fn recompute(
    path: &Path,
    db: &sled::Db,
    embedder: &dyn Embedder,
    items: &[MemoryItem],
    add: &mut impl FnMut(&MemoryItem, &[f32]),
) -> Result<usize> {
    let Some(first) = items.first() else {
        return Ok(0);
    };
    if !embedder.recomputable() {
        return Err(MemoryError::Corrupt {
            path: path.to_owned(),
            reason: format!("item {} has no embedding", first.id),
        });
    }
    for chunk in items.chunks(RECOMPUTE_CHUNK) {
        let full: Vec<MemoryItem> = chunk
            .par_iter()
            .map(|item| {
                read_item(path, db, &item.id)?.ok_or_else(|| MemoryError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("item {} vanished while the store opened", item.id),
                })
            })
            .collect::<Result<_>>()?;
        let vectors = embed_parallel(embedder, &full)?;
        for (item, vector) in chunk.iter().zip(&vectors) {
            add(item, vector);
        }
    }
    Ok(items.len())
}

/// The background builder: keeps each large namespace's HNSW graph caught up with its rows.
/// The text index committer: commits the tail whenever a writer finds it full, so commits
/// (milliseconds to hundreds of milliseconds) stay off the write path. A failed commit keeps
/// the tail (searchable) and is retried after a pause.
fn commit_text(text: &Text) {
    let mut failures = 0u32;
    loop {
        {
            let mut wake = text.wake.lock();
            while !*wake && !text.shutdown.load(Ordering::Acquire) {
                text.wake_cv.wait(&mut wake);
            }
            *wake = false;
        }
        if text.shutdown.load(Ordering::Acquire) {
            return;
        }
        let mut index = text.writer.lock();
        match text.index.commit(&mut index, None) {
            Ok(()) => failures = 0,
            Err(e) => {
                drop(index);
                failures += 1;
                tracing::error!(error = %e, failures, "committing the text index (the tail stays searchable; retrying)");
                let pause = Duration::from_millis(100u64 << failures.min(6));
                let mut wake = text.wake.lock();
                if !text.shutdown.load(Ordering::Acquire) {
                    text.wake_cv.wait_for(&mut wake, pause);
                }
                *wake = true;
            }
        }
    }
}

fn build_graphs(shared: &Shared) {
    loop {
        {
            let mut wake = shared.wake.lock();
            while !*wake && !shared.shutdown.load(Ordering::Acquire) {
                shared.wake_cv.wait(&mut wake);
            }
            *wake = false;
        }
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            // While writes stream in, leave the cores to them unless the unindexed tail (which
            // searches scan exactly) has grown past GRAPH_TAIL_CAP.
            let tail = {
                let state = shared.state.read();
                state
                    .vectors
                    .ann_backlog()
                    .iter()
                    .map(|ns| {
                        let space = &state.vectors.spaces[ns];
                        space.slots.len() - space.ann_rows.load(Ordering::Acquire)
                    })
                    .max()
                    .unwrap_or(0)
            };
            if tail == 0 {
                break;
            }
            let quiet_for = if shared.writing.load(Ordering::Acquire) > 0 {
                0
            } else {
                now_ms().saturating_sub(shared.last_write_ms.load(Ordering::Acquire))
            };
            if quiet_for < GRAPH_QUIET_MS && tail < GRAPH_TAIL_CAP {
                std::thread::sleep(Duration::from_millis(GRAPH_QUIET_MS / 2));
                continue;
            }
            // Insert one chunk under the read lock: searches go on, writers wait for the chunk.
            // When writes have paused, large backlogs go in big chunks, which the graph builds
            // on quantised vectors; while they stream in, small chunks keep writers moving.
            let quiet = quiet_for >= GRAPH_QUIET_MS;
            let state = shared.state.read();
            for ns in state.vectors.ann_backlog() {
                let space = &state.vectors.spaces[&ns];
                let Some(ann) = space.ann.as_ref() else {
                    continue;
                };
                let done = space.ann_rows.load(Ordering::Acquire);
                let backlog = space.slots.len() - done;
                let chunk = if quiet && backlog >= GRAPH_BULK_CHUNK {
                    GRAPH_BULK_CHUNK
                } else {
                    GRAPH_CHUNK
                };
                let end = done + chunk.min(backlog);
                if quiet {
                    ann.insert_range_parallel(&space.data, done as u32..end as u32);
                } else {
                    // Writes are streaming in: one core for the graph, the other for them.
                    for row in done..end {
                        ann.insert(&space.data, row as u32);
                    }
                }
                space.ann_rows.store(end, Ordering::Release);
            }
        }
    }
}

fn now_ms() -> u64 {
    Timestamp::now().0
}

/// Counts a write that holds the writer lock for long, from before it waits for the lock until
/// it releases it (see `EmbeddedStore::long_writes`).
struct LongWrite<'a>(&'a EmbeddedStore);

impl<'a> LongWrite<'a> {
    fn enter(store: &'a EmbeddedStore) -> Self {
        store.long_writes.fetch_add(1, Ordering::AcqRel);
        LongWrite(store)
    }
}

impl Drop for LongWrite<'_> {
    fn drop(&mut self) {
        self.0.long_writes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a small write until its batch is applied (or it fails); then wakes a flushing writer
/// that waits for it.
struct Unapplied<'a>(&'a EmbeddedStore);

impl<'a> Unapplied<'a> {
    fn enter(store: &'a EmbeddedStore) -> Self {
        store.unapplied.fetch_add(1, Ordering::SeqCst);
        Unapplied(store)
    }
}

impl Drop for Unapplied<'_> {
    fn drop(&mut self) {
        let store = self.0;
        store.unapplied.fetch_sub(1, Ordering::SeqCst);
        if store.gathering.load(Ordering::SeqCst) {
            // Under the lock: the flushing writer is either before its check of `unapplied`
            // (and sees the decrement) or waiting (and gets the notification).
            let _sync = store.sync.lock();
            store.gather_cv.notify_one();
        }
    }
}

/// Counts a write in progress for the graph builder (see `Shared::writing`); on exit the write
/// counts as the latest one.
struct Writing<'a>(&'a Shared);

impl<'a> Writing<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.writing.fetch_add(1, Ordering::AcqRel);
        Writing(shared)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.last_write_ms.store(now_ms(), Ordering::Release);
        self.0.writing.fetch_sub(1, Ordering::AcqRel);
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{EmbedError, HashingEmbedder};
    use crate::item::Kind;
    use crate::store::{SearchMode, SearchQuery};

    /// The hashing embedder under the same name, but not recomputable: its stores keep their
    /// embeddings in blobs (as every store did before recomputable embedders).
    struct Stored(HashingEmbedder);

    impl Embedder for Stored {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn dimension(&self) -> usize {
            self.0.dimension()
        }
        fn embed_batch(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
            self.0.embed_batch(texts)
        }
    }

    fn open_with(dir: &Path, embedder: Arc<dyn Embedder>) -> Result<EmbeddedStore> {
        EmbeddedStore::open(
            dir,
            StoreOptions::new(embedder, crate::tokens::default_token_counter()),
        )
    }

    fn hashing() -> Arc<dyn Embedder> {
        Arc::new(HashingEmbedder::new(64).unwrap())
    }

    /// An embedder whose vectors (of `dimension`) are stored, not recomputed.
    fn stored(dimension: usize) -> Arc<dyn Embedder> {
        Arc::new(Stored(HashingEmbedder::new(dimension).unwrap()))
    }

    /// A single item, a small and a large batch (the three write paths) of documents in
    /// `namespace`.
    fn write_three_ways(store: &EmbeddedStore, namespace: &str) {
        let doc = |i: usize| {
            NewItem::new(
                namespace,
                Kind::Document,
                format!(
                    "{namespace} document {i} about river {} and town {}",
                    i % 13,
                    i % 5
                ),
            )
        };
        store.put(doc(0)).unwrap();
        store.put_batch((1..4).map(doc).collect()).unwrap();
        store
            .put_batch((4..4 + PARALLEL_COMMIT_MIN + 10).map(doc).collect())
            .unwrap();
    }

    /// Vector hits (ids and cosines) of a few queries over `namespace`.
    fn vector_hits(store: &EmbeddedStore, namespace: &str) -> Vec<(ItemId, u32)> {
        ["river 3 town 1", "document 40", "town 4"]
            .iter()
            .flat_map(|q| {
                store
                    .search(
                        &SearchQuery::new(q, SearchMode::Vector),
                        &Filter::namespace(namespace),
                        10,
                    )
                    .unwrap()
            })
            .map(|h| (h.item.id, h.cosine.unwrap().to_bits()))
            .collect()
    }

    /// Searches and listings read items from sled after releasing the catalog's lock; an
    /// item the catalog still holds but sled lost is reported as corruption, not skipped.
    #[test]
    fn an_item_missing_from_sled_but_in_the_catalog_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), hashing()).unwrap();
        let kept = store
            .put(NewItem::new("ns", Kind::Evidence, "the river flows north"))
            .unwrap();
        let lost = store
            .put(NewItem::new("ns", Kind::Evidence, "the river flows south"))
            .unwrap();
        store.db.remove(item_key(&lost.id)).unwrap();

        let bm25 = SearchQuery::new("river south", SearchMode::Bm25);
        let err = store
            .search(&bm25, &Filter::namespace("ns"), 5)
            .unwrap_err();
        assert!(matches!(err, MemoryError::Corrupt { .. }), "{err}");
        let err = store
            .list(&Filter::namespace("ns"), &Page::default())
            .unwrap_err();
        assert!(matches!(err, MemoryError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&lost.id.to_string()), "{err}");

        // A deleted namespace's items are simply gone.
        store.delete_namespace("ns").unwrap();
        assert!(
            store
                .search(&bm25, &Filter::namespace("ns"), 5)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.get(kept.id).unwrap(), None);
    }

    /// Recent small writes wait in the text index's tail, shared by every namespace: a
    /// search filtered by namespace finds all of its own there and none of the others'.
    #[test]
    fn bm25_over_the_tail_keeps_to_the_filtered_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), hashing()).unwrap();
        for i in 0..6 {
            for namespace in ["north", "south", "west"] {
                store
                    .put(NewItem::new(
                        namespace,
                        Kind::Evidence,
                        format!("the river {i} flows past the town"),
                    ))
                    .unwrap();
            }
        }
        let hits = |filter: &Filter| -> Vec<String> {
            store
                .search(
                    &SearchQuery::new("river town", SearchMode::Bm25),
                    filter,
                    50,
                )
                .unwrap()
                .into_iter()
                .map(|h| h.item.namespace)
                .collect()
        };
        assert_eq!(hits(&Filter::namespace("south")), vec!["south"; 6]);
        assert!(hits(&Filter::namespace("east")).is_empty());
        let mut both = hits(&Filter::namespace("north").and_namespace("west"));
        both.sort();
        assert_eq!(both, [vec!["north"; 6], vec!["west"; 6]].concat());
    }

    fn blobs(store: &EmbeddedStore) -> usize {
        store.db.scan_prefix(b"b").count()
    }

    #[test]
    fn a_flush_waits_for_small_writes_under_way_up_to_the_commit_delay() {
        let dir = tempfile::tempdir().unwrap();
        let open = |delay: Duration| {
            let mut options = StoreOptions::new(hashing(), crate::tokens::default_token_counter());
            options.commit_delay = delay;
            EmbeddedStore::open(dir.path(), options).unwrap()
        };
        let note = |i: usize| vec![NewItem::new("ns", Kind::Note, format!("note {i}"))];
        // A lone writer never waits, however long the delay.
        let store = open(Duration::from_secs(600));
        let started = std::time::Instant::now();
        store.put_batch(note(0)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
        // With another small write under way, the flush waits for it to be applied...
        let flushes = store.write_flushes();
        let under_way = Unapplied::enter(&store);
        let started = std::time::Instant::now();
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                store.put_batch(note(1)).unwrap();
                started.elapsed()
            });
            std::thread::sleep(Duration::from_millis(200));
            assert!(
                !writer.is_finished(),
                "the flush waits for the write under way"
            );
            drop(under_way);
            let waited = writer.join().unwrap();
            assert!(waited >= Duration::from_millis(200), "{waited:?}");
            assert!(waited < Duration::from_secs(60), "{waited:?}");
        });
        assert_eq!(store.write_flushes(), flushes + 1);
        drop(store);
        // ...but no longer than the commit delay.
        let store = open(Duration::from_millis(100));
        let _under_way = Unapplied::enter(&store);
        let started = std::time::Instant::now();
        store.put_batch(note(2)).unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(60), "{waited:?}");
    }

    #[test]
    fn a_write_is_quick_only_alone_with_a_recomputable_embedding_and_no_long_write_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(&dir.path().join("hashing"), hashing()).unwrap();
        assert!(store.quick_write(0));
        assert!(store.quick_write(1));
        assert!(!store.quick_write(2), "sled batches wait for flushes");
        {
            let _large_batch = LongWrite::enter(&store);
            assert!(!store.quick_write(1), "it would wait for the long write");
        }
        assert!(store.quick_write(1));
        // A large batch counts while it runs (and not after).
        let items: Vec<NewItem> = (0..PARALLEL_COMMIT_MIN)
            .map(|i| NewItem::new("ns", Kind::Document, format!("document {i}")))
            .collect();
        store.put_batch(items).unwrap();
        assert_eq!(store.long_writes.load(Ordering::Acquire), 0);
        assert!(store.quick_write(1));

        let store = open_with(&dir.path().join("stored"), stored(8)).unwrap();
        assert!(
            !store.quick_write(1),
            "stored embeddings may come from a model"
        );
    }

    #[test]
    fn deferred_writes_are_visible_at_once_and_durable_with_the_next_durable_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), hashing()).unwrap();
        let flushes = store.write_flushes();
        let small = store
            .put_batch_deferred(vec![NewItem::new("ns", Kind::Task, "deferred river task")])
            .unwrap();
        let large = store
            .put_batch_deferred(
                (0..PARALLEL_COMMIT_MIN + 3)
                    .map(|i| NewItem::new("bulk", Kind::Note, format!("bulk note {i}")))
                    .collect(),
            )
            .unwrap();
        assert_eq!(store.write_flushes(), flushes, "no flush of their own");
        let last = large.last().unwrap().seq;
        assert!(!store.is_durable(small[0].seq) && !store.is_durable(last));
        // Visible to the very next read and search, like any write.
        assert_eq!(
            store.get(small[0].id).unwrap().unwrap().content,
            "deferred river task"
        );
        let hits = store
            .search(
                &SearchQuery::new("river", SearchMode::Bm25),
                &Filter::namespace("ns"),
                5,
            )
            .unwrap();
        assert_eq!(hits.first().map(|h| h.item.id), Some(small[0].id));
        assert_eq!(
            store.count(&Filter::namespace("bulk")).unwrap(),
            large.len()
        );
        // A durable write flushes once, and that covers the deferred ones.
        store
            .put_batch(vec![NewItem::new("ns", Kind::Note, "durable")])
            .unwrap();
        assert_eq!(store.write_flushes(), flushes + 1);
        assert!(store.is_durable(last));
        // make_durable flushes only what is not durable yet.
        let next = store
            .put_batch_deferred(vec![NewItem::new("ns", Kind::Note, "one more")])
            .unwrap();
        store.make_durable(last).unwrap();
        assert_eq!(store.write_flushes(), flushes + 1);
        store.make_durable(next[0].seq).unwrap();
        assert_eq!(store.write_flushes(), flushes + 2);
        assert!(store.is_durable(next[0].seq));
        drop(store);
        let store = open_with(dir.path(), hashing()).unwrap();
        assert!(store.get(small[0].id).unwrap().is_some());
        assert_eq!(
            store.count(&Filter::namespace("bulk")).unwrap(),
            large.len()
        );
        assert_eq!(store.count(&Filter::namespace("ns")).unwrap(), 3);
    }

    #[test]
    fn recomputable_embeddings_are_not_stored_and_come_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), hashing()).unwrap();
        write_three_ways(&store, "ns");
        let before = vector_hits(&store, "ns");
        assert_eq!(before.len(), 30);
        assert_eq!(blobs(&store), 0, "no embedding stored");
        drop(store);
        let store = open_with(dir.path(), hashing()).unwrap();
        assert_eq!(
            vector_hits(&store, "ns"),
            before,
            "the same vectors, recomputed"
        );
    }

    #[test]
    fn stores_with_stored_embeddings_open_and_take_new_writes_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), stored(64)).unwrap();
        write_three_ways(&store, "old");
        write_three_ways(&store, "older");
        assert_eq!(blobs(&store), 6);
        let old = vector_hits(&store, "old");
        drop(store);
        // A version 1 store, as earlier builds wrote them.
        std::fs::write(
            dir.path().join(MARKER),
            br#"{"format": "agentd-memory", "schema_version": 1}"#,
        )
        .unwrap();
        // Opened with the recomputable embedder: old items keep their stored vectors, new
        // ones are recomputed; the marker moves to version 2.
        let store = open_with(dir.path(), hashing()).unwrap();
        write_three_ways(&store, "new");
        let new = vector_hits(&store, "new");
        drop(store);
        let marker: Marker =
            serde_json::from_slice(&std::fs::read(dir.path().join(MARKER)).unwrap()).unwrap();
        assert_eq!(marker.schema_version, SCHEMA_VERSION);
        let store = open_with(dir.path(), hashing()).unwrap();
        assert_eq!(blobs(&store), 6);
        assert_eq!(vector_hits(&store, "old"), old);
        assert_eq!(vector_hits(&store, "new"), new);
        // Deleting a namespace removes its stored embeddings, not the others'.
        store.delete_namespace("new").unwrap();
        assert_eq!(blobs(&store), 6);
        store.delete_namespace("old").unwrap();
        assert_eq!(blobs(&store), 3);
        drop(store);
        let store = open_with(dir.path(), hashing()).unwrap();
        assert_eq!(
            store.count(&Filter::namespace("older")).unwrap(),
            4 + PARALLEL_COMMIT_MIN + 10
        );
        assert_eq!(store.count(&Filter::namespace("new")).unwrap(), 0);
    }

    /// A large batch's stored embeddings exceed sled's inline value size and go to a file of
    /// its own (sled's blob files, which the vendored sled syncs before the log names them).
    #[test]
    fn large_stored_embeddings_go_to_blob_files_and_come_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), stored(1024)).unwrap();
        write_three_ways(&store, "ns");
        let before = vector_hits(&store, "ns");
        drop(store);
        let blob_files = std::fs::read_dir(dir.path().join("items").join("blobs"))
            .unwrap()
            .count();
        assert!(
            blob_files > 0,
            "the large batch's embeddings went to a blob file"
        );
        let store = open_with(dir.path(), stored(1024)).unwrap();
        assert_eq!(vector_hits(&store, "ns"), before);
    }

    #[test]
    fn an_item_without_an_embedding_is_an_error_when_it_cannot_be_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(dir.path(), hashing()).unwrap();
        write_three_ways(&store, "ns");
        drop(store);
        let err = open_with(dir.path(), stored(64)).err().expect("an error");
        assert!(
            matches!(&err, MemoryError::Corrupt { reason, .. } if reason.contains("has no embedding")),
            "{err}"
        );
    }

    #[test]
    fn the_graph_builder_waits_while_a_write_is_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::new(
            Arc::new(HashingEmbedder::new(64).unwrap()),
            crate::tokens::default_token_counter(),
        );
        options.ann_min_rows = 100;
        let store = EmbeddedStore::open(dir.path(), options).unwrap();
        let backlog = || store.shared.state.read().vectors.ann_backlog().len();
        // A write that outlasts the quiet period (as a bulk batch on a loaded machine does):
        // held open across the batch below, and its "last write" dated long ago.
        let writing = Writing::enter(&store.shared);
        let items = (0..300)
            .map(|i| {
                NewItem::new(
                    "big",
                    Kind::Document,
                    format!("document {i} on topic {}", i % 7),
                )
            })
            .collect();
        store.put_batch(items).unwrap();
        store.shared.last_write_ms.store(0, Ordering::Release);
        store.wake_builder();
        std::thread::sleep(Duration::from_millis(GRAPH_QUIET_MS * 2));
        assert_eq!(backlog(), 1, "the graph waited for the write in progress");
        drop(writing);
        store.wait_for_vector_index();
        assert_eq!(backlog(), 0, "the graph caught up once writes went quiet");
    }
}
