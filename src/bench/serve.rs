//! `agentd bench serve`: load on the daemon over real HTTP.
//!
//! The harness starts, in this process, a fixed-latency OpenAI-compatible responder
//! ([`MockServer`]) and the daemon ([`agentd_server::Server`] on an ephemeral loopback port,
//! with the real OpenAI client, durable journal and fsynced memory writes). A client then
//! submits `runs` runs of a three-node workflow (plan → research → answer) concurrently over
//! HTTP (retrying 429s after their `Retry-After`) and polls the daemon's run gauges
//! (`/metrics`) until every run has ended.
//! The responder and the client run on a runtime of their own (one thread), as they would in
//! another process: the daemon's scheduler queues only the daemon's tasks, and its overhead
//! is not the harness's.
//!
//! Figures: submitted, completed, failed, runs/s (completed over the wall time from the first
//! submission to the last completion), the daemon's overhead per node (from `node_started` to
//! its synced `node_finished`, minus the LLM call's latency: routing, prompt, parsing,
//! write-back, events, checkpoint; measured inside the daemon by its metrics hook), submission
//! latency, and peak RSS. The peak RSS is the whole process's (daemon, responder and client
//! together), an upper bound on the daemon's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_llm::testing::{MockReply, MockServer};
use agentd_server::{Server, ServerConfig};
use serde::Serialize;
use serde_json::json;

use super::{percentile, rss_peak_mb};

/// Arguments of `agentd bench serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeBenchArgs {
    /// Runs to submit.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Latency of every LLM reply, in ms.
    #[arg(long, default_value_t = 50)]
    pub llm_latency_ms: u64,
    /// Submissions in flight at once (default: all of them).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The daemon's limit on runs executing at once.
    #[arg(long, default_value_t = 32)]
    pub max_running: usize,
    /// The daemon's run queue capacity.
    #[arg(long, default_value_t = 2048)]
    pub queue_capacity: usize,
    /// Give up waiting for the runs after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// The daemon's `commit.checkpoint_delay_ms` (default: the daemon's default).
    #[arg(long)]
    pub checkpoint_delay_ms: Option<f64>,
    /// The daemon's `commit.store_delay_ms` (default: the daemon's default).
    #[arg(long)]
    pub store_delay_ms: Option<f64>,
    /// Also write every measured node's overhead, phases and finish time (ms; the finish
    /// time since the warm-up), one CSV row per node in the order the nodes finished, to this file: shows where in the run the tail happens
    /// (the first nodes run during the submission burst).
    #[arg(long, value_name = "FILE")]
    pub phases_out: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Figures of `agentd bench serve`.
#[derive(Debug, Serialize)]
pub struct ServeReport {
    /// Runs submitted (answered 202).
    pub submitted: usize,
    /// Runs that finished.
    pub completed: usize,
    /// Runs that failed, were cancelled, were never accepted, or had not ended at the timeout.
    pub failed: usize,
    /// 429 answers retried by the client.
    pub retried_429: usize,
    /// Nodes per run.
    pub nodes_per_run: usize,
    /// Latency of every LLM reply (ms).
    pub llm_latency_ms: u64,
    /// The daemon's run-slot limit.
    pub max_running: usize,
    /// Completed runs per second.
    pub runs_per_s: f64,
    /// Wall time from the first submission to the last completion (s).
    pub wall_s: f64,
    /// Daemon overhead per node (wall minus LLM time), median (ms).
    pub overhead_per_node_p50_ms: f64,
    /// The same, 90th percentile (ms).
    pub overhead_per_node_p90_ms: f64,
    /// The same, 99th percentile (ms).
    pub overhead_per_node_p99_ms: f64,
    /// The same, worst (ms).
    pub overhead_per_node_max_ms: f64,
    /// Nodes measured.
    pub nodes_measured: usize,
    /// Overhead of the first nodes to finish, as many as run slots, median (ms): they run
    /// while the daemon takes the submission burst, and at 1% of the nodes they can be the
    /// whole p99.
    pub first_wave_overhead_p50_ms: f64,
    /// Overhead of the nodes that finish after the first wave, 99th percentile (ms).
    pub after_first_wave_overhead_p99_ms: f64,
    /// p99 of each phase of the overhead (ms): routing, act (prompt, events and client
    /// queueing beyond the LLM latency), write-back (parsing, the deferred store write),
    /// checkpoint (the store's flush and the journal's group commit, side by side).
    pub phase_p99_ms: PhaseFigures,
    /// Medians of the same phases (ms).
    pub phase_p50_ms: PhaseFigures,
    /// `POST /v1/runs` latency, median (ms).
    pub submit_p50_ms: f64,
    /// The same, 99th percentile (ms).
    pub submit_p99_ms: f64,
    /// Peak resident set size of the process: daemon, responder and client (MiB).
    pub rss_peak_mb: f64,
}

