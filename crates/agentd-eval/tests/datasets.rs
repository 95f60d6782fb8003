//! Loaders: inline snippets of each schema, JSON arrays, malformed lines, and the real dev
//! files when they are present.

use std::path::{Path, PathBuf};

use agentd_eval::datasets::{self, DatasetError, DatasetKind};

fn data(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/mhqa")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent", p.display());
        None
    }
}

const HOTPOT: &str = r#"{"_id": "h1", "question": "Which city is the capital of the country where X was born?", "answer": "Paris", "type": "bridge", "level": "hard", "context": [["X", ["X was born in France.", " X wrote books."]], ["France", ["France is a country.", " Its capital is Paris."]], ["Other", ["Unrelated."]]], "supporting_facts": [["X", 0], ["France", 1], ["France", 7]]}"#;

const MUSIQUE: &str = r#"{"id": "2hop__1_2", "question": "Who is the spouse of the Green performer?", "answer": "Miquette Giraudy", "answer_aliases": [], "answerable": true, "paragraphs": [{"idx": 0, "title": "A", "paragraph_text": "Nothing here.", "is_supporting": false}, {"idx": 1, "title": "Green", "paragraph_text": "Green is by Steve Hillage.", "is_supporting": true}, {"idx": 2, "title": "Steve Hillage", "paragraph_text": "Hillage married Miquette Giraudy.", "is_supporting": true}], "question_decomposition": [{"id": 1, "question": "Green >> performer", "answer": "Steve Hillage", "paragraph_support_idx": 1}]}"#;

const TWOWIKI: &str = r#"{"_id": "w1", "type": "compositional", "question": "When is Karl's father's birthday?", "answer": "18 January 1866", "context": [["Emich", ["Emich was born on 18 January 1866."]], ["Karl", ["Karl is the son of Emich.", "He ruled."]], ["Karl", ["Another Karl."]]], "supporting_facts": [["Karl", 0], ["Emich", 0]], "evidences": [["Karl", "father", "Emich"]], "entity_ids": "Q1_Q2"}"#;

#[test]
fn hotpotqa_snippet_normalises() {
    let (kind, qs) = datasets::parse_str(HOTPOT, "h.jsonl", None).unwrap();
    assert_eq!(kind, DatasetKind::HotpotQa);
    let q = &qs[0];
    assert_eq!(q.id, "h1");
    assert_eq!(q.answer, "Paris");
    assert_eq!(q.paragraphs.len(), 3);
    assert_eq!(q.paragraphs[1].sentences[1], "Its capital is Paris.");
    assert_eq!(
        q.paragraphs[1].text(),
        "France is a country. Its capital is Paris."
    );
    assert_eq!(q.gold, vec![0, 1]);
    // The out-of-range sentence index adds its paragraph but no sentence.
    assert_eq!(q.gold_sentences, vec![(0, 0), (1, 1)]);
}

#[test]
fn musique_snippet_normalises() {
    let (kind, qs) = datasets::parse_str(MUSIQUE, "m.jsonl", None).unwrap();
    assert_eq!(kind, DatasetKind::Musique);
    let q = &qs[0];
    assert_eq!(q.id, "2hop__1_2");
    assert_eq!(q.paragraphs.len(), 3);
    assert_eq!(q.paragraphs[2].title, "Steve Hillage");
    assert_eq!(
        q.paragraphs[2].sentences,
        vec!["Hillage married Miquette Giraudy."]
    );
    assert_eq!(q.gold, vec![1, 2]);
    assert!(q.gold_sentences.is_empty());
}

#[test]
fn twowiki_snippet_normalises_with_duplicate_titles() {
    let (kind, qs) = datasets::parse_str(TWOWIKI, "w.jsonl", None).unwrap();
    assert_eq!(kind, DatasetKind::TwoWiki);
    let q = &qs[0];
    assert_eq!(q.gold, vec![0, 1, 2]);
    assert_eq!(q.gold_sentences, vec![(0, 0), (1, 0), (2, 0)]);
}

#[test]
fn json_arrays_and_jsonl_agree() {
    for (line, kind) in [
        (HOTPOT, DatasetKind::HotpotQa),
        (MUSIQUE, DatasetKind::Musique),
        (TWOWIKI, DatasetKind::TwoWiki),
    ] {
        let jsonl = format!("{line}\n\n{line}\n");
        let array = format!("[\n{line},\n{line}\n]");
        let (k1, a) = datasets::parse_str(&jsonl, "x.jsonl", None).unwrap();
        let (k2, b) = datasets::parse_str(&array, "x.json", None).unwrap();
        assert_eq!((k1, k2), (kind, kind));
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        // Written to a file and loaded.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, &array).unwrap();
        let ds = datasets::load(&path, None).unwrap();
        assert_eq!((ds.kind, ds.questions), (kind, a));
    }
}

