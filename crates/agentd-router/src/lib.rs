//! agentd's context router: before an agent acts, choose which memory items it sees.
//!
//! [`Router::route`] takes a [`RouteRequest`] (namespaces, role, stage, query, round, budget,
//! policy) and returns a [`ContextPack`]: the selected items in prompt order, the tokens used,
//! and a [`Manifest`] with every candidate considered, its score components and its fate.
//!
//! # Candidates
//!
//! Routing never scores the whole store. Candidates are the union of: hybrid-search hits for
//! the query, hits for the role profile (description and keywords), the most recent items,
//! the newest items of the kinds the stage prioritises, and *bridge* items found by searching
//! for the titles and named entities of the strongest query hits. Each source is bounded
//! ([`CandidateLimits`]), so a route costs the same on a large store as on a small one.
//!
//! # Scoring (policy `rcr`)
//!
//! Each candidate gets components in `[0, 1]`:
//!
//! - `role` = ½·cos(item, role profile)/max + ½·affinity(producer role → reading role)
//!   (only the affinity when the role has no profile text);
//! - `stage` = the stage's priority for the item's kind;
//! - `query` = 1 when the query names the item's title; otherwise ½·BM25/max BM25 +
//!   ½·cos(item, query)/max (each normalised over the candidates);
//! - `recency` = 0.5^((round − item round) / half-life);
//! - `importance` = the writer's confidence;
//! - `bridge` = max over linked candidates of their strength × link weight, minus the item's own
//!   `query` (floored at 0): what a link adds beyond direct relevance (see [`links`]). Strength
//!   starts as `query` and travels [`pack::BRIDGE_HOPS`] links (two: bridges of bridges count).
//!
//! `total = w_role·role + w_stage·stage + w_query·query + w_recency·recency
//!  + w_importance·importance + w_bridge·bridge`, and when the item is judged for selection,
//! `marginal = total − w_redundancy · max cos(item, already selected)` (MMR). Weights come from
//! the workflow ([`Weights`], defaults documented there and in `docs/routing.md`).
//!
//! # Packing
//!
//! Items whose marginal is below `min_score`, or whose total is below
//! [`pack::MIN_RELATIVE_SCORE`] × the best candidate's total, are left out even when they fit.
//! An item is worth `best · (marginal / best)^`[`pack::SHARPNESS`], so one strong
//! item beats several weak, cheap ones; selection is greedy by that value per token, lazily
//! re-scored as items are selected; when at most [`pack::EXACT_MAX_ITEMS`] items are eligible,
//! an exact knapsack over the same values is solved too and the better of the two wins. Items larger than the budget are cut at a sentence boundary when their kind
//! allows it, and rejected otherwise. The pack never exceeds its budget: every item's cost
//! includes its layout, and header space is reserved up front.
//!
//! # Guarantees
//!
//! - An item whose readers exclude the role never reaches that role's pack, under any policy.
//! - The result is deterministic for the same memory and request.
//! - `full` selects a superset of what `rcr` selects (given the same budget and enough of it).

pub mod links;
pub mod manifest;
pub mod pack;
pub mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentd_memory::embed::EmbedError;
use agentd_memory::{Filter, ItemId, MemoryError, MemoryStore, Page, SearchMode, SearchQuery};
use serde::{Deserialize, Serialize};

pub use manifest::{Decision, Manifest, ManifestEntry, Reason, ScoreBreakdown, Sources};
pub use pack::{Candidate, ContextPack, PackedItem, Policy, ScoringContext, pack};
pub use profile::{RoleProfile, RunBudget, StageProfile, Weights, effective_budget};

/// Errors of routing.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Reading memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Embedding the query or the role profile failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// How many candidates each source may contribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CandidateLimits {
    /// Hybrid-search hits for the query.
    pub query: usize,
    /// Hybrid-search hits for the role profile.
    pub role: usize,
    /// Most recent items.
    pub recent: usize,
    /// Newest items per prioritised kind of the stage.
    pub stage: usize,
    /// Strong query hits whose titles and entities are searched for bridges.
    pub bridge_sources: usize,
    /// Hits per bridge search.
    pub bridge_hits: usize,
    /// Stage priority from which a kind counts as prioritised.
    pub stage_priority: f32,
    /// Approximate vector search breadth of candidate searches (large namespaces only):
    /// candidate generation needs good hits, not the exact top-k, and is on every route.
    pub ef: usize,
}