/// Figures per phase of a node's overhead.
#[derive(Debug, Serialize)]
pub struct PhaseFigures {
    /// Node start to routed context.
    pub routing: f64,
    /// Routed context to the LLM call's return, minus its latency.
    pub act: f64,
    /// The call's return to the items written.
    pub write_back: f64,
    /// Items written to the synced checkpoint.
    pub checkpoint: f64,
}

/// (Median overhead of the first `slots` nodes to finish, p99 of the others), from the nodes'
/// phases in finishing order.
fn wave_figures(phases: &[agentd_server::metrics::NodePhases], slots: usize) -> (f64, f64) {
    let split = slots.min(phases.len());
    let (first, after) = phases.split_at(split);
    let mut first: Vec<f64> = first.iter().map(|p| p.overhead).collect();
    let mut after: Vec<f64> = after.iter().map(|p| p.overhead).collect();
    (percentile(&mut first, 50.0), percentile(&mut after, 99.0))
}

fn phase_figures(phases: &[agentd_server::metrics::NodePhases], p: f64) -> PhaseFigures {
    let of = |f: fn(&agentd_server::metrics::NodePhases) -> f64| {
        let mut v: Vec<f64> = phases.iter().map(f).collect();
        percentile(&mut v, p)
    };
    PhaseFigures {
        routing: of(|x| x.routing),
        act: of(|x| x.act),
        write_back: of(|x| x.write_back),
        checkpoint: of(|x| x.checkpoint),
    }
}

/// The benchmark's workflow: three nodes in a chain, one round.
pub use agentd_server::testing::THREE_NODE_WORKFLOW as WORKFLOW;

