//! Vector search primitives: exact top-k and an HNSW graph.

pub mod hnsw;

pub use hnsw::{dot, exact_top_k};
