//! `agentd eval`: evaluation on multi-hop QA datasets (routing-only for now).

use std::path::PathBuf;

use agentd_eval::{BudgetSpec, DatasetKind, PolicySpec, RoutingEvalConfig, run_routing_eval};
use agentd_memory::embed::EmbedderConfig;
use anyhow::{Context, bail};

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
    /// items as rcr took), recency. `static` means static:4.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rcr,full,static:4,static:matched,recency"
    )]
    pub policy: Vec<String>,
    /// Token budgets, comma-separated: `role` (the node's own budget) or a number.
    #[arg(long, value_delimiter = ',', default_value = "role")]
    pub budgets: Vec<String>,
    /// Route only, no LLM (the only mode built so far).
    #[arg(long)]
    pub routing_only: bool,
    /// Evaluate at most this many questions (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Nodes of the workflow to route for (default: the one whose role writes the stop kind).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Route for every node of the workflow.
    #[arg(long)]
    pub all_nodes: bool,
    /// The workflow whose roles and stages are routed for.
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
}

/// Runs the evaluation and prints the report.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if !args.routing_only {
        bail!(
            "only routing-only evaluation is built so far: pass --routing-only \
             (end-to-end evaluation with an LLM is not available yet)"
        );
    }
    let mut config = RoutingEvalConfig {
        file: args.data.clone(),
        limit: args.limit,
        workflow: args.workflow.clone(),
        nodes: args.nodes.clone(),
        all_nodes: args.all_nodes,
        ..RoutingEvalConfig::default()
    };
    if let Some(name) = &args.dataset {
        config.dataset = Some(DatasetKind::parse(name).with_context(|| {
            format!("unknown dataset `{name}`: use hotpotqa, musique or 2wiki")
        })?);
    }
    config.policies = args
        .policy
        .iter()
        .map(|p| {
            let p = if p == "static" {
                "static:4"
            } else {
                p.as_str()
            };
            PolicySpec::parse(p).with_context(|| {
                format!("unknown policy `{p}`: use rcr, full, static:K, static:matched or recency")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    config.budgets = args
        .budgets
        .iter()
        .map(|b| {
            BudgetSpec::parse(b)
                .with_context(|| format!("bad budget `{b}`: use `role` or a number of tokens"))
        })
        .collect::<anyhow::Result<_>>()?;
    config.embedder = match args.embedder.as_str() {
        "hashing" => EmbedderConfig::default(),
        "minilm" => EmbedderConfig::minilm_in(&args.models_dir),
        other => bail!("unknown embedder `{other}`: use hashing or minilm"),
    };
    let report = run_routing_eval(&config, |done, total| {
        if done == total || done % 50 == 0 {
            eprintln!("eval: {done}/{total} questions");
        }
    })?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        println!("{}", report.to_markdown());
    }
    Ok(())
}
