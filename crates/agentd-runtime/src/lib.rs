//! The agentd runtime: multi-agent workflows over a shared memory.
//!
//! A workflow ([`agentd_workflow::Workflow`]) is a graph of nodes, each running one role at one
//! stage, for up to `max_rounds` rounds. A run has one orchestrator actor and one actor per node
//! (see [`crate::run`]). Before a node acts, the context router picks what its role may and
//! should read from memory under a token budget; the agent (an LLM behind a role file, or a Rust
//! [`Agent`]) acts on that context; its output is written back to memory as items
//! ([`writeback`]); and the node's checkpoint is appended to the run journal ([`journal`]).
//! Every step is an [`Event`]: persisted, published live, and folded into the run's
//! [`RunState`].
//!
//! What it does not know: how items are stored or searched (agentd-memory), how candidates are
//! scored (agentd-router), how to talk HTTP to an LLM (agentd-llm), or TOML (agentd-workflow).
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentd_runtime::{Runtime, RunRequest};
//! use agentd_workflow::Workflow;
//!
//! # async fn demo(llm: Arc<dyn agentd_llm::LlmClient>) -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder().data_dir("/tmp/agentd-data").llm(llm).build()?;
//! let workflow = Arc::new(Workflow::load("workflows/multihop_qa.toml".as_ref())?);
//! let outcome = runtime.run(RunRequest::new(workflow, "Which river flows through Paris?")).await?;
//! println!("{:?}", outcome.answer.map(|a| a.content));
//! # Ok(())
//! # }
//! ```

pub mod agent;
mod durable;
pub mod event;
pub mod journal;
pub mod output;
pub mod replay;
pub mod run;
pub mod runtime;
pub mod state;
pub mod usage;
pub mod writeback;

pub use agent::{Agent, AgentError, AgentInput, AgentReply, LlmAgent, ModelSettings};
pub use event::{Event, EventKind, RunRecord};
pub use journal::{Durability, JournalError};
pub use output::{AgentOutput, OutputItem, ParseOutcome, parse_output};
pub use replay::{ReplayReport, replay};
pub use run::{NodeTimings, RunShared};
pub use runtime::{
    Document, EventHook, RunHandle, RunOutcome, RunRequest, Runtime, RuntimeBuilder,
};
pub use state::{Checkpoint, RunState, RunStatus};
pub use usage::{RunUsage, UsageTotals};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The memory store failed.
    #[error(transparent)]
    Memory(#[from] agentd_memory::MemoryError),
    /// The embedder could not be set up.
    #[error(transparent)]
    Embed(#[from] agentd_memory::embed::EmbedError),
    /// Routing failed.
    #[error(transparent)]
    Route(#[from] agentd_router::RouteError),
    /// An LLM call failed.
    #[error(transparent)]
    Llm(#[from] agentd_llm::LlmError),
    /// The run journal failed (a full disk, say): the run cannot checkpoint.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A Rust agent failed.
    #[error("agent failed: {0}")]
    Agent(String),
    /// The runtime or a request is misconfigured.
    #[error("{0}")]
    Config(String),
    /// No run has this id.
    #[error("no run `{0}`")]
    UnknownRun(String),
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new run id (a UUID v7: sortable by start time).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
