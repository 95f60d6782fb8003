//! agentd's shared memory.
//!
//! Memory items ([`MemoryItem`]) are what agents read and write. A [`MemoryStore`] keeps them
//! durable and searchable: [`EmbeddedStore`] puts sled (the source of truth), a tantivy BM25
//! index and an in-memory vector index (exact for small namespaces, HNSW for large ones) on
//! local disk. [`Embedder`]s turn text into vectors; a [`TokenCounter`] gives every item its
//! cached token count, which is what the context router budgets with.
//!
//! This crate knows nothing of roles' prompts, routing policies or LLMs.

#![warn(missing_docs)]

pub mod embed;
mod error;
pub mod filter;
pub mod item;
pub mod store;
pub mod synthetic;
pub mod tokens;
pub mod vector;

pub use embed::Embedder;
pub use error::{MemoryError, Result};
pub use filter::Filter;
pub use item::{ItemId, Kind, MemoryItem, NewItem, Producer, Readers, Timestamp};
pub use store::{
    DEFAULT_COMMIT_DELAY, Durability, EmbeddedStore, MemoryStore, NamespaceStats, Page, SearchHit,
    SearchMode, SearchQuery, StoreOptions,
};
pub use tokens::TokenCounter;
