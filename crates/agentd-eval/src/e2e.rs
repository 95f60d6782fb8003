//! End-to-end evaluation: the whole workflow answers each question under each policy, with
//! an LLM; answers are scored (exact match, F1, AQS) and usage is counted.
//!
//! For each (question, policy) a fresh store is opened in a temporary folder, the question's
//! paragraphs are loaded into the namespace `docs` as `document` items (title in the payload,
//! as in the routing-only mode), and the workflow runs on the question reading that namespace
//! ([`Runtime::run`]). Runs are isolated from one another, so a question's figures do not
//! depend on which questions or policies ran before it, and `--concurrency` may run several
//! at once (results are still reported in question order).
//!
//! The policies run on the same workflow with two differences, both recorded in the report's
//! configuration:
//!
//! - `full` is the full-context baseline: every call may read every readable item up to
//!   [`E2eConfig::full_budget`] tokens (the model's context allowance): role budgets are set
//!   to it, stage multipliers to 1, node caps and the run budget are lifted. With the
//!   workflow's own budgets `full` would merely be "oldest first within rcr's budget".
//! - every other policy routes with the workflow's budgets, unchanged.
//!
//! [`E2eConfig::max_rounds`] and [`E2eConfig::max_tokens`] override the workflow for every
//! policy alike (the local model is slow; see `docs/results.md`). Every chat request carries
//! [`E2eConfig::seed`] as its sampling seed unless the agent set one.
//!
//! An answer's cited documents are those its payload cites directly or through the items it
//! cites (evidence, facts: up to [`CITE_DEPTH`] hops); grounding and completeness compare them
//! with the gold paragraphs (see [`crate::aqs`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agentd_llm::{ChatRequest, ChatResponse, LlmClient, LlmError};
use agentd_memory::embed::{Embedder, EmbedderConfig};
use agentd_memory::store::{Durability as StoreDurability, EmbeddedStore, StoreOptions};
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{ItemId, MemoryItem, MemoryStore};
use agentd_router::Policy;
use agentd_runtime::{Document, Durability, RunRequest, RunStatus, RunUsage, Runtime, UsageTotals};
use agentd_workflow::Workflow;
use serde::{Deserialize, Serialize};

use crate::aqs::{AqsScore, AqsWeights, judge_messages, parse_judge_score};
use crate::datasets::{self, DatasetKind, Question};
use crate::qa;
use crate::routing::{EvalError, PolicySpec, sample};

/// How many citation hops are followed from the answer to documents.
pub const CITE_DEPTH: usize = 4;

/// The namespace each run's documents are loaded into (one store per run).
const DOCS_NAMESPACE: &str = "docs";

/// An LLM endpoint, recorded in the report (the client itself is passed to
/// [`run_e2e_eval`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Base URL (`http://127.0.0.1:8088/v1`), or a description such as `mock`.
    pub url: String,
    /// Model name sent with every request.
    pub model: String,
}

/// What to evaluate end to end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct E2eConfig {
    /// The dataset file (JSON array or JSON lines).
    pub file: PathBuf,
    /// The dataset (`None`: detected from the first record).
    pub dataset: Option<DatasetKind>,
    /// Read only the first `limit` questions.
    pub limit: Option<usize>,
    /// Evaluate a seeded random sample of this many questions (after `limit`), in file order.
    pub sample: Option<usize>,
    /// Seed of the sample, and the sampling seed sent with every chat request.
    pub seed: u64,
    /// Policies to run the workflow under (`rcr`, `full`, `static:K`, `recency`).
    pub policies: Vec<PolicySpec>,
    /// The workflow to run.
    pub workflow: PathBuf,
    /// Overrides the workflow's `max_rounds` (every policy alike).
    pub max_rounds: Option<u32>,
    /// Overrides every role's `max_tokens` (every policy alike).
    pub max_tokens: Option<u32>,
    /// Context budget of every call under `full` (the model's context allowance).
    pub full_budget: u32,
    /// The stores' embedder.
    pub embedder: EmbedderConfig,
    /// Runs going at once (question-major order; results are reported in order).
    pub concurrency: usize,
    /// The model every role uses (overrides the workflow's and roles' model names).
    pub llm: Endpoint,
    /// The LLM judge, when AQS has its judge component.
    pub judge: Option<Endpoint>,
    /// AQS weights.
    pub aqs: AqsWeights,
}

