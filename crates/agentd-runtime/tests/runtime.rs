//! Orchestration tests: scripted LLMs and Rust agents over a real store on disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentd_llm::{ChatRequest, LlmClient, LlmError, ScriptedClient};
use agentd_memory::embed::Embedder;
use agentd_memory::embed::HashingEmbedder;
use agentd_memory::tokens::TokenCounter;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{
    EmbeddedStore, Filter, ItemId, Kind, MemoryItem, MemoryStore, NamespaceStats, NewItem, Page,
    SearchHit, SearchQuery, StoreOptions,
};
use agentd_router::Policy;
use agentd_runtime::{
    Agent, AgentError, AgentInput, AgentReply, Document, Durability, EventKind, OutputItem,
    RunRequest, RunStatus, Runtime, RuntimeBuilder,
};
use agentd_workflow::Workflow;
use parking_lot::Mutex;

const WORKFLOW: &str = r#"
[workflow]
name = "qa"
max_rounds = 3
stop_when = { kind = "answer", min_confidence = 0.7 }

[router]
policy = "rcr"
run_budget = 20000

[roles.planner]
description = "Breaks the question into sub-questions."
reads = ["task"]
writes = ["plan"]
budget = 300
prompt = { system = "PLANNER", template = "{{task}}\n{{context}}\n{{output_format}}" }

[roles.researcher]
description = "Finds evidence in the documents."
writes = ["evidence"]
budget = 400
prompt = { system = "RESEARCHER", template = "{{task}}\n{{context}}\n{{output_format}}" }

[roles.answerer]
description = "Answers the question, citing evidence."
writes = ["answer"]
budget = 500
readers = ["answerer"]
prompt = { system = "ANSWERER", template = "{{task}}\n{{context}}\n{{output_format}}" }

[nodes.plan]
role = "planner"
stage = "plan"
rounds = "first"

[nodes.research]
role = "researcher"
stage = "gather"
after = ["plan"]

[nodes.answer]
role = "answerer"
stage = "answer"
after = ["research"]
retries = 2
timeout_secs = 5
"#;

fn workflow(text: &str) -> Arc<Workflow> {
    Arc::new(Workflow::parse(text, "test", None).unwrap_or_else(|e| panic!("{e}")))
}

fn store(dir: &std::path::Path) -> Arc<dyn MemoryStore> {
    let options = StoreOptions::new(
        Arc::new(HashingEmbedder::new(256).unwrap()),
        default_token_counter(),
    );
    Arc::new(EmbeddedStore::open(dir.join("memory"), options).unwrap())
}

/// A builder over a data folder and a store in `dir`.
fn builder(dir: &std::path::Path) -> RuntimeBuilder {
    Runtime::builder().data_dir(dir).store(store(dir))
}

/// A runtime in `dir` whose LLM is the scripted one, answering with confidence 0.9.
fn scripted_runtime(dir: &std::path::Path) -> Runtime {
    builder(dir)
        .llm(llm(0.9) as Arc<dyn LlmClient>)
        .build()
        .unwrap()
}

fn docs() -> Vec<Document> {
    [
        (
            "Paris",
            "Paris is the capital of France. The Seine flows through Paris.",
        ),
        (
            "Seine",
            "The Seine is a river in northern France that reaches the sea at Le Havre.",
        ),
        (
            "Berlin",
            "Berlin is the capital of Germany. The Spree flows through Berlin.",
        ),
        ("Alps", "The Alps are the highest mountain range in Europe."),
    ]
    .map(|(t, x)| Document {
        title: Some(t.into()),
        text: x.into(),
    })
    .to_vec()
}

