//! One run: an orchestrator actor and one actor per node.
//!
//! The orchestrator owns the run's progress. Each round it sends a command to every node whose
//! dependencies (within the round) are done, over the node's bounded mailbox; node actors route,
//! act and write back, then report over the orchestrator's bounded mailbox. The orchestrator
//! turns each report into a `node_finished` event, appended to the journal and synced before the
//! run moves on: that event is the node's checkpoint. A failed node (after its retries) fails the
//! run; a timeout counts as a failure; cancellation stops every actor. Nothing waits forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentd_memory::{Filter, ItemId, Kind, MemoryItem, Page};
use agentd_router::{ContextPack, RouteRequest, RunBudget, effective_budget};
use agentd_workflow::{NodeSpec, TemplateVars, Workflow};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use crate::agent::{AgentError, AgentInput, AgentReply, ModelSettings, describe_parse};
use crate::event::{Event, EventKind, RunRecord};
use crate::journal::Journal;
use crate::runtime::Inner;
use crate::state::{RunState, RunStatus};
use crate::usage::UsageTotals;
use crate::writeback::{WriteTarget, write_back};
use crate::{RuntimeError, now_ms};

/// Capacity of a run's live event channel; slow subscribers skip (and can re-read the log).
const EVENT_CHANNEL: usize = 1024;

/// A past event and, when it came from the journal, its record's offset there.
pub(crate) type PastEvent = (Arc<Event>, Option<u64>);

/// A run's shared, observable state: its event log, its live channel, its status.
pub struct RunShared {
    id: Arc<str>,
    log: Mutex<RunLog>,
    cancel: watch::Sender<bool>,
    done: watch::Sender<Option<RunStatus>>,
    /// Waiting for a run slot (see `RuntimeBuilder::max_running`).
    queued: AtomicBool,
}

struct RunLog {
    /// The events, in memory while the run may still change; empty once `evicted`.
    events: Vec<Arc<Event>>,
    /// Each event's `(seq, offset)` in the journal, recorded as it is appended (empty
    /// without a journal).
    offsets: Vec<(u64, u64)>,
    /// The run has ended and its records are written: its events are read back from the
    /// journal when asked for, so a daemon does not keep every past run's manifests in memory.
    evicted: bool,
    /// The last `seq` published to the hook and the live channel.
    published: u64,
    /// Appended events waiting for an earlier one to be published first (newest first).
    unpublished: Vec<Arc<Event>>,
    state: RunState,
    /// The live channel: opened by the first subscriber while the run is running, closed by
    /// its terminal event (a channel's buffer costs tens of kB, and a daemon keeps every
    /// run it knows).
    live: Option<broadcast::Sender<Arc<Event>>>,
}

impl RunShared {
    /// A run with its past events (from the journal, with their offsets, after a restart).
    /// A run that has ended keeps only the offsets.
    pub(crate) fn new(id: Arc<str>, past: Vec<PastEvent>) -> Arc<Self> {
        let mut state = RunState::new(&*id);
        for (e, _) in &past {
            state.apply(e);
        }
        let finished = (state.status != RunStatus::Running).then_some(state.status);
        let published = state.last_seq;
        let mut log = RunLog {
            events: Vec::with_capacity(past.len()),
            offsets: Vec::with_capacity(past.len()),
            evicted: false,
            published,
            unpublished: Vec::new(),
            state,
            live: None,
        };
        for (e, offset) in past {
            if let Some(offset) = offset {
                log.offsets.push((e.seq, offset));
            }
            log.events.push(e);
        }
        if finished.is_some() {
            // Every offset given here was read from the file, so it is written.
            log.evict(u64::MAX);
        }
        Arc::new(RunShared {
            id,
            log: Mutex::new(log),
            cancel: watch::channel(false).0,
            done: watch::channel(finished).0,
            queued: AtomicBool::new(false),
        })
    }

    /// The run id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run's state now.
    pub fn state(&self) -> RunState {
        self.log.lock().state.clone()
    }

    /// Calls `f` with the run's state, without copying it (listings look at many runs).
    pub fn with_state<R>(&self, f: impl FnOnce(&RunState) -> R) -> R {
        f(&self.log.lock().state)
    }