impl Default for E2eConfig {
    fn default() -> Self {
        E2eConfig {
            file: PathBuf::new(),
            dataset: None,
            limit: None,
            sample: None,
            seed: 0,
            policies: vec![PolicySpec::Rcr, PolicySpec::Full],
            workflow: PathBuf::from("workflows/multihop_qa.toml"),
            max_rounds: None,
            max_tokens: None,
            full_budget: 6144,
            embedder: EmbedderConfig::default(),
            concurrency: 1,
            llm: Endpoint::default(),
            judge: None,
            aqs: AqsWeights::default(),
        }
    }
}

/// Means per question of a slice of usage (a role, a round, or the whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageMeans {
    /// Prompt tokens the LLM read.
    pub prompt_tokens: f64,
    /// Completion tokens it wrote.
    pub completion_tokens: f64,
    /// Context tokens the router packed (part of the prompt tokens).
    pub context_tokens: f64,
    /// LLM calls.
    pub calls: f64,
}

impl UsageMeans {
    fn add(&mut self, u: &UsageTotals) {
        self.prompt_tokens += u.prompt_tokens as f64;
        self.completion_tokens += u.completion_tokens as f64;
        self.context_tokens += u.context_tokens as f64;
        self.calls += u.calls as f64;
    }

    fn divided(mut self, n: f64) -> Self {
        let n = n.max(1.0);
        self.prompt_tokens /= n;
        self.completion_tokens /= n;
        self.context_tokens /= n;
        self.calls /= n;
        self
    }
}

/// One (question, policy) run and its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionRecord {
    /// The policy.
    pub policy: String,
    /// Position of the question among those evaluated, from 0.
    pub index: usize,
    /// The dataset's id of the question.
    pub id: String,
    /// How the run ended: `finished`, `failed`, `cancelled`, or `error` (it did not start).
    pub status: String,
    /// The run's error, if any.
    pub error: Option<String>,
    /// The answer's text, if the run wrote one.
    pub prediction: Option<String>,
    /// The answer's confidence.
    pub confidence: Option<f32>,
    /// The gold answer.
    pub gold_answer: String,
    /// Exact match after normalisation.
    pub exact_match: bool,
    /// Token F1.
    pub f1: f64,
    /// AQS and its components.
    pub aqs: AqsScore,
    /// The judge's raw reply (or its error), when there is a judge.
    pub judge_reply: Option<String>,
    /// Paragraphs (indexes into the question's context) the answer cites, ascending.
    pub cited: Vec<usize>,
    /// Gold paragraphs, ascending.
    pub gold: Vec<usize>,
    /// Rounds run.
    pub rounds: u32,
    /// The run's usage: total, per node, per role, per round.
    pub usage: RunUsage,
    /// Wall time of the run (documents loaded, workflow run), in seconds.
    pub wall_secs: f64,
}

/// The aggregates of one policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct E2ePolicyResult {
    /// The policy.
    pub policy: String,
    /// Questions run.
    pub questions: usize,
    /// Runs that finished.
    pub finished: usize,
    /// Runs that wrote an answer.
    pub answered: usize,
    /// Mean exact match (a question without an answer scores 0).
    pub exact_match: f64,
    /// Mean F1.
    pub f1: f64,
    /// Mean AQS.
    pub aqs: f64,
    /// Mean grounding.
    pub grounding: f64,
    /// Mean completeness.
    pub completeness: f64,
    /// Mean judge score over the questions the judge scored.
    pub judge: Option<f64>,
    /// Questions the judge scored.
    pub judged: usize,
    /// Questions whose judge reply had no usable score (or whose judge call failed).
    pub judge_failures: usize,
    /// Mean rounds.
    pub rounds: f64,
    /// Means per question of the whole run's usage.
    pub usage: UsageMeans,
    /// Mean wall time per question, in seconds.
    pub wall_secs: f64,
    /// Prompt tokens per question / those of `full` (when `full` was run).
    pub prompt_share: Option<f64>,
    /// Means per question, per role.
    pub by_role: BTreeMap<String, UsageMeans>,
    /// Means per question, per round.
    pub by_round: BTreeMap<u32, UsageMeans>,
}

