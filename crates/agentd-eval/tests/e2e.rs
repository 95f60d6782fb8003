//! The end-to-end evaluation on real HotpotQA dev questions, with a scripted OpenAI-compatible
//! server on loopback playing every role (and a judge that sometimes answers garbage).
//!
//! The script answers like an oracle: the answerer replies with the gold answer and cites the
//! gold paragraphs it can see in its context. So exact match is 1 wherever the workflow
//! reaches the answerer, grounding is 1, and completeness is the share of the gold
//! paragraphs the router put in the answerer's context: the test checks the plumbing
//! (documents → routing → citations → scores → usage), not a model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentd_eval::datasets;
use agentd_eval::{E2eConfig, Endpoint, PolicySpec, run_e2e_eval};
use agentd_llm::testing::{MockReply, MockRequest, MockServer};
use agentd_llm::{LlmClient, OpenAiClient, ProviderConfig};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn hotpot() -> Option<PathBuf> {
    let p = crate_dir().join("../../../shared/data/mhqa/hotpotqa.jsonl");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}

/// What the oracle knows of a question: its gold answer and gold titles.
type Oracle = HashMap<String, (String, Vec<String>)>;

/// The oracle's reply to one chat request of multihop_qa.
fn oracle_reply(req: &MockRequest, oracle: &Oracle) -> MockReply {
    let user = req.last_user_message().unwrap_or("");
    let question = user
        .strip_prefix("Question: ")
        .and_then(|s| s.lines().next())
        .unwrap_or("");
    // Context lines: "- [abcd1234] Title: text".
    let lines: Vec<(&str, &str)> = user
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("- [")?;
            Some((rest.get(..8)?, rest.get(10..).unwrap_or("")))
        })
        .collect();
    let schema = &req.body["response_format"]["json_schema"]["schema"]["properties"];
    if schema.get("answer").is_some() {
        let (answer, titles) = oracle.get(question).cloned().unwrap_or_default();
        let cites: Vec<&str> = lines
            .iter()
            .filter(|(_, text)| titles.iter().any(|t| text.starts_with(&format!("{t}: "))))
            .map(|(id, _)| *id)
            .take(3)
            .collect();
        let reply = serde_json::json!({
            "answer": {"content": answer, "confidence": 0.9, "cites": cites},
        });
        return MockReply::text(reply.to_string());
    }
    // Every other role: one note citing the first item it saw.
    let kind = schema["items"]["items"]["properties"]["kind"]["enum"][0]
        .as_str()
        .unwrap_or("note")
        .to_owned();
    let cites: Vec<&str> = lines.iter().map(|(id, _)| *id).take(1).collect();
    let reply = serde_json::json!({
        "items": [{"kind": kind, "content": format!("{kind} for: {question}"), "confidence": 0.6, "cites": cites}],
    });
    MockReply::text(reply.to_string())
}

fn client(url: String) -> Arc<dyn LlmClient> {
    let mut config = ProviderConfig::new(url, "mock-model");
    config.backoff_base_ms = 1;
    config.max_retries = 0;
    Arc::new(OpenAiClient::new(config).unwrap())
}

