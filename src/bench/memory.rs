//! `agentd bench memory`: ingest and search throughput of the embedded store on the synthetic
//! corpus ([`agentd_memory::synthetic`]).
//!
//! Steps: ingest `items` documents into one namespace in batches (each batch durable before the
//! next starts); wait for the HNSW graph to cover every row (reported as `ann_build_s`, since
//! ingest does not wait for it); then run `queries` searches of each mode with k = 20 and
//! measure their latency, and measure vector recall@20 against an exact scan. Query embeddings
//! are computed before timing (reported separately as `query_embed_p50_ms`), so the search
//! figures are the store's own. Last, time single-item writes into a small namespace of the
//! same store (what the runtime's write-back does per node).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agentd_memory::embed::{Embedder, EmbedderConfig};
use agentd_memory::synthetic::Corpus;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{EmbeddedStore, Filter, MemoryStore, SearchMode, SearchQuery, StoreOptions};
use serde::Serialize;

use super::{percentile, rss_peak_mb};

/// Single-item writes timed at the end of a run.
const SMALL_PUTS: u64 = 200;

/// Parameters of a memory benchmark run.
#[derive(Clone, Debug)]
pub struct MemoryBench {
    /// Documents to ingest.
    pub items: u64,
    /// Items per `put_batch`.
    pub batch: usize,
    /// Timed searches per mode.
    pub queries: u64,
    /// Queries whose vector results are compared with an exact scan.
    pub recall_queries: u64,
    /// Result size of every search.
    pub k: usize,
    /// Embedder to use.
    pub embedder: EmbedderConfig,
    /// Store directory (a temporary one when `None`).
    pub dir: Option<PathBuf>,
    /// Corpus seed.
    pub seed: u64,
    /// Namespaces from this size get an HNSW graph (the store's default when `None`).
    pub ann_min_rows: Option<usize>,
    /// HNSW search breadths to measure vector recall and latency at (besides the default).
    pub ef_sweep: Vec<usize>,
}

/// Vector search at one HNSW search breadth.
#[derive(Clone, Debug, Serialize)]
pub struct EfPoint {
    /// Search breadth.
    pub ef: usize,
    /// Mean recall@k against an exact scan.
    pub recall: f64,
    /// Latency, median.
    pub p50_ms: f64,
    /// Latency, 95th percentile.
    pub p95_ms: f64,
}

/// The figures a run produces (printed as one JSON object).
#[derive(Clone, Debug, Serialize)]
pub struct MemoryBenchReport {
    /// Items ingested.
    pub items: u64,
    /// Embedder name.
    pub embedder: String,
    /// Items per batch.
    pub batch: usize,
    /// Ingest throughput (durable at each batch end).
    pub ingest_items_per_s: f64,
    /// Seconds the background HNSW build needed after ingest returned.
    pub ann_build_s: f64,
    /// BM25 top-k latency, median.
    pub bm25_p50_ms: f64,
    /// BM25 top-k latency, 95th percentile.
    pub bm25_p95_ms: f64,
    /// Vector top-k latency, median.
    pub vector_p50_ms: f64,
    /// Vector top-k latency, 95th percentile.
    pub vector_p95_ms: f64,
    /// Mean share of the exact top-k that vector search returned.
    pub vector_recall_at_20: f64,
    /// Hybrid (RRF) top-k latency, median.
    pub hybrid_p50_ms: f64,
    /// Hybrid top-k latency, 95th percentile.
    pub hybrid_p95_ms: f64,
    /// Query embedding latency, median (not included in the search figures).
    pub query_embed_p50_ms: f64,
    /// Latency of a durable single-item `put`, median.
    pub small_put_p50_ms: f64,
    /// Latency of a durable single-item `put`, 95th percentile.
    pub small_put_p95_ms: f64,
    /// Bytes on disk after ingest.
    pub disk_bytes: u64,
    /// Peak resident memory of the process.
    pub rss_peak_mb: f64,
    /// Searches timed per mode.
    pub queries: u64,
    /// Result size.
    pub k: usize,
    /// Vector recall and latency at other search breadths.
    pub ef_sweep: Vec<EfPoint>,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The store failed.
    #[error(transparent)]
    Memory(#[from] agentd_memory::MemoryError),
    /// The embedder could not be built.
    #[error(transparent)]
    Embed(#[from] agentd_memory::embed::EmbedError),
    /// The benchmark needs a new store.
    #[error("{0} already holds a store with items; benchmark into an empty or new directory")]
    NotEmpty(PathBuf),
    /// A temporary directory could not be made.
    #[error("creating a temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

impl MemoryBench {
    /// Runs the benchmark; `progress` receives human-readable status lines.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<MemoryBenchReport, BenchError> {
        let embedder: Arc<dyn Embedder> = self.embedder.build()?;
        let tmp;
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                tmp = tempfile::Builder::new().prefix("agentd-bench-").tempdir()?;
                tmp.path().join("store")
            }
        };
        let mut options = StoreOptions::new(Arc::clone(&embedder), default_token_counter());
        if let Some(rows) = self.ann_min_rows {
            options.ann_min_rows = rows;
        }
        let store = EmbeddedStore::open(&dir, options)?;
        if store.count(&Filter::default())? > 0 {
            return Err(BenchError::NotEmpty(dir));
        }
        let corpus = Corpus::new(self.seed);
        let ns = "bench";
        // The token counter builds its tables at its first count: not inside the timed ingest.
        store.token_counter().count("warm up");

        let start = Instant::now();
        let mut next = 0u64;
        let mut last_report = Instant::now();
        while next < self.items {
            let end = (next + self.batch as u64).min(self.items);
            let batch = (next..end).map(|i| corpus.item(ns, i)).collect();
            store.put_batch(batch)?;
            next = end;
            if last_report.elapsed().as_secs() >= 10 {
                progress(&format!(
                    "ingested {next}/{} ({:.0} items/s)",
                    self.items,
                    next as f64 / start.elapsed().as_secs_f64()
                ));
                last_report = Instant::now();
            }
        }
        let ingest_s = start.elapsed().as_secs_f64();
        progress(&format!(
            "ingest done in {ingest_s:.1} s; waiting for the vector index"
        ));
        let ann_start = Instant::now();
        store.wait_for_vector_index();
        let ann_build_s = ann_start.elapsed().as_secs_f64();

        let filter = Filter::namespace(ns);
        let texts: Vec<String> = (0..self.queries).map(|j| corpus.query(j)).collect();
        let mut embed_ms = Vec::with_capacity(texts.len());
        let vectors: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| {
                let t0 = Instant::now();
                let v = embedder.embed_query(t);
                embed_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                v
            })
            .collect::<Result<_, _>>()?;

