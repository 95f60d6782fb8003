//! Routing-only evaluation: does the pack a role gets hold the evidence, and at what share of
//! the full context's tokens?
//!
//! For each question, its paragraphs are written into a fresh namespace of one store as
//! `document` items (payload `{"title": ...}`, content the sentences joined by spaces), then the
//! question as the `task` item. For each evaluated node of the workflow (by default the node
//! whose role writes the workflow's stop kind, the answerer), with its role profile, stage
//! profile, the workflow's weights and the node's query template rendered with the question,
//! the router packs under each policy at each budget. The `full` policy at
//! [`RoutingEvalConfig::full_budget`] is the full-context reference the token shares divide by.
//!
//! The BM25 baseline ranks the question's documents by BM25 on the question and fills them, in
//! rank order (skipping what does not fit), into the tokens rcr's pack spent on documents at the
//! same budget; its reported tokens add rcr's own overhead (header, task item), so both sit at
//! equal tokens.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agentd_memory::embed::{EmbedError, EmbedderConfig};
use agentd_memory::store::{Durability, EmbeddedStore, StoreOptions};
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{
    Filter, ItemId, Kind, MemoryError, MemoryStore, NewItem, Producer, SearchMode, SearchQuery,
};
use agentd_router::{
    ContextPack, Decision, Policy, RouteError, RouteRequest, Router, effective_budget,
};
use agentd_workflow::{ConfigErrors, NodeSpec, TemplateVars, Workflow};
use serde::{Deserialize, Serialize};

use crate::datasets::{self, DatasetError, DatasetKind, Question};
use crate::report::{EvalReport, FullReference, PolicyResult, ReportConfig, Timing};

/// A policy to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum PolicySpec {
    /// The router's role- and stage-aware policy.
    Rcr,
    /// Every item in write order, cut at the budget.
    Full,
    /// Top-`k` by query relevance, within the budget.
    Static(usize),
    /// Static top-k with k = the number of items rcr selected for the same question and budget.
    StaticMatched,
    /// Newest first.
    Recency,
}

impl PolicySpec {
    /// Parses `rcr`, `full`, `static` (k = 4), `static:K`, `static:matched`, `recency`.
    pub fn parse(s: &str) -> Option<PolicySpec> {
        match s.trim() {
            "rcr" => Some(PolicySpec::Rcr),
            "full" => Some(PolicySpec::Full),
            "recency" => Some(PolicySpec::Recency),
            "static" => Some(PolicySpec::Static(4)),
            "static:matched" => Some(PolicySpec::StaticMatched),
            other => other
                .strip_prefix("static:")
                .and_then(|k| k.parse().ok())
                .filter(|k| *k > 0)
                .map(PolicySpec::Static),
        }
    }

    /// The default set: rcr, full, static:4, static:matched, recency.
    pub fn defaults() -> Vec<PolicySpec> {
        vec![
            PolicySpec::Rcr,
            PolicySpec::Full,
            PolicySpec::Static(4),
            PolicySpec::StaticMatched,
            PolicySpec::Recency,
        ]
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Rcr => f.write_str("rcr"),
            PolicySpec::Full => f.write_str("full"),
            PolicySpec::Static(k) => write!(f, "static:{k}"),
            PolicySpec::StaticMatched => f.write_str("static:matched"),
            PolicySpec::Recency => f.write_str("recency"),
        }
    }
}

impl From<PolicySpec> for String {
    fn from(p: PolicySpec) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for PolicySpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PolicySpec::parse(&s).ok_or_else(|| format!("unknown policy {s:?}"))
    }
}

/// A budget to route at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum BudgetSpec {
    /// The node's effective budget (role budget × stage multiplier, capped by the node).
    Role,
    /// A fixed number of tokens.
    Tokens(u32),
}

impl BudgetSpec {
    /// Parses `role` or a token count.
    pub fn parse(s: &str) -> Option<BudgetSpec> {
        match s.trim() {
            "role" => Some(BudgetSpec::Role),
            n => n.parse().ok().map(BudgetSpec::Tokens),
        }
    }
}

