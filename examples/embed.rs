//! Run a TOML workflow from Rust: `cargo run --example embed -- [QUESTION]`.
//!
//! Needs an OpenAI-compatible server: by default the local one (`scripts/local-llm.sh start`),
//! or set AGENTD_LLM_URL (and AGENTD_LLM_MODEL, and AGENTD_LLM_API_KEY_ENV naming the variable
//! that holds the key).

use std::sync::Arc;

use agentd::llm::{OpenAiClient, ProviderConfig};
use agentd::runtime::{Document, RunRequest, Runtime};
use agentd::workflow::Workflow;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args().nth(1).unwrap_or_else(|| {
        "Which river flows through the city where the Eiffel Tower stands?".into()
    });
    let url = std::env::var("AGENTD_LLM_URL").unwrap_or_else(|_| "http://127.0.0.1:8088/v1".into());
    let model = std::env::var("AGENTD_LLM_MODEL").unwrap_or_else(|_| "smollm2".into());
    let mut config = ProviderConfig::new(url, model);
    config.api_key_env = std::env::var("AGENTD_LLM_API_KEY_ENV").ok();
    let llm = Arc::new(OpenAiClient::new(config)?);

    let data = tempfile::tempdir()?;
    let runtime = Runtime::builder().data_dir(data.path()).llm(llm).build()?;

    // Documents: the example folder of this repository.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/docs/landmarks");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let title = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', " "));
        docs.push(Document {
            title,
            text: std::fs::read_to_string(&path)?,
        });
    }
    runtime.load_documents("landmarks", docs)?;

    let workflow = Workflow::load(
        concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/multihop_qa.toml").as_ref(),
    )?;
    let handle = runtime
        .start(RunRequest::new(Arc::new(workflow), question).documents("landmarks"))
        .await?;
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            eprintln!("event: {}", event.kind.name());
        }
    });
    let outcome = handle.wait().await?;
    match &outcome.answer {
        Some(answer) => println!("answer: {}", answer.content),
        None => println!("no answer ({:?})", outcome.error),
    }
    print!("{}", outcome.usage.role_table());
    Ok(())
}