/// The result of an end-to-end evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct E2eReport {
    /// Exactly what was run.
    pub config: E2eConfig,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Questions evaluated.
    pub count: usize,
    /// Questions in the file.
    pub file_count: usize,
    /// The workflow's name.
    pub workflow_name: String,
    /// Rounds each run could take (after the override).
    pub max_rounds: u32,
    /// One row per policy, in the configuration's order.
    pub results: Vec<E2ePolicyResult>,
    /// Every run, policy by policy, questions in order.
    pub questions: Vec<QuestionRecord>,
    /// Wall time of the whole evaluation, in seconds.
    pub total_secs: f64,
}

impl E2eReport {
    /// The row of a policy.
    pub fn result(&self, policy: &str) -> Option<&E2ePolicyResult> {
        self.results.iter().find(|r| r.policy == policy)
    }

    /// The report as Markdown: answer quality and usage per policy, then tokens per role and
    /// per round.
    pub fn to_markdown(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### End-to-end evaluation: {} ({} of {} questions)\n",
            self.dataset, self.count, self.file_count
        );
        let _ = writeln!(
            out,
            "workflow `{}` ({}), max rounds {}, max tokens {}, model `{}`, full-context budget {}, concurrency {}{}\n",
            c.workflow.display(),
            self.workflow_name,
            self.max_rounds,
            c.max_tokens
                .map_or_else(|| "(workflow's)".to_owned(), |t| t.to_string()),
            c.llm.model,
            c.full_budget,
            c.concurrency,
            c.judge
                .as_ref()
                .map_or_else(String::new, |j| format!(", judge `{}`", j.model)),
        );
        out.push_str(
            "| policy | questions | finished | answered | EM | F1 | AQS | grounding | completeness | judge | prompt tok/q | share of full | completion tok/q | context tok/q | calls/q | rounds | wall s/q |\n",
        );
        out.push_str(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.results {
            let judge = r
                .judge
                .map_or_else(|| "–".to_owned(), |j| format!("{j:.3} ({})", r.judged));
            let share = r
                .prompt_share
                .map_or_else(|| "–".to_owned(), |s| format!("{s:.3}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} |",
                r.policy,
                r.questions,
                r.finished,
                r.answered,
                r.exact_match,
                r.f1,
                r.aqs,
                r.grounding,
                r.completeness,
                judge,
                r.usage.prompt_tokens,
                share,
                r.usage.completion_tokens,
                r.usage.context_tokens,
                r.usage.calls,
                r.rounds,
                r.wall_secs
            );
        }
        out.push_str("\nPer role (means per question):\n\n");
        out.push_str("| policy | role | prompt tok | completion tok | context tok | calls |\n");
        out.push_str("|---|---|---:|---:|---:|---:|\n");
        for r in &self.results {
            for (role, u) in &r.by_role {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                    r.policy, role, u.prompt_tokens, u.completion_tokens, u.context_tokens, u.calls
                );
            }
        }
        out.push_str("\nPer round (means per question):\n\n");
        out.push_str("| policy | round | prompt tok | completion tok | context tok | calls |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        for r in &self.results {
            for (round, u) in &r.by_round {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                    r.policy,
                    round,
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.context_tokens,
                    u.calls
                );
            }
        }
        let _ = writeln!(
            out,
            "\n{} runs in {:.1} s",
            self.questions.len(),
            self.total_secs
        );
        out
    }
}

/// Sends `seed` with every request that has none.
struct Seeded {
    inner: Arc<dyn LlmClient>,
    seed: u64,
}

