//! Loaders for multi-hop QA datasets in their original schemas, normalised into [`Question`]s.
//!
//! - **HotpotQA** (distractor): `_id`, `question`, `answer`, `context: [[title, [sentences]]]`,
//!   `supporting_facts: [[title, sentence index]]`.
//! - **MuSiQue** (answerable): `id`, `question`, `answer`,
//!   `paragraphs: [{idx, title, paragraph_text, is_supporting}]`, `question_decomposition`.
//!   Paragraphs are not split into sentences (one "sentence" per paragraph) and there are no
//!   sentence labels.
//! - **2WikiMultihopQA**: like HotpotQA, plus `evidences` and `type`.
//!
//! A file is either a JSON array of records (the official releases) or JSON lines (one record
//! per line; blank lines are skipped). The dataset is detected from the first record's fields
//! unless given: `paragraphs` → MuSiQue, `context` with `evidences` → 2Wiki, `context` without
//! → HotpotQA. Errors name the file and line (or array element) and the field at fault.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The supported datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DatasetKind {
    /// HotpotQA, distractor setting.
    #[serde(rename = "hotpotqa")]
    HotpotQa,
    /// MuSiQue, answerable subset.
    #[serde(rename = "musique")]
    Musique,
    /// 2WikiMultihopQA.
    #[serde(rename = "2wiki")]
    TwoWiki,
}

impl DatasetKind {
    /// Every dataset.
    pub const ALL: [DatasetKind; 3] = [
        DatasetKind::HotpotQa,
        DatasetKind::Musique,
        DatasetKind::TwoWiki,
    ];

    /// The dataset's short name (`hotpotqa`, `musique`, `2wiki`).
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::HotpotQa => "hotpotqa",
            DatasetKind::Musique => "musique",
            DatasetKind::TwoWiki => "2wiki",
        }
    }

    /// Parses a name (case-insensitive; `hotpot`, `2wikimultihopqa`, `wiki2` also accepted).
    pub fn parse(s: &str) -> Option<DatasetKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hotpotqa" | "hotpot" => Some(DatasetKind::HotpotQa),
            "musique" => Some(DatasetKind::Musique),
            "2wiki" | "2wikimultihopqa" | "wiki2" | "2wikimqa" => Some(DatasetKind::TwoWiki),
            _ => None,
        }
    }

    /// Detects the dataset from a record's fields.
    pub fn detect(record: &Value) -> Option<DatasetKind> {
        let obj = record.as_object()?;
        if obj.contains_key("paragraphs") {
            Some(DatasetKind::Musique)
        } else if obj.contains_key("context") && obj.contains_key("evidences") {
            Some(DatasetKind::TwoWiki)
        } else if obj.contains_key("context") {
            Some(DatasetKind::HotpotQa)
        } else {
            None
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One paragraph of a question's context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paragraph {
    /// The paragraph's title (a Wikipedia page title).
    pub title: String,
    /// Its sentences, trimmed (MuSiQue: the whole paragraph as one sentence).
    pub sentences: Vec<String>,
}

impl Paragraph {
    /// The paragraph's text: its sentences joined by single spaces.
    pub fn text(&self) -> String {
        self.sentences.join(" ")
    }
}

/// A question in the common form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The dataset's id of the question.
    pub id: String,
    /// The question.
    pub question: String,
    /// The gold answer.
    pub answer: String,
    /// The context paragraphs, in the dataset's order.
    pub paragraphs: Vec<Paragraph>,
    /// Indexes (into `paragraphs`) of the supporting paragraphs, ascending.
    pub gold: Vec<usize>,
    /// Supporting sentences as (paragraph index, sentence index), ascending; empty when the
    /// dataset has no sentence labels (MuSiQue).
    pub gold_sentences: Vec<(usize, usize)>,
}

