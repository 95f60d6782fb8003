//! [`OpenAiClient`]: the OpenAI-compatible `/chat/completions` client.
//!
//! One call = wait for the tokens-per-minute budget, then up to `max_retries + 1` HTTP attempts,
//! each holding one of `concurrency` slots only while it is on the wire (backoff sleeps free
//! the slot). Retries are at-least-once: an attempt that timed out may still have been
//! processed (and billed) by the server. Everything a call holds (slot, place in the rate-limit
//! queue) is released by RAII, so dropping the future cancels cleanly; tokens already reserved
//! for a cancelled call stay spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};
use tracing::{Instrument, field};

use crate::error::excerpt;
use crate::rate_limit::TokenBucket;
use crate::retry::{backoff_delay, parse_retry_after};
use crate::tokens::{count_prompt_tokens, default_token_counter};
use crate::{
    ChatRequest, ChatResponse, JsonMode, LlmClient, LlmError, ProviderConfig, ResponseFormat,
    TokenCounter, Usage,
};

/// A client for any server speaking OpenAI's chat-completions API (llama.cpp, vLLM, Ollama,
/// OpenAI, ...).
///
/// - **Retries** on connection errors, timeouts, HTTP 408/429/5xx and invalid 200 answers
///   (local servers glitch under load), with exponential backoff and full jitter; a
///   `Retry-After` on 429/503 (seconds or HTTP date, capped at 60 s) replaces the backoff.
///   Other 4xx fail at once. When retries run out the error is
///   [`LlmError::RetriesExhausted`], whose `last` is the final attempt's error.
/// - **Limits**: at most `concurrency` requests in flight, and at most `tokens_per_minute`
///   (see [`ProviderConfig::tokens_per_minute`]).
/// - **Usage** comes from the answer's `usage`; when the server sends none it is counted with
///   the token counter ([`crate::estimate_tokens`] unless [`Self::with_token_counter`]) and
///   [`ChatResponse::usage_estimated`] is set.
///
/// Clones share the connection pool, the limits and what was learnt about the server.
#[derive(Clone)]
pub struct OpenAiClient {
    config: Arc<ProviderConfig>,
    endpoint: reqwest::Url,
    http: reqwest::Client,
    api_key: Option<Arc<str>>,
    timeout: Duration,
    counter: TokenCounter,
    shared: Arc<Shared>,
}

/// State shared by clones.
struct Shared {
    slots: Semaphore,
    tokens_per_minute: Option<TokenBucket>,
    /// Set once the server rejected `response_format` (see [`JsonMode::Auto`]).
    response_format_unsupported: AtomicBool,
}

impl OpenAiClient {
    /// Builds a client: validates `config` and reads the API key from `api_key_env`.
    ///
    /// Fails with [`LlmError::Config`] for an invalid config or a missing key variable. No
    /// request is sent: an unreachable server shows up on the first call.
    pub fn new(config: ProviderConfig) -> Result<Self, LlmError> {
        let endpoint = config.validate()?;
        let timeout = config.timeout()?;
        let api_key = match &config.api_key_env {
            None => None,
            Some(var) => Some(read_api_key(&config.name, var)?),
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout()?)
            .user_agent(concat!("agentd-llm/", env!("CARGO_PKG_VERSION")));
        if is_loopback(&endpoint) {
            // A proxy from the environment never makes sense for a server on this machine.
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|error| LlmError::Config(format!("cannot build the HTTP client: {error}")))?;
        let shared = Shared {
            slots: Semaphore::new(config.concurrency),
            tokens_per_minute: config.tokens_per_minute.map(TokenBucket::per_minute),
            response_format_unsupported: AtomicBool::new(false),
        };
        Ok(OpenAiClient {
            config: Arc::new(config),
            endpoint,
            http,
            api_key,
            timeout,
            counter: default_token_counter(),
            shared: Arc::new(shared),
        })
    }

