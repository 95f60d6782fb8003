//! A run's state as the fold of its events: where it is (round, finished nodes), what it
//! produced (item references) and what it used. The orchestrator keeps one up to date as it
//! emits events; after a restart the same fold over the journal gives the checkpoint to resume
//! from, so the two can never disagree.

use std::sync::Arc;

use agentd_memory::ItemId;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, RunRecord};
use crate::usage::{RunUsage, UsageTotals};

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

/// A node that finished in a round: its checkpoint, with the items it produced (by
/// reference, shared with the `node_finished` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The round.
    pub round: u32,
    /// The node.
    pub node: Arc<str>,
    /// Its role.
    pub role: Arc<str>,
    /// The items it produced (written or merged into).
    pub items: Arc<[ItemId]>,
    /// What the node used (all its attempts).
    pub usage: UsageTotals,
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
    /// The checkpoints: every node that finished, with what it produced, in the order they
    /// finished (so by round: rounds only move forward). See [`RunState::is_finished`].
    pub checkpoints: Vec<Checkpoint>,
    /// Rounds whose stop condition held.
    pub stopped_at: Option<u32>,
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
            checkpoints: Vec::new(),
            stopped_at: None,
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
            } => match self.checkpoint_mut(*round, node) {
                // Recorded twice (cannot happen in one journal; kept idempotent): the
                // items are replaced, the usage counted once.
                Some(c) => c.items = Arc::clone(items),
                None => self.checkpoints.push(Checkpoint {
                    round: *round,
                    node: Arc::clone(node),
                    role: Arc::clone(role),
                    items: Arc::clone(items),
                    usage: *usage,
                }),
            },
            EventKind::CheckpointVoided { node, round, .. } => {
                // Its usage goes with it (the calls stay in the journal as `llm_call` events).
                self.checkpoints
                    .retain(|c| !(c.round == *round && *c.node == **node));
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
        self.in_round(round).any(|c| *c.node == *node)
    }

    /// The checkpoints of one round, newest first.
    pub fn in_round(&self, round: u32) -> impl Iterator<Item = &Checkpoint> {
        // Rounds only move forward, so the round's checkpoints are at the end of those up to
        // it: scan back over the later rounds, then stop at the first earlier one.
        self.checkpoints
            .iter()
            .rev()
            .skip_while(move |c| c.round > round)
            .take_while(move |c| c.round == round)
    }

    /// Usage so far, per node, role and round, and in all (summed over the checkpoints: the
    /// node's hot path only appends a checkpoint).
    pub fn usage(&self) -> RunUsage {
        let mut usage = RunUsage::default();
        for c in &self.checkpoints {
            usage.record_node(&c.node, &c.role, c.round, &c.usage);
        }
        usage
    }

    /// Every item the run produced, in the order the nodes finished.
    pub fn all_items(&self) -> impl Iterator<Item = &ItemId> {
        self.checkpoints.iter().flat_map(|c| c.items.iter())
    }

    fn checkpoint_mut(&mut self, round: u32, node: &str) -> Option<&mut Checkpoint> {
        self.checkpoints
            .iter_mut()
            .rev()
            .skip_while(|c| c.round > round)
            .take_while(|c| c.round == round)
            .find(|c| *c.node == *node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageTotals;

    fn finished(seq: u64, round: u32, node: &str, items: &[ItemId]) -> Event {
        Event {
            run: "r".into(),
            seq,
            at_ms: seq,
            kind: EventKind::NodeFinished {
                node: node.into(),
                role: "role".into(),
                round,
                items: items.into(),
                usage: UsageTotals {
                    calls: 1,
                    ..UsageTotals::default()
                },
            },
        }
    }

    #[test]
    fn a_voided_checkpoint_no_longer_counts_until_the_node_finishes_again() {
        let ids: Vec<ItemId> = (0..3).map(|_| ItemId::new_v7()).collect();
        let mut state = RunState::new("r");
        state.apply(&finished(1, 1, "plan", &ids[..1]));
        state.apply(&finished(2, 1, "research", &ids[1..2]));
        state.apply(&Event {
            run: "r".into(),
            seq: 3,
            at_ms: 3,
            kind: EventKind::CheckpointVoided {
                node: "plan".into(),
                round: 1,
                missing: ids[..1].to_vec(),
            },
        });
        assert!(!state.is_finished(1, "plan"));
        assert!(state.is_finished(1, "research"));
        assert_eq!(state.usage().total.calls, 1);
        state.apply(&finished(4, 1, "plan", &ids[2..3]));
        assert!(state.is_finished(1, "plan"));
        let plan: Vec<ItemId> = state
            .in_round(1)
            .filter(|c| &*c.node == "plan")
            .flat_map(|c| c.items.iter().copied())
            .collect();
        assert_eq!(plan, ids[2..3]);
    }

    #[test]
    fn checkpoints_answer_by_round_and_count_a_node_once() {
        let ids: Vec<ItemId> = (0..4).map(|_| ItemId::new_v7()).collect();
        let mut state = RunState::new("r");
        state.apply(&finished(1, 1, "plan", &ids[..1]));
        state.apply(&finished(2, 1, "answer", &ids[1..2]));
        state.apply(&finished(3, 2, "plan", &ids[2..3]));
        // The same checkpoint again: its items are replaced, its usage not counted twice.
        state.apply(&finished(4, 2, "plan", &ids[3..4]));
        assert!(state.is_finished(1, "plan") && state.is_finished(1, "answer"));
        assert!(state.is_finished(2, "plan") && !state.is_finished(2, "answer"));
        assert!(!state.is_finished(3, "plan"));
        let round = |r: u32| -> Vec<ItemId> {
            state
                .in_round(r)
                .flat_map(|c| c.items.iter().copied())
                .collect()
        };
        assert_eq!(round(1), vec![ids[1], ids[0]]);
        assert_eq!(round(2), vec![ids[3]]);
        assert!(round(3).is_empty());
        let usage = state.usage();
        assert_eq!(usage.total.calls, 3);
        assert_eq!(
            (usage.by_node["plan"].calls, usage.by_round[&2].calls),
            (2, 1)
        );
        assert_eq!(state.all_items().count(), 3);
        assert_eq!(state.last_seq, 4);
    }
}
