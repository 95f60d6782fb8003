//! Scoring and packing: from candidates to a [`ContextPack`] with its [`Manifest`].
//!
//! This is the router's inner loop; it never touches the store. One pass reads each candidate
//! once: two dot products in one sweep over its int8 vector (query and role similarity), and
//! what its kind and producer contribute (memoised per distinct kind and producer), copied into
//! compact per-candidate state that the later passes and the manifest read instead of the
//! candidates (at 10,000 candidates the route is bound by memory traffic); link analysis runs on
//! a bounded set of the strongest candidates; packing is lazy greedy (marginal scores only fall
//! as items are selected, so a stale score is an upper bound and most candidates are never
//! re-scored), with an exact knapsack when the eligible set is small.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use agentd_memory::tokens::TokenCounter;
use agentd_memory::vector::QuantizedVector;
use agentd_memory::{ItemId, Kind, MemoryItem};
use serde::{Deserialize, Serialize};

use crate::links::{LinkGraph, LinkInput, entities};
use crate::manifest::{Decision, Manifest, ManifestEntry, Reason, ScoreBreakdown, Sources};
use crate::profile::{RoleProfile, StageProfile, Weights};

/// Tokens of layout around each item in the prompt (`- [id] ` and the line break), on top of
/// its content and title. [`ContextPack::render`] stays within this.
pub const ITEM_OVERHEAD_TOKENS: u32 = 8;
/// Tokens reserved for the pack's header and for each kind's group header.
pub const HEADER_TOKENS: u32 = 12;
/// Per kind group.
pub const GROUP_HEADER_TOKENS: u32 = 5;
/// At most this many of the strongest candidates take part in link analysis.
pub const LINK_CANDIDATES: usize = 48;
/// How many candidates ahead the similarity pass prefetches vectors.
const PREFETCH_AHEAD: usize = 8;
/// Re-scorings per selection after which lazy greedy stops looking for a better near-tie.
pub const RESCORE_LIMIT: usize = 64;
/// Eligible sets at most this large are packed exactly (knapsack) as well as greedily.
pub const EXACT_MAX_ITEMS: usize = 18;
/// Budgets at most this large allow the exact packer.
pub const EXACT_MAX_BUDGET: u32 = 16_384;
/// Items whose total is below this share of the best eligible candidate's total are rejected
/// as `low_score` even when they fit: a cheap item is not worth packing just because it is
/// cheap.
pub const MIN_RELATIVE_SCORE: f32 = 0.5;
/// Exponent of the packing value: an item is worth `best · (marginal / best)^SHARPNESS`, packed
/// by value per token. 1 would pack by plain score per token, which favours short, weakly
/// relevant items; 6 makes one strong item worth more than several weak ones of the same size.
pub const SHARPNESS: i32 = 6;
/// Hops over the link graph a bridge score travels: with 2, an item linked to an item linked
/// to a strong query match still gets a bridge score (three-hop chains).
pub const BRIDGE_HOPS: usize = 2;

/// Which selection rule to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// Role- and stage-aware context routing: the weighted score, links, redundancy, packing.
    #[default]
    Rcr,
    /// Every readable item, in write order, cut only at the budget (the model's context limit).
    Full,
    /// Role-agnostic top-`k` by query relevance.
    Static {
        /// How many items at most.
        k: usize,
    },
    /// Newest items first.
    Recency,
}

impl Policy {
    /// The policy's name.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Rcr => "rcr",
            Policy::Full => "full",
            Policy::Static { .. } => "static",
            Policy::Recency => "recency",
        }
    }

    /// Parses `rcr`, `full`, `static` (k = 8), `static:K`, or `recency`.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "rcr" => Some(Policy::Rcr),
            "full" => Some(Policy::Full),
            "recency" => Some(Policy::Recency),
            "static" => Some(Policy::Static { k: 8 }),
            other => other
                .strip_prefix("static:")
                .and_then(|k| k.parse().ok())
                .map(|k| Policy::Static { k }),
        }
    }
}

/// An item the router may select, with what retrieval learned about it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The item.
    pub item: MemoryItem,
    /// Its embedding (in the store's space, int8-quantised: see [`QuantizedVector`]), if known.
    pub vector: Option<QuantizedVector>,
    /// Its BM25 score for the query, if it was a BM25 hit.
    pub bm25: Option<f32>,
    /// How it was found.
    pub sources: Sources,
}

/// What the scoring needs besides the candidates.
pub struct ScoringContext<'a> {
    /// Reading role.
    pub role: &'a RoleProfile,
    /// Stage.
    pub stage: &'a StageProfile,
    /// Weights.
    pub weights: &'a Weights,
    /// Current round.
    pub round: u32,
    /// Query text.
    pub query: &'a str,
    /// Query embedding.
    pub query_vector: Option<&'a [f32]>,
    /// Role profile embedding.
    pub role_vector: Option<&'a [f32]>,
    /// Token counter (titles and cut items are counted with it).
    pub counter: &'a dyn TokenCounter,
    /// The policy.
    pub policy: Policy,
    /// Memory as of this sequence number (recorded in the manifest).
    pub as_of_seq: Option<u64>,
}

/// An item in a pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedItem {
    /// The item; its `content` is cut when `truncated`.
    pub item: MemoryItem,
    /// Tokens it costs in the prompt.
    pub tokens: u32,
    /// Whether the content was cut at a sentence boundary.
    pub truncated: bool,
}

/// What the router hands an agent: the selected items in prompt order, and the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextPack {
    /// Items in prompt order (grouped by kind in a fixed order, then by write order).
    pub items: Vec<PackedItem>,
    /// Tokens the rendered context uses (at most `budget`).
    pub tokens_used: u32,
    /// The budget.
    pub budget: u32,
    /// Every candidate and its fate.
    pub manifest: Manifest,
}

