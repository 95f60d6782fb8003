//! LLM clients for agentd (placeholder: being written).