impl Default for CandidateLimits {
    fn default() -> Self {
        CandidateLimits {
            query: 48,
            role: 16,
            recent: 16,
            stage: 16,
            bridge_sources: 4,
            bridge_hits: 4,
            stage_priority: 0.5,
            ef: 256,
        }
    }
}

/// One routing request.
#[derive(Clone, Debug)]
pub struct RouteRequest<'a> {
    /// Namespaces to read.
    pub namespaces: &'a [String],
    /// Reading role.
    pub role: &'a RoleProfile,
    /// Stage.
    pub stage: &'a StageProfile,
    /// The agent's current task text.
    pub query: &'a str,
    /// A precomputed query embedding (from the store's embedder).
    pub query_vector: Option<&'a [f32]>,
    /// Current round.
    pub round: u32,
    /// Token budget of the pack.
    pub budget: u32,
    /// Selection rule.
    pub policy: Policy,
    /// Scoring weights.
    pub weights: &'a Weights,
    /// Route over memory as it was at this sequence number (replay); `None`: as it is now.
    pub as_of_seq: Option<u64>,
}

/// The context router over a memory store.
pub struct Router {
    store: Arc<dyn MemoryStore>,
    limits: CandidateLimits,
    role_vectors: Mutex<HashMap<String, Arc<Vec<f32>>>>,
}