/// A loaded dataset file.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Which dataset.
    pub kind: DatasetKind,
    /// The file it was read from.
    pub path: PathBuf,
    /// Its questions, in file order.
    pub questions: Vec<Question>,
}

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line (or the whole array) is not valid JSON.
    #[error("{location}: invalid JSON: {source}")]
    Json {
        /// `file:line` (or the file, for an array).
        location: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A required field is missing.
    #[error("{location}: missing field `{field}`")]
    MissingField {
        /// `file:line` or `file[element]`.
        location: String,
        /// The field's path within the record (e.g. `context[3][1]`).
        field: String,
    },
    /// A field has the wrong type.
    #[error("{location}: field `{field}` should be {expected}")]
    WrongType {
        /// `file:line` or `file[element]`.
        location: String,
        /// The field's path within the record.
        field: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The record matches none of the supported schemas.
    #[error(
        "{location}: unknown schema (expected HotpotQA or 2Wiki `context`, or MuSiQue `paragraphs`)"
    )]
    UnknownSchema {
        /// `file:line` or `file[element]`.
        location: String,
    },
}

/// Loads a dataset file (JSON array or JSON lines), detecting the dataset unless `kind` is given.
pub fn load(path: impl AsRef<Path>, kind: Option<DatasetKind>) -> Result<Dataset, DatasetError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let (kind, questions) = parse_str(&text, &path.display().to_string(), kind)?;
    Ok(Dataset {
        kind,
        path: path.to_owned(),
        questions,
    })
}

/// Parses a dataset from text (`source` names it in errors). With no records and no `kind`,
/// the kind defaults to HotpotQA.
pub fn parse_str(
    text: &str,
    source: &str,
    kind: Option<DatasetKind>,
) -> Result<(DatasetKind, Vec<Question>), DatasetError> {
    let mut records: Vec<(String, Value)> = Vec::new();
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> =
            serde_json::from_str(text).map_err(|source_err| DatasetError::Json {
                location: source.to_owned(),
                source: source_err,
            })?;
        for (i, v) in values.into_iter().enumerate() {
            records.push((format!("{source}[{i}]"), v));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let location = format!("{source}:{}", i + 1);
            let v: Value = serde_json::from_str(line).map_err(|e| DatasetError::Json {
                location: location.clone(),
                source: e,
            })?;
            records.push((location, v));
        }
    }
    let kind = match kind {
        Some(k) => k,
        None => match records.first() {
            None => DatasetKind::HotpotQa,
            Some((location, v)) => {
                DatasetKind::detect(v).ok_or_else(|| DatasetError::UnknownSchema {
                    location: location.clone(),
                })?
            }
        },
    };
    let questions = records
        .iter()
        .map(|(location, v)| parse_record(v, kind, location))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kind, questions))
}

