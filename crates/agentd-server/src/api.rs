//! The HTTP API: the router and its handlers.
//!
//! Handlers parse everything from the raw request themselves (bodies as bytes, then
//! `serde_json`), so every malformed request gets a JSON error naming the problem instead of
//! a framework's plain-text rejection. Run handlers look the run up *and* check its tenant in
//! one step ([`AppState::owned_run`]): another tenant's run is a 404, like a missing one.

use std::convert::Infallible;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentd_memory::{Filter, Kind, Page};
use agentd_router::Policy;
use agentd_runtime::{
    Document, Event, EventKind, RunRequest, RunState, RunStatus, Runtime, RuntimeError,
};
use agentd_workflow::Workflow;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::{Caller, TENANT_LABEL, Tenants, require_tenant};
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics};

/// Longest run listing page.
const MAX_PAGE: usize = 1000;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The runtime.
    pub runtime: Runtime,
    /// The configuration in force.
    pub config: Arc<ServerConfig>,
    /// Tokens and tenants.
    pub tenants: Arc<Tenants>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the daemon drains (SIGTERM): no new runs, event streams end.
    pub draining: watch::Receiver<bool>,
    /// Submissions between admission and start (admission control counts them as queued).
    admitting: Arc<AtomicUsize>,
    /// Inline workflows parsed lately (see [`InlineWorkflows`]).
    inline_workflows: Arc<InlineWorkflows>,
}

/// The inline workflows (`workflow_toml`) parsed lately, by their text, so that a burst of
/// submissions of one workflow parses and checks it once (about a third of a submission's
/// CPU). Only workflows whose roles are all inline are kept: one that uses the roles folder
/// is parsed again each time, since the files may change.
#[derive(Default)]
struct InlineWorkflows {
    /// Most recently used last.
    entries: parking_lot::Mutex<Vec<(Arc<str>, Arc<Workflow>)>>,
}

impl InlineWorkflows {
    /// Workflows kept at most.
    const CAPACITY: usize = 16;

    /// The workflow parsed from `text`, if kept.
    fn get(&self, text: &str) -> Option<Arc<Workflow>> {
        let mut entries = self.entries.lock();
        let at = entries.iter().position(|(t, _)| **t == *text)?;
        let entry = entries.remove(at);
        let workflow = Arc::clone(&entry.1);
        entries.push(entry);
        Some(workflow)
    }

    /// Keeps `workflow`, parsed from `text`, if every role of it is inline.
    fn keep(&self, text: &str, workflow: &Arc<Workflow>) {
        if workflow.roles.values().any(|role| role.path.is_some()) {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.iter().any(|(t, _)| **t == *text) {
            return;
        }
        if entries.len() == Self::CAPACITY {
            entries.remove(0);
        }
        entries.push((Arc::from(text), Arc::clone(workflow)));
    }
}

impl AppState {
    /// State over a built runtime.
    pub fn new(
        runtime: Runtime,
        config: Arc<ServerConfig>,
        tenants: Arc<Tenants>,
        metrics: Arc<Metrics>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        AppState {
            runtime,
            config,
            tenants,
            metrics,
            draining,
            admitting: Arc::new(AtomicUsize::new(0)),
            inline_workflows: Arc::default(),
        }
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The run's state, if it exists and belongs to the caller's tenant.
    fn owned_run(&self, caller: &Caller, id: &str) -> Result<RunState, ApiError> {
        let state = self
            .runtime
            .state(id)
            .map_err(|_| ApiError::run_not_found(id))?;
        if tenant_of(&state) != Some(caller.tenant.as_str()) {
            return Err(ApiError::run_not_found(id));
        }
        Ok(state)
    }
}

fn tenant_of(state: &RunState) -> Option<&str> {
    state
        .record
        .as_ref()
        .and_then(|r| r.labels.get(TENANT_LABEL))
        .map(String::as_str)
}

/// The status shown for a run: `queued` while it waits for a run slot.
fn status_name(state: &RunState, queued: bool) -> &'static str {
    if state.status == RunStatus::Running && queued {
        "queued"
    } else {
        state.status.as_str()
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.limits.max_body_bytes;
    let authenticated = Router::new()
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(delete_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/runs/{id}/memory", get(run_memory))
        .route("/v1/runs/{id}/manifests", get(run_manifests))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/workflows/validate", post(validate_workflow))
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state(state.clone(), require_tenant));
    Router::new()
        .merge(authenticated)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see /openapi.json)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept this method (see /openapi.json)",
    )
}

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_request"
        };
        ApiError::new(status, code, e.body_text())
    })
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Runs

