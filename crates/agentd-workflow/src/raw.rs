//! The file formats as written: serde structs that keep the span of every value an error may
//! point at, reject unknown fields, and generate the JSON Schemas. Checking and conversion into
//! the typed specs happen in [`crate::role`] and [`crate::workflow`].
//!
//! Doc comments here become the descriptions in the JSON Schemas: they are user documentation.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::{OutputFormat, RoundRule};

/// An agentd role file (`agents/<name>.toml`): one agent profile.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentd role")]
pub(crate) struct RoleFile {
    /// The role's name. Optional: defaults to the file stem (or the `[roles.<name>]` key of an
    /// inline role); when given it must equal it.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// What the role does, in one or two sentences. Required, non-empty. The router embeds it
    /// (with `keywords`) to score items by relevance to the role.
    #[schemars(with = "String", length(min = 1))]
    pub description: Spanned<String>,
    /// Words that mark items this role cares about.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Item kinds the role reads. Empty or omitted: every kind. A kind is a built-in (task,
    /// plan, subquestion, evidence, document, fact, hypothesis, answer, critique, tool_result,
    /// note) or any other lowercase identifier (a custom kind).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub reads: Vec<Spanned<String>>,
    /// Item kinds the role may write. Required, non-empty.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub writes: Spanned<Vec<Spanned<String>>>,
    /// Roles allowed to read what this role writes. Omitted: every role.
    #[schemars(with = "Option<Vec<String>>")]
    pub readers: Option<Spanned<Vec<Spanned<String>>>>,
    /// Context tokens per call (before the stage's budget multiplier). Default 2048.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub budget: Option<Spanned<u32>>,
    /// Affinity in [0, 1] for items produced by other roles, by role name.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, f32>")]
    pub affinity: BTreeMap<Spanned<String>, Spanned<f32>>,
    /// Affinity in [0, 1] for producers not listed in `affinity`. Default 0.5.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub default_affinity: Option<Spanned<f32>>,
    /// Model settings that override the workflow's `[model]` for this role.
    #[serde(default)]
    pub model: RoleModelSection,
    /// The prompt (required for roles an LLM plays; a role played by a Rust agent may omit it).
    #[schemars(with = "Option<PromptSection>")]
    pub prompt: Option<Spanned<PromptSection>>,
    /// How the reply becomes memory items.
    #[serde(default)]
    pub output: OutputSection,
}

/// Model settings of a role; every field is optional and overrides the workflow's `[model]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleModelSection {
    /// Model name, as the LLM server knows it.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Sampling temperature, in [0, 2].
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 2.0))]
    pub temperature: Option<Spanned<f32>>,
    /// Most tokens of one reply.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_tokens: Option<Spanned<u32>>,
    /// Ask the server for JSON output.
    pub json: Option<bool>,
}

/// The prompt of a role.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromptSection {
    /// The system message. Required. May use the same placeholders as `template`.
    #[schemars(with = "String", length(min = 1))]
    pub system: Spanned<String>,
    /// The user message. Placeholders: {{task}}, {{query}}, {{context}} (required),
    /// {{role}}, {{stage}}, {{round}}, {{output_format}}. Default:
    /// "{{task}}\n\n{{context}}\n\n{{output_format}}".
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
}

/// How a role's reply becomes memory items.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputSection {
    /// `json`: the reply is `{"items": [...], "answer": {...}}`; `text`: the whole reply is one
    /// item of `text_kind`. Default `json`.
    #[schemars(with = "Option<OutputFormat>")]
    pub format: Option<Spanned<String>>,
    /// Kind of the item holding raw text (format `text`, or JSON that cannot be parsed).
    /// Must be `note` or one of `writes`. Default `note`.
    #[schemars(with = "Option<String>")]
    pub text_kind: Option<Spanned<String>>,
}