#[test]
fn e2e_eval_on_real_questions_scores_answers_and_counts_tokens() {
    let Some(file) = hotpot() else { return };
    let questions = datasets::load(&file, None).unwrap().questions;
    let oracle: Oracle = questions
        .iter()
        .take(3)
        .map(|q| {
            let titles = q
                .gold
                .iter()
                .map(|&g| q.paragraphs[g].title.clone())
                .collect();
            (q.question.clone(), (q.answer.clone(), titles))
        })
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let llm = MockServer::with(move |req| oracle_reply(req, &oracle));
    // The judge: garbage first, then a score.
    let judge = MockServer::with(|req| {
        if req.seq == 0 {
            MockReply::text("I cannot grade this, sorry!")
        } else {
            MockReply::text("Score: 0.9")
        }
    });
    let config = E2eConfig {
        file,
        limit: Some(3),
        policies: vec![PolicySpec::Rcr, PolicySpec::Full],
        workflow: crate_dir().join("../../workflows/multihop_qa.toml"),
        max_rounds: Some(1),
        max_tokens: Some(64),
        llm: Endpoint {
            url: llm.base_url(),
            model: "mock-model".into(),
        },
        judge: Some(Endpoint {
            url: judge.base_url(),
            model: "mock-judge".into(),
        }),
        ..E2eConfig::default()
    };
    let mut progress = Vec::new();
    let report = rt
        .block_on(run_e2e_eval(
            &config,
            client(llm.base_url()),
            Some(client(judge.base_url())),
            |done, total| progress.push((done, total)),
        ))
        .unwrap();
    println!("{}", report.to_markdown());
    assert_eq!(progress.len(), 6);
    assert_eq!(progress.last(), Some(&(6, 6)));
    assert_eq!(report.count, 3);
    assert_eq!(report.max_rounds, 1);
    assert_eq!(report.questions.len(), 6);
    // Policy by policy, questions in order.
    let order: Vec<(String, usize)> = report
        .questions
        .iter()
        .map(|q| (q.policy.clone(), q.index))
        .collect();
    assert_eq!(
        order,
        [
            ("rcr", 0),
            ("rcr", 1),
            ("rcr", 2),
            ("full", 0),
            ("full", 1),
            ("full", 2)
        ]
        .map(|(p, i)| (p.to_owned(), i))
    );
    for q in &report.questions {
        assert_eq!(q.status, "finished", "{q:?}");
        assert!(q.exact_match, "{q:?}");
        assert_eq!(q.f1, 1.0);
        assert_eq!(q.rounds, 1);
        assert!(q.usage.total.calls >= 4, "{:?}", q.usage.total);
        assert_eq!(q.usage.by_round.len(), 1);
        assert!(q.usage.by_role.contains_key("answerer"));
        // The oracle cites only the gold paragraphs it sees (under rcr, maybe none: that is
        // routing's recall, not this test's concern).
        assert!(q.cited.iter().all(|c| q.gold.contains(c)), "{q:?}");
        let grounding = if q.cited.is_empty() { 0.0 } else { 1.0 };
        assert_eq!(q.aqs.grounding, grounding, "{q:?}");
        if q.policy == "full" {
            assert_eq!(
                q.cited, q.gold,
                "the full context holds every gold paragraph"
            );
        }
        // Correct answers: at least the correctness weight (0.5, or 0.4 with the judge).
        assert!(q.aqs.aqs >= 0.4 && q.aqs.aqs <= 1.0, "{q:?}");
        assert!(q.wall_secs > 0.0);
    }
    let rcr = report.result("rcr").unwrap();
    let full = report.result("full").unwrap();
    for r in [rcr, full] {
        assert_eq!((r.questions, r.finished, r.answered), (3, 3, 3));
        assert_eq!((r.exact_match, r.f1), (1.0, 1.0));
        assert!(r.usage.prompt_tokens > 0.0 && r.usage.completion_tokens > 0.0);
        let by_role: f64 = r.by_role.values().map(|u| u.prompt_tokens).sum();
        assert!((by_role - r.usage.prompt_tokens).abs() < 1e-6);
        let by_round: f64 = r.by_round.values().map(|u| u.calls).sum();
        assert!((by_round - r.usage.calls).abs() < 1e-6);
    }
    // The full context holds every paragraph: the answerer can cite every gold one.
    assert_eq!(full.completeness, 1.0);
    // rcr reads less than the full context.
    let share = rcr.prompt_share.unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    assert_eq!(full.prompt_share, Some(1.0));
    // One garbage judge reply, tolerated; the rest scored.
    let failures: usize = report.results.iter().map(|r| r.judge_failures).sum();
    let judged: usize = report.results.iter().map(|r| r.judged).sum();
    assert_eq!((failures, judged), (1, 5));
    // The JSON report round-trips and holds the configuration.
    let json = serde_json::to_string(&report).unwrap();
    let back: agentd_eval::E2eReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.config, report.config);
    assert_eq!(back.questions.len(), report.questions.len());
    assert_eq!(back.config.max_tokens, Some(64));
    // Every request carried the seed and the overridden max tokens.
    for body in llm.bodies() {
        assert_eq!(body["seed"], 0, "{body}");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["model"], "mock-model");
    }
}
