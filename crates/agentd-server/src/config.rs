//! The daemon's configuration: `agentd.toml`, with every setting also settable from the
//! environment (or the command line) through [`ConfigOverrides`].
//!
//! Precedence: command line / environment > file > defaults. The file rejects unknown keys, so
//! a typo is an error, not a silently ignored setting. [`ServerConfig::check`] enforces the
//! security rule: listening beyond loopback requires at least one bearer token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agentd_llm::ProviderConfig;
use serde::{Deserialize, Serialize};

use crate::ServerError;

/// Where the local LLM server of `scripts/local-llm.sh` listens by default.
pub const DEFAULT_LLM_URL: &str = "http://127.0.0.1:8088/v1";
/// The model name the local server answers to.
pub const DEFAULT_MODEL: &str = "smollm2";
/// The default listen address (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The daemon's configuration (`agentd.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8787`; anything beyond loopback needs tokens.
    pub listen: SocketAddr,
    /// Data folder: memory (`memory/`) and the run journal (`runs/`).
    pub data_dir: PathBuf,
    /// Folder of workflow files that `POST /v1/runs` can name.
    pub workflows_dir: PathBuf,
    /// Folder of role files for inline workflows (named workflows use their own `roles` key).
    pub roles_dir: PathBuf,
    /// The LLM provider (an OpenAI-compatible server): base URL, model, API key variable,
    /// timeouts, retries, concurrency, tokens per minute, prices.
    pub llm: ProviderConfig,
    /// Use this model for every call, whatever the workflows and roles say.
    pub model_override: Option<String>,
    /// Request and load limits.
    pub limits: Limits,
    /// Bearer tokens, each belonging to a tenant. Empty: no authentication (loopback only).
    pub tokens: Vec<TokenEntry>,
    /// Seconds a SIGTERM waits for nodes in flight to checkpoint before the journal closes.
    pub drain_secs: f64,
    /// Group commit: how long durable writes wait for company under load.
    pub commit: Commit,
}

/// Group-commit settings: under load, a durable write may wait a little for others to share
/// its fsync (less CPU and more throughput, a little latency). Zero delays never wait.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Commit {
    /// Longest wait of a checkpoint for others, in ms, when at least `checkpoint_siblings`
    /// other runs are active and checkpoints arrive faster than two per delay.
    pub checkpoint_delay_ms: f64,
    /// Other active runs from which checkpoints wait for company.
    pub checkpoint_siblings: usize,
    /// Longest wait of a memory write for the writes already under way, in ms.
    pub store_delay_ms: f64,
}

/// The daemon's default [`Commit::checkpoint_delay_ms`]: shorter than the runtime's (2 ms,
/// chosen for CPU-bound runs), because a daemon's runs mostly wait for their LLM, and a
/// checkpoint's wait is then latency with little to share. Measured with `agentd bench serve`
/// (32 run slots, 2 cores): 0.5 ms against 2 ms took checkpoint p99 from ~4.5 to ~2.5 ms and
/// node overhead p90 from ~4.3 to ~3.3 ms, at no more CPU.
pub const DEFAULT_CHECKPOINT_DELAY_MS: f64 = 0.5;

impl Default for Commit {
    fn default() -> Self {
        Commit {
            checkpoint_delay_ms: DEFAULT_CHECKPOINT_DELAY_MS,
            checkpoint_siblings: agentd_runtime::journal::DEFAULT_COMMIT_SIBLINGS,
            store_delay_ms: agentd_memory::DEFAULT_COMMIT_DELAY.as_secs_f64() * 1e3,
        }
    }
}

impl Commit {
    /// The checkpoint delay as a duration (checked by [`ServerConfig::check`]).
    pub fn checkpoint_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.checkpoint_delay_ms.clamp(0.0, 1e3) / 1e3)
    }

    /// The store delay as a duration (checked by [`ServerConfig::check`]).
    pub fn store_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.store_delay_ms.clamp(0.0, 1e3) / 1e3)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            data_dir: PathBuf::from(".agentd"),
            workflows_dir: PathBuf::from("workflows"),
            roles_dir: PathBuf::from("agents"),
            llm: ProviderConfig::new(DEFAULT_LLM_URL, DEFAULT_MODEL),
            model_override: None,
            limits: Limits::default(),
            tokens: Vec::new(),
            drain_secs: 7.0,
            commit: Commit::default(),
        }
    }
}

/// Request and load limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest run input, in bytes.
    pub max_input_bytes: usize,
    /// Largest document text, in bytes.
    pub max_document_bytes: usize,
    /// Most documents per run.
    pub max_documents: usize,
    /// Most runs waiting for a run slot; beyond, `POST /v1/runs` answers 429.
    pub queue_capacity: usize,
    /// Most runs executing nodes at once.
    pub max_running: usize,
    /// The `Retry-After` (seconds) of a 429.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_input_bytes: 64 << 10,
            max_document_bytes: 256 << 10,
            max_documents: 1000,
            queue_capacity: 2048,
            max_running: 64,
            retry_after_secs: 1,
        }
    }
}

