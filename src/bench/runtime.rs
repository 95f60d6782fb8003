//! `agentd bench runtime`: what the runtime itself costs per node.
//!
//! The workflow has the multihop_qa shape (plan → research → reason → answer, 3 rounds, no stop
//! condition, so 12 nodes per run), every role answered instantly by a scripted LLM that returns
//! one item. Each node routes over the run's memory, renders its prompt, parses the reply and
//! writes one item: that is the node's **work**. The **overhead** is everything else from the
//! orchestrator's dispatch to the node's checkpoint: mailboxes, scheduling, events, usage
//! accounting, and the checkpoint itself (an fsync with durable checkpoints).
//!
//! Phases, in one process: sequential runs with checkpoints off, sequential runs with durable
//! checkpoints, then `concurrency` runs at a time with durable checkpoints (group commits) and
//! with checkpoints off. One fsync of a small append is measured in the same run as the
//! baseline of the durable figures. In the concurrent durable phase the journal's syncs (count
//! and time) and the store's flushes are counted too: per node, they show how many nodes share
//! a sync (group commit), which the difference of two batches' wall times is too noisy to show.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_llm::{ChatRequest, LlmClient, ScriptedClient};
use agentd_memory::embed::HashingEmbedder;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{EmbeddedStore, MemoryStore, StoreOptions};
use agentd_runtime::{Durability, NodeTimings, RunRequest, RunStatus, Runtime};
use agentd_workflow::Workflow;
use serde::Serialize;

use super::{cpu_time_s, percentile, rss_peak_mb};

/// Arguments of `agentd bench runtime`.
#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Runs per phase.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Runs in flight in the concurrent phases.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Memory writes use the store's background durability (sled flushes them within a
    /// second; a crash can lose them). Default: fsynced, the store's default.
    #[arg(long)]
    pub store_buffered: bool,
    /// How long a checkpoint waits for company under load, in µs (default: the runtime's,
    /// see `RuntimeBuilder::commit_delay`; 0 syncs every checkpoint at once).
    #[arg(long)]
    pub commit_delay_us: Option<u64>,
    /// Durable and checkpoint-off batches at `concurrency`, alternated; the concurrent
    /// figures are medians over the pairs.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Figures of `agentd bench runtime`.
#[derive(Debug, Serialize)]
pub struct RuntimeReport {
    /// Runs per phase.
    pub runs: usize,
    /// Alternated pairs of concurrent batches (durable, off) the concurrent figures are
    /// medians over.
    pub pairs: usize,
    /// Nodes per run.
    pub nodes_per_run: usize,
    /// Concurrency of the concurrent phases.
    pub concurrency: usize,
    /// Overhead per node, checkpoints off, sequential (µs).
    pub overhead_off_p50_us: f64,
    /// p99 of the same.
    pub overhead_off_p99_us: f64,
    /// Overhead per node, durable checkpoints, sequential (µs).
    pub overhead_durable_p50_us: f64,
    /// p99 of the same.
    pub overhead_durable_p99_us: f64,
    /// One fsync of a small append on this disk, median of samples taken before and after the
    /// phases (µs).
    pub fsync_p50_us: f64,
    /// `overhead_durable_p50_us / fsync_p50_us`.
    pub durable_over_fsync: f64,
    /// The journal's own write and sync per checkpoint in the sequential durable phase,
    /// mean (µs): the part of `overhead_durable_p50_us` spent on the disk, the rest being
    /// the node's events, hand-overs and scheduling.
    pub checkpoint_sync_sequential_us: f64,
    /// A node's own work (routing, prompt, scripted reply, parsing, write-back), median (µs).
    pub node_work_p50_us: f64,
    /// Runs per second at `concurrency`, durable checkpoints (median over the pairs, as are
    /// the other concurrent figures).
    pub runs_per_s_durable: f64,
    /// Runs per second at `concurrency`, checkpoints off.
    pub runs_per_s_off: f64,
    /// Wall time per node at `concurrency`, durable: the whole batch's wall time over the nodes
    /// it ran, everything included (routing, scripted LLM, write-back, checkpoints) (µs).
    pub wall_per_node_durable_us: f64,
    /// The same with checkpoints off (µs).
    pub wall_per_node_off_us: f64,
    /// What durable checkpoints add per node at `concurrency`, amortised over group commits:
    /// the median over the pairs of `wall_per_node_durable_us - wall_per_node_off_us` (µs;
    /// noisy, each the difference of two batches).
    pub checkpoint_amortised_us: f64,
    /// Journal syncs per node at `concurrency`, durable: below 1 when checkpoints share syncs
    /// (group commit).
    pub checkpoint_syncs_per_node: f64,
    /// Time the journal spent writing and syncing checkpoints at `concurrency`, durable, over
    /// the nodes run (µs). Mostly waiting on the disk, which overlaps other nodes' work: the
    /// wall-time cost is `checkpoint_amortised_us`.
    pub checkpoint_sync_us_per_node: f64,
    /// CPU time (user + system, all threads) per node at `concurrency`, durable (µs): on 2
    /// cores a concurrent batch is CPU-bound, so this is what a node costs the machine.
    pub cpu_per_node_durable_us: f64,
    /// The same with checkpoints off (µs).
    pub cpu_per_node_off_us: f64,
    /// `cpu_per_node_durable_us - cpu_per_node_off_us`: the CPU durable checkpoints cost per
    /// node at `concurrency` (encoding, writes, syncs and the thread hand-overs around them).
    pub checkpoint_cpu_us: f64,
    /// Memory store fsyncs (write-back) per node at `concurrency`, durable (0 with
    /// `--store-buffered`): below 1 when writers share them (group commit).
    pub store_syncs_per_node: f64,
    /// Median overhead per node at `concurrency`, durable; includes waiting for a turn on the
    /// two cores and for group commits (µs).
    pub overhead_concurrent_durable_p50_us: f64,
    /// Peak resident set size (MiB).
    pub rss_peak_mb: f64,
}

