//! The agentd runtime (being written).
