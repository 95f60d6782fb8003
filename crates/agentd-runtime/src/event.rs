//! Typed run events: what happened in a run, in order. Events are persisted in the journal (the
//! `node_finished` event is the node's checkpoint), kept per run for late subscribers, and
//! published on a broadcast channel for live progress, the daemon's event streams and tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentd_llm::Usage;
use agentd_memory::ItemId;
use agentd_router::Manifest;
use serde::{Deserialize, Serialize};

use crate::usage::UsageTotals;

/// One event of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The run.
    pub run: Arc<str>,
    /// Position in the run's event sequence, from 1 (resumable streams use it).
    pub seq: u64,
    /// When it happened (ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A run started (or, with `resumed`, picked up again after a restart).
    RunStarted {
        /// Everything needed to run (and resume) it.
        spec: Box<RunRecord>,
    },
    /// A run interrupted by a crash or shutdown was picked up again.
    RunResumed {
        /// The round it continues in.
        round: u32,
    },
    /// A round began.
    RoundStarted {
        /// The round, from 1.
        round: u32,
    },
    /// A node began an attempt.
    NodeStarted {
        /// Node name.
        node: Arc<str>,
        /// Its role.
        role: Arc<str>,
        /// Round.
        round: u32,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// The router chose a node's context.
    ContextRouted {
        /// Node name.
        node: Arc<str>,
        /// Round.
        round: u32,
        /// Namespaces read.
        namespaces: Vec<String>,
        /// Memory as of this sequence number (replay routes over the same memory).
        as_of_seq: u64,
        /// Every candidate considered, its scores, and why it was selected or not.
        manifest: Arc<Manifest>,
    },
    /// One LLM call of a node.
    LlmCall {
        /// Node name.
        node: Arc<str>,
        /// Its role.
        role: Arc<str>,
        /// Round.
        round: u32,
        /// Provider.
        provider: String,
        /// Model.
        model: String,
        /// Tokens.
        usage: Usage,
        /// Whether the usage was counted locally (the server reported none).
        usage_estimated: bool,
        /// HTTP attempts.
        attempts: u32,
        /// Wall time in ms.
        latency_ms: f64,
        /// Cost in USD from the price table.
        cost_usd: f64,
    },
    /// A node's output was written to memory.
    ItemsWritten {
        /// Node name.
        node: Arc<str>,
        /// Round.
        round: u32,
        /// New items.
        written: Vec<ItemId>,
        /// Existing items the output duplicated (not written again).
        merged: Vec<ItemId>,
        /// How the reply parsed: `json`, `repaired: ...`, `raw_text`, or `rust` (a Rust agent).
        parse: String,
    },
    /// A node attempt failed.
    NodeFailed {
        /// Node name.
        node: Arc<str>,
        /// Round.
        round: u32,
        /// Attempt, from 1.
        attempt: u32,
        /// Why.
        error: String,
        /// Whether another attempt follows.
        will_retry: bool,
    },
    /// A node finished; this is its checkpoint.
    NodeFinished {
        /// Node name.
        node: Arc<str>,
        /// Its role.
        role: Arc<str>,
        /// Round.
        round: u32,
        /// Items it produced (written or merged into), by reference.
        items: Arc<[ItemId]>,
        /// Usage of the node (all attempts).
        usage: UsageTotals,
    },
    /// A resume found a checkpoint whose items are not all in the store (a crash after the
    /// journal synced the checkpoint and before the store synced the items): the checkpoint no
    /// longer counts, and the node runs again.
    CheckpointVoided {
        /// Node name.
        node: Arc<str>,
        /// Round.
        round: u32,
        /// The checkpoint's items the store does not hold.
        missing: Vec<ItemId>,
    },
    /// A round ended.
    RoundFinished {
        /// Round.
        round: u32,
        /// Whether the stop condition holds.
        stop: bool,
    },
    /// The run finished.
    RunFinished {
        /// The final answer item, if any.
        answer: Option<ItemId>,
    },
    /// The run failed.
    RunFailed {
        /// Why.
        error: String,
    },
    /// The run was cancelled.
    RunCancelled,
    /// The run was deleted (a tombstone): its memory is gone and a restart forgets the run.
    RunDeleted,
}

impl EventKind {
    /// The event's type name (`run_started`, `node_finished`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::RunResumed { .. } => "run_resumed",
            EventKind::RoundStarted { .. } => "round_started",
            EventKind::NodeStarted { .. } => "node_started",
            EventKind::ContextRouted { .. } => "context_routed",
            EventKind::LlmCall { .. } => "llm_call",
            EventKind::ItemsWritten { .. } => "items_written",
            EventKind::NodeFailed { .. } => "node_failed",
            EventKind::NodeFinished { .. } => "node_finished",
            EventKind::CheckpointVoided { .. } => "checkpoint_voided",
            EventKind::RoundFinished { .. } => "round_finished",
            EventKind::RunFinished { .. } => "run_finished",
            EventKind::RunFailed { .. } => "run_failed",
            EventKind::RunCancelled => "run_cancelled",
            EventKind::RunDeleted => "run_deleted",
        }
    }

    /// Whether the run ends with this event.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::RunFinished { .. } | EventKind::RunFailed { .. } | EventKind::RunCancelled
        )
    }
}

/// What a run was started with: enough to resume it after a restart and to replay it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file, if it came from one.
    pub workflow_path: Option<String>,
    /// The workflow with its roles resolved (JSON of `agentd_workflow::Workflow`).
    /// Kept as its JSON text: a parsed tree would cost several times the memory for every run
    /// a daemon knows, and it is only read back to resume or replay.
    #[serde(deserialize_with = "raw_json")]
    pub workflow_spec: Box<serde_json::value::RawValue>,
    /// The run's input (the task).
    pub input: String,
    /// The run's own namespace (its task, plans, evidence, answers).
    pub namespace: String,
    /// Every namespace its agents read (the run's own first, then document collections).
    pub read_namespaces: Vec<String>,
    /// The routing policy in force.
    pub policy: agentd_router::Policy,
    /// The run-level context budget, if any.
    pub run_budget: Option<u64>,
    /// The task item.
    pub task_item: Option<ItemId>,
    /// Labels given with the request (the daemon records the owning tenant here), so they
    /// survive restarts. Empty in journals written before labels existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Reads a JSON value as its text. Events are read through serde's buffering (a flattened,
/// internally tagged enum), which cannot hand a `RawValue` its source text: parse the value,
/// then print it back.
fn raw_json<'de, D>(deserializer: D) -> Result<Box<serde_json::value::RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    serde_json::value::to_raw_value(&value).map_err(serde::de::Error::custom)
}
