//! The runtime: a memory store, a router, LLM clients and agents, and the runs over them.
//!
//! [`Runtime`] is what an embedding app (and the CLI, and the daemon) holds. Build one with
//! [`Runtime::builder`], start runs with [`Runtime::start`], watch their events, resume the runs
//! a crash interrupted with [`Runtime::resume`], and replay a finished run's routing decisions
//! under another policy with [`Runtime::replay`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentd_llm::LlmClient;
use agentd_memory::embed::EmbedderConfig;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{
    EmbeddedStore, ItemId, Kind, MemoryItem, MemoryStore, NewItem, Producer, StoreOptions,
};
use agentd_router::{CandidateLimits, Policy, Router, RunBudget};
use agentd_workflow::Workflow;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, broadcast, watch};

use crate::agent::{Agent, LlmAgent};
use crate::event::{Event, EventKind, RunRecord};
use crate::journal::{Durability, Journal};
use crate::run::{
    NodeTimings, PastEvent, RunCx, RunShared, drive, enqueue, items_in_order, record,
};
use crate::state::{RunState, RunStatus};
use crate::usage::RunUsage;
use crate::{RuntimeError, new_run_id};

/// Builds a [`Runtime`].
#[must_use]
pub struct RuntimeBuilder {
    data_dir: Option<PathBuf>,
    store: Option<Arc<dyn MemoryStore>>,
    embedder: Option<EmbedderConfig>,
    llm: Option<Arc<dyn LlmClient>>,
    model_override: Option<String>,
    agents: HashMap<String, Arc<dyn Agent>>,
    durability: Durability,
    commit_delay: Option<std::time::Duration>,
    commit_siblings: Option<usize>,
    store_commit_delay: Option<std::time::Duration>,
    limits: CandidateLimits,
    timings: Option<Arc<NodeTimings>>,
    max_running: Option<usize>,
    event_hook: Option<EventHook>,
    executor: Option<tokio::runtime::Handle>,
}

/// A function called with every event of every run, after the event is journaled (synced,
/// for a checkpoint) and before it is published live, in each run's `seq` order. It must be
/// quick and must not call back into the runtime about the same run: it runs on the run's
/// task, holding the run's log lock. The daemon computes its metrics with one.
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

