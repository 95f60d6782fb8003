//! Workflows: a graph of nodes, each running one role at one stage, repeated for up to
//! `max_rounds` rounds until the stop condition holds.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd_memory::Kind;
use agentd_router::{Policy, StageProfile, Weights};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use crate::check::{Checker, is_identifier, normalize, read_file};
use crate::error::{ConfigError, ConfigErrors, Source, did_you_mean};
use crate::graph::{self, Edge};
use crate::raw::{ModelSection, RoleFile, RouterSection, StageSection, WorkflowFile};
use crate::role::{RoleSpec, build_role};
use crate::stages::{BUILTIN_STAGES, builtin_stage};
use crate::template::{DEFAULT_QUERY, QUERY_PLACEHOLDERS, TemplateVars, render_template};

/// The roles folder of a workflow file that does not name one, relative to the file.
pub const DEFAULT_ROLES_DIR: &str = "../agents";
/// Seconds a call may take when neither the node nor `[model]` says.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// Attempts after a failed call when the node does not say.
pub const DEFAULT_RETRIES: u32 = 1;

/// A checked workflow, ready to run.
///
/// It serializes (to JSON, say) and deserializes as it is, so a run can record the exact spec
/// it ran and resume or replay from it; deserializing does not check it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// The workflow file, `None` when parsed from text.
    pub path: Option<PathBuf>,
    /// The workflow's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Most rounds of one run (at least 1).
    pub max_rounds: u32,
    /// Stop after a round in which this holds; `None`: run `max_rounds` rounds.
    pub stop_when: Option<StopCondition>,
    /// Routing settings.
    pub router: RouterSpec,
    /// Model defaults of every role.
    pub model: ModelSpec,
    /// Every stage: the built-in ones and the declared ones.
    pub stages: BTreeMap<String, StageProfile>,
    /// Nodes in topological order (ties by name).
    pub nodes: Vec<NodeSpec>,
    /// The roles the nodes use, and every inline role.
    pub roles: BTreeMap<String, RoleSpec>,
    /// The TOML text of the workflow file (for hashing and recording runs).
    pub source: String,
}

/// When a run stops early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopCondition {
    /// An item of this kind...
    pub kind: Kind,
    /// ...with at least this confidence, written in the round.
    pub min_confidence: f32,
}

/// Routing settings of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterSpec {
    /// Selection rule.
    pub policy: Policy,
    /// Scoring weights.
    pub weights: Weights,
    /// Context tokens for all calls of one run.
    pub run_budget: Option<u64>,
}

/// Model settings of a workflow (`name`, `temperature`, `max_tokens`: `None` leaves the LLM
/// client's default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model name.
    pub name: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens of one reply.
    pub max_tokens: Option<u32>,
    /// Ask the server for JSON output.
    pub json: bool,
    /// How long one call may take (the default of nodes' timeouts).
    pub timeout: Duration,
}

impl ModelSpec {
    /// These settings with a role's overrides applied.
    pub fn with_overrides(&self, o: &crate::ModelOverrides) -> ModelSpec {
        ModelSpec {
            name: o.name.clone().or_else(|| self.name.clone()),
            temperature: o.temperature.or(self.temperature),
            max_tokens: o.max_tokens.or(self.max_tokens),
            json: o.json.unwrap_or(self.json),
            timeout: self.timeout,
        }
    }
}

/// A node of the graph: one role at one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node's name (an identifier).
    pub name: String,
    /// The role it runs (a key of [`Workflow::roles`]).
    pub role: String,
    /// The stage it runs at (a key of [`Workflow::stages`]).
    pub stage: String,
    /// Nodes that finish before it within a round. A dependency that does not run in a round
    /// does not hold the node back in that round.
    pub after: Vec<String>,
    /// The routing query template (placeholders: task, round, role, stage).
    pub query: String,
    /// The rounds it runs in.
    pub rounds: RoundRule,
    /// How long one call may take.
    pub timeout: Duration,
    /// Attempts after a failed call.
    pub retries: u32,
    /// Cap on its context pack, in tokens.
    pub budget: Option<u32>,
}

impl NodeSpec {
    /// The routing query of this node (the `query` template rendered; only `task`, `round`,
    /// `role` and `stage` of `vars` are used).
    pub fn render_query(&self, vars: &TemplateVars<'_>) -> String {
        render_template(&self.query, vars)
    }
}