const WORKFLOW: &str = r#"
[workflow]
name = "bench_multihop"
max_rounds = 3

[router]
policy = "rcr"

[roles.planner]
description = "Breaks the question into sub-questions."
writes = ["plan"]
prompt = { system = "Plan.", template = "{{task}} {{context}} {{output_format}}" }

[roles.researcher]
description = "Finds evidence for the sub-questions."
writes = ["evidence"]
prompt = { system = "Research.", template = "{{task}} {{context}} {{output_format}}" }

[roles.reasoner]
description = "Links facts across hops."
writes = ["fact"]
prompt = { system = "Reason.", template = "{{task}} {{context}} {{output_format}}" }

[roles.answerer]
description = "Answers with cited evidence."
writes = ["answer"]
prompt = { system = "Answer.", template = "{{task}} {{context}} {{output_format}}" }

[nodes.plan]
role = "planner"
stage = "plan"

[nodes.research]
role = "researcher"
stage = "gather"
after = ["plan"]

[nodes.reason]
role = "reasoner"
stage = "reason"
after = ["research"]

[nodes.answer]
role = "answerer"
stage = "answer"
after = ["reason"]
"#;

/// A scripted LLM answering every role instantly with one fresh item of the kind it writes.
fn scripted_llm() -> Arc<dyn LlmClient> {
    let counter = std::sync::atomic::AtomicU64::new(0);
    Arc::new(ScriptedClient::new(move |req: &ChatRequest| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let system = req.messages.first().map_or("", |m| m.content.as_str());
        let reply = match system {
            "Answer." => format!(
                r#"{{"answer": {{"content": "answer {n}", "confidence": 0.5, "cites": []}}}}"#
            ),
            s => {
                let kind = match s {
                    "Plan." => "plan",
                    "Research." => "evidence",
                    _ => "fact",
                };
                format!(
                    r#"{{"items": [{{"kind": "{kind}", "content": "note {n} about step {kind}", "confidence": 0.8}}]}}"#
                )
            }
        };
        Ok(reply)
    }))
}

struct Phase {
    wall: Duration,
    /// CPU time of the measured runs (s).
    cpu_s: f64,
    timings: Vec<(Duration, Duration)>,
    /// The journal's syncs during the measured runs (none with checkpoints off).
    syncs: agentd_runtime::journal::SyncStats,
    /// The memory store's flushes for writes during the measured runs.
    store_flushes: u64,
    /// The phase's data folder, removed only after its runtime is gone.
    _dir: tempfile::TempDir,
}

