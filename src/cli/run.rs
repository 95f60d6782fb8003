//! `agentd run`, `agentd resume`, `agentd replay` and `agentd runs`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentd_llm::{LlmClient, OpenAiClient, ProviderConfig};
use agentd_memory::Filter;
use agentd_router::Policy;
use agentd_runtime::{Event, EventKind, RunHandle, RunOutcome, RunRequest, RunStatus, Runtime};
use agentd_workflow::Workflow;
use anyhow::{Context, bail};

use super::docs;

/// Where the local LLM server of `scripts/local-llm.sh` listens by default.
pub const DEFAULT_LLM_URL: &str = "http://127.0.0.1:8088/v1";
/// The model name the local server answers to.
pub const DEFAULT_MODEL: &str = "smollm2";

/// Options shared by the commands that run workflows.
#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Data folder: memory (memory/) and run journals (runs/).
    #[arg(long, env = "AGENTD_DATA_DIR", default_value = ".agentd")]
    pub data_dir: PathBuf,
    /// OpenAI-compatible base URL (including /v1). Default: the local server started by
    /// scripts/local-llm.sh.
    #[arg(long, env = "AGENTD_LLM_URL", default_value = DEFAULT_LLM_URL)]
    pub llm_url: String,
    /// Model name sent to the server (overrides the workflow's and roles' model names).
    #[arg(long, env = "AGENTD_LLM_MODEL")]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key, if the server needs one.
    #[arg(long, env = "AGENTD_LLM_API_KEY_ENV")]
    pub api_key_env: Option<String>,
    /// Request timeout of one LLM call, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub llm_timeout: f64,
    /// A provider file (TOML: base_url, model, api_key_env, timeout_secs, max_retries,
    /// concurrency, tokens_per_minute, price = { prompt_per_million_usd, completion_per_million_usd },
    /// ...); replaces --llm-url, --api-key-env and --llm-timeout.
    #[arg(long, env = "AGENTD_LLM_PROVIDER")]
    pub provider: Option<PathBuf>,
}

impl RuntimeArgs {
    /// Builds the runtime these options describe.
    pub fn runtime(&self) -> anyhow::Result<Runtime> {
        let config = match &self.provider {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the provider file {}", file.display()))?;
                toml::from_str::<ProviderConfig>(&text)
                    .with_context(|| format!("in the provider file {}", file.display()))?
            }
            None => {
                let mut config = ProviderConfig::new(
                    self.llm_url.clone(),
                    self.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
                );
                config.api_key_env = self.api_key_env.clone();
                config.timeout_secs = self.llm_timeout;
                config
            }
        };
        let client: Arc<dyn LlmClient> = Arc::new(
            OpenAiClient::new(config).context("setting up the LLM client (--llm-url, --model)")?,
        );
        let mut builder = Runtime::builder().data_dir(&self.data_dir).llm(client);
        if let Some(model) = &self.model {
            builder = builder.model_override(model.clone());
        }
        builder
            .build()
            .with_context(|| format!("opening the data folder {}", self.data_dir.display()))
    }
}

/// `agentd run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The workflow file.
    pub workflow: PathBuf,
    /// The task, as text.
    #[arg(
        long,
        conflicts_with = "input_file",
        required_unless_present = "input_file"
    )]
    pub input: Option<String>,
    /// The task, from a file.
    #[arg(long)]
    pub input_file: Option<PathBuf>,
    /// A folder of text documents (.txt, .md) to load and read.
    #[arg(long, conflicts_with = "docs_jsonl")]
    pub docs: Option<PathBuf>,
    /// Documents as JSON lines: {"title": ..., "text": ...}.
    #[arg(long)]
    pub docs_jsonl: Option<PathBuf>,
    /// Routing policy: rcr, full, static, static:K or recency (default: the workflow's).
    #[arg(long, value_parser = parse_policy)]
    pub policy: Option<Policy>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Runtime options.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Parses a policy name for clap.
