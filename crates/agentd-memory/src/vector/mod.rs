//! Vector search primitives: exact top-k and an HNSW graph.

pub mod hnsw;