/// In which rounds a node runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoundRule {
    /// Every round.
    #[default]
    Every,
    /// Round 1 only.
    First,
    /// Every round but the first.
    AfterFirst,
}

impl RoundRule {
    /// Whether a node with this rule runs in `round` (rounds count from 1; round 0 is never).
    pub fn runs_in(self, round: u32) -> bool {
        match self {
            RoundRule::Every => round >= 1,
            RoundRule::First => round == 1,
            RoundRule::AfterFirst => round >= 2,
        }
    }

    /// Whether the node runs at all in a run of `max_rounds` rounds.
    pub fn runs_within(self, max_rounds: u32) -> bool {
        match self {
            RoundRule::AfterFirst => max_rounds >= 2,
            _ => max_rounds >= 1,
        }
    }

    /// Whether two nodes ever run in the same round of a run of `max_rounds` rounds.
    pub fn overlaps(self, other: RoundRule, max_rounds: u32) -> bool {
        use RoundRule::*;
        self.runs_within(max_rounds)
            && other.runs_within(max_rounds)
            && !matches!((self, other), (First, AfterFirst) | (AfterFirst, First))
    }

    /// The rule as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundRule::Every => "every",
            RoundRule::First => "first",
            RoundRule::AfterFirst => "after_first",
        }
    }
}

/// What a configuration file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A workflow file.
    Workflow,
    /// A role file.
    Role,
}

/// Checks a workflow or a role file, deciding by content: a file with a `[workflow]`, `[nodes]`,
/// `[router]`, `[stages]` or `[roles]` table is a workflow (with its roles), anything else a
/// role.
pub fn validate_path(path: &Path) -> Result<FileKind, ConfigErrors> {
    let shown = path.display().to_string();
    let text = read_file(path, &shown)?;
    let table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => return Err(Source::new(shown, &text).toml_error(&e, true).into()),
    };
    let workflow_keys = ["workflow", "nodes", "router", "stages", "roles"];
    if workflow_keys.iter().any(|k| table.contains_key(*k)) {
        Workflow::load(path).map(|_| FileKind::Workflow)
    } else {
        crate::load_role(path).map(|_| FileKind::Role)
    }
}

impl Workflow {
    /// Loads and checks a workflow file and the role files its nodes use (from its roles
    /// folder: `[workflow] roles`, relative to the file, default `../agents`).
    pub fn load(path: &Path) -> Result<Workflow, ConfigErrors> {
        let shown = path.display().to_string();
        let text = read_file(path, &shown)?;
        parse_impl(&text, &shown, Some(path), None)
    }

    /// Checks a workflow given as text; `origin` names it in errors. Roles not defined inline
    /// are read from `roles_dir` (the `roles` key is not consulted, having no file to be
    /// relative to); with `None`, every role must be inline.
    pub fn parse(
        text: &str,
        origin: &str,
        roles_dir: Option<&Path>,
    ) -> Result<Workflow, ConfigErrors> {
        parse_impl(text, origin, None, Some(roles_dir.map(Path::to_path_buf)))
    }

    /// The node of that name.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The role a node runs.
    ///
    /// # Panics
    /// If the node is not one of this workflow's.
    pub fn role_of(&self, node: &NodeSpec) -> &RoleSpec {
        &self.roles[&node.role]
    }

    /// The stage a node runs at.
    ///
    /// # Panics
    /// If the node is not one of this workflow's.
    pub fn stage_of(&self, node: &NodeSpec) -> &StageProfile {
        &self.stages[&node.stage]
    }

    /// The model settings of a role: the workflow's `[model]` with the role's overrides.
    pub fn model_for(&self, role: &RoleSpec) -> ModelSpec {
        self.model.with_overrides(&role.model)
    }

    /// The nodes that run in `round`, in topological order.
    pub fn nodes_in_round(&self, round: u32) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(move |n| n.rounds.runs_in(round))
    }

    /// The graph in Graphviz DOT (`agentd graph | dot -Tsvg`).
    pub fn to_dot(&self) -> String {
        graph::to_dot(self)
    }

    /// The graph as a Mermaid flowchart (renders in Markdown on GitHub).
    pub fn to_mermaid(&self) -> String {
        graph::to_mermaid(self)
    }
}

