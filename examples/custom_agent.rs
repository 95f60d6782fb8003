//! A Rust agent in a workflow, no LLM: `cargo run --example custom_agent`.
//!
//! Two roles run over a handful of documents. `extractor` is Rust code: it reads the documents
//! the router hands it and writes one `fact` per sentence that mentions a river. `reporter`
//! (also Rust) reads those facts and writes the `answer`, citing them. The router, memory,
//! checkpoints and events are the same as for LLM agents.

use std::sync::Arc;

use agentd::memory::Kind;
use agentd::runtime::{
    Agent, AgentError, AgentInput, AgentReply, Document, Durability, OutputItem, RunRequest,
    Runtime,
};
use agentd::workflow::Workflow;

const WORKFLOW: &str = r#"
[workflow]
name = "river_report"
max_rounds = 1

[roles.extractor]
description = "Finds sentences about rivers in documents."
keywords = ["river", "flows"]
reads = ["document"]
writes = ["fact"]

[roles.reporter]
description = "Reports the facts found, citing them."
reads = ["fact"]
writes = ["answer"]

[nodes.extract]
role = "extractor"
stage = "gather"

[nodes.report]
role = "reporter"
stage = "answer"
after = ["extract"]
"#;

/// Writes a fact for every sentence of its context that mentions a river.
struct Extractor;

#[async_trait::async_trait]
impl Agent for Extractor {
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        let mut facts = Vec::new();
        for packed in &input.context.items {
            for sentence in packed.item.content.split_inclusive(". ") {
                if sentence.to_lowercase().contains("river") {
                    facts.push(OutputItem {
                        kind: "fact".into(),
                        content: sentence.trim().to_owned(),
                        key: None,
                        confidence: Some(0.9),
                        cites: vec![packed.item.id.short()],
                        payload: None,
                    });
                }
            }
        }
        Ok(AgentReply::items(facts))
    }
}

/// Answers with the facts in its context, citing each.
struct Reporter;

#[async_trait::async_trait]
impl Agent for Reporter {
    async fn act(&self, input: AgentInput<'_>) -> Result<AgentReply, AgentError> {
        let facts: Vec<_> = input
            .context
            .items
            .iter()
            .filter(|p| p.item.kind == Kind::Fact)
            .collect();
        let content = facts
            .iter()
            .map(|p| p.item.content.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(AgentReply::items(vec![OutputItem {
            kind: "answer".into(),
            content: if content.is_empty() {
                "No rivers found.".into()
            } else {
                content
            },
            key: None,
            confidence: Some(1.0),
            cites: facts.iter().map(|p| p.item.id.short()).collect(),
            payload: None,
        }]))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let runtime = Runtime::builder()
        .data_dir(data.path())
        .durability(Durability::Durable)
        .agent("extractor", Extractor)
        .agent("reporter", Reporter)
        .build()?;
    runtime.load_documents(
        "docs",
        [
            (
                "Paris",
                "Paris is the capital of France. The Seine river flows through it.",
            ),
            (
                "Berlin",
                "Berlin is the capital of Germany. The Spree river runs through it.",
            ),
            (
                "Alps",
                "The Alps are a mountain range. Mont Blanc is their highest peak.",
            ),
        ]
        .map(|(title, text)| Document {
            title: Some(title.into()),
            text: text.into(),
        }),
    )?;
    let workflow = Arc::new(Workflow::parse(WORKFLOW, "custom_agent.rs", None)?);
    let outcome = runtime
        .run(RunRequest::new(workflow, "Which rivers flow through capitals?").documents("docs"))
        .await?;
    let answer = outcome.answer.ok_or("the run wrote no answer")?;
    println!("answer: {}", answer.content);
    for item in &outcome.evidence {
        println!("  cites [{}] {}", item.id.short(), item.content);
    }
    println!(
        "status: {:?}, nodes run: {}",
        outcome.status, outcome.usage.total.nodes
    );
    Ok(())
}
