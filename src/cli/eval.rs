//! `agentd eval`: evaluation on multi-hop QA datasets, routing-only (`--routing-only`) or end
//! to end with an LLM (`--llm-url`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use agentd_eval::plot::recall_vs_tokens_svg;
use agentd_eval::{
    BudgetSpec, DatasetKind, E2eConfig, Endpoint, PolicySpec, RoutingEvalConfig, run_e2e_eval,
    run_routing_eval,
};
use agentd_llm::{LlmClient, OpenAiClient, ProviderConfig};
use agentd_memory::embed::EmbedderConfig;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::run::DEFAULT_MODEL;

/// Policies of the routing-only mode when none are given.
const ROUTING_POLICIES: &str = "rcr,full,static:4,static:matched,recency";
/// Policies of the end-to-end mode when none are given.
const E2E_POLICIES: &str = "rcr,full";

/// `agentd eval` arguments.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A dataset file in its original schema (HotpotQA, MuSiQue or 2WikiMultihopQA; JSON
    /// array or JSON lines).
    #[arg(long)]
    pub data: PathBuf,
    /// The dataset's schema (default: detected from the first record).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Policies, comma-separated: rcr, full, static:K, static:matched (static with as many
    /// items as rcr took; routing-only), recency. `static` means static:4. Default:
    /// rcr,full,static:4,static:matched,recency (routing-only), rcr,full (end to end).
    #[arg(long, value_delimiter = ',')]
    pub policy: Vec<String>,
    /// Token budgets, comma-separated: `role` (the node's own budget) or a number
    /// (routing-only; a list of several is a budget sweep).
    #[arg(long, value_delimiter = ',', default_value = "role")]
    pub budgets: Vec<String>,
    /// Route only, no LLM: evidence recall and tokens of each policy's packs.
    #[arg(long, conflicts_with = "llm_url")]
    pub routing_only: bool,
    /// Evaluate at most this many questions (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate a seeded random sample of this many questions (after --limit), in file order.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seed of --sample, and the sampling seed sent with every LLM request.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Nodes of the workflow to route for (routing-only; default: the one whose role writes
    /// the stop kind).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Route for every node of the workflow (routing-only).
    #[arg(long)]
    pub all_nodes: bool,
    /// The workflow (routing-only: whose roles and stages are routed for; end to end: run).
    #[arg(long, default_value = "workflows/multihop_qa.toml")]
    pub workflow: PathBuf,
    /// Embeddings: hashing, or minilm (after scripts/fetch-models.sh).
    #[arg(long, default_value = "hashing")]
    pub embedder: String,
    /// Models folder for --embedder minilm.
    #[arg(long, env = "AGENTD_MODELS_DIR", default_value = ".models")]
    pub models_dir: PathBuf,
    /// Print the whole report as JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Routing-only: write an SVG plot of evidence recall against tokens per policy (one
    /// point per budget of --budgets) to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// End to end: the OpenAI-compatible base URL (including /v1) of the LLM that plays
    /// every role (for the local server: `scripts/local-llm.sh start` prints it).
    #[arg(long)]
    pub llm_url: Option<String>,
    /// End to end: the model every role uses (overrides the workflow's and roles' names).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// End to end: name of the environment variable holding the API key, if any.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// End to end: request timeout of one LLM call, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub llm_timeout: f64,
    /// End to end: the base URL of an LLM judge; adds its 0..1 grade to AQS.
    #[arg(long, requires = "llm_url")]
    pub judge_url: Option<String>,
    /// End to end: the judge's model (default: --model).
    #[arg(long, requires = "judge_url")]
    pub judge_model: Option<String>,
    /// End to end: at most this many rounds per run (overrides the workflow's max_rounds).
    #[arg(long, alias = "rounds")]
    pub max_rounds: Option<u32>,
    /// End to end: at most this many completion tokens per call (overrides every role's).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// End to end: context budget of each call under `full` (the model's context allowance).
    #[arg(long, default_value_t = 6144)]
    pub full_budget: u32,
    /// End to end: runs going at once (the local server has 2 slots).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

impl EvalArgs {
    fn policies(&self, default: &str) -> anyhow::Result<Vec<PolicySpec>> {
        let given: Vec<String> = if self.policy.is_empty() {
            default.split(',').map(str::to_owned).collect()
        } else {
            self.policy.clone()
        };
        given
            .iter()
            .map(|p| {
                let p = if p == "static" {
                    "static:4"
                } else {
                    p.as_str()
                };
                PolicySpec::parse(p).with_context(|| {
                    format!(
                        "unknown policy `{p}`: use rcr, full, static:K, static:matched or recency"
                    )
                })
            })
            .collect()
    }

    fn dataset(&self) -> anyhow::Result<Option<DatasetKind>> {
        self.dataset
            .as_deref()
            .map(|name| {
                DatasetKind::parse(name).with_context(|| {
                    format!("unknown dataset `{name}`: use hotpotqa, musique or 2wiki")
                })
            })
            .transpose()
    }

