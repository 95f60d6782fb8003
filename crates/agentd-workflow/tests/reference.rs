//! The reference roles (`agents/`) and workflows (`workflows/`) at the repository root load,
//! in the documented shape; role files' errors are reported at the role file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd_memory::{Kind, Readers};
use agentd_router::Policy;
use agentd_workflow::{
    FileKind, OutputFormat, RoundRule, TemplateVars, Workflow, load_role, validate_path,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn names(w: &Workflow) -> Vec<&str> {
    w.nodes.iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn multihop_qa_loads_in_topological_order() {
    let w = Workflow::load(&root().join("workflows/multihop_qa.toml")).unwrap();
    assert_eq!(w.name, "multihop_qa");
    assert_eq!(
        names(&w),
        ["plan", "research", "reason", "answer", "critic"]
    );
    assert_eq!(w.max_rounds, 3);
    let stop = w.stop_when.as_ref().unwrap();
    assert_eq!(
        (stop.kind.clone(), stop.min_confidence),
        (Kind::Answer, 0.7)
    );
    assert_eq!(w.router.policy, Policy::Rcr);
    assert!(w.router.run_budget.is_some());
    assert!(w.model.json);
    assert_eq!(w.node("plan").unwrap().rounds, RoundRule::First);
    assert_eq!(w.node("critic").unwrap().after, ["answer"]);
    assert_eq!(w.node("critic").unwrap().timeout, Duration::from_secs(120));
    for node in &w.nodes {
        let role = w.role_of(node);
        assert_eq!(role.name, node.role);
        assert!(
            role.path
                .as_ref()
                .unwrap()
                .ends_with(format!("agents/{}.toml", role.name))
        );
        assert!((600..=1500).contains(&role.profile.budget), "{}", role.name);
        assert_eq!(w.stage_of(node).name, node.stage);
    }
    let answerer = &w.roles["answerer"];
    assert!(answerer.writes.contains(&Kind::Answer));
    assert!(w.roles["critic"].writes.contains(&Kind::Critique));
    assert!(w.roles["critic"].profile.reads.contains(&Kind::Answer));
    assert_eq!(answerer.profile.affinity_for("reasoner"), 0.9);
    assert!(w.source.contains("[nodes.plan]"));
}

#[test]
fn a_workflow_round_trips_through_json() {
    for file in ["multihop_qa", "doc_brief"] {
        let w = Workflow::load(&root().join(format!("workflows/{file}.toml"))).unwrap();
        let json = serde_json::to_value(&w).unwrap();
        let back: Workflow = serde_json::from_value(json).unwrap();
        assert_eq!(back, w);
    }
}

#[test]
fn doc_brief_mixes_inline_and_file_roles() {
    let w = Workflow::load(&root().join("workflows/doc_brief.toml")).unwrap();
    assert_eq!(names(&w), ["outline", "summarize", "write", "review"]);
    assert!(w.roles["writer"].path.is_none());
    assert!(w.roles["critic"].path.is_some());
    assert_eq!(w.roles["writer"].writes, [Kind::Answer]);
    assert_eq!(w.roles["summarizer"].writes, [Kind::Fact]);
    assert_eq!(w.stages["summarize"].priority_of(&Kind::Document), 1.0);
    assert_eq!(w.stages["write"].budget_multiplier, 1.2);
    assert_eq!(w.router.weights.query, 0.35);
    assert_eq!(w.model_for(&w.roles["writer"]).max_tokens, Some(400));
    let vars = TemplateVars {
        task: "Brief Q3",
        round: 1,
        ..TemplateVars::default()
    };
    assert_eq!(
        w.node("summarize").unwrap().render_query(&vars),
        "Brief Q3 key facts"
    );
}

#[test]
fn every_reference_file_validates() {
    for dir in ["agents", "workflows"] {
        let mut n = 0;
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let kind = validate_path(&path).unwrap_or_else(|e| panic!("{e}"));
                let expected = if dir == "agents" {
                    FileKind::Role
                } else {
                    FileKind::Workflow
                };
                assert_eq!(kind, expected, "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 2, "{dir}");
    }
}

#[test]
fn reference_prompts_are_short_and_complete() {
    for name in ["planner", "researcher", "reasoner", "answerer", "critic"] {
        let role = load_role(&root().join(format!("agents/{name}.toml"))).unwrap();
        assert_eq!(role.name, name);
        assert_eq!(role.output.format, OutputFormat::Json);
        assert!(role.prompt.template.contains("{{context}}"), "{name}");
        assert!(role.prompt.template.contains("{{output_format}}"), "{name}");
        let sentences = role.prompt.system.matches(". ").count() + 1;
        assert!(
            (1..=4).contains(&sentences),
            "{name}: {sentences} sentences"
        );
        assert!(!role.prompt.system.contains('\n'), "{name}: one paragraph");
        assert_eq!(role.readers, Readers::All);
        let vars = TemplateVars {
            task: "Q?",
            context: "CTX",
            output_format: "FMT",
            ..TemplateVars::default()
        };
        let user = role.prompt.render(&vars);
        assert!(user.starts_with("Question: Q?") && user.contains("CTX") && user.ends_with("FMT"));
    }
}

#[test]
fn graphs_render_every_edge() {
    let w = Workflow::load(&root().join("workflows/multihop_qa.toml")).unwrap();
    let dot = w.to_dot();
    assert!(dot.starts_with("digraph \"multihop_qa\" {"), "{dot}");
    for (a, b) in [
        ("plan", "research"),
        ("research", "reason"),
        ("reason", "answer"),
        ("answer", "critic"),
    ] {
        assert!(dot.contains(&format!("\"{a}\" -> \"{b}\";")), "{dot}");
        assert!(w.to_mermaid().contains(&format!("  {a} --> {b}\n")));
    }
    assert_eq!(dot.matches(" -> ").count(), 4);
    assert!(dot.contains("planner · plan\\nround 1 only"), "{dot}");
    let mermaid = w.to_mermaid();
    assert!(mermaid.contains("flowchart LR\n"), "{mermaid}");
    assert!(
        mermaid.contains("plan[\"plan<br/>planner · plan<br/>round 1 only\"]"),
        "{mermaid}"
    );
    assert!(mermaid.contains("stop when answer ≥ 0.7"), "{mermaid}");
}

/// A folder with `workflows/w.toml` and `agents/<role>.toml` files.
fn project(workflow: &str, roles: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::create_dir_all(dir.path().join("agents")).unwrap();
    std::fs::write(dir.path().join("workflows/w.toml"), workflow).unwrap();
    for (name, text) in roles {
        std::fs::write(dir.path().join(format!("agents/{name}.toml")), text).unwrap();
    }
    dir
}

const TWO_NODES: &str = r#"[workflow]
name = "w"

[nodes.research]
role = "researcher"
stage = "gather"

[nodes.answer]
role = "answerer"
stage = "answer"
after = ["research"]
"#;

const RESEARCHER: &str = r#"description = "Finds evidence."
writes = ["evidence"]
prompt.system = "Find evidence."
"#;

#[test]
fn role_file_errors_point_into_the_role_file() {
    let answerer = r#"description = "Answers."
writes = ["answer"]
budget = 0
prompt = { system = "Answer.", template = "{{task}} {{contxt}}" }
"#;
    let dir = project(
        TWO_NODES,
        &[("researcher", RESEARCHER), ("answerer", answerer)],
    );
    let errors = Workflow::load(&dir.path().join("workflows/w.toml")).unwrap_err();
    let shown = errors.to_string();
    let got: Vec<(String, usize, usize)> = errors
        .iter()
        .map(|e| (e.file.clone(), e.line, e.column))
        .collect();
    let role_file = dir
        .path()
        .join("agents/answerer.toml")
        .display()
        .to_string();
    assert_eq!(
        got,
        [
            (role_file.clone(), 3, 10),
            (role_file.clone(), 4, 43),
            (role_file.clone(), 4, 53),
        ],
        "{shown}"
    );
    assert!(shown.contains("budget must be at least 1"), "{shown}");
    assert!(
        shown.contains("unknown placeholder `{{contxt}}`"),
        "{shown}"
    );
    assert!(shown.contains("no {{context}} placeholder"), "{shown}");
    // No "unknown role" on top: the file exists, it is just wrong.
    assert!(!shown.contains("unknown role"), "{shown}");
}

#[test]
fn inline_roles_take_precedence_and_names_must_match() {
    let inline = format!(
        "{TWO_NODES}\n[roles.answerer]\ndescription = \"Inline.\"\nwrites = [\"answer\"]\nprompt.system = \"Answer.\"\n"
    );
    let broken_file = "this is not TOML";
    let dir = project(
        &inline,
        &[("researcher", RESEARCHER), ("answerer", broken_file)],
    );
    let w = Workflow::load(&dir.path().join("workflows/w.toml")).unwrap();
    assert_eq!(w.roles["answerer"].profile.description, "Inline.");
    assert!(w.roles["answerer"].path.is_none());

    let misnamed = "name = \"researcher2\"\ndescription = \"x\"\nwrites = [\"evidence\"]\nprompt.system = \"x\"\n";
    let dir = project(TWO_NODES, &[("researcher", misnamed)]);
    let errors = Workflow::load(&dir.path().join("workflows/w.toml")).unwrap_err();
    let shown = errors.to_string();
    assert!(
        shown.contains("role name `researcher2` does not match `researcher`"),
        "{shown}"
    );
    assert!(shown.contains("unknown role `answerer`"), "{shown}");
    assert!(shown.contains("roles found: researcher"), "{shown}");
}

#[test]
fn parse_reads_roles_from_the_given_folder() {
    let w = Workflow::parse(
        &std::fs::read_to_string(root().join("workflows/multihop_qa.toml")).unwrap(),
        "multihop_qa (inline)",
        Some(&root().join("agents")),
    )
    .unwrap();
    assert!(w.path.is_none());
    assert_eq!(w.nodes.len(), 5);
    let errors = Workflow::parse(
        &std::fs::read_to_string(root().join("workflows/multihop_qa.toml")).unwrap(),
        "multihop_qa (inline)",
        None,
    )
    .unwrap_err();
    assert_eq!(errors.len(), 5, "{errors}");
    assert!(errors.iter().all(|e| e.file == "multihop_qa (inline)"));
}

#[test]
fn text_kind_must_be_note_or_written() {
    let role = "description = \"x\"\nwrites = [\"fact\"]\nprompt.system = \"x\"\noutput = { format = \"text\", text_kind = \"answer\" }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, role).unwrap();
    let errors = load_role(&path).unwrap_err();
    assert_eq!(
        errors.0[0].message,
        "text_kind `answer` is not one of `writes`"
    );
    assert_eq!((errors.0[0].line, errors.0[0].column), (4, 41));
    std::fs::write(&path, role.replace("\"answer\" }", "\"fact\" }")).unwrap();
    let spec = load_role(&path).unwrap();
    assert_eq!(spec.output.format, OutputFormat::Text);
    assert_eq!(spec.output.text_kind, Kind::Fact);
    assert!(spec.may_write(&Kind::Fact));
}