/// `POST /v1/runs` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRun {
    /// A workflow of the workflows folder, by name.
    #[serde(default)]
    workflow: Option<String>,
    /// An inline workflow (TOML text).
    #[serde(default)]
    workflow_toml: Option<String>,
    /// The task.
    input: String,
    /// Documents the run's agents also read.
    #[serde(default)]
    documents: Vec<Document>,
    /// A routing policy overriding the workflow's.
    #[serde(default)]
    policy: Option<String>,
    /// A run-level token budget overriding the workflow's.
    #[serde(default)]
    run_budget: Option<u64>,
}

/// Counts a submission as admitted until it is started (or refused).
struct Admitting(Arc<AtomicUsize>);

impl Drop for Admitting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn workflow_files(dir: &FsPath) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn invalid_workflow(errors: &agentd_workflow::ConfigErrors) -> ApiError {
    ApiError::unprocessable("invalid_workflow", errors.to_string())
        .with_details(serde_json::to_value(&errors.0).unwrap_or(Value::Null))
}

fn load_workflow(state: &AppState, request: &CreateRun) -> Result<Arc<Workflow>, ApiError> {
    match (&request.workflow, &request.workflow_toml) {
        (Some(name), None) => {
            if !is_safe_name(name) {
                return Err(ApiError::bad_request(format!(
                    "`workflow`: `{}` is not a workflow name (letters, digits, `_`, `-`)",
                    name.escape_debug()
                )));
            }
            let dir = &state.config.workflows_dir;
            let path = dir.join(format!("{name}.toml"));
            if !path.is_file() {
                let known: Vec<String> = workflow_files(dir)
                    .iter()
                    .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
                    .collect();
                return Err(ApiError::unprocessable(
                    "unknown_workflow",
                    format!(
                        "no workflow `{name}` in the workflows folder; known: {}",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            Workflow::load(&path)
                .map(Arc::new)
                .map_err(|e| invalid_workflow(&e))
        }
        (None, Some(text)) => {
            if let Some(workflow) = state.inline_workflows.get(text) {
                return Ok(workflow);
            }
            let workflow = Arc::new(
                Workflow::parse(text, "workflow_toml", Some(&state.config.roles_dir))
                    .map_err(|e| invalid_workflow(&e))?,
            );
            state.inline_workflows.keep(text, &workflow);
            Ok(workflow)
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give either `workflow` (a name) or `workflow_toml` (inline TOML), not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "give `workflow` (a workflow name, see GET /v1/workflows) or `workflow_toml` \
             (an inline workflow)",
        )),
    }
}

async fn create_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(bytes)?;
    let request: CreateRun = json_body(&bytes)?;
    let limits = &state.config.limits;
    if request.input.trim().is_empty() {
        return Err(ApiError::bad_request("`input` is empty"));
    }
    if request.input.len() > limits.max_input_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            format!(
                "`input` is {} bytes; the limit is {}",
                request.input.len(),
                limits.max_input_bytes
            ),
        ));
    }
    if request.documents.len() > limits.max_documents {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_documents",
            format!(
                "{} documents; the limit is {}",
                request.documents.len(),
                limits.max_documents
            ),
        ));
    }
    if let Some((i, d)) = request
        .documents
        .iter()
        .enumerate()
        .find(|(_, d)| d.text.len() > limits.max_document_bytes)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
            format!(
                "`documents[{i}].text` is {} bytes; the limit is {}",
                d.text.len(),
                limits.max_document_bytes
            ),
        ));
    }
    let policy = match &request.policy {
        Some(p) => Some(Policy::parse(p).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`policy`: unknown policy `{}`; use rcr, full, static, static:K or recency",
                p.escape_debug()
            ))
        })?),
        None => None,
    };
    let workflow = load_workflow(&state, &request)?;

    // Admission control.
    if state.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the daemon is shutting down; retry on another instance or after its restart",
        )
        .retry_after(limits.retry_after_secs));
    }
    let reserved = state.admitting.fetch_add(1, Ordering::SeqCst);
    let _admitting = Admitting(Arc::clone(&state.admitting));
    let queued = state.runtime.queued_count() + reserved;
    if queued >= limits.queue_capacity {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!(
                "the run queue is full ({} runs waiting); retry later",
                limits.queue_capacity
            ),
        )
        .retry_after(limits.retry_after_secs));
    }

    let id = agentd_runtime::new_run_id();
    let mut run = RunRequest::new(workflow, request.input);
    run.policy = policy;
    run.run_budget = request.run_budget;
    run.run_id = Some(id.clone());
    run = run.label(TENANT_LABEL, caller.tenant.clone());
    let docs_namespace = format!("run-{id}/docs");
    if !request.documents.is_empty() {
        let runtime = state.runtime.clone();
        let namespace = docs_namespace.clone();
        let documents = request.documents;
        tokio::task::spawn_blocking(move || runtime.load_documents(&namespace, documents))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                RuntimeError::Memory(e) => {
                    ApiError::unprocessable("invalid_document", format!("documents: {e}"))
                }
                other => ApiError::internal(other),
            })?;
        run = run.documents(docs_namespace.clone());
    }
    let handle = match state.runtime.start(run).await {
        Ok(handle) => handle,
        Err(e) => {
            let store = Arc::clone(state.runtime.store());
            let _ =
                tokio::task::spawn_blocking(move || store.delete_namespace(&docs_namespace)).await;
            return Err(match e {
                RuntimeError::Config(message) => {
                    ApiError::unprocessable("workflow_not_runnable", message)
                }
                other => ApiError::internal(other),
            });
        }
    };
    let queued = state.runtime.is_queued(&id).unwrap_or(false);
    let location = format!("/v1/runs/{}", handle.id());
    let body = json!({
        "id": id,
        "status": if queued { "queued" } else { "running" },
        "links": {
            "self": location,
            "events": format!("{location}/events"),
            "memory": format!("{location}/memory"),
            "manifests": format!("{location}/manifests"),
        },
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response())
}