async fn phase(
    workflow: &Arc<Workflow>,
    durability: Durability,
    runs: usize,
    concurrency: usize,
    store_fsync: bool,
    commit_delay: Option<Duration>,
) -> anyhow::Result<Phase> {
    let dir = tempfile::tempdir()?;
    let durability_store = if store_fsync {
        agentd_memory::Durability::Fsync
    } else {
        agentd_memory::Durability::Background {
            flush_every_ms: 1000,
        }
    };
    let options = StoreOptions::new(
        Arc::new(HashingEmbedder::new(256)?),
        default_token_counter(),
    )
    .durability(durability_store);
    let embedded = Arc::new(EmbeddedStore::open(dir.path().join("memory"), options)?);
    let store: Arc<dyn MemoryStore> = Arc::clone(&embedded) as Arc<dyn MemoryStore>;
    let timings = Arc::new(NodeTimings::default());
    let mut builder = Runtime::builder();
    if let Some(delay) = commit_delay {
        builder = builder.commit_delay(delay);
    }
    let runtime = builder
        .data_dir(dir.path())
        .store(store)
        .llm(scripted_llm())
        .durability(durability)
        .node_timings(Arc::clone(&timings))
        .build()?;
    // Warm up (the router's role vectors, allocators, page cache).
    for _ in 0..3 {
        runtime
            .run(RunRequest::new(Arc::clone(workflow), "warm up"))
            .await?;
    }
    timings.take();
    let syncs_before = runtime.journal_sync_stats().unwrap_or_default();
    let flushes_before = embedded.write_flushes();
    let cpu_before = cpu_time_s();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(runs);
    for i in 0..runs {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let runtime = runtime.clone();
        let workflow = Arc::clone(workflow);
        tasks.push(tokio::spawn(async move {
            let outcome = runtime
                .run(RunRequest::new(
                    workflow,
                    format!("Which river flows through the capital of country {i}?"),
                ))
                .await;
            drop(permit);
            outcome
        }));
    }
    for task in tasks {
        let outcome = task.await??;
        if outcome.status != RunStatus::Finished {
            anyhow::bail!("a benchmark run did not finish: {:?}", outcome.error);
        }
    }
    let wall = started.elapsed();
    let cpu_s = cpu_time_s() - cpu_before;
    let syncs_after = runtime.journal_sync_stats().unwrap_or_default();
    let store_flushes = embedded.write_flushes() - flushes_before;
    runtime.close();
    drop(runtime);
    Ok(Phase {
        wall,
        cpu_s,
        timings: timings.take(),
        syncs: agentd_runtime::journal::SyncStats {
            syncs: syncs_after.syncs - syncs_before.syncs,
            time: syncs_after.time.saturating_sub(syncs_before.time),
        },
        store_flushes,
        _dir: dir,
    })
}

fn overheads_us(timings: &[(Duration, Duration)]) -> Vec<f64> {
    timings
        .iter()
        .map(|(total, work)| total.saturating_sub(*work).as_secs_f64() * 1e6)
        .collect()
}

/// Samples of one fsync of a small append (µs).
fn fsync_samples_us() -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("probe"))?;
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[7u8; 200])?;
        file.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Runs the benchmark.
