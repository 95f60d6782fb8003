//! The agentd workflow language (placeholder: being written).