    /// Whether the run waits for a run slot (started, not yet running any node).
    pub fn is_queued(&self) -> bool {
        self.queued.load(Ordering::SeqCst)
    }

    /// Every event so far, in order (read back from `journal` once the run has ended).
    pub(crate) fn events(
        &self,
        journal: Option<&Journal>,
    ) -> Result<Vec<Arc<Event>>, RuntimeError> {
        self.events_after(0, journal)
    }

    /// Events after `seq` (for resumable streams).
    pub(crate) fn events_after(
        &self,
        seq: u64,
        journal: Option<&Journal>,
    ) -> Result<Vec<Arc<Event>>, RuntimeError> {
        let offsets: Vec<u64> = {
            let log = self.log.lock();
            if !log.evicted {
                let start = log.events.partition_point(|e| e.seq <= seq);
                return Ok(log.events[start..].to_vec());
            }
            let start = log.offsets.partition_point(|&(s, _)| s <= seq);
            log.offsets[start..].iter().map(|&(_, at)| at).collect()
        };
        let journal = journal.ok_or_else(|| {
            RuntimeError::Internal("a run's events were evicted without a journal".into())
        })?;
        offsets
            .into_iter()
            .map(|at| Ok(Arc::new(journal.read_at(at)?)))
            .collect()
    }

    /// A live channel of the events from now on. It closes after the run's terminal event;
    /// for a run that has ended, it is closed already (its events are all in the log).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let mut log = self.log.lock();
        if log.state.status != RunStatus::Running {
            return broadcast::channel(1).1;
        }
        log.live
            .get_or_insert_with(|| broadcast::channel(EVENT_CHANNEL).0)
            .subscribe()
    }

    /// Asks the run to stop; it records `run_cancelled`.
    pub fn cancel(&self) {
        // `send_replace`, not `send`: `send` drops the value when no one is subscribed yet
        // (a run whose task has not started), and the cancellation would be lost.
        self.cancel.send_replace(true);
    }

    /// Waits until the run is finished, failed or cancelled.
    pub async fn finished(&self) -> RunStatus {
        let mut rx = self.done.subscribe();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return status;
            }
            if rx.changed().await.is_err() {
                return self.state().status;
            }
        }
    }

    fn mark_done(&self, status: RunStatus) {
        // As in `cancel`: kept even when no one waits at this moment.
        self.done.send_replace(Some(status));
    }
}

/// Everything a run's actors share.
pub(crate) struct RunCx {
    pub rt: Arc<Inner>,
    pub shared: Arc<RunShared>,
    pub workflow: Arc<Workflow>,
    pub record: Arc<RunRecord>,
    pub budget: Option<Arc<RunBudget>>,
    /// Per node (by index): its name and its role's, shared by every event about it.
    names: Vec<NodeNames>,
}

/// A node's name and its role's, allocated once per run.
struct NodeNames {
    node: Arc<str>,
    role: Arc<str>,
}

impl RunCx {
    pub fn new(
        rt: Arc<Inner>,
        shared: Arc<RunShared>,
        workflow: Arc<Workflow>,
        record: Arc<RunRecord>,
        budget: Option<Arc<RunBudget>>,
    ) -> Self {
        let names = workflow
            .nodes
            .iter()
            .map(|n| NodeNames {
                node: n.name.as_str().into(),
                role: n.role.as_str().into(),
            })
            .collect();
        RunCx {
            rt,
            shared,
            workflow,
            record,
            budget,
            names,
        }
    }

    /// The name of node `index`.
    fn node_name(&self, index: usize) -> Arc<str> {
        Arc::clone(&self.names[index].node)
    }

    /// The role name of node `index`.
    fn role_name(&self, index: usize) -> Arc<str> {
        Arc::clone(&self.names[index].role)
    }

    /// Records an event: journal (synced when `sync`), then the run's log and channel.
    pub async fn emit(&self, kind: EventKind, sync: bool) -> Result<(), RuntimeError> {
        record(&self.rt, &self.shared, kind, sync).await
    }
}