impl ContextPack {
    /// The context as prompt text: a fixed header, then items grouped by kind in a fixed order
    /// (see [`kind_order`]), each group in write order. The layout depends only on the items, so
    /// successive calls of a role share a prefix and providers' prompt caches hit.
    pub fn render(&self) -> String {
        let mut out = String::from("## Shared memory\n");
        let mut current: Option<&Kind> = None;
        for p in &self.items {
            if current != Some(&p.item.kind) {
                out.push_str("### ");
                out.push_str(p.item.kind.as_str());
                out.push('\n');
                current = Some(&p.item.kind);
            }
            out.push_str("- [");
            out.push_str(&p.item.id.short());
            out.push_str("] ");
            if let Some(title) = p.item.title() {
                out.push_str(title);
                out.push_str(": ");
            }
            out.push_str(&p.item.content);
            out.push('\n');
        }
        out
    }
}

/// Position of a kind in the prompt layout: built-in kinds in [`Kind::BUILTIN`] order, custom
/// kinds after them (alphabetically, by the caller's sort).
pub fn kind_order(kind: &Kind) -> usize {
    kind.builtin_index().unwrap_or(Kind::BUILTIN.len())
}

/// Per-candidate working state.
struct Scored {
    cost: u32,
    score: ScoreBreakdown,
    decision: Option<Decision>,
    truncated: Option<String>,
    /// Normalised query relevance, the strength lent to linked items.
    strength: f32,
    /// Raw BM25 score (0 when not a BM25 hit).
    bm25: f32,
    /// Raw similarity to the query (clamped at 0).
    cos_q: f32,
    /// Raw similarity to the role profile (clamped at 0).
    cos_r: f32,
    /// Affinity of the reading role for the producing role.
    affinity: f32,
    /// The query names the item's title.
    names_title: bool,
    /// The item's kind (see [`KindMemo`]).
    kind_slot: u16,
    /// The item's id, write order and sources, copied while its lines are in cache: later
    /// passes and the manifest read `scored` alone, not the (much larger) candidates.
    id: ItemId,
    seq: u64,
    sources: Sources,
}

/// Recency of an item `age` rounds old: halves every `half_life` rounds.
fn recency(age: u32, half_life: f32) -> f32 {
    0.5f32.powf(age as f32 / half_life.max(0.01))
}

/// What a route derives from an item's kind (readable by the role under the policy, stage
/// priority), computed once per distinct kind: a route sees few kinds and many items. Each
/// kind also gets a small slot number, so later passes can tell kinds apart without comparing
/// them.
#[derive(Default)]
struct KindMemo<'k> {
    /// By [`Kind::builtin_index`].
    builtin: [Option<KindInfo>; Kind::BUILTIN.len()],
    custom: Vec<(&'k Kind, KindInfo)>,
}

#[derive(Clone, Copy)]
struct KindInfo {
    reads: bool,
    priority: f32,
    slot: u16,
}

impl<'k> KindMemo<'k> {
    fn get(&mut self, kind: &'k Kind, ctx: &ScoringContext<'_>) -> KindInfo {
        let known = match kind.builtin_index() {
            Some(ix) => self.builtin[ix],
            None => self
                .custom
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|&(_, info)| info),
        };
        if let Some(info) = known {
            return info;
        }
        let info = KindInfo {
            reads: ctx.policy != Policy::Rcr || ctx.role.reads_kind(kind),
            priority: ctx.stage.priority_of(kind),
            slot: self.slots() as u16,
        };
        match kind.builtin_index() {
            Some(ix) => self.builtin[ix] = Some(info),
            None => self.custom.push((kind, info)),
        }
        info
    }

    /// The kinds seen, by slot.
    fn by_slot(&self) -> Vec<&'k Kind> {
        let mut kinds: Vec<(u16, &'k Kind)> = self
            .builtin
            .iter()
            .zip(&Kind::BUILTIN)
            .filter_map(|(info, kind)| info.map(|i| (i.slot, kind)))
            .chain(self.custom.iter().map(|&(kind, info)| (info.slot, kind)))
            .collect();
        kinds.sort_unstable_by_key(|&(slot, _)| slot);
        kinds.into_iter().map(|(_, kind)| kind).collect()
    }

    /// How many distinct kinds were seen (slots are `0..slots()`).
    fn slots(&self) -> usize {
        self.builtin.iter().flatten().count() + self.custom.len()
    }
}

/// The reading role's affinity per producing role, computed once per distinct producer.
#[derive(Default)]
struct ProducerMemo<'r> {
    seen: Vec<(&'r str, f32)>,
}

impl<'r> ProducerMemo<'r> {
    fn get(&mut self, producer: &'r str, role: &RoleProfile) -> f32 {
        if let Some(&(_, affinity)) = self.seen.iter().find(|(p, _)| *p == producer) {
            return affinity;
        }
        let affinity = role.affinity_for(producer);
        self.seen.push((producer, affinity));
        affinity
    }
}

/// Whether the router may cut this item at a sentence boundary.
fn truncatable(item: &MemoryItem) -> bool {
    let explicit = item
        .payload
        .as_ref()
        .and_then(|p| p.get("truncatable"))
        .and_then(|v| v.as_bool());
    explicit.unwrap_or(!matches!(
        item.kind,
        Kind::Task | Kind::Plan | Kind::Answer | Kind::Critique
    ))
}

