//! Replay: recompute the context packs of a recorded run under another policy, over memory as it
//! was at each call (`as_of_seq`), and compare tokens and selections. No LLM is called.

use std::sync::Arc;

use agentd_memory::ItemId;
use agentd_router::{Policy, RouteRequest, Router};
use agentd_workflow::Workflow;
use serde::Serialize;

use crate::RuntimeError;
use crate::event::{Event, EventKind};

/// One recomputed call.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayCall {
    /// Node.
    pub node: String,
    /// Role.
    pub role: String,
    /// Round.
    pub round: u32,
    /// Tokens of the recorded pack.
    pub recorded_tokens: u32,
    /// Tokens of the recomputed pack.
    pub replayed_tokens: u32,
    /// Items selected in both.
    pub common: usize,
    /// Items only the recorded pack selected.
    pub only_recorded: Vec<ItemId>,
    /// Items only the recomputed pack selected.
    pub only_replayed: Vec<ItemId>,
}

/// The comparison of a run's packs under two policies.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// Run id.
    pub run: String,
    /// The policy the run used.
    pub recorded_policy: String,
    /// The policy of the replay.
    pub replayed_policy: String,
    /// Per call, in run order.
    pub calls: Vec<ReplayCall>,
    /// Sum of recorded pack tokens.
    pub recorded_tokens: u64,
    /// Sum of recomputed pack tokens.
    pub replayed_tokens: u64,
}

impl ReplayReport {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
            "node", "round", self.recorded_policy, self.replayed_policy, "common", "-only", "+only"
        );
        for c in &self.calls {
            out.push_str(&format!(
                "{:<12} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
                c.node,
                c.round,
                c.recorded_tokens,
                c.replayed_tokens,
                c.common,
                c.only_recorded.len(),
                c.only_replayed.len()
            ));
        }
        let share = if self.recorded_tokens == 0 {
            0.0
        } else {
            self.replayed_tokens as f64 / self.recorded_tokens as f64
        };
        out.push_str(&format!(
            "total tokens: {} ({}) vs {} ({}): {:.2}x\n",
            self.recorded_tokens,
            self.recorded_policy,
            self.replayed_tokens,
            self.replayed_policy,
            share
        ));
        out
    }
}

/// Recomputes every `context_routed` event of `events` under `policy`.
pub fn replay(
    router: &Router,
    run: &str,
    events: &[Arc<Event>],
    policy: Policy,
) -> Result<ReplayReport, RuntimeError> {
    let record = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::RunStarted { spec } => Some(spec),
            _ => None,
        })
        .ok_or_else(|| RuntimeError::UnknownRun(run.to_owned()))?;
    let workflow: Workflow = serde_json::from_str(record.workflow_spec.get())
        .map_err(|e| RuntimeError::Internal(format!("run `{run}`'s workflow: {e}")))?;
    let mut report = ReplayReport {
        run: run.to_owned(),
        recorded_policy: record.policy.name().to_owned(),
        replayed_policy: policy.name().to_owned(),
        calls: Vec::new(),
        recorded_tokens: 0,
        replayed_tokens: 0,
    };
    for event in events {
        let EventKind::ContextRouted {
            node,
            round,
            namespaces,
            as_of_seq,
            manifest,
        } = &event.kind
        else {
            continue;
        };
        let Some(spec) = workflow.node(node) else {
            continue;
        };
        let role = workflow.role_of(spec);
        let req = RouteRequest {
            namespaces,
            role: &role.profile,
            stage: workflow.stage_of(spec),
            query: &manifest.query,
            query_vector: None,
            round: *round,
            budget: manifest.budget,
            policy,
            weights: &workflow.router.weights,
            as_of_seq: Some(*as_of_seq),
        };
        let pack = router.route(&req)?;
        let recorded: Vec<ItemId> = selected(&manifest.entries);
        let replayed: Vec<ItemId> = selected(&pack.manifest.entries);
        let common = recorded.iter().filter(|id| replayed.contains(id)).count();
        report.recorded_tokens += u64::from(manifest.tokens_used);
        report.replayed_tokens += u64::from(pack.tokens_used);
        report.calls.push(ReplayCall {
            node: node.to_string(),
            role: role.name.clone(),
            round: *round,
            recorded_tokens: manifest.tokens_used,
            replayed_tokens: pack.tokens_used,
            common,
            only_recorded: recorded
                .iter()
                .filter(|id| !replayed.contains(id))
                .copied()
                .collect(),
            only_replayed: replayed
                .iter()
                .filter(|id| !recorded.contains(id))
                .copied()
                .collect(),
        });
    }
    Ok(report)
}

fn selected(entries: &[agentd_router::ManifestEntry]) -> Vec<ItemId> {
    entries
        .iter()
        .filter(|e| e.decision.is_selected())
        .map(|e| e.id)
        .collect()
}
