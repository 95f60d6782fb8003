//! Located configuration errors: a file, a line and a column, what is wrong and how to fix it.
//!
//! Every error carries the source line it points at, so [`ConfigErrors`] renders on its own,
//! rustc-style, without re-reading files. Errors are plain data (and serialize to JSON) so the
//! daemon can return them as they are.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One configuration mistake, located in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file as the user named it (`workflows/multihop_qa.toml`), or the origin given to
    /// [`Workflow::parse`](crate::Workflow::parse).
    pub file: String,
    /// 1-based line; 0 when the error has no position (the file cannot be read).
    pub line: usize,
    /// 1-based column, in characters; 0 when the error has no position.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// The line the error points at, without its line break.
    pub source_line: Option<String>,
    /// How many characters of `source_line` to underline, from `column` (at least 1).
    pub span_len: usize,
}

impl ConfigError {
    /// An error without a position in the file (for example: the file cannot be read).
    pub fn unlocated(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: 0,
            column: 0,
            message: message.into(),
            help: None,
            source_line: None,
            span_len: 0,
        }
    }

    /// Adds help text.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether the error points at a position in the file.
    pub fn is_located(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        if !self.is_located() {
            write!(f, "  --> {}", self.file)?;
            if let Some(help) = &self.help {
                write!(f, "\n   = help: {help}")?;
            }
            return Ok(());
        }
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        write!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
        if let Some(line) = &self.source_line {
            // Tabs would shift the carets: show them as single spaces.
            let shown: String = line
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let caret_pad = " ".repeat(self.column.saturating_sub(1));
            let carets = "^".repeat(self.span_len.max(1));
            write!(
                f,
                "\n{pad} |\n{number} | {shown}\n{pad} | {caret_pad}{carets}"
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// Every mistake found in a configuration (one file and the role files it uses), in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// Sorts by file (in order of first appearance), then line and column; drops exact repeats.
    pub(crate) fn sorted(mut self) -> Self {
        let mut files: Vec<String> = Vec::new();
        for e in &self.0 {
            if !files.contains(&e.file) {
                files.push(e.file.clone());
            }
        }
        let rank = |f: &str| files.iter().position(|x| x == f).unwrap_or(usize::MAX);
        self.0
            .sort_by_key(|e| (rank(&e.file), e.line, e.column, e.message.clone()));
        self.0.dedup();
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A configuration text and the name errors show for it.
pub(crate) struct Source<'a> {
    /// The file name shown in errors.
    pub name: String,
    /// The TOML text.
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(name: impl Into<String>, text: &'a str) -> Self {
        Source {
            name: name.into(),
            text,
        }
    }

    /// An error at a byte span of the text.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let text = self.text;
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let source_line = text[line_start..line_end].trim_end_matches('\r').to_owned();
        let span_len = text[start..end.min(line_end)]
            .trim_end_matches('\r')
            .chars()
            .count()
            .max(1);
        ConfigError {
            file: self.name.clone(),
            line,
            column,
            message: message.into(),
            help: None,
            source_line: Some(source_line),
            span_len,
        }
    }

    /// The error for a TOML syntax or deserialization failure.
    pub fn toml_error(&self, err: &toml::de::Error, syntax: bool) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let raw = err.message().trim().to_owned();
        let (message, help) = if syntax {
            (
                format!("invalid TOML: {raw}"),
                Some("see the TOML syntax at https://toml.io/en/v1.0.0".to_owned()),
            )
        } else {
            explain_serde_message(&raw)
        };
        let mut e = self.error(span, message);
        e.help = help;
        e
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Splits serde's messages into what is wrong and how to fix it.
fn explain_serde_message(raw: &str) -> (String, Option<String>) {
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(expected);
        let help = if allowed.is_empty() {
            "this table takes no fields".to_owned()
        } else {
            let mut h = format!("allowed fields: {}", allowed.join(", "));
            if let Some(s) = did_you_mean(field, allowed.iter().map(String::as_str)) {
                h.push_str(&format!(" (did you mean `{s}`?)"));
            }
            h
        };
        return (format!("unknown field `{field}`"), Some(help));
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(expected);
        let mut help = format!("expected one of: {}", allowed.join(", "));
        if let Some(s) = did_you_mean(value, allowed.iter().map(String::as_str)) {
            help.push_str(&format!(" (did you mean `{s}`?)"));
        }
        return (format!("unknown value `{value}`"), Some(help));
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return (
            format!("missing field `{field}`"),
            Some(format!("add `{field} = ...` to this table")),
        );
    }
    if raw.starts_with("invalid type") || raw.starts_with("invalid value") {
        let expected = raw.rsplit_once("expected ").map_or("", |(_, e)| e);
        let help = if expected.starts_with('u') && expected[1..].parse::<u32>().is_ok() {
            "write a whole number, at least 0, without quotes (e.g. `3`)"
        } else if expected.starts_with('i') && expected[1..].parse::<u32>().is_ok() {
            "write a whole number without quotes (e.g. `3`)"
        } else if expected.starts_with('f') {
            "write a number without quotes (e.g. `0.5`)"
        } else if expected.contains("string") {
            "write the value in double quotes (e.g. \"text\")"
        } else if expected.contains("sequence") {
            "write a list (e.g. [\"a\", \"b\"])"
        } else if expected.contains("bool") {
            "write `true` or `false`"
        } else if expected.contains("map") || expected.contains("struct") {
            "write a table (e.g. { key = \"value\" } or a [section])"
        } else {
            "see the JSON Schema (`agentd schema`) for the expected type"
        };
        return (raw.to_owned(), Some(help.to_owned()));
    }
    (raw.to_owned(), None)
}

/// The names between backticks in serde's "expected one of `a`, `b`".
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_l = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(&word_l, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein with adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_spans_in_lines_and_characters() {
        let src = Source::new("w.toml", "[a]\nrole = \"réasonr\"\n");
        let start = src.text.find("\"r").unwrap();
        let e = src.error(start..start + "\"réasonr\"".len(), "unknown role");
        assert_eq!((e.line, e.column, e.span_len), (2, 8, 9));
        let shown = e.to_string();
        assert!(shown.contains(" --> w.toml:2:8"), "{shown}");
        assert!(
            shown.contains("2 | role = \"réasonr\"\n  |        ^^^^^^^^^"),
            "{shown}"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        let roles = ["answerer", "critic", "reasoner"];
        assert_eq!(did_you_mean("reasonr", roles), Some("reasoner"));
        assert_eq!(did_you_mean("Critic", roles), Some("critic"));
        assert_eq!(did_you_mean("writer", roles), None);
        assert_eq!(did_you_mean("gahter", ["gather", "plan"]), Some("gather"));
    }

    #[test]
    fn explains_unknown_fields_with_the_allowed_ones() {
        let (m, h) = explain_serde_message("unknown field `nmae`, expected `name` or `roles`");
        assert_eq!(m, "unknown field `nmae`");
        assert_eq!(
            h.unwrap(),
            "allowed fields: name, roles (did you mean `name`?)"
        );
    }

    #[test]
    fn unlocated_errors_render_without_a_snippet() {
        let e = ConfigError::unlocated("x.toml", "cannot read x.toml: not found")
            .with_help("check the path");
        assert_eq!(
            e.to_string(),
            "error: cannot read x.toml: not found\n  --> x.toml\n   = help: check the path"
        );
    }
}
