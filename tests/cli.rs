//! End-to-end tests of the `agentd` binary: validate, graph, schema, run, resume after kill -9,
//! replay; and the real path against the local LLM server when one is configured.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentd::llm::testing::{MockReply, MockRequest, MockServer};

fn agentd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentd"));
    cmd.current_dir(repo())
        .env_remove("AGENTD_EMBEDDER")
        .env_remove("AGENTD_DATA_DIR")
        .env_remove("AGENTD_LLM_MODEL")
        .env("AGENTD_LOG", "warn");
    cmd
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("agentd runs");
    eprintln!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn validate_accepts_the_reference_files() {
    let out = run(agentd().args(["validate", "agents", "workflows"]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("multihop_qa.toml"));
    assert!(stdout.contains("answerer.toml"));
}

#[test]
fn validate_locates_every_mistake_and_exits_78() {
    let dir = repo().join("crates/agentd-workflow/tests/fixtures/broken");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 8, "fixtures: {files:?}");
    for file in &files {
        let out = run(agentd().arg("validate").arg(file));
        assert_eq!(out.status.code(), Some(78), "{}", file.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        // rustc-style: "--> path:line:column"
        let located = stderr
            .lines()
            .any(|l| l.contains("-->") && l.contains(&*name) && l.matches(':').count() >= 2);
        assert!(located, "{name}: no located error in\n{stderr}");
    }
}

#[test]
fn graph_and_schema_print() {
    let out = run(agentd().args(["graph", "workflows/multihop_qa.toml", "--format", "mermaid"]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("research") && text.contains("-->"), "{text}");
    let out = run(agentd().args(["graph", "workflows/multihop_qa.toml"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("digraph"));
    let out = run(agentd().args(["schema"]));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["workflow"].is_object() && schema["role"].is_object());
}

/// A reply for any role of multihop_qa: valid JSON naming an answer with high confidence only
/// for the answerer (so the run stops after round 1 if it gets that far).
fn scripted_reply(body: &serde_json::Value) -> String {
    let user = body["messages"][1]["content"].as_str().unwrap_or("");
    let cite = user
        .split("- [")
        .nth(1)
        .map(|s| s[..8].to_owned())
        .unwrap_or_default();
    // Only the answerer's output instructions have an `answer` field.
    if user.contains("\"answer\": {") {
        format!(
            r#"{{"items": [], "answer": {{"content": "The Seine", "confidence": 0.2, "cites": ["{cite}"]}}}}"#
        )
    } else {
        format!(
            r#"{{"items": [{{"kind": "note", "content": "step {} saw {cite}", "confidence": 0.6, "cites": ["{cite}"]}}]}}"#,
            body["messages"].to_string().len()
        )
    }
}

#[test]
fn a_run_killed_mid_way_resumes_to_the_end_without_duplicates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let server = MockServer::with(|req| {
        MockReply::text(scripted_reply(&req.body)).after(Duration::from_millis(150))
    });
    let url = server.base_url();
    let data = tempfile::tempdir().unwrap();
    let common = |cmd: &mut Command| {
        cmd.arg("--data-dir")
            .arg(data.path())
            .args(["--llm-url", &url, "--model", "mock"]);
    };

    // Start a run and kill -9 it once a few nodes have checkpointed.
    let mut child = agentd();
    child.args([
        "run",
        "workflows/multihop_qa.toml",
        "--docs",
        "examples/docs/landmarks",
        "--input",
        "Which river flows through the city of the Eiffel Tower?",
    ]);
    common(&mut child);
    let mut child = child
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal = data.path().join("runs/journal.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let finished = std::fs::read(&journal)
            .map(|b| count(&b, b"\"type\":\"node_finished\""))
            .unwrap_or(0);
        if finished >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let calls_before = server.requests();

    // Resume: the interrupted run finishes.
    let mut resume = agentd();
    resume.arg("resume");
    common(&mut resume);
    let out = run(&mut resume);
    assert!(out.status.success(), "resume failed");
    let calls_after = server.requests();

    // Finished nodes were not run again: calls = nodes run + at most the one in flight.
    let bytes = std::fs::read(&journal).unwrap();
    let finished = count(&bytes, b"\"type\":\"node_finished\"");
    assert!(
        calls_after <= finished + 1,
        "{calls_after} calls for {finished} nodes"
    );
    assert!(calls_after > calls_before);
    assert_eq!(count(&bytes, b"\"type\":\"run_finished\""), 1);
    assert_eq!(count(&bytes, b"\"type\":\"run_resumed\""), 1);

    // No node wrote its output twice: every origin tag appears on one write only.
    let states = agentd::runtime::Runtime::builder()
        .data_dir(data.path())
        .build()
        .unwrap();
    let run = &states.runs()[0];
    assert_eq!(run.status, agentd::runtime::RunStatus::Finished);
    let ns = run.record.as_ref().unwrap().namespace.clone();
    let items = states
        .store()
        .list(
            &agentd::memory::Filter::namespace(ns).include_superseded(true),
            &agentd::memory::Page::first(1000),
        )
        .unwrap();
    let mut origins: Vec<String> = items
        .iter()
        .flat_map(|i| i.tags.iter().filter(|t| t.starts_with("origin:")).cloned())
        .collect();
    let total = origins.len();
    origins.sort();
    origins.dedup();
    // Each node run writes one item in this script, so origins are unique per item.
    assert_eq!(origins.len(), total, "an origin was written twice");

    // Replay under `full` works offline (in another process: release the store first).
    let id = run.id.clone();
    drop(states);
    let out = run_replay(data.path(), &id);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("total tokens"));
}

fn run_replay(data: &Path, id: &str) -> Output {
    run(agentd()
        .args(["replay", id, "--policy", "full", "--data-dir"])
        .arg(data))
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn a_bad_llm_url_fails_the_run_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(agentd()
        .args([
            "run",
            "workflows/multihop_qa.toml",
            "--input",
            "Which river?",
            "--llm-url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--llm-timeout",
            "2",
            "--data-dir",
        ])
        .arg(data.path()));
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&port.to_string()),
        "the error names the URL: {text}"
    );
}

