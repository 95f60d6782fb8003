//! [`ScriptedClient`]: a deterministic, offline [`LlmClient`] for tests of orchestration.
//!
//! Replies come from a closure or a fixed queue; usage is counted locally like a server that
//! reports none. It never touches the network, so tests built on it are fast and exact.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use tokio::time::{Duration, Instant};

use crate::tokens::{count_prompt_tokens, default_token_counter};
use crate::{ChatRequest, ChatResponse, LlmClient, LlmError, Price, TokenCounter, Usage};

type Script = Box<dyn Fn(&ChatRequest) -> Result<String, LlmError> + Send + Sync>;

/// An [`LlmClient`] whose answers are scripted.
///
/// ```
/// use agentd_llm::{ChatRequest, LlmClient, Message, ScriptedClient};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let client = ScriptedClient::new(|request: &ChatRequest| {
///     Ok(format!("echo: {}", request.messages.last().unwrap().content))
/// });
/// let response = client.chat(&ChatRequest::new(vec![Message::user("hi")])).await.unwrap();
/// assert_eq!(response.content, "echo: hi");
/// assert_eq!(client.calls(), 1);
/// # });
/// ```
pub struct ScriptedClient {
    script: Script,
    provider: String,
    model: String,
    latency: Duration,
    counter: TokenCounter,
    price: Option<Price>,
    calls: AtomicUsize,
    recorded: Option<Mutex<Vec<ChatRequest>>>,
}

impl ScriptedClient {
    /// A client answering each request with `script(request)`.
    pub fn new(
        script: impl Fn(&ChatRequest) -> Result<String, LlmError> + Send + Sync + 'static,
    ) -> Self {
        ScriptedClient {
            script: Box::new(script),
            provider: "scripted".to_owned(),
            model: "scripted".to_owned(),
            latency: Duration::ZERO,
            counter: default_token_counter(),
            price: None,
            calls: AtomicUsize::new(0),
            recorded: None,
        }
    }

    /// A client answering with `replies` in order. Once they are used up, every call fails
    /// with [`LlmError::Config`] saying so (an unexpected extra call is a test bug, not
    /// something to paper over by cycling).
    pub fn replies<S: Into<String>>(replies: impl IntoIterator<Item = S>) -> Self {
        ScriptedClient::results(replies.into_iter().map(|reply| Ok(reply.into())))
    }

    /// Like [`Self::replies`], but each step may be an error (e.g. to test retries upstream).
    pub fn results(results: impl IntoIterator<Item = Result<String, LlmError>>) -> Self {
        let queue: VecDeque<_> = results.into_iter().collect();
        let scripted = queue.len();
        let queue = Mutex::new(queue);
        ScriptedClient::new(move |_request: &ChatRequest| {
            queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
                .unwrap_or_else(|| {
                    Err(LlmError::Config(format!(
                        "ScriptedClient: all {scripted} scripted replies are used up; script more \
                     replies or expect fewer calls"
                    )))
                })
        })
    }

    /// Waits `latency` (tokio time, so paused-time tests stay instant) before each answer.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Reports `model` as the default model (default: `"scripted"`).
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Reports `provider` as the provider name (default: `"scripted"`).
    pub fn with_provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }

    /// Counts usage with `counter` instead of [`crate::estimate_tokens`].
    pub fn with_token_counter(mut self, counter: TokenCounter) -> Self {
        self.counter = counter;
        self
    }

    /// Computes `cost_usd` with `price` (default: cost 0).
    pub fn with_price(mut self, price: Price) -> Self {
        self.price = Some(price);
        self
    }

    /// Keeps a copy of every request, for [`Self::requests`].
    pub fn recording(mut self) -> Self {
        self.recorded = Some(Mutex::new(Vec::new()));
        self
    }

    /// Calls made so far (failed ones included).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The requests received, in order; empty unless built with [`Self::recording`].
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.recorded
            .as_ref()
            .map(|recorded| {
                recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl LlmClient for ScriptedClient {
    fn provider(&self) -> &str {
        &self.provider
    }

    fn model(&self) -> &str {
        &self.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(recorded) = &self.recorded {
            recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(request.clone());
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let content = (self.script)(request)?;
        let usage = Usage {
            prompt_tokens: count_prompt_tokens(&*self.counter, &request.messages),
            completion_tokens: (self.counter)(&content),
        };
        Ok(ChatResponse {
            content,
            model: request.model.clone().unwrap_or_else(|| self.model.clone()),
            usage,
            usage_estimated: true,
            finish_reason: Some("stop".to_owned()),
            attempts: 1,
            latency: started.elapsed(),
            cost_usd: self.price.map_or(0.0, |price| price.cost_usd(usage)),
        })
    }
}

impl std::fmt::Debug for ScriptedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedClient")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    fn ask(text: &str) -> ChatRequest {
        ChatRequest::new(vec![Message::user(text)])
    }

    #[tokio::test]
    async fn replies_in_order_then_fail() {
        let client = ScriptedClient::replies(["one", "two"]).with_model("m");
        assert_eq!(client.chat(&ask("a")).await.unwrap().content, "one");
        let second = client.chat(&ask("b").with_model("other")).await.unwrap();
        assert_eq!(
            (second.content.as_str(), second.model.as_str()),
            ("two", "other")
        );
        let error = client.chat(&ask("c")).await.unwrap_err();
        assert!(
            matches!(&error, LlmError::Config(message) if message.contains("2 scripted replies")),
            "{error}"
        );
        assert_eq!(client.calls(), 3);
        assert_eq!(client.model(), "m");
    }

    #[tokio::test]
    async fn scripted_errors_are_returned_as_is() {
        let client = ScriptedClient::results([
            Err(LlmError::Timeout {
                after: Duration::from_secs(1),
            }),
            Ok("ok".into()),
        ]);
        assert_eq!(
            client.chat(&ask("a")).await.unwrap_err(),
            LlmError::Timeout {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(client.chat(&ask("a")).await.unwrap().content, "ok");
    }

    #[tokio::test]
    async fn usage_cost_and_recording() {
        let words: TokenCounter =
            std::sync::Arc::new(|text: &str| text.split_whitespace().count() as u32);
        let client = ScriptedClient::new(|_: &ChatRequest| Ok("a b c d".to_owned()))
            .with_token_counter(words)
            .with_price(Price {
                prompt_per_million_usd: 1e6,
                completion_per_million_usd: 0.0,
            })
            .recording();
        let response = client.chat(&ask("x y")).await.unwrap();
        assert_eq!(response.usage, Usage::new(3 + 3 + 2, 4));
        assert!(response.usage_estimated);
        assert_eq!(response.cost_usd, 8.0);
        assert_eq!(client.requests(), vec![ask("x y")]);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_simulated() {
        let client = ScriptedClient::replies(["ok"]).with_latency(Duration::from_secs(3));
        let response = client.chat(&ask("a")).await.unwrap();
        assert_eq!(response.latency, Duration::from_secs(3));
    }
}