#[async_trait::async_trait]
impl LlmClient for Seeded {
    fn provider(&self) -> &str {
        self.inner.provider()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        if request.seed.is_some() {
            return self.inner.chat(request).await;
        }
        let mut request = request.clone();
        request.seed = Some(self.seed);
        self.inner.chat(&request).await
    }
}

/// The router policy of a spec (`static:matched` has no meaning end to end).
fn router_policy(spec: PolicySpec) -> Result<Policy, EvalError> {
    match spec {
        PolicySpec::Rcr => Ok(Policy::Rcr),
        PolicySpec::Full => Ok(Policy::Full),
        PolicySpec::Static(k) => Ok(Policy::Static { k }),
        PolicySpec::Recency => Ok(Policy::Recency),
        PolicySpec::StaticMatched => Err(EvalError::Config(
            "static:matched is a routing-only baseline; end to end use static:K".into(),
        )),
    }
}

/// The workflow a policy runs: the overrides, and for `full` the lifted budgets.
pub fn workflow_for(base: &Workflow, spec: PolicySpec, config: &E2eConfig) -> Workflow {
    let mut wf = base.clone();
    if let Some(rounds) = config.max_rounds {
        wf.max_rounds = rounds.max(1);
    }
    if let Some(tokens) = config.max_tokens {
        wf.model.max_tokens = Some(tokens);
        for role in wf.roles.values_mut() {
            role.model.max_tokens = Some(tokens);
        }
    }
    if spec == PolicySpec::Full {
        wf.router.run_budget = None;
        for role in wf.roles.values_mut() {
            role.profile.budget = config.full_budget;
        }
        for stage in wf.stages.values_mut() {
            stage.budget_multiplier = 1.0;
        }
        for node in &mut wf.nodes {
            node.budget = None;
        }
    }
    wf
}