/// Records an event of a run: journal (synced when `sync`), then the run's log, the event hook
/// and the live channel.
pub(crate) async fn record(
    rt: &Inner,
    shared: &RunShared,
    kind: EventKind,
    sync: bool,
) -> Result<(), RuntimeError> {
    record_with(rt, shared, kind, sync, std::future::ready(Ok(()))).await
}

/// [`record`], with `alongside` awaited together with the journal append: the event is
/// published (and this returns) once both are done, and fails if either failed.
pub(crate) async fn record_with(
    rt: &Inner,
    shared: &RunShared,
    kind: EventKind,
    sync: bool,
    alongside: impl std::future::Future<Output = Result<(), RuntimeError>>,
) -> Result<(), RuntimeError> {
    let (event, sync) = {
        let mut log = shared.log.lock();
        // An event after the run's end (an actor winding down, a deletion) is synced, so that
        // an evicted log (see `RunLog::evict`) can read it back.
        let sync = sync || log.state.status != RunStatus::Running;
        let event = Arc::new(Event {
            run: Arc::clone(&shared.id),
            seq: log.state.last_seq + 1,
            at_ms: now_ms(),
            kind,
        });
        log.state.apply(&event);
        if !log.evicted {
            log.events.push(Arc::clone(&event));
        }
        (event, sync)
    };
    let append = async {
        match &rt.journal {
            Some(journal) if sync => {
                // Other active runs have nodes to run while this one syncs.
                let others = rt.active.load(Ordering::Relaxed).saturating_sub(1);
                journal.append_synced_busy(&event, others).await.map(Some)
            }
            Some(journal) => journal.append(&event).map(Some),
            None => Ok(None),
        }
    };
    let (appended, beside) = tokio::join!(append, alongside);
    let mut log = shared.log.lock();
    if let Ok(Some(offset)) = appended {
        log.offsets.push((event.seq, offset));
    }
    // Published in `seq` order (to the hook and the live channel), whatever order concurrent
    // appends of this run finished in: a stream resumes after the last `seq` it saw, so an
    // event published after a later one would be skipped. An event whose append failed is
    // published too: it is in the run's log.
    log.unpublished.push(event);
    log.unpublished
        .sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
    while log
        .unpublished
        .last()
        .is_some_and(|e| e.seq == log.published + 1)
    {
        let event = log.unpublished.pop().expect("checked above");
        log.published = event.seq;
        if let Some(hook) = &rt.event_hook {
            hook(&event);
        }
        if let Some(live) = &log.live {
            let _ = live.send(Arc::clone(&event));
        }
        if event.kind.is_terminal() {
            log.live = None;
        }
    }
    if let Some(journal) = &rt.journal
        && log.state.status != RunStatus::Running
        && log.unpublished.is_empty()
    {
        log.evict(journal.written_end());
    }
    appended?;
    beside
}

impl RunLog {
    /// Drops the events from memory if every one of them has a record in the journal that
    /// starts below `written_end` (so it is written and can be read back).
    fn evict(&mut self, written_end: u64) {
        if self.evicted
            || self.offsets.is_empty()
            || self.offsets.len() != self.events.len()
            || self.offsets.iter().any(|&(_, at)| at >= written_end)
        {
            // Without a journal, or a record still in its buffer: a later event evicts.
            return;
        }
        // Concurrent appends of one run may reach the journal out of `seq` order.
        self.offsets.sort_unstable_by_key(|&(seq, _)| seq);
        self.offsets.shrink_to_fit();
        self.events = Vec::new();
        self.evicted = true;
    }
}

/// A command to a node actor.
struct NodeCommand {
    round: u32,
}

/// What reaches the orchestrator's mailbox.
enum Inbox {
    /// A node actor finished a command.
    Report(NodeReport),
    /// The run was asked to stop (forwarded from its cancel switch).
    Cancelled,
}

/// A node actor's report.
struct NodeReport {
    node: usize,
    round: u32,
    result: Result<NodeDone, String>,
}

struct NodeDone {
    items: Vec<ItemId>,
    /// The store's sequence number after the write-back: made durable with the checkpoint.
    store_seq: u64,
    usage: UsageTotals,
    /// Time spent routing, acting and writing back (the node's own work).
    work: Duration,
}