/// The longest prefix of whole sentences of `text` within `max_tokens`.
fn cut_at_sentence(text: &str, max_tokens: u32, counter: &dyn TokenCounter) -> Option<String> {
    let mut ends: Vec<usize> = text
        .char_indices()
        .filter(|&(i, c)| {
            matches!(c, '.' | '!' | '?' | '\n')
                && text[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
        })
        .map(|(i, c)| i + c.len_utf8())
        .collect();
    ends.dedup();
    // Binary search the longest fitting prefix (token counts grow with the prefix).
    let (mut lo, mut hi) = (0usize, ends.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if counter.count(&text[..ends[mid - 1]]) <= max_tokens {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo > 0).then(|| text[..ends[lo - 1]].trim_end().to_owned())
}

/// Scores the candidates and packs the best subset into `budget` under the context's policy.
pub fn pack(candidates: &[Candidate], ctx: &ScoringContext<'_>, budget: u32) -> ContextPack {
    let w = ctx.weights;
    let role_name = ctx.role.name.as_str();
    let n = candidates.len();

    // 1. Hard rules, and everything each candidate contributes, read from it in one pass:
    //    the raw similarities (on int8 copies: a quarter of the memory traffic; query and
    //    role in one pass over the vector), the kind's stage priority, the producer's
    //    affinity, age, confidence, title. Pass 2 then works on `scored` alone.
    let query_q = ctx.query_vector.map(QuantizedVector::quantize);
    let role_q = ctx.role_vector.map(QuantizedVector::quantize);
    let query_lower = ctx.query.to_lowercase();
    let mut by_kind = KindMemo::default();
    let mut by_producer = ProducerMemo::default();
    // Recency depends only on the age in rounds: compute the usual ages once.
    let recency_of: [f32; 16] = std::array::from_fn(|age| recency(age as u32, w.recency_half_life));
    let mut scored: Vec<Scored> = Vec::with_capacity(n);
    let (mut max_bm25, mut max_q, mut max_r) = (0.0f32, 0.0f32, 0.0f32);
    for (i, c) in candidates.iter().enumerate() {
        // Candidates' vectors are separate allocations: fetch a few ahead of use.
        if let Some(v) = candidates
            .get(i + PREFETCH_AHEAD)
            .and_then(|c| c.vector.as_ref())
        {
            v.prefetch();
        }
        let item = &c.item;
        let kind = by_kind.get(&item.kind, ctx);
        let decision = if !item.readers.allows(role_name) {
            Some(Reason::NotReadable)
        } else if item.superseded {
            Some(Reason::Superseded)
        } else if !kind.reads {
            Some(Reason::KindNotRead)
        } else {
            None
        }
        .map(|reason| Decision::Rejected { reason });
        let title = item.title();
        let title_tokens = title.map_or(0, |t| ctx.counter.count(t) + 1);
        let mut s = Scored {
            cost: item.tokens + ITEM_OVERHEAD_TOKENS + title_tokens,
            score: ScoreBreakdown::default(),
            decision,
            truncated: None,
            strength: 0.0,
            bm25: 0.0,
            cos_q: 0.0,
            cos_r: 0.0,
            affinity: 0.0,
            names_title: false,
            kind_slot: kind.slot,
            id: item.id,
            seq: item.seq,
            sources: c.sources,
        };
        if s.decision.is_none() {
            if let Some(v) = &c.vector {
                let (q, r) = match (&query_q, &role_q) {
                    (Some(q), Some(r)) => v.dot_pair(q, r),
                    (Some(q), None) => (v.dot(q), 0.0),
                    (None, Some(r)) => (0.0, v.dot(r)),
                    (None, None) => (0.0, 0.0),
                };
                s.cos_q = q.max(0.0);
                s.cos_r = r.max(0.0);
                max_q = max_q.max(s.cos_q);
                max_r = max_r.max(s.cos_r);
            }
            s.bm25 = c.bm25.unwrap_or(0.0);
            max_bm25 = max_bm25.max(s.bm25);
            s.affinity = if ctx.role.affinity.is_empty() {
                // No table: no need to read the producer's name.
                ctx.role.default_affinity.clamp(0.0, 1.0)
            } else {
                by_producer.get(&item.producer.role, ctx.role)
            };
            // The query names the item's title: as relevant as an item can be.
            s.names_title =
                title.is_some_and(|t| crate::links::mentions(&query_lower, &t.to_lowercase()));
            let age = ctx.round.saturating_sub(item.producer.round);
            s.score.stage = kind.priority;
            s.score.recency = recency_of
                .get(age as usize)
                .copied()
                .unwrap_or_else(|| recency(age, w.recency_half_life));
            s.score.importance = item.confidence.clamp(0.0, 1.0);
        }
        scored.push(s);
    }

    // 2. Components and totals (without the bridge).
    let norm = |x: f32, max: f32| if max > 0.0 { x / max } else { 0.0 };
    for s in &mut scored {
        if s.decision.is_some() {
            continue;
        }
        let bm25 = norm(s.bm25, max_bm25);
        let query = if s.names_title {
            1.0
        } else {
            match (ctx.query_vector.is_some(), max_bm25 > 0.0) {
                (true, true) => 0.5 * bm25 + 0.5 * norm(s.cos_q, max_q),
                (true, false) => norm(s.cos_q, max_q),
                (false, _) => bm25,
            }
        };
        let role = if ctx.role_vector.is_some() {
            0.5 * norm(s.cos_r, max_r) + 0.5 * s.affinity
        } else {
            s.affinity
        };
        s.score.role = role;
        s.score.query = query;
        s.strength = query;
        s.score.total = w.role * role
            + w.stage * s.score.stage
            + w.query * query
            + w.recency * s.score.recency
            + w.importance * s.score.importance;
    }

    // 3. Bridges: link the strongest candidates (and those reached through links).
    if ctx.policy == Policy::Rcr && w.bridge > 0.0 {
        // Selected on compact (total, index) pairs: a selection jumps around, and 8-byte
        // pairs stay in cache where the per-candidate state would not.
        let mut by_total: Vec<(f32, usize)> = scored
            .iter()
            .enumerate()
            .filter(|(_, s)| s.decision.is_none())
            .map(|(i, s)| (s.score.total, i))
            .collect();
        if by_total.len() > LINK_CANDIDATES {
            by_total.select_nth_unstable_by(LINK_CANDIDATES - 1, |a, b| b.0.total_cmp(&a.0));
            by_total.truncate(LINK_CANDIDATES);
        }
        let mut strongest: Vec<usize> = by_total.into_iter().map(|(_, i)| i).collect();
        for (i, s) in scored.iter().enumerate() {
            if s.sources.has(Sources::LINK) && s.decision.is_none() && !strongest.contains(&i) {
                strongest.push(i);
            }
        }
        strongest.sort_unstable();
        let ents: Vec<Vec<String>> = strongest
            .iter()
            .map(|&i| entities(&candidates[i].item.content))
            .collect();
        let inputs: Vec<LinkInput<'_>> = strongest
            .iter()
            .zip(&ents)
            .map(|(&i, e)| LinkInput {
                item: &candidates[i].item,
                entities: e,
            })
            .collect();
        let graph = LinkGraph::build(&inputs);
        // Strength travels BRIDGE_HOPS links: after each hop, an item is as strong as its
        // query relevance or what its strongest neighbour lends it, whichever is more.
        let mut strength: Vec<f32> = strongest.iter().map(|&i| scored[i].strength).collect();
        for _ in 1..BRIDGE_HOPS {
            let lent = graph.bridge_scores(&strength);
            for (s, b) in strength.iter_mut().zip(lent) {
                *s = s.max(b);
            }
        }
        for (k, b) in graph.bridge_scores(&strength).into_iter().enumerate() {
            let s = &mut scored[strongest[k]];
            // A bridge lends what the item lacks: an item that already matches the query
            // gains little.
            s.score.bridge = (b - s.strength).max(0.0);
            s.score.total += w.bridge * s.score.bridge;
        }
    }

    // 4. Budget for items, oversized items.
    let eligible: Vec<usize> = (0..n).filter(|&i| scored[i].decision.is_none()).collect();
    let mut kind_present = vec![false; by_kind.slots()];
    for &i in &eligible {
        kind_present[usize::from(scored[i].kind_slot)] = true;
    }
    let kinds = kind_present.iter().filter(|&&p| p).count();
    let reserve = HEADER_TOKENS + GROUP_HEADER_TOKENS * kinds as u32;
    let item_budget = budget.saturating_sub(reserve);
    for &i in &eligible {
        if scored[i].cost <= item_budget {
            continue;
        }
        let item = &candidates[i].item;
        let fixed = scored[i].cost - item.tokens;
        let cut = (truncatable(item) && item_budget / 2 > fixed)
            .then(|| cut_at_sentence(&item.content, item_budget / 2 - fixed, ctx.counter))
            .flatten();
        match cut {
            Some(text) => {
                scored[i].cost = fixed + ctx.counter.count(&text);
                scored[i].truncated = Some(text);
            }
            None => {
                scored[i].decision = Some(Decision::Rejected {
                    reason: Reason::Oversized,
                })
            }
        }
    }

    // 5. Select.
    let selected = match ctx.policy {
        Policy::Rcr => select_rcr(candidates, &mut scored, w, item_budget),
        Policy::Full => {
            let mut order: Vec<usize> = (0..n).filter(|&i| scored[i].decision.is_none()).collect();
            order.sort_unstable_by_key(|&i| scored[i].seq);
            take_in_order(&order, &mut scored, item_budget, usize::MAX)
        }
        Policy::Recency => {
            let mut order: Vec<usize> = (0..n).filter(|&i| scored[i].decision.is_none()).collect();
            order.sort_unstable_by_key(|&i| std::cmp::Reverse(scored[i].seq));
            take_in_order(&order, &mut scored, item_budget, usize::MAX)
        }
        Policy::Static { k } => {
            let mut order: Vec<usize> = (0..n).filter(|&i| scored[i].decision.is_none()).collect();
            order.sort_unstable_by(|&a, &b| {
                scored[b]
                    .score
                    .query
                    .total_cmp(&scored[a].score.query)
                    .then(scored[a].seq.cmp(&scored[b].seq))
            });
            take_in_order(&order, &mut scored, item_budget, k)
        }
    };

    // 6. Assemble the pack in layout order and the manifest in score order.
    let mut in_pack: Vec<usize> = selected.clone();
    in_pack.sort_unstable_by(|&a, &b| {
        let (x, y) = (&candidates[a].item, &candidates[b].item);
        kind_order(&x.kind)
            .cmp(&kind_order(&y.kind))
            .then_with(|| x.kind.as_str().cmp(y.kind.as_str()))
            .then(x.seq.cmp(&y.seq))
    });
    let mut used_kinds: Vec<&Kind> = in_pack.iter().map(|&i| &candidates[i].item.kind).collect();
    used_kinds.dedup();
    let items_tokens: u32 = in_pack.iter().map(|&i| scored[i].cost).sum();
    let tokens_used = if in_pack.is_empty() {
        0
    } else {
        HEADER_TOKENS + GROUP_HEADER_TOKENS * used_kinds.len() as u32 + items_tokens
    };

    // Entries in candidate order (write order from the router): consumers sort as they like,
    // and a 10,000-candidate route does not pay for a sort nobody reads.
    let kinds_by_slot = by_kind.by_slot();
    let entries: Vec<ManifestEntry> = scored
        .iter()
        .map(|s| ManifestEntry {
            id: s.id,
            kind: kinds_by_slot[usize::from(s.kind_slot)].clone(),
            tokens: s.cost,
            sources: s.sources,
            score: s.score,
            decision: s.decision.unwrap_or(Decision::Rejected {
                reason: Reason::Budget,
            }),
        })
        .collect();

    let items = in_pack
        .iter()
        .map(|&i| {
            let mut item = candidates[i].item.clone();
            let truncated = scored[i].truncated.take();
            let was_cut = truncated.is_some();
            if let Some(text) = truncated {
                item.content = text;
            }
            PackedItem {
                item,
                tokens: scored[i].cost,
                truncated: was_cut,
            }
        })
        .collect();

    ContextPack {
        items,
        tokens_used,
        budget,
        manifest: Manifest {
            policy: ctx.policy.name().to_owned(),
            role: ctx.role.name.clone(),
            stage: ctx.stage.name.clone(),
            query: ctx.query.to_owned(),
            round: ctx.round,
            budget,
            tokens_used,
            as_of_seq: ctx.as_of_seq,
            entries,
        },
    }
}

/// Takes candidates in the given order while they fit (at most `k`); marks the rest `Budget`.
fn take_in_order(order: &[usize], scored: &mut [Scored], budget: u32, k: usize) -> Vec<usize> {
    let mut left = budget;
    let mut selected = Vec::new();
    for &i in order {
        let s = &mut scored[i];
        if selected.len() < k && s.cost <= left {
            left -= s.cost;
            s.score.marginal = s.score.total;
            s.decision = Some(Decision::Selected {
                rank: selected.len() as u32,
                truncated: s.truncated.is_some(),
            });
            selected.push(i);
        } else {
            s.decision = Some(Decision::Rejected {
                reason: Reason::Budget,
            });
        }
    }
    selected
}

/// Heap entry for lazy greedy: density upper bound, then earlier write first.
struct Entry {
    density: f32,
    seq: u64,
    index: usize,
    /// Number of selected items the marginal score accounts for.
    seen: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.density
            .total_cmp(&other.density)
            .then(other.seq.cmp(&self.seq))
    }
}

/// The rcr selection: lazy greedy by sharpened value per token, compared with an exact
/// knapsack on small eligible sets; the better objective wins.
fn select_rcr(
    candidates: &[Candidate],
    scored: &mut [Scored],
    w: &Weights,
    budget: u32,
) -> Vec<usize> {
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| scored[i].decision.is_none())
        .collect();
    let similarity = |a: usize, b: usize| -> f32 {
        match (&candidates[a].vector, &candidates[b].vector) {
            (Some(x), Some(y)) => x.dot(y).max(0.0),
            _ => 0.0,
        }
    };

    // Lazy greedy. Items below the threshold on their own never get in: decide them up front.
    let best = eligible
        .iter()
        .map(|&i| scored[i].score.total)
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    // The relative floor judges an item's own relevance (its total), `min_score` its marginal.
    let floor = w.min_score.max(MIN_RELATIVE_SCORE * best);
    let value = |x: f32| -> f32 { best * (x.max(0.0) / best).powi(SHARPNESS) };
    let mut outcome: Vec<(usize, Decision)> = Vec::with_capacity(eligible.len());
    let mut min_cost = u32::MAX;
    let mut pool: Vec<usize> = Vec::with_capacity(eligible.len());
    for &i in &eligible {
        if scored[i].score.total < floor {
            scored[i].score.marginal = scored[i].score.total;
            outcome.push((
                i,
                Decision::Rejected {
                    reason: Reason::LowScore,
                },
            ));
        } else {
            min_cost = min_cost.min(scored[i].cost);
            pool.push(i);
        }
    }
    let mut heap: BinaryHeap<Entry> = pool
        .iter()
        .map(|&i| Entry {
            density: value(scored[i].score.total) / scored[i].cost.max(1) as f32,
            seq: scored[i].seq,
            index: i,
            seen: 0,
        })
        .collect();
    let mut selected: Vec<usize> = Vec::new();
    let mut max_sim = vec![0.0f32; candidates.len()];
    let mut left = budget;
    let mut rescored = 0usize;
    while let Some(mut e) = heap.pop() {
        if left < min_cost {
            // Nothing else can fit: the rest are out for budget, in any order.
            heap.push(e);
            for e in heap.drain() {
                let i = e.index;
                scored[i].score.redundancy = max_sim[i];
                scored[i].score.marginal = scored[i].score.total - w.redundancy * max_sim[i];
                outcome.push((
                    i,
                    Decision::Rejected {
                        reason: Reason::Budget,
                    },
                ));
            }
            break;
        }
        let i = e.index;
        // Decisions that need no fresh similarity: marginal scores only fall, so a stale one
        // that is already too low stays too low, and an item that does not fit never will.
        let stale_marginal = scored[i].score.total - w.redundancy * max_sim[i];
        if scored[i].cost > left || stale_marginal < w.min_score {
            scored[i].score.redundancy = max_sim[i];
            scored[i].score.marginal = stale_marginal;
            let reason = if scored[i].cost > left {
                Reason::Budget
            } else {
                Reason::LowScore
            };
            outcome.push((i, Decision::Rejected { reason }));
            continue;
        }
        if e.seen < selected.len() {
            for &j in &selected[e.seen..] {
                max_sim[i] = max_sim[i].max(similarity(i, j));
            }
            e.seen = selected.len();
            let marginal = scored[i].score.total - w.redundancy * max_sim[i];
            e.density = value(marginal) / scored[i].cost.max(1) as f32;
            rescored += 1;
            // Exact lazy greedy re-queues the item; among many near-ties that re-scores
            // thousands of items per selection. After RESCORE_LIMIT re-scorings the item just
            // re-scored is judged as it is (its score is exact; it may trail an unseen
            // near-tie by a hair).
            if rescored < RESCORE_LIMIT {
                heap.push(e);
                continue;
            }
        }
        let marginal = scored[i].score.total - w.redundancy * max_sim[i];
        scored[i].score.redundancy = max_sim[i];
        scored[i].score.marginal = marginal;
        let reason = if max_sim[i] >= w.duplicate_similarity {
            Some(Reason::Redundant)
        } else if marginal < w.min_score {
            Some(Reason::LowScore)
        } else if scored[i].cost > left {
            Some(Reason::Budget)
        } else {
            None
        };
        match reason {
            Some(reason) => outcome.push((i, Decision::Rejected { reason })),
            None => {
                left -= scored[i].cost;
                outcome.push((
                    i,
                    Decision::Selected {
                        rank: selected.len() as u32,
                        truncated: scored[i].truncated.is_some(),
                    },
                ));
                selected.push(i);
                rescored = 0;
            }
        }
    }

    // Exact knapsack on small sets, over items that clear the threshold on their own.
    if eligible.len() <= EXACT_MAX_ITEMS && budget <= EXACT_MAX_BUDGET {
        let pool: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| scored[i].score.total >= floor)
            .collect();
        let exact = knapsack(&pool, scored, budget, &value);
        let objective = |set: &[usize]| -> f32 {
            let mut by_score = set.to_vec();
            by_score
                .sort_unstable_by(|&a, &b| scored[b].score.total.total_cmp(&scored[a].score.total));
            let mut total = 0.0;
            for (k, &i) in by_score.iter().enumerate() {
                let red = by_score[..k]
                    .iter()
                    .map(|&j| similarity(i, j))
                    .fold(0.0f32, f32::max);
                if red >= w.duplicate_similarity {
                    return f32::NEG_INFINITY;
                }
                total += value(scored[i].score.total - w.redundancy * red);
            }
            total
        };
        if objective(&exact) > objective(&selected) + 1e-6 {
            outcome.clear();
            let mut chosen = exact.clone();
            chosen
                .sort_unstable_by(|&a, &b| scored[b].score.total.total_cmp(&scored[a].score.total));
            for (rank, &i) in chosen.iter().enumerate() {
                let red = chosen[..rank]
                    .iter()
                    .map(|&j| similarity(i, j))
                    .fold(0.0f32, f32::max);
                scored[i].score.redundancy = red;
                scored[i].score.marginal = scored[i].score.total - w.redundancy * red;
                outcome.push((
                    i,
                    Decision::Selected {
                        rank: rank as u32,
                        truncated: scored[i].truncated.is_some(),
                    },
                ));
            }
            for &i in &eligible {
                if !chosen.contains(&i) {
                    let reason = if scored[i].score.total < floor {
                        Reason::LowScore
                    } else {
                        Reason::Budget
                    };
                    scored[i].score.marginal = scored[i].score.total;
                    outcome.push((i, Decision::Rejected { reason }));
                }
            }
            selected = chosen;
        }
    }
    for (i, d) in outcome {
        scored[i].decision = Some(d);
    }
    selected
}

