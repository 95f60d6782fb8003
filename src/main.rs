//! The `agentd` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use agentd::bench::memory::MemoryBench;
use agentd::bench::route::RouteBench;
use agentd::cli;
use agentd::memory::embed::EmbedderConfig;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: agentd allocates many small, short-lived objects across threads (events, items,
/// routing candidates), where it is markedly faster than the system allocator. Built without
/// transparent huge pages (feature `no_thp`): with them, the daemon's peak RSS under load grew
/// from about 315 to 520-560 MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// agentd: multi-agent LLM workflows over a shared memory with role-aware context routing.
#[derive(Parser)]
#[command(name = "agentd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow on a task (documents optional) and print the answer, its evidence and
    /// the tokens used per role.
    Run(cli::run::RunArgs),
    /// Resume runs that a crash or a shutdown interrupted.
    Resume(cli::run::ResumeArgs),
    /// Recompute a finished run's context packs under another policy and compare them.
    Replay(cli::run::ReplayArgs),
    /// List the runs in the data folder.
    Runs(cli::run::RunsArgs),
    /// Check workflow and role files; exits 78 on a configuration error.
    Validate(cli::workflow::ValidateArgs),
    /// Print a workflow's graph (DOT or Mermaid).
    Graph(cli::workflow::GraphArgs),
    /// Print JSON Schemas of workflow and role files.
    Schema(cli::workflow::SchemaArgs),
    /// Evaluate routing policies on multi-hop QA data (evidence recall, tokens).
    Eval(cli::eval::EvalArgs),
    /// Run the daemon: the HTTP API (runs, SSE events, memory, manifests, metrics).
    Serve(cli::serve::ServeArgs),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Ingest and search throughput of the memory store on a synthetic corpus.
    Memory(MemoryArgs),
    /// Latency of one routing decision (in memory, or over a store with --store-items).
    Route(RouteArgs),
    /// Per-node overhead of the runtime and runs/s, with an instant scripted LLM.
    Runtime(agentd::bench::runtime::RuntimeArgs),
    /// Load on the daemon: N runs over HTTP against a fixed-latency LLM responder.
    Serve(agentd::bench::serve::ServeBenchArgs),
}