#[test]
fn explicit_kind_overrides_detection() {
    // A 2Wiki record read as HotpotQA parses (the schemas share their fields).
    let (kind, qs) = datasets::parse_str(TWOWIKI, "w", Some(DatasetKind::HotpotQa)).unwrap();
    assert_eq!(kind, DatasetKind::HotpotQa);
    assert_eq!(qs[0].gold, vec![0, 1, 2]);
    // A HotpotQA record read as 2Wiki lacks `evidences`.
    let err = datasets::parse_str(HOTPOT, "h", Some(DatasetKind::TwoWiki)).unwrap_err();
    assert!(err.to_string().contains("`evidences`"), "{err}");
}

#[test]
fn malformed_lines_name_file_line_and_field() {
    let missing = HOTPOT.replace(r#""question": "#, r#""q": "#);
    let text = format!("{HOTPOT}\n{missing}\n");
    let err = datasets::parse_str(&text, "dev.jsonl", None).unwrap_err();
    assert!(
        matches!(&err, DatasetError::MissingField { location, field } if location == "dev.jsonl:2" && field == "question"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "dev.jsonl:2: missing field `question`");

    let err =
        datasets::parse_str(&format!("{HOTPOT}\n{{not json\n"), "dev.jsonl", None).unwrap_err();
    assert!(
        err.to_string().starts_with("dev.jsonl:2: invalid JSON"),
        "{err}"
    );

    let nested = MUSIQUE.replace(
        r#""is_supporting": true}, {"idx": 2"#,
        r#""x": true}, {"idx": 2"#,
    );
    let err = datasets::parse_str(&nested, "m.jsonl", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.jsonl:1: missing field `paragraphs[1].is_supporting`"
    );

    let bad_type = HOTPOT.replace(r#"["X", 0]"#, r#"["X", "zero"]"#);
    let err = datasets::parse_str(&bad_type, "h.jsonl", None).unwrap_err();
    assert!(err.to_string().contains("supporting_facts[0][1]"), "{err}");

    let err =
        datasets::parse_str(&format!("[{HOTPOT}, {{\"_id\": 1}}]"), "h.json", None).unwrap_err();
    assert_eq!(err.to_string(), "h.json[1]: missing field `question`");

    let err = datasets::parse_str("{\"foo\": 1}", "u.jsonl", None).unwrap_err();
    assert!(matches!(err, DatasetError::UnknownSchema { .. }), "{err:?}");

    let err = datasets::load("/nonexistent/dev.jsonl", None).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dev.jsonl"), "{err}");
}

#[test]
fn real_files_load_with_gold_labels() {
    for (name, kind, min_paragraphs) in [
        ("hotpotqa.jsonl", DatasetKind::HotpotQa, 2),
        ("2wiki.jsonl", DatasetKind::TwoWiki, 2),
        ("musique.jsonl", DatasetKind::Musique, 2),
    ] {
        let Some(path) = data(name) else { continue };
        // A few lines of each file, then the whole file.
        let text = std::fs::read_to_string(&path).unwrap();
        let head: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
        let (k, qs) = datasets::parse_str(&head, name, None).unwrap();
        assert_eq!(k, kind);
        assert_eq!(qs.len(), 5);
        let ds = datasets::load(&path, None).unwrap();
        assert_eq!(ds.kind, kind);
        assert_eq!(
            ds.questions.len(),
            text.lines().filter(|l| !l.trim().is_empty()).count()
        );
        for q in &ds.questions {
            assert!(
                !q.id.is_empty() && !q.question.is_empty(),
                "{name} {}",
                q.id
            );
            assert!(q.paragraphs.len() >= min_paragraphs, "{name} {}", q.id);
            assert!(q.gold.len() >= 2, "{name} {}: gold {:?}", q.id, q.gold);
            assert!(q.gold.iter().all(|&g| g < q.paragraphs.len()));
            if kind == DatasetKind::Musique {
                assert!(q.gold_sentences.is_empty());
            } else {
                assert!(!q.gold_sentences.is_empty(), "{name} {}", q.id);
                for &(p, s) in &q.gold_sentences {
                    assert!(q.gold.contains(&p) && s < q.paragraphs[p].sentences.len());
                }
            }
        }
    }
}