/// A scripted LLM answering by role (the system prompt names it), citing what it saw.
fn llm(answer_confidence: f32) -> Arc<ScriptedClient> {
    Arc::new(
        ScriptedClient::new(move |req: &ChatRequest| {
            let system = req.messages[0].content.as_str();
            let user = req.messages[1].content.as_str();
            // The first item id shown in the context.
            let cite = user
                .split("- [")
                .nth(1)
                .map(|s| s[..8].to_owned())
                .unwrap_or_default();
            Ok(match system {
                "PLANNER" => r#"{"items": [{"kind": "plan", "content": "Find the capital, then its river."}]}"#.into(),
                "RESEARCHER" => format!(
                    r#"```json
{{"items": [{{"kind": "evidence", "content": "The Seine flows through Paris.", "confidence": 0.9, "cites": ["{cite}"]}},]}}
```"#
                ),
                _ => format!(
                    r#"{{"answer": {{"content": "The Seine", "confidence": {answer_confidence}, "cites": ["{cite}"]}}}}"#
                ),
            })
        })
        .recording(),
    )
}

#[tokio::test]
async fn a_run_routes_acts_writes_back_and_stops_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let llm = llm(0.9);
    let runtime = builder(dir.path())
        .llm(Arc::clone(&llm) as Arc<dyn LlmClient>)
        .build()
        .unwrap();
    runtime.load_documents("docs", docs()).unwrap();
    let outcome = runtime
        .run(
            RunRequest::new(
                workflow(WORKFLOW),
                "Which river flows through the capital of France?",
            )
            .documents("docs"),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished, "{:?}", outcome.error);
    // The answer has confidence 0.9 >= 0.7: one round, three nodes, three calls.
    assert_eq!(outcome.rounds, 1);
    assert_eq!(llm.calls(), 3);
    let answer = outcome.answer.expect("an answer");
    assert_eq!(answer.content, "The Seine");
    assert_eq!(answer.kind, Kind::Answer);
    assert!(!outcome.evidence.is_empty(), "the answer cites what it saw");
    assert_eq!(outcome.usage.total.calls, 3);
    assert_eq!(outcome.usage.by_role.len(), 3);
    assert!(outcome.usage.total.prompt_tokens > 0);
    assert!(outcome.usage.total.context_tokens > 0);

    // Every pack stayed within its budget; every event is in order.
    let events = runtime.events(&outcome.id).unwrap();
    let mut routed = 0;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        if let EventKind::ContextRouted { manifest, .. } = &e.kind {
            routed += 1;
            assert!(manifest.tokens_used <= manifest.budget);
        }
    }
    assert_eq!(routed, 3);
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::RunFinished { .. }
    ));

    // Items carry producer, stage, readers; the answer is readable by the answerer only.
    let items = runtime
        .store()
        .list(
            &Filter::namespace(outcome.namespace.clone()),
            &Page::first(100),
        )
        .unwrap();
    let kinds: Vec<_> = items.iter().map(|i| i.kind.clone()).collect();
    assert_eq!(
        kinds,
        [Kind::Task, Kind::Plan, Kind::Evidence, Kind::Answer]
    );
    assert_eq!(items[2].producer.role, "researcher");
    assert_eq!(items[2].stage.as_deref(), Some("gather"));
    assert!(!items[3].readers.allows("planner"));
    // The fenced JSON with a trailing comma was repaired, not dropped.
    let parses: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ItemsWritten { parse, .. } => Some(parse.clone()),
            _ => None,
        })
        .collect();
    assert!(parses[1].starts_with("repaired"), "{parses:?}");

    // Replay under `full` recomputes the same calls without an LLM.
    let report = runtime.replay(&outcome.id, Policy::Full).unwrap();
    assert_eq!(report.calls.len(), 3);
    assert_eq!(llm.calls(), 3);
}

#[tokio::test]
async fn rounds_repeat_until_the_stop_condition_and_memory_does_not_bloat() {
    let dir = tempfile::tempdir().unwrap();
    // Low confidence: never stops early, runs all 3 rounds.
    let llm = llm(0.3);
    let runtime = builder(dir.path())
        .llm(Arc::clone(&llm) as Arc<dyn LlmClient>)
        .build()
        .unwrap();
    runtime.load_documents("docs", docs()).unwrap();
    let outcome = runtime
        .run(RunRequest::new(workflow(WORKFLOW), "Which river?").documents("docs"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    assert_eq!(outcome.rounds, 3);
    // plan runs in round 1 only: 1 + 2 * 3 = 7 calls.
    assert_eq!(llm.calls(), 7);
    // The same evidence and answer each round were merged, not written three times.
    let evidence = runtime
        .store()
        .count(&Filter::namespace(outcome.namespace.clone()).kinds([Kind::Evidence]))
        .unwrap();
    assert_eq!(evidence, 1);
    let answers = runtime
        .store()
        .count(
            &Filter::namespace(outcome.namespace.clone())
                .kinds([Kind::Answer])
                .include_superseded(true),
        )
        .unwrap();
    assert_eq!(answers, 1);
}

#[tokio::test]
async fn a_failing_llm_fails_the_run_with_the_error_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let llm = ScriptedClient::new(move |req: &ChatRequest| {
        counted.fetch_add(1, Ordering::SeqCst);
        if req.messages[0].content == "ANSWERER" {
            Err(LlmError::Status {
                status: 500,
                body: "model crashed".into(),
            })
        } else {
            Ok("not json at all".into())
        }
    });
    let runtime = builder(dir.path()).llm(Arc::new(llm)).build().unwrap();
    let outcome = runtime
        .run(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("answer"), "{error}");
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("3 attempts"), "{error}");
    // plan + research + 3 answer attempts.
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // Garbage replies became a note (the raw-text fallback), not nothing; the second, identical
    // one was merged into the first.
    let notes = runtime
        .store()
        .list(
            &Filter::namespace(outcome.namespace.clone()).kinds([Kind::Note]),
            &Page::first(10),
        )
        .unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].content, "not json at all");
    let merged = runtime
        .events(&outcome.id)
        .unwrap()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::ItemsWritten { node, merged, .. } if &**node == "research" && merged == &vec![notes[0].id]));
    assert!(merged, "research's identical note was merged");
}

/// A Rust agent that never answers.
struct Hang;

#[async_trait::async_trait]
impl Agent for Hang {
    async fn act(&self, _: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_hanging_agent_times_out_and_fails_the_run() {
    let text = WORKFLOW
        .replace("timeout_secs = 5", "timeout_secs = 0.2")
        .replace("retries = 2", "retries = 1");
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path())
        .llm(llm(0.9) as Arc<dyn LlmClient>)
        .agent("answerer", Hang)
        .build()
        .unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        runtime.run(RunRequest::new(workflow(&text), "Which river?")),
    )
    .await
    .expect("the run ends")
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(outcome.error.unwrap().contains("timed out"));
}

#[tokio::test]
async fn cancelling_stops_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path())
        .llm(llm(0.9) as Arc<dyn LlmClient>)
        .agent("answerer", Hang)
        .build()
        .unwrap();
    let handle = runtime
        .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("cancellation ends the run")
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled);
}

/// A cancellation that arrives before the run's task first runs still stops it, queued for a
/// run slot or not (`#[tokio::test]` is single-threaded: nothing spawned runs until we await).
#[tokio::test]
async fn a_run_cancelled_before_its_task_first_runs_is_cancelled() {
    for slots in [None, Some(1)] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = builder(dir.path()).llm(llm(0.9) as Arc<dyn LlmClient>);
        if let Some(n) = slots {
            builder = builder.max_running(n);
        }
        let runtime = builder.build().unwrap();
        let handle = runtime
            .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
            .await
            .unwrap();
        handle.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("the run ends")
            .unwrap();
        assert_eq!(outcome.status, RunStatus::Cancelled, "run slots: {slots:?}");
    }
}

/// Waiting on a run that already ended answers at once, even when nobody waited as it ended.
#[tokio::test]
async fn waiting_on_an_ended_run_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = scripted_runtime(dir.path());
    let handle = runtime
        .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    tokio::time::timeout(Duration::from_secs(30), async {
        while runtime.state(&id).unwrap().status == RunStatus::Running {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the run ends");
    let outcome = tokio::time::timeout(Duration::from_secs(5), handle.wait())
        .await
        .expect("an ended run's wait answers")
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
}

#[tokio::test]
async fn without_an_llm_or_agent_a_run_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = builder(dir.path()).build().unwrap();
    let err = match runtime
        .start(RunRequest::new(workflow(WORKFLOW), "q"))
        .await
    {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started without an LLM"),
    };
    assert!(err.contains("--llm-url"), "{err}");
}

#[tokio::test]
async fn a_role_without_a_prompt_needs_a_rust_agent() {
    let text = WORKFLOW.replace(
        "prompt = { system = \"ANSWERER\", template = \"{{task}}\\n{{context}}\\n{{output_format}}\" }\n",
        "",
    );
    assert_ne!(text, WORKFLOW);
    let dir = tempfile::tempdir().unwrap();
    let runtime = scripted_runtime(dir.path());
    let err = match runtime.start(RunRequest::new(workflow(&text), "q")).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an LLM was asked to play a role without a prompt"),
    };
    assert!(err.contains("no [prompt]"), "{err}");
}

/// Counts invocations per (node, round); hangs at one (node, round) the first time.
struct Counting {
    seen: Seen,
    hang_at: Option<(String, u32)>,
    kind: &'static str,
}

#[async_trait::async_trait]
impl Agent for Counting {
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        let key = (input.node.name.clone(), input.round);
        *self.seen.lock().entry(key.clone()).or_default() += 1;
        if self.hang_at.as_ref() == Some(&key) {
            std::future::pending::<()>().await;
        }
        Ok(AgentReply::items(vec![OutputItem {
            kind: self.kind.into(),
            content: format!(
                "{} says something new in round {}",
                input.node.name, input.round
            ),
            key: None,
            confidence: Some(0.5),
            cites: Vec::new(),
            payload: None,
        }]))
    }
}

/// Invocation counts per (node, round), shared by the runtimes of one test.
type Seen = Arc<Mutex<HashMap<(String, u32), usize>>>;

/// A runtime in `dir` over `store` whose three roles are `Counting` agents (hanging at `hang`).
fn counting_runtime(
    dir: &std::path::Path,
    store: Arc<dyn MemoryStore>,
    seen: &Seen,
    hang: Option<(String, u32)>,
) -> Runtime {
    let mut b = Runtime::builder().data_dir(dir).store(store);
    for (role, kind) in [
        ("planner", "plan"),
        ("researcher", "evidence"),
        ("answerer", "answer"),
    ] {
        b = b.agent(
            role,
            Counting {
                seen: Arc::clone(seen),
                hang_at: hang.clone(),
                kind,
            },
        );
    }
    b.build().unwrap()
}

#[test]
fn an_interrupted_run_resumes_without_redoing_finished_nodes_or_duplicating_items() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let build =
        |hang: Option<(String, u32)>| counting_runtime(dir.path(), Arc::clone(&store), &seen, hang);

    // Phase 1: the run hangs in round 2 at `research`; its process "dies" (the tokio runtime is
    // torn down mid-run, the journal keeps what was checkpointed).
    let run_id = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let id = rt.block_on(async {
            let runtime = build(Some(("research".into(), 2)));
            let handle = runtime
                .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
                .await
                .unwrap();
            let mut events = handle.subscribe();
            loop {
                let e = events.recv().await.unwrap();
                if let EventKind::NodeStarted { node, round: 2, .. } = &e.kind
                    && &**node == "research"
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            handle.id().to_owned()
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        id
    };
    let before = seen.lock().clone();
    assert_eq!(before.get(&("research".to_string(), 2)), Some(&1));

    // Phase 2: a new runtime over the same data finds the run interrupted and resumes it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runtime = build(None);
        assert_eq!(runtime.interrupted(), vec![run_id.clone()]);
        let outcome = runtime.resume(&run_id).await.unwrap().wait().await.unwrap();
        assert_eq!(outcome.status, RunStatus::Finished, "{:?}", outcome.error);
        assert_eq!(outcome.rounds, 3);
        let seen = seen.lock().clone();
        // Round 1 nodes and round 2's... nothing finished before research@2 ran once more.
        for ((node, round), n) in &seen {
            let expected = if node == "research" && *round == 2 {
                2
            } else {
                1
            };
            assert_eq!(*n, expected, "{node}@{round} ran {n} times");
        }
        // plan (round 1 only) + research and answer in 3 rounds.
        assert_eq!(seen.len(), 7);
        // One item per (node, round), none duplicated.
        let items = runtime
            .store()
            .list(
                &Filter::namespace(outcome.namespace.clone()).include_superseded(true),
                &Page::first(100),
            )
            .unwrap();
        assert_eq!(items.len(), 1 + 7, "task + one item per node run");
        assert!(runtime.interrupted().is_empty());
    });
}

/// A store whose deferred writes from one node go elsewhere: as if a crash lost them after the
/// journal had synced the node's checkpoint (the two are synced side by side).
struct LosesNode {
    inner: Arc<dyn MemoryStore>,
    elsewhere: Arc<dyn MemoryStore>,
    node: &'static str,
}

impl MemoryStore for LosesNode {
    fn put_batch(&self, items: Vec<NewItem>) -> agentd_memory::Result<Vec<MemoryItem>> {
        self.inner.put_batch(items)
    }
    fn put_batch_deferred(&self, items: Vec<NewItem>) -> agentd_memory::Result<Vec<MemoryItem>> {
        if items.iter().any(|i| i.producer.node == self.node) {
            self.elsewhere.put_batch_deferred(items)
        } else {
            self.inner.put_batch_deferred(items)
        }
    }
    fn make_durable(&self, seq: u64) -> agentd_memory::Result<()> {
        self.inner.make_durable(seq)
    }
    fn get(&self, id: ItemId) -> agentd_memory::Result<Option<MemoryItem>> {
        self.inner.get(id)
    }
    fn list(&self, filter: &Filter, page: &Page) -> agentd_memory::Result<Vec<MemoryItem>> {
        self.inner.list(filter, page)
    }
    fn count(&self, filter: &Filter) -> agentd_memory::Result<usize> {
        self.inner.count(filter)
    }
    fn history(&self, namespace: &str, key: &str) -> agentd_memory::Result<Vec<MemoryItem>> {
        self.inner.history(namespace, key)
    }
    fn search(
        &self,
        query: &SearchQuery<'_>,
        filter: &Filter,
        k: usize,
    ) -> agentd_memory::Result<Vec<SearchHit>> {
        self.inner.search(query, filter, k)
    }
    fn embeddings(&self, ids: &[ItemId]) -> agentd_memory::Result<Vec<Option<Vec<f32>>>> {
        self.inner.embeddings(ids)
    }
    fn delete_namespace(&self, namespace: &str) -> agentd_memory::Result<usize> {
        self.inner.delete_namespace(namespace)
    }
    fn namespaces(&self) -> agentd_memory::Result<Vec<NamespaceStats>> {
        self.inner.namespaces()
    }
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }
    fn embedder(&self) -> &Arc<dyn Embedder> {
        self.inner.embedder()
    }
    fn token_counter(&self) -> &Arc<dyn TokenCounter> {
        self.inner.token_counter()
    }
}

#[test]
fn a_checkpoint_whose_items_the_store_lost_is_voided_on_resume_and_the_node_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let build = |store: Arc<dyn MemoryStore>, hang: Option<(String, u32)>| {
        counting_runtime(dir.path(), store, &seen, hang)
    };

    // Phase 1: `plan`'s items never reach the store, but its checkpoint is synced; the run
    // hangs at `research` in round 1 and its process "dies".
    let lossy: Arc<dyn MemoryStore> = Arc::new(LosesNode {
        inner: Arc::clone(&store),
        elsewhere: self::store(other.path()),
        node: "plan",
    });
    let (run_id, lost) = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let found = rt.block_on(async {
            let runtime = build(lossy, Some(("research".into(), 1)));
            let handle = runtime
                .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
                .await
                .unwrap();
            let mut events = handle.subscribe();
            let mut lost = Vec::new();
            loop {
                let e = events.recv().await.unwrap();
                match &e.kind {
                    EventKind::NodeFinished { node, items, .. } if &**node == "plan" => {
                        lost = items.to_vec();
                    }
                    EventKind::NodeStarted { node, round: 1, .. } if &**node == "research" => {
                        break;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            (handle.id().to_owned(), lost)
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        found
    };
    assert_eq!(lost.len(), 1, "plan checkpointed one item");
    assert!(store.get(lost[0]).unwrap().is_none());

    // Phase 2: the resume voids plan's checkpoint, plan runs again, the run finishes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runtime = build(Arc::clone(&store), None);
        assert_eq!(runtime.interrupted(), vec![run_id.clone()]);
        let handle = runtime.resume(&run_id).await.unwrap();
        let outcome = handle.wait().await.unwrap();
        assert_eq!(outcome.status, RunStatus::Finished, "{:?}", outcome.error);
        assert_eq!(seen.lock().get(&("plan".to_string(), 1)), Some(&2));
        let events = runtime.events(&run_id).unwrap();
        let voided: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::CheckpointVoided {
                    node,
                    round,
                    missing,
                } => Some((node.to_string(), *round, missing.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(voided, vec![("plan".to_string(), 1, lost.clone())]);
        // The final state has plan's new checkpoint, whose items are in the store.
        let state = runtime.state(&run_id).unwrap();
        let plan: Vec<_> = state
            .checkpoints
            .iter()
            .filter(|c| &*c.node == "plan")
            .collect();
        assert_eq!(plan.len(), 1);
        assert_ne!(plan[0].items.to_vec(), lost);
        for id in plan[0].items.iter() {
            assert!(store.get(*id).unwrap().is_some());
        }
    });
}

/// Once a run has ended its events live in the journal, not in memory: they read back as
/// they were published, before and after a restart; a damaged record is an error, not a panic.
#[tokio::test]
async fn an_ended_runs_events_read_back_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let published = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let build = |hook: bool| {
        let mut b = Runtime::builder()
            .data_dir(dir.path())
            .store(Arc::clone(&store))
            .llm(llm(0.9) as Arc<dyn LlmClient>);
        if hook {
            let published = Arc::clone(&published);
            b = b.event_hook(Arc::new(move |e| {
                published.lock().push(serde_json::to_value(e).unwrap());
            }));
        }
        b.build().unwrap()
    };
    // As JSON values: the recorded workflow's keys may come back in another order.
    let as_json = |events: &[Arc<agentd_runtime::Event>]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    };
    let runtime = build(true);
    let outcome = runtime
        .run(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    let events = runtime.events(&outcome.id).unwrap();
    let published = published.lock().clone();
    assert!(published.len() > 5, "{published:?}");
    assert_eq!(as_json(&events), published);
    let (after, _) = runtime.follow(&outcome.id, 3).unwrap();
    assert_eq!(as_json(&after), published[3..]);
    // They are read from the file: with a record in the middle damaged, reading fails cleanly.
    let journal = runtime.journal_path().unwrap().to_owned();
    let damaged = || {
        let intact = std::fs::read(&journal).unwrap();
        let mut bytes = intact.clone();
        let middle = bytes.iter().rposition(|&b| b != 0).unwrap() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&journal, &bytes).unwrap();
        intact
    };
    let intact = damaged();
    let err = runtime.events(&outcome.id).unwrap_err();
    assert!(err.to_string().contains("run journal"), "{err}");
    std::fs::write(&journal, &intact).unwrap();
    runtime.close();
    drop(runtime);

    // After a restart: the same events, from the file too.
    let runtime = build(false);
    assert_eq!(as_json(&runtime.events(&outcome.id).unwrap()), published);
    damaged();
    assert!(runtime.events(&outcome.id).is_err());
}

/// Events reach subscribers in `seq` order even when parallel nodes append concurrently (a
/// stream resumes after the last `seq` it saw, so an event published late would be lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_nodes_publish_their_events_in_seq_order() {
    let text = WORKFLOW.replace(
        "[nodes.answer]\nrole = \"answerer\"\nstage = \"answer\"\nafter = [\"research\"]",
        "[nodes.check]\nrole = \"researcher\"\nstage = \"gather\"\nafter = [\"plan\"]\n\n\
         [nodes.answer]\nrole = \"answerer\"\nstage = \"answer\"\nafter = [\"research\", \"check\"]",
    );
    assert_ne!(text, WORKFLOW, "the workflow has a parallel node");
    let dir = tempfile::tempdir().unwrap();
    let hooked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let runtime = {
        let hooked = Arc::clone(&hooked);
        builder(dir.path())
            .llm(llm(0.9) as Arc<dyn LlmClient>)
            .event_hook(Arc::new(move |e| hooked.lock().push(e.seq)))
            .build()
            .unwrap()
    };
    for _ in 0..10 {
        hooked.lock().clear();
        let handle = runtime
            .start(RunRequest::new(workflow(&text), "Which river?"))
            .await
            .unwrap();
        let mut live = handle.subscribe();
        let mut seen = Vec::new();
        while let Ok(e) = live.recv().await {
            seen.push(e.seq);
        }
        let outcome = handle.wait().await.unwrap();
        assert_eq!(outcome.status, RunStatus::Finished, "{:?}", outcome.error);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "live: {seen:?}");
        let hooked = hooked.lock().clone();
        let expected: Vec<u64> = (1..=hooked.len() as u64).collect();
        assert_eq!(hooked, expected, "hook");
        assert_eq!(seen.last(), hooked.last());
    }
}

#[tokio::test]
async fn checkpoints_off_still_runs_and_leaves_no_journal() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::builder()
        .store(store(dir.path()))
        .durability(Durability::Off)
        .llm(llm(0.9) as Arc<dyn LlmClient>)
        .build()
        .unwrap();
    let outcome = runtime
        .run(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    assert!(runtime.journal_path().is_none());
    // Without a journal, an ended run's events stay in memory.
    let events = runtime.events(&outcome.id).unwrap();
    assert!(matches!(
        events.last().unwrap().kind,
        EventKind::RunFinished { .. }
    ));
}

#[tokio::test]
async fn a_runs_live_channel_carries_every_event_to_its_end_then_closes() {
    use tokio::sync::broadcast::error::RecvError;
    let dir = tempfile::tempdir().unwrap();
    let runtime = scripted_runtime(dir.path());
    let handle = runtime
        .start(RunRequest::new(workflow(WORKFLOW), "Which river?"))
        .await
        .unwrap();
    let id = handle.id().to_owned();
    let (past, mut live) = runtime.follow(&id, 0).unwrap();
    let mut seen: Vec<u64> = past.iter().map(|e| e.seq).collect();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match live.recv().await {
                Ok(e) => {
                    if seen.last().is_none_or(|&last| e.seq > last) {
                        seen.push(e.seq);
                    }
                }
                Err(RecvError::Lagged(_)) => panic!("a 1024-event channel lagged"),
                Err(RecvError::Closed) => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the channel closes after the run's end");
    let events = runtime.events(&id).unwrap();
    assert!(events.last().unwrap().kind.is_terminal());
    assert_eq!(seen, events.iter().map(|e| e.seq).collect::<Vec<_>>());

    // Following a run that has ended: everything is in the log, the channel is closed.
    let (past, mut live) = runtime.follow(&id, 0).unwrap();
    assert_eq!(past.len(), events.len());
    assert!(matches!(live.recv().await, Err(RecvError::Closed)));
}

/// Records the name of the thread each call runs on.
struct ThreadNames {
    names: Arc<Mutex<Vec<String>>>,
    inner: Arc<dyn Agent>,
}

#[async_trait::async_trait]
impl Agent for ThreadNames {
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        self.names.lock().push(name);
        self.inner.act(input).await
    }
}

#[tokio::test]
async fn runs_execute_on_the_executor_they_are_given() {
    let executor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("test-executor")
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let llm_agent: Arc<dyn Agent> =
        Arc::new(agentd_runtime::LlmAgent::new(llm(0.9) as Arc<dyn LlmClient>));
    let mut builder = builder(dir.path()).executor(executor.handle().clone());
    for role in ["planner", "researcher", "answerer"] {
        builder = builder.agent(
            role,
            ThreadNames {
                names: Arc::clone(&names),
                inner: Arc::clone(&llm_agent),
            },
        );
    }
    let runtime = builder.build().unwrap();
    // Started from this (single-threaded) test runtime, run on the executor.
    let outcome = runtime
        .run(RunRequest::new(
            workflow(WORKFLOW),
            "Which river flows through Paris?",
        ))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    let names = names.lock().clone();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n == "test-executor"), "{names:?}");
    drop(runtime);
    executor.shutdown_background();
}
