//! `agentd bench route`: latency of one routing decision.
//!
//! Two modes:
//! - **in-memory** (default): `candidates` synthetic candidates (texts from the synthetic corpus,
//!   hashing embeddings, BM25 scores for a third of them, as a query search would give) are
//!   scored and packed under `budget`; the query and role are already embedded, so the figure
//!   is the router's inner loop alone (scoring, links, packing, manifest).
//! - **store-backed** (`--store-items N`): N documents are ingested into a store, then whole
//!   routes are timed, candidate retrieval from the store included.

use std::sync::Arc;
use std::time::Instant;

use agentd_memory::embed::{Embedder, HashingEmbedder};
use agentd_memory::synthetic::Corpus;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::vector::QuantizedVector;
use agentd_memory::{
    EmbeddedStore, Filter, ItemId, Kind, MemoryItem, MemoryStore, Producer, Readers, StoreOptions,
    Timestamp,
};
use agentd_router::{
    Candidate, Policy, RoleProfile, RouteRequest, Router, ScoringContext, Sources, StageProfile,
    Weights, pack,
};
use serde::Serialize;

use super::memory::BenchError;
use super::percentile;

/// Parameters of a routing benchmark.
#[derive(Clone, Debug)]
pub struct RouteBench {
    /// Candidates per route (in-memory mode).
    pub candidates: usize,
    /// Token budget.
    pub budget: u32,
    /// Timed routes.
    pub iterations: usize,
    /// Store size for the store-backed mode.
    pub store_items: Option<u64>,
    /// Store directory for the store-backed mode: reused if it already holds the benchmark's
    /// documents (e.g. from `agentd bench memory --dir`), else filled (temporary when `None`).
    pub store_dir: Option<std::path::PathBuf>,
    /// Corpus seed.
    pub seed: u64,
}

/// Figures of a routing benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct RouteBenchReport {
    /// `in_memory` or `store`.
    pub mode: &'static str,
    /// Candidates per route (mean, in store mode).
    pub candidates: f64,
    /// Budget.
    pub budget: u32,
    /// Items in the store (store mode).
    pub store_items: u64,
    /// Route latency, median.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean tokens in the packs.
    pub tokens_used: f64,
    /// Mean items in the packs.
    pub items_selected: f64,
    /// Timed routes.
    pub iterations: usize,
}

fn role() -> RoleProfile {
    RoleProfile {
        description: "Answers questions from the evidence gathered so far".into(),
        keywords: vec!["answer".into(), "evidence".into()],
        ..RoleProfile::new("answerer")
    }
}

fn stage() -> StageProfile {
    StageProfile::new("answer")
        .priority(Kind::Evidence, 0.9)
        .priority(Kind::Document, 0.6)
}

