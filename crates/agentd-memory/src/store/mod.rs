//! The memory store: the [`MemoryStore`] trait and its embedded implementation.
//!
//! The trait is what the router and the runtime program against; [`EmbeddedStore`] keeps
//! everything on local disk (sled as the source of truth, tantivy for BM25, in-memory vectors
//! loaded from sled). A networked backend (PostgreSQL) can implement the same trait later.
//!
//! The trait is synchronous: every call is bounded local work (an fsync at most), and the
//! router's inner loop calls it without an executor. Async callers use `spawn_blocking` for
//! writes.

mod background;
mod catalog;
mod embedded;
mod phases;
mod text;
mod textdir;
mod vectors;
#[cfg(test)]
mod write_latency;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use embedded::{DEFAULT_COMMIT_DELAY, Durability, EmbeddedStore, StoreOptions};
pub use vectors::ANN_MIN_ROWS;

use crate::embed::Embedder;
use crate::error::Result;
use crate::filter::Filter;
use crate::item::{ItemId, MemoryItem, NewItem};
use crate::tokens::TokenCounter;

/// How to rank search results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Lexical BM25 over the content (tantivy).
    Bm25,
    /// Cosine similarity of embeddings.
    Vector,
    /// Reciprocal rank fusion of BM25 and vector rankings.
    #[default]
    Hybrid,
}

/// A search request.
#[derive(Clone, Debug, Default)]
pub struct SearchQuery<'a> {
    /// The query text (used by BM25, and embedded for vector search when `vector` is `None`).
    pub text: &'a str,
    /// A precomputed query embedding (from the store's embedder).
    pub vector: Option<&'a [f32]>,
    /// Ranking.
    pub mode: SearchMode,
    /// Breadth of the approximate vector search for this query (large namespaces only):
    /// higher finds more of the exact nearest neighbours and costs more. `None`: the store's
    /// default.
    pub ef: Option<usize>,
}

impl<'a> SearchQuery<'a> {
    /// A query by text with the given mode.
    pub fn new(text: &'a str, mode: SearchMode) -> Self {
        SearchQuery {
            text,
            vector: None,
            mode,
            ef: None,
        }
    }

    /// Sets the approximate search breadth for this query.
    pub fn with_ef(mut self, ef: usize) -> Self {
        self.ef = Some(ef);
        self
    }

    /// Uses a precomputed embedding.
    pub fn with_vector(mut self, vector: &'a [f32]) -> Self {
        self.vector = Some(vector);
        self
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    /// The item.
    pub item: MemoryItem,
    /// The score the results are ordered by (BM25, cosine, or fused RRF score).
    pub score: f32,
    /// BM25 score, when the item was among the BM25 results.
    pub bm25: Option<f32>,
    /// Cosine similarity to the query embedding, when the item was among the vector results.
    pub cosine: Option<f32>,
}

/// Paging for listings: items come in write order (oldest first unless `newest_first`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Page {
    /// Skip items up to and including this sequence number (oldest first) or from it on
    /// (newest first): the cursor is the `seq` of the last item of the previous page.
    pub after_seq: Option<u64>,
    /// At most this many items.
    pub limit: usize,
    /// Newest first.
    pub newest_first: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            after_seq: None,
            limit: 1000,
            newest_first: false,
        }
    }
}

impl Page {
    /// The first `limit` items.
    pub fn first(limit: usize) -> Self {
        Page {
            limit,
            ..Page::default()
        }
    }

    /// The `limit` newest items.
    pub fn newest(limit: usize) -> Self {
        Page {
            limit,
            newest_first: true,
            ..Page::default()
        }
    }
}

/// Size of one namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: String,
    /// Items in it, superseded versions included.
    pub items: usize,
}

/// Durable, searchable shared memory.
///
/// Guarantees every implementation keeps:
/// - a write returns only once its items are durable (under the configured durability), and
///   the very next call on the same store sees them (read-your-writes); other threads may
///   see a write a little before it returns (it can be visible before it is durable, never
///   acknowledged before);
/// - every listing and search applies [`Filter`] exactly, including `reader`;
/// - superseded versions are excluded unless the filter asks for them.
pub trait MemoryStore: Send + Sync {
    /// Writes one item.
    fn put(&self, item: NewItem) -> Result<MemoryItem> {
        let mut stored = self.put_batch(vec![item])?;
        Ok(stored.pop().expect("put_batch returns one item per input"))
    }