    /// Counts tokens with `counter` when the server reports no usage, and for rate-limit
    /// reservations.
    pub fn with_token_counter(mut self, counter: TokenCounter) -> Self {
        self.counter = counter;
        self
    }

    /// Uses `key` as the bearer token, instead of the `api_key_env` variable (for keys from a
    /// secret store).
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Arc::from(key.into()));
        self
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The URL requests are posted to: `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// One whole call: rate limit, attempts, accounting.
    async fn call(
        &self,
        request: &ChatRequest,
        span: &tracing::Span,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let model = request.model.as_deref().unwrap_or(&self.config.model);
        let prompt_estimate = count_prompt_tokens(&*self.counter, &request.messages);
        let reserved = prompt_estimate.saturating_add(request.max_tokens.unwrap_or(0));
        let bucket = self.shared.tokens_per_minute.as_ref();
        if let Some(bucket) = bucket {
            bucket.acquire(reserved).await;
        }

        let (attempts, result) = self.attempts(request, model).await;
        span.record("attempts", attempts);
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                // The prompt was probably processed; the answer never came.
                if let Some(bucket) = bucket {
                    bucket.settle(reserved, prompt_estimate);
                }
                return Err(error);
            }
        };

        let (prompt, completion) = answer
            .usage
            .map_or((None, None), |u| (u.prompt_tokens, u.completion_tokens));
        let usage_estimated = prompt.is_none() || completion.is_none();
        let usage = Usage {
            prompt_tokens: prompt.unwrap_or(prompt_estimate),
            completion_tokens: completion.unwrap_or_else(|| (self.counter)(&answer.content)),
        };
        if let Some(bucket) = bucket {
            bucket.settle(reserved, usage.total());
        }
        span.record("prompt_tokens", usage.prompt_tokens);
        span.record("completion_tokens", usage.completion_tokens);
        span.record("usage_estimated", usage_estimated);
        let latency = started.elapsed();
        tracing::debug!(latency_ms = latency.as_millis() as u64, "LLM call done");
        Ok(ChatResponse {
            content: answer.content,
            model: answer.model.unwrap_or_else(|| model.to_owned()),
            usage,
            usage_estimated,
            finish_reason: answer.finish_reason,
            attempts,
            latency,
            cost_usd: self.config.price.map_or(0.0, |price| price.cost_usd(usage)),
        })
    }

    /// The retry loop. Returns the number of attempts made with the outcome.
    async fn attempts(
        &self,
        request: &ChatRequest,
        model: &str,
    ) -> (u32, Result<Answer, LlmError>) {
        let mut send_format = self.config.json_mode == JsonMode::Auto
            && request.response_format != ResponseFormat::Text
            && !self
                .shared
                .response_format_unsupported
                .load(Ordering::Relaxed);
        let mut body = wire_body(request, model, send_format);
        let (mut attempts, mut retries) = (0, 0);
        loop {
            attempts += 1;
            let Failure { error, retry_after } = match self.attempt(&body).await {
                Ok(answer) => return (attempts, Ok(answer)),
                Err(failure) => failure,
            };
            if send_format && rejects_response_format(&error) {
                self.shared
                    .response_format_unsupported
                    .store(true, Ordering::Relaxed);
                send_format = false;
                body = wire_body(request, model, false);
                tracing::warn!(
                    provider = %self.config.name, error = %error,
                    "the server rejected `response_format`; resending without it, and not \
                     sending it to this server again"
                );
                continue;
            }
            if !error.is_retryable() {
                return (attempts, Err(error));
            }
            if retries >= self.config.max_retries {
                return (
                    attempts,
                    Err(LlmError::RetriesExhausted {
                        attempts,
                        last: Box::new(error),
                    }),
                );
            }
            retries += 1;
            let delay = retry_after.unwrap_or_else(|| {
                backoff_delay(
                    Duration::from_millis(self.config.backoff_base_ms),
                    Duration::from_millis(self.config.backoff_max_ms),
                    retries,
                )
            });
            tracing::warn!(
                provider = %self.config.name, attempt = attempts, delay_ms = delay.as_millis() as u64,
                error = %error, "LLM call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One HTTP attempt, holding a concurrency slot, bounded by the request timeout.
    async fn attempt(&self, body: &[u8]) -> Result<Answer, Failure> {
        let _slot = self
            .shared
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(LlmError::Timeout {
                after: self.timeout,
            }
            .into()),
        }
    }

    async fn exchange(&self, body: &[u8]) -> Result<Answer, Failure> {
        let mut post = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let response = post
            .send()
            .await
            .map_err(|error| self.transport_error(error))?;
        let status = response.status().as_u16();
        let retry_after = match status {
            429 | 503 => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, SystemTime::now())),
            _ => None,
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(error))?;
        if !(200..300).contains(&status) {
            return Err(Failure {
                error: LlmError::Status {
                    status,
                    body: excerpt(&bytes),
                },
                retry_after,
            });
        }
        parse_answer(&bytes).map_err(|message| {
            LlmError::InvalidResponse(format!("POST {}: {message}", self.endpoint)).into()
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> Failure {
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        let error = if error.is_builder() {
            LlmError::Config(format!(
                "cannot build a request to {}: {message}",
                self.endpoint
            ))
        } else if error.is_timeout() && !error.is_connect() {
            LlmError::Timeout {
                after: self.timeout,
            }
        } else {
            LlmError::Connect(format!(
                "POST {} failed: {message}; check that the server is running and that `base_url` \
                 is right",
                self.endpoint
            ))
        };
        error.into()
    }
}

#[async_trait]
impl LlmClient for OpenAiClient {
    fn provider(&self) -> &str {
        &self.config.name
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let span = tracing::info_span!(
            "llm_chat",
            provider = %self.config.name,
            model = %request.model.as_deref().unwrap_or(&self.config.model),
            attempts = field::Empty,
            prompt_tokens = field::Empty,
            completion_tokens = field::Empty,
            usage_estimated = field::Empty,
        );
        self.call(request, &span).instrument(span.clone()).await
    }
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("provider", &self.config.name)
            .field("model", &self.config.model)
            .field("endpoint", &self.endpoint.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A failed attempt, with the server's `Retry-After` when it sent one.
struct Failure {
    error: LlmError,
    retry_after: Option<Duration>,
}

impl From<LlmError> for Failure {
    fn from(error: LlmError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// What an attempt extracted from a chat completion.
struct Answer {
    content: String,
    model: Option<String>,
    finish_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        format!(
            "the body is not JSON ({error}); it starts with: {}",
            excerpt(body)
        )
    })?;
    if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
        return Err(format!(
            "the server reported an error: {}",
            excerpt(error.to_string().as_bytes())
        ));
    }
    let wire: WireResponse = serde_json::from_value(value).map_err(|error| {
        format!(
            "expected `choices[0].message.content` ({error}); the body starts with: {}",
            excerpt(body)
        )
    })?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or("`choices` is empty")?;
    let content = choice
        .message
        .content
        .ok_or("`choices[0].message.content` is missing or null (tool calls are not supported)")?;
    Ok(Answer {
        content,
        model: wire.model,
        finish_reason: choice.finish_reason,
        usage: wire.usage,
    })
}

/// The OpenAI JSON body of `request`.
fn wire_body(request: &ChatRequest, model: &str, with_format: bool) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), json!(request.messages));
    if let Some(temperature) = request.temperature {
        // Through its decimal form, so 0.2f32 is sent as 0.2 and not 0.20000000298023224.
        let temperature = temperature
            .to_string()
            .parse::<f64>()
            .unwrap_or(f64::from(temperature));
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(max_tokens) = request.max_tokens {
        body.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(seed) = request.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if with_format {
        let format = match &request.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(json!({"type": "json_object"})),
            ResponseFormat::JsonSchema { name, schema } => Some(json!({
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": true},
            })),
        };
        if let Some(format) = format {
            body.insert("response_format".into(), format);
        }
    }
    serde_json::to_vec(&Value::Object(body)).expect("a JSON value always serializes")
}

/// Whether `error` says the server does not support `response_format`.
fn rejects_response_format(error: &LlmError) -> bool {
    let LlmError::Status {
        status: 400 | 422,
        body,
    } = error
    else {
        return false;
    };
    let body = body.to_ascii_lowercase();
    ["response_format", "json_schema", "grammar"]
        .iter()
        .any(|word| body.contains(word))
}

fn read_api_key(provider: &str, var: &str) -> Result<Arc<str>, LlmError> {
    match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => Ok(Arc::from(key.trim())),
        Ok(_) => Err(LlmError::Config(format!(
            "provider `{provider}`: the environment variable `{var}` (named by `api_key_env`) \
             is empty; set it to the API key"
        ))),
        Err(_) => Err(LlmError::Config(format!(
            "provider `{provider}`: the environment variable `{var}` (named by `api_key_env`) \
             is not set; export it with the API key, or remove `api_key_env` for a server \
             without authentication"
        ))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn wire_body_follows_the_openai_shape() {
        let request = ChatRequest::new(vec![Message::system("s"), Message::user("u")])
            .with_temperature(0.2)
            .with_max_tokens(10)
            .with_seed(42)
            .with_stop("END")
            .with_json_schema("answer", json!({"type": "object"}));
        let body: Value = serde_json::from_slice(&wire_body(&request, "m", true)).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                "temperature": 0.2,
                "max_tokens": 10,
                "seed": 42,
                "stop": ["END"],
                "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
            })
        );
        let plain: Value = serde_json::from_slice(&wire_body(&request, "m", false)).unwrap();
        assert!(plain.get("response_format").is_none());
        let minimal: Value =
            serde_json::from_slice(&wire_body(&ChatRequest::new(vec![]), "m", true)).unwrap();
        assert_eq!(minimal, json!({"model": "m", "messages": []}));
    }

    #[test]
    fn answers_are_parsed_or_explained() {
        let answer = parse_answer(br#"{"model":"x","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).ok().unwrap();
        assert_eq!(
            (answer.content.as_str(), answer.model.as_deref()),
            ("hi", Some("x"))
        );
        assert_eq!(answer.usage.and_then(|u| u.completion_tokens), Some(1));
        let not_json = parse_answer(b"<html>oops").err().unwrap();
        assert!(
            not_json.contains("not JSON") && not_json.contains("<html>oops"),
            "{not_json}"
        );
        let error = parse_answer(br#"{"error":{"message":"model not loaded"}}"#)
            .err()
            .unwrap();
        assert!(error.contains("model not loaded"), "{error}");
        assert!(
            parse_answer(br#"{"choices":[]}"#)
                .err()
                .unwrap()
                .contains("empty")
        );
        assert!(
            parse_answer(br#"{"choices":[{"message":{"content":null}}]}"#)
                .err()
                .unwrap()
                .contains("null")
        );
    }

    #[test]
    fn response_format_rejection_is_recognised() {
        let rejected = |status, body: &str| {
            rejects_response_format(&LlmError::Status {
                status,
                body: body.into(),
            })
        };
        assert!(rejected(400, "Unsupported param: Response_Format"));
        assert!(rejected(422, "json_schema not supported"));
        assert!(rejected(400, "failed to parse grammar"));
        assert!(!rejected(400, "context length exceeded"));
        assert!(!rejected(500, "response_format"));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(is_loopback(&url("http://127.0.0.1:8080/v1")));
        assert!(is_loopback(&url("http://localhost/v1")));
        assert!(is_loopback(&url("http://[::1]:80/v1")));
        assert!(!is_loopback(&url("https://api.openai.com/v1")));
    }
}
