//! `agentd serve`: the daemon (see `crates/agentd-server` and docs/server.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use agentd_server::{ConfigOverrides, Server, ServerConfig};
use anyhow::Context;

/// `agentd serve` arguments. Every option can also come from the environment variable shown,
/// and from `agentd.toml` (the command line and the environment win over the file).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The configuration file (TOML; see docs/server.md). Default: ./agentd.toml if present.
    #[arg(long, env = "AGENTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [file: listen; default 127.0.0.1:8787]. Listening beyond loopback
    /// requires tokens.
    #[arg(long, env = "AGENTD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data folder: memory and the run journal [file: data_dir; default .agentd].
    #[arg(long, env = "AGENTD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of the workflows runs can name [file: workflows_dir; default workflows].
    #[arg(long, env = "AGENTD_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Folder of role files for inline workflows [file: roles_dir; default agents].
    #[arg(long, env = "AGENTD_ROLES_DIR")]
    pub roles_dir: Option<PathBuf>,
    /// OpenAI-compatible base URL, including /v1 [file: llm.base_url; default
    /// http://127.0.0.1:8088/v1, the server of scripts/local-llm.sh].
    #[arg(long, env = "AGENTD_LLM_URL")]
    pub llm_url: Option<String>,
    /// Model for every call, overriding workflows and roles [file: llm.model, model_override].
    #[arg(long, env = "AGENTD_LLM_MODEL")]
    pub model: Option<String>,
    /// Name of the environment variable holding the LLM API key [file: llm.api_key_env].
    #[arg(long, env = "AGENTD_LLM_API_KEY_ENV")]
    pub api_key_env: Option<String>,
    /// Timeout of one LLM call, in seconds [file: llm.timeout_secs].
    #[arg(long, env = "AGENTD_LLM_TIMEOUT")]
    pub llm_timeout: Option<f64>,
    /// LLM calls in flight at once [file: llm.concurrency; default 4].
    #[arg(long, env = "AGENTD_LLM_CONCURRENCY")]
    pub llm_concurrency: Option<usize>,
    /// LLM tokens per minute (prompt + completion) [file: llm.tokens_per_minute; default none].
    #[arg(long, env = "AGENTD_LLM_TOKENS_PER_MINUTE")]
    pub llm_tokens_per_minute: Option<u32>,
    /// Largest request body in bytes [file: limits.max_body_bytes; default 4 MiB].
    #[arg(long, env = "AGENTD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest run input in bytes [file: limits.max_input_bytes; default 64 KiB].
    #[arg(long, env = "AGENTD_MAX_INPUT_BYTES")]
    pub max_input_bytes: Option<usize>,
    /// Largest document text in bytes [file: limits.max_document_bytes; default 256 KiB].
    #[arg(long, env = "AGENTD_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<usize>,
    /// Most documents per run [file: limits.max_documents; default 1000].
    #[arg(long, env = "AGENTD_MAX_DOCUMENTS")]
    pub max_documents: Option<usize>,
    /// Most runs waiting for a run slot; beyond, 429 [file: limits.queue_capacity; default 2048].
    #[arg(long, env = "AGENTD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Most runs executing at once [file: limits.max_running; default 64].
    #[arg(long, env = "AGENTD_MAX_RUNNING")]
    pub max_running: Option<usize>,
    /// The Retry-After (seconds) of a 429 [file: limits.retry_after_secs; default 1].
    #[arg(long, env = "AGENTD_RETRY_AFTER_SECS")]
    pub retry_after_secs: Option<u64>,
    /// Retries of a failed LLM call [file: llm.max_retries; default 3].
    #[arg(long, env = "AGENTD_LLM_MAX_RETRIES")]
    pub llm_max_retries: Option<u32>,
    /// Bearer tokens as TENANT:TOKEN, comma-separated (tokens of at least 16 characters)
    /// [file: [[tokens]] tenant, token or token_env].
    #[arg(
        long,
        env = "AGENTD_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tokens: Vec<String>,
    /// Seconds SIGTERM waits for nodes in flight to checkpoint [file: drain_secs; default 7].
    #[arg(long, env = "AGENTD_DRAIN_SECS")]
    pub drain_secs: Option<f64>,
    /// Longest wait (ms) of a checkpoint for others to share its fsync, under load; 0 never
    /// waits [file: commit.checkpoint_delay_ms; default 0.5].
    #[arg(long, env = "AGENTD_CHECKPOINT_DELAY_MS")]
    pub checkpoint_delay_ms: Option<f64>,
    /// Other active runs from which checkpoints wait for company [file:
    /// commit.checkpoint_siblings; default 16].
    #[arg(long, env = "AGENTD_CHECKPOINT_SIBLINGS")]
    pub checkpoint_siblings: Option<usize>,
    /// Longest wait (ms) of a memory write for the writes under way to share its fsync; 0
    /// never waits [file: commit.store_delay_ms; default 1].
    #[arg(long, env = "AGENTD_STORE_DELAY_MS")]
    pub store_delay_ms: Option<f64>,
}

impl ServeArgs {
    /// The configuration: the file, then these options over it.
    pub fn config(self) -> anyhow::Result<ServerConfig> {
        let default_file = PathBuf::from("agentd.toml");
        let mut config = match &self.config {
            Some(file) => ServerConfig::load(file)?,
            None if default_file.is_file() => ServerConfig::load(&default_file)?,
            None => ServerConfig::default(),
        };
        config.apply(ConfigOverrides {
            listen: self.listen,
            data_dir: self.data_dir,
            workflows_dir: self.workflows_dir,
            roles_dir: self.roles_dir,
            llm_url: self.llm_url,
            model: self.model,
            api_key_env: self.api_key_env,
            llm_timeout_secs: self.llm_timeout,
            llm_concurrency: self.llm_concurrency,
            llm_tokens_per_minute: self.llm_tokens_per_minute,
            max_body_bytes: self.max_body_bytes,
            max_input_bytes: self.max_input_bytes,
            max_document_bytes: self.max_document_bytes,
            max_documents: self.max_documents,
            queue_capacity: self.queue_capacity,
            max_running: self.max_running,
            retry_after_secs: self.retry_after_secs,
            llm_max_retries: self.llm_max_retries,
            tokens: self.tokens,
            drain_secs: self.drain_secs,
            checkpoint_delay_ms: self.checkpoint_delay_ms,
            checkpoint_siblings: self.checkpoint_siblings,
            store_delay_ms: self.store_delay_ms,
        })?;
        Ok(config)
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C, then drains.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config)
        .await
        .with_context(|| format!("starting the daemon (data folder {})", data_dir.display()))?;
    let addr = server.local_addr()?;
    eprintln!("agentd listening on http://{addr}");
    server.run(shutdown_signal()).await?;
    eprintln!("agentd stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
