//! The daemon's life: open the runtime, resume what a crash interrupted, serve, drain.
//!
//! Shutdown (SIGTERM, or the future given to [`Server::run`]) drains: the daemon stops
//! accepting connections and runs (503), event streams end, the runtime stops dispatching
//! nodes, nodes in flight finish and checkpoint for up to `drain_secs`, then the journal is
//! closed and `run` returns. Runs that did not finish resume on the next start. The trade-off:
//! a node whose LLM call outlives the drain is run again after the restart (its items, if it
//! wrote them, are reused through the write-back's origin tags, not duplicated).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_llm::{LlmClient, OpenAiClient};
use agentd_runtime::{EventHook, Runtime};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ServerError;
use crate::api::{AppState, router};
use crate::auth::Tenants;
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// A bound, ready daemon.
pub struct Server {
    state: AppState,
    listener: TcpListener,
    drain: watch::Sender<bool>,
    _executor: Executor,
}

/// The tokio runtime runs execute on, apart from the one serving requests: the OS shares the
/// cores between the two, so a burst of requests cannot queue in front of running nodes (a
/// single scheduler runs ready tasks in turn, and a node would wait behind every request
/// of the burst at each of its await points). Shut down without waiting when dropped, after
/// [`Server::run`] has drained it, on any thread, async or not.
struct Executor(Option<tokio::runtime::Runtime>);

impl Executor {
    fn new() -> Result<Executor, ServerError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("agentd-runs")
            .enable_all()
            .build()
            .map(|rt| Executor(Some(rt)))
            .map_err(|e| ServerError::Internal(format!("starting the runs' executor: {e}")))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the executor lives until dropped")
            .handle()
            .clone()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Options for embedding the server (tests, benchmarks).
#[derive(Default)]
pub struct ServerOptions {
    /// An LLM client instead of the one the configuration describes.
    pub llm: Option<Arc<dyn LlmClient>>,
    /// A memory store instead of opening one in the data folder.
    pub store: Option<Arc<dyn agentd_memory::MemoryStore>>,
}

impl Server {
    /// Opens the data folder, resumes interrupted runs and binds the listen address.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        Server::bind_with(config, ServerOptions::default()).await
    }

    /// [`Server::bind`] with embedding options.
    pub async fn bind_with(
        config: ServerConfig,
        options: ServerOptions,
    ) -> Result<Server, ServerError> {
        config.check()?;
        let prepared = crate::process::prepare();
        tracing::debug!(
            open_files_limit = prepared.open_files_limit,
            reserved_descriptors = prepared.reserved,
            "prepared the process for many connections"
        );
        let tenants = Arc::new(Tenants::new(config.resolved_tokens()?));
        let llm: Arc<dyn LlmClient> = match options.llm {
            Some(llm) => llm,
            None => Arc::new(
                OpenAiClient::new(config.llm.clone())
                    .map_err(|e| ServerError::Config(format!("[llm]: {e}")))?,
            ),
        };
        let metrics = Arc::new(Metrics::default());
        let hook: EventHook = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |event| metrics.observe(event))
        };
        let executor = Executor::new()?;
        let mut builder = Runtime::builder()
            .executor(executor.handle())
            .data_dir(&config.data_dir)
            .llm(llm)
            .max_running(config.limits.max_running)
            .commit_delay(config.commit.checkpoint_delay())
            .commit_siblings(config.commit.checkpoint_siblings)
            .store_commit_delay(config.commit.store_delay())
            .event_hook(hook);
        if let Some(store) = options.store {
            builder = builder.store(store);
        }
        if let Some(model) = &config.model_override {
            builder = builder.model_override(model.clone());
        }
        let data_dir = config.data_dir.clone();
        let runtime = tokio::task::spawn_blocking(move || {
            let runtime = builder.build()?;
            // The token counter builds its tables at its first count (~0.1 s of CPU): here,
            // before the daemon listens, rather than in the first runs' write-backs.
            runtime.store().token_counter().count("warm up");
            Ok(runtime)
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(|e| ServerError::Runtime {
            data_dir: data_dir.display().to_string(),
            source: e,
        })?;
        let interrupted = runtime.interrupted();
        if !interrupted.is_empty() {
            tracing::info!(runs = interrupted.len(), "resuming interrupted runs");
        }
        for id in interrupted {
            if let Err(e) = runtime.resume(&id).await {
                tracing::error!(run = %id, error = %e, "cannot resume the run; it stays interrupted");
            }
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Bind {
                addr: config.listen,
                message: e.to_string(),
            })?;
        let (drain, draining) = watch::channel(false);
        let state = AppState::new(runtime, Arc::new(config), tenants, metrics, draining);
        Ok(Server {
            state,
            listener,
            drain,
            _executor: executor,
        })
    }

    /// The address the daemon listens on (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|e| ServerError::Internal(e.to_string()))
    }

    /// The shared state (runtime, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            state,
            listener,
            drain,
            _executor,
        } = self;
        let app = router(state.clone());
        let mut drained = drain.subscribe();
        let signal = {
            let runtime = state.runtime.clone();
            async move {
                shutdown.await;
                tracing::info!("draining");
                drain.send_replace(true);
                runtime.drain();
            }
        };
        let mut serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
        });
        let mut served = None;
        tokio::select! {
            result = &mut serve => served = Some(result),
            _ = drained.wait_for(|d| *d) => {}
        }
        let serve_ended = served.is_some();
        if let Some(result) = served
            && !*drained.borrow()
        {
            // The server stopped on its own (an accept loop failure), not by a shutdown.
            state.runtime.close();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServerError::Internal(format!("serving: {e}"))),
                Err(e) => Err(ServerError::Internal(e.to_string())),
            };
        }
        let deadline = Instant::now() + Duration::from_secs_f64(state.config.drain_secs);
        while state.runtime.active_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = state.runtime.active_count();
        state.runtime.close();
        tracing::info!(unfinished, "journal closed");
        if !serve_ended
            && tokio::time::timeout(Duration::from_secs(1), &mut serve)
                .await
                .is_err()
        {
            serve.abort();
        }
        Ok(())
    }
}