impl fmt::Display for BudgetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetSpec::Role => f.write_str("role"),
            BudgetSpec::Tokens(n) => write!(f, "{n}"),
        }
    }
}

impl From<BudgetSpec> for String {
    fn from(b: BudgetSpec) -> String {
        b.to_string()
    }
}

impl TryFrom<String> for BudgetSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BudgetSpec::parse(&s).ok_or_else(|| format!("invalid budget {s:?}"))
    }
}

/// What to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingEvalConfig {
    /// The dataset file (JSON array or JSON lines).
    pub file: PathBuf,
    /// The dataset (`None`: detected from the first record).
    pub dataset: Option<DatasetKind>,
    /// Read only the first `limit` questions.
    pub limit: Option<usize>,
    /// Evaluate a seeded random sample of this many questions (after `limit`), in file order.
    pub sample: Option<usize>,
    /// Seed of the sample.
    pub seed: u64,
    /// Policies to route under.
    pub policies: Vec<PolicySpec>,
    /// Budgets to route at.
    pub budgets: Vec<BudgetSpec>,
    /// Also compute the BM25 baseline at rcr's tokens.
    pub bm25_baseline: bool,
    /// Also compute the diagnostic `rcr:by_score`: rcr's candidates filled in descending total
    /// score (no per-token ratio, no redundancy penalty) into rcr's document tokens; it tells
    /// the ranking's share of a miss from the packing's.
    pub score_order_diagnostic: bool,
    /// Budget of the full-context reference (large enough for every paragraph).
    pub full_budget: u32,
    /// The store's embedder.
    pub embedder: EmbedderConfig,
    /// The workflow whose nodes are evaluated.
    pub workflow: PathBuf,
    /// Nodes to evaluate (empty: the answerer, the node whose role writes the stop kind).
    pub nodes: Vec<String>,
    /// Evaluate every node of the workflow (overrides `nodes`).
    pub all_nodes: bool,
    /// Where to put the store (`None`: a temporary directory, removed afterwards).
    pub store_dir: Option<PathBuf>,
}

