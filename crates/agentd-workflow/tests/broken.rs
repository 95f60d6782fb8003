//! Every file in `tests/fixtures/broken/` holds one mistake; each must be reported with the
//! expected message at the expected line and column (and nothing else: no follow-on noise).

use std::path::{Path, PathBuf};

use agentd_workflow::validate_path;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/broken")
        .join(name)
}

/// An expected error: line, column, and a fragment of the message.
type Located = (usize, usize, &'static str);

/// Each fixture and the errors it must produce, in order.
const EXPECTED: &[(&str, &[Located])] = &[
    (
        "syntax_error.toml",
        &[(5, 14, "invalid TOML: unclosed table")],
    ),
    ("unknown_field.toml", &[(4, 1, "unknown field `max_round`")]),
    (
        "wrong_type.toml",
        &[(4, 14, "invalid type: string \"3\", expected u32")],
    ),
    ("unknown_role.toml", &[(11, 8, "unknown role `reasonr`")]),
    (
        "unknown_after.toml",
        &[(17, 10, "unknown node `reserch` in `after`")],
    ),
    (
        "cycle.toml",
        &[(
            23,
            10,
            "dependency cycle: answer → plan → research → answer",
        )],
    ),
    (
        "self_dependency.toml",
        &[(13, 10, "node `answer` depends on itself")],
    ),
    (
        "island.toml",
        &[(
            19,
            8,
            "node `notes` is not connected to the rest of the workflow",
        )],
    ),
    (
        "never_runs.toml",
        &[(
            19,
            10,
            "node `review` never runs: rounds = \"after_first\" but max_rounds = 1",
        )],
    ),
    (
        "no_stop_producer.toml",
        &[(
            5,
            22,
            "no node writes `answer`, so the stop condition can never hold",
        )],
    ),
    ("bad_policy.toml", &[(6, 10, "unknown policy `rrc`")]),
    (
        "bad_weight.toml",
        &[(6, 33, "weight `query` must be between 0 and 1, not -0.4")],
    ),
    ("bad_stage.toml", &[(12, 9, "unknown stage `gahter`")]),
    (
        "bad_placeholder.toml",
        &[(
            11,
            25,
            "unknown placeholder `{{taks}}` in the prompt template",
        )],
    ),
    (
        "bad_kind.toml",
        &[
            (7, 10, "unknown kind `evidance`"),
            (7, 22, "`Fact` is not a kind name"),
        ],
    ),
    (
        "max_rounds_zero.toml",
        &[(4, 14, "max_rounds must be at least 1")],
    ),
    (
        "empty_workflow.toml",
        &[(2, 1, "the workflow has no nodes")],
    ),
    (
        "role_without_context.toml",
        &[(7, 12, "the prompt template has no {{context}} placeholder")],
    ),
];

#[test]
fn every_broken_fixture_reports_its_mistake_where_it_is() {
    for (file, expected) in EXPECTED {
        let path = fixture(file);
        let errors = match validate_path(&path) {
            Ok(kind) => panic!("{file} validated as a {kind:?}"),
            Err(e) => e,
        };
        let shown = errors.to_string();
        let got: Vec<(usize, usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.column, e.message.as_str()))
            .collect();
        assert_eq!(got.len(), expected.len(), "{file}:\n{shown}");
        for ((line, column, message), (el, ec, em)) in got.iter().zip(expected.iter()) {
            assert!(
                message.contains(em),
                "{file}: `{message}` lacks `{em}`\n{shown}"
            );
            assert_eq!((line, column), (el, ec), "{file}: {message}\n{shown}");
        }
        for e in &errors {
            assert!(e.file.ends_with(file), "{file}: error in {}", e.file);
            assert!(e.help.is_some(), "{file}: no help for `{}`", e.message);
            assert!(e.source_line.is_some(), "{file}: no source line");
        }
    }
}

#[test]
fn every_fixture_in_the_folder_is_covered() {
    let dir = fixture("");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut covered: Vec<String> = EXPECTED.iter().map(|(f, _)| f.to_string()).collect();
    covered.sort();
    assert_eq!(on_disk, covered);
}

#[test]
fn help_texts_suggest_the_fix() {
    let help = |file: &str| {
        validate_path(&fixture(file)).unwrap_err().0[0]
            .help
            .clone()
            .unwrap()
    };
    assert!(help("unknown_field.toml").contains("did you mean `max_rounds`"));
    let role = help("unknown_role.toml");
    assert!(
        role.contains("/agents/reasonr.toml and no [roles.reasonr]"),
        "{role}"
    );
    assert!(
        role.contains("roles found: answerer, critic, planner, reasoner, researcher"),
        "{role}"
    );
    assert!(role.contains("did you mean `reasoner`"), "{role}");
    assert!(help("unknown_after.toml").contains("did you mean `research`"));
    assert!(help("bad_stage.toml").contains("did you mean `gather`"));
    assert!(help("bad_policy.toml").contains("did you mean `rcr`"));
    assert!(help("bad_placeholder.toml").contains("did you mean `{{task}}`"));
    assert!(help("cycle.toml").contains("rounds are the only loop"));
}

#[test]
fn errors_render_rustc_style() {
    let errors = validate_path(&fixture("unknown_role.toml")).unwrap_err();
    let shown = errors.to_string();
    let path = fixture("unknown_role.toml");
    let expected_head = format!(
        "error: unknown role `reasonr`\n  --> {}:11:8\n   |\n11 | role = \"reasonr\"\n   |        ^^^^^^^^^\n   = help: no file ",
        path.display()
    );
    assert!(shown.starts_with(&expected_head), "{shown}");
}

#[test]
fn a_missing_file_is_an_unlocated_error() {
    let errors = validate_path(Path::new("no/such/workflow.toml")).unwrap_err();
    let e = &errors.0[0];
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.message.starts_with("cannot read no/such/workflow.toml"),
        "{e}"
    );
}

#[test]
fn several_mistakes_in_one_file_are_reported_together() {
    let text = r#"[workflow]
name = "multi"
max_rounds = 2
stop_when = { kind = "answer", min_confidence = 1.5 }

[router]
policy = "static"
static_k = 0
weights = { role = 2.0, recency_half_life = 0 }

[model]
temperature = 3

[stages.my-stage]
priorities = { evidence = 1.2 }

[roles.planner]
description = "Plans."
writes = ["plan"]
prompt.system = "Plan."
output.format = "txt"

[nodes.plan]
role = "planner"
stage = "plan"
rounds = "evry"
"#;
    let errors = agentd_workflow::Workflow::parse(text, "multi.toml", None).unwrap_err();
    let got: Vec<(usize, usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (4, 49, "min_confidence must be between 0 and 1, not 1.5"),
            (8, 12, "static_k must be at least 1"),
            (9, 20, "weight `role` must be between 0 and 1, not 2"),
            (9, 45, "recency_half_life must be above 0, not 0"),
            (12, 15, "temperature must be between 0 and 2, not 3"),
            (14, 9, "stage name `my-stage` is not an identifier"),
            (
                15,
                27,
                "priority of `evidence` must be between 0 and 1, not 1.2"
            ),
            (21, 17, "unknown output format `txt`"),
            (26, 10, "unknown rounds rule `evry`"),
        ],
        "{errors}"
    );
}