/// Runs the end-to-end evaluation with `llm` playing every role and `judge` (if any) grading
/// answers; `progress(done, total)` is called after each run.
pub async fn run_e2e_eval(
    config: &E2eConfig,
    llm: Arc<dyn LlmClient>,
    judge: Option<Arc<dyn LlmClient>>,
    mut progress: impl FnMut(usize, usize),
) -> Result<E2eReport, EvalError> {
    let started = Instant::now();
    if config.policies.is_empty() {
        return Err(EvalError::Config("no policy to evaluate".into()));
    }
    if config.concurrency == 0 {
        return Err(EvalError::Config("concurrency must be at least 1".into()));
    }
    if config.full_budget == 0 {
        return Err(EvalError::Config(
            "the full-context budget must be > 0".into(),
        ));
    }
    if config.max_tokens == Some(0) {
        return Err(EvalError::Config("max tokens must be > 0".into()));
    }
    config.aqs.validate().map_err(EvalError::Config)?;
    let mut seen = BTreeSet::new();
    for p in &config.policies {
        if !seen.insert(p.to_string()) {
            return Err(EvalError::Config(format!("policy {p} given twice")));
        }
    }
    let policies: Vec<(PolicySpec, Policy)> = config
        .policies
        .iter()
        .map(|s| router_policy(*s).map(|p| (*s, p)))
        .collect::<Result<_, _>>()?;
    let base = Workflow::load(&config.workflow).map_err(|source| EvalError::Workflow {
        path: config.workflow.clone(),
        source,
    })?;
    let workflows: Vec<Arc<Workflow>> = policies
        .iter()
        .map(|(s, _)| Arc::new(workflow_for(&base, *s, config)))
        .collect();
    let max_rounds = workflows[0].max_rounds;

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
    let questions: Vec<Arc<Question>> = questions.into_iter().map(Arc::new).collect();

    let embedder = config.embedder.build()?;
    let llm: Arc<dyn LlmClient> = Arc::new(Seeded {
        inner: llm,
        seed: config.seed,
    });
    let shared = Arc::new(Shared {
        llm,
        judge,
        model: (!config.llm.model.is_empty()).then(|| config.llm.model.clone()),
        embedder,
        weights: config.aqs,
        seed: config.seed,
    });

    // Question-major order: both policies of a question run close in time, under the same
    // load of the server.
    let jobs: Vec<(usize, usize)> = (0..questions.len())
        .flat_map(|qi| (0..policies.len()).map(move |pi| (qi, pi)))
        .collect();
    let total = jobs.len();
    let mut records: Vec<Option<QuestionRecord>> = vec![None; total];
    let mut pending = jobs.into_iter().enumerate();
    let mut running = tokio::task::JoinSet::new();
    let mut done = 0;
    loop {
        while running.len() < config.concurrency {
            let Some((slot, (qi, pi))) = pending.next() else {
                break;
            };
            let job = Job {
                shared: Arc::clone(&shared),
                question: Arc::clone(&questions[qi]),
                index: qi,
                spec: policies[pi].0,
                policy: policies[pi].1,
                workflow: Arc::clone(&workflows[pi]),
            };
            running.spawn(async move { (slot, job.run().await) });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (slot, record) =
            joined.map_err(|e| EvalError::Config(format!("an evaluation task failed: {e}")))?;
        records[slot] = Some(record?);
        done += 1;
        progress(done, total);
    }

    // Policy by policy, questions in order.
    let mut by_policy: Vec<Vec<QuestionRecord>> = vec![Vec::new(); policies.len()];
    for (slot, record) in records.into_iter().enumerate() {
        if let Some(r) = record {
            by_policy[slot % policies.len()].push(r);
        }
    }
    let mut results: Vec<E2ePolicyResult> = policies
        .iter()
        .zip(&by_policy)
        .map(|((spec, _), recs)| aggregate(&spec.to_string(), recs))
        .collect();
    let full_prompt = results
        .iter()
        .find(|r| r.policy == "full")
        .map(|r| r.usage.prompt_tokens);
    if let Some(full) = full_prompt.filter(|f| *f > 0.0) {
        for r in &mut results {
            r.prompt_share = Some(r.usage.prompt_tokens / full);
        }
    }
    Ok(E2eReport {
        config: config.clone(),
        dataset: dataset.kind,
        count: questions.len(),
        file_count,
        workflow_name: base.name.clone(),
        max_rounds,
        results,
        questions: by_policy.into_iter().flatten().collect(),
        total_secs: started.elapsed().as_secs_f64(),
    })
}

/// What every run shares.
struct Shared {
    llm: Arc<dyn LlmClient>,
    judge: Option<Arc<dyn LlmClient>>,
    model: Option<String>,
    embedder: Arc<dyn Embedder>,
    weights: AqsWeights,
    seed: u64,
}

/// One (question, policy) run.
struct Job {
    shared: Arc<Shared>,
    question: Arc<Question>,
    index: usize,
    spec: PolicySpec,
    policy: Policy,
    workflow: Arc<Workflow>,
}

impl Job {
    async fn run(self) -> Result<QuestionRecord, EvalError> {
        let q = Arc::clone(&self.question);
        let started = Instant::now();
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn MemoryStore> = {
            let path = dir.path().to_owned();
            let embedder = Arc::clone(&self.shared.embedder);
            let opened = tokio::task::spawn_blocking(move || {
                let options = StoreOptions::new(embedder, default_token_counter()).durability(
                    StoreDurability::Background {
                        flush_every_ms: 1000,
                    },
                );
                EmbeddedStore::open(&path, options)
            })
            .await
            .map_err(|e| EvalError::Config(format!("opening a store: {e}")))??;
            Arc::new(opened)
        };
        let mut builder = Runtime::builder()
            .store(Arc::clone(&store))
            .llm(Arc::clone(&self.shared.llm))
            .durability(Durability::Off);
        if let Some(model) = &self.shared.model {
            builder = builder.model_override(model.clone());
        }
        let runtime = builder.build()?;

        // The paragraphs, in order; empty ones are not loaded (and cannot be cited).
        let loaded: Vec<usize> = (0..q.paragraphs.len())
            .filter(|&i| !q.paragraphs[i].text().trim().is_empty())
            .collect();
        let documents: Vec<Document> = loaded
            .iter()
            .map(|&i| Document {
                title: Some(q.paragraphs[i].title.clone()),
                text: q.paragraphs[i].text(),
            })
            .collect();
        let ids = {
            let rt = runtime.clone();
            tokio::task::spawn_blocking(move || rt.load_documents(DOCS_NAMESPACE, documents))
                .await
                .map_err(|e| EvalError::Config(format!("loading documents: {e}")))??
        };
        let paragraph_of: HashMap<ItemId, usize> = ids.into_iter().zip(loaded).collect();

        let request = RunRequest::new(Arc::clone(&self.workflow), q.question.clone())
            .documents(DOCS_NAMESPACE)
            .policy(self.policy);
        let outcome = runtime.run(request).await;
        let wall_secs = started.elapsed().as_secs_f64();

        let mut record = QuestionRecord {
            policy: self.spec.to_string(),
            index: self.index,
            id: q.id.clone(),
            status: "error".into(),
            error: None,
            prediction: None,
            confidence: None,
            gold_answer: q.answer.clone(),
            exact_match: false,
            f1: 0.0,
            aqs: self
                .shared
                .weights
                .score(0.0, Vec::new(), q.gold.clone(), None),
            judge_reply: None,
            cited: Vec::new(),
            gold: q.gold.clone(),
            rounds: 0,
            usage: RunUsage::default(),
            wall_secs,
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                record.error = Some(e.to_string());
                release(runtime, store, dir).await;
                return Ok(record);
            }
        };
        record.status = match outcome.status {
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Running => "running",
        }
        .into();
        record.error = outcome.error.clone();
        record.rounds = outcome.rounds;
        record.usage = outcome.usage.clone();
        let Some(answer) = outcome.answer else {
            release(runtime, store, dir).await;
            return Ok(record);
        };
        let prediction = answer.content.trim().to_owned();
        record.cited = cited_paragraphs(store.as_ref(), &answer, &paragraph_of);
        record.confidence = Some(answer.confidence);
        record.exact_match = qa::exact_match(&prediction, &q.answer);
        record.f1 = qa::f1(&prediction, &q.answer);
        let judge_score = match &self.shared.judge {
            None => None,
            Some(judge) => {
                let request = ChatRequest::new(judge_messages(&q.question, &q.answer, &prediction))
                    .with_temperature(0.0)
                    .with_max_tokens(16);
                let mut request = request;
                request.seed = Some(self.shared.seed);
                match judge.chat(&request).await {
                    Ok(reply) => {
                        let score = parse_judge_score(&reply.content);
                        record.judge_reply = Some(reply.content);
                        score
                    }
                    Err(e) => {
                        record.judge_reply = Some(format!("error: {e}"));
                        None
                    }
                }
            }
        };
        record.aqs =
            self.shared
                .weights
                .score(record.f1, record.cited.clone(), q.gold.clone(), judge_score);
        record.prediction = Some(prediction);
        release(runtime, store, dir).await;
        Ok(record)
    }
}

