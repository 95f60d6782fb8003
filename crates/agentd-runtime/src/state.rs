//! A run's state as the fold of its events: where it is (round, finished nodes), what it
//! produced (item references) and what it used. The orchestrator keeps one up to date as it
//! emits events; after a restart the same fold over the journal gives the checkpoint to resume
//! from, so the two can never disagree.

use std::collections::{BTreeMap, BTreeSet};

use agentd_memory::ItemId;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, RunRecord};
use crate::usage::RunUsage;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, not finished (after a restart: interrupted, resumable).
    Running,
    /// Finished normally.
    Finished,
    /// Failed with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl RunStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// A run's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// Run id.
    pub id: String,
    /// What it was started with.
    pub record: Option<RunRecord>,
    /// Status.
    pub status: RunStatus,
    /// The current (or last) round, from 1; 0 before the first.
    pub round: u32,
    /// Finished (round, node) pairs: the checkpoints.
    pub finished: BTreeSet<(u32, String)>,
    /// Items produced per (round, node).
    pub produced: BTreeMap<(u32, String), Vec<ItemId>>,
    /// Rounds whose stop condition held.
    pub stopped_at: Option<u32>,
    /// Usage so far.
    pub usage: RunUsage,
    /// The final answer, once finished.
    pub answer: Option<ItemId>,
    /// The error, once failed.
    pub error: Option<String>,
    /// Sequence number of the last event.
    pub last_seq: u64,
    /// Start time (ms since the epoch).
    pub started_ms: u64,
    /// Time of the last event (ms since the epoch).
    pub updated_ms: u64,
}

impl RunState {
    /// The state of a run before any event.
    pub fn new(id: impl Into<String>) -> Self {
        RunState {
            id: id.into(),
            record: None,
            status: RunStatus::Running,
            round: 0,
            finished: BTreeSet::new(),
            produced: BTreeMap::new(),
            stopped_at: None,
            usage: RunUsage::default(),
            answer: None,
            error: None,
            last_seq: 0,
            started_ms: 0,
            updated_ms: 0,
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &Event) {
        self.last_seq = event.seq;
        self.updated_ms = event.at_ms;
        match &event.kind {
            EventKind::RunStarted { spec } => {
                self.record = Some((**spec).clone());
                self.started_ms = event.at_ms;
            }
            EventKind::RunResumed { .. } => self.status = RunStatus::Running,
            EventKind::RoundStarted { round } => self.round = *round,
            EventKind::NodeFinished {
                node,
                role,
                round,
                items,
                usage,
            } => {
                if self.finished.insert((*round, node.clone())) {
                    self.usage.record_node(node, role, *round, usage);
                }
                self.produced.insert((*round, node.clone()), items.clone());
            }
            EventKind::RoundFinished { round, stop } => {
                if *stop {
                    self.stopped_at = Some(*round);
                }
            }
            EventKind::RunFinished { answer } => {
                self.status = RunStatus::Finished;
                self.answer = *answer;
            }
            EventKind::RunFailed { error } => {
                self.status = RunStatus::Failed;
                self.error = Some(error.clone());
            }
            EventKind::RunCancelled => self.status = RunStatus::Cancelled,
            EventKind::NodeStarted { .. }
            | EventKind::ContextRouted { .. }
            | EventKind::LlmCall { .. }
            | EventKind::ItemsWritten { .. }
            | EventKind::NodeFailed { .. }
            // A deleted run is dropped from the runtime; its status is whatever it was.
            | EventKind::RunDeleted => {}
        }
    }

    /// Whether the node finished in the round (its checkpoint exists).
    pub fn is_finished(&self, round: u32, node: &str) -> bool {
        self.finished.contains(&(round, node.to_owned()))
    }

    /// Every item the run produced, in (round, node) order.
    pub fn all_items(&self) -> impl Iterator<Item = &ItemId> {
        self.produced.values().flatten()
    }
}
