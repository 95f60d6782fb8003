//! The daemon's API over real HTTP on 127.0.0.1: lifecycle, SSE and its resumption, tenants,
//! malformed requests, admission control, metrics.

mod common;

use std::time::Duration;

use agentd_memory::Filter;
use common::{Daemon, WORKFLOW, llm, read_sse};
use serde_json::{Value, json};

const TOKEN_A: &str = "token-of-tenant-a-0123456789";
const TOKEN_B: &str = "token-of-tenant-b-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_lifecycle_from_submission_to_deletion() {
    let daemon = Daemon::start(llm(Duration::ZERO), |_| {}).await;
    let response = daemon
        .post("/v1/runs")
        .json(&json!({
            "workflow_toml": WORKFLOW,
            "input": "Which river flows through Paris?",
            "documents": [{"title": "Paris", "text": "Paris is the capital of France. The Seine flows through it."}],
            "policy": "rcr",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/runs/{id}"));

    let run = daemon.wait(&id).await;
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["answer"]["content"], "The Seine");
    assert_eq!(run["workflow"], "three_step");
    assert!(
        run["usage"]["total"]["calls"].as_u64().unwrap() >= 3,
        "{run}"
    );

    // Memory: the task, the plan, the evidence, the answer; filtered by kind; documents.
    let memory: Value = daemon
        .get(&format!("/v1/runs/{id}/memory"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = memory["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    for kind in ["task", "plan", "evidence", "answer"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let plans: Value = daemon
        .get(&format!("/v1/runs/{id}/memory?kind=plan"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plans["items"].as_array().unwrap().len(), 1);
    let page: Value = daemon
        .get(&format!("/v1/runs/{id}/memory?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["next_after"].as_u64().unwrap();
    let rest: Value = daemon
        .get(&format!("/v1/runs/{id}/memory?after={next}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), kinds.len() - 2);
    let docs: Value = daemon
        .get(&format!("/v1/runs/{id}/memory?scope=documents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(docs["items"][0]["kind"], "document");

    // Manifests: one per node.
    let manifests: Value = daemon
        .get(&format!("/v1/runs/{id}/manifests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifests["manifests"].as_array().unwrap().len(), 3);
    assert!(manifests["manifests"][0]["manifest"]["entries"].is_array());

    // Listing, filtered by status.
    let listed: Value = daemon
        .get("/v1/runs?status=finished")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["runs"][0]["id"], id.as_str());
    let none: Value = daemon
        .get("/v1/runs?status=failed")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(none["runs"].as_array().unwrap().is_empty());

    // A finished run does not cancel.
    let cancel = daemon
        .post(&format!("/v1/runs/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 409);

    // Delete: the run, its memory and its documents are gone.
    let store = std::sync::Arc::clone(daemon.state.runtime.store());
    let namespace = run["namespace"].as_str().unwrap().to_owned();
    assert!(store.count(&Filter::namespace(namespace.as_str())).unwrap() > 0);
    let deleted = daemon
        .delete(&format!("/v1/runs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    for path in ["", "/memory", "/manifests", "/events"] {
        let r = daemon
            .get(&format!("/v1/runs/{id}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(
        store.count(&Filter::namespace(namespace.as_str())).unwrap(),
        0
    );
    assert_eq!(
        store
            .count(&Filter::namespace(format!("{namespace}/docs")))
            .unwrap(),
        0
    );
    let again = daemon
        .delete(&format!("/v1/runs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_runs_stay_deleted_after_a_restart() {
    let mut daemon = Daemon::start(llm(Duration::ZERO), |_| {}).await;
    let kept = daemon.submit("kept").await;
    let gone = daemon.submit("gone").await;
    daemon.wait(&kept).await;
    daemon.wait(&gone).await;
    let deleted = daemon
        .delete(&format!("/v1/runs/{gone}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    daemon.stop().await;
    // Keep the folder, drop everything else of the first daemon (it holds the store's lock).
    let dir = std::mem::replace(&mut daemon.dir, tempfile::tempdir().unwrap());
    drop(daemon);
    let data_dir = dir.path().join("data");
    let restarted = Daemon::start(llm(Duration::ZERO), |c| c.data_dir = data_dir).await;
    let r = restarted
        .get(&format!("/v1/runs/{kept}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = restarted
        .get(&format!("/v1/runs/{gone}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_live_and_resume_from_last_event_id() {
    let daemon = Daemon::start(llm(Duration::from_millis(150)), |_| {}).await;
    let id = daemon.submit("Which river?").await;

    // Live: read the first three events, then hang up.
    let response = daemon
        .get(&format!("/v1/runs/{id}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = read_sse(response, |e| e.id == Some(3)).await;
    let ids: Vec<u64> = first.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(first[0].event, "run_started");
    assert_eq!(first[0].data["type"], "run_started");

    // Resume after event 3: events 4.. to the end, each once, in order.
    let response = daemon
        .get(&format!("/v1/runs/{id}/events"))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let rest = read_sse(response, |_| false).await;
    let ids: Vec<u64> = rest.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids.first(), Some(&4));
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert_eq!(rest.last().unwrap().event, "run_finished");
    for kind in [
        "node_started",
        "context_routed",
        "llm_call",
        "node_finished",
    ] {
        assert!(rest.iter().any(|e| e.event == kind), "no {kind}");
    }

    // A finished run's stream replays from the cursor and ends.
    let total = *ids.last().unwrap();
    let response = daemon
        .get(&format!("/v1/runs/{id}/events?after={}", total - 2))
        .send()
        .await
        .unwrap();
    let tail = read_sse(response, |_| false).await;
    assert_eq!(
        tail.iter().filter_map(|e| e.id).collect::<Vec<_>>(),
        vec![total - 1, total]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_others_runs() {
    let mut a = Daemon::start(llm(Duration::from_millis(100)), |c| {
        c.tokens = vec![
            agentd_server::TokenEntry {
                tenant: "acme".into(),
                token: Some(TOKEN_A.into()),
                token_env: None,
            },
            agentd_server::TokenEntry {
                tenant: "beta".into(),
                token: Some(TOKEN_B.into()),
                token_env: None,
            },
        ];
    })
    .await;

    // No token, a wrong token, a malformed header: 401 with a JSON error.
    let r = a.get("/v1/runs").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = a
        .get("/v1/runs")
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = a
        .get("/v1/runs")
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(a.get("/metrics").send().await.unwrap().status(), 401);
    // Health and the API document need no token.
    assert_eq!(a.get("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(a.get("/openapi.json").send().await.unwrap().status(), 200);

    a.token = Some(TOKEN_A.into());
    let id = a.submit("acme's question").await;
    let missing = "0190a0a0-0000-7000-8000-000000000000";

    let mut b = reqwest::Client::new();
    let as_b = |b: &mut reqwest::Client, method: reqwest::Method, path: String| {
        b.request(method, a.url(&path)).bearer_auth(TOKEN_B)
    };
    // Every run endpoint answers B exactly as for a run that does not exist.
    for (method, path) in [
        (reqwest::Method::GET, ""),
        (reqwest::Method::GET, "/events"),
        (reqwest::Method::GET, "/memory"),
        (reqwest::Method::GET, "/manifests"),
        (reqwest::Method::POST, "/cancel"),
        (reqwest::Method::DELETE, ""),
    ] {
        let theirs = as_b(&mut b, method.clone(), format!("/v1/runs/{id}{path}"))
            .send()
            .await
            .unwrap();
        let status = theirs.status();
        let theirs: Value = theirs.json().await.unwrap();
        let none = as_b(&mut b, method.clone(), format!("/v1/runs/{missing}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(none.status(), 404, "{method} {path}");
        let none: Value = none.json().await.unwrap();
        assert_eq!(theirs["error"]["code"], none["error"]["code"]);
    }
    let listed: Value = as_b(&mut b, reqwest::Method::GET, "/v1/runs".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed["runs"].as_array().unwrap().is_empty(), "{listed}");

    // A's run is untouched and finishes; A sees it.
    let run = a.wait(&id).await;
    assert_eq!(run["status"], "finished");
    let listed: Value = a
        .get("/v1/runs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
    let metrics = a.get("/metrics").send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_listening_without_tokens_is_refused() {
    let llm = llm(Duration::ZERO);
    let mut config = agentd_server::ServerConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..agentd_server::ServerConfig::default()
    };
    config.llm.base_url = llm.base_url();
    let err = agentd_server::Server::bind(config).await.err().unwrap();
    assert!(err.to_string().contains("requires bearer tokens"), "{err}");
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(
        body["error"]["message"].is_string(),
        "status {status}: not a JSON error: {body}"
    );
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors_naming_the_problem() {
    let daemon = Daemon::start(llm(Duration::ZERO), |c| {
        c.limits.max_body_bytes = 64 << 10;
        c.limits.max_document_bytes = 1000;
        c.limits.max_documents = 2;
    })
    .await;
    let post_json = |body: &str| {
        daemon
            .post("/v1/runs")
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (post_json(""), 400, "JSON body"),
        (post_json("{not json"), 400, "invalid JSON"),
        (post_json("[1, 2]"), 400, "invalid JSON"),
        (post_json(r#"{"workflow": "three_step"}"#), 400, "input"),
        (
            post_json(r#"{"workflow_toml": "x", "input": "q", "inputs": 1}"#),
            400,
            "unknown field",
        ),
        (
            post_json(r#"{"workflow_toml": 7, "input": "q"}"#),
            400,
            "invalid type",
        ),
        (post_json(r#"{"input": "q"}"#), 400, "workflow"),
        (
            post_json(r#"{"workflow": "a", "workflow_toml": "b", "input": "q"}"#),
            400,
            "not both",
        ),
        (
            post_json(r#"{"workflow": "../etc/passwd", "input": "q"}"#),
            400,
            "not a workflow name",
        ),
        (
            post_json(r#"{"workflow": "nope", "input": "q"}"#),
            422,
            "no workflow `nope`",
        ),
        (
            post_json(r#"{"workflow_toml": "[workflow\nname=", "input": "q"}"#),
            422,
            "error",
        ),
        (
            post_json(r#"{"workflow": "multihop_qa", "input": "   "}"#),
            400,
            "`input` is empty",
        ),
        (
            post_json(r#"{"workflow": "multihop_qa", "input": "q", "policy": "best"}"#),
            400,
            "unknown policy",
        ),
        (
            daemon.post("/v1/runs").json(&json!({
                "workflow_toml": WORKFLOW, "input": "q",
                "documents": [{"text": "x".repeat(1001)}],
            })),
            413,
            "documents[0].text",
        ),
        (
            daemon.post("/v1/runs").json(&json!({
                "workflow_toml": WORKFLOW, "input": "q",
                "documents": [{"text": "a"}, {"text": "b"}, {"text": "c"}],
            })),
            413,
            "3 documents",
        ),
        (
            daemon
                .post("/v1/runs")
                .header("content-type", "application/json")
                .body(vec![b' '; 70 << 10]),
            413,
            "",
        ),
        (
            daemon
                .post("/v1/runs")
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, 0x00, 0x80]),
            400,
            "invalid JSON",
        ),
        (daemon.get("/v1/runs?limit=abc"), 400, "limit"),
        (daemon.get("/v1/runs?limit=0"), 400, "limit"),
        (daemon.get("/v1/runs?status=bogus"), 400, "unknown status"),
        (daemon.get("/v1/runs?colour=red"), 400, "unknown field"),
        (daemon.get("/v1/nothing"), 404, "no such endpoint"),
        (daemon.delete("/v1/workflows"), 405, "method"),
        (
            daemon.get("/v1/runs/does-not-exist%FF/memory"),
            400,
            "bad path",
        ),
        (daemon.get("/v1/runs/does-not-exist/memory"), 404, "no run"),
        (daemon.post("/v1/runs/does-not-exist/cancel"), 404, "no run"),
        (daemon.post("/v1/workflows/validate"), 400, "workflow"),
    ];
    for (request, status, needle) in cases {
        let (got, error) = error_of(request.send().await.unwrap()).await;
        let message = error["message"].as_str().unwrap();
        assert_eq!(got, status, "{message}");
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }

    // A run-specific malformed request: a bad Last-Event-ID, a bad memory filter.
    let id = daemon.submit("q").await;
    daemon.wait(&id).await;
    let (status, error) = error_of(
        daemon
            .get(&format!("/v1/runs/{id}/events"))
            .header("Last-Event-ID", "abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("Last-Event-ID"));
    let (status, error) = error_of(
        daemon
            .get(&format!("/v1/runs/{id}/memory?kind=Not%20A%20Kind"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("kind"));
    let (status, _) = error_of(
        daemon
            .get(&format!("/v1/runs/{id}/memory?scope=everything"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);

    // The daemon is still fine.
    assert_eq!(daemon.get("/healthz").send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_and_validated_with_located_errors() {
    let daemon = Daemon::start(llm(Duration::ZERO), |_| {}).await;
    let listed: Value = daemon
        .get("/v1/workflows")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let multihop = listed["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "multihop_qa")
        .expect("multihop_qa is listed");
    assert_eq!(multihop["valid"], true);
    assert!(!multihop["nodes"].as_array().unwrap().is_empty());

    let ok = daemon
        .post("/v1/workflows/validate")
        .header("content-type", "application/toml")
        .body(WORKFLOW)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok: Value = ok.json().await.unwrap();
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["nodes"].as_array().unwrap().len(), 3);

    let broken = WORKFLOW.replace("role = \"answerer\"", "role = \"answerr\"");
    let (status, error) = error_of(
        daemon
            .post("/v1/workflows/validate")
            .json(&json!({ "toml": broken }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(error["code"], "invalid_workflow");
    let first = &error["details"][0];
    assert!(first["line"].as_u64().unwrap() > 0, "{error}");
    assert!(first["column"].as_u64().unwrap() > 0, "{error}");
    assert!(
        first["message"].as_str().unwrap().contains("answerr"),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("-->"),
        "rendered like the CLI: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_queued_runs_cancel() {
    let daemon = Daemon::start(llm(Duration::from_millis(600)), |c| {
        c.limits.max_running = 1;
        c.limits.queue_capacity = 1;
        c.limits.retry_after_secs = 2;
    })
    .await;
    let running = daemon.submit("first").await;
    // Wait until it holds the only run slot.
    loop {
        let run: Value = daemon
            .get(&format!("/v1/runs/{running}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if run["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = daemon.submit("second").await;
    let run: Value = daemon
        .get(&format!("/v1/runs/{queued}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["status"], "queued");
    let full = daemon
        .post("/v1/runs")
        .json(&json!({"workflow_toml": WORKFLOW, "input": "third"}))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 429);
    assert_eq!(full.headers()["retry-after"], "2");
    let (_, error) = error_of(full).await;
    assert_eq!(error["code"], "queue_full");

    let listed: Value = daemon
        .get("/v1/runs?status=queued")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);

    let cancel = daemon
        .post(&format!("/v1/runs/{queued}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    assert_eq!(daemon.wait(&queued).await["status"], "cancelled");
    assert_eq!(daemon.wait(&running).await["status"], "finished");

    let metrics = daemon
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "agentd_runs{status=\"finished\"} 1",
        "agentd_runs{status=\"cancelled\"} 1",
        "agentd_queue_depth 0",
        "agentd_llm_calls_total{role=\"planner\",model=\"mock-model\"} 1",
        "agentd_llm_tokens_total{role=\"answerer\",model=\"mock-model\",type=\"completion\"}",
        "agentd_routing_latency_seconds_count 3",
        "agentd_context_pack_tokens_bucket",
        "agentd_node_overhead_seconds_count 3",
    ] {
        assert!(metrics.contains(needle), "no `{needle}` in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_api() {
    let daemon = Daemon::start(llm(Duration::ZERO), |_| {}).await;
    let doc: Value = daemon
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/runs/{id}/events"]["get"].is_object());
    assert_eq!(daemon.get("/readyz").send().await.unwrap().status(), 200);
}
