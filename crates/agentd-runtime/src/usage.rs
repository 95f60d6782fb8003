//! Usage accounting: tokens, calls, cost and time per call, node, role, round and run.

use std::collections::BTreeMap;

use agentd_llm::Usage;
use serde::{Deserialize, Serialize};

/// Totals of some slice of a run (one node, one role, one round, the whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Prompt tokens the LLM read.
    pub prompt_tokens: u64,
    /// Completion tokens it wrote.
    pub completion_tokens: u64,
    /// LLM calls.
    pub calls: u64,
    /// Cost in USD (from the provider's price table; 0 without one).
    pub cost_usd: f64,
    /// Wall time in ms (node execution, including routing, LLM and write-back).
    pub wall_ms: f64,
    /// Context tokens the router packed.
    pub context_tokens: u64,
    /// Node executions (attempts that finished).
    pub nodes: u64,
}

impl UsageTotals {
    /// Adds one LLM call.
    pub fn add_call(&mut self, usage: &Usage, cost_usd: f64) {
        self.prompt_tokens += u64::from(usage.prompt_tokens);
        self.completion_tokens += u64::from(usage.completion_tokens);
        self.calls += 1;
        self.cost_usd += cost_usd;
    }

    /// Adds another total.
    pub fn merge(&mut self, other: &UsageTotals) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.calls += other.calls;
        self.cost_usd += other.cost_usd;
        self.wall_ms += other.wall_ms;
        self.context_tokens += other.context_tokens;
        self.nodes += other.nodes;
    }

    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// A run's usage, broken down.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUsage {
    /// The whole run.
    pub total: UsageTotals,
    /// Per node.
    pub by_node: BTreeMap<String, UsageTotals>,
    /// Per role.
    pub by_role: BTreeMap<String, UsageTotals>,
    /// Per round.
    pub by_round: BTreeMap<u32, UsageTotals>,
}

impl RunUsage {
    /// Records a finished node.
    pub fn record_node(&mut self, node: &str, role: &str, round: u32, usage: &UsageTotals) {
        self.total.merge(usage);
        merge_into(&mut self.by_node, node, usage);
        merge_into(&mut self.by_role, role, usage);
        self.by_round.entry(round).or_default().merge(usage);
    }

    /// A plain-text table of tokens per role (for the terminal).
    pub fn role_table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>6} {:>9} {:>9} {:>11} {:>9}\n",
            "role", "calls", "context", "prompt", "completion", "wall ms"
        );
        let mut row = |name: &str, u: &UsageTotals| {
            out.push_str(&format!(
                "{:<14} {:>6} {:>9} {:>9} {:>11} {:>9.0}\n",
                name, u.calls, u.context_tokens, u.prompt_tokens, u.completion_tokens, u.wall_ms
            ));
        };
        for (role, u) in &self.by_role {
            row(role, u);
        }
        row("total", &self.total);
        out
    }
}

/// Adds `usage` to `map[key]`, allocating the key only the first time it is seen (a run
/// records every node, usually under names it has seen before).
fn merge_into(map: &mut BTreeMap<String, UsageTotals>, key: &str, usage: &UsageTotals) {
    match map.get_mut(key) {
        Some(totals) => totals.merge(usage),
        None => {
            map.insert(key.to_owned(), *usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_usage_rolls_up_by_node_role_round_and_run() {
        let mut a = UsageTotals::default();
        a.add_call(
            &Usage {
                prompt_tokens: 100,
                completion_tokens: 20,
            },
            0.5,
        );
        a.context_tokens = 80;
        let mut run = RunUsage::default();
        run.record_node("plan", "planner", 1, &a);
        run.record_node("answer", "answerer", 1, &a);
        run.record_node("answer", "answerer", 2, &a);
        assert_eq!(run.total.calls, 3);
        assert_eq!(run.total.total_tokens(), 360);
        assert_eq!(run.by_role["answerer"].prompt_tokens, 200);
        assert_eq!(run.by_round[&1].calls, 2);
        assert_eq!(run.by_node["plan"].context_tokens, 80);
        assert!((run.total.cost_usd - 1.5).abs() < 1e-9);
        assert!(run.role_table().contains("answerer"));
    }
}