/// An agentd workflow file (`workflows/<name>.toml`): a graph of nodes, each running one role
/// at one stage, run for up to `max_rounds` rounds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "agentd workflow")]
pub(crate) struct WorkflowFile {
    /// The workflow itself.
    #[schemars(with = "WorkflowSection")]
    pub workflow: Spanned<WorkflowSection>,
    /// How context is routed to each node.
    #[serde(default)]
    pub router: RouterSection,
    /// Model defaults for every role.
    #[serde(default)]
    pub model: ModelSection,
    /// Stage profiles. Built-in: plan, gather, reason, answer, review. Declaring a built-in
    /// stage overrides the fields given.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, StageSection>")]
    pub stages: BTreeMap<Spanned<String>, Spanned<StageSection>>,
    /// Inline roles (same keys as a role file); they take precedence over the roles folder.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, RoleFile>")]
    pub roles: BTreeMap<Spanned<String>, Spanned<RoleFile>>,
    /// The nodes of the graph, by name (a name is an identifier: letters, digits, `_`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, NodeSection>")]
    pub nodes: BTreeMap<Spanned<String>, Spanned<NodeSection>>,
}

/// The `[workflow]` table.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkflowSection {
    /// The workflow's name. Required.
    #[schemars(with = "String", length(min = 1))]
    pub name: Spanned<String>,
    /// What the workflow does.
    #[serde(default)]
    pub description: String,
    /// Most rounds of one run; at least 1. Default 1.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_rounds: Option<Spanned<u32>>,
    /// The roles folder, relative to this file. Default "../agents".
    #[schemars(with = "Option<String>")]
    pub roles: Option<Spanned<String>>,
    /// Stop after a round in which a role wrote an item of `kind` with at least
    /// `min_confidence`. Without it the run does `max_rounds` rounds.
    #[schemars(with = "Option<StopWhenSection>")]
    pub stop_when: Option<Spanned<StopWhenSection>>,
}

/// The stop condition.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopWhenSection {
    /// The kind to wait for; some node's role must write it.
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// Least confidence, in [0, 1]. Default 0.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub min_confidence: Option<Spanned<f32>>,
}

/// The `[router]` table.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouterSection {
    /// Selection rule: `rcr` (role- and stage-aware routing, the default), `full` (every
    /// readable item), `static` (top-k by query relevance; k from `static_k`, default 8) or
    /// `recency` (newest first).
    #[schemars(
        with = "Option<String>",
        extend("pattern" = "^(rcr|full|static|recency|static:[0-9]+)$")
    )]
    pub policy: Option<Spanned<String>>,
    /// k of the `static` policy.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub static_k: Option<Spanned<u32>>,
    /// Context tokens for all calls of one run. Default: unlimited.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub run_budget: Option<Spanned<u64>>,
    /// Scoring weights; fields not given keep their defaults.
    #[serde(default)]
    pub weights: WeightsSection,
}

/// Scoring weights of the `rcr` policy (see agentd-router). Every field is optional.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightsSection {
    /// Role relevance, in [0, 1]. Default 0.15.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub role: Option<Spanned<f32>>,
    /// Stage priority of the item's kind, in [0, 1]. Default 0.15.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub stage: Option<Spanned<f32>>,
    /// Query relevance, in [0, 1]. Default 0.4.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub query: Option<Spanned<f32>>,
    /// Recency, in [0, 1]. Default 0.05.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub recency: Option<Spanned<f32>>,
    /// Importance (the writer's confidence), in [0, 1]. Default 0.05.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub importance: Option<Spanned<f32>>,
    /// Bridge relevance (multi-hop links), in [0, 1]. Default 0.2.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub bridge: Option<Spanned<f32>>,
    /// Redundancy penalty, in [0, 1]. Default 0.3.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub redundancy: Option<Spanned<f32>>,
    /// Rounds after which recency halves; above 0. Default 2.
    #[schemars(with = "Option<f32>")]
    pub recency_half_life: Option<Spanned<f32>>,
    /// Items scoring below this are rejected, in [0, 1]. Default 0.15.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub min_score: Option<Spanned<f32>>,
    /// Items at least this similar to a selected one are rejected, in [0, 1]. Default 0.97.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub duplicate_similarity: Option<Spanned<f32>>,
}