/// A reply valid for the role whose system prompt the request carries.
pub fn reply_for(request: &agentd_llm::testing::MockRequest) -> String {
    let system = request.body["messages"][0]["content"]
        .as_str()
        .unwrap_or("");
    let n = request.seq;
    match system {
        "Answer." => {
            format!(r#"{{"answer": {{"content": "answer {n}", "confidence": 0.9, "cites": []}}}}"#)
        }
        "Plan." => format!(
            r#"{{"items": [{{"kind": "plan", "content": "plan {n}: find the river", "confidence": 0.8}}]}}"#
        ),
        _ => format!(
            r#"{{"items": [{{"kind": "evidence", "content": "evidence {n}: the Seine", "confidence": 0.8}}]}}"#
        ),
    }
}

async fn submit(
    client: &reqwest::Client,
    base: &str,
    i: usize,
) -> anyhow::Result<(Option<String>, usize, f64)> {
    let mut retried = 0;
    loop {
        let started = Instant::now();
        let response = client
            .post(format!("{base}/v1/runs"))
            .json(&json!({
                "workflow_toml": WORKFLOW,
                "input": format!("Which river flows through the capital of country {i}?"),
            }))
            .send()
            .await?;
        let took = started.elapsed().as_secs_f64() * 1e3;
        match response.status().as_u16() {
            202 => {
                let body: serde_json::Value = response.json().await?;
                return Ok((body["id"].as_str().map(str::to_owned), retried, took));
            }
            429 => {
                retried += 1;
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            status => {
                let text = response.text().await.unwrap_or_default();
                eprintln!("bench serve: submission {i} answered {status}: {text}");
                return Ok((None, retried, took));
            }
        }
    }
}

/// Counts runs by status through the listing.
/// Runs by status, from the daemon's `agentd_runs` gauge: far cheaper for the daemon than
/// listing every run, so polling does not weigh on the figures.
async fn count_statuses(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<std::collections::HashMap<String, usize>> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(runs_by_status(&text))
}

/// Parses the `agentd_runs{status="..."} N` lines of a Prometheus text exposition.
fn runs_by_status(metrics: &str) -> std::collections::HashMap<String, usize> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("agentd_runs{status=\"")?;
            let (status, rest) = rest.split_once("\"} ")?;
            Some((status.to_owned(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The harness's runtime. Shut down without waiting when dropped, on every path out of
/// [`run`] (an async context, where dropping a runtime outright panics).
struct Harness(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Harness {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("the harness runtime lives until dropped")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Writes the nodes' phases as CSV (see [`ServeBenchArgs::phases_out`]).
fn write_phases(
    path: &std::path::Path,
    phases: &[agentd_server::metrics::NodePhases],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut csv =
        String::from("overhead_ms,routing_ms,act_ms,write_back_ms,checkpoint_ms,finished_at_ms\n");
    for p in phases {
        let _ = writeln!(
            csv,
            "{:.3},{:.3},{:.3},{:.3},{:.3},{:.1}",
            p.overhead, p.routing, p.act, p.write_back, p.checkpoint, p.finished_at
        );
    }
    std::fs::write(path, csv)
        .map_err(|e| anyhow::anyhow!("writing the node phases to {}: {e}", path.display()))
}

/// What the client saw.
struct Load {
    submitted: usize,
    retried: usize,
    completed: usize,
    ended_badly: usize,
    wall: f64,
    submit_ms: Vec<f64>,
}

/// The client: warms the daemon up, submits the runs, and polls until every run has ended.
/// Its connections close when it returns, before the daemon stops (they hold the daemon's
/// state, and its store).
async fn submit_and_wait(
    args: ServeBenchArgs,
    base: String,
    metrics: Arc<agentd_server::metrics::Metrics>,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.unwrap_or(args.runs).min(512))
        .build()?;

    // Warm up (connections, the router's role vectors, allocators), then forget its figures.
    eprintln!("bench serve: warm-up");
    for i in 0..3 {
        submit(&client, &base, i).await?;
    }
    while count_statuses(&client, &base)
        .await?
        .get("finished")
        .copied()
        .unwrap_or(0)
        < 3
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics.clear_node_overheads();

    eprintln!(
        "bench serve: {} runs, LLM latency {} ms, {} run slots",
        args.runs, args.llm_latency_ms, args.max_running
    );
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        args.concurrency.unwrap_or(args.runs).max(1),
    ));
    let mut tasks = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let client = client.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let result = submit(&client, &base, 1000 + i).await;
            drop(permit);
            result
        }));
    }
    let mut submitted = 0;
    let mut retried = 0;
    let mut submit_ms = Vec::with_capacity(args.runs);
    for task in tasks {
        match task.await? {
            Ok((id, r, took)) => {
                retried += r;
                submit_ms.push(took);
                if id.is_some() {
                    submitted += 1;
                }
            }
            Err(e) => eprintln!("bench serve: a submission failed: {e}"),
        }
    }
    eprintln!(
        "bench serve: {submitted} submitted in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let warm = 3;
    let (completed, ended_badly) = loop {
        let counts = count_statuses(&client, &base).await?;
        let finished = counts
            .get("finished")
            .copied()
            .unwrap_or(0)
            .saturating_sub(warm);
        let bad = counts.get("failed").copied().unwrap_or(0)
            + counts.get("cancelled").copied().unwrap_or(0);
        if finished + bad >= submitted || Instant::now() >= deadline {
            break (finished, bad);
        }
        // Polling scans every run: keep it rare enough not to weigh on the figures.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    Ok(Load {
        submitted,
        retried,
        completed,
        ended_badly,
        wall: started.elapsed().as_secs_f64(),
        submit_ms,
    })
}