impl Default for RoutingEvalConfig {
    fn default() -> Self {
        RoutingEvalConfig {
            file: PathBuf::new(),
            dataset: None,
            limit: None,
            sample: None,
            seed: 0,
            policies: PolicySpec::defaults(),
            budgets: vec![BudgetSpec::Role],
            bm25_baseline: true,
            score_order_diagnostic: true,
            full_budget: 100_000,
            embedder: EmbedderConfig::default(),
            workflow: PathBuf::from("workflows/multihop_qa.toml"),
            nodes: Vec::new(),
            all_nodes: false,
            store_dir: None,
        }
    }
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The dataset could not be loaded.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The workflow could not be loaded.
    #[error("workflow {path}:\n{source}")]
    Workflow {
        /// Its file.
        path: PathBuf,
        /// Its errors.
        source: ConfigErrors,
    },
    /// A node named in the configuration is not in the workflow.
    #[error("no node `{name}` in the workflow (nodes: {available})")]
    UnknownNode {
        /// The name given.
        name: String,
        /// The workflow's nodes.
        available: String,
    },
    /// The configuration is unusable.
    #[error("invalid evaluation configuration: {0}")]
    Config(String),
    /// The temporary store directory could not be created.
    #[error("cannot create the store directory: {0}")]
    Io(#[from] std::io::Error),
    /// The embedder could not be built.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The store failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Routing failed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The runtime failed (end-to-end mode).
    #[error(transparent)]
    Runtime(#[from] agentd_runtime::RuntimeError),
}

/// Running sums of one row.
#[derive(Default)]
struct Acc {
    budget: u32,
    recall: f64,
    sentence_recall: f64,
    sentence_questions: usize,
    precision: f64,
    all_gold: usize,
    tokens: f64,
    items: f64,
    questions: usize,
    gold_total: usize,
    fate: BTreeMap<String, usize>,
    rank_sum: usize,
    rank_n: usize,
    missed_rank_sum: usize,
    missed_rank_n: usize,
}

/// What one pack holds, as the metrics see it.
struct Outcome {
    recall: f64,
    sentence_recall: Option<f64>,
    precision: f64,
    all_gold: bool,
    tokens: u32,
    items: usize,
    fate: Vec<String>,
    /// Ranks (1 = best, by the manifest's total score among document candidates) of the gold
    /// paragraphs: (all gold with a rank, missed gold with a rank).
    ranks: (Vec<usize>, Vec<usize>),
}

impl Acc {
    fn add(&mut self, o: &Outcome, gold: usize) {
        self.recall += o.recall;
        if let Some(s) = o.sentence_recall {
            self.sentence_recall += s;
            self.sentence_questions += 1;
        }
        self.precision += o.precision;
        self.all_gold += o.all_gold as usize;
        self.tokens += o.tokens as f64;
        self.items += o.items as f64;
        self.questions += 1;
        self.gold_total += gold;
        for f in &o.fate {
            *self.fate.entry(f.clone()).or_default() += 1;
        }
        self.rank_sum += o.ranks.0.iter().sum::<usize>();
        self.rank_n += o.ranks.0.len();
        self.missed_rank_sum += o.ranks.1.iter().sum::<usize>();
        self.missed_rank_n += o.ranks.1.len();
    }
}

/// One question's items in the store.
struct Indexed {
    namespace: String,
    /// Item id → paragraph index.
    paragraph_of: HashMap<ItemId, usize>,
    /// Paragraph index → item id.
    items: Vec<ItemId>,
}

/// Runs the routing-only evaluation; `progress(done, total)` is called after each question.
pub fn run_routing_eval(
    config: &RoutingEvalConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let started = Instant::now();
    if config.policies.is_empty() && !config.bm25_baseline {
        return Err(EvalError::Config("no policy to evaluate".into()));
    }
    if config.budgets.is_empty() {
        return Err(EvalError::Config("no budget to route at".into()));
    }
    let workflow = Workflow::load(&config.workflow).map_err(|source| EvalError::Workflow {
        path: config.workflow.clone(),
        source,
    })?;
    let nodes = select_nodes(&workflow, config)?;

    let dataset = datasets::load(&config.file, config.dataset)?;
    let file_count = dataset.questions.len();
    let mut questions = dataset.questions;
    if let Some(limit) = config.limit {
        questions.truncate(limit);
    }
    if let Some(n) = config.sample {
        questions = sample(questions, n, config.seed);
    }
    if questions.is_empty() {
        return Err(EvalError::Config(format!(
            "no questions in {}",
            config.file.display()
        )));
    }
    let load_secs = started.elapsed().as_secs_f64();

    let temp;
    let dir = match &config.store_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let embedder = config.embedder.build()?;
    let options =
        StoreOptions::new(embedder, default_token_counter()).durability(Durability::Background {
            flush_every_ms: 1000,
        });
    let store: Arc<dyn MemoryStore> = Arc::new(EmbeddedStore::open(&dir, options)?);
    let router = Router::new(Arc::clone(&store));
    let weights = &workflow.router.weights;
    let counter = Arc::clone(store.token_counter());

    // Rows in report order: node, budget, policy (then bm25).
    let mut labels: Vec<(usize, usize, String)> = Vec::new();
    for ni in 0..nodes.len() {
        for bi in 0..config.budgets.len() {
            for p in &config.policies {
                labels.push((ni, bi, p.to_string()));
            }
            if config.bm25_baseline {
                labels.push((ni, bi, "bm25".to_owned()));
            }
            if config.score_order_diagnostic {
                labels.push((ni, bi, "rcr:by_score".to_owned()));
            }
        }
    }
    let mut accs: HashMap<(usize, usize, String), Acc> = HashMap::new();
    let mut full_ref: Vec<Acc> = nodes.iter().map(|_| Acc::default()).collect();
    let mut index_secs = 0.0;
    let mut routes = 0u64;

    for (qi, q) in questions.iter().enumerate() {
        let t = Instant::now();
        let indexed = index_question(store.as_ref(), qi, q)?;
        index_secs += t.elapsed().as_secs_f64();
        let namespaces = [indexed.namespace.clone()];
        for (ni, node) in nodes.iter().enumerate() {
            let role = &workflow.role_of(node).profile;
            let stage = workflow.stage_of(node);
            let query = node.render_query(&TemplateVars {
                task: &q.question,
                role: &node.role,
                stage: &node.stage,
                round: 1,
                ..TemplateVars::default()
            });
            // Embedded once per (question, node), as the router would for every route.
            let query_vector = if query.trim().is_empty() {
                None
            } else {
                Some(store.embedder().embed_query(&query)?)
            };
            let route = |policy: Policy, budget: u32| {
                router.route(&RouteRequest {
                    namespaces: &namespaces,
                    role,
                    stage,
                    query: &query,
                    query_vector: query_vector.as_deref(),
                    round: 1,
                    budget,
                    policy,
                    weights,
                    as_of_seq: None,
                })
            };
            let full = route(Policy::Full, config.full_budget)?;
            routes += 1;
            full_ref[ni].add(&outcome(&full, q, &indexed), q.gold.len());

            for (bi, spec) in config.budgets.iter().enumerate() {
                let budget = match spec {
                    BudgetSpec::Role => effective_budget(role, stage, node.budget, None),
                    BudgetSpec::Tokens(n) => *n,
                };
                let needs_rcr = config.bm25_baseline
                    || config.score_order_diagnostic
                    || config
                        .policies
                        .iter()
                        .any(|p| matches!(p, PolicySpec::Rcr | PolicySpec::StaticMatched));
                let rcr = if needs_rcr {
                    routes += 1;
                    Some(route(Policy::Rcr, budget)?)
                } else {
                    None
                };
                for p in &config.policies {
                    let pack = match p {
                        PolicySpec::Rcr => rcr.clone().expect("rcr was routed"),
                        PolicySpec::Full => route(Policy::Full, budget)?,
                        PolicySpec::Static(k) => route(Policy::Static { k: *k }, budget)?,
                        PolicySpec::StaticMatched => {
                            let k = rcr.as_ref().expect("rcr was routed").items.len().max(1);
                            route(Policy::Static { k }, budget)?
                        }
                        PolicySpec::Recency => route(Policy::Recency, budget)?,
                    };
                    if !matches!(p, PolicySpec::Rcr) {
                        routes += 1;
                    }
                    let acc = accs.entry((ni, bi, p.to_string())).or_default();
                    acc.budget = budget;
                    acc.add(&outcome(&pack, q, &indexed), q.gold.len());
                }
                if config.bm25_baseline {
                    let rcr = rcr.as_ref().expect("rcr was routed");
                    let o = bm25_fill(store.as_ref(), counter.as_ref(), rcr, q, &indexed)?;
                    let acc = accs.entry((ni, bi, "bm25".to_owned())).or_default();
                    acc.budget = budget;
                    acc.add(&o, q.gold.len());
                }
                if config.score_order_diagnostic {
                    let rcr = rcr.as_ref().expect("rcr was routed");
                    let o = score_order_fill(counter.as_ref(), rcr, q, &indexed);
                    let acc = accs.entry((ni, bi, "rcr:by_score".to_owned())).or_default();
                    acc.budget = budget;
                    acc.add(&o, q.gold.len());
                }
            }
        }
        progress(qi + 1, questions.len());
    }

    let full_reference: Vec<FullReference> = nodes
        .iter()
        .zip(&full_ref)
        .map(|(n, a)| FullReference {
            node: n.name.clone(),
            mean_tokens: a.tokens / a.questions.max(1) as f64,
            evidence_recall: a.recall / a.questions.max(1) as f64,
        })
        .collect();
    let results = labels
        .into_iter()
        .map(|key| {
            let (ni, bi, policy) = key.clone();
            let a = accs.remove(&key).unwrap_or_default();
            let node = nodes[ni];
            let n = a.questions.max(1) as f64;
            let mean_tokens = a.tokens / n;
            PolicyResult {
                policy,
                budget_spec: config.budgets[bi],
                budget: a.budget,
                node: node.name.clone(),
                role: node.role.clone(),
                stage: node.stage.clone(),
                evidence_recall: a.recall / n,
                sentence_recall: (a.sentence_questions > 0)
                    .then(|| a.sentence_recall / a.sentence_questions as f64),
                evidence_precision: a.precision / n,
                all_gold: a.all_gold as f64 / n,
                mean_tokens,
                token_share: mean_tokens / full_reference[ni].mean_tokens.max(1.0),
                mean_items: a.items / n,
                questions: a.questions,
                gold_total: a.gold_total,
                gold_fate: a.fate,
                gold_rank: (a.rank_n > 0).then(|| a.rank_sum as f64 / a.rank_n as f64),
                missed_gold_rank: (a.missed_rank_n > 0)
                    .then(|| a.missed_rank_sum as f64 / a.missed_rank_n as f64),
            }
        })
        .collect();
    let total_secs = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        config: ReportConfig {
            dataset: dataset.kind,
            file: config.file.display().to_string(),
            count: questions.len(),
            file_count,
            policies: config.policies.clone(),
            budgets: config.budgets.clone(),
            bm25_baseline: config.bm25_baseline,
            score_order_diagnostic: config.score_order_diagnostic,
            full_budget: config.full_budget,
            embedder: config.embedder.clone(),
            workflow: config.workflow.display().to_string(),
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
            seed: config.seed,
            sample: config.sample,
            limit: config.limit,
        },
        full_reference,
        results,
        timing: Timing {
            load_secs,
            index_secs,
            route_secs: total_secs - load_secs - index_secs,
            total_secs,
            routes,
        },
    })
}

