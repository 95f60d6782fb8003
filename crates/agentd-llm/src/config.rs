//! How a provider is reached and limited: the `[llm]`-style table of agentd's TOML config.
//!
//! Typed and strict (`deny_unknown_fields`), with a documented default for everything but the
//! URL and the model, so a two-line table is a working config and a typo is an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{LlmError, Usage};

/// The configuration of one OpenAI-compatible provider.
///
/// ```
/// let config: agentd_llm::ProviderConfig = serde_json::from_str(
///     r#"{"base_url": "http://127.0.0.1:8080/v1", "model": "qwen2.5-7b-instruct"}"#,
/// ).unwrap();
/// assert_eq!(config.max_retries, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in usage accounting, metrics and logs. Default: `"default"`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Base URL of the API *including* its prefix, e.g. `http://127.0.0.1:8080/v1` or
    /// `https://api.openai.com/v1`; requests go to `{base_url}/chat/completions` (a trailing
    /// `/` is ignored, nothing is appended). Required.
    pub base_url: String,
    /// Default model name, sent as `model`. Required.
    pub model: String,
    /// Name of the environment variable holding the API key, sent as `Authorization: Bearer`.
    /// Default: none (no auth header). If set, the variable must exist when the client is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Time allowed for one HTTP attempt, from sending to the last byte of the answer, in
    /// seconds (fractions allowed). Default: 120.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: f64,
    /// Time allowed to open a connection, in seconds (fractions allowed). Default: 5.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: f64,
    /// Retries after a retryable failure (so at most `max_retries + 1` attempts). Default: 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Backoff before retry `n` is uniform in `[0, min(backoff_max_ms, backoff_base_ms·2^(n-1))]`
    /// ("full jitter"), unless the server sent `Retry-After`. Default: 250.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Upper bound of the backoff, in milliseconds. Default: 8000.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Maximum HTTP requests in flight at once through this client (and its clones). Default: 4.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Tokens (prompt + completion) allowed per minute; default: no limit.
    ///
    /// A token bucket holding one minute of allowance, refilled continuously. Each call
    /// reserves its estimated prompt tokens plus `max_tokens` before sending (waiting, in
    /// arrival order, while the bucket is short) and corrects the reservation to the actual
    /// usage afterwards. A call larger than the whole allowance is let through once the bucket
    /// is full, leaving it in debt, so it cannot deadlock and the average rate still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Prices used to compute `cost_usd`; default: none (cost 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Whether JSON response formats are sent to the server. Default: `auto`.
    #[serde(default)]
    pub json_mode: JsonMode,
}

/// What a provider charges, per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars per million prompt tokens.
    pub prompt_per_million_usd: f64,
    /// US dollars per million completion tokens.
    pub completion_per_million_usd: f64,
}

impl Price {
    /// The cost of `usage` in US dollars.
    pub fn cost_usd(&self, usage: Usage) -> f64 {
        (f64::from(usage.prompt_tokens) * self.prompt_per_million_usd
            + f64::from(usage.completion_tokens) * self.completion_per_million_usd)
            / 1_000_000.0
    }
}

/// Whether the client sends `response_format` to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonMode {
    /// Send it when the request asks for JSON. If the server rejects it (HTTP 400/422 whose
    /// body mentions `response_format`, `json_schema` or `grammar`), resend once without it and
    /// stop sending it to this server for the life of the client.
    #[default]
    Auto,
    /// Never send it (for servers known not to support it).
    Off,
}

fn default_name() -> String {
    "default".to_owned()
}
fn default_timeout_secs() -> f64 {
    120.0
}
fn default_connect_timeout_secs() -> f64 {
    5.0
}
fn default_max_retries() -> u32 {
    3
}
fn default_backoff_base_ms() -> u64 {
    250
}
fn default_backoff_max_ms() -> u64 {
    8000
}
fn default_concurrency() -> usize {
    4
}

