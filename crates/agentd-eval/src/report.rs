//! The evaluation report: the exact configuration, one row per (policy, budget, node), and a
//! Markdown rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use agentd_memory::embed::EmbedderConfig;
use serde::{Deserialize, Serialize};

use crate::datasets::DatasetKind;
use crate::routing::{BudgetSpec, PolicySpec};

/// The configuration a report was produced with (enough to reproduce it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    /// The dataset.
    pub dataset: DatasetKind,
    /// The file read.
    pub file: String,
    /// Questions evaluated.
    pub count: usize,
    /// Questions in the file.
    pub file_count: usize,
    /// Policies routed.
    pub policies: Vec<PolicySpec>,
    /// Budgets routed at.
    pub budgets: Vec<BudgetSpec>,
    /// Whether the BM25 baseline was computed.
    pub bm25_baseline: bool,
    /// Whether the `rcr:by_score` diagnostic was computed.
    pub score_order_diagnostic: bool,
    /// Budget of the full-context reference.
    pub full_budget: u32,
    /// The embedder of the store.
    pub embedder: EmbedderConfig,
    /// The workflow file.
    pub workflow: String,
    /// Nodes evaluated (their role and stage are in the rows).
    pub nodes: Vec<String>,
    /// Seed of the question sample (used only with `sample`).
    pub seed: u64,
    /// Questions sampled (`None`: the first `limit`, or all).
    pub sample: Option<usize>,
    /// Questions read from the start of the file (`None`: all).
    pub limit: Option<usize>,
}

/// Aggregates of one (policy, budget, node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    /// `rcr`, `full`, `static:4`, `static:matched`, `recency`, `bm25` (the baseline), or
    /// `rcr:by_score` (the diagnostic: rcr's ranking without its packing).
    pub policy: String,
    /// How the budget was chosen (`role` or a token count).
    pub budget_spec: BudgetSpec,
    /// The budget routed at (for `role`: the node's effective budget).
    pub budget: u32,
    /// Node of the workflow.
    pub node: String,
    /// Its role.
    pub role: String,
    /// Its stage.
    pub stage: String,
    /// Mean over questions of the share of gold paragraphs in the pack.
    pub evidence_recall: f64,
    /// Mean over questions with sentence labels of the share of gold sentences in the pack
    /// (a sentence counts if its paragraph is in the pack and, when the item was cut, the cut
    /// text still contains it); `None` when the dataset has no sentence labels.
    pub sentence_recall: Option<f64>,
    /// Mean over questions of gold paragraphs in the pack / document items in the pack (0 for
    /// a pack with no documents).
    pub evidence_precision: f64,
    /// Share of questions whose pack holds every gold paragraph.
    pub all_gold: f64,
    /// Mean tokens of the pack (what the prompt's context costs).
    pub mean_tokens: f64,
    /// `mean_tokens` / mean tokens of the full-context reference (every paragraph).
    pub token_share: f64,
    /// Mean items (of any kind) in the pack.
    pub mean_items: f64,
    /// Questions evaluated.
    pub questions: usize,
    /// Gold paragraphs evaluated (the recall denominator).
    pub gold_total: usize,
    /// What happened to the gold paragraphs left out: `not_candidate` (never retrieved),
    /// the manifest's rejection reasons (`budget`, `low_score`, `redundant`, `oversized`, ...),
    /// and `cut` (selected but truncated: counted here once, still in recall).
    pub gold_fate: BTreeMap<String, usize>,
    /// Mean rank (1 = best) of the gold paragraphs among the question's document candidates
    /// by the manifest's total score; `None` for policies that do not score (`full`,
    /// `recency`, `bm25`).
    pub gold_rank: Option<f64>,
    /// The same for the gold paragraphs left out of the pack.
    pub missed_gold_rank: Option<f64>,
}

/// The full-context reference of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FullReference {
    /// Node.
    pub node: String,
    /// Mean tokens of the `full` pack at the reference budget.
    pub mean_tokens: f64,
    /// Its evidence recall (1.0 unless the reference budget cut something).
    pub evidence_recall: f64,
}

/// Wall-clock time of the evaluation (not part of the results' determinism).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Loading the dataset, in seconds.
    pub load_secs: f64,
    /// Writing items into the store.
    pub index_secs: f64,
    /// Routing (every policy and budget) and the baseline.
    pub route_secs: f64,
    /// Everything.
    pub total_secs: f64,
    /// Route calls made.
    pub routes: u64,
}

/// The result of a routing-only evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// What was run.
    pub config: ReportConfig,
    /// Full-context reference per node.
    pub full_reference: Vec<FullReference>,
    /// One row per (node, budget, policy), in that order; the BM25 baseline follows the
    /// policies of each (node, budget).
    pub results: Vec<PolicyResult>,
    /// How long it took.
    pub timing: Timing,
}

impl EvalReport {
    /// The row of a (policy, budget spec, node), if any.
    pub fn result(&self, policy: &str, budget: &BudgetSpec, node: &str) -> Option<&PolicyResult> {
        self.results
            .iter()
            .find(|r| r.policy == policy && &r.budget_spec == budget && r.node == node)
    }

    /// The report as a Markdown table (one table, rows in report order).
    pub fn to_markdown(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Routing-only evaluation: {} ({} of {} questions)\n",
            c.dataset, c.count, c.file_count
        );
        let _ = writeln!(
            out,
            "file `{}`, workflow `{}`, embedder `{}`, full-context reference budget {}",
            c.file,
            c.workflow,
            serde_json::to_string(&c.embedder).unwrap_or_default(),
            c.full_budget
        );
        for f in &self.full_reference {
            let _ = writeln!(
                out,
                "- full context for `{}`: {:.1} tokens (recall {:.3})",
                f.node, f.mean_tokens, f.evidence_recall
            );
        }
        out.push('\n');
        out.push_str(
            "| node | budget | policy | recall | all gold | sent. recall | precision | tokens | token share | items | gold rank (missed) | gold missed (why) |\n",
        );
        out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.results {
            let budget = match r.budget_spec {
                BudgetSpec::Role => format!("{} (role)", r.budget),
                BudgetSpec::Tokens(_) => r.budget.to_string(),
            };
            let sentence = r
                .sentence_recall
                .map_or_else(|| "–".to_owned(), |s| format!("{s:.3}"));
            let fate = r
                .gold_fate
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let rank = match (r.gold_rank, r.missed_gold_rank) {
                (Some(a), Some(m)) => format!("{a:.2} ({m:.2})"),
                (Some(a), None) => format!("{a:.2}"),
                _ => "–".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.3} | {} | {:.3} | {:.1} | {:.3} | {:.2} | {} | {} |",
                r.node,
                budget,
                r.policy,
                r.evidence_recall,
                r.all_gold,
                sentence,
                r.evidence_precision,
                r.mean_tokens,
                r.token_share,
                r.mean_items,
                rank,
                fate
            );
        }
        let t = &self.timing;
        let _ = writeln!(
            out,
            "\n{} routes in {:.1} s (load {:.2} s, index {:.2} s, route {:.2} s)",
            t.routes, t.total_secs, t.load_secs, t.index_secs, t.route_secs
        );
        out
    }
}
