//! Fixtures shared by the daemon's tests, the end-to-end tests of the binary and
//! `agentd bench serve`.

/// A workflow of three nodes in a chain (plan → research → answer), one round, its roles
/// inline. Each role's system prompt is one word (`Plan.`, `Research.`, `Answer.`), so a
/// scripted LLM can tell the roles apart.
pub const THREE_NODE_WORKFLOW: &str = r#"
[workflow]
name = "three_step"
max_rounds = 1

[roles.planner]
description = "Plans."
writes = ["plan"]
prompt = { system = "Plan.", template = "{{task}} {{context}} {{output_format}}" }

[roles.researcher]
description = "Finds evidence."
writes = ["evidence"]
prompt = { system = "Research.", template = "{{task}} {{context}} {{output_format}}" }

[roles.answerer]
description = "Answers."
writes = ["answer"]
prompt = { system = "Answer.", template = "{{task}} {{context}} {{output_format}}" }

[nodes.plan]
role = "planner"
stage = "plan"

[nodes.research]
role = "researcher"
stage = "gather"
after = ["plan"]

[nodes.answer]
role = "answerer"
stage = "answer"
after = ["research"]
"#;