/// Where roles come from.
enum RolesDir {
    /// This folder.
    Dir(PathBuf),
    /// Nowhere: inline roles only.
    None,
}

/// A node as checked so far, with the spans later checks point at.
struct DraftNode {
    spec: NodeSpec,
    key_span: Range<usize>,
    after_spans: Vec<(String, Range<usize>)>,
    rounds_span: Option<Range<usize>>,
}

/// `roles_override`: `None` → resolve the `roles` key against `path`; `Some(dir)` → use `dir`.
fn parse_impl(
    text: &str,
    origin: &str,
    path: Option<&Path>,
    roles_override: Option<Option<PathBuf>>,
) -> Result<Workflow, ConfigErrors> {
    let mut ck = Checker::new(Source::new(origin, text));
    let Some(raw) = ck.parse::<WorkflowFile>() else {
        return Err(ConfigErrors(ck.errors));
    };
    let mut role_file_errors: Vec<ConfigError> = Vec::new();
    let WorkflowFile {
        workflow: section,
        router,
        model,
        stages: raw_stages,
        roles: raw_roles,
        nodes: raw_nodes,
    } = raw;
    let workflow_span = section.span();
    let w = section.into_inner();

    let name = ck.non_empty(&w.name, "workflow name");
    let max_rounds = w
        .max_rounds
        .as_ref()
        .map_or(1, |m| ck.at_least_one(m, "max_rounds"));

    let roles_dir = match roles_override {
        Some(Some(dir)) => RolesDir::Dir(dir),
        Some(None) => RolesDir::None,
        None => {
            let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
            let rel = w
                .roles
                .as_ref()
                .map_or(DEFAULT_ROLES_DIR, |r| r.get_ref().as_str());
            RolesDir::Dir(normalize(&base.join(rel)))
        }
    };

    let router = check_router(&mut ck, &router);
    let model = check_model(&mut ck, &model);
    let stages = check_stages(&mut ck, &raw_stages);

    // [roles.*]: inline roles.
    let mut roles: BTreeMap<String, RoleSpec> = BTreeMap::new();
    let mut failed_roles: BTreeSet<String> = BTreeSet::new();
    for (key, role) in raw_roles {
        let name = key.get_ref().clone();
        let role: RoleFile = role.into_inner();
        match build_role(&mut ck, role, &name, Some(key.span()), None) {
            Some(spec) => {
                roles.insert(name, spec);
            }
            None => {
                failed_roles.insert(name);
            }
        }
    }
    let inline_names: Vec<String> = roles.keys().chain(failed_roles.iter()).cloned().collect();

    // [nodes.*]
    let node_names: Vec<String> = raw_nodes.keys().map(|k| k.get_ref().clone()).collect();
    let mut drafts: Vec<DraftNode> = Vec::new();
    // Whether some `after` entry was rejected: the graph is then incomplete, and a node that
    // looks like an island may only be missing its edge.
    let mut bad_after = false;
    for (key, node) in &raw_nodes {
        let name = key.get_ref();
        if !is_identifier(name) {
            ck.error(
                key.span(),
                format!("node name `{name}` is not an identifier"),
                format!(
                    "use letters, digits and `_` (e.g. `{}`)",
                    name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                ),
            );
        }
        let node = node.get_ref();
        let role = node.role.get_ref();
        if !roles.contains_key(role) && !failed_roles.contains(role) {
            resolve_role_file(
                &mut ck,
                &node.role,
                &roles_dir,
                &inline_names,
                &mut roles,
                &mut failed_roles,
                &mut role_file_errors,
            );
        }
        let stage = node.stage.get_ref();
        if !stages.contains_key(stage) {
            let mut help = format!(
                "stages: {} (declare new ones in [stages.<name>])",
                stages.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            if let Some(close) = did_you_mean(stage, stages.keys().map(String::as_str)) {
                help.push_str(&format!(" (did you mean `{close}`?)"));
            }
            ck.error(node.stage.span(), format!("unknown stage `{stage}`"), help);
        }
        let mut after: Vec<String> = Vec::new();
        let mut after_spans = Vec::new();
        for dep in &node.after {
            let d = dep.get_ref();
            bad_after |= d == name || !node_names.contains(d);
            if d == name {
                ck.error(
                    dep.span(),
                    format!("node `{name}` depends on itself"),
                    format!(
                        "remove \"{name}\" from its `after`: rounds are the only loop (every \
                         node runs again in the next round)"
                    ),
                );
            } else if !node_names.contains(d) {
                let mut help = format!("nodes: {}", node_names.join(", "));
                if let Some(close) = did_you_mean(d, node_names.iter().map(String::as_str)) {
                    help.push_str(&format!(" (did you mean `{close}`?)"));
                }
                ck.error(dep.span(), format!("unknown node `{d}` in `after`"), help);
            } else if after.contains(d) {
                ck.error(
                    dep.span(),
                    format!("`{d}` is listed twice in `after`"),
                    "remove the repeat",
                );
            } else {
                after.push(d.clone());
                after_spans.push((d.clone(), dep.span()));
            }
        }
        let query = match &node.query {
            Some(q) => {
                ck.template(q, "the node's query", QUERY_PLACEHOLDERS, None);
                q.get_ref().clone()
            }
            None => DEFAULT_QUERY.to_owned(),
        };
        let timeout = node
            .timeout_secs
            .as_ref()
            .map_or(model.timeout, |t| ck.seconds(t, "timeout_secs"));
        let budget = node.budget.as_ref().map(|b| ck.at_least_one(b, "budget"));
        let rounds = node.rounds.as_ref().map_or(RoundRule::Every, |r| {
            let choices = [RoundRule::Every, RoundRule::First, RoundRule::AfterFirst]
                .map(|rule| (rule.as_str(), rule));
            ck.choice(r, "rounds rule", &choices).unwrap_or_default()
        });
        drafts.push(DraftNode {
            spec: NodeSpec {
                name: name.clone(),
                role: role.clone(),
                stage: stage.clone(),
                after,
                query,
                rounds,
                timeout,
                retries: node.retries.unwrap_or(DEFAULT_RETRIES),
                budget,
            },
            key_span: key.span(),
            after_spans,
            rounds_span: node.rounds.as_ref().map(Spanned::span),
        });
    }

    // stop_when
    let stop_when = w.stop_when.as_ref().map(|s| {
        let s = s.get_ref();
        let kind = ck.kind(&s.kind);
        let min_confidence = s
            .min_confidence
            .as_ref()
            .map_or(0.0, |c| ck.unit(c, "min_confidence"));
        if let Some(kind) = &kind {
            let all_resolved = drafts.iter().all(|d| roles.contains_key(&d.spec.role));
            let produced = drafts
                .iter()
                .any(|d| roles.get(&d.spec.role).is_some_and(|r| r.may_write(kind)));
            if !produced && all_resolved && !drafts.is_empty() {
                let writers: Vec<String> = drafts
                    .iter()
                    .map(|d| {
                        let r = &roles[&d.spec.role];
                        let kinds: Vec<&str> = r.writes.iter().map(Kind::as_str).collect();
                        format!("{} ({}) writes {}", d.spec.name, r.name, kinds.join(", "))
                    })
                    .collect();
                ck.error(
                    s.kind.span(),
                    format!("no node writes `{kind}`, so the stop condition can never hold"),
                    format!(
                        "{}; add \"{kind}\" to a role's `writes`, or stop on a kind a node writes",
                        writers.join("; ")
                    ),
                );
            }
        }
        StopCondition {
            kind: kind.unwrap_or(Kind::Answer),
            min_confidence,
        }
    });

    // The graph.
    if drafts.is_empty() {
        ck.error(
            workflow_span,
            "the workflow has no nodes",
            "add a node, e.g. [nodes.answer] with role = \"answerer\" and stage = \"answer\"",
        );
    }
    // An invalid max_rounds is reported already: check the graph as if it were 1.
    let order = check_graph(&mut ck, &drafts, max_rounds.max(1), bad_after);

    let mut errors = ck.errors;
    errors.extend(role_file_errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors).sorted());
    }
    let mut slots: Vec<Option<NodeSpec>> = drafts.into_iter().map(|d| Some(d.spec)).collect();
    let nodes = order
        .into_iter()
        .map(|i| slots[i].take().expect("each node once"))
        .collect();
    Ok(Workflow {
        path: path.map(Path::to_path_buf),
        name,
        description: w.description,
        max_rounds,
        stop_when,
        router,
        model,
        stages,
        nodes,
        roles,
        source: text.to_owned(),
    })
}

