//! Shared checks: one [`Checker`] per file collects every located error it finds, so a user
//! sees all the mistakes of a file at once rather than one per attempt.

use std::ops::Range;
use std::path::Path;

use agentd_memory::Kind;
use serde_spanned::Spanned;

use crate::error::{ConfigError, Source, did_you_mean};
use crate::template::placeholders;

/// Collects the errors of one file.
pub(crate) struct Checker<'a> {
    pub src: Source<'a>,
    pub errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(src: Source<'a>) -> Self {
        Checker {
            src,
            errors: Vec::new(),
        }
    }

    /// Records an error at `span`.
    pub fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let help = help.into();
        let mut e = self.src.error(span, message);
        if !help.is_empty() {
            e.help = Some(help);
        }
        self.errors.push(e);
    }

    /// Parses the text as TOML into `T`: syntax errors first (as such), then type errors.
    pub fn parse<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        if let Err(e) = self.src.text.parse::<toml::Table>() {
            let e = self.src.toml_error(&e, true);
            self.errors.push(e);
            return None;
        }
        match toml::from_str::<T>(self.src.text) {
            Ok(v) => Some(v),
            Err(e) => {
                let e = self.src.toml_error(&e, false);
                self.errors.push(e);
                None
            }
        }
    }

    /// An item kind: a built-in kind, or any other lowercase identifier (a custom kind) that is
    /// not so close to a built-in one that it looks like a typo.
    pub fn kind(&mut self, name: &Spanned<String>) -> Option<Kind> {
        let builtin = Kind::BUILTIN.iter().map(Kind::as_str);
        match name.get_ref().parse::<Kind>() {
            Ok(Kind::Custom(custom)) => {
                if let Some(close) = did_you_mean(&custom, builtin) {
                    self.error(
                        name.span(),
                        format!("unknown kind `{custom}`"),
                        format!(
                            "did you mean `{close}`? Custom kinds are allowed, but one this \
                             close to the built-in kind `{close}` is taken for a typo: pick \
                             a more distinct name"
                        ),
                    );
                    None
                } else {
                    Some(Kind::Custom(custom))
                }
            }
            Ok(kind) => Some(kind),
            Err(_) => {
                let mut help = format!(
                    "a kind is a lowercase identifier (letters, digits, `_`): a built-in kind ({}) \
                     or a custom one",
                    builtin.collect::<Vec<_>>().join(", ")
                );
                let lower = name.get_ref().to_lowercase();
                if let Some(close) = did_you_mean(&lower, Kind::BUILTIN.iter().map(Kind::as_str))
                    .or(Kind::BUILTIN.iter().map(Kind::as_str).find(|k| *k == lower))
                {
                    help.push_str(&format!(" (did you mean `{close}`?)"));
                }
                self.error(
                    name.span(),
                    format!("`{}` is not a kind name", name.get_ref()),
                    help,
                );
                None
            }
        }
    }

    /// One of a fixed set of names (an enum written as a string); `None` after an error.
    pub fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let v = value.get_ref();
        if let Some((_, t)) = choices.iter().find(|(name, _)| name == v) {
            return Some(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let mut help = format!("{what}: {}", names.join(", "));
        if let Some(close) = did_you_mean(v, names.iter().copied()) {
            help.push_str(&format!(" (did you mean `{close}`?)"));
        }
        self.error(value.span(), format!("unknown {what} `{v}`"), help);
        None
    }

    /// A value that must lie in `[0, 1]`.
    pub fn unit(&mut self, value: &Spanned<f32>, what: &str) -> f32 {
        let v = *value.get_ref();
        if !(0.0..=1.0).contains(&v) {
            self.error(
                value.span(),
                format!("{what} must be between 0 and 1, not {v}"),
                "write a number from 0.0 to 1.0",
            );
        }
        v
    }

    /// A value that must be finite and above 0.
    pub fn positive(&mut self, value: &Spanned<f32>, what: &str) -> f32 {
        let v = *value.get_ref();
        if !(v.is_finite() && v > 0.0) {
            self.error(
                value.span(),
                format!("{what} must be above 0, not {v}"),
                "write a positive number (e.g. 1.0)",
            );
        }
        v
    }

    /// A sampling temperature, in `[0, 2]`.
    pub fn temperature(&mut self, value: &Spanned<f32>) -> f32 {
        let v = *value.get_ref();
        if !(0.0..=2.0).contains(&v) {
            self.error(
                value.span(),
                format!("temperature must be between 0 and 2, not {v}"),
                "write a number from 0.0 (deterministic) to 2.0",
            );
        }
        v
    }

    /// A count that must be at least 1.
    pub fn at_least_one<T: Copy + Into<u64>>(&mut self, value: &Spanned<T>, what: &str) -> T {
        let v = *value.get_ref();
        if v.into() == 0 {
            self.error(
                value.span(),
                format!("{what} must be at least 1"),
                format!("set {what} to 1 or more, or remove it to use the default"),
            );
        }
        v
    }

    /// A duration in seconds: positive, at most a day (fractions allowed).
    pub fn seconds(&mut self, value: &Spanned<f64>, what: &str) -> std::time::Duration {
        let v = *value.get_ref();
        if !(v > 0.0 && v <= 86_400.0) {
            self.error(
                value.span(),
                format!("{what} must be more than 0 and at most 86400 seconds, got {v}"),
                format!("set {what} to a number of seconds such as 30 or 0.5"),
            );
            return std::time::Duration::from_secs(1);
        }
        std::time::Duration::from_secs_f64(v)
    }

    /// A string that must not be blank.
    pub fn non_empty(&mut self, value: &Spanned<String>, what: &str) -> String {
        if value.get_ref().trim().is_empty() {
            self.error(
                value.span(),
                format!("{what} is empty"),
                format!("write the {what}"),
            );
        }
        value.get_ref().clone()
    }

    /// Checks a template's placeholders against `allowed`; with `require`, that placeholder
    /// must appear.
    pub fn template(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        allowed: &[&str],
        require: Option<&str>,
    ) {
        let text = value.get_ref();
        let found = placeholders(text);
        let mut seen: Vec<&str> = Vec::new();
        for (range, name) in &found {
            let literal = &text[range.clone()];
            let nth = seen.iter().filter(|s| **s == literal).count();
            seen.push(literal);
            if allowed.contains(name) {
                continue;
            }
            let span = locate_in_value(self.src.text, value.span(), literal, nth);
            let mut help = format!(
                "{what} placeholders: {}",
                allowed
                    .iter()
                    .map(|p| format!("{{{{{p}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(close) = did_you_mean(name, allowed.iter().copied()) {
                help.push_str(&format!(" (did you mean `{{{{{close}}}}}`?)"));
            }
            self.error(
                span,
                format!("unknown placeholder `{literal}` in {what}"),
                help,
            );
        }
        if let Some(required) = require
            && !found.iter().any(|(_, n)| *n == required)
        {
            self.error(
                value.span(),
                format!("{what} has no {{{{{required}}}}} placeholder"),
                format!(
                    "add {{{{{required}}}}} where the {required} should go; without it the \
                     role never sees the routed memory"
                ),
            );
        }
    }
}

/// Where `needle` (the `nth` occurrence) sits in the source of a string value; the whole value
/// when escapes make it impossible to find.
fn locate_in_value(text: &str, span: Range<usize>, needle: &str, nth: usize) -> Range<usize> {
    let Some(raw) = text.get(span.clone()) else {
        return span;
    };
    raw.match_indices(needle)
        .nth(nth)
        .map(|(i, _)| span.start + i..span.start + i + needle.len())
        .unwrap_or(span)
}

/// Reads a configuration file; failure is an unlocated error naming the file.
pub(crate) fn read_file(path: &Path, shown: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        let help = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "check the path (relative paths start from the current directory)".to_owned()
            }
            std::io::ErrorKind::InvalidData => "configuration files must be UTF-8 text".to_owned(),
            _ => "check that the file exists and is readable".to_owned(),
        };
        ConfigError::unlocated(shown, format!("cannot read {shown}: {e}")).with_help(help)
    })
}