/// One bearer token and its tenant.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The tenant the token acts for.
    pub tenant: String,
    /// The token itself.
    #[serde(default)]
    pub token: Option<String>,
    /// The environment variable holding the token (keeps secrets out of the file).
    #[serde(default)]
    pub token_env: Option<String>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("tenant", &self.tenant)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// Settings from the command line or the environment, applied over the file.
#[derive(Clone, Debug, Default)]
pub struct ConfigOverrides {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `workflows_dir`.
    pub workflows_dir: Option<PathBuf>,
    /// `roles_dir`.
    pub roles_dir: Option<PathBuf>,
    /// `llm.base_url`.
    pub llm_url: Option<String>,
    /// `llm.model` (and `model_override`).
    pub model: Option<String>,
    /// `llm.api_key_env`.
    pub api_key_env: Option<String>,
    /// `llm.timeout_secs`.
    pub llm_timeout_secs: Option<f64>,
    /// `llm.concurrency`.
    pub llm_concurrency: Option<usize>,
    /// `llm.tokens_per_minute`.
    pub llm_tokens_per_minute: Option<u32>,
    /// `limits.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// `limits.max_input_bytes`.
    pub max_input_bytes: Option<usize>,
    /// `limits.max_document_bytes`.
    pub max_document_bytes: Option<usize>,
    /// `limits.max_documents`.
    pub max_documents: Option<usize>,
    /// `limits.queue_capacity`.
    pub queue_capacity: Option<usize>,
    /// `limits.max_running`.
    pub max_running: Option<usize>,
    /// `limits.retry_after_secs`.
    pub retry_after_secs: Option<u64>,
    /// `llm.max_retries`.
    pub llm_max_retries: Option<u32>,
    /// Tokens as `tenant:token` pairs, added to the file's.
    pub tokens: Vec<String>,
    /// `drain_secs`.
    pub drain_secs: Option<f64>,
    /// `commit.checkpoint_delay_ms`.
    pub checkpoint_delay_ms: Option<f64>,
    /// `commit.checkpoint_siblings`.
    pub checkpoint_siblings: Option<usize>,
    /// `commit.store_delay_ms`.
    pub store_delay_ms: Option<f64>,
}