/// The `[router]` table.
fn check_router(ck: &mut Checker<'_>, router: &RouterSection) -> RouterSpec {
    let mut policy = match &router.policy {
        None => Policy::Rcr,
        Some(p) => match Policy::parse(p.get_ref()) {
            Some(policy) => policy,
            None => {
                let names = ["rcr", "full", "static", "recency"];
                let mut help = "policies: rcr (role-aware routing), full (every readable \
                            item), static (top-k by query, k = static_k), recency (newest first)"
                    .to_owned();
                if let Some(close) = did_you_mean(p.get_ref(), names) {
                    help.push_str(&format!(" (did you mean `{close}`?)"));
                }
                ck.error(p.span(), format!("unknown policy `{}`", p.get_ref()), help);
                Policy::Rcr
            }
        },
    };
    if let Some(k) = &router.static_k {
        let k = ck.at_least_one(k, "static_k");
        match policy {
            Policy::Static { .. } => policy = Policy::Static { k: k as usize },
            _ => ck.error(
                router
                    .static_k
                    .as_ref()
                    .map(Spanned::span)
                    .unwrap_or_default(),
                format!(
                    "static_k only applies to the static policy, not `{}`",
                    policy.name()
                ),
                "remove static_k, or set policy = \"static\"",
            ),
        }
    }
    let run_budget = router
        .run_budget
        .as_ref()
        .map(|b| ck.at_least_one(b, "run_budget"));
    let mut weights = Weights::default();
    {
        let ws = &router.weights;
        let unit_fields: [(&Option<Spanned<f32>>, &mut f32, &str); 9] = [
            (&ws.role, &mut weights.role, "weight `role`"),
            (&ws.stage, &mut weights.stage, "weight `stage`"),
            (&ws.query, &mut weights.query, "weight `query`"),
            (&ws.recency, &mut weights.recency, "weight `recency`"),
            (
                &ws.importance,
                &mut weights.importance,
                "weight `importance`",
            ),
            (&ws.bridge, &mut weights.bridge, "weight `bridge`"),
            (
                &ws.redundancy,
                &mut weights.redundancy,
                "weight `redundancy`",
            ),
            (&ws.min_score, &mut weights.min_score, "min_score"),
            (
                &ws.duplicate_similarity,
                &mut weights.duplicate_similarity,
                "duplicate_similarity",
            ),
        ];
        for (value, slot, what) in unit_fields {
            if let Some(v) = value {
                *slot = ck.unit(v, what);
            }
        }
        if let Some(v) = &ws.recency_half_life {
            weights.recency_half_life = ck.positive(v, "recency_half_life");
        }
    }
    RouterSpec {
        policy,
        weights,
        run_budget,
    }
}