/// `GET /v1/runs` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRuns {
    /// Only runs with this status (queued, running, finished, failed, cancelled).
    status: Option<String>,
    /// Page size (default 50, at most 1000).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

async fn list_runs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListRuns>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    const STATUSES: [&str; 5] = ["queued", "running", "finished", "failed", "cancelled"];
    if let Some(status) = &q.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "`status`: unknown status `{}`; use one of {}",
            status.escape_debug(),
            STATUSES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let mut runs: Vec<(String, Value)> = state.runtime.scan_runs(|s, queued| {
        if tenant_of(s) != Some(caller.tenant.as_str()) {
            return None;
        }
        let status = status_name(s, queued);
        if q.status.as_deref().is_some_and(|want| want != status) {
            return None;
        }
        if q.cursor.as_deref().is_some_and(|c| s.id.as_str() >= c) {
            return None;
        }
        Some((s.id.clone(), summary(s, status)))
    });
    // Run ids are UUID v7: newest first is descending id order.
    runs.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    let more = runs.len() > limit;
    runs.truncate(limit);
    let next_cursor = if more {
        runs.last().map(|(id, _)| id.clone())
    } else {
        None
    };
    Ok(axum::Json(json!({
        "runs": runs.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
    .into_response())
}

fn summary(s: &RunState, status: &str) -> Value {
    json!({
        "id": s.id,
        "status": status,
        "workflow": s.record.as_ref().map(|r| r.workflow.as_str()),
        "round": s.round,
        "created_ms": s.started_ms,
        "updated_ms": s.updated_ms,
        "error": s.error,
    })
}

async fn get_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let run = state.owned_run(&caller, &id)?;
    let queued = state.runtime.is_queued(&id).unwrap_or(false);
    let outcome = about_run(&state, &id, |runtime, id| runtime.outcome(id)).await?;
    let record = run.record.as_ref();
    let mut body = summary(&run, status_name(&run, queued));
    body["input"] = json!(record.map(|r| r.input.as_str()));
    body["policy"] = json!(record.map(|r| r.policy));
    body["namespace"] = json!(outcome.namespace);
    body["answer"] = json!(outcome.answer);
    body["evidence"] = json!(outcome.evidence);
    body["usage"] = json!(outcome.usage);
    body["last_event_id"] = json!(run.last_seq);
    Ok(axum::Json(body).into_response())
}

/// Calls `f` about run `id` on the blocking pool (it may read the store or the journal):
/// an unknown run is a 404, any other error a 500.
async fn about_run<T: Send + 'static>(
    state: &AppState,
    id: &str,
    f: impl FnOnce(&Runtime, &str) -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, ApiError> {
    let runtime = state.runtime.clone();
    let run = id.to_owned();
    tokio::task::spawn_blocking(move || f(&runtime, &run))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::from_run(id, e))
}

