//! agentd's evaluation.
//!
//! - [`datasets`]: loaders for HotpotQA (distractor), MuSiQue (answerable) and 2WikiMultihopQA
//!   in their original schemas (JSON arrays or JSON lines), normalised into [`Question`]s.
//! - [`routing`]: the routing-only evaluation: each question's paragraphs in a store, the
//!   workflow's answerer (or any node) routed under each policy at each budget, evidence
//!   recall, precision and token share against the full context, and a BM25 baseline at equal
//!   tokens ([`run_routing_eval`]).
//! - [`e2e`]: the end-to-end evaluation: the whole workflow answers each question under each
//!   policy with an LLM ([`run_e2e_eval`]); exact match, F1, AQS, tokens per role and round,
//!   calls and wall time.
//! - [`qa`]: exact match and F1 with SQuAD's normalisation; [`aqs`]: the Answer Quality
//!   Score (correctness, grounding, completeness, optional LLM judge).
//! - [`report`]: [`EvalReport`] (serde) and its Markdown table; [`plot`]: the SVG of recall
//!   against tokens of a budget sweep.
//!
//! The definitions are in `docs/eval.md`; the dev-split figures in `docs/results.md`.

#![warn(missing_docs)]

pub mod aqs;
pub mod datasets;
pub mod e2e;
pub mod plot;
pub mod qa;
pub mod report;
pub mod routing;

pub use aqs::{AqsScore, AqsWeights};
pub use datasets::{Dataset, DatasetError, DatasetKind, Paragraph, Question};
pub use e2e::{E2eConfig, E2ePolicyResult, E2eReport, Endpoint, QuestionRecord, run_e2e_eval};
pub use report::{EvalReport, FullReference, PolicyResult, ReportConfig, Timing};
pub use routing::{BudgetSpec, EvalError, PolicySpec, RoutingEvalConfig, run_routing_eval};