/// The nodes to evaluate, in workflow order.
fn select_nodes<'w>(
    workflow: &'w Workflow,
    config: &RoutingEvalConfig,
) -> Result<Vec<&'w NodeSpec>, EvalError> {
    let available = || {
        workflow
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if config.all_nodes {
        return Ok(workflow.nodes.iter().collect());
    }
    if config.nodes.is_empty() {
        let stop = workflow.stop_when.as_ref().map(|s| s.kind.clone());
        let answerer = workflow
            .nodes
            .iter()
            .find(|n| {
                stop.as_ref()
                    .is_some_and(|k| workflow.role_of(n).writes.contains(k))
            })
            .or_else(|| workflow.node("answer"))
            .ok_or_else(|| EvalError::UnknownNode {
                name: "answer (the node writing the stop kind)".into(),
                available: available(),
            })?;
        return Ok(vec![answerer]);
    }
    let mut out = Vec::new();
    for n in &workflow.nodes {
        if config.nodes.contains(&n.name) {
            out.push(n);
        }
    }
    for name in &config.nodes {
        if workflow.node(name).is_none() {
            return Err(EvalError::UnknownNode {
                name: name.clone(),
                available: available(),
            });
        }
    }
    Ok(out)
}

/// A seeded sample of `n` questions, kept in file order.
pub(crate) fn sample(questions: Vec<Question>, n: usize, seed: u64) -> Vec<Question> {
    if n >= questions.len() {
        return questions;
    }
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..questions.len()).collect();
    for i in 0..n {
        let j = i + (next() % (idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut chosen = idx[..n].to_vec();
    chosen.sort_unstable();
    let mut keep = vec![false; questions.len()];
    for i in chosen {
        keep[i] = true;
    }
    questions
        .into_iter()
        .zip(keep)
        .filter_map(|(q, k)| k.then_some(q))
        .collect()
}

/// Writes a question's paragraphs (then the question) into its own namespace.
fn index_question(store: &dyn MemoryStore, qi: usize, q: &Question) -> Result<Indexed, EvalError> {
    let namespace = format!("q{qi}");
    let mut batch: Vec<NewItem> = q
        .paragraphs
        .iter()
        .map(|p| {
            NewItem::new(&namespace, Kind::Document, p.text())
                .payload(serde_json::json!({ "title": p.title }))
                .producer(Producer::new("loader", "documents", 0))
        })
        .collect();
    batch.push(
        NewItem::new(&namespace, Kind::Task, q.question.clone())
            .producer(Producer::new("user", "task", 0)),
    );
    let written = store.put_batch(batch)?;
    let items: Vec<ItemId> = written[..q.paragraphs.len()].iter().map(|i| i.id).collect();
    let paragraph_of = items.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    Ok(Indexed {
        namespace,
        paragraph_of,
        items,
    })
}

/// Recall, precision and the fate of gold paragraphs for one pack.
fn outcome(pack: &ContextPack, q: &Question, ix: &Indexed) -> Outcome {
    // Paragraph index → the content the pack holds (cut or whole).
    let mut held: HashMap<usize, (&str, bool)> = HashMap::new();
    for p in &pack.items {
        if let Some(&pi) = ix.paragraph_of.get(&p.item.id) {
            held.insert(pi, (p.item.content.as_str(), p.truncated));
        }
    }
    let gold_in = q.gold.iter().filter(|g| held.contains_key(g)).count();
    let mut fate = Vec::new();
    for g in &q.gold {
        match held.get(g) {
            Some((_, true)) => fate.push("cut".to_owned()),
            Some((_, false)) => {}
            None => {
                let id = ix.items[*g];
                let why = match pack.manifest.entries.iter().find(|e| e.id == id) {
                    None => "not_candidate".to_owned(),
                    Some(e) => match e.decision {
                        Decision::Rejected { reason } => serde_json::to_value(reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_else(|| format!("{reason:?}")),
                        Decision::Selected { .. } => "selected_elsewhere".to_owned(),
                    },
                };
                fate.push(why);
            }
        }
    }
    let sentence_recall = (!q.gold_sentences.is_empty()).then(|| {
        let hit = q
            .gold_sentences
            .iter()
            .filter(|(pi, si)| match held.get(pi) {
                None => false,
                Some((_, false)) => true,
                Some((content, true)) => content.contains(q.paragraphs[*pi].sentences[*si].trim()),
            })
            .count();
        hit as f64 / q.gold_sentences.len() as f64
    });
    // Rank documents by total score (ties: write order), when the policy scored them.
    let mut docs: Vec<(f32, usize)> = pack
        .manifest
        .entries
        .iter()
        .filter_map(|e| ix.paragraph_of.get(&e.id).map(|&pi| (e.score.total, pi)))
        .collect();
    let mut ranks = (Vec::new(), Vec::new());
    if docs.iter().any(|(s, _)| *s > 0.0) {
        docs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for g in &q.gold {
            if let Some(r) = docs.iter().position(|(_, pi)| pi == g) {
                ranks.0.push(r + 1);
                if !held.contains_key(g) {
                    ranks.1.push(r + 1);
                }
            }
        }
    }
    Outcome {
        recall: ratio(gold_in, q.gold.len()),
        sentence_recall,
        precision: ratio(gold_in, held.len()),
        all_gold: gold_in == q.gold.len(),
        tokens: pack.tokens_used,
        items: pack.items.len(),
        fate,
        ranks,
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The BM25 baseline at rcr's document tokens (see the module docs).
fn bm25_fill(
    store: &dyn MemoryStore,
    counter: &dyn agentd_memory::TokenCounter,
    rcr: &ContextPack,
    q: &Question,
    ix: &Indexed,
) -> Result<Outcome, EvalError> {
    let filter = Filter::namespace(ix.namespace.clone()).kinds([Kind::Document]);
    let hits = store.search(
        &SearchQuery::new(&q.question, SearchMode::Bm25),
        &filter,
        q.paragraphs.len().max(1),
    )?;
    // BM25 order, then the paragraphs BM25 did not match, in write order.
    let order: Vec<usize> = hits
        .iter()
        .filter_map(|h| ix.paragraph_of.get(&h.item.id).copied())
        .collect();
    Ok(fill(order, counter, rcr, q))
}

/// The diagnostic fill: rcr's own candidates in descending total score (no per-token ratio,
/// no redundancy), into the tokens rcr's pack spent on documents.
fn score_order_fill(
    counter: &dyn agentd_memory::TokenCounter,
    rcr: &ContextPack,
    q: &Question,
    ix: &Indexed,
) -> Outcome {
    let mut docs: Vec<(f32, usize)> = rcr
        .manifest
        .entries
        .iter()
        .filter_map(|e| ix.paragraph_of.get(&e.id).map(|&pi| (e.score.total, pi)))
        .collect();
    docs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    fill(
        docs.into_iter().map(|(_, pi)| pi).collect(),
        counter,
        rcr,
        q,
    )
}

/// Fills whole paragraphs in `order` (then the rest in write order), skipping what does not
/// fit, into the tokens rcr's pack spent on documents; reports rcr's other tokens on top.
fn fill(
    mut order: Vec<usize>,
    counter: &dyn agentd_memory::TokenCounter,
    rcr: &ContextPack,
    q: &Question,
) -> Outcome {
    let doc_tokens: u32 = rcr
        .items
        .iter()
        .filter(|p| p.item.kind == Kind::Document)
        .map(|p| p.tokens)
        .sum();
    let overhead = rcr.tokens_used.saturating_sub(doc_tokens);
    for pi in 0..q.paragraphs.len() {
        if !order.contains(&pi) {
            order.push(pi);
        }
    }
    let mut used = 0u32;
    let mut chosen: Vec<usize> = Vec::new();
    for pi in order {
        let p = &q.paragraphs[pi];
        let cost = counter.count(&p.text())
            + agentd_router::pack::ITEM_OVERHEAD_TOKENS
            + counter.count(&p.title)
            + 1;
        if used + cost <= doc_tokens {
            used += cost;
            chosen.push(pi);
        }
    }
    let gold_in = q.gold.iter().filter(|g| chosen.contains(g)).count();
    let fate = q
        .gold
        .iter()
        .filter(|g| !chosen.contains(g))
        .map(|_| "budget".to_owned())
        .collect();
    let sentence_recall = (!q.gold_sentences.is_empty()).then(|| {
        let hit = q
            .gold_sentences
            .iter()
            .filter(|(pi, _)| chosen.contains(pi))
            .count();
        ratio(hit, q.gold_sentences.len())
    });
    Outcome {
        recall: ratio(gold_in, q.gold.len()),
        sentence_recall,
        precision: ratio(gold_in, chosen.len()),
        all_gold: gold_in == q.gold.len(),
        tokens: used + overhead,
        items: chosen.len()
            + rcr
                .items
                .iter()
                .filter(|p| p.item.kind != Kind::Document)
                .count(),
        fate,
        ranks: (Vec::new(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_serialise() {
        for s in ["rcr", "full", "static:4", "static:matched", "recency"] {
            let p = PolicySpec::parse(s).unwrap();
            assert_eq!(p.to_string(), s);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<PolicySpec>(&json).unwrap(), p);
        }
        assert_eq!(PolicySpec::parse("static"), Some(PolicySpec::Static(4)));
        assert_eq!(PolicySpec::parse("static:0"), None);
        assert_eq!(BudgetSpec::parse("role"), Some(BudgetSpec::Role));
        assert_eq!(BudgetSpec::parse("512"), Some(BudgetSpec::Tokens(512)));
        assert!(serde_json::from_str::<BudgetSpec>("\"x\"").is_err());
    }

    #[test]
    fn samples_are_seeded_and_in_order() {
        let qs: Vec<Question> = (0..50)
            .map(|i| Question {
                id: i.to_string(),
                question: String::new(),
                answer: String::new(),
                paragraphs: Vec::new(),
                gold: Vec::new(),
                gold_sentences: Vec::new(),
            })
            .collect();
        let a = sample(qs.clone(), 10, 7);
        let b = sample(qs.clone(), 10, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let ids: Vec<usize> = a.iter().map(|q| q.id.parse().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(a, sample(qs, 10, 8));
    }
}
