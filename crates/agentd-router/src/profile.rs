//! What the router is told about the reader: the role, the stage, the scoring weights and the
//! budgets. These come from role and workflow TOML files (the runtime parses them); every field
//! has a documented default so a minimal file works.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use agentd_memory::Kind;
use serde::{Deserialize, Serialize};

/// A role as the router sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleProfile {
    /// Role name, matched against items' `readers` and producers.
    pub name: String,
    /// What the role does, in prose; embedded to score items by role relevance.
    #[serde(default)]
    pub description: String,
    /// Words that mark items this role cares about.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Kinds the role reads (empty: every kind). Other kinds are rejected as `kind_not_read`.
    #[serde(default)]
    pub reads: Vec<Kind>,
    /// Token budget of one call of this role (before the stage multiplier).
    #[serde(default = "default_role_budget")]
    pub budget: u32,
    /// Affinity in `[0, 1]` of this role for items produced by another role (by producer role
    /// name); roles not listed get `default_affinity`.
    #[serde(default)]
    pub affinity: BTreeMap<String, f32>,
    /// Affinity for producers not listed in `affinity`.
    #[serde(default = "default_affinity")]
    pub default_affinity: f32,
}

fn default_role_budget() -> u32 {
    2048
}

fn default_affinity() -> f32 {
    0.5
}

impl RoleProfile {
    /// A role with defaults.
    pub fn new(name: impl Into<String>) -> Self {
        RoleProfile {
            name: name.into(),
            description: String::new(),
            keywords: Vec::new(),
            reads: Vec::new(),
            budget: default_role_budget(),
            affinity: BTreeMap::new(),
            default_affinity: default_affinity(),
        }
    }

    /// The text embedded as the role's profile vector.
    pub fn profile_text(&self) -> String {
        let mut text = self.description.clone();
        for k in &self.keywords {
            text.push(' ');
            text.push_str(k);
        }
        text
    }

    /// Whether the role reads items of `kind`.
    pub fn reads_kind(&self, kind: &Kind) -> bool {
        self.reads.is_empty() || self.reads.contains(kind)
    }

    /// Affinity for items produced by `producer_role`.
    pub fn affinity_for(&self, producer_role: &str) -> f32 {
        self.affinity
            .get(producer_role)
            .copied()
            .unwrap_or(self.default_affinity)
            .clamp(0.0, 1.0)
    }
}

/// A stage of the task as the router sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageProfile {
    /// Stage name.
    pub name: String,
    /// Priority in `[0, 1]` of each item kind at this stage.
    #[serde(default)]
    pub priorities: BTreeMap<Kind, f32>,
    /// Priority of kinds not listed.
    #[serde(default = "default_priority")]
    pub default_priority: f32,
    /// Multiplier applied to the role's budget at this stage.
    #[serde(default = "one")]
    pub budget_multiplier: f32,
}

fn default_priority() -> f32 {
    0.2
}

fn one() -> f32 {
    1.0
}

impl StageProfile {
    /// A stage with no priorities (every kind at the default priority).
    pub fn new(name: impl Into<String>) -> Self {
        StageProfile {
            name: name.into(),
            priorities: BTreeMap::new(),
            default_priority: default_priority(),
            budget_multiplier: 1.0,
        }
    }

    /// Sets the priority of a kind.
    pub fn priority(mut self, kind: Kind, priority: f32) -> Self {
        self.priorities.insert(kind, priority);
        self
    }

    /// The priority of `kind` at this stage.
    pub fn priority_of(&self, kind: &Kind) -> f32 {
        self.priorities
            .get(kind)
            .copied()
            .unwrap_or(self.default_priority)
            .clamp(0.0, 1.0)
    }
}