#[derive(clap::Args)]
struct RouteArgs {
    /// Candidates per route (in-memory mode).
    #[arg(long, default_value_t = 10_000)]
    candidates: usize,
    /// Token budget of each pack.
    #[arg(long, default_value_t = 2_048)]
    budget: u32,
    /// Timed routes.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Route over a store of this many synthetic documents, retrieval included.
    #[arg(long)]
    store_items: Option<u64>,
    /// Store directory for --store-items; a store left by `bench memory --dir` is reused.
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Corpus seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum EmbedderKind {
    /// Feature hashing of words and bigrams: no model needed.
    Hashing,
    /// all-MiniLM-L6-v2 through ONNX Runtime (run scripts/fetch-models.sh first).
    Minilm,
}

#[derive(clap::Args)]
struct MemoryArgs {
    /// Documents to ingest.
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Embedder.
    #[arg(long, value_enum, default_value = "hashing")]
    embedder: EmbedderKind,
    /// Items per durable batch.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Timed searches per mode.
    #[arg(long, default_value_t = 500)]
    queries: u64,
    /// Queries whose vector results are compared with an exact scan.
    #[arg(long, default_value_t = 100)]
    recall_queries: u64,
    /// Models directory (for --embedder minilm).
    #[arg(long, env = "AGENTD_MODELS_DIR", default_value = ".models")]
    models_dir: PathBuf,
    /// Store directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Corpus seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Namespaces from this many items get an HNSW graph (default: the store's).
    #[arg(long)]
    ann_min_rows: Option<usize>,
    /// Also measure vector recall and latency at these HNSW search breadths (e.g. 256,512).
    #[arg(long, value_delimiter = ',')]
    ef_sweep: Vec<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if opens_a_store(&cli.command) {
        prebuild_token_counter();
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command opens a memory store (and so counts tokens).
fn opens_a_store(command: &Command) -> bool {
    !matches!(
        command,
        Command::Validate(_) | Command::Graph(_) | Command::Schema(_)
    )
}

/// Builds the default token counter's tables (about a quarter of a second of CPU) on a
/// thread of their own while the command opens its store; the first count waits for the build
/// if it is not done. A command that exits first (or never counts) loses nothing.
fn prebuild_token_counter() {
    let _ = std::thread::Builder::new()
        .name("token-tables".into())
        .spawn(|| drop(agentd::memory::tokens::BpeTokenCounter::o200k()));
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Validate(args) => {
            return Ok(if cli::workflow::validate(args) {
                true
            } else {
                std::process::exit(i32::from(cli::workflow::EXIT_CONFIG))
            });
        }
        Command::Graph(args) => {
            if !cli::workflow::graph(args) {
                std::process::exit(i32::from(cli::workflow::EXIT_CONFIG));
            }
        }
        Command::Schema(args) => cli::workflow::schema(args)?,
        Command::Eval(args) => cli::eval::eval(args)?,
        Command::Replay(args) => cli::run::replay(args)?,
        Command::Runs(args) => cli::run::runs(args)?,
        Command::Run(args) => return tokio_runtime()?.block_on(cli::run::run(args)),
        Command::Resume(args) => return tokio_runtime()?.block_on(cli::run::resume(args)),
        Command::Bench(Bench::Memory(args)) => bench_memory(args)?,
        Command::Bench(Bench::Route(args)) => bench_route(args)?,
        Command::Serve(args) => tokio_runtime()?.block_on(cli::serve::serve(args))?,
        Command::Bench(Bench::Serve(args)) => {
            let report = tokio_runtime()?.block_on(agentd::bench::serve::run(&args))?;
            print_report(&report, args.json)?;
        }
        Command::Bench(Bench::Runtime(args)) => {
            let report = tokio_runtime()?.block_on(agentd::bench::runtime::run(&args))?;
            print_report(&report, args.json)?;
        }
    }
    Ok(true)
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn bench_route(args: RouteArgs) -> anyhow::Result<()> {
    if args.iterations == 0
        || (args.store_items.is_none() && args.store_dir.is_none() && args.candidates == 0)
    {
        anyhow::bail!("--iterations and --candidates must be at least 1");
    }
    let bench = RouteBench {
        candidates: args.candidates,
        budget: args.budget,
        iterations: args.iterations,
        store_items: args.store_items,
        store_dir: args.store_dir,
        seed: args.seed,
    };
    let report = bench.run(|line| eprintln!("bench route: {line}"))?;
    print_report(&report, args.json)
}

/// Prints a report as one JSON object, or as an aligned table.
fn print_report(report: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let value = serde_json::to_value(report)?;
        for (k, v) in value.as_object().into_iter().flatten() {
            println!("{k:>22}  {v}");
        }
    }
    Ok(())
}

fn bench_memory(args: MemoryArgs) -> anyhow::Result<()> {
    if args.items == 0 || args.batch == 0 || args.queries == 0 {
        anyhow::bail!("--items, --batch and --queries must be at least 1");
    }
    let embedder = match args.embedder {
        EmbedderKind::Hashing => EmbedderConfig::default(),
        EmbedderKind::Minilm => EmbedderConfig::minilm_in(&args.models_dir),
    };
    let bench = MemoryBench {
        items: args.items,
        batch: args.batch,
        queries: args.queries,
        recall_queries: args.recall_queries,
        k: 20,
        embedder,
        dir: args.dir,
        seed: args.seed,
        ann_min_rows: args.ann_min_rows,
        ef_sweep: args.ef_sweep,
    };
    let report = bench.run(|line| eprintln!("bench memory: {line}"))?;
    print_report(&report, args.json)
}