impl RuntimeBuilder {
    /// At most `n` runs execute nodes at once; the others wait for a slot in start order
    /// (started, journaled, [`Runtime::is_queued`]). Default: no limit.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = Some(n.max(1));
        self
    }

    /// Calls `hook` with every event of every run (see [`EventHook`]).
    pub fn event_hook(mut self, hook: EventHook) -> Self {
        self.event_hook = Some(hook);
        self
    }

    /// Records per-node timings into `timings` (benchmarks).
    pub fn node_timings(mut self, timings: Arc<NodeTimings>) -> Self {
        self.timings = Some(timings);
        self
    }

    /// Where memory (`memory/`) and run journals (`runs/`) live. Required unless a store is
    /// given and durability is [`Durability::Off`].
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Uses this memory store instead of opening one in the data folder.
    pub fn store(mut self, store: Arc<dyn MemoryStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The embedder of a store opened in the data folder (default: from the environment, see
    /// [`EmbedderConfig::from_env`]).
    pub fn embedder(mut self, config: EmbedderConfig) -> Self {
        self.embedder = Some(config);
        self
    }

    /// The LLM client of every role without a Rust agent.
    pub fn llm(mut self, client: Arc<dyn LlmClient>) -> Self {
        self.llm = Some(client);
        self
    }

    /// Uses this model for every call, whatever the workflow and role files say.
    pub fn model_override(mut self, model: impl Into<String>) -> Self {
        self.model_override = Some(model.into());
        self
    }

    /// Runs `agent` at every node whose role is `role` (instead of an LLM).
    pub fn agent(mut self, role: impl Into<String>, agent: impl Agent) -> Self {
        self.agents.insert(role.into(), Arc::new(agent));
        self
    }

    /// How run state is persisted (default: durable).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a checkpoint waits for others to share its sync when many runs are active
    /// (see [`RuntimeBuilder::commit_siblings`]) and checkpoints arrive faster than two per
    /// `delay` (default
    /// [`crate::journal::DEFAULT_COMMIT_DELAY`]; zero syncs every checkpoint at once). Trades a
    /// little latency per node under load for far fewer syncs.
    pub fn commit_delay(mut self, delay: std::time::Duration) -> Self {
        self.commit_delay = Some(delay);
        self
    }

    /// How many other active runs make a checkpoint wait for company (default
    /// [`crate::journal::DEFAULT_COMMIT_SIBLINGS`]): with fewer, waiting idles the cores.
    pub fn commit_siblings(mut self, siblings: usize) -> Self {
        self.commit_siblings = Some(siblings);
        self
    }

    /// The commit delay of a store opened in the data folder (see
    /// [`agentd_memory::StoreOptions::commit_delay`]); a store given with
    /// [`RuntimeBuilder::store`] keeps its own.
    pub fn store_commit_delay(mut self, delay: std::time::Duration) -> Self {
        self.store_commit_delay = Some(delay);
        self
    }

    /// How many candidates each source contributes to routing.
    pub fn candidate_limits(mut self, limits: CandidateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs execute on this tokio runtime (their orchestrators, node actors and blocking
    /// work) instead of the one that starts them. The daemon gives runs a runtime of their own,
    /// so a burst of requests queues behind other requests, not in front of running nodes.
    /// Default: the runtime calling [`Runtime::start`] or [`Runtime::resume`].
    pub fn executor(mut self, handle: tokio::runtime::Handle) -> Self {
        self.executor = Some(handle);
        self
    }

    /// Opens the store and the journal; loads the state of past runs.
    pub fn build(self) -> Result<Runtime, RuntimeError> {
        let store: Arc<dyn MemoryStore> = match (self.store, &self.data_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => {
                let config = match self.embedder {
                    Some(c) => c,
                    None => EmbedderConfig::from_env()?,
                };
                let mut options = StoreOptions::new(config.build()?, default_token_counter());
                if let Some(delay) = self.store_commit_delay {
                    options.commit_delay = delay;
                }
                Arc::new(EmbeddedStore::open(dir.join("memory"), options)?)
            }
            (None, None) => {
                return Err(RuntimeError::Config(
                    "the runtime needs a data folder (RuntimeBuilder::data_dir) or a store".into(),
                ));
            }
        };
        let (journal, past) = match (self.durability, &self.data_dir) {
            (Durability::Off, _) => (None, Vec::new()),
            (d, Some(dir)) => {
                let (journal, events) = Journal::open(&dir.join("runs"), d)?;
                if let Some(delay) = self.commit_delay {
                    journal.set_commit_delay(delay);
                }
                if let Some(siblings) = self.commit_siblings {
                    journal.set_commit_siblings(siblings);
                }
                (Some(journal), events)
            }
            (_, None) => {
                return Err(RuntimeError::Config(
                    "durable runs need a data folder (RuntimeBuilder::data_dir), or use Durability::Off".into(),
                ));
            }
        };
        let mut by_run: HashMap<Arc<str>, Vec<PastEvent>> = HashMap::new();
        for (event, offset) in past {
            by_run
                .entry(event.run.clone())
                .or_default()
                .push((Arc::new(event), Some(offset)));
        }
        // Deleted runs are forgotten; their memory is deleted again in case a crash came
        // between the tombstone and the deletion.
        let mut runs = HashMap::new();
        for (id, events) in by_run {
            if events
                .iter()
                .any(|(e, _)| matches!(e.kind, EventKind::RunDeleted))
            {
                let spec = events.iter().find_map(|(e, _)| match &e.kind {
                    EventKind::RunStarted { spec } => Some(&**spec),
                    _ => None,
                });
                for namespace in owned_namespaces(spec) {
                    store.delete_namespace(&namespace)?;
                }
                continue;
            }
            runs.insert(id.to_string(), RunShared::new(id, events));
        }
        let router = Router::new(Arc::clone(&store)).with_limits(self.limits);
        let llm_agent = self
            .llm
            .map(|client| Arc::new(LlmAgent::new(client)) as Arc<dyn Agent>);
        Ok(Runtime {
            inner: Arc::new(Inner {
                store,
                router,
                llm_agent,
                model_override: self.model_override,
                agents: self.agents,
                journal,
                data_dir: self.data_dir,
                runs: Mutex::new(runs),
                timings: self.timings,
                slots: self.max_running.map(|n| Arc::new(Semaphore::new(n))),
                queued: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                draining: watch::channel(false).0,
                event_hook: self.event_hook,
                store_sync: crate::durable::StoreSync::default(),
                executor: self.executor,
            }),
        })
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn MemoryStore>,
    pub(crate) router: Router,
    pub(crate) llm_agent: Option<Arc<dyn Agent>>,
    pub(crate) model_override: Option<String>,
    pub(crate) agents: HashMap<String, Arc<dyn Agent>>,
    pub(crate) journal: Option<Journal>,
    data_dir: Option<PathBuf>,
    runs: Mutex<HashMap<String, Arc<RunShared>>>,
    pub(crate) timings: Option<Arc<NodeTimings>>,
    /// Run slots (`RuntimeBuilder::max_running`).
    pub(crate) slots: Option<Arc<Semaphore>>,
    /// Runs waiting for a slot.
    pub(crate) queued: AtomicUsize,
    /// Runs whose orchestrator is active.
    pub(crate) active: AtomicUsize,
    /// Set by `Runtime::drain`.
    pub(crate) draining: watch::Sender<bool>,
    pub(crate) event_hook: Option<EventHook>,
    /// The store flush checkpoints wait for (one for many).
    pub(crate) store_sync: crate::durable::StoreSync,
    /// Where runs execute (`RuntimeBuilder::executor`); `None`: the caller's runtime.
    executor: Option<tokio::runtime::Handle>,
}

/// The namespaces a run owns: its own, and read namespaces under it (`<namespace>/...`, such
/// as documents given with the run).
fn owned_namespaces(spec: Option<&RunRecord>) -> Vec<String> {
    spec.map(|spec| {
        let prefix = format!("{}/", spec.namespace);
        std::iter::once(spec.namespace.clone())
            .chain(
                spec.read_namespaces
                    .iter()
                    .filter(|n| n.starts_with(&prefix))
                    .cloned(),
            )
            .collect()
    })
    .unwrap_or_default()
}

impl Inner {
    /// Spawns a run's task on the runs' executor.
    fn spawn_run<F>(&self, task: F)
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.executor {
            Some(handle) => drop(handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// The agent of a role: a registered Rust agent, else the LLM agent.
    pub(crate) fn agent_for(&self, role: &str) -> Result<Arc<dyn Agent>, RuntimeError> {
        if let Some(agent) = self.agents.get(role) {
            return Ok(Arc::clone(agent));
        }
        self.llm_agent.clone().ok_or_else(|| no_llm(role))
    }

    /// Checks that every node of `workflow` has someone to play its role: a Rust agent, or
    /// the LLM with the role's prompt.
    pub(crate) fn check_playable(&self, workflow: &Workflow) -> Result<(), RuntimeError> {
        for node in &workflow.nodes {
            let role = workflow.role_of(node);
            if self.agents.contains_key(&role.name) {
                continue;
            }
            self.agent_for(&role.name)?;
            if role.prompt.system.trim().is_empty() {
                return Err(RuntimeError::Config(format!(
                    "role `{}` (node `{}`) has no [prompt], so no LLM can play it: add a \
                     prompt to the role, or register a Rust agent for it",
                    role.name, node.name
                )));
            }
        }
        Ok(())
    }
}

/// The item holding a run's input (its origin tag makes writing it idempotent).
pub(crate) fn task_item(namespace: &str, input: &str) -> NewItem {
    NewItem::new(namespace, Kind::Task, input)
        .producer(Producer::new("user", "input", 0))
        .tag(TASK_ORIGIN)
}

/// The origin tag of a run's task item.
pub(crate) const TASK_ORIGIN: &str = "origin:input@0";

fn no_llm(role: &str) -> RuntimeError {
    RuntimeError::Config(format!(
        "role `{role}` needs an LLM, and none is configured: pass --llm-url URL --model M \
         (or start the local one with scripts/local-llm.sh start), or register a Rust agent \
         for the role"
    ))
}

/// A document to load into memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Title (shown in the context, used to link items that mention it).
    #[serde(default)]
    pub title: Option<String>,
    /// The text.
    pub text: String,
}

/// What to run.
#[derive(Clone)]
pub struct RunRequest {
    /// The workflow.
    pub workflow: Arc<Workflow>,
    /// The input (the task).
    pub input: String,
    /// Namespaces of document collections its agents also read.
    pub documents: Vec<String>,
    /// A policy overriding the workflow's.
    pub policy: Option<Policy>,
    /// A run budget overriding the workflow's.
    pub run_budget: Option<u64>,
    /// The run id (default: a new UUID v7).
    pub run_id: Option<String>,
    /// Labels recorded with the run (in [`RunRecord::labels`]); the daemon puts the owning
    /// tenant here.
    pub labels: BTreeMap<String, String>,
}

impl RunRequest {
    /// A request to run `workflow` on `input`.
    pub fn new(workflow: Arc<Workflow>, input: impl Into<String>) -> Self {
        RunRequest {
            workflow,
            input: input.into(),
            documents: Vec::new(),
            policy: None,
            run_budget: None,
            run_id: None,
            labels: BTreeMap::new(),
        }
    }

    /// Also reads this document namespace.
    pub fn documents(mut self, namespace: impl Into<String>) -> Self {
        self.documents.push(namespace.into());
        self
    }

    /// Routes with this policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Records a label with the run.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    /// Run id.
    pub id: String,
    /// Final status.
    pub status: RunStatus,
    /// The final answer.
    pub answer: Option<MemoryItem>,
    /// The items the answer cites.
    pub evidence: Vec<MemoryItem>,
    /// Usage.
    pub usage: RunUsage,
    /// Rounds run.
    pub rounds: u32,
    /// The error of a failed run.
    pub error: Option<String>,
    /// The run's namespace.
    pub namespace: String,
}

/// A started run.
#[derive(Clone)]
pub struct RunHandle {
    shared: Arc<RunShared>,
    runtime: Runtime,
}

impl RunHandle {
    /// The run id.
    pub fn id(&self) -> &str {
        self.shared.id()
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.subscribe()
    }

    /// Every event so far (read back from the journal once the run has ended).
    pub fn events(&self) -> Result<Vec<Arc<Event>>, RuntimeError> {
        self.shared.events(self.runtime.inner.journal.as_ref())
    }

    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.shared.cancel();
    }

    /// Waits for the end of the run.
    pub async fn wait(&self) -> Result<RunOutcome, RuntimeError> {
        self.shared.finished().await;
        self.runtime.outcome(self.id())
    }
}

/// The events of a run so far and a live channel of what follows (see [`Runtime::follow`]).
pub type EventFollow = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// The agentd runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// A builder.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            data_dir: None,
            store: None,
            embedder: None,
            llm: None,
            model_override: None,
            agents: HashMap::new(),
            durability: Durability::Durable,
            commit_delay: None,
            commit_siblings: None,
            store_commit_delay: None,
            limits: CandidateLimits::default(),
            timings: None,
            max_running: None,
            event_hook: None,
            executor: None,
        }
    }

    /// The memory store.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.inner.store
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The data folder, if any.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.data_dir.as_deref()
    }

    /// The run journal's file, if runs are persisted.
    pub fn journal_path(&self) -> Option<&Path> {
        self.inner.journal.as_ref().map(|j| j.path())
    }

    /// What the run journal's syncs have cost so far, if runs are persisted.
    pub fn journal_sync_stats(&self) -> Option<crate::journal::SyncStats> {
        self.inner.journal.as_ref().map(|j| j.sync_stats())
    }

    /// Loads documents into `namespace` as `document` items (one batch, durable).
    pub fn load_documents(
        &self,
        namespace: &str,
        documents: impl IntoIterator<Item = Document>,
    ) -> Result<Vec<ItemId>, RuntimeError> {
        let batch: Vec<NewItem> = documents
            .into_iter()
            .filter(|d| !d.text.trim().is_empty())
            .map(|d| {
                let mut item = NewItem::new(namespace, Kind::Document, d.text)
                    .producer(Producer::new("user", "documents", 0));
                if let Some(title) = d.title {
                    item = item.payload(serde_json::json!({ "title": title }));
                }
                item
            })
            .collect();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .store
            .put_batch(batch)?
            .into_iter()
            .map(|i| i.id)
            .collect())
    }

    /// Starts a run; it goes on in the background.
    pub async fn start(&self, request: RunRequest) -> Result<RunHandle, RuntimeError> {
        let workflow = request.workflow;
        self.inner.check_playable(&workflow)?;
        let id = request.run_id.unwrap_or_else(new_run_id);
        if self.inner.runs.lock().contains_key(&id) {
            return Err(RuntimeError::Config(format!("a run with id `{id}` exists")));
        }
        let namespace = format!("run-{id}");
        let mut read_namespaces = vec![namespace.clone()];
        read_namespaces.extend(request.documents.iter().cloned());
        // With run slots, the task item is written when the run gets its slot (the start
        // record carries the input, so a crash before then loses nothing): a burst of starts
        // then costs journal group commits, not one store fsync each.
        let task = if self.inner.slots.is_some() {
            None
        } else {
            let store = Arc::clone(&self.inner.store);
            let item = task_item(&namespace, &request.input);
            Some(
                tokio::task::spawn_blocking(move || store.put(item))
                    .await
                    .map_err(|e| RuntimeError::Internal(e.to_string()))??,
            )
        };
        let record = RunRecord {
            workflow: workflow.name.clone(),
            workflow_path: workflow.path.as_ref().map(|p| p.display().to_string()),
            workflow_spec: serde_json::value::to_raw_value(&*workflow)
                .map_err(|e| RuntimeError::Internal(format!("recording the workflow: {e}")))?,
            input: request.input,
            namespace,
            read_namespaces,
            policy: request.policy.unwrap_or(workflow.router.policy),
            run_budget: request.run_budget.or(workflow.router.run_budget),
            task_item: task.map(|t| t.id),
            labels: request.labels,
        };
        let shared = RunShared::new(id.as_str().into(), Vec::new());
        self.inner
            .runs
            .lock()
            .insert(id.clone(), Arc::clone(&shared));
        let budget = record.run_budget.map(|b| Arc::new(RunBudget::new(b)));
        let cx = Arc::new(RunCx::new(
            Arc::clone(&self.inner),
            Arc::clone(&shared),
            workflow,
            Arc::new(record.clone()),
            budget,
        ));
        cx.emit(
            EventKind::RunStarted {
                spec: Box::new(record),
            },
            true,
        )
        .await?;
        enqueue(&self.inner, &shared);
        self.inner.spawn_run(drive(cx));
        Ok(RunHandle {
            shared,
            runtime: self.clone(),
        })
    }

    /// Starts a run and waits for its end.
    pub async fn run(&self, request: RunRequest) -> Result<RunOutcome, RuntimeError> {
        self.start(request).await?.wait().await
    }

    /// Runs that a crash or shutdown interrupted (started, not finished), oldest first.
    pub fn interrupted(&self) -> Vec<String> {
        let runs = self.inner.runs.lock();
        let mut ids: Vec<(u64, String)> = runs
            .values()
            .filter_map(|r| {
                let s = r.state();
                (s.status == RunStatus::Running && s.record.is_some())
                    .then(|| (s.started_ms, s.id.clone()))
            })
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Resumes an interrupted run from its last checkpoint: finished nodes are not run again
    /// and their items are not written again.
    pub async fn resume(&self, id: &str) -> Result<RunHandle, RuntimeError> {
        let shared = self.shared(id)?;
        let state = shared.state();
        if state.status != RunStatus::Running {
            return Err(RuntimeError::Config(format!(
                "run `{id}` is {}; only interrupted runs resume",
                state.status.as_str()
            )));
        }
        let record = state
            .record
            .clone()
            .ok_or_else(|| RuntimeError::Internal(format!("run `{id}` has no start record")))?;
        let workflow: Workflow = serde_json::from_str(record.workflow_spec.get())
            .map_err(|e| RuntimeError::Internal(format!("run `{id}`'s workflow: {e}")))?;
        self.inner.check_playable(&workflow)?;
        let budget = record.run_budget.map(|b| {
            let budget = RunBudget::new(b);
            budget.charge(state.usage().total.context_tokens);
            Arc::new(budget)
        });
        let cx = Arc::new(RunCx::new(
            Arc::clone(&self.inner),
            Arc::clone(&shared),
            Arc::new(workflow),
            Arc::new(record),
            budget,
        ));
        // A checkpoint is synced in the journal alongside its items in the store: after a
        // crash between the two, the items may be missing. Such a checkpoint no longer counts
        // (recorded before `run_resumed`, whose sync covers it), and its node runs again.
        let checkpoints: Vec<CheckpointItems<Arc<[ItemId]>>> = state
            .checkpoints
            .iter()
            .map(|c| (c.round, Arc::clone(&c.node), Arc::clone(&c.items)))
            .collect();
        let store = Arc::clone(&self.inner.store);
        let voided =
            tokio::task::spawn_blocking(move || missing_items(store.as_ref(), checkpoints))
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        for (round, node, missing) in voided {
            tracing::warn!(run = %id, %node, round, missing = missing.len(), "a checkpoint's items are not in the store; the node runs again");
            cx.emit(
                EventKind::CheckpointVoided {
                    node,
                    round,
                    missing,
                },
                false,
            )
            .await?;
        }
        cx.emit(
            EventKind::RunResumed {
                round: state.round.max(1),
            },
            true,
        )
        .await?;
        enqueue(&self.inner, &shared);
        self.inner.spawn_run(drive(cx));
        Ok(RunHandle {
            shared,
            runtime: self.clone(),
        })
    }

    /// Deletes a run that is not running: records a `run_deleted` tombstone (synced), forgets
    /// the run and deletes its memory (its namespace and the read namespaces under it). The
    /// journal keeps the run's older records until compaction; a restart skips them.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let shared = self.shared(id)?;
        if shared.state().status == RunStatus::Running {
            return Err(RuntimeError::Config(format!(
                "run `{id}` is running; cancel it before deleting it"
            )));
        }
        let namespaces = shared.with_state(|s| owned_namespaces(s.record.as_ref()));
        record(&self.inner, &shared, EventKind::RunDeleted, true).await?;
        self.inner.runs.lock().remove(id);
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || {
            for namespace in namespaces {
                store.delete_namespace(&namespace)?;
            }
            Ok::<_, agentd_memory::MemoryError>(())
        })
        .await
        .map_err(|e| RuntimeError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Whether a run waits for a run slot (see [`RuntimeBuilder::max_running`]).
    pub fn is_queued(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self.shared(id)?.is_queued())
    }

    /// Runs waiting for a run slot.
    pub fn queued_count(&self) -> usize {
        self.inner.queued.load(Ordering::SeqCst)
    }

    /// Runs whose orchestrator is active (holding a slot, running or checkpointing nodes).
    pub fn active_count(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Stops dispatching nodes: nodes in flight finish and checkpoint, then each run returns
    /// without a terminal event (it resumes after a restart); queued runs stay queued. Wait for
    /// [`Runtime::active_count`] to reach 0, then [`Runtime::close`]. Irreversible.
    pub fn drain(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Maps every run's state through `f` without copying states, keeping the `Some`s (in no
    /// particular order). Listings over many runs use it.
    pub fn scan_runs<T>(&self, mut f: impl FnMut(&RunState, bool) -> Option<T>) -> Vec<T> {
        let runs: Vec<Arc<RunShared>> = self.inner.runs.lock().values().cloned().collect();
        runs.iter()
            .filter_map(|r| {
                let queued = r.is_queued();
                r.with_state(|s| f(s, queued))
            })
            .collect()
    }

    fn shared(&self, id: &str) -> Result<Arc<RunShared>, RuntimeError> {
        self.inner
            .runs
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownRun(id.to_owned()))
    }

    /// A run's state.
    pub fn state(&self, id: &str) -> Result<RunState, RuntimeError> {
        Ok(self.shared(id)?.state())
    }

    /// Every known run's state, newest first.
    pub fn runs(&self) -> Vec<RunState> {
        let mut states: Vec<RunState> =
            self.inner.runs.lock().values().map(|r| r.state()).collect();
        states.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
        states
    }

    /// A run's events so far.
    pub fn events(&self, id: &str) -> Result<Vec<Arc<Event>>, RuntimeError> {
        self.shared(id)?.events(self.inner.journal.as_ref())
    }

    /// A run's events after `seq`, and a live channel for what follows.
    pub fn follow(&self, id: &str, after_seq: u64) -> Result<EventFollow, RuntimeError> {
        let shared = self.shared(id)?;
        let rx = shared.subscribe();
        Ok((
            shared.events_after(after_seq, self.inner.journal.as_ref())?,
            rx,
        ))
    }

    /// Asks a run to stop.
    pub fn cancel(&self, id: &str) -> Result<(), RuntimeError> {
        self.shared(id)?.cancel();
        Ok(())
    }

    /// How a run ended (or stands): its answer, the evidence the answer cites, its usage.
    pub fn outcome(&self, id: &str) -> Result<RunOutcome, RuntimeError> {
        let state = self.state(id)?;
        let store = self.inner.store.as_ref();
        let answer = match state.answer {
            Some(a) => store.get(a)?,
            None => None,
        };
        let cited: Vec<ItemId> = answer
            .as_ref()
            .and_then(|a| a.payload.as_ref()?.get("cites")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        let evidence = items_in_order(store, &cited)?;
        Ok(RunOutcome {
            id: state.id.clone(),
            status: state.status,
            answer,
            evidence,
            usage: state.usage(),
            rounds: state.round,
            error: state.error.clone(),
            namespace: state
                .record
                .as_ref()
                .map(|r| r.namespace.clone())
                .unwrap_or_default(),
        })
    }

    /// Recomputes a run's context packs under `policy` and compares them with the recorded
    /// ones (see [`mod@crate::replay`]).
    pub fn replay(&self, id: &str, policy: Policy) -> Result<crate::ReplayReport, RuntimeError> {
        let events = self.events(id)?;
        crate::replay::replay(&self.inner.router, id, &events, policy)
    }

    /// Flushes and closes the journal. Runs still going stop checkpointing; they resume after
    /// a restart.
    pub fn close(&self) {
        if let Some(journal) = &self.inner.journal {
            journal.close();
        }
    }
}

/// A checkpoint's round, node, and items (all of them, or the missing ones).
type CheckpointItems<I> = (u32, Arc<str>, I);

/// The checkpoints whose items are not all in the store, with the missing ones.
fn missing_items(
    store: &dyn MemoryStore,
    checkpoints: Vec<CheckpointItems<Arc<[ItemId]>>>,
) -> Result<Vec<CheckpointItems<Vec<ItemId>>>, RuntimeError> {
    let ids: Vec<ItemId> = checkpoints
        .iter()
        .flat_map(|(_, _, items)| items.iter().copied())
        .collect();
    let found = store.get_many(&ids)?;
    let mut found = found.iter();
    let mut voided = Vec::new();
    for (round, node, items) in checkpoints {
        let missing: Vec<ItemId> = items
            .iter()
            .zip(found.by_ref())
            .filter(|(_, item)| item.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !missing.is_empty() {
            voided.push((round, node, missing));
        }
    }
    Ok(voided)
}