/// The `[model]` table.
fn check_model(ck: &mut Checker<'_>, model: &ModelSection) -> ModelSpec {
    ModelSpec {
        name: model.name.as_ref().map(|n| ck.non_empty(n, "model name")),
        temperature: model.temperature.as_ref().map(|t| ck.temperature(t)),
        max_tokens: model
            .max_tokens
            .as_ref()
            .map(|m| ck.at_least_one(m, "max_tokens")),
        json: model.json.unwrap_or(false),
        timeout: model
            .timeout_secs
            .as_ref()
            .map_or(Duration::from_secs(DEFAULT_TIMEOUT_SECS), |t| {
                ck.seconds(t, "timeout_secs")
            }),
    }
}

/// The `[stages]` tables over the built-in stages.
fn check_stages(
    ck: &mut Checker<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<StageSection>>,
) -> BTreeMap<String, StageProfile> {
    let mut stages: BTreeMap<String, StageProfile> = BUILTIN_STAGES
        .iter()
        .filter_map(|s| builtin_stage(s).map(|p| (s.to_string(), p)))
        .collect();
    for (key, stage) in raw {
        let name = key.get_ref();
        if !is_identifier(name) {
            ck.error(
                key.span(),
                format!("stage name `{name}` is not an identifier"),
                "use letters, digits and `_` (e.g. `fact_check`)",
            );
        }
        let mut profile = builtin_stage(name).unwrap_or_else(|| StageProfile::new(name.clone()));
        let stage = stage.get_ref();
        if let Some(priorities) = &stage.priorities {
            profile.priorities.clear();
            for (kind, p) in priorities {
                let v = ck.unit(p, &format!("priority of `{}`", kind.get_ref()));
                if let Some(kind) = ck.kind(kind) {
                    profile.priorities.insert(kind, v);
                }
            }
        }
        if let Some(d) = &stage.default_priority {
            profile.default_priority = ck.unit(d, "default_priority");
        }
        if let Some(m) = &stage.budget_multiplier {
            profile.budget_multiplier = ck.positive(m, "budget_multiplier");
        }
        stages.insert(name.clone(), profile);
    }

    stages
}