impl ProviderConfig {
    /// A config for `model` at `base_url`, every other field at its default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ProviderConfig {
            name: default_name(),
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            timeout_secs: default_timeout_secs(),
            connect_timeout_secs: default_connect_timeout_secs(),
            max_retries: default_max_retries(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            concurrency: default_concurrency(),
            tokens_per_minute: None,
            price: None,
            json_mode: JsonMode::default(),
        }
    }

    /// Checks everything that can be checked without the environment or the network, and
    /// returns the chat-completions endpoint.
    pub fn validate(&self) -> Result<reqwest::Url, LlmError> {
        let name = &self.name;
        if self.model.trim().is_empty() {
            return Err(LlmError::Config(format!(
                "provider `{name}`: `model` is empty"
            )));
        }
        self.timeout()?;
        self.connect_timeout()?;
        if self.concurrency == 0 {
            return Err(LlmError::Config(format!(
                "provider `{name}`: `concurrency` must be at least 1"
            )));
        }
        if self.tokens_per_minute == Some(0) {
            return Err(LlmError::Config(format!(
                "provider `{name}`: `tokens_per_minute` must be at least 1 (omit it for no limit)"
            )));
        }
        let endpoint = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&endpoint).map_err(|error| {
            LlmError::Config(format!(
                "provider `{name}`: `base_url` {:?} is not a URL ({error}); expected something \
                 like \"http://127.0.0.1:8080/v1\"",
                self.base_url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(LlmError::Config(format!(
                "provider `{name}`: `base_url` {:?} must be an http:// or https:// URL with a host",
                self.base_url
            )));
        }
        Ok(url)
    }

    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Result<Duration, LlmError> {
        seconds(&self.name, "timeout_secs", self.timeout_secs)
    }

    /// `connect_timeout_secs` as a duration.
    pub fn connect_timeout(&self) -> Result<Duration, LlmError> {
        seconds(
            &self.name,
            "connect_timeout_secs",
            self.connect_timeout_secs,
        )
    }
}

fn seconds(provider: &str, field: &str, value: f64) -> Result<Duration, LlmError> {
    match Duration::try_from_secs_f64(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(LlmError::Config(format!(
            "provider `{provider}`: `{field}` must be a positive number of seconds, got {value}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_toml_gets_documented_defaults() {
        let config: ProviderConfig =
            toml::from_str("base_url = \"http://127.0.0.1:8080/v1\"\nmodel = \"m\"\n").unwrap();
        assert_eq!(config, ProviderConfig::new("http://127.0.0.1:8080/v1", "m"));
        assert_eq!(config.name, "default");
        assert_eq!(config.timeout().unwrap(), Duration::from_secs(120));
        assert_eq!(config.connect_timeout().unwrap(), Duration::from_secs(5));
        assert_eq!(
            (
                config.max_retries,
                config.backoff_base_ms,
                config.backoff_max_ms
            ),
            (3, 250, 8000)
        );
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.json_mode, JsonMode::Auto);
        assert_eq!(config.tokens_per_minute, None);
    }

    #[test]
    fn full_toml_round_trips() {
        let text = r#"
            name = "local"
            base_url = "http://127.0.0.1:8080/v1/"
            model = "m"
            api_key_env = "LOCAL_KEY"
            timeout_secs = 0.5
            connect_timeout_secs = 1
            tokens_per_minute = 60000
            price = { prompt_per_million_usd = 0.5, completion_per_million_usd = 1.5 }
            json_mode = "off"
        "#;
        let config: ProviderConfig = toml::from_str(text).unwrap();
        assert_eq!(config.timeout().unwrap(), Duration::from_millis(500));
        assert_eq!(config.json_mode, JsonMode::Off);
        let back: ProviderConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert_eq!(
            config.validate().unwrap().as_str(),
            "http://127.0.0.1:8080/v1/chat/completions",
            "a trailing slash is ignored"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let error = toml::from_str::<ProviderConfig>(
            "base_url = \"http://x/v1\"\nmodel = \"m\"\ntimeout = 3\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `timeout`"),
            "{error}"
        );
    }

    #[test]
    fn validation_explains_what_is_wrong() {
        let bad_url = ProviderConfig::new("127.0.0.1:8080", "m")
            .validate()
            .unwrap_err();
        assert!(
            bad_url.to_string().contains("http://127.0.0.1:8080/v1"),
            "{bad_url}"
        );
        let mut config = ProviderConfig::new("http://127.0.0.1:8080/v1", "m");
        config.timeout_secs = 0.0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("timeout_secs")
        );
        config.timeout_secs = 1.0;
        config.concurrency = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("concurrency")
        );
        config.concurrency = 1;
        config.tokens_per_minute = Some(0);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("tokens_per_minute")
        );
    }

    #[test]
    fn price_is_per_million() {
        let price = Price {
            prompt_per_million_usd: 1.0,
            completion_per_million_usd: 2.0,
        };
        let cost = price.cost_usd(Usage::new(1000, 500));
        assert!((cost - 0.002).abs() < 1e-12, "{cost}");
    }
}