/// Parses one record of the given dataset.
pub fn parse_record(
    v: &Value,
    kind: DatasetKind,
    location: &str,
) -> Result<Question, DatasetError> {
    let r = Rec { location };
    if !v.is_object() {
        return Err(r.wrong("(record)", "a JSON object"));
    }
    match kind {
        DatasetKind::HotpotQa | DatasetKind::TwoWiki => {
            let id = r.string(v, "_id")?;
            let question = r.string(v, "question")?;
            let answer = r.string(v, "answer")?;
            let context = r.array(v, "context")?;
            let mut paragraphs = Vec::with_capacity(context.len());
            for (i, p) in context.iter().enumerate() {
                let name = format!("context[{i}]");
                let pair = p
                    .as_array()
                    .ok_or_else(|| r.wrong(&name, "[title, sentences]"))?;
                let title = pair
                    .first()
                    .ok_or_else(|| r.missing(&format!("{name}[0]")))?
                    .as_str()
                    .ok_or_else(|| r.wrong(&format!("{name}[0]"), "a string"))?;
                let sents = pair
                    .get(1)
                    .ok_or_else(|| r.missing(&format!("{name}[1]")))?
                    .as_array()
                    .ok_or_else(|| r.wrong(&format!("{name}[1]"), "an array of strings"))?;
                let sentences = sents
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        s.as_str()
                            .map(|s| s.trim().to_owned())
                            .ok_or_else(|| r.wrong(&format!("{name}[1][{j}]"), "a string"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                paragraphs.push(Paragraph {
                    title: title.to_owned(),
                    sentences,
                });
            }
            if kind == DatasetKind::TwoWiki {
                // Required by the schema (and what tells 2Wiki from HotpotQA).
                r.get(v, "evidences")?;
            }
            let facts = r.array(v, "supporting_facts")?;
            let mut gold = BTreeSet::new();
            let mut gold_sentences = BTreeSet::new();
            for (i, f) in facts.iter().enumerate() {
                let name = format!("supporting_facts[{i}]");
                let pair = f
                    .as_array()
                    .ok_or_else(|| r.wrong(&name, "[title, index]"))?;
                let title = pair
                    .first()
                    .and_then(Value::as_str)
                    .ok_or_else(|| r.wrong(&format!("{name}[0]"), "a string"))?;
                let sent = pair
                    .get(1)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| r.wrong(&format!("{name}[1]"), "a sentence index"))?
                    as usize;
                // A title may appear twice in a context (2Wiki): every copy counts. A fact
                // whose title is not in the context, or whose sentence index is out of range
                // (known HotpotQA label noise), adds nothing it cannot point at.
                for (pi, p) in paragraphs.iter().enumerate() {
                    if p.title == title {
                        gold.insert(pi);
                        if sent < p.sentences.len() {
                            gold_sentences.insert((pi, sent));
                        }
                    }
                }
            }
            Ok(Question {
                id,
                question,
                answer,
                paragraphs,
                gold: gold.into_iter().collect(),
                gold_sentences: gold_sentences.into_iter().collect(),
            })
        }
        DatasetKind::Musique => {
            let id = r.string(v, "id")?;
            let question = r.string(v, "question")?;
            let answer = r.string(v, "answer")?;
            let paras = r.array(v, "paragraphs")?;
            let mut paragraphs = Vec::with_capacity(paras.len());
            let mut gold = Vec::new();
            for (i, p) in paras.iter().enumerate() {
                let name = format!("paragraphs[{i}]");
                if !p.is_object() {
                    return Err(r.wrong(&name, "an object"));
                }
                let title = r.string(p, "title").map_err(|e| r.nest(e, &name))?;
                let text = r
                    .string(p, "paragraph_text")
                    .map_err(|e| r.nest(e, &name))?;
                let supporting = r
                    .get(p, "is_supporting")
                    .map_err(|e| r.nest(e, &name))?
                    .as_bool()
                    .ok_or_else(|| r.wrong(&format!("{name}.is_supporting"), "a boolean"))?;
                if supporting {
                    gold.push(i);
                }
                paragraphs.push(Paragraph {
                    title,
                    sentences: vec![text.trim().to_owned()],
                });
            }
            Ok(Question {
                id,
                question,
                answer,
                paragraphs,
                gold,
                gold_sentences: Vec::new(),
            })
        }
    }
}

/// Field access that reports where a record is broken.
struct Rec<'a> {
    location: &'a str,
}

impl Rec<'_> {
    fn missing(&self, field: &str) -> DatasetError {
        DatasetError::MissingField {
            location: self.location.to_owned(),
            field: field.to_owned(),
        }
    }

    fn wrong(&self, field: &str, expected: &'static str) -> DatasetError {
        DatasetError::WrongType {
            location: self.location.to_owned(),
            field: field.to_owned(),
            expected,
        }
    }

    /// Prefixes the field of an error with its parent's path.
    fn nest(&self, e: DatasetError, parent: &str) -> DatasetError {
        match e {
            DatasetError::MissingField { location, field } => DatasetError::MissingField {
                location,
                field: format!("{parent}.{field}"),
            },
            DatasetError::WrongType {
                location,
                field,
                expected,
            } => DatasetError::WrongType {
                location,
                field: format!("{parent}.{field}"),
                expected,
            },
            other => other,
        }
    }

    fn get<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Value, DatasetError> {
        v.get(field)
            .filter(|x| !x.is_null())
            .ok_or_else(|| self.missing(field))
    }

    fn string(&self, v: &Value, field: &str) -> Result<String, DatasetError> {
        match self.get(v, field)? {
            Value::String(s) => Ok(s.clone()),
            // Some releases store numeric ids or answers.
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(self.wrong(field, "a string")),
        }
    }

    fn array<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Vec<Value>, DatasetError> {
        self.get(v, field)?
            .as_array()
            .ok_or_else(|| self.wrong(field, "an array"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in DatasetKind::ALL {
            assert_eq!(DatasetKind::parse(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        assert_eq!(DatasetKind::parse("nope"), None);
    }
}