/// Finds a node's role in the roles folder, loading the file (once) if it exists; records an
/// "unknown role" error at the node's `role` value otherwise.
fn resolve_role_file(
    ck: &mut Checker<'_>,
    role: &Spanned<String>,
    roles_dir: &RolesDir,
    inline: &[String],
    roles: &mut BTreeMap<String, RoleSpec>,
    failed: &mut BTreeSet<String>,
    role_file_errors: &mut Vec<ConfigError>,
) {
    let name = role.get_ref();
    let safe = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !safe {
        ck.error(
            role.span(),
            format!("`{name}` is not a role name"),
            "role names are file stems made of letters, digits, `_` and `-`",
        );
        return;
    }
    let dir = match roles_dir {
        RolesDir::Dir(dir) => dir,
        RolesDir::None => {
            let mut help = format!(
                "this workflow has no roles folder: define the role inline as [roles.{name}]"
            );
            if !inline.is_empty() {
                help.push_str(&format!("; inline roles: {}", inline.join(", ")));
            }
            if let Some(close) = did_you_mean(name, inline.iter().map(String::as_str)) {
                help.push_str(&format!(" (did you mean `{close}`?)"));
            }
            ck.error(role.span(), format!("unknown role `{name}`"), help);
            return;
        }
    };
    let file = dir.join(format!("{name}.toml"));
    if file.is_file() {
        let shown = file.display().to_string();
        let loaded = read_file(&file, &shown)
            .map_err(ConfigErrors::from)
            .and_then(|text| {
                let mut rck = Checker::new(Source::new(shown.clone(), &text));
                let spec = rck
                    .parse::<RoleFile>()
                    .and_then(|raw| build_role(&mut rck, raw, name, None, Some(file.clone())));
                match spec {
                    Some(spec) if rck.errors.is_empty() => Ok(spec),
                    _ => Err(ConfigErrors(rck.errors)),
                }
            });
        match loaded {
            Ok(spec) => {
                roles.insert(name.clone(), spec);
            }
            Err(errors) => {
                role_file_errors.extend(errors);
                failed.insert(name.clone());
            }
        }
        return;
    }
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .flatten()
        })
        .chain(inline.iter().cloned())
        .collect();
    found.sort();
    found.dedup();
    let mut help = if dir.is_dir() {
        format!("no file {} and no [roles.{name}]", file.display())
    } else {
        format!(
            "the roles folder {} does not exist (set [workflow] roles, relative to this file) \
             and there is no [roles.{name}]",
            dir.display()
        )
    };
    if found.is_empty() {
        help.push_str("; no roles found");
    } else {
        help.push_str(&format!("; roles found: {}", found.join(", ")));
    }
    if let Some(close) = did_you_mean(name, found.iter().map(String::as_str)) {
        help.push_str(&format!(" (did you mean `{close}`?)"));
    }
    ck.error(role.span(), format!("unknown role `{name}`"), help);
}