    /// Writes items atomically: all are stored, or none (an invalid item rejects the batch).
    /// Items come back in input order.
    fn put_batch(&self, items: Vec<NewItem>) -> Result<Vec<MemoryItem>>;

    /// Writes items like [`put_batch`](Self::put_batch), visible to reads at once, but returns
    /// without waiting for them to be durable: they become durable with the next durable write
    /// to the store (a crash keeps a prefix of the writes, so that write's durability covers
    /// them), or are lost to a crash before it.
    ///
    /// For items that can be written again after a crash, or whose writer acknowledges them
    /// only after [`make_durable`](Self::make_durable) (a node's write-back, made durable
    /// alongside its checkpoint). The default waits, like `put_batch`.
    fn put_batch_deferred(&self, items: Vec<NewItem>) -> Result<Vec<MemoryItem>> {
        self.put_batch(items)
    }

    /// Waits until every write up to sequence number `seq` (an item's `seq`, or
    /// [`last_seq`](Self::last_seq)) is durable: what a deferred write leaves to its caller.
    /// The default has nothing to wait for (its deferred write is durable already).
    fn make_durable(&self, seq: u64) -> Result<()> {
        let _ = seq;
        Ok(())
    }

    /// Whether a deferred write of `items` items would now take microseconds and wait for
    /// nothing but other short writes: no model inference, no large batch or deletion under
    /// way, no flush to wait for. A caller on an async executor may then write on its own
    /// thread instead of handing the write to a blocking thread (two thread wake-ups). A hint,
    /// true when asked: a long write starting meanwhile makes the write wait for it. The
    /// default says no.
    fn quick_write(&self, items: usize) -> bool {
        let _ = items;
        false
    }

    /// Whether every write up to sequence number `seq` is durable already, so that
    /// [`make_durable`](Self::make_durable) would return at once (a cheap check, for callers
    /// that would otherwise hand the wait to another thread). The default says yes.
    fn is_durable(&self, seq: u64) -> bool {
        let _ = seq;
        true
    }

    /// One item by id (superseded or not).
    fn get(&self, id: ItemId) -> Result<Option<MemoryItem>>;

    /// Several items by id, in the same order.
    fn get_many(&self, ids: &[ItemId]) -> Result<Vec<Option<MemoryItem>>> {
        ids.iter().map(|id| self.get(*id)).collect()
    }

    /// Items passing `filter`, in write order, one page.
    fn list(&self, filter: &Filter, page: &Page) -> Result<Vec<MemoryItem>>;

    /// Number of items passing `filter`.
    fn count(&self, filter: &Filter) -> Result<usize>;

    /// Every version of `key` in `namespace`, oldest first.
    fn history(&self, namespace: &str, key: &str) -> Result<Vec<MemoryItem>>;

    /// The `k` best items for `query` among those passing `filter`.
    fn search(&self, query: &SearchQuery<'_>, filter: &Filter, k: usize) -> Result<Vec<SearchHit>>;

    /// The stored embeddings of items (in the store embedder's space), in the same order.
    fn embeddings(&self, ids: &[ItemId]) -> Result<Vec<Option<Vec<f32>>>>;

    /// Deletes every item of a namespace; returns how many were deleted.
    fn delete_namespace(&self, namespace: &str) -> Result<usize>;

    /// Namespaces and their sizes, sorted by name.
    fn namespaces(&self) -> Result<Vec<NamespaceStats>>;

    /// Sequence number of the newest acknowledged item (0 when the store is empty). Routing over
    /// `max_seq = last_seq()` later sees memory exactly as it is now (replay).
    fn last_seq(&self) -> u64;

    /// The embedder that produced the stored vectors (to embed queries and profiles alike).
    fn embedder(&self) -> &Arc<dyn Embedder>;

    /// The token counter behind every item's `tokens`.
    fn token_counter(&self) -> &Arc<dyn TokenCounter>;
}