/// The real path: multihop_qa end to end on the local llama.cpp server (scripts/local-llm.sh),
/// when AGENTD_LLM_URL points at one. CI sets AGENTD_REQUIRE_LLM=1: then it must run.
#[test]
fn multihop_qa_runs_end_to_end_on_the_local_llm() {
    let Ok(url) = std::env::var("AGENTD_LLM_URL") else {
        assert!(
            std::env::var("AGENTD_REQUIRE_LLM").is_err(),
            "AGENTD_REQUIRE_LLM is set but AGENTD_LLM_URL is not: start scripts/local-llm.sh"
        );
        eprintln!("skipped: no AGENTD_LLM_URL");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let out = run(agentd()
        .args([
            "run",
            "workflows/multihop_qa.toml",
            "--docs",
            "examples/docs/landmarks",
            "--input",
            "Which river flows through the city where the Eiffel Tower stands?",
            "--json",
            "--llm-url",
            &url,
            "--data-dir",
        ])
        .arg(data.path()));
    assert!(out.status.success(), "the run did not finish");
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["status"], "finished");
    let usage = &outcome["usage"]["total"];
    assert!(usage["calls"].as_u64().unwrap() >= 4, "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert!(usage["context_tokens"].as_u64().unwrap() > 0);
    // Items were written, and every pack stayed within its budget (the manifests say so).
    let manifests = data
        .path()
        .join("runs")
        .join(outcome["id"].as_str().unwrap())
        .join("manifests");
    let mut seen = 0;
    for entry in std::fs::read_dir(&manifests).unwrap() {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        assert!(m["tokens_used"].as_u64().unwrap() <= m["budget"].as_u64().unwrap());
        seen += 1;
    }
    assert!(seen >= 4);
    let runtime = agentd::runtime::Runtime::builder()
        .data_dir(data.path())
        .build()
        .unwrap();
    let ns = outcome["namespace"].as_str().unwrap().to_owned();
    let written = runtime
        .store()
        .count(&agentd::memory::Filter::namespace(ns))
        .unwrap();
    assert!(written > 1, "the agents wrote items ({written})");
}

#[test]
fn eval_routes_real_questions_and_reports_recall_per_policy() {
    let data = repo().join("../shared/data/mhqa/hotpotqa.jsonl");
    if !data.exists() {
        eprintln!("skipped: {} is missing", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sweep.svg");
    let out = run(agentd()
        .args([
            "eval",
            "--routing-only",
            "--limit",
            "15",
            "--json",
            "--data",
        ])
        .arg(&data)
        .args([
            "--policy",
            "rcr,full,static",
            "--budgets",
            "role,512",
            "--svg",
        ])
        .arg(&svg));
    assert!(out.status.success());
    // The budget sweep's plot: one line per policy (two budgets each).
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert!(plot.matches("<polyline").count() >= 3, "{plot}");
    assert!(plot.contains(">rcr</text>") && plot.contains(">full</text>"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = report["results"].as_array().unwrap();
    let row = |policy: &str, budget: u64| {
        results
            .iter()
            .find(|r| {
                r["policy"].as_str().is_some_and(|p| p.starts_with(policy))
                    && r["budget"].as_u64() == Some(budget)
            })
            .unwrap_or_else(|| panic!("no {policy} row at {budget}: {results:?}"))
    };
    let rcr = row("rcr", 512);
    let recall = rcr["evidence_recall"].as_f64().unwrap();
    assert!(recall > 0.0 && recall <= 1.0, "{rcr}");
    assert!(rcr["token_share"].as_f64().unwrap() < 1.0, "{rcr}");

    // Neither --routing-only nor --llm-url: a clear refusal, not a crash.
    let out = run(agentd().args(["eval", "--data"]).arg(&data));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--routing-only") && stderr.contains("--llm-url"));
}

/// A reply of a scripted LLM for `agentd eval` end to end: the answerer (the role whose
/// JSON schema has an `answer`) answers "Paris" citing the first item it sees; every other
/// role writes one item.
fn eval_reply(req: &MockRequest) -> MockReply {
    let user = req.last_user_message().unwrap_or("");
    let cite = user
        .split("- [")
        .nth(1)
        .and_then(|s| s.get(..8))
        .unwrap_or_default();
    let schema = &req.body["response_format"]["json_schema"]["schema"]["properties"];
    if schema.get("answer").is_some() {
        return MockReply::text(format!(
            r#"{{"answer": {{"content": "Paris", "confidence": 0.9, "cites": ["{cite}"]}}}}"#
        ));
    }
    let kind = schema["items"]["items"]["properties"]["kind"]["enum"][0]
        .as_str()
        .unwrap_or("note");
    MockReply::text(format!(
        r#"{{"items": [{{"kind": "{kind}", "content": "a step", "confidence": 0.5, "cites": ["{cite}"]}}]}}"#
    ))
}

/// Parses an end-to-end report and checks what every report must hold.
fn check_e2e_report(report: &serde_json::Value, questions: u64) {
    assert_eq!(report["count"], questions);
    assert_eq!(report["max_rounds"], 1);
    assert_eq!(report["config"]["max_rounds"], 1);
    let row = |policy: &str| {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["policy"] == policy)
            .unwrap_or_else(|| panic!("no {policy} row"))
            .clone()
    };
    let (rcr, full) = (row("rcr"), row("full"));
    for r in [&rcr, &full] {
        assert_eq!(r["questions"], questions, "{r}");
        assert_eq!(r["finished"], questions, "{r}");
        for metric in ["exact_match", "f1", "aqs", "grounding", "completeness"] {
            let v = r[metric].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{metric} = {v}");
        }
        assert!(r["usage"]["prompt_tokens"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            r["usage"]["completion_tokens"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(r["usage"]["calls"].as_f64().unwrap() >= 4.0, "{r}");
        assert!(r["by_role"]["answerer"]["prompt_tokens"].as_f64().unwrap() > 0.0);
        assert!(r["by_round"]["1"]["calls"].as_f64().unwrap() >= 4.0, "{r}");
        assert!(r["wall_secs"].as_f64().unwrap() > 0.0);
    }
    // The full context costs more prompt tokens than rcr's packs.
    let share = rcr["prompt_share"].as_f64().unwrap();
    assert!(
        share > 0.0 && share < 1.0,
        "rcr's share of full's prompt tokens: {share}"
    );
    let runs = report["questions"].as_array().unwrap();
    assert_eq!(runs.len() as u64, 2 * questions);
}

#[test]
fn eval_end_to_end_runs_the_workflow_per_question_and_policy() {
    let data = repo().join("../shared/data/mhqa/hotpotqa.jsonl");
    if !data.exists() {
        eprintln!("skipped: {} is missing", data.display());
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let server = MockServer::with(eval_reply);
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("e2e.json");
    let out = run(agentd()
        .args(["eval", "--data"])
        .arg(&data)
        .args([
            "--policy",
            "rcr,full",
            "--limit",
            "2",
            "--max-rounds",
            "1",
            "--max-tokens",
            "64",
            "--llm-url",
            &server.base_url(),
            "--model",
            "mock",
            "--judge-url",
            &server.base_url(),
            "--out",
        ])
        .arg(&json_file));
    assert!(out.status.success());
    // Markdown on stdout, the JSON report in the file.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| rcr |") && stdout.contains("Per role"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_file).unwrap()).unwrap();
    check_e2e_report(&report, 2);
    assert_eq!(report["config"]["llm"]["model"], "mock");
    // The judge got the same scripted server: its replies are garbage to it, and tolerated.
    let judged: u64 = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["judge_failures"].as_u64().unwrap() + r["judged"].as_u64().unwrap())
        .sum();
    assert_eq!(judged, 4);
    // Every request named the model and carried the seed.
    for body in server.bodies() {
        assert_eq!(body["model"], "mock");
        assert_eq!(body["seed"], 0);
    }

    // A routing-only flag and an LLM URL contradict each other.
    let out = run(agentd()
        .args(["eval", "--routing-only", "--data"])
        .arg(&data)
        .args(["--llm-url", &server.base_url()]));
    assert!(!out.status.success());
}

/// The end-to-end evaluation on the local llama.cpp server, when AGENTD_LLM_URL points at
/// one (required under AGENTD_REQUIRE_LLM=1): one real question, one round, both policies.
#[test]
fn eval_end_to_end_on_the_local_llm() {
    let Ok(url) = std::env::var("AGENTD_LLM_URL") else {
        assert!(
            std::env::var("AGENTD_REQUIRE_LLM").is_err(),
            "AGENTD_REQUIRE_LLM is set but AGENTD_LLM_URL is not: start scripts/local-llm.sh"
        );
        eprintln!("skipped: no AGENTD_LLM_URL");
        return;
    };
    let data = repo().join("../shared/data/mhqa/hotpotqa.jsonl");
    if !data.exists() {
        eprintln!("skipped: {} is missing", data.display());
        return;
    }
    let out = run(agentd()
        .args(["eval", "--json", "--data"])
        .arg(&data)
        .args([
            "--policy",
            "rcr,full",
            "--limit",
            "1",
            "--max-rounds",
            "1",
            "--max-tokens",
            "48",
            "--concurrency",
            "2",
            "--llm-url",
            &url,
        ]));
    assert!(out.status.success(), "the evaluation failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_e2e_report(&report, 1);
}
