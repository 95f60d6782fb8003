//! The agentd daemon: runs as a long-lived service behind a JSON-over-HTTP API.
//!
//! - [`config`]: `agentd.toml` and its environment/command-line overrides.
//! - [`server`]: opening the runtime, resuming interrupted runs, serving, draining on shutdown.
//! - [`api`]: the router and handlers (runs, events as Server-Sent Events, memory, manifests,
//!   workflows, health, metrics); [`openapi`]: the document served at `/openapi.json`.
//! - [`auth`]: bearer tokens and tenants; [`metrics`]: Prometheus metrics from run events.
//!
//! What it does not know: how runs execute, how memory is stored or scored (the runtime, the
//! store and the router do that); it maps HTTP onto [`agentd_runtime::Runtime`] and keeps
//! tenants apart. Durability is the runtime's: a run is acknowledged (202) only after its
//! start is journaled, and a restart resumes it from its checkpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentd_server::ServerError> {
//! let server = agentd_server::Server::bind(agentd_server::ServerConfig::default()).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod process;
pub mod server;
pub mod testing;

pub use config::{ConfigOverrides, Limits, ServerConfig, TokenEntry};
pub use error::ApiError;
pub use server::{Server, ServerOptions};

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The runtime could not open the data folder.
    #[error("opening the data folder {data_dir}: {source}")]
    Runtime {
        /// The data folder.
        data_dir: String,
        /// Why.
        source: agentd_runtime::RuntimeError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        message: String,
    },
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}