/// Per-node timings, for `agentd bench runtime`: from the orchestrator's dispatch to the durable
/// checkpoint (`total`), and the node's own work within it (routing, agent, write-back).
#[derive(Default)]
pub struct NodeTimings {
    samples: Mutex<Vec<(Duration, Duration)>>,
}

impl NodeTimings {
    /// Takes the `(total, work)` samples recorded so far.
    pub fn take(&self) -> Vec<(Duration, Duration)> {
        std::mem::take(&mut *self.samples.lock())
    }
}

/// Marks a run as waiting for a run slot, before its `drive` is spawned (so admission control
/// sees it at once).
pub(crate) fn enqueue(rt: &Inner, shared: &RunShared) {
    if rt.slots.is_some() && !shared.queued.swap(true, Ordering::SeqCst) {
        rt.queued.fetch_add(1, Ordering::SeqCst);
    }
}

fn dequeue(rt: &Inner, shared: &RunShared) {
    if shared.queued.swap(false, Ordering::SeqCst) {
        rt.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What waiting for a run slot came to.
enum Slot {
    Got(Option<tokio::sync::OwnedSemaphorePermit>),
    Cancelled,
    Draining,
}

async fn run_slot(cx: &RunCx) -> Slot {
    let Some(slots) = &cx.rt.slots else {
        return Slot::Got(None);
    };
    let mut cancel = cx.shared.cancel.subscribe();
    let mut drain = cx.rt.draining.subscribe();
    let slot = tokio::select! {
        biased;
        () = cancelled(&mut cancel) => Slot::Cancelled,
        () = cancelled(&mut drain) => Slot::Draining,
        permit = Arc::clone(slots).acquire_owned() => match permit {
            Ok(permit) => Slot::Got(Some(permit)),
            Err(_) => Slot::Draining,
        },
    };
    dequeue(&cx.rt, &cx.shared);
    slot
}

/// Counts a run whose orchestrator is active (holding a slot), for draining.
struct Active<'a>(&'a Inner);

impl<'a> Active<'a> {
    fn enter(rt: &'a Inner) -> Self {
        rt.active.fetch_add(1, Ordering::SeqCst);
        Active(rt)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs (or resumes) a run to its end. Never panics on agent or LLM failures: every outcome is
/// a terminal event. With a run-slot limit it first waits for a slot. While the runtime drains
/// (see `Runtime::drain`) it dispatches no new node: once its nodes in flight have checkpointed
/// it returns `Running` without a terminal event, and the run resumes after a restart.
pub(crate) async fn drive(cx: Arc<RunCx>) -> RunStatus {
    let _permit = match run_slot(&cx).await {
        Slot::Got(permit) => permit,
        Slot::Draining => return RunStatus::Running,
        Slot::Cancelled => {
            let status = match cx.emit(EventKind::RunCancelled, true).await {
                Ok(()) => RunStatus::Cancelled,
                Err(_) => RunStatus::Running,
            };
            if status == RunStatus::Cancelled {
                cx.shared.mark_done(status);
            }
            return status;
        }
    };
    let _active = Active::enter(&cx.rt);
    let span = tracing::info_span!("run", id = %cx.shared.id, workflow = %cx.workflow.name);
    let run = async {
        if cx.rt.slots.is_some() {
            ensure_task_item(&cx).await?;
        }
        orchestrate(&cx).await
    };
    let status = match run.instrument(span).await {
        Ok(RunStatus::Running) => return RunStatus::Running,
        Ok(status) => status,
        Err(e) => {
            let error = e.to_string();
            tracing::error!(run = %cx.shared.id, %error, "run failed");
            // If even this cannot be recorded the run stays "running" on disk and resumes
            // after a restart.
            let _ = cx.emit(EventKind::RunFailed { error }, true).await;
            RunStatus::Failed
        }
    };
    cx.shared.mark_done(status);
    status
}

async fn orchestrate(cx: &Arc<RunCx>) -> Result<RunStatus, RuntimeError> {
    let workflow = &cx.workflow;
    let nodes = &workflow.nodes;
    // One report per node at most, plus the cancellation: a send never waits.
    let (report_tx, mut report_rx) = mpsc::channel::<Inbox>(nodes.len() + 1);
    let mut mailboxes = Vec::with_capacity(nodes.len());
    let mut actors = Vec::with_capacity(nodes.len());
    for index in 0..nodes.len() {
        let (tx, rx) = mpsc::channel::<NodeCommand>(1);
        mailboxes.push(tx);
        actors.push(tokio::spawn(node_actor(
            Arc::clone(cx),
            index,
            rx,
            report_tx.clone(),
        )));
    }
    // Cancellation arrives in the mailbox, so waiting for a report is one plain receive.
    // The forwarder holds a weak sender: once every node actor is gone, the mailbox closes.
    let forward = report_tx.downgrade();
    let mut cancel = cx.shared.cancel.subscribe();
    actors.push(tokio::spawn(async move {
        cancelled(&mut cancel).await;
        if let Some(tx) = forward.upgrade() {
            let _ = tx.send(Inbox::Cancelled).await;
        }
    }));
    drop(report_tx);
    let _abort = AbortOnDrop(actors);

    let start_round = {
        let state = cx.shared.log.lock();
        state.state.round.max(1)
    };
    let index_of = |name: &str| nodes.iter().position(|n| n.name == name);
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| n.after.iter().filter_map(|a| index_of(a)).collect())
        .collect();

    let draining = || *cx.rt.draining.borrow();
    let mut stop = false;
    let mut last_round = start_round;
    for round in start_round..=workflow.max_rounds {
        if draining() {
            return Ok(RunStatus::Running);
        }
        last_round = round;
        let current = cx.shared.log.lock().state.round;
        if current != round {
            cx.emit(EventKind::RoundStarted { round }, false).await?;
        }
        let mut done: Vec<bool> = {
            let log = cx.shared.log.lock();
            nodes
                .iter()
                .map(|n| !n.rounds.runs_in(round) || log.state.is_finished(round, &n.name))
                .collect()
        };
        let mut dispatched = done.clone();
        let mut dispatched_at = vec![None; nodes.len()];
        let mut in_flight = 0usize;
        loop {
            for i in 0..nodes.len() {
                if !dispatched[i] && deps[i].iter().all(|&d| done[d]) && !draining() {
                    dispatched[i] = true;
                    dispatched_at[i] = Some(Instant::now());
                    in_flight += 1;
                    // A node has one command at a time, so its mailbox has room: no need
                    // to go through the channel's wait for a permit.
                    let stopped = || RuntimeError::Internal("a node actor stopped".into());
                    match mailboxes[i].try_send(NodeCommand { round }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(cmd)) => {
                            mailboxes[i].send(cmd).await.map_err(|_| stopped())?;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
                    }
                }
            }
            if in_flight == 0 {
                break;
            }
            let report = match report_rx.recv().await {
                Some(Inbox::Report(report)) => report,
                Some(Inbox::Cancelled) => {
                    cx.emit(EventKind::RunCancelled, true).await?;
                    return Ok(RunStatus::Cancelled);
                }
                None => {
                    return Err(RuntimeError::Internal("every node actor stopped".into()));
                }
            };
            in_flight -= 1;
            let node = &nodes[report.node];
            match report.result {
                Ok(node_done) => {
                    let work = node_done.work;
                    // The checkpoint: the node's items (written deferred) are made durable
                    // while the journal syncs the event, and it counts once both are. A crash
                    // between the two leaves a checkpoint whose items may be missing; a
                    // resume voids it (see `Runtime::resume`). The store flush is shared:
                    // one checkpoint leads it, the others await it (`durable::StoreSync`).
                    let store_seq = node_done.store_seq;
                    let items_durable = cx.rt.store_sync.durable(&cx.rt.store, store_seq);
                    record_with(
                        &cx.rt,
                        &cx.shared,
                        EventKind::NodeFinished {
                            node: cx.node_name(report.node),
                            role: cx.role_name(report.node),
                            round: report.round,
                            items: node_done.items.into(),
                            usage: node_done.usage,
                        },
                        true,
                        items_durable,
                    )
                    .await?;
                    done[report.node] = true;
                    if let (Some(timings), Some(at)) = (&cx.rt.timings, dispatched_at[report.node])
                    {
                        timings.samples.lock().push((at.elapsed(), work));
                    }
                }
                Err(error) => {
                    let error = format!("node `{}` failed in round {round}: {error}", node.name);
                    cx.emit(
                        EventKind::RunFailed {
                            error: error.clone(),
                        },
                        true,
                    )
                    .await?;
                    return Ok(RunStatus::Failed);
                }
            }
        }
        if done.iter().any(|d| !d) {
            // Draining: the nodes in flight have checkpointed; the rest run after a restart.
            return Ok(RunStatus::Running);
        }
        stop = stop_condition_holds(cx, round).await?;
        cx.emit(EventKind::RoundFinished { round, stop }, false)
            .await?;
        if stop {
            break;
        }
    }
    let answer = final_answer(cx).await?;
    tracing::info!(run = %cx.shared.id, rounds = last_round, stop, "run finished");
    cx.emit(EventKind::RunFinished { answer }, true).await?;
    Ok(RunStatus::Finished)
}

/// Writes the run's task item unless it exists (runs with slots write it once they get one).
///
/// The write is deferred (no fsync of its own): the first checkpoint makes the store durable
/// through the sequence number its node saw after writing back, which covers the task item,
/// and a run that crashes before any checkpoint writes its task item again when it resumes.
async fn ensure_task_item(cx: &Arc<RunCx>) -> Result<(), RuntimeError> {
    let record = Arc::clone(&cx.record);
    blocking(cx, move |rt| {
        let filter = Filter::namespace(record.namespace.as_str())
            .kinds([Kind::Task])
            .tag(crate::runtime::TASK_ORIGIN);
        if rt.store.count(&filter)? == 0 {
            rt.store.put_batch_deferred(vec![crate::runtime::task_item(
                &record.namespace,
                &record.input,
            )])?;
        }
        Ok(())
    })
    .await
}

/// Resolves once the switch is on (never, if the switch is dropped first).
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Whether an item of the stop kind with enough confidence was produced in `round`.
async fn stop_condition_holds(cx: &Arc<RunCx>, round: u32) -> Result<bool, RuntimeError> {
    let Some(stop) = cx.workflow.stop_when.clone() else {
        return Ok(false);
    };
    let ids: Vec<ItemId> = {
        let log = cx.shared.log.lock();
        log.state
            .in_round(round)
            .flat_map(|c| c.items.iter().copied())
            .collect()
    };
    if ids.is_empty() {
        return Ok(false);
    }
    let items = blocking(cx, move |rt| Ok(rt.store.get_many(&ids)?)).await?;
    Ok(items
        .into_iter()
        .flatten()
        .any(|item| item.kind == stop.kind && item.confidence >= stop.min_confidence))
}

/// The newest answer the run produced (the stop kind, or `answer`).
async fn final_answer(cx: &Arc<RunCx>) -> Result<Option<ItemId>, RuntimeError> {
    let kind = cx
        .workflow
        .stop_when
        .as_ref()
        .map(|s| s.kind.clone())
        .unwrap_or(Kind::Answer);
    let namespace = cx.record.namespace.clone();
    let found = blocking(cx, move |rt| {
        Ok(rt.store.list(
            &Filter::namespace(namespace).kinds([kind]),
            &Page::newest(1),
        )?)
    })
    .await?;
    Ok(found.first().map(|i| i.id))
}

async fn blocking<T: Send + 'static>(
    cx: &Arc<RunCx>,
    f: impl FnOnce(&Inner) -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    let rt = Arc::clone(&cx.rt);
    tokio::task::spawn_blocking(move || f(&rt))
        .await
        .map_err(|e| RuntimeError::Internal(format!("a blocking task failed: {e}")))?
}

async fn node_actor(
    cx: Arc<RunCx>,
    index: usize,
    mut mailbox: mpsc::Receiver<NodeCommand>,
    reports: mpsc::Sender<Inbox>,
) {
    while let Some(cmd) = mailbox.recv().await {
        let span = tracing::info_span!(
            "node",
            run = %cx.shared.id,
            node = %cx.workflow.nodes[index].name,
            round = cmd.round
        );
        let result = run_node(&cx, index, cmd.round).instrument(span).await;
        let report = NodeReport {
            node: index,
            round: cmd.round,
            result,
        };
        // The mailbox holds one report per node: there is always room.
        let sent = match reports.try_send(Inbox::Report(report)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(msg)) => reports.send(msg).await.is_ok(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        };
        if !sent {
            break;
        }
    }
}

/// Runs a node with its timeout and retries.
async fn run_node(cx: &Arc<RunCx>, index: usize, round: u32) -> Result<NodeDone, String> {
    let node = &cx.workflow.nodes[index];
    let attempts = node.retries + 1;
    let mut usage = UsageTotals::default();
    let mut last_error = String::new();
    let mut work = Duration::ZERO;
    for attempt in 1..=attempts {
        let emitted = cx
            .emit(
                EventKind::NodeStarted {
                    node: cx.node_name(index),
                    role: cx.role_name(index),
                    round,
                    attempt,
                },
                false,
            )
            .await;
        if let Err(e) = emitted {
            return Err(e.to_string());
        }
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            node.timeout,
            attempt_node(cx, index, round, attempt, &mut usage),
        )
        .await;
        let elapsed = started.elapsed();
        usage.wall_ms += elapsed.as_secs_f64() * 1e3;
        work += elapsed;
        let error = match outcome {
            Ok(Ok((items, store_seq))) => {
                usage.nodes += 1;
                return Ok(NodeDone {
                    items,
                    store_seq,
                    usage,
                    work,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {}", fmt_duration(node.timeout)),
        };
        let will_retry = attempt < attempts;
        tracing::warn!(run = %cx.shared.id, node = %node.name, round, attempt, %error, will_retry, "node attempt failed");
        let _ = cx
            .emit(
                EventKind::NodeFailed {
                    node: cx.node_name(index),
                    round,
                    attempt,
                    error: error.clone(),
                    will_retry,
                },
                false,
            )
            .await;
        last_error = error;
    }
    Err(format!("{last_error} (after {attempts} attempts)"))
}

fn fmt_duration(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// One attempt: route, act, write back. Returns the items produced and the store's sequence
/// number after writing them (not yet durable: see `orchestrate`).
async fn attempt_node(
    cx: &Arc<RunCx>,
    index: usize,
    round: u32,
    attempt: u32,
    usage: &mut UsageTotals,
) -> Result<(Vec<ItemId>, u64), RuntimeError> {
    let workflow = &cx.workflow;
    let node = &workflow.nodes[index];
    let role = workflow.role_of(node);
    let stage = workflow.stage_of(node);
    let record = &cx.record;
    let query = node.render_query(&TemplateVars {
        task: &record.input,
        query: "",
        context: "",
        role: &node.role,
        stage: &stage.name,
        round,
        output_format: "",
    });

    // 1. Route.
    let budget = effective_budget(&role.profile, stage, node.budget, cx.budget.as_deref());
    let pack: ContextPack = {
        let workflow = Arc::clone(workflow);
        let record = Arc::clone(record);
        let query = query.clone();
        let route = move |rt: &Inner| {
            let node = &workflow.nodes[index];
            let req = RouteRequest {
                namespaces: &record.read_namespaces,
                role: &workflow.role_of(node).profile,
                stage: workflow.stage_of(node),
                query: &query,
                query_vector: None,
                round,
                budget,
                policy: record.policy,
                weights: &workflow.router.weights,
                as_of_seq: Some(rt.store.last_seq()),
            };
            Ok(rt.router.route(&req)?)
        };
        // With an embedder that costs microseconds, routing is a fraction of a millisecond of
        // CPU: it runs here, as handing it to a blocking thread and back costs about as much
        // again (two thread wake-ups). A model's inference (milliseconds) would hold up the
        // executor's other tasks, so it goes to a blocking thread.
        if cx.rt.store.embedder().recomputable() {
            route(&cx.rt)?
        } else {
            blocking(cx, route).await?
        }
    };
    if let Some(run_budget) = &cx.budget {
        run_budget.charge(u64::from(pack.tokens_used));
    }
    usage.context_tokens += u64::from(pack.tokens_used);
    cx.emit(
        EventKind::ContextRouted {
            node: cx.node_name(index),
            round,
            namespaces: record.read_namespaces.clone(),
            as_of_seq: pack.manifest.as_of_seq.unwrap_or_default(),
            manifest: Arc::new(pack.manifest.clone()),
        },
        false,
    )
    .await?;

    // 2. Act.
    let agent = cx.rt.agent_for(&role.name)?;
    let model = model_settings(cx, node);
    let reply: AgentReply = agent
        .act(AgentInput {
            run_id: &cx.shared.id,
            node,
            role,
            stage,
            round,
            attempt,
            task: &record.input,
            query: &query,
            context: &pack,
            model: &model,
        })
        .await
        .map_err(|e| match e {
            AgentError::Llm(e) => RuntimeError::Llm(e),
            other => RuntimeError::Agent(other.to_string()),
        })?;
    for call in &reply.calls {
        usage.add_call(&call.usage, call.cost_usd);
        cx.emit(
            EventKind::LlmCall {
                node: cx.node_name(index),
                role: cx.role_name(index),
                round,
                provider: call.provider.clone(),
                model: call.model.clone(),
                usage: call.usage,
                usage_estimated: call.usage_estimated,
                attempts: call.attempts,
                latency_ms: call.latency.as_secs_f64() * 1e3,
                cost_usd: call.cost_usd,
            },
            false,
        )
        .await?;
    }

    // 3. Write back.
    let parse = describe_parse(&reply.output.parsed);
    let outcome = {
        let inline = cx.rt.store.quick_write(reply.output.items.len());
        let workflow = Arc::clone(workflow);
        let record = Arc::clone(record);
        let write = move |rt: &Inner| {
            let node = &workflow.nodes[index];
            let target = WriteTarget {
                namespace: &record.namespace,
                node: &node.name,
                role: workflow.role_of(node),
                stage: &node.stage,
                round,
                context: &pack,
            };
            let outcome = write_back(rt.store.as_ref(), &target, &reply.output)?;
            Ok((outcome, rt.store.last_seq()))
        };
        // Like routing: a write the store calls quick (one item, a cheap embedder, no long
        // write under way; deferred, so no fsync) is tens of microseconds of CPU, so it runs
        // here rather than paying two thread wake-ups, and a burst of replies (every run's LLM
        // call returning at once) does not start a blocking thread each. Anything else goes
        // to a blocking thread.
        if inline {
            write(&cx.rt)?
        } else {
            blocking(cx, write).await?
        }
    };
    let (outcome, store_seq) = outcome;
    let items = outcome.item_ids();
    cx.emit(
        EventKind::ItemsWritten {
            node: cx.node_name(index),
            round,
            written: outcome.written.iter().map(|i| i.id).collect(),
            merged: outcome.merged.clone(),
            parse: if outcome.replayed {
                "already written (resumed)".into()
            } else {
                parse
            },
        },
        false,
    )
    .await?;
    Ok((items, store_seq))
}

fn model_settings(cx: &RunCx, node: &NodeSpec) -> ModelSettings {
    let workflow = &cx.workflow;
    let role = workflow.role_of(node);
    let m = &workflow.model;
    let o = &role.model;
    ModelSettings {
        name: cx
            .rt
            .model_override
            .clone()
            .or_else(|| o.name.clone())
            .or_else(|| m.name.clone()),
        temperature: o.temperature.or(m.temperature),
        max_tokens: o.max_tokens.or(m.max_tokens),
        json: o.json.unwrap_or(m.json),
    }
}

/// Items by id, in the given order, skipping missing ones.
pub(crate) fn items_in_order(
    store: &dyn agentd_memory::MemoryStore,
    ids: &[ItemId],
) -> Result<Vec<MemoryItem>, RuntimeError> {
    Ok(store.get_many(ids)?.into_iter().flatten().collect())
}
