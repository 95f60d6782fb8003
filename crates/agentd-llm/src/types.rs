//! The vocabulary of a chat call: messages, requests, responses and token usage.
//!
//! These are agentd's own types, not the OpenAI wire format: [`crate::OpenAiClient`] translates
//! them, so the runtime never depends on one provider's JSON.

use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who speaks a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Instructions that frame the conversation.
    System,
    /// The caller's turn.
    User,
    /// The model's turn (earlier answers, or few-shot examples).
    Assistant,
}

impl MessageRole {
    /// The role as it appears on the wire: `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageRole::System => "system",
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
        }
    }
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: MessageRole,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: MessageRole, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(MessageRole::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(MessageRole::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(MessageRole::Assistant, content)
    }
}

/// The shape the answer should take.
///
/// JSON formats are a request to the server, not a guarantee: a server without JSON support
/// (see [`crate::JsonMode`]) gets the request without it, so callers still validate the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (nothing is sent).
    #[default]
    Text,
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON matching a schema (`{"type": "json_schema", "json_schema": {name, schema, strict: true}}`).
    JsonSchema {
        /// A name for the schema (letters, digits, `_` and `-`, as OpenAI requires).
        name: String,
        /// The JSON Schema of the answer.
        schema: serde_json::Value,
    },
}

/// One chat-completion request.
///
/// ```
/// use agentd_llm::{ChatRequest, Message};
/// let request = ChatRequest::new(vec![Message::system("Be brief."), Message::user("Hi")])
///     .with_temperature(0.0)
///     .with_max_tokens(64);
/// assert_eq!(request.model, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    /// The model to use; `None` uses the client's default ([`crate::LlmClient::model`]).
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature; `None` leaves the server's default.
    pub temperature: Option<f32>,
    /// Upper bound on the answer's tokens; `None` leaves the server's default.
    pub max_tokens: Option<u32>,
    /// The shape of the answer.
    pub response_format: ResponseFormat,
    /// Sampling seed, for servers that support reproducible sampling.
    pub seed: Option<u64>,
    /// Sequences at which the server stops generating.
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// A request with these messages and every option left to the client and server.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            ..ChatRequest::default()
        }
    }

    /// Uses `model` instead of the client's default.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets the sampling temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Caps the answer's length in tokens.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Asks for an answer of this shape.
    pub fn with_response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = format;
        self
    }

    /// Asks for a JSON answer matching `schema`.
    pub fn with_json_schema(self, name: impl Into<String>, schema: serde_json::Value) -> Self {
        self.with_response_format(ResponseFormat::JsonSchema {
            name: name.into(),
            schema,
        })
    }

    /// Sets the sampling seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a stop sequence.
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }
}

/// Tokens consumed by one or more calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (all messages sent).
    pub prompt_tokens: u32,
    /// Tokens of the answer.
    pub completion_tokens: u32,
}

impl Usage {
    /// Usage of `prompt_tokens` in and `completion_tokens` out.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
        }
    }

    /// Prompt plus completion tokens (saturating).
    pub fn total(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl Add for Usage {
    type Output = Usage;

    /// Field-wise saturating sum.
    fn add(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        *self = *self + other;
    }
}

impl Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), Add::add)
    }
}

/// The answer to a [`ChatRequest`], with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The text of the answer.
    pub content: String,
    /// The model that answered (as reported by the server, else the one requested).
    pub model: String,
    /// Tokens consumed (by the successful attempt).
    pub usage: Usage,
    /// `true` when the server reported no usage and it was counted locally.
    pub usage_estimated: bool,
    /// Why generation stopped (`stop`, `length`, ...), when the server says.
    pub finish_reason: Option<String>,
    /// HTTP attempts made, including failed ones (1 when the first succeeded).
    pub attempts: u32,
    /// Wall time of the whole call: rate-limit waits, attempts and backoff included.
    pub latency: Duration,
    /// Cost in US dollars from the provider's price table; 0 when it has none.
    pub cost_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_arithmetic() {
        let mut usage = Usage::new(10, 5) + Usage::new(1, 2);
        assert_eq!(usage, Usage::new(11, 7));
        usage += Usage::new(u32::MAX, 0);
        assert_eq!(usage.prompt_tokens, u32::MAX);
        assert_eq!(usage.total(), u32::MAX);
        let sum: Usage = [Usage::new(1, 1), Usage::new(2, 3)].into_iter().sum();
        assert_eq!(sum.total(), 7);
    }

    #[test]
    fn messages_serialize_with_lowercase_roles() {
        let json = serde_json::to_value(Message::system("be brief")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"role": "system", "content": "be brief"})
        );
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back.role, MessageRole::System);
    }

    #[test]
    fn builder_sets_fields() {
        let request = ChatRequest::new(vec![Message::user("hi")])
            .with_model("m")
            .with_seed(7)
            .with_stop("\n\n")
            .with_json_schema("answer", serde_json::json!({"type": "object"}));
        assert_eq!(request.model.as_deref(), Some("m"));
        assert_eq!(request.seed, Some(7));
        assert_eq!(request.stop, vec!["\n\n".to_owned()]);
        assert!(matches!(
            request.response_format,
            ResponseFormat::JsonSchema { .. }
        ));
    }
}
