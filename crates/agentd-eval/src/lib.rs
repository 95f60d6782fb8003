//! agentd's evaluation.
//!
//! - [`datasets`]: loaders for HotpotQA (distractor), MuSiQue (answerable) and 2WikiMultihopQA
//!   in their original schemas (JSON arrays or JSON lines), normalised into [`Question`]s.
//! - [`routing`]: the routing-only evaluation: each question's paragraphs in a store, the
//!   workflow's answerer (or any node) routed under each policy at each budget, evidence
//!   recall, precision and token share against the full context, and a BM25 baseline at equal
//!   tokens ([`run_routing_eval`]).
//! - [`report`]: [`EvalReport`] (serde) and its Markdown table.

#![warn(missing_docs)]

pub mod datasets;
pub mod report;
pub mod routing;

pub use datasets::{Dataset, DatasetError, DatasetKind, Paragraph, Question};
pub use report::{EvalReport, FullReference, PolicyResult, ReportConfig, Timing};
pub use routing::{BudgetSpec, EvalError, PolicySpec, RoutingEvalConfig, run_routing_eval};