impl ServerConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<ServerConfig, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Config(format!("reading the config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| ServerError::Config(format!("in the config file {}: {e}", path.display())))
    }

    /// Applies command-line and environment settings over this configuration.
    pub fn apply(&mut self, o: ConfigOverrides) -> Result<(), ServerError> {
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(self.listen, o.listen);
        set!(self.data_dir, o.data_dir);
        set!(self.workflows_dir, o.workflows_dir);
        set!(self.roles_dir, o.roles_dir);
        set!(self.llm.base_url, o.llm_url);
        if let Some(model) = o.model {
            self.llm.model = model.clone();
            self.model_override = Some(model);
        }
        if o.api_key_env.is_some() {
            self.llm.api_key_env = o.api_key_env;
        }
        set!(self.llm.timeout_secs, o.llm_timeout_secs);
        set!(self.llm.concurrency, o.llm_concurrency);
        if o.llm_tokens_per_minute.is_some() {
            self.llm.tokens_per_minute = o.llm_tokens_per_minute;
        }
        set!(self.limits.max_body_bytes, o.max_body_bytes);
        set!(self.limits.max_input_bytes, o.max_input_bytes);
        set!(self.limits.max_document_bytes, o.max_document_bytes);
        set!(self.limits.max_documents, o.max_documents);
        set!(self.limits.queue_capacity, o.queue_capacity);
        set!(self.limits.max_running, o.max_running);
        set!(self.limits.retry_after_secs, o.retry_after_secs);
        set!(self.llm.max_retries, o.llm_max_retries);
        set!(self.drain_secs, o.drain_secs);
        set!(self.commit.checkpoint_delay_ms, o.checkpoint_delay_ms);
        set!(self.commit.checkpoint_siblings, o.checkpoint_siblings);
        set!(self.commit.store_delay_ms, o.store_delay_ms);
        for pair in o.tokens {
            let (tenant, token) = pair.split_once(':').ok_or_else(|| {
                ServerError::Config(
                    "a token must be given as TENANT:TOKEN (AGENTD_TOKENS=acme:s3cret,beta:...)"
                        .into(),
                )
            })?;
            self.tokens.push(TokenEntry {
                tenant: tenant.trim().to_owned(),
                token: Some(token.trim().to_owned()),
                token_env: None,
            });
        }
        Ok(())
    }

    /// The tokens as `(token, tenant)` pairs, reading `token_env` variables; checks them.
    pub fn resolved_tokens(&self) -> Result<Vec<(String, String)>, ServerError> {
        let mut out = Vec::new();
        for entry in &self.tokens {
            let tenant = entry.tenant.trim();
            if tenant.is_empty()
                || !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(ServerError::Config(format!(
                    "tenant `{tenant}`: use letters, digits, `_`, `-` and `.`"
                )));
            }
            let token = match (&entry.token, &entry.token_env) {
                (Some(t), None) => t.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    ServerError::Config(format!(
                        "tenant `{tenant}`: the token variable `{var}` is not set"
                    ))
                })?,
                _ => {
                    return Err(ServerError::Config(format!(
                        "tenant `{tenant}`: give exactly one of `token` and `token_env`"
                    )));
                }
            };
            if token.len() < 16 {
                return Err(ServerError::Config(format!(
                    "tenant `{tenant}`: a token must be at least 16 characters long"
                )));
            }
            if out.iter().any(|(t, _)| *t == token) {
                return Err(ServerError::Config(format!(
                    "tenant `{tenant}`: the same token is given twice"
                )));
            }
            out.push((token, tenant.to_owned()));
        }
        Ok(out)
    }

    /// Checks the configuration as a whole (the security rule, limits that must be positive).
    pub fn check(&self) -> Result<(), ServerError> {
        let tokens = self.resolved_tokens()?;
        if tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ServerError::Config(format!(
                "listening on {} (beyond loopback) requires bearer tokens: add [[tokens]] \
                 entries to agentd.toml or set AGENTD_TOKENS=tenant:token",
                self.listen
            )));
        }
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_input_bytes", l.max_input_bytes),
            ("limits.max_document_bytes", l.max_document_bytes),
            ("limits.queue_capacity", l.queue_capacity),
            ("limits.max_running", l.max_running),
        ] {
            if value == 0 {
                return Err(ServerError::Config(format!("{name} must be at least 1")));
            }
        }
        if !(self.drain_secs.is_finite() && self.drain_secs >= 0.0) {
            return Err(ServerError::Config(
                "drain_secs must be a number of seconds".into(),
            ));
        }
        for (name, ms) in [
            (
                "commit.checkpoint_delay_ms",
                self.commit.checkpoint_delay_ms,
            ),
            ("commit.store_delay_ms", self.commit.store_delay_ms),
        ] {
            if !(ms.is_finite() && (0.0..=1000.0).contains(&ms)) {
                return Err(ServerError::Config(format!(
                    "{name} must be between 0 and 1000 (milliseconds), got {ms}"
                )));
            }
        }
        self.llm
            .validate()
            .map_err(|e| ServerError::Config(format!("[llm]: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_and_overrides() {
        let mut config: ServerConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:9000"
            data_dir = "/tmp/x"
            [limits]
            max_running = 3
            [[tokens]]
            tenant = "acme"
            token = "0123456789abcdef"
            "#,
        )
        .unwrap();
        assert_eq!(config.limits.max_running, 3);
        assert_eq!(
            config.limits.queue_capacity,
            Limits::default().queue_capacity
        );
        config
            .apply(ConfigOverrides {
                max_running: Some(5),
                tokens: vec!["beta:fedcba9876543210".into()],
                ..ConfigOverrides::default()
            })
            .unwrap();
        assert_eq!(config.limits.max_running, 5);
        assert_eq!(config.resolved_tokens().unwrap().len(), 2);
        config.check().unwrap();
    }

    #[test]
    fn unknown_keys_and_open_listening_without_tokens_are_errors() {
        assert!(toml::from_str::<ServerConfig>("listn = \"x\"").is_err());
        let config = ServerConfig {
            listen: "0.0.0.0:8787".parse().unwrap(),
            ..ServerConfig::default()
        };
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("requires bearer tokens"), "{err}");
    }

    #[test]
    fn commit_settings_from_the_file_and_overrides_and_their_checks() {
        let mut config: ServerConfig = toml::from_str(
            r#"
            [commit]
            checkpoint_delay_ms = 0
            store_delay_ms = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(config.commit.checkpoint_delay(), std::time::Duration::ZERO);
        assert_eq!(
            config.commit.store_delay(),
            std::time::Duration::from_micros(500)
        );
        assert_eq!(
            config.commit.checkpoint_siblings,
            agentd_runtime::journal::DEFAULT_COMMIT_SIBLINGS
        );
        config.check().unwrap();
        config
            .apply(ConfigOverrides {
                checkpoint_siblings: Some(4),
                store_delay_ms: Some(-1.0),
                ..ConfigOverrides::default()
            })
            .unwrap();
        assert_eq!(config.commit.checkpoint_siblings, 4);
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("commit.store_delay_ms"), "{err}");
        assert!(toml::from_str::<ServerConfig>("[commit]\ndelay = 1").is_err());
        let defaults = ServerConfig::default();
        assert_eq!(
            defaults.commit.checkpoint_delay(),
            std::time::Duration::from_micros(500)
        );
        assert_eq!(
            defaults.commit.store_delay(),
            agentd_memory::DEFAULT_COMMIT_DELAY
        );
    }
}