/// `a/b/../c` → `a/c`, without touching the file system (for paths shown in messages and for
/// finding role files).
pub(crate) fn normalize(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last = out.components().next_back();
                match last {
                    Some(Component::Normal(_)) => {
                        out.pop();
                    }
                    Some(Component::RootDir | Component::Prefix(_)) => {}
                    _ => out.push(".."),
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Whether `name` is an identifier: a letter or `_`, then letters, digits and `_`.
pub(crate) fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_parent_components() {
        assert_eq!(
            normalize(Path::new("workflows/../agents")),
            Path::new("agents")
        );
        assert_eq!(normalize(Path::new("../agents")), Path::new("../agents"));
        assert_eq!(normalize(Path::new("a/./b/../../..")), Path::new(".."));
        assert_eq!(normalize(Path::new("/x/../y")), Path::new("/y"));
        assert_eq!(normalize(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn kinds_accept_custom_names_but_not_near_typos() {
        let text = r#"a = "evidence"
b = "summary"
c = "evidance"
d = "Evidence"
"#;
        let mut ck = Checker::new(Source::new("k.toml", text));
        let t: std::collections::BTreeMap<String, Spanned<String>> = ck.parse().unwrap();
        assert_eq!(ck.kind(&t["a"]), Some(Kind::Evidence));
        assert_eq!(ck.kind(&t["b"]), Some(Kind::Custom("summary".into())));
        assert_eq!(ck.kind(&t["c"]), None);
        assert_eq!(ck.kind(&t["d"]), None);
        assert_eq!(ck.errors.len(), 2);
        assert_eq!((ck.errors[0].line, ck.errors[0].column), (3, 5));
        assert!(
            ck.errors[1]
                .help
                .as_ref()
                .unwrap()
                .contains("did you mean `evidence`")
        );
    }

    #[test]
    fn locates_placeholders_inside_multiline_strings() {
        let text = "t = \"\"\"\nline one\nthen {{tsk}} here\n\"\"\"\n";
        let mut ck = Checker::new(Source::new("t.toml", text));
        let t: std::collections::BTreeMap<String, Spanned<String>> = ck.parse().unwrap();
        ck.template(
            &t["t"],
            "the template",
            &["task", "context"],
            Some("context"),
        );
        assert_eq!(ck.errors.len(), 2);
        assert_eq!((ck.errors[0].line, ck.errors[0].column), (3, 6));
        assert!(
            ck.errors[0]
                .help
                .as_ref()
                .unwrap()
                .contains("did you mean `{{task}}`")
        );
        assert_eq!((ck.errors[1].line, ck.errors[1].column), (1, 5));
        assert!(ck.errors[1].message.contains("no {{context}}"));
    }
}
