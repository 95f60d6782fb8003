//! agentd: a runtime for multi-agent LLM systems with a shared, structured memory.
//!
//! Before each agent acts, a context router picks the memory items that fit the agent's role and
//! the task's stage, under a token budget. This crate is the facade: it re-exports the parts
//! (today the memory store, [`memory`]) and holds the `agentd` command-line tool's library code.
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentd::memory::{EmbeddedStore, Filter, Kind, MemoryStore, NewItem, SearchMode, SearchQuery, StoreOptions};
//! use agentd::memory::embed::HashingEmbedder;
//! use agentd::memory::tokens::default_token_counter;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let options = StoreOptions::new(Arc::new(HashingEmbedder::new(256)?), default_token_counter());
//! let store = EmbeddedStore::open("/tmp/agentd-memory", options)?;
//! store.put(NewItem::new("run-1", Kind::Fact, "The Seine flows through Paris."))?;
//! let hits = store.search(
//!     &SearchQuery::new("Which river flows through Paris?", SearchMode::Hybrid),
//!     &Filter::namespace("run-1"),
//!     5,
//! )?;
//! assert_eq!(hits.len(), 1);
//! # Ok(())
//! # }
//! ```

pub use agentd_llm as llm;
pub use agentd_memory as memory;
pub use agentd_router as router;
pub use agentd_runtime as runtime;
pub use agentd_workflow as workflow;

pub use agentd_runtime::{Agent, RunRequest, Runtime};
pub use agentd_workflow::Workflow;

pub mod bench;
pub mod cli;