/// Closes a run's runtime and store before their folder is removed: the run's last tasks may
/// still hold the store for a moment after the outcome is known.
async fn release(runtime: Runtime, store: Arc<dyn MemoryStore>, dir: tempfile::TempDir) {
    runtime.close();
    drop(runtime);
    for _ in 0..200 {
        if Arc::strong_count(&store) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The store's own close (commit, flush) runs here, off the async threads.
    let _ = tokio::task::spawn_blocking(move || {
        drop(store);
        drop(dir);
    })
    .await;
}

/// The paragraphs an answer cites, directly or through the items it cites.
fn cited_paragraphs(
    store: &dyn MemoryStore,
    answer: &MemoryItem,
    paragraph_of: &HashMap<ItemId, usize>,
) -> Vec<usize> {
    let mut out = BTreeSet::new();
    let mut seen: BTreeSet<ItemId> = BTreeSet::new();
    let mut frontier = cites_of(answer);
    for _ in 0..CITE_DEPTH {
        let mut next = Vec::new();
        for id in frontier {
            if !seen.insert(id) {
                continue;
            }
            if let Some(&pi) = paragraph_of.get(&id) {
                out.insert(pi);
                continue;
            }
            // A store error here only loses a citation path: scores are conservative.
            if let Ok(Some(item)) = store.get(id) {
                next.extend(cites_of(&item));
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    out.into_iter().collect()
}

/// The ids an item's payload cites.
fn cites_of(item: &MemoryItem) -> Vec<ItemId> {
    item.payload
        .as_ref()
        .and_then(|p| p.get("cites"))
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The row of one policy from its runs.
fn aggregate(policy: &str, recs: &[QuestionRecord]) -> E2ePolicyResult {
    let n = recs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&QuestionRecord) -> f64| recs.iter().map(f).sum::<f64>() / n;
    let mut usage = UsageMeans::default();
    let mut by_role: BTreeMap<String, UsageMeans> = BTreeMap::new();
    let mut by_round: BTreeMap<u32, UsageMeans> = BTreeMap::new();
    for r in recs {
        usage.add(&r.usage.total);
        for (role, u) in &r.usage.by_role {
            by_role.entry(role.clone()).or_default().add(u);
        }
        for (round, u) in &r.usage.by_round {
            by_round.entry(*round).or_default().add(u);
        }
    }
    let judged: Vec<f64> = recs.iter().filter_map(|r| r.aqs.judge).collect();
    let judge_failures = recs
        .iter()
        .filter(|r| r.judge_reply.is_some() && r.aqs.judge.is_none())
        .count();
    E2ePolicyResult {
        policy: policy.to_owned(),
        questions: recs.len(),
        finished: recs.iter().filter(|r| r.status == "finished").count(),
        answered: recs.iter().filter(|r| r.prediction.is_some()).count(),
        exact_match: mean(&|r| r.exact_match as u8 as f64),
        f1: mean(&|r| r.f1),
        aqs: mean(&|r| r.aqs.aqs),
        grounding: mean(&|r| r.aqs.grounding),
        completeness: mean(&|r| r.aqs.completeness),
        judge: (!judged.is_empty()).then(|| judged.iter().sum::<f64>() / judged.len() as f64),
        judged: judged.len(),
        judge_failures,
        rounds: mean(&|r| r.rounds as f64),
        usage: usage.divided(n),
        wall_secs: mean(&|r| r.wall_secs),
        prompt_share: None,
        by_role: by_role
            .into_iter()
            .map(|(k, u)| (k, u.divided(n)))
            .collect(),
        by_round: by_round
            .into_iter()
            .map(|(k, u)| (k, u.divided(n)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Workflow {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workflows/multihop_qa.toml");
        Workflow::load(&path).unwrap()
    }

    #[test]
    fn full_lifts_budgets_and_overrides_apply_to_every_policy() {
        let base = base();
        let config = E2eConfig {
            max_rounds: Some(1),
            max_tokens: Some(128),
            full_budget: 5000,
            ..E2eConfig::default()
        };
        for spec in [PolicySpec::Rcr, PolicySpec::Full] {
            let wf = workflow_for(&base, spec, &config);
            assert_eq!(wf.max_rounds, 1);
            for role in wf.roles.values() {
                assert_eq!(wf.model_for(role).max_tokens, Some(128));
            }
        }
        let rcr = workflow_for(&base, PolicySpec::Rcr, &config);
        assert_eq!(rcr.router.run_budget, base.router.run_budget);
        for (name, role) in &rcr.roles {
            assert_eq!(role.profile, base.roles[name].profile);
        }
        let full = workflow_for(&base, PolicySpec::Full, &config);
        assert_eq!(full.router.run_budget, None);
        for node in &full.nodes {
            let budget = agentd_router::effective_budget(
                &full.role_of(node).profile,
                full.stage_of(node),
                node.budget,
                None,
            );
            assert_eq!(budget, 5000, "{}", node.name);
        }
    }

    #[test]
    fn static_matched_is_refused_end_to_end() {
        assert!(router_policy(PolicySpec::StaticMatched).is_err());
        assert_eq!(
            router_policy(PolicySpec::Static(3)).unwrap(),
            Policy::Static { k: 3 }
        );
    }
}