    fn embedder(&self) -> anyhow::Result<EmbedderConfig> {
        Ok(match self.embedder.as_str() {
            "hashing" => EmbedderConfig::default(),
            "minilm" => EmbedderConfig::minilm_in(&self.models_dir),
            other => bail!("unknown embedder `{other}`: use hashing or minilm"),
        })
    }

    fn client(&self, url: &str, model: &str) -> anyhow::Result<Arc<dyn LlmClient>> {
        let mut config = ProviderConfig::new(url.to_owned(), model.to_owned());
        config.api_key_env = self.api_key_env.clone();
        config.timeout_secs = self.llm_timeout;
        Ok(Arc::new(OpenAiClient::new(config).with_context(|| {
            format!("setting up the LLM client for {url}")
        })?))
    }
}

/// Runs the evaluation and prints the report.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.routing_only {
        return routing_only(args);
    }
    if args.llm_url.is_none() {
        bail!(
            "say which evaluation: --routing-only (routing decisions only, no LLM), or \
             --llm-url URL [--model M] for the end-to-end evaluation (the whole workflow \
             answers each question; start a local LLM with `scripts/local-llm.sh start`)"
        );
    }
    end_to_end(args)
}

/// A progress bar on stderr when it is a terminal; otherwise a line every `every` steps.
struct Progress {
    bar: Option<ProgressBar>,
    every: usize,
    unit: &'static str,
}

impl Progress {
    fn new(unit: &'static str, every: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "eval {bar:40.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(unit);
            bar
        });
        Progress { bar, every, unit }
    }

    fn update(&self, done: usize, total: usize) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            None => {
                if done == total || done.is_multiple_of(self.every.max(1)) {
                    eprintln!("eval: {done}/{total} {}", self.unit);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn routing_only(args: EvalArgs) -> anyhow::Result<()> {
    let mut config = RoutingEvalConfig {
        file: args.data.clone(),
        dataset: args.dataset()?,
        limit: args.limit,
        sample: args.sample,
        seed: args.seed,
        workflow: args.workflow.clone(),
        nodes: args.nodes.clone(),
        all_nodes: args.all_nodes,
        embedder: args.embedder()?,
        ..RoutingEvalConfig::default()
    };
    config.policies = args.policies(ROUTING_POLICIES)?;
    config.budgets = args
        .budgets
        .iter()
        .map(|b| {
            BudgetSpec::parse(b)
                .with_context(|| format!("bad budget `{b}`: use `role` or a number of tokens"))
        })
        .collect::<anyhow::Result<_>>()?;
    let progress = Progress::new("questions", 50);
    let report = run_routing_eval(&config, |done, total| progress.update(done, total));
    progress.finish();
    let report = report?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, recall_vs_tokens_svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", report.to_markdown());
    }
    Ok(())
}

fn end_to_end(args: EvalArgs) -> anyhow::Result<()> {
    let url = args.llm_url.clone().unwrap_or_default();
    if args.svg.is_some() {
        bail!("--svg plots a routing-only budget sweep: use it with --routing-only");
    }
    if !args.nodes.is_empty() || args.all_nodes {
        bail!("--nodes and --all-nodes are for --routing-only; end to end every node runs");
    }
    if args.budgets != ["role"] {
        bail!(
            "--budgets is for --routing-only; end to end every node routes at its own budget \
             (and `full` at --full-budget)"
        );
    }
    let judge_model = args
        .judge_model
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let config = E2eConfig {
        file: args.data.clone(),
        dataset: args.dataset()?,
        limit: args.limit,
        sample: args.sample,
        seed: args.seed,
        policies: args.policies(E2E_POLICIES)?,
        workflow: args.workflow.clone(),
        max_rounds: args.max_rounds,
        max_tokens: args.max_tokens,
        full_budget: args.full_budget,
        embedder: args.embedder()?,
        concurrency: args.concurrency,
        llm: Endpoint {
            url: url.clone(),
            model: args.model.clone(),
        },
        judge: args.judge_url.as_ref().map(|u| Endpoint {
            url: u.clone(),
            model: judge_model.clone(),
        }),
        ..E2eConfig::default()
    };
    let llm = args.client(&url, &args.model)?;
    let judge = match &args.judge_url {
        Some(u) => Some(args.client(u, &judge_model)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = Progress::new("runs", 1);
    let report = runtime.block_on(run_e2e_eval(&config, llm, judge, |done, total| {
        progress.update(done, total)
    }));
    progress.finish();
    let report = report?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", report.to_markdown());
    }
    let finished: usize = report.results.iter().map(|r| r.finished).sum();
    if finished == 0 {
        let first = report
            .questions
            .iter()
            .find_map(|q| q.error.clone())
            .unwrap_or_else(|| "no run finished".into());
        bail!("no run finished (is the LLM at {url} up?): {first}");
    }
    Ok(())
}