/// The `[model]` table: defaults for every role.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelSection {
    /// Model name, as the LLM server knows it. Default: the client's.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Sampling temperature, in [0, 2]. Default: the client's.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 2.0))]
    pub temperature: Option<Spanned<f32>>,
    /// Most tokens of one reply. Default: the client's.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_tokens: Option<Spanned<u32>>,
    /// Ask the server for JSON output. Default false.
    pub json: Option<bool>,
    /// Seconds one call may take; the default of nodes' `timeout_secs`. Default 120.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub timeout_secs: Option<Spanned<f64>>,
}

/// A stage profile: how much each item kind matters at this stage.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageSection {
    /// Priority in [0, 1] of each kind. Given: replaces the built-in priorities of the stage.
    #[schemars(with = "Option<BTreeMap<String, f32>>")]
    pub priorities: Option<BTreeMap<Spanned<String>, Spanned<f32>>>,
    /// Priority of kinds not listed, in [0, 1]. Default 0.2.
    #[schemars(with = "Option<f32>", range(min = 0.0, max = 1.0))]
    pub default_priority: Option<Spanned<f32>>,
    /// Multiplier of roles' budgets at this stage; above 0. Default 1.
    #[schemars(with = "Option<f32>")]
    pub budget_multiplier: Option<Spanned<f32>>,
}

/// A node: one role at one stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    /// The role: an inline `[roles.<name>]` or a file `<roles folder>/<name>.toml`.
    #[schemars(with = "String")]
    pub role: Spanned<String>,
    /// The stage: declared in `[stages]` or built-in (plan, gather, reason, answer, review).
    #[schemars(with = "String")]
    pub stage: Spanned<String>,
    /// Nodes that must finish first, within a round. A dependency that does not run in a round
    /// (see `rounds`) does not hold its dependents back in that round.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub after: Vec<Spanned<String>>,
    /// The routing query. Placeholders: {{task}}, {{round}}, {{role}}, {{stage}}.
    /// Default "{{task}}".
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// In which rounds the node runs. Default `every`.
    #[schemars(with = "Option<RoundRule>")]
    pub rounds: Option<Spanned<String>>,
    /// Seconds one call may take. Default: `[model] timeout_secs`.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub timeout_secs: Option<Spanned<f64>>,
    /// Attempts after a failed call. Default 1.
    pub retries: Option<u32>,
    /// Cap on this node's context pack, in tokens.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub budget: Option<Spanned<u32>>,
}

/// The JSON Schema of workflow files (draft 2020-12), for editors and `agentd schema`.
pub fn workflow_json_schema() -> serde_json::Value {
    without_null(schemars::schema_for!(WorkflowFile).to_value())
}

/// The JSON Schema of role files (draft 2020-12), for editors and `agentd schema`.
pub fn role_json_schema() -> serde_json::Value {
    without_null(schemars::schema_for!(RoleFile).to_value())
}

/// TOML has no null: an optional key is one left out, so `Option<T>` is described as `T`.
fn without_null(mut value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn is_null_schema(v: &Value) -> bool {
        v.get("type").and_then(Value::as_str) == Some("null")
    }
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(types)) = map.get_mut("type") {
                    types.retain(|t| t != "null");
                    if types.len() == 1 {
                        let only = types.remove(0);
                        map.insert("type".into(), only);
                    }
                }
                for key in ["anyOf", "oneOf"] {
                    if let Some(Value::Array(options)) = map.get_mut(key) {
                        options.retain(|o| !is_null_schema(o));
                        if options.len() == 1 {
                            let only = options.remove(0);
                            map.remove(key);
                            if let Value::Object(inner) = only {
                                for (k, v) in inner {
                                    map.entry(k).or_insert(v);
                                }
                            }
                        }
                    }
                }
                if map.get("default") == Some(&Value::Null) {
                    map.remove("default");
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}