/// 0/1 knapsack over `pool` maximising the sum of `value_of(total)` within `budget` tokens.
fn knapsack(
    pool: &[usize],
    scored: &[Scored],
    budget: u32,
    value_of: &dyn Fn(f32) -> f32,
) -> Vec<usize> {
    let cap = budget as usize;
    let n = pool.len();
    if n == 0 || cap == 0 {
        return Vec::new();
    }
    // best[c] = best value with capacity c; keep[k][c] = item k taken at capacity c.
    let mut best = vec![0.0f32; cap + 1];
    let mut keep = vec![vec![false; cap + 1]; n];
    for (k, &i) in pool.iter().enumerate() {
        let cost = scored[i].cost as usize;
        let value = value_of(scored[i].score.total);
        if cost > cap {
            continue;
        }
        for c in (cost..=cap).rev() {
            let with = best[c - cost] + value;
            if with > best[c] {
                best[c] = with;
                keep[k][c] = true;
            }
        }
    }
    let mut chosen = Vec::new();
    let mut c = cap;
    for k in (0..n).rev() {
        if keep[k][c] {
            chosen.push(pool[k]);
            c -= scored[pool[k]].cost as usize;
        }
    }
    chosen.reverse();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_memory::tokens::ApproxTokenCounter;
    use agentd_memory::{ItemId, Producer, Readers, Timestamp};

    fn item(kind: Kind, round: u32, tokens: u32, producer: &str) -> MemoryItem {
        MemoryItem {
            id: ItemId::new_v7(),
            seq: round as u64 * 100 + tokens as u64,
            namespace: "ns".into(),
            kind,
            content: "x ".repeat(tokens as usize),
            payload: None,
            producer: Producer::new(producer, "n", round),
            stage: None,
            tags: vec![],
            key: None,
            version: 1,
            confidence: 1.0,
            created_at: Timestamp(0),
            tokens,
            readers: Readers::All,
            superseded: false,
        }
    }

    fn cand(item: MemoryItem, vector: Vec<f32>, bm25: Option<f32>) -> Candidate {
        Candidate {
            item,
            vector: Some(QuantizedVector::quantize(&vector)),
            bm25,
            sources: Sources::QUERY,
        }
    }

    struct Fixture {
        role: RoleProfile,
        stage: StageProfile,
        weights: Weights,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                role: RoleProfile::new("answerer"),
                stage: StageProfile::new("answer"),
                weights: Weights::default(),
            }
        }
        fn ctx<'a>(&'a self, q: Option<&'a [f32]>, policy: Policy) -> ScoringContext<'a> {
            ScoringContext {
                role: &self.role,
                stage: &self.stage,
                weights: &self.weights,
                round: 3,
                query: "q",
                query_vector: q,
                role_vector: None,
                counter: &ApproxTokenCounter,
                policy,
                as_of_seq: None,
            }
        }
    }

    fn score_of(pack: &ContextPack, id: ItemId) -> ScoreBreakdown {
        pack.manifest
            .entries
            .iter()
            .find(|e| e.id == id)
            .unwrap()
            .score
    }

    #[test]
    fn query_component_normalises_bm25_and_cosine() {
        let f = Fixture::new();
        let q = [1.0, 0.0];
        let a = item(Kind::Fact, 3, 10, "r");
        let b = item(Kind::Fact, 3, 10, "r");
        let (ia, ib) = (a.id, b.id);
        let pack = pack(
            &[
                cand(a, vec![1.0, 0.0], Some(4.0)),
                cand(b, vec![0.6, 0.8], Some(2.0)),
            ],
            &f.ctx(Some(&q), Policy::Rcr),
            1000,
        );
        assert!((score_of(&pack, ia).query - 1.0).abs() < 1e-6);
        // 0.5 * 2/4 + 0.5 * 0.6/1
        assert!(
            (score_of(&pack, ib).query - 0.55).abs() < 0.01,
            "int8 similarity"
        );
    }

    #[test]
    fn stage_recency_importance_and_role_components() {
        let mut f = Fixture::new();
        f.stage = StageProfile::new("answer").priority(Kind::Evidence, 0.9);
        f.role.affinity.insert("researcher".into(), 1.0);
        f.weights.recency_half_life = 1.0;
        let mut old = item(Kind::Evidence, 1, 10, "researcher");
        old.confidence = 0.4;
        let new = item(Kind::Plan, 3, 10, "planner");
        let (io, inew) = (old.id, new.id);
        let pack = pack(
            &[cand(old, vec![1.0], None), cand(new, vec![1.0], None)],
            &f.ctx(None, Policy::Rcr),
            1000,
        );
        let (so, sn) = (score_of(&pack, io), score_of(&pack, inew));
        assert_eq!(so.stage, 0.9);
        assert_eq!(sn.stage, 0.2);
        assert!(
            (so.recency - 0.25).abs() < 1e-6,
            "two rounds old, half-life 1"
        );
        assert_eq!(sn.recency, 1.0);
        assert!((so.importance - 0.4).abs() < 1e-6);
        assert_eq!(so.role, 1.0);
        assert_eq!(sn.role, 0.5);
        let w = &f.weights;
        let expected = w.role * 1.0 + w.stage * 0.9 + w.recency * 0.25 + w.importance * 0.4;
        assert!((so.total - expected).abs() < 1e-5);
    }

    #[test]
    fn redundancy_penalises_and_rejects_duplicates() {
        let f = Fixture::new();
        let q = [1.0, 0.0];
        let a = item(Kind::Fact, 3, 10, "r");
        let dup = item(Kind::Fact, 3, 10, "r");
        let other = item(Kind::Fact, 3, 10, "r");
        let (ia, idup, iother) = (a.id, dup.id, other.id);
        let pack = pack(
            &[
                cand(a, vec![1.0, 0.0], Some(3.0)),
                cand(dup, vec![1.0, 0.0], Some(3.0)),
                cand(other, vec![0.8, 0.6], Some(2.5)),
            ],
            &f.ctx(Some(&q), Policy::Rcr),
            1000,
        );
        let selected = pack.manifest.selected();
        assert!(selected.contains(&ia) && selected.contains(&iother));
        let d = pack.manifest.entries.iter().find(|e| e.id == idup).unwrap();
        assert_eq!(
            d.decision,
            Decision::Rejected {
                reason: Reason::Redundant
            }
        );
        let o = score_of(&pack, iother);
        assert!((o.redundancy - 0.8).abs() < 1e-5);
        assert!((o.marginal - (o.total - f.weights.redundancy * 0.8)).abs() < 1e-5);
    }

    #[test]
    fn unreadable_superseded_and_unread_kinds_are_rejected_with_reasons() {
        let mut f = Fixture::new();
        f.role.reads = vec![Kind::Fact];
        let mut secret = item(Kind::Fact, 3, 5, "r");
        secret.readers = Readers::roles(["critic"]);
        let mut old = item(Kind::Fact, 3, 6, "r");
        old.superseded = true;
        let plan = item(Kind::Plan, 3, 7, "r");
        let ok = item(Kind::Fact, 3, 8, "r");
        let ids = [secret.id, old.id, plan.id, ok.id];
        let pack = pack(
            &[
                cand(secret, vec![1.0], Some(1.0)),
                cand(old, vec![1.0], Some(1.0)),
                cand(plan, vec![1.0], Some(1.0)),
                cand(ok, vec![1.0], Some(1.0)),
            ],
            &f.ctx(None, Policy::Rcr),
            1000,
        );
        let reason = |id| {
            pack.manifest
                .entries
                .iter()
                .find(|e| e.id == id)
                .unwrap()
                .decision
        };
        assert_eq!(
            reason(ids[0]),
            Decision::Rejected {
                reason: Reason::NotReadable
            }
        );
        assert_eq!(
            reason(ids[1]),
            Decision::Rejected {
                reason: Reason::Superseded
            }
        );
        assert_eq!(
            reason(ids[2]),
            Decision::Rejected {
                reason: Reason::KindNotRead
            }
        );
        assert!(reason(ids[3]).is_selected());
        // Unreadable items are not scored.
        assert_eq!(score_of(&pack, ids[0]), ScoreBreakdown::default());
    }

    #[test]
    fn oversized_items_are_cut_at_sentences_or_rejected() {
        let f = Fixture::new();
        let mut doc = item(Kind::Document, 3, 0, "r");
        doc.content = "First sentence here. Second sentence is here. ".repeat(40);
        doc.tokens = ApproxTokenCounter.count(&doc.content);
        let mut answer = item(Kind::Answer, 3, 0, "r");
        answer.content = "word ".repeat(400);
        answer.tokens = ApproxTokenCounter.count(&answer.content);
        let (idoc, ians) = (doc.id, answer.id);
        let pack = pack(
            &[
                cand(doc, vec![1.0], Some(2.0)),
                cand(answer, vec![1.0], Some(1.0)),
            ],
            &f.ctx(None, Policy::Rcr),
            200,
        );
        let packed = pack.items.iter().find(|p| p.item.id == idoc).unwrap();
        assert!(packed.truncated);
        assert!(packed.item.content.ends_with('.'));
        assert!(pack.tokens_used <= 200);
        let a = pack.manifest.entries.iter().find(|e| e.id == ians).unwrap();
        assert_eq!(
            a.decision,
            Decision::Rejected {
                reason: Reason::Oversized
            }
        );
    }

    #[test]
    fn layout_groups_kinds_in_a_fixed_order() {
        let f = Fixture::new();
        let items = vec![
            item(Kind::Answer, 3, 5, "r"),
            item(Kind::Task, 1, 5, "r"),
            item(Kind::Evidence, 2, 5, "r"),
            item(Kind::Evidence, 1, 6, "r"),
        ];
        let pack = pack(
            &items
                .into_iter()
                .map(|i| cand(i, vec![1.0], Some(1.0)))
                .collect::<Vec<_>>(),
            &f.ctx(None, Policy::Full),
            10_000,
        );
        let kinds: Vec<&str> = pack.items.iter().map(|p| p.item.kind.as_str()).collect();
        assert_eq!(kinds, ["task", "evidence", "evidence", "answer"]);
        assert!(pack.items[1].item.seq < pack.items[2].item.seq);
        let text = pack.render();
        assert!(text.starts_with("## Shared memory\n### task\n"));
    }

    fn titled(title: &str, content: &str, tokens: u32) -> MemoryItem {
        let mut it = item(Kind::Document, 3, tokens, "loader");
        it.payload = Some(serde_json::json!({ "title": title }));
        it.content = content.into();
        it
    }

    #[test]
    fn an_item_whose_title_the_query_names_has_full_query_relevance() {
        let f = Fixture::new();
        let named = titled("Blade Runner", "A 1982 science fiction film.", 10);
        let other = titled("Runner bean", "A climbing bean.", 10);
        let top = titled("Harrison Ford", "An American actor.", 10);
        let (inamed, iother) = (named.id, other.id);
        let mut ctx = f.ctx(None, Policy::Rcr);
        ctx.query = "Who directed Blade Runner?";
        let pack = pack(
            &[
                cand(named, vec![1.0], Some(1.0)),
                cand(other, vec![1.0], Some(1.0)),
                cand(top, vec![1.0], Some(2.0)),
            ],
            &ctx,
            1000,
        );
        assert_eq!(score_of(&pack, inamed).query, 1.0);
        // "Runner bean" is not named (the whole title, on word boundaries): BM25 alone.
        assert!((score_of(&pack, iother).query - 0.5).abs() < 1e-6);
    }

    #[test]
    fn bridge_scores_travel_two_hops() {
        // question → film (named) → director (named in the film's text) → school (named in
        // the director's text): the school gets a bridge score through two links.
        let f = Fixture::new();
        let film = titled(
            "Blade Runner",
            "Blade Runner was directed by Ridley Scott.",
            10,
        );
        let director = titled(
            "Ridley Scott",
            "Ridley Scott studied at the Royal College of Art.",
            10,
        );
        let school = titled("Royal College of Art", "A public research university.", 10);
        let noise = titled("Paris", "Paris is the capital of France.", 10);
        let ids = [film.id, director.id, school.id, noise.id];
        let mut ctx = f.ctx(None, Policy::Rcr);
        ctx.query = "Where did the director of Blade Runner study?";
        let pack = pack(
            &[
                cand(film, vec![1.0], Some(3.0)),
                cand(director, vec![1.0], None),
                cand(school, vec![1.0], None),
                cand(noise, vec![1.0], None),
            ],
            &ctx,
            1000,
        );
        let s: Vec<ScoreBreakdown> = ids.iter().map(|&id| score_of(&pack, id)).collect();
        assert_eq!(s[0].query, 1.0);
        assert!((s[1].bridge - 1.0).abs() < 1e-6, "one hop: {:?}", s[1]);
        assert!((s[2].bridge - 1.0).abs() < 1e-6, "two hops: {:?}", s[2]);
        assert_eq!(s[3].bridge, 0.0);
    }

    #[test]
    fn items_far_below_the_best_are_not_packed_just_because_they_fit() {
        let mut f = Fixture::new();
        f.weights.role = 0.0;
        f.weights.stage = 0.0;
        f.weights.recency = 0.0;
        f.weights.importance = 0.0;
        f.weights.min_score = 0.0;
        let strong = item(Kind::Fact, 3, 10, "r");
        let weak = item(Kind::Fact, 3, 10, "r");
        let (istrong, iweak) = (strong.id, weak.id);
        let cands = [
            cand(strong, vec![1.0, 0.0], Some(10.0)),
            cand(weak, vec![0.0, 1.0], Some(3.0)),
        ];
        let p = pack(&cands, &f.ctx(None, Policy::Rcr), 1000);
        assert!(p.manifest.selected().contains(&istrong));
        let e = p.manifest.entries.iter().find(|e| e.id == iweak).unwrap();
        assert_eq!(
            e.decision,
            Decision::Rejected {
                reason: Reason::LowScore
            },
            "0.3 of the best is under the 0.5 floor"
        );
    }

    #[test]
    fn sharpness_prefers_one_strong_item_to_several_weak_cheap_ones() {
        // Budget for either the strong item (100 tokens) or the three weak ones (30 each).
        // By plain score per token two weak ones win (2 × 0.6 > 1.0); sharpened, the strong
        // one does.
        let mut f = Fixture::new();
        f.weights.role = 0.0;
        f.weights.stage = 0.0;
        f.weights.recency = 0.0;
        f.weights.importance = 0.0;
        f.weights.min_score = 0.0;
        f.weights.redundancy = 0.0;
        let strong = item(Kind::Fact, 3, 100, "r");
        let istrong = strong.id;
        let mut cands = vec![cand(strong, vec![1.0, 0.0, 0.0, 0.0], Some(10.0))];
        for k in 1..4 {
            let mut v = vec![0.0; 4];
            v[k] = 1.0;
            cands.push(cand(item(Kind::Fact, 3, 30, "r"), v, Some(6.0)));
        }
        let budget = HEADER_TOKENS + GROUP_HEADER_TOKENS + 100 + ITEM_OVERHEAD_TOKENS;
        let sharp = pack(&cands, &f.ctx(None, Policy::Rcr), budget);
        assert_eq!(sharp.manifest.selected(), vec![istrong]);
    }

    #[test]
    fn policies_parse() {
        assert_eq!(Policy::parse("rcr"), Some(Policy::Rcr));
        assert_eq!(Policy::parse("static:5"), Some(Policy::Static { k: 5 }));
        assert_eq!(Policy::parse("static"), Some(Policy::Static { k: 8 }));
        assert_eq!(Policy::parse("nope"), None);
    }
}