pub fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::parse(s).ok_or_else(|| {
        format!("unknown policy `{s}`: use rcr, full, static, static:K (K items) or recency")
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let workflow = Workflow::load(&args.workflow).map_err(|e| anyhow::anyhow!("{e}"))?;
    let input = match (&args.input, &args.input_file) {
        (Some(text), _) => text.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the input file {}", file.display()))?,
        (None, None) => bail!("give the task with --input TEXT or --input-file FILE"),
    };
    if input.trim().is_empty() {
        bail!("the input is empty");
    }
    let documents = match (&args.docs, &args.docs_jsonl) {
        (Some(dir), _) => Some(docs::read_dir(dir)?),
        (None, Some(file)) => Some(docs::read_jsonl(file)?),
        (None, None) => None,
    };
    let runtime = args.runtime.runtime()?;
    let mut request = RunRequest::new(Arc::new(workflow), input);
    request.policy = args.policy;
    if let Some(documents) = documents {
        let namespace = documents_namespace(&documents);
        let store = Arc::clone(runtime.store());
        let present = {
            let ns = namespace.clone();
            tokio::task::spawn_blocking(move || store.count(&Filter::namespace(ns))).await??
        };
        if present == 0 {
            let n = documents.len();
            let rt = runtime.clone();
            let ns = namespace.clone();
            tokio::task::spawn_blocking(move || rt.load_documents(&ns, documents)).await??;
            eprintln!("loaded {n} documents into `{namespace}`");
        } else {
            eprintln!("documents already loaded in `{namespace}` ({present} items)");
        }
        request = request.documents(namespace);
    }
    let handle = runtime.start(request).await?;
    finish(&runtime, handle, args.json).await
}

/// A stable namespace for a set of documents, so loading the same set twice reuses it.
fn documents_namespace(documents: &[agentd_runtime::Document]) -> String {
    // FNV-1a over titles and texts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for d in documents {
        for part in [d.title.as_deref().unwrap_or(""), "\u{1}", &d.text, "\u{2}"] {
            for b in part.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("docs-{h:016x}")
}

/// Follows a run to its end, printing progress; prints the outcome. Returns whether it finished.
async fn finish(runtime: &Runtime, handle: RunHandle, json: bool) -> anyhow::Result<bool> {
    let id = handle.id().to_owned();
    eprintln!("run {id}");
    let mut events = handle.subscribe();
    for e in handle.events()? {
        print_progress(&e);
    }
    let follow = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    print_progress(&e);
                    if e.kind.is_terminal() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    let outcome = handle.wait().await?;
    let _ = follow.await;
    let manifests = write_manifests(runtime, &id)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_outcome(&outcome);
        if let Some(dir) = manifests {
            println!("manifests: {}", dir.display());
        }
        println!("replay:    agentd replay {id} --policy full");
    }
    Ok(outcome.status == RunStatus::Finished)
}

fn print_progress(event: &Event) {
    let line = match &event.kind {
        EventKind::RunStarted { spec } => format!(
            "workflow `{}`, policy {}, reading {}",
            spec.workflow,
            spec.policy.name(),
            spec.read_namespaces.join(", ")
        ),
        EventKind::RunResumed { round } => format!("resumed in round {round}"),
        EventKind::RoundStarted { round } => format!("round {round}"),
        EventKind::ContextRouted { node, manifest, .. } => format!(
            "  {node:<10} context: {} items, {}/{} tokens ({} candidates)",
            manifest
                .entries
                .iter()
                .filter(|e| e.decision.is_selected())
                .count(),
            manifest.tokens_used,
            manifest.budget,
            manifest.entries.len()
        ),
        EventKind::LlmCall {
            node,
            usage,
            latency_ms,
            ..
        } => format!(
            "  {node:<10} llm: {} prompt + {} completion tokens, {:.1}s",
            usage.prompt_tokens,
            usage.completion_tokens,
            latency_ms / 1e3
        ),
        EventKind::ItemsWritten {
            node,
            written,
            merged,
            parse,
            ..
        } => format!(
            "  {node:<10} wrote {} items, {} duplicates merged ({parse})",
            written.len(),
            merged.len()
        ),
        EventKind::NodeFailed {
            node,
            attempt,
            error,
            will_retry,
            ..
        } => format!(
            "  {node:<10} attempt {attempt} failed: {error}{}",
            if *will_retry { "; retrying" } else { "" }
        ),
        EventKind::RoundFinished { round, stop } if *stop => {
            format!("round {round}: stop condition holds")
        }
        EventKind::RunFailed { error } => format!("run failed: {error}"),
        EventKind::RunCancelled => "run cancelled".into(),
        _ => return,
    };
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[2m{line}\x1b[0m");
    } else {
        eprintln!("{line}");
    }
}

fn print_outcome(outcome: &RunOutcome) {
    println!();
    match &outcome.answer {
        Some(answer) => {
            println!("answer: {}", answer.content.trim());
            println!("confidence: {:.2}", answer.confidence);
        }
        None => println!("answer: (none)"),
    }
    if !outcome.evidence.is_empty() {
        println!("evidence:");
        for item in &outcome.evidence {
            let title = item.title().map(|t| format!("{t}: ")).unwrap_or_default();
            let mut text: String = item.content.chars().take(160).collect();
            if text.len() < item.content.len() {
                text.push('…');
            }
            println!("  [{}] {title}{}", item.id.short(), text.replace('\n', " "));
        }
    }
    if let Some(error) = &outcome.error {
        println!("error: {error}");
    }
    println!();
    print!("{}", outcome.usage.role_table());
    println!(
        "\nstatus: {} after {} round(s)",
        outcome.status.as_str(),
        outcome.rounds
    );
}

/// Writes each routing decision of a run to `<data>/runs/<id>/manifests/r<round>-<node>.json`.
fn write_manifests(runtime: &Runtime, id: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(data) = runtime.data_dir() else {
        return Ok(None);
    };
    let dir = data.join("runs").join(id).join("manifests");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for event in runtime.events(id)? {
        if let EventKind::ContextRouted {
            node,
            round,
            manifest,
            ..
        } = &event.kind
        {
            let path = dir.join(format!("r{round}-{node}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&**manifest)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(Some(dir))
}

/// `agentd resume` arguments.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The run to resume (default: every interrupted run, oldest first).
    pub run: Option<String>,
    /// Runtime options.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<bool> {
    let runtime = args.runtime.runtime()?;
    let ids = match args.run {
        Some(id) => vec![id],
        None => runtime.interrupted(),
    };
    if ids.is_empty() {
        eprintln!("no interrupted runs");
        return Ok(true);
    }
    let mut all_ok = true;
    for id in ids {
        let handle = runtime.resume(&id).await?;
        all_ok &= finish(&runtime, handle, false).await?;
    }
    Ok(all_ok)
}

/// `agentd replay` arguments.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The run.
    pub run: String,
    /// The policy to recompute the packs under.
    #[arg(long, value_parser = parse_policy)]
    pub policy: Policy,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Data folder.
    #[arg(long, env = "AGENTD_DATA_DIR", default_value = ".agentd")]
    pub data_dir: PathBuf,
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let runtime = offline_runtime(&args.data_dir)?;
    let report = runtime.replay(&args.run, args.policy)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// `agentd runs` arguments.
#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// Data folder.
    #[arg(long, env = "AGENTD_DATA_DIR", default_value = ".agentd")]
    pub data_dir: PathBuf,
}

pub fn runs(args: RunsArgs) -> anyhow::Result<()> {
    let runtime = offline_runtime(&args.data_dir)?;
    println!(
        "{:<38} {:<10} {:<16} {:>6} {:>9}",
        "run", "status", "workflow", "rounds", "tokens"
    );
    for s in runtime.runs() {
        let workflow = s.record.as_ref().map_or("?", |r| r.workflow.as_str());
        println!(
            "{:<38} {:<10} {:<16} {:>6} {:>9}",
            s.id,
            s.status.as_str(),
            workflow,
            s.round,
            s.usage().total.total_tokens()
        );
    }
    Ok(())
}

/// A runtime over an existing data folder, without an LLM (for inspection and replay).
fn offline_runtime(data_dir: &Path) -> anyhow::Result<Runtime> {
    if !data_dir.join("runs").exists() {
        bail!(
            "no runs in {} (pass --data-dir, or set AGENTD_DATA_DIR)",
            data_dir.display()
        );
    }
    Runtime::builder()
        .data_dir(data_dir)
        .build()
        .with_context(|| format!("opening the data folder {}", data_dir.display()))
}
