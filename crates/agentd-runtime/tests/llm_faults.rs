//! The runtime over the real OpenAI-compatible client and a misbehaving server on loopback:
//! 500s, garbage, a server that hangs. Runs either finish or fail with the error recorded; none
//! hangs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentd_llm::testing::{MockReply, MockServer};
use agentd_llm::{OpenAiClient, ProviderConfig};
use agentd_memory::embed::HashingEmbedder;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{EmbeddedStore, StoreOptions};
use agentd_runtime::{RunRequest, RunStatus, Runtime};
use agentd_workflow::Workflow;

const WORKFLOW: &str = r#"
[workflow]
name = "one_step"
max_rounds = 1

[model]
json = true
timeout_secs = 3

[roles.answerer]
description = "Answers."
writes = ["answer"]
prompt = { system = "Answer.", template = "{{task}}\n{{context}}\n{{output_format}}" }

[nodes.answer]
role = "answerer"
stage = "answer"
retries = 1
"#;

fn runtime(dir: &std::path::Path, url: String, timeout_secs: f64) -> Runtime {
    let mut config = ProviderConfig::new(url, "mock");
    config.timeout_secs = timeout_secs;
    config.max_retries = 2;
    config.backoff_base_ms = 10;
    config.backoff_max_ms = 20;
    let store = EmbeddedStore::open(
        dir.join("memory"),
        StoreOptions::new(
            Arc::new(HashingEmbedder::new(64).unwrap()),
            default_token_counter(),
        ),
    )
    .unwrap();
    Runtime::builder()
        .data_dir(dir)
        .store(Arc::new(store))
        .llm(Arc::new(OpenAiClient::new(config).unwrap()))
        .build()
        .unwrap()
}

fn workflow() -> Arc<Workflow> {
    Arc::new(Workflow::parse(WORKFLOW, "test", None).unwrap())
}

const ANSWER: &str = r#"{"answer": {"content": "The Seine", "confidence": 0.9, "cites": []}}"#;

#[tokio::test]
async fn server_errors_are_retried_and_the_run_finishes() {
    let server = MockServer::sequence(vec![
        MockReply::Status(500),
        MockReply::Status(503),
        MockReply::text(ANSWER),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), server.base_url(), 3.0);
    let outcome = rt
        .run(RunRequest::new(workflow(), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished, "{:?}", outcome.error);
    assert_eq!(outcome.answer.unwrap().content, "The Seine");
    assert_eq!(server.requests(), 3);
    // The request asked for the role's JSON schema.
    let body = &server.bodies()[2];
    assert_eq!(body["response_format"]["type"], "json_schema");
}

#[tokio::test]
async fn garbage_from_the_server_fails_the_run_with_a_clear_error() {
    let server = MockServer::with(|_| MockReply::Garbage);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), server.base_url(), 3.0);
    let outcome = rt
        .run(RunRequest::new(workflow(), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("answer"), "{error}");
    // 2 node attempts × (1 + 2 client retries).
    assert_eq!(server.requests(), 6, "{error}");
}

#[tokio::test]
async fn a_hanging_server_times_out_and_the_run_fails_instead_of_hanging() {
    let server = MockServer::with(|_| MockReply::Hang);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), server.base_url(), 0.3);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        rt.run(RunRequest::new(workflow(), "Which river?")),
    )
    .await
    .expect("the run ends")
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("timed out") || error.contains("timeout"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn unparseable_text_from_the_model_becomes_a_note_and_the_run_goes_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let server = MockServer::with(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        MockReply::text("I think it is probably the Seine, but I am not sure.")
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), server.base_url(), 3.0);
    let outcome = rt
        .run(RunRequest::new(workflow(), "Which river?"))
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let notes = rt
        .store()
        .list(
            &agentd_memory::Filter::namespace(outcome.namespace.clone())
                .kinds([agentd_memory::Kind::Note]),
            &agentd_memory::Page::first(10),
        )
        .unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].content.contains("Seine"));
}