impl RouteBench {
    /// Runs the benchmark.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<RouteBenchReport, BenchError> {
        match (self.store_items, &self.store_dir) {
            (None, None) => Ok(self.in_memory()),
            (n, _) => self.store_backed(n.unwrap_or(0), &mut progress),
        }
    }

    /// Summarises timed routes (latencies in µs, summed tokens and selected items).
    fn report(
        &self,
        mode: &'static str,
        candidates: f64,
        store_items: u64,
        mut micros: Vec<f64>,
        tokens: u64,
        selected: u64,
    ) -> RouteBenchReport {
        let n = micros.len().max(1) as f64;
        RouteBenchReport {
            mode,
            candidates,
            budget: self.budget,
            store_items,
            p50_us: percentile(&mut micros, 50.0),
            p95_us: percentile(&mut micros, 95.0),
            p99_us: percentile(&mut micros, 99.0),
            tokens_used: tokens as f64 / n,
            items_selected: selected as f64 / n,
            iterations: micros.len(),
        }
    }

    fn in_memory(&self) -> RouteBenchReport {
        let corpus = Corpus::new(self.seed);
        let embedder = HashingEmbedder::default();
        let counter = default_token_counter();
        let kinds = [Kind::Document, Kind::Evidence, Kind::Fact, Kind::Note];
        let candidates: Vec<Candidate> = (0..self.candidates as u64)
            .map(|i| {
                let content = corpus.document(i);
                let vector = embedder.embed_query(&content).expect("hashing never fails");
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i + 1).to_be_bytes());
                Candidate {
                    item: MemoryItem {
                        id: ItemId::from_bytes(id),
                        seq: i + 1,
                        namespace: "bench".into(),
                        kind: kinds[(i % 4) as usize].clone(),
                        tokens: counter.count(&content),
                        content,
                        payload: None,
                        producer: Producer::new("researcher", "research", (i % 3) as u32),
                        stage: None,
                        tags: Vec::new(),
                        key: None,
                        version: 1,
                        confidence: 0.5 + (i % 5) as f32 / 10.0,
                        created_at: Timestamp(0),
                        readers: Readers::All,
                        superseded: false,
                    },
                    vector: Some(QuantizedVector::quantize(&vector)),
                    bm25: (i % 3 == 0).then_some(1.0 + (i % 17) as f32),
                    sources: Sources::QUERY,
                }
            })
            .collect();
        let (role, stage, weights) = (role(), stage(), Weights::default());
        let role_vector = embedder.embed_query(&role.profile_text()).expect("hashing");
        let mut micros = Vec::with_capacity(self.iterations);
        let (mut tokens, mut selected) = (0u64, 0u64);
        for j in 0..self.iterations + self.iterations / 10 {
            let query = corpus.query(j as u64);
            let query_vector = embedder.embed_query(&query).expect("hashing");
            let ctx = ScoringContext {
                role: &role,
                stage: &stage,
                weights: &weights,
                round: 2,
                query: &query,
                query_vector: Some(&query_vector),
                role_vector: Some(&role_vector),
                counter: counter.as_ref(),
                policy: Policy::Rcr,
                as_of_seq: None,
            };
            let t0 = Instant::now();
            let pack = pack(&candidates, &ctx, self.budget);
            let us = t0.elapsed().as_secs_f64() * 1e6;
            // The first tenth warms caches and is not counted.
            if j >= self.iterations / 10 {
                micros.push(us);
                tokens += u64::from(pack.tokens_used);
                selected += pack.items.len() as u64;
            }
            drop(pack);
        }
        let candidates = self.candidates as f64;
        self.report("in_memory", candidates, 0, micros, tokens, selected)
    }

    fn store_backed(
        &self,
        items: u64,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RouteBenchReport, BenchError> {
        let tmp = tempfile::Builder::new().prefix("agentd-bench-").tempdir()?;
        let dir = self
            .store_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("store"));
        let embedder: Arc<dyn Embedder> = Arc::new(HashingEmbedder::default());
        let options = StoreOptions::new(Arc::clone(&embedder), default_token_counter());
        // The token counter builds its tables at its first count: not inside the timing.
        options.token_counter.count("warm up");
        let start = Instant::now();
        let store = Arc::new(EmbeddedStore::open(&dir, options)?);
        let corpus = Corpus::new(self.seed);
        let existing = store.count(&Filter::namespace("bench"))? as u64;
        if existing > 0 {
            progress(&format!(
                "reusing {existing} items in {} (opened in {:.1} s)",
                dir.display(),
                start.elapsed().as_secs_f64()
            ));
        }
        let items = if existing > 0 { existing } else { items };
        let start = Instant::now();
        let mut next = existing;
        while next < items {
            let end = (next + 5_000).min(items);
            store.put_batch((next..end).map(|i| corpus.item("bench", i)).collect())?;
            next = end;
        }
        if items > existing {
            progress(&format!(
                "ingested {} items in {:.1} s",
                items - existing,
                start.elapsed().as_secs_f64()
            ));
        }
        progress("waiting for the vector index");
        store.wait_for_vector_index();
        let router = Router::new(Arc::clone(&store) as Arc<dyn MemoryStore>);
        let (role, stage, weights) = (role(), stage(), Weights::default());
        let namespaces = ["bench".to_string()];
        let mut micros = Vec::with_capacity(self.iterations);
        let (mut tokens, mut selected, mut considered) = (0u64, 0u64, 0u64);
        for j in 0..self.iterations + self.iterations / 10 {
            let query = corpus.query(j as u64);
            let t0 = Instant::now();
            let pack = router
                .route(&RouteRequest {
                    namespaces: &namespaces,
                    role: &role,
                    stage: &stage,
                    query: &query,
                    query_vector: None,
                    round: 1,
                    budget: self.budget,
                    policy: Policy::Rcr,
                    weights: &weights,
                    as_of_seq: None,
                })
                .map_err(|e| match e {
                    agentd_router::RouteError::Memory(m) => BenchError::Memory(m),
                    agentd_router::RouteError::Embed(m) => BenchError::Embed(m),
                })?;
            let us = t0.elapsed().as_secs_f64() * 1e6;
            if j >= self.iterations / 10 {
                micros.push(us);
                tokens += u64::from(pack.tokens_used);
                selected += pack.items.len() as u64;
                considered += pack.manifest.entries.len() as u64;
            }
        }
        let candidates = considered as f64 / micros.len().max(1) as f64;
        Ok(self.report("store", candidates, items, micros, tokens, selected))
    }
}
