//! Routing-only evaluation from the command line (until the CLI wires it).
//!
//! ```text
//! cargo run --release -p agentd-eval --example routing_eval -- \
//!     ../shared/data/mhqa/hotpotqa.jsonl --budgets role,256,512,1024,2048 [--limit N] \
//!     [--dataset hotpotqa|musique|2wiki] [--policies rcr,full,static:4,static:matched,recency] \
//!     [--nodes answer,research | --all-nodes] [--workflow workflows/multihop_qa.toml] \
//!     [--minilm .models] [--json report.json]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use agentd_eval::{BudgetSpec, DatasetKind, PolicySpec, RoutingEvalConfig, run_routing_eval};
use agentd_memory::embed::EmbedderConfig;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = RoutingEvalConfig::default();
    let mut json: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let mut file = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--dataset" => {
                let v = value()?;
                cfg.dataset = Some(DatasetKind::parse(&v).ok_or(format!("unknown dataset {v}"))?)
            }
            "--limit" => cfg.limit = Some(value()?.parse()?),
            "--sample" => cfg.sample = Some(value()?.parse()?),
            "--seed" => cfg.seed = value()?.parse()?,
            "--budgets" => {
                cfg.budgets = value()?
                    .split(',')
                    .map(|b| BudgetSpec::parse(b).ok_or(format!("bad budget {b}")))
                    .collect::<Result<_, _>>()?
            }
            "--policies" => {
                cfg.policies = value()?
                    .split(',')
                    .map(|p| PolicySpec::parse(p).ok_or(format!("bad policy {p}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-bm25" => cfg.bm25_baseline = false,
            "--no-diagnostic" => cfg.score_order_diagnostic = false,
            "--nodes" => cfg.nodes = value()?.split(',').map(str::to_owned).collect(),
            "--all-nodes" => cfg.all_nodes = true,
            "--workflow" => cfg.workflow = value()?.into(),
            "--minilm" => cfg.embedder = EmbedderConfig::minilm_in(value()?),
            "--json" => json = Some(value()?.into()),
            f if !f.starts_with("--") && file.is_none() => file = Some(PathBuf::from(f)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    cfg.file = file.ok_or("usage: routing_eval FILE [options]")?;
    let report = run_routing_eval(&cfg, |done, total| {
        if done % 50 == 0 || done == total {
            eprintln!("{done}/{total}");
        }
    })?;
    println!("{}", report.to_markdown());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