/// Runs the benchmark.
pub async fn run(args: &ServeBenchArgs) -> anyhow::Result<ServeReport> {
    if args.runs == 0 || args.max_running == 0 {
        anyhow::bail!("--runs and --max-running must be at least 1");
    }
    // The harness (the LLM responder and the client) runs on its own thread: the daemon's
    // scheduler sees only the daemon's tasks, as it would with the load coming from elsewhere.
    let harness = Harness(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-harness")
            .enable_all()
            .build()?,
    ));
    let latency = Duration::from_millis(args.llm_latency_ms);
    let llm = {
        let _in_harness = harness.enter();
        MockServer::with(move |req| MockReply::text(reply_for(req)).after(latency))
    };
    llm.set_recording(false);
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("data"),
        ..ServerConfig::default()
    };
    config.llm.base_url = llm.base_url();
    config.llm.model = "mock-model".into();
    config.llm.concurrency = args.max_running;
    config.llm.max_retries = 0;
    config.limits.max_running = args.max_running;
    config.limits.queue_capacity = args.queue_capacity;
    if let Some(ms) = args.checkpoint_delay_ms {
        config.commit.checkpoint_delay_ms = ms;
    }
    if let Some(ms) = args.store_delay_ms {
        config.commit.store_delay_ms = ms;
    }
    config.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::bind(config).await?;
    let base = format!("http://{}", server.local_addr()?);
    let metrics = Arc::clone(&server.state().metrics);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let load = harness.spawn(submit_and_wait(args.clone(), base, Arc::clone(&metrics)));
    let Load {
        submitted,
        retried,
        completed,
        ended_badly,
        wall,
        mut submit_ms,
    } = load.await??;
    let phases = metrics.node_phases_ms();
    let mut overheads = metrics.node_overheads_ms();
    let _ = stop_tx.send(());
    let _ = daemon.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(llm);
    drop(harness);
    if let Some(path) = &args.phases_out {
        write_phases(path, &phases)?;
    }
    let failed = args.runs.saturating_sub(completed).max(ended_badly);
    let (first_wave, after_first_wave) = wave_figures(&phases, args.max_running);
    Ok(ServeReport {
        submitted,
        completed,
        failed,
        retried_429: retried,
        nodes_per_run: 3,
        llm_latency_ms: args.llm_latency_ms,
        max_running: args.max_running,
        runs_per_s: completed as f64 / wall,
        wall_s: wall,
        overhead_per_node_p50_ms: percentile(&mut overheads, 50.0),
        overhead_per_node_p90_ms: percentile(&mut overheads, 90.0),
        overhead_per_node_p99_ms: percentile(&mut overheads, 99.0),
        overhead_per_node_max_ms: percentile(&mut overheads, 100.0),
        nodes_measured: overheads.len(),
        first_wave_overhead_p50_ms: first_wave,
        after_first_wave_overhead_p99_ms: after_first_wave,
        phase_p99_ms: phase_figures(&phases, 99.0),
        phase_p50_ms: phase_figures(&phases, 50.0),
        submit_p50_ms: percentile(&mut submit_ms, 50.0),
        submit_p99_ms: percentile(&mut submit_ms, 99.0),
        rss_peak_mb: rss_peak_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(runs: usize) -> ServeBenchArgs {
        ServeBenchArgs {
            runs,
            llm_latency_ms: 5,
            concurrency: None,
            max_running: 8,
            queue_capacity: 2048,
            timeout_secs: 120,
            checkpoint_delay_ms: None,
            store_delay_ms: None,
            phases_out: None,
            json: true,
        }
    }

    /// The benchmark end to end (the daemon over real HTTP, its store and journal on disk):
    /// every run completes, every node is measured, and the phases file has a row per node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_load_completes_every_run_and_measures_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("phases.csv");
        let report = run(&ServeBenchArgs {
            phases_out: Some(out.clone()),
            ..args(12)
        })
        .await
        .unwrap();
        assert_eq!(
            (report.submitted, report.completed, report.failed),
            (12, 12, 0)
        );
        assert_eq!(report.nodes_measured, 36);
        let csv = std::fs::read_to_string(&out).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("overhead_ms,routing_ms,act_ms,write_back_ms,checkpoint_ms,finished_at_ms")
        );
        let rows: Vec<Vec<f64>> = lines
            .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), 36);
        assert!(
            rows.iter()
                .all(|r| r.len() == 6 && r.iter().all(|v| *v >= 0.0))
        );
        // Rows are in finishing order: their finish times never go back (printed to 0.1 ms).
        assert!(
            rows.windows(2).all(|w| w[0][5] <= w[1][5]),
            "finish times out of order"
        );
        // The first wave is the first `max_running` (8) rows, in finishing order.
        let mut first: Vec<f64> = rows[..8].iter().map(|r| r[0]).collect();
        let mut after: Vec<f64> = rows[8..].iter().map(|r| r[0]).collect();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(close(
            report.first_wave_overhead_p50_ms,
            percentile(&mut first, 50.0)
        ));
        assert!(close(
            report.after_first_wave_overhead_p99_ms,
            percentile(&mut after, 99.0)
        ));
    }

    #[test]
    fn the_first_wave_is_as_many_nodes_as_slots_in_finishing_order() {
        let node = |overhead: f64| agentd_server::metrics::NodePhases {
            overhead,
            routing: 0.0,
            act: 0.0,
            write_back: 0.0,
            checkpoint: 0.0,
            finished_at: 0.0,
        };
        let phases: Vec<_> = [9.0, 7.0, 8.0, 1.0, 2.0, 3.0].map(node).to_vec();
        assert_eq!(wave_figures(&phases, 3), (8.0, 3.0));
        // More slots than nodes: all of them are the first wave.
        assert_eq!(wave_figures(&phases, 10), (3.0, 0.0));
    }

    /// Errors after the harness has started are reported, not a panic from dropping its
    /// runtime in async code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_after_the_harness_starts_are_reported() {
        let error_of =
            |args: ServeBenchArgs| async move { run(&args).await.unwrap_err().to_string() };
        let bad_config = error_of(ServeBenchArgs {
            checkpoint_delay_ms: Some(-1.0),
            ..args(2)
        })
        .await;
        assert!(bad_config.contains("checkpoint_delay_ms"), "{bad_config}");

        let dir = tempfile::tempdir().unwrap();
        let unwritable = error_of(ServeBenchArgs {
            phases_out: Some(dir.path().join("missing").join("phases.csv")),
            ..args(2)
        })
        .await;
        assert!(
            unwritable.contains("writing the node phases"),
            "{unwritable}"
        );
    }

    #[test]
    fn run_counts_are_read_from_the_runs_gauge() {
        let text = "# HELP agentd_runs Runs.\n# TYPE agentd_runs gauge\n\
                    agentd_runs{status=\"queued\"} 7\nagentd_runs{status=\"finished\"} 1003\n\
                    agentd_runs_total 5\nagentd_queue_depth 7\n";
        let counts = runs_by_status(text);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts["queued"], 7);
        assert_eq!(counts["finished"], 1003);
    }
}
