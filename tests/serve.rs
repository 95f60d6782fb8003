//! End-to-end tests of `agentd serve`, the real binary: a run interrupted by `kill -9` resumes
//! after a restart with every acknowledged item intact; SIGTERM drains (the node in flight
//! checkpoints, nothing new starts) and exits within 10 s.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentd::llm::testing::{MockReply, MockRequest, MockServer};
use serde_json::{Value, json};

use agentd_server::testing::THREE_NODE_WORKFLOW as WORKFLOW;

fn system_of(request: &MockRequest) -> &str {
    request.body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
}

fn reply_for(request: &MockRequest) -> String {
    match system_of(request) {
        "Answer." => {
            r#"{"answer": {"content": "The Seine", "confidence": 0.9, "cites": []}}"#.to_owned()
        }
        "Plan." => r#"{"items": [{"kind": "plan", "content": "find the city, then its river", "confidence": 0.8}]}"#.to_owned(),
        _ => r#"{"items": [{"kind": "evidence", "content": "The Seine flows through Paris.", "confidence": 0.8}]}"#.to_owned(),
    }
}

/// The daemon as a child process.
struct Daemon {
    child: Child,
    base: String,
}

impl Daemon {
    fn start(data_dir: &Path, llm_url: &str) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
            .current_dir(data_dir.parent().unwrap())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args([
                "--llm-url",
                llm_url,
                "--model",
                "mock-model",
                "--drain-secs",
                "8",
            ])
            .env_remove("AGENTD_EMBEDDER")
            .env_remove("AGENTD_CONFIG")
            .env_remove("AGENTD_LISTEN")
            .env_remove("AGENTD_TOKENS")
            .env_remove("AGENTD_DATA_DIR")
            .env_remove("AGENTD_MAX_RUNNING")
            .env_remove("AGENTD_QUEUE_CAPACITY")
            .env("AGENTD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agentd serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agentd] {line}");
                if let Some(addr) = line.strip_prefix("agentd listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the daemon prints its address");
        Daemon { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn submit(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .post(format!("{base}/v1/runs"))
        .json(&json!({"workflow_toml": WORKFLOW, "input": "Which river flows through Paris?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_finished(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = get(client, format!("{base}/v1/runs/{id}")).await;
        if run["status"] != "running" && run["status"] != "queued" {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_and_kinds(memory: &Value) -> Vec<(String, String)> {
    memory["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn calls_of(llm: &MockServer, system: &str) -> usize {
    llm.received()
        .iter()
        .filter(|r| system_of(r) == system)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_resumes_after_a_restart_with_its_items_intact() {
    let llm =
        MockServer::with(|req| MockReply::text(reply_for(req)).after(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let daemon = Daemon::start(&data, &llm.base_url());
    let id = submit(&client, &daemon.base).await;
    // The research call starts only after the plan's checkpoint is synced.
    wait_for("the research call", || calls_of(&llm, "Research.") >= 1).await;
    let before = get(&client, format!("{}/v1/runs/{id}/memory", daemon.base)).await;
    let before = ids_and_kinds(&before);
    assert!(before.iter().any(|(_, k)| k == "plan"), "{before:?}");

    // kill -9 in the middle of the research call.
    drop(daemon);

    let daemon = Daemon::start(&data, &llm.base_url());
    let run = wait_finished(&client, &daemon.base, &id).await;
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["answer"]["content"], "The Seine");
    let after = get(&client, format!("{}/v1/runs/{id}/memory", daemon.base)).await;
    let after = ids_and_kinds(&after);
    for item in &before {
        assert!(after.contains(item), "{item:?} was lost: {after:?}");
    }
    // The checkpointed node did not run again; nothing was written twice.
    assert_eq!(calls_of(&llm, "Plan."), 1);
    assert_eq!(after.iter().filter(|(_, k)| k == "plan").count(), 1);
    assert_eq!(after.iter().filter(|(_, k)| k == "answer").count(), 1);

    // The event log carries the resumption.
    let events = client
        .get(format!("{}/v1/runs/{id}/events", daemon.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("event: run_resumed"), "{events}");
    assert!(events.contains("event: run_finished"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_ten_seconds_and_the_run_resumes() {
    let llm =
        MockServer::with(|req| MockReply::text(reply_for(req)).after(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let mut daemon = Daemon::start(&data, &llm.base_url());
    let id = submit(&client, &daemon.base).await;
    wait_for("the plan call", || calls_of(&llm, "Plan.") >= 1).await;

    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the daemon did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    // The node in flight finished and checkpointed; nothing new was dispatched.
    assert_eq!(calls_of(&llm, "Plan."), 1);
    assert_eq!(calls_of(&llm, "Research."), 0);
    drop(daemon);

    let daemon = Daemon::start(&data, &llm.base_url());
    let run = wait_finished(&client, &daemon.base, &id).await;
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(
        calls_of(&llm, "Plan."),
        1,
        "the checkpointed plan is not redone"
    );
    assert_eq!(calls_of(&llm, "Answer."), 1);
}