/// Cycles, nodes that never run, dependencies that never meet, islands (skipped when the graph
/// is `incomplete`: some `after` entry was rejected); returns the
/// topological order (indices into `drafts`) when the graph is acyclic.
fn check_graph(
    ck: &mut Checker<'_>,
    drafts: &[DraftNode],
    max_rounds: u32,
    incomplete: bool,
) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = drafts
        .iter()
        .enumerate()
        .map(|(i, d)| (d.spec.name.as_str(), i))
        .collect();
    let mut edges: Vec<Edge> = Vec::new();
    for (to, d) in drafts.iter().enumerate() {
        for dep in &d.spec.after {
            if let Some(&from) = index.get(dep.as_str()) {
                edges.push(Edge { from, to });
            }
        }
    }
    let names: Vec<&str> = drafts.iter().map(|d| d.spec.name.as_str()).collect();
    let cycles = graph::cycles(names.len(), &edges);
    for cycle in &cycles {
        let path: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| names[i])
            .collect();
        // The edge that closes the cycle: last → first, written in first's `after`.
        let last = *cycle.last().expect("a cycle has nodes");
        let first = cycle[0];
        let span = after_span(&drafts[first], names[last]);
        ck.error(
            span,
            format!("dependency cycle: {}", path.join(" → ")),
            format!(
                "rounds are the only loop: remove one edge, e.g. \"{}\" from `after` of node `{}`",
                names[last], names[first]
            ),
        );
    }

    for (i, d) in drafts.iter().enumerate() {
        if !d.spec.rounds.runs_within(max_rounds) {
            ck.error(
                d.rounds_span.clone().unwrap_or(d.key_span.clone()),
                format!(
                    "node `{}` never runs: rounds = \"{}\" but max_rounds = {max_rounds}",
                    names[i],
                    d.spec.rounds.as_str()
                ),
                "raise max_rounds, or change `rounds`",
            );
        }
    }
    for e in &edges {
        let (dep, node) = (&drafts[e.from], &drafts[e.to]);
        if !node.spec.rounds.runs_within(max_rounds) {
            continue;
        }
        let span = after_span(node, names[e.from]);
        if !dep.spec.rounds.runs_within(max_rounds) {
            ck.error(
                span,
                format!(
                    "node `{}` depends on `{}`, which never runs",
                    names[e.to], names[e.from]
                ),
                format!(
                    "remove \"{}\" from `after`, or make `{}` run",
                    names[e.from], names[e.from]
                ),
            );
        } else if !node.spec.rounds.overlaps(dep.spec.rounds, max_rounds) {
            ck.error(
                span,
                format!(
                    "node `{}` (rounds = \"{}\") depends on `{}` (rounds = \"{}\"), but they never \
                     run in the same round",
                    names[e.to],
                    node.spec.rounds.as_str(),
                    names[e.from],
                    dep.spec.rounds.as_str()
                ),
                "dependencies order nodes within a round: remove the dependency or change \
                 `rounds`",
            );
        }
    }

    if names.len() > 1 && !incomplete {
        let file_order: Vec<usize> = drafts.iter().map(|d| d.key_span.start).collect();
        for i in graph::islands(names.len(), &edges, &file_order) {
            ck.error(
                drafts[i].key_span.clone(),
                format!(
                    "node `{}` is not connected to the rest of the workflow",
                    names[i]
                ),
                "a workflow is one connected graph: add it to another node's `after`, or give \
                 it an `after`",
            );
        }
    }

    if cycles.is_empty() {
        graph::topological_order(names.len(), &edges)
    } else {
        Vec::new()
    }
}