impl Router {
    /// A router over `store` with default candidate limits.
    pub fn new(store: Arc<dyn MemoryStore>) -> Self {
        Router {
            store,
            limits: CandidateLimits::default(),
            role_vectors: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the candidate limits.
    pub fn with_limits(mut self, limits: CandidateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// The embedding of a role's profile text (cached per text).
    pub fn role_vector(&self, role: &RoleProfile) -> Result<Option<Arc<Vec<f32>>>, RouteError> {
        let text = role.profile_text();
        if text.trim().is_empty() {
            return Ok(None);
        }
        if let Some(v) = self
            .role_vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&text)
        {
            return Ok(Some(Arc::clone(v)));
        }
        let v = Arc::new(self.store.embedder().embed_query(&text)?);
        self.role_vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(text, Arc::clone(&v));
        Ok(Some(v))
    }

    /// Routes: gathers candidates from the store, scores them and packs the best into the
    /// request's budget.
    pub fn route(&self, req: &RouteRequest<'_>) -> Result<ContextPack, RouteError> {
        let owned_query;
        let query_vector = match req.query_vector {
            Some(v) => Some(v),
            None if req.query.trim().is_empty() => None,
            None => {
                owned_query = self.store.embedder().embed_query(req.query)?;
                Some(&owned_query[..])
            }
        };
        let role_vector = match req.policy {
            Policy::Rcr => self.role_vector(req.role)?,
            _ => None,
        };
        let candidates = self.candidates(req, query_vector)?;
        let ctx = ScoringContext {
            role: req.role,
            stage: req.stage,
            weights: req.weights,
            round: req.round,
            query: req.query,
            query_vector,
            role_vector: role_vector.as_deref().map(Vec::as_slice),
            counter: self.store.token_counter().as_ref(),
            policy: req.policy,
            as_of_seq: req.as_of_seq,
        };
        Ok(pack(&candidates, &ctx, req.budget))
    }

    fn base_filter(&self, req: &RouteRequest<'_>) -> Filter {
        let mut f = Filter {
            namespaces: req.namespaces.to_vec(),
            ..Filter::default()
        };
        f.max_seq = req.as_of_seq;
        f
    }

    /// Gathers the candidate set for a request.
    fn candidates(
        &self,
        req: &RouteRequest<'_>,
        query_vector: Option<&[f32]>,
    ) -> Result<Vec<Candidate>, RouteError> {
        let mut found: HashMap<ItemId, Candidate> = HashMap::new();
        let mut order: Vec<ItemId> = Vec::new();
        let mut add = |item: agentd_memory::MemoryItem, bm25: Option<f32>, source: Sources| {
            let id = item.id;
            match found.get_mut(&id) {
                Some(c) => {
                    c.sources.add(source);
                    if c.bm25.is_none() {
                        c.bm25 = bm25;
                    }
                }
                None => {
                    order.push(id);
                    found.insert(
                        id,
                        Candidate {
                            item,
                            vector: None,
                            bm25,
                            sources: source,
                        },
                    );
                }
            }
        };
        let base = self.base_filter(req);
        let readable = base.clone().reader(req.role.name.clone());
        let search = |text: &str, vector: Option<&[f32]>, filter: &Filter, k: usize| {
            let mut q = SearchQuery::new(text, SearchMode::Hybrid).with_ef(self.limits.ef);
            q.vector = vector;
            self.store.search(&q, filter, k)
        };
        match req.policy {
            Policy::Full => {
                for item in self.store.list(&base, &Page::first(usize::MAX))? {
                    add(item, None, Sources::LISTING);
                }
                // BM25 scores for the manifest's query component.
                if !req.query.trim().is_empty() {
                    let hits = self.store.search(
                        &SearchQuery::new(req.query, SearchMode::Bm25),
                        &base,
                        self.limits.query.max(64),
                    )?;
                    for h in hits {
                        add(h.item, h.bm25, Sources::QUERY);
                    }
                }
            }
            Policy::Recency => {
                for item in self.store.list(&base, &Page::newest(256))? {
                    add(item, None, Sources::LISTING);
                }
            }
            Policy::Static { k } => {
                for h in search(req.query, query_vector, &readable, k.max(1))? {
                    add(h.item, h.bm25, Sources::QUERY);
                }
            }
            Policy::Rcr => {
                let query_hits = search(req.query, query_vector, &readable, self.limits.query)?;
                let strong: Vec<agentd_memory::MemoryItem> = query_hits
                    .iter()
                    .take(self.limits.bridge_sources)
                    .map(|h| h.item.clone())
                    .collect();
                for h in query_hits {
                    add(h.item, h.bm25, Sources::QUERY);
                }
                let role_text = req.role.profile_text();
                if !role_text.trim().is_empty() && self.limits.role > 0 {
                    // The cached profile vector: the store would embed the text on every route.
                    let role_vector = self.role_vector(req.role)?;
                    let role_vector = role_vector.as_deref().map(Vec::as_slice);
                    for h in search(&role_text, role_vector, &readable, self.limits.role)? {
                        add(h.item, None, Sources::ROLE);
                    }
                }
                // Recent items, readable or not (the manifest shows what the role may not see).
                let recent = base.clone().include_superseded(true);
                for item in self
                    .store
                    .list(&recent, &Page::newest(self.limits.recent))?
                {
                    add(item, None, Sources::RECENT);
                }
                let prioritised: Vec<agentd_memory::Kind> = req
                    .stage
                    .priorities
                    .iter()
                    .filter(|(_, p)| **p >= self.limits.stage_priority)
                    .map(|(k, _)| k.clone())
                    .collect();
                for kind in prioritised {
                    let f = readable.clone().kinds([kind]);
                    for item in self.store.list(&f, &Page::newest(self.limits.stage))? {
                        add(item, None, Sources::STAGE);
                    }
                }
                // Bridges: search for what the strongest hits name.
                let mut asked: Vec<String> = Vec::new();
                for item in &strong {
                    let mut names = links::entities(&item.content);
                    names.truncate(6);
                    for name in names {
                        if asked.contains(&name) || req.query.to_lowercase().contains(&name) {
                            continue;
                        }
                        let q = SearchQuery::new(&name, SearchMode::Bm25);
                        for h in self.store.search(&q, &readable, self.limits.bridge_hits)? {
                            add(h.item, None, Sources::LINK);
                        }
                        asked.push(name);
                    }
                }
            }
        }
        let mut candidates: Vec<Candidate> = order
            .into_iter()
            .map(|id| found.remove(&id).expect("every ordered id was found"))
            .collect();
        let ids: Vec<ItemId> = candidates.iter().map(|c| c.item.id).collect();
        for (c, v) in candidates.iter_mut().zip(self.store.embeddings(&ids)?) {
            c.vector = v
                .as_deref()
                .map(agentd_memory::vector::QuantizedVector::quantize);
        }
        candidates.sort_unstable_by_key(|c| c.item.seq);
        Ok(candidates)
    }
}