async fn cancel_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let run = state.owned_run(&caller, &id)?;
    if run.status != RunStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!(
                "run `{id}` is {}; only running runs cancel",
                run.status.as_str()
            ),
        ));
    }
    state
        .runtime
        .cancel(&id)
        .map_err(|_| ApiError::run_not_found(&id))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": id, "status": "cancelling"})),
    )
        .into_response())
}

async fn delete_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let run = state.owned_run(&caller, &id)?;
    if run.status == RunStatus::Running {
        // Cancel, then wait (bounded) for the run to record its end.
        let _ = state.runtime.cancel(&id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match state.runtime.state(&id) {
                Ok(s) if s.status == RunStatus::Running => {}
                Ok(_) => break,
                Err(_) => return Err(ApiError::run_not_found(&id)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "still_running",
                    format!("run `{id}` did not stop within 10 s of its cancellation; retry"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match state.runtime.delete(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(RuntimeError::UnknownRun(_)) => Err(ApiError::run_not_found(&id)),
        Err(RuntimeError::Config(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "still_running",
            message,
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Events (SSE)

/// `GET /v1/runs/{id}/events` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Events after this sequence number (like `Last-Event-ID`).
    after: Option<u64>,
}

async fn run_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = path_id(id)?;
    let q = query(q)?;
    state.owned_run(&caller, &id)?;
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request("`Last-Event-ID` must be an event id (a whole number)")
            })?,
        None => q.after.unwrap_or(0),
    };
    // A run that has ended is read back from the journal.
    let (past, live) = about_run(&state, &id, move |runtime, id| runtime.follow(id, after)).await?;
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(pump_events(
        state.runtime.clone(),
        id,
        after,
        past,
        live,
        tx,
        state.draining.clone(),
    ));
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(event: &Event) -> Option<SseEvent> {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.name())
        .json_data(event)
        .ok()
}

/// Sends a run's events from `after` on, then live ones, until the run ends, the client goes
/// away or the daemon drains. Each event is sent once, in order (deduplicated by `seq`).
async fn pump_events(
    runtime: Runtime,
    id: String,
    after: u64,
    past: Vec<Arc<Event>>,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<SseEvent>,
    mut draining: watch::Receiver<bool>,
) {
    let mut last = after;
    let mut backlog = past;
    loop {
        for event in backlog.drain(..) {
            if event.seq <= last {
                continue;
            }
            last = event.seq;
            let Some(sse) = sse_event(&event) else {
                continue;
            };
            if tx.send(sse).await.is_err() {
                return;
            }
            if event.kind.is_terminal() {
                return;
            }
        }
        // Nothing more will come for a run that already ended (e.g. resumed at its end).
        match runtime.state(&id) {
            Ok(s) if s.status != RunStatus::Running && s.last_seq <= last => return,
            Err(_) => return,
            _ => {}
        }
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => backlog.push(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Re-read what was skipped from the run's log.
                    match runtime.follow(&id, last) {
                        Ok((missed, rx)) => {
                            backlog = missed;
                            live = rx;
                        }
                        Err(_) => return,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            _ = draining.wait_for(|d| *d) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Memory and manifests

/// `GET /v1/runs/{id}/memory` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryQuery {
    /// `run` (default: the run's own items) or `documents` (the documents given with it).
    scope: Option<String>,
    /// Kinds, comma-separated.
    kind: Option<String>,
    /// Stage.
    stage: Option<String>,
    /// Producing role.
    role: Option<String>,
    /// Producing node.
    node: Option<String>,
    /// Producing round.
    round: Option<u32>,
    /// Tag.
    tag: Option<String>,
    /// Also superseded versions.
    include_superseded: Option<bool>,
    /// The `next_after` of the previous page.
    after: Option<u64>,
    /// Page size (default 100, at most 1000).
    limit: Option<usize>,
}

async fn run_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<MemoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let q = query(q)?;
    let run = state.owned_run(&caller, &id)?;
    let Some(record) = run.record else {
        return Err(ApiError::run_not_found(&id));
    };
    let namespace = match q.scope.as_deref() {
        None | Some("run") => record.namespace.clone(),
        Some("documents") => format!("{}/docs", record.namespace),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`scope`: unknown scope `{}`; use run or documents",
                other.escape_debug()
            )));
        }
    };
    let mut filter = Filter::namespace(namespace);
    if let Some(kinds) = &q.kind {
        let mut parsed = Vec::new();
        for k in kinds.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            parsed.push(k.parse::<Kind>().map_err(|e| {
                ApiError::bad_request(format!("`kind`: `{}`: {e}", k.escape_debug()))
            })?);
        }
        filter = filter.kinds(parsed);
    }
    if let Some(stage) = q.stage {
        filter = filter.stages([stage]);
    }
    if let Some(role) = q.role {
        filter = filter.producer_roles([role]);
    }
    if let Some(node) = q.node {
        filter = filter.producer_nodes([node]);
    }
    if let Some(round) = q.round {
        filter = filter.rounds(round, round);
    }
    if let Some(tag) = q.tag {
        filter = filter.tag(tag);
    }
    filter = filter.include_superseded(q.include_superseded.unwrap_or(false));
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let page = Page {
        after_seq: q.after,
        limit: limit + 1,
        newest_first: false,
    };
    let store = Arc::clone(state.runtime.store());
    let mut items = tokio::task::spawn_blocking(move || store.list(&filter, &page))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::bad_request(format!("memory query: {e}")))?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_after = if more {
        items.last().map(|i| i.seq)
    } else {
        None
    };
    Ok(axum::Json(json!({"items": items, "next_after": next_after})).into_response())
}