/// The span of `dep` in the node's `after` list (the node's key when not found).
fn after_span(node: &DraftNode, dep: &str) -> Range<usize> {
    node.after_spans
        .iter()
        .find(|(name, _)| name == dep)
        .map_or(node.key_span.clone(), |(_, s)| s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_rules_select_rounds() {
        assert!(RoundRule::Every.runs_in(1) && RoundRule::Every.runs_in(7));
        assert!(RoundRule::First.runs_in(1) && !RoundRule::First.runs_in(2));
        assert!(!RoundRule::AfterFirst.runs_in(1) && RoundRule::AfterFirst.runs_in(2));
        assert!(!RoundRule::Every.runs_in(0) && !RoundRule::First.runs_in(0));
        assert!(!RoundRule::AfterFirst.runs_within(1) && RoundRule::AfterFirst.runs_within(2));
        assert!(!RoundRule::First.overlaps(RoundRule::AfterFirst, 3));
        assert!(RoundRule::Every.overlaps(RoundRule::First, 3));
        assert!(!RoundRule::Every.overlaps(RoundRule::AfterFirst, 1));
    }

    const MINIMAL: &str = r#"
[workflow]
name = "tiny"

[roles.echo]
description = "Repeats the task."
writes = ["answer"]
prompt.system = "Repeat the task."

[nodes.only]
role = "echo"
stage = "answer"
"#;

    #[test]
    fn a_minimal_inline_workflow_gets_the_defaults() {
        let w = Workflow::parse(MINIMAL, "tiny.toml", None).unwrap();
        assert_eq!(w.max_rounds, 1);
        assert_eq!(w.router.policy, Policy::Rcr);
        assert_eq!(w.router.weights, Weights::default());
        assert_eq!(w.model.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        let node = w.node("only").unwrap();
        assert_eq!(node.query, DEFAULT_QUERY);
        assert_eq!(node.retries, DEFAULT_RETRIES);
        let role = w.role_of(node);
        assert_eq!(role.profile.budget, 2048);
        assert_eq!(role.output.text_kind, Kind::Note);
        assert_eq!(w.stage_of(node).name, "answer");
        assert_eq!(w.stages.len(), BUILTIN_STAGES.len());
        assert_eq!(w.source, MINIMAL);
        assert!(!w.model_for(role).json);
    }

    #[test]
    fn without_a_roles_folder_unknown_roles_say_so() {
        let text = MINIMAL.replace("role = \"echo\"", "role = \"ecko\"");
        let err = Workflow::parse(&text, "tiny.toml", None).unwrap_err();
        assert_eq!(err.len(), 1, "{err}");
        let e = &err.0[0];
        assert_eq!(e.message, "unknown role `ecko`");
        assert!(
            e.help.as_ref().unwrap().contains("did you mean `echo`"),
            "{e}"
        );
    }

    #[test]
    fn role_names_cannot_escape_the_roles_folder() {
        let text = MINIMAL.replace("role = \"echo\"", "role = \"../secret\"");
        let dir = std::env::temp_dir();
        let err = Workflow::parse(&text, "tiny.toml", Some(&dir)).unwrap_err();
        assert_eq!(err.0[0].message, "`../secret` is not a role name");
    }

    #[test]
    fn static_k_sets_the_static_policy_size() {
        let text = MINIMAL.replace(
            "[roles.echo]",
            "[router]\npolicy = \"static\"\nstatic_k = 3\n\n[roles.echo]",
        );
        let w = Workflow::parse(&text, "tiny.toml", None).unwrap();
        assert_eq!(w.router.policy, Policy::Static { k: 3 });
        let text = MINIMAL.replace("[roles.echo]", "[router]\nstatic_k = 3\n\n[roles.echo]");
        let err = Workflow::parse(&text, "tiny.toml", None).unwrap_err();
        assert!(err.0[0].message.contains("static_k only applies"), "{err}");
    }

    #[test]
    fn role_overrides_merge_over_the_workflow_model() {
        let text = MINIMAL
            .replace(
                "[roles.echo]",
                "[model]\nname = \"big\"\ntemperature = 0.5\n\n[roles.echo]",
            )
            .replace(
                "prompt.system",
                "model = { temperature = 0.0, json = true }\nprompt.system",
            );
        let w = Workflow::parse(&text, "tiny.toml", None).unwrap();
        let m = w.model_for(&w.roles["echo"]);
        assert_eq!(m.name.as_deref(), Some("big"));
        assert_eq!(m.temperature, Some(0.0));
        assert!(m.json);
    }

    #[test]
    fn declared_stages_override_builtin_fields() {
        let text = MINIMAL.replace(
            "[roles.echo]",
            "[stages.answer]\nbudget_multiplier = 1.5\n\n[stages.verify]\npriorities = { claim = 1.0 }\n\n[roles.echo]",
        );
        let w = Workflow::parse(&text, "tiny.toml", None).unwrap();
        let answer = &w.stages["answer"];
        assert_eq!(answer.budget_multiplier, 1.5);
        assert_eq!(answer.priority_of(&Kind::Evidence), 1.0);
        let verify = &w.stages["verify"];
        assert_eq!(verify.priority_of(&Kind::Custom("claim".into())), 1.0);
        assert_eq!(verify.priority_of(&Kind::Evidence), 0.2);
    }
}
