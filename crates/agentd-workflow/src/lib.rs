//! The agentd workflow language: role files and workflow files in TOML, checked into typed
//! specs the runtime executes.
//!
//! - A **role** (`agents/<name>.toml`, or an inline `[roles.<name>]` table) is an agent
//!   profile: description and keywords (for the router), the item kinds it reads and writes,
//!   who may read what it writes, its budget, model overrides, prompt and output format
//!   ([`RoleSpec`], [`load_role`]).
//! - A **workflow** (`workflows/<name>.toml`) is a graph of nodes, each running one role at one
//!   stage, with `after` dependencies within a round, run for up to `max_rounds` rounds until a
//!   stop condition holds ([`Workflow`]).
//!
//! Loading checks everything it can and reports every mistake it finds at once, each located
//! (file, line, column) with how to fix it: TOML syntax, unknown fields, wrong types, unknown
//! roles / stages / nodes (with "did you mean"), bad kinds, template placeholders, ranges, and
//! the graph: self-dependencies, cycles, nodes that never run, dependencies that never meet in
//! a round, islands, and a stop condition no node can produce ([`ConfigErrors`] renders them
//! rustc-style). [`Workflow::to_dot`] and [`Workflow::to_mermaid`] draw the graph;
//! [`workflow_json_schema`] and [`role_json_schema`] describe both formats for editors.
//!
//! # Decisions
//!
//! - **Kinds**: any lowercase identifier is a valid kind (a built-in or a custom one), except a
//!   name so close to a built-in kind that it is taken for a typo (`evidance`, `facts`).
//! - **`text_kind`** (the kind of a text reply, or of a JSON reply that cannot be parsed) must
//!   be `note` (always allowed) or one of the role's `writes`; default `note`.
//! - **Inline roles** take precedence over files; only the role files nodes use are read, and a
//!   role file's own errors are reported at the role file.
//! - **Rounds** are the only loop: `after` orders nodes within a round. A dependency that does
//!   not run in a round (see [`RoundRule`]) does not hold its dependents back in that round.
//! - **Islands**: in a workflow of several nodes, a node not connected (either way) to the
//!   largest group of connected nodes is an error; so are a node that never runs (e.g.
//!   `after_first` with `max_rounds = 1`) and a dependency on a node that never runs in the
//!   same round as its dependent.
//!
//! This crate knows nothing of LLMs, actors, memory stores or routing itself: it only reads,
//! checks and describes configuration.

#![warn(missing_docs)]

mod check;
mod error;
mod graph;
mod raw;
mod role;
pub mod stages;
pub mod template;
mod workflow;

pub use error::{ConfigError, ConfigErrors, did_you_mean};
pub use raw::{role_json_schema, workflow_json_schema};
pub use role::{ModelOverrides, OutputFormat, OutputSpec, PromptSpec, RoleSpec, load_role};
pub use stages::{BUILTIN_STAGES, builtin_stage};
pub use template::{TemplateVars, render_template};
pub use workflow::{
    DEFAULT_RETRIES, DEFAULT_ROLES_DIR, DEFAULT_TIMEOUT_SECS, FileKind, ModelSpec, NodeSpec,
    RoundRule, RouterSpec, StopCondition, Workflow, validate_path,
};