        let timed = |mode: SearchMode| -> Result<Vec<f64>, BenchError> {
            let mut ms = Vec::with_capacity(texts.len());
            for (text, vector) in texts.iter().zip(&vectors) {
                let q = SearchQuery::new(text, mode).with_vector(vector);
                let t0 = Instant::now();
                let hits = store.search(&q, &filter, self.k)?;
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(hits);
            }
            Ok(ms)
        };
        progress("timing searches");
        // Warm up caches once, as a long-running daemon would be.
        for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
            let _ = timed(mode)?;
        }
        let mut bm25 = timed(SearchMode::Bm25)?;
        let mut vector = timed(SearchMode::Vector)?;
        let mut hybrid = timed(SearchMode::Hybrid)?;

        progress("measuring recall against an exact scan");
        let recall_queries = self.recall_queries.min(self.queries).max(1) as usize;
        let exact: Vec<Vec<(agentd_memory::ItemId, f32)>> = vectors
            .iter()
            .take(recall_queries)
            .map(|v| store.exact_vector_search(v, &filter, self.k))
            .collect();
        let recall = || -> Result<f64, BenchError> {
            let mut sum = 0.0;
            for ((text, v), exact) in texts.iter().zip(&vectors).zip(&exact) {
                let approx = store.search(
                    &SearchQuery::new(text, SearchMode::Vector).with_vector(v),
                    &filter,
                    self.k,
                )?;
                let found = exact
                    .iter()
                    .filter(|(id, _)| approx.iter().any(|h| h.item.id == *id))
                    .count();
                sum += found as f64 / exact.len().max(1) as f64;
            }
            Ok(sum / exact.len().max(1) as f64)
        };
        let vector_recall_at_20 = recall()?;
        let mut ef_sweep = Vec::new();
        for &ef in &self.ef_sweep {
            store.set_ef_search(ef);
            let mut ms = timed(SearchMode::Vector)?;
            ef_sweep.push(EfPoint {
                ef,
                recall: recall()?,
                p50_ms: percentile(&mut ms, 50.0),
                p95_ms: percentile(&mut ms, 95.0),
            });
            progress(&format!("ef {ef}: {:?}", ef_sweep.last()));
        }

        progress("timing single-item writes");
        let mut small_put = Vec::with_capacity(SMALL_PUTS as usize);
        for i in 0..SMALL_PUTS {
            let item = corpus.item("bench-small", self.items + i);
            let t0 = Instant::now();
            store.put(item)?;
            small_put.push(t0.elapsed().as_secs_f64() * 1e3);
        }

        Ok(MemoryBenchReport {
            items: self.items,
            embedder: embedder.name().to_owned(),
            batch: self.batch,
            ingest_items_per_s: self.items as f64 / ingest_s,
            ann_build_s,
            bm25_p50_ms: percentile(&mut bm25, 50.0),
            bm25_p95_ms: percentile(&mut bm25, 95.0),
            vector_p50_ms: percentile(&mut vector, 50.0),
            vector_p95_ms: percentile(&mut vector, 95.0),
            vector_recall_at_20,
            hybrid_p50_ms: percentile(&mut hybrid, 50.0),
            hybrid_p95_ms: percentile(&mut hybrid, 95.0),
            query_embed_p50_ms: percentile(&mut embed_ms, 50.0),
            small_put_p50_ms: percentile(&mut small_put, 50.0),
            small_put_p95_ms: percentile(&mut small_put, 95.0),
            disk_bytes: store.disk_bytes(),
            rss_peak_mb: rss_peak_mb(),
            queries: self.queries,
            k: self.k,
            ef_sweep,
        })
    }
}
