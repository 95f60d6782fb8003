//! Vector search primitives: exact top-k and an HNSW graph.

pub mod hnsw;
pub mod quant;

pub use hnsw::{dot, exact_top_k};
pub use quant::QuantizedVector;
