//! Agents: what runs at a node once its context is routed. An agent gets the context pack and
//! returns items to write. [`LlmAgent`] is the agent of every role file (prompt template, one
//! LLM call, tolerant parsing); an embedding app registers its own Rust agents by role name.

use std::sync::Arc;
use std::time::Duration;

use agentd_llm::{ChatRequest, LlmClient, LlmError, Message, ResponseFormat, Usage};
use agentd_memory::Kind;
use agentd_router::{ContextPack, StageProfile};
use agentd_workflow::{NodeSpec, OutputFormat, RoleSpec, TemplateVars};
use serde_json::{Value, json};

use crate::output::{AgentOutput, OutputItem, ParseOutcome, parse_output};

/// What an agent sees when it acts.
pub struct AgentInput<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The node.
    pub node: &'a NodeSpec,
    /// The node's role.
    pub role: &'a RoleSpec,
    /// The node's stage.
    pub stage: &'a StageProfile,
    /// Round, from 1.
    pub round: u32,
    /// Attempt, from 1.
    pub attempt: u32,
    /// The run's input.
    pub task: &'a str,
    /// The routing query of this node.
    pub query: &'a str,
    /// The routed context.
    pub context: &'a ContextPack,
    /// Model settings for this node (role overrides applied).
    pub model: &'a ModelSettings,
}

/// Model settings of one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelSettings {
    /// Model name (`None`: the client's default).
    pub name: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Completion token limit.
    pub max_tokens: Option<u32>,
    /// Ask the server for JSON output matching the role's output schema.
    pub json: bool,
}

/// One LLM call an agent made, for accounting.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmCallRecord {
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Tokens.
    pub usage: Usage,
    /// Whether the usage was counted locally.
    pub usage_estimated: bool,
    /// HTTP attempts.
    pub attempts: u32,
    /// Wall time.
    pub latency: Duration,
    /// Cost in USD.
    pub cost_usd: f64,
}

/// What an agent returns.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentReply {
    /// Items to write (kinds outside the role's `writes` are written as its text kind).
    pub output: AgentOutput,
    /// LLM calls made.
    pub calls: Vec<LlmCallRecord>,
}

impl AgentReply {
    /// A reply from a Rust agent: these items, no LLM calls.
    pub fn items(items: Vec<OutputItem>) -> Self {
        AgentReply {
            output: AgentOutput {
                items,
                parsed: ParseOutcome::Json,
            },
            calls: Vec::new(),
        }
    }
}

/// Why an agent failed. Every failure is retried up to the node's `retries`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The LLM call failed (after its own retries).
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// Anything else (Rust agents).
    #[error("{0}")]
    Other(String),
}

/// An agent. Implement it to put Rust code at a node of a workflow.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Acts once: reads the routed context, returns items to write.
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError>;
}

/// The agent of a role file: renders the prompt, calls the LLM, parses the reply.
pub struct LlmAgent {
    client: Arc<dyn LlmClient>,
}

impl LlmAgent {
    /// An LLM agent calling `client`.
    pub fn new(client: Arc<dyn LlmClient>) -> Self {
        LlmAgent { client }
    }

    /// The chat request for `input` (public for tests).
    pub fn request(input: &AgentInput<'_>) -> ChatRequest {
        let role = input.role;
        let json_out = role.output.format == OutputFormat::Json;
        let constrained = json_out && input.model.json;
        let output_format = if constrained {
            // The schema constrains the reply; small models do best with a short prompt and
            // no prose description of the fields (measured with SmolLM2 on llama.cpp).
            String::from("Reply with JSON only.")
        } else if json_out {
            output_instructions(role)
        } else {
            String::from("Reply in plain text.")
        };
        let context = input.context.render();
        let vars = TemplateVars {
            task: input.task,
            query: input.query,
            context: &context,
            role: &role.name,
            stage: &input.stage.name,
            round: input.round,
            output_format: &output_format,
        };
        let user = role.prompt.render(&vars);
        let mut request = ChatRequest::new(vec![
            Message::system(role.prompt.render_system(&vars)),
            Message::user(user),
        ]);
        request.model = input.model.name.clone();
        request.temperature = input.model.temperature;
        request.max_tokens = input.model.max_tokens;
        if constrained {
            let ids: Vec<String> = input
                .context
                .items
                .iter()
                .map(|p| p.item.id.short())
                .collect();
            request.response_format = ResponseFormat::JsonSchema {
                name: format!("{}_output", role.name),
                schema: output_schema(role, &ids),
            };
        }
        request
    }
}