/// Weights of the scoring policy (see the crate docs for the formula).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Role relevance: similarity to the role profile and affinity to the producing role.
    pub role: f32,
    /// Stage priority of the item's kind.
    pub stage: f32,
    /// Query relevance: normalised BM25 and embedding similarity to the task text.
    pub query: f32,
    /// Recency, decaying by rounds.
    pub recency: f32,
    /// Importance: the writer's confidence.
    pub importance: f32,
    /// Bridge relevance: links from strong candidates (multi-hop evidence).
    pub bridge: f32,
    /// Redundancy penalty: times the highest similarity to an already selected item.
    pub redundancy: f32,
    /// Rounds after which recency halves.
    pub recency_half_life: f32,
    /// Items scoring below this are rejected as `low_score` even when they fit.
    pub min_score: f32,
    /// Items at least this similar to a selected item are rejected as `redundant`.
    pub duplicate_similarity: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            role: 0.15,
            stage: 0.15,
            query: 0.4,
            recency: 0.05,
            importance: 0.05,
            bridge: 0.2,
            redundancy: 0.3,
            recency_half_life: 2.0,
            min_score: 0.15,
            duplicate_similarity: 0.97,
        }
    }
}

/// The token budget shared by every call of one run.
#[derive(Debug)]
pub struct RunBudget {
    total: u64,
    used: AtomicU64,
}

impl RunBudget {
    /// A run budget of `total` tokens.
    pub fn new(total: u64) -> Self {
        RunBudget {
            total,
            used: AtomicU64::new(0),
        }
    }

    /// Tokens not yet used.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// Tokens used so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The total.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records tokens a call used.
    pub fn charge(&self, tokens: u64) {
        self.used.fetch_add(tokens, Ordering::AcqRel);
    }
}

/// The effective budget of one call: the role's budget times the stage multiplier, capped by
/// an explicit cap and by what is left of the run budget.
pub fn effective_budget(
    role: &RoleProfile,
    stage: &StageProfile,
    cap: Option<u32>,
    run: Option<&RunBudget>,
) -> u32 {
    let scaled = (role.budget as f64 * stage.budget_multiplier.max(0.0) as f64).floor();
    let mut budget = scaled.min(u32::MAX as f64) as u32;
    if let Some(cap) = cap {
        budget = budget.min(cap);
    }
    if let Some(run) = run {
        budget = budget.min(run.remaining().min(u32::MAX as u64) as u32);
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_combine_role_stage_cap_and_run() {
        let mut role = RoleProfile::new("answerer");
        role.budget = 1000;
        let mut stage = StageProfile::new("answer");
        stage.budget_multiplier = 1.5;
        assert_eq!(effective_budget(&role, &stage, None, None), 1500);
        assert_eq!(effective_budget(&role, &stage, Some(1200), None), 1200);
        let run = RunBudget::new(2000);
        run.charge(1500);
        assert_eq!(effective_budget(&role, &stage, None, Some(&run)), 500);
        run.charge(1000);
        assert_eq!(run.remaining(), 0);
        assert_eq!(effective_budget(&role, &stage, None, Some(&run)), 0);
    }

    #[test]
    fn profiles_parse_from_toml_like_json_with_defaults() {
        let role: RoleProfile = serde_json::from_value(serde_json::json!({
            "name": "answerer", "reads": ["evidence", "fact"], "affinity": {"researcher": 0.9}
        }))
        .unwrap();
        assert_eq!(role.budget, 2048);
        assert!(role.reads_kind(&Kind::Evidence) && !role.reads_kind(&Kind::Plan));
        assert_eq!(role.affinity_for("researcher"), 0.9);
        assert_eq!(role.affinity_for("planner"), 0.5);
        let bad =
            serde_json::from_value::<RoleProfile>(serde_json::json!({"name": "x", "typo": 1}));
        assert!(bad.is_err());
        let stage = StageProfile::new("answer").priority(Kind::Evidence, 0.9);
        assert_eq!(stage.priority_of(&Kind::Evidence), 0.9);
        assert_eq!(stage.priority_of(&Kind::Plan), 0.2);
    }
}