pub async fn run(args: &RuntimeArgs) -> anyhow::Result<RuntimeReport> {
    if args.runs == 0 || args.concurrency == 0 {
        anyhow::bail!("--runs and --concurrency must be at least 1");
    }
    let workflow = Arc::new(
        Workflow::parse(WORKFLOW, "bench runtime workflow", None)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let nodes_per_run = workflow.nodes.len() * workflow.max_rounds as usize;
    let delay = args.commit_delay_us.map(Duration::from_micros);

    // The disk's fsync cost drifts with the machine's other I/O: sample it before and after
    // the phases, and compare against the median of both.
    let mut fsync_us = fsync_samples_us()?;
    eprintln!("bench runtime: sequential, checkpoints off");
    let off = phase(
        &workflow,
        Durability::Off,
        args.runs,
        1,
        !args.store_buffered,
        delay,
    )
    .await?;
    eprintln!("bench runtime: sequential, durable checkpoints");
    let durable = phase(
        &workflow,
        Durability::Durable,
        args.runs,
        1,
        !args.store_buffered,
        delay,
    )
    .await?;
    // The concurrent figures are differences of two batches on a noisy machine: alternate
    // durable and off batches (D O O D D O ...) and report medians over the pairs.
    let mut pairs = Vec::with_capacity(args.pairs);
    for k in 0..args.pairs.max(1) {
        let mut pair = [None, None];
        let order = if k % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let durability = [Durability::Durable, Durability::Off][which];
            eprintln!(
                "bench runtime: concurrency {}, {durability:?} (pair {}/{})",
                args.concurrency,
                k + 1,
                args.pairs.max(1)
            );
            pair[which] = Some(
                phase(
                    &workflow,
                    durability,
                    args.runs,
                    args.concurrency,
                    !args.store_buffered,
                    delay,
                )
                .await?,
            );
        }
        let [Some(d), Some(o)] = pair else {
            unreachable!("both phases of a pair ran")
        };
        pairs.push((d, o));
    }
    fsync_us.extend(fsync_samples_us()?);
    let fsync = percentile(&mut fsync_us, 50.0);

    let mut off_us = overheads_us(&off.timings);
    let mut durable_us = overheads_us(&durable.timings);
    let mut work_us: Vec<f64> = durable
        .timings
        .iter()
        .chain(&off.timings)
        .map(|(_, w)| w.as_secs_f64() * 1e6)
        .collect();
    let per_node = |p: &Phase| p.wall.as_secs_f64() * 1e6 / p.timings.len().max(1) as f64;
    let cpu_per_node = |p: &Phase| p.cpu_s * 1e6 / p.timings.len().max(1) as f64;
    let median = |f: &dyn Fn(&(Phase, Phase)) -> f64| {
        let mut v: Vec<f64> = pairs.iter().map(f).collect();
        percentile(&mut v, 50.0)
    };
    let mut concurrent_us: Vec<f64> = pairs
        .iter()
        .flat_map(|(d, _)| overheads_us(&d.timings))
        .collect();
    let c_nodes = pairs
        .iter()
        .map(|(d, _)| d.timings.len())
        .sum::<usize>()
        .max(1) as f64;
    let c_syncs: u64 = pairs.iter().map(|(d, _)| d.syncs.syncs).sum();
    let c_sync_time: f64 = pairs.iter().map(|(d, _)| d.syncs.time.as_secs_f64()).sum();
    let c_flushes: u64 = pairs.iter().map(|(d, _)| d.store_flushes).sum();
    let durable_p50 = percentile(&mut durable_us, 50.0);
    Ok(RuntimeReport {
        runs: args.runs,
        pairs: pairs.len(),
        nodes_per_run,
        concurrency: args.concurrency,
        overhead_off_p50_us: percentile(&mut off_us, 50.0),
        overhead_off_p99_us: percentile(&mut off_us, 99.0),
        overhead_durable_p50_us: durable_p50,
        overhead_durable_p99_us: percentile(&mut durable_us, 99.0),
        fsync_p50_us: fsync,
        durable_over_fsync: if fsync > 0.0 {
            durable_p50 / fsync
        } else {
            0.0
        },
        checkpoint_sync_sequential_us: durable.syncs.time.as_secs_f64() * 1e6
            / durable.syncs.syncs.max(1) as f64,
        node_work_p50_us: percentile(&mut work_us, 50.0),
        runs_per_s_durable: median(&|(d, _)| args.runs as f64 / d.wall.as_secs_f64()),
        runs_per_s_off: median(&|(_, o)| args.runs as f64 / o.wall.as_secs_f64()),
        wall_per_node_durable_us: median(&|(d, _)| per_node(d)),
        wall_per_node_off_us: median(&|(_, o)| per_node(o)),
        checkpoint_amortised_us: median(&|(d, o)| per_node(d) - per_node(o)),
        cpu_per_node_durable_us: median(&|(d, _)| cpu_per_node(d)),
        cpu_per_node_off_us: median(&|(_, o)| cpu_per_node(o)),
        checkpoint_cpu_us: median(&|(d, o)| cpu_per_node(d) - cpu_per_node(o)),
        checkpoint_syncs_per_node: c_syncs as f64 / c_nodes,
        checkpoint_sync_us_per_node: c_sync_time * 1e6 / c_nodes,
        store_syncs_per_node: c_flushes as f64 / c_nodes,
        overhead_concurrent_durable_p50_us: percentile(&mut concurrent_us, 50.0),
        rss_peak_mb: rss_peak_mb(),
    })
}