async fn run_manifests(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    state.owned_run(&caller, &id)?;
    let events = about_run(&state, &id, |runtime, id| runtime.events(id)).await?;
    let manifests: Vec<Value> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ContextRouted {
                node,
                round,
                namespaces,
                as_of_seq,
                manifest,
            } => Some(json!({
                "event_id": e.seq,
                "node": node,
                "round": round,
                "namespaces": namespaces,
                "as_of_seq": as_of_seq,
                "manifest": manifest,
            })),
            _ => None,
        })
        .collect();
    Ok(axum::Json(json!({ "manifests": manifests })).into_response())
}

// ---------------------------------------------------------------------------------------------
// Workflows

fn describe(workflow: &Workflow) -> Value {
    json!({
        "name": workflow.name,
        "description": workflow.description,
        "max_rounds": workflow.max_rounds,
        "policy": workflow.router.policy,
        "nodes": workflow.nodes.iter().map(|n| json!({
            "name": n.name,
            "role": n.role,
            "stage": n.stage,
            "after": n.after,
        })).collect::<Vec<_>>(),
        "roles": workflow.roles.keys().collect::<Vec<_>>(),
    })
}

async fn list_workflows(State(state): State<AppState>) -> Result<Response, ApiError> {
    let dir = state.config.workflows_dir.clone();
    let listed = tokio::task::spawn_blocking(move || {
        workflow_files(&dir)
            .into_iter()
            .map(|path| {
                let file = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                match Workflow::load(&path) {
                    Ok(w) => {
                        let mut v = describe(&w);
                        v["id"] = json!(file);
                        v["valid"] = json!(true);
                        v
                    }
                    Err(errors) => json!({
                        "id": file,
                        "valid": false,
                        "errors": errors.0,
                    }),
                }
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(axum::Json(json!({ "workflows": listed })).into_response())
}

/// `POST /v1/workflows/validate` JSON body (a body that is not JSON is the TOML itself).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    /// The workflow file's text.
    toml: String,
}

async fn validate_workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(bytes)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = if is_json {
        json_body::<ValidateBody>(&bytes)?.toml
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("the workflow text is not UTF-8"))?
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the request needs a workflow: TOML text, or JSON {\"toml\": \"...\"}",
        ));
    }
    let roles_dir = state.config.roles_dir.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        Workflow::parse(&text, "workflow_toml", Some(&roles_dir))
    })
    .await
    .map_err(ApiError::internal)?;
    match parsed {
        Ok(workflow) => {
            let mut v = describe(&workflow);
            v["valid"] = json!(true);
            Ok(axum::Json(v).into_response())
        }
        Err(errors) => Err(invalid_workflow(&errors)),
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        axum::Json(json!({"status": "ready"})).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut runs_by_status = std::collections::BTreeMap::new();
    for status in ["queued", "running", "finished", "failed", "cancelled"] {
        runs_by_status.insert(status, 0u64);
    }
    for status in state
        .runtime
        .scan_runs(|s, queued| Some(status_name(s, queued)))
    {
        *runs_by_status.entry(status).or_default() += 1;
    }
    let gauges = Gauges {
        runs_by_status,
        queue_depth: state.runtime.queued_count(),
        active: state.runtime.active_count(),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    )
        .into_response()
}

