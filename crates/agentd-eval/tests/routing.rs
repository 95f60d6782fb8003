//! The routing-only evaluation over the first HotpotQA dev questions.

use std::path::{Path, PathBuf};

use agentd_eval::{BudgetSpec, EvalError, PolicySpec, RoutingEvalConfig, run_routing_eval};

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

fn config(file: PathBuf) -> RoutingEvalConfig {
    RoutingEvalConfig {
        file,
        limit: Some(20),
        budgets: vec![
            BudgetSpec::Role,
            BudgetSpec::Tokens(512),
            BudgetSpec::Tokens(100_000),
        ],
        workflow: crate_dir().join("../../workflows/multihop_qa.toml"),
        ..RoutingEvalConfig::default()
    }
}

#[test]
fn routing_eval_on_hotpotqa_is_sane_and_deterministic() {
    let Some(file) = hotpot() else { return };
    let cfg = config(file);
    let mut calls = Vec::new();
    let report = run_routing_eval(&cfg, |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls.len(), 20);
    assert_eq!(calls.last(), Some(&(20, 20)));
    assert_eq!(report.config.count, 20);
    assert_eq!(report.config.nodes, vec!["answer".to_owned()]);
    println!("{}", report.to_markdown());

    let full_ref = &report.full_reference[0];
    assert_eq!(full_ref.evidence_recall, 1.0);
    let huge = BudgetSpec::Tokens(100_000);
    let full = report.result("full", &huge, "answer").unwrap();
    assert_eq!(full.evidence_recall, 1.0);
    assert_eq!(full.sentence_recall, Some(1.0));
    assert!((full.token_share - 1.0).abs() < 1e-9);

    for spec in &cfg.budgets {
        let rcr = report.result("rcr", spec, "answer").unwrap();
        let full = report.result("full", spec, "answer").unwrap();
        assert_eq!(rcr.questions, 20);
        assert!(
            rcr.evidence_recall > 0.0 && rcr.evidence_recall <= 1.0,
            "{rcr:?}"
        );
        assert!(rcr.evidence_precision > 0.0 && rcr.evidence_precision <= 1.0);
        assert!(rcr.mean_tokens <= rcr.budget as f64);
        assert!(rcr.mean_tokens < full_ref.mean_tokens, "{rcr:?}");
        assert!(rcr.token_share > 0.0 && rcr.token_share < 1.0);
        assert!(full.mean_tokens <= full.budget as f64);
        let bm25 = report.result("bm25", spec, "answer").unwrap();
        assert!(
            bm25.mean_tokens <= rcr.mean_tokens + 1e-9,
            "{bm25:?} vs {rcr:?}"
        );
        for r in report.results.iter().filter(|r| &r.budget_spec == spec) {
            assert!((0.0..=1.0).contains(&r.evidence_recall), "{r:?}");
            let missed: usize = r
                .gold_fate
                .iter()
                .filter(|(k, _)| *k != "cut")
                .map(|(_, n)| n)
                .sum();
            let found = (r.evidence_recall * r.questions as f64).round();
            assert!(missed <= r.gold_total, "{r:?}");
            assert!(found >= 0.0);
        }
    }
    let role = report.result("rcr", &BudgetSpec::Role, "answer").unwrap();
    assert_eq!(role.budget, 600);

    // Same configuration, same results.
    let again = run_routing_eval(&cfg, |_, _| {}).unwrap();
    assert_eq!(report.config, again.config);
    assert_eq!(report.full_reference, again.full_reference);
    assert_eq!(report.results, again.results);
    // And the report survives JSON.
    let json = serde_json::to_string(&report).unwrap();
    let back: agentd_eval::EvalReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.config, report.config);
    assert_eq!(back.results.len(), report.results.len());
    for (a, b) in back.results.iter().zip(&report.results) {
        assert_eq!(
            (&a.policy, a.budget, &a.gold_fate),
            (&b.policy, b.budget, &b.gold_fate)
        );
        assert!((a.evidence_recall - b.evidence_recall).abs() < 1e-12);
        assert!((a.token_share - b.token_share).abs() < 1e-12);
    }
}

#[test]
fn every_node_can_be_evaluated() {
    let Some(file) = hotpot() else { return };
    let cfg = RoutingEvalConfig {
        limit: Some(3),
        all_nodes: true,
        policies: vec![PolicySpec::Rcr],
        bm25_baseline: false,
        budgets: vec![BudgetSpec::Role],
        ..config(file)
    };
    let report = run_routing_eval(&cfg, |_, _| {}).unwrap();
    assert_eq!(
        report.config.nodes,
        ["plan", "research", "reason", "answer", "critic"]
    );
    let critic = report.result("rcr", &BudgetSpec::Role, "critic").unwrap();
    assert_eq!(critic.budget, 800);
    // The planner reads no documents.
    let plan = report.result("rcr", &BudgetSpec::Role, "plan").unwrap();
    assert_eq!(plan.evidence_recall, 0.0);
}

#[test]
fn configuration_errors_are_typed() {
    let Some(file) = hotpot() else { return };
    let bad_node = RoutingEvalConfig {
        nodes: vec!["answr".into()],
        ..config(file.clone())
    };
    assert!(matches!(
        run_routing_eval(&bad_node, |_, _| {}),
        Err(EvalError::UnknownNode { .. })
    ));
    let bad_workflow = RoutingEvalConfig {
        workflow: crate_dir().join("missing.toml"),
        ..config(file)
    };
    assert!(matches!(
        run_routing_eval(&bad_workflow, |_, _| {}),
        Err(EvalError::Workflow { .. })
    ));
    let no_file = RoutingEvalConfig {
        file: crate_dir().join("missing.jsonl"),
        ..RoutingEvalConfig::default()
    };
    let no_file = RoutingEvalConfig {
        workflow: crate_dir().join("../../workflows/multihop_qa.toml"),
        ..no_file
    };
    assert!(matches!(
        run_routing_eval(&no_file, |_, _| {}),
        Err(EvalError::Dataset(_))
    ));
}
