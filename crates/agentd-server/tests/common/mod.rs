//! A daemon on an ephemeral loopback port with a scripted LLM responder, and an HTTP client.

#![allow(dead_code)]

use std::time::Duration;

use agentd_llm::testing::{MockReply, MockRequest, MockServer};
use agentd_server::{Server, ServerConfig, ServerError};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Three nodes in a chain, one round, roles inline.
pub use agentd_server::testing::THREE_NODE_WORKFLOW as WORKFLOW;

/// A valid reply for the role of the request.
pub fn reply_for(request: &MockRequest) -> String {
    let system = request.body["messages"][0]["content"]
        .as_str()
        .unwrap_or("");
    match system {
        "Answer." => {
            r#"{"answer": {"content": "The Seine", "confidence": 0.9, "cites": []}}"#.to_owned()
        }
        "Plan." => r#"{"items": [{"kind": "plan", "content": "find the city, then its river", "confidence": 0.8}]}"#.to_owned(),
        _ => r#"{"items": [{"kind": "evidence", "content": "The Seine flows through Paris.", "confidence": 0.8}]}"#.to_owned(),
    }
}

/// An LLM answering every role after `latency`.
pub fn llm(latency: Duration) -> MockServer {
    MockServer::with(move |req| MockReply::text(reply_for(req)).after(latency))
}

/// A daemon in this process.
pub struct Daemon {
    pub base: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
    pub state: agentd_server::api::AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    pub llm: MockServer,
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon whose LLM is `llm`, with `configure` applied to its configuration.
    pub async fn start(llm: MockServer, configure: impl FnOnce(&mut ServerConfig)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            workflows_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows").into(),
            roles_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../agents").into(),
            ..ServerConfig::default()
        };
        config.llm.base_url = llm.base_url();
        config.llm.model = "mock-model".into();
        config.llm.max_retries = 0;
        config.drain_secs = 3.0;
        configure(&mut config);
        let server = Server::bind(config).await.unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let state = server.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Daemon {
            base,
            client: reqwest::Client::new(),
            token: None,
            state,
            stop: Some(stop),
            task: Some(task),
            llm,
            dir,
        }
    }

    /// Stops the daemon (drains) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.client.get(self.url(path)))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.client.post(self.url(path)))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.client.delete(self.url(path)))
    }

    fn auth(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Starts a run of [`WORKFLOW`]; returns its id.
    pub async fn submit(&self, input: &str) -> String {
        let response = self
            .post("/v1/runs")
            .json(&json!({"workflow_toml": WORKFLOW, "input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the run is no longer queued or running; returns its final JSON.
    pub async fn wait(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let run: Value = self
                .get(&format!("/v1/runs/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let status = run["status"].as_str().unwrap_or("").to_owned();
            if status != "running" && status != "queued" {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} did not end: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Reads events from an SSE response until `stop` says so (or the stream ends).
pub async fn read_sse(
    mut response: reqwest::Response,
    mut stop: impl FnMut(&Sse) -> bool,
) -> Vec<Sse> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("the event stream stalled")
            .unwrap();
        let Some(chunk) = chunk else {
            return out;
        };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut sse = Sse {
                id: None,
                event: String::new(),
                data: Value::Null,
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    sse.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    sse.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            sse.data = serde_json::from_str(&data).unwrap();
            let done = stop(&sse);
            out.push(sse);
            if done {
                return out;
            }
        }
    }
}