async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Arc<Workflow> {
        let roles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../agents");
        Arc::new(Workflow::parse(text, "workflow_toml", Some(&roles)).unwrap())
    }

    #[test]
    fn inline_workflows_are_kept_by_text_and_file_roles_are_not() {
        let kept = InlineWorkflows::default();
        let inline = crate::testing::THREE_NODE_WORKFLOW;
        assert!(kept.get(inline).is_none());
        let workflow = parse(inline);
        kept.keep(inline, &workflow);
        assert!(Arc::ptr_eq(&kept.get(inline).unwrap(), &workflow));
        assert!(kept.get(&format!("{inline}\n")).is_none(), "another text");

        // A role read from the roles folder may change: such a workflow is parsed every time.
        let with_file_role =
            "[workflow]\nname = \"files\"\n\n[nodes.plan]\nrole = \"planner\"\nstage = \"plan\"\n";
        let workflow = parse(with_file_role);
        assert!(workflow.roles["planner"].path.is_some());
        kept.keep(with_file_role, &workflow);
        assert!(kept.get(with_file_role).is_none());

        // The least recently used goes first.
        let texts: Vec<String> = (0..InlineWorkflows::CAPACITY)
            .map(|i| inline.replace("three_step", &format!("step_{i}")))
            .collect();
        for text in &texts {
            kept.keep(text, &parse(text));
        }
        assert!(kept.get(inline).is_none(), "evicted");
        assert!(kept.get(&texts[0]).is_some());
        kept.keep(inline, &parse(inline));
        assert!(
            kept.get(&texts[1]).is_none(),
            "evicted: texts[0] was used since"
        );
        assert!(kept.get(&texts[0]).is_some());
    }
}
