//! Reading documents for `agentd run --docs DIR | --docs-jsonl FILE`.

use std::path::Path;

use agentd_runtime::Document;
use anyhow::{Context, bail};

/// Text files of a folder (sorted by name, not recursive): `.txt`, `.md`, `.markdown`, `.rst`,
/// `.text`. The file stem is the title.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<Document>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the documents folder {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let text_like = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "txt" | "md" | "markdown" | "rst" | "text"));
        if path.is_file() && text_like {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!(
            "no documents in {} (looked for .txt, .md, .markdown, .rst and .text files)",
            dir.display()
        );
    }
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {} (is it UTF-8 text?)", path.display()))?;
            let title = path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(|s| s.replace(['_', '-'], " "));
            Ok(Document { title, text })
        })
        .collect()
}

/// One JSON object per line: `{"title": "...", "text": "..."}` (`content` or `body` are accepted
/// for `text`). Blank lines are skipped.
pub fn read_jsonl(file: &Path) -> anyhow::Result<Vec<Document>> {
    let data = std::fs::read_to_string(file)
        .with_context(|| format!("reading documents from {}", file.display()))?;
    let mut docs = Vec::new();
    for (n, line) in data.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a JSON object (each line must be {{\"title\": ..., \"text\": ...}})",
                file.display(),
                n + 1
            )
        })?;
        let text = ["text", "content", "body"]
            .iter()
            .find_map(|k| value.get(k).and_then(|v| v.as_str()))
            .with_context(|| {
                format!(
                    "{}:{}: no \"text\" field (each line must be {{\"title\": ..., \"text\": ...}})",
                    file.display(),
                    n + 1
                )
            })?;
        let title = value
            .get("title")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        docs.push(Document {
            title,
            text: text.to_owned(),
        });
    }
    if docs.is_empty() {
        bail!("{} holds no documents", file.display());
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_documents_and_located_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.jsonl");
        std::fs::write(
            &f,
            "{\"title\":\"A\",\"text\":\"x\"}\n\n{\"content\":\"y\"}\n",
        )
        .unwrap();
        let docs = read_jsonl(&f).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].title.as_deref(), Some("A"));
        std::fs::write(&f, "{\"title\":\"A\"}\n").unwrap();
        let err = format!("{:#}", read_jsonl(&f).unwrap_err());
        assert!(err.contains("d.jsonl:1"), "{err}");
        std::fs::write(&f, "not json\n").unwrap();
        assert!(read_jsonl(&f).is_err());
    }

    #[test]
    fn folder_documents_sorted_with_titles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b_river.md"), "The Seine.").unwrap();
        std::fs::write(dir.path().join("a.txt"), "Paris.").unwrap();
        std::fs::write(dir.path().join("skip.bin"), "x").unwrap();
        let docs = read_dir(dir.path()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].title.as_deref(), Some("b river"));
        assert!(read_dir(&dir.path().join("missing")).is_err());
    }
}
