//! LLM clients for agentd: how an agent's prompt becomes an answer, and what it cost.
//!
//! - [`LlmClient`] is the one trait the runtime calls: a whole (non-streaming) chat
//!   completion in, a [`ChatResponse`] with usage, latency, attempts and cost out.
//! - [`OpenAiClient`] speaks OpenAI's `/chat/completions` to any compatible server (llama.cpp,
//!   vLLM, Ollama, OpenAI), configured by a [`ProviderConfig`] table; it retries what can be
//!   retried, limits concurrency and tokens per minute, and accounts usage and cost.
//! - [`ScriptedClient`] answers from a script, offline, for tests of orchestration.
//! - [`testing::MockServer`] is an OpenAI-compatible server on loopback for the tests and
//!   benchmarks of every crate.
//!
//! Trade-offs:
//! - No streaming: agents parse whole answers, and a whole answer is simpler to retry, time
//!   out and account.
//! - Retries are at-least-once: a timed-out attempt may have been processed (and billed).
//! - When the server reports no usage, tokens are estimated (characters / 4 by default, see
//!   [`estimate_tokens`]) and the response says so ([`ChatResponse::usage_estimated`]);
//!   plug in a real tokenizer with [`OpenAiClient::with_token_counter`].
//! - JSON response formats are a hint: servers that reject them get the request without
//!   ([`JsonMode`]), so callers always validate the answer.
//!
//! This crate knows nothing of roles, prompts or memory.

#![warn(missing_docs)]

mod config;
mod error;
mod openai;
mod rate_limit;
mod retry;
mod scripted;
pub mod testing;
mod tokens;
mod types;

use std::sync::Arc;

pub use config::{JsonMode, Price, ProviderConfig};
pub use error::LlmError;
pub use openai::OpenAiClient;
pub use scripted::ScriptedClient;
pub use tokens::{
    TOKENS_PER_MESSAGE, TOKENS_PER_REPLY, TokenCounter, count_prompt_tokens, default_token_counter,
    estimate_tokens,
};
pub use types::{ChatRequest, ChatResponse, Message, MessageRole, ResponseFormat, Usage};

/// Something that answers chat requests: a real provider, a script, a mock.
#[async_trait::async_trait]
pub trait LlmClient: Send + Sync {
    /// Provider name (for usage accounting and metrics).
    fn provider(&self) -> &str;

    /// Default model name of this client (used when [`ChatRequest::model`] is `None`).
    fn model(&self) -> &str;

    /// Answers one chat request. Dropping the future cancels the call.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError>;
}

#[async_trait::async_trait]
impl<T: LlmClient + ?Sized> LlmClient for Arc<T> {
    fn provider(&self) -> &str {
        (**self).provider()
    }

    fn model(&self) -> &str {
        (**self).model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        (**self).chat(request).await
    }
}

#[async_trait::async_trait]
impl<T: LlmClient + ?Sized> LlmClient for Box<T> {
    fn provider(&self) -> &str {
        (**self).provider()
    }

    fn model(&self) -> &str {
        (**self).model()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        (**self).chat(request).await
    }
}