#[async_trait::async_trait]
impl Agent for LlmAgent {
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        let request = Self::request(&input);
        let response = self.client.chat(&request).await?;
        let text_kind = input.role.output.text_kind.as_str();
        let output = match input.role.output.format {
            OutputFormat::Json => parse_output(&response.content, text_kind),
            OutputFormat::Text => parse_text(&response.content, text_kind),
        };
        Ok(AgentReply {
            output,
            calls: vec![LlmCallRecord {
                provider: self.client.provider().to_owned(),
                model: response.model.clone(),
                usage: response.usage,
                usage_estimated: response.usage_estimated,
                attempts: response.attempts,
                latency: response.latency,
                cost_usd: response.cost_usd,
            }],
        })
    }
}

/// How a reply parsed, for the `items_written` event: `json`, `repaired: ...` or `raw_text`.
pub fn describe_parse(outcome: &ParseOutcome) -> String {
    match outcome {
        ParseOutcome::Json => "json".into(),
        ParseOutcome::Repaired(repairs) => format!("repaired: {}", repairs.join(", ")),
        ParseOutcome::RawText => "raw_text".into(),
    }
}

fn parse_text(raw: &str, kind: &str) -> AgentOutput {
    let text = raw.trim();
    let items = if text.is_empty() {
        Vec::new()
    } else {
        vec![OutputItem {
            kind: kind.to_owned(),
            content: text.to_owned(),
            key: None,
            confidence: None,
            cites: Vec::new(),
            payload: None,
        }]
    };
    AgentOutput {
        items,
        parsed: ParseOutcome::RawText,
    }
}

/// Kinds a role writes as list items (everything but `answer`, which has its own field).
fn item_kinds(role: &RoleSpec) -> Vec<&str> {
    role.writes
        .iter()
        .filter(|k| **k != Kind::Answer)
        .map(|k| k.as_str())
        .collect()
}

fn writes_answer(role: &RoleSpec) -> bool {
    role.writes.contains(&Kind::Answer)
}

/// The `{{output_format}}` instructions of a role.
pub fn output_instructions(role: &RoleSpec) -> String {
    let kinds = item_kinds(role);
    let mut shape = String::from("{");
    if !kinds.is_empty() {
        shape.push_str(&format!(
            "\"items\": [{{\"kind\": \"{}\", \"content\": \"...\", \"confidence\": 0.8, \"cites\": [\"<id>\"]}}]",
            kinds.join("|")
        ));
    }
    if writes_answer(role) {
        if !kinds.is_empty() {
            shape.push_str(", ");
        }
        shape.push_str(
            "\"answer\": {\"content\": \"...\", \"confidence\": 0.8, \"cites\": [\"<id>\"]}",
        );
    }
    shape.push('}');
    format!(
        "Reply with JSON only: {shape}\nCite items by the 8-character ids shown in brackets in the shared memory."
    )
}

/// Longest answer the schema allows, in characters (answers are short; bounded strings keep
/// small models from looping until `max_tokens`).
pub const ANSWER_MAX_CHARS: u32 = 200;
/// Longest item the schema allows, in characters.
pub const ITEM_MAX_CHARS: u32 = 300;
/// Most items per reply the schema allows.
pub const MAX_ITEMS: u32 = 4;

/// The JSON Schema a role's replies must match, sent as the response format when the model
/// settings ask for JSON. Servers with grammar-constrained decoding (llama.cpp, OpenAI) then
/// produce replies that parse: the answer comes first (so a cut-off reply still has it), strings
/// and lists are bounded, and citations can only be ids of the items in the context (`ids`;
/// without any, citations are free strings).
pub fn output_schema(role: &RoleSpec, ids: &[String]) -> Value {
    let kinds = item_kinds(role);
    let cites = if ids.is_empty() {
        json!({"type": "array", "items": {"type": "string"}, "maxItems": 3})
    } else {
        json!({"type": "array", "items": {"type": "string", "enum": ids}, "maxItems": 3})
    };
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    if writes_answer(role) {
        properties.insert(
            "answer".into(),
            json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "maxLength": ANSWER_MAX_CHARS},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "cites": cites,
                },
                "required": ["content", "confidence", "cites"]
            }),
        );
        required.push("answer");
    }
    if !kinds.is_empty() {
        properties.insert(
            "items".into(),
            json!({
                "type": "array",
                "maxItems": MAX_ITEMS,
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string", "enum": kinds},
                        "content": {"type": "string", "maxLength": ITEM_MAX_CHARS},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "cites": cites,
                    },
                    "required": ["kind", "content", "cites"]
                }
            }),
        );
        required.push("items");
    }
    json!({"type": "object", "properties": properties, "required": required})
}
