//! Roles: named agent profiles, from `agents/<name>.toml` or inline `[roles.<name>]` tables.

use std::path::{Path, PathBuf};

use agentd_memory::{Kind, Readers};
use agentd_router::RoleProfile;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::check::{Checker, read_file};
use crate::error::{ConfigErrors, Source};
use crate::raw::RoleFile;
use crate::template::{DEFAULT_TEMPLATE, PROMPT_PLACEHOLDERS, TemplateVars, render_template};

/// A checked role: what the router needs ([`RoleProfile`]) and what the runtime needs to call
/// the model and write the reply back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoleSpec {
    /// The role's name (the file stem, or the key of an inline role).
    pub name: String,
    /// The role file, `None` for an inline role.
    pub path: Option<PathBuf>,
    /// The role as the router sees it (name, description, keywords, reads, budget, affinity).
    pub profile: RoleProfile,
    /// Kinds the role may write (never empty).
    pub writes: Vec<Kind>,
    /// Roles allowed to read what this role writes.
    pub readers: Readers,
    /// Model settings overriding the workflow's.
    pub model: ModelOverrides,
    /// The prompt.
    pub prompt: PromptSpec,
    /// How the reply becomes memory items.
    pub output: OutputSpec,
}

impl RoleSpec {
    /// Whether the role may write items of `kind`: one of `writes`, or its `text_kind` (the kind
    /// of a text reply, or of a JSON reply that cannot be parsed).
    pub fn may_write(&self, kind: &Kind) -> bool {
        self.writes.contains(kind) || self.output.text_kind == *kind
    }
}

/// A role's model settings; each `Some` overrides the workflow's `[model]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelOverrides {
    /// Model name.
    pub name: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Most tokens of one reply.
    pub max_tokens: Option<u32>,
    /// Ask the server for JSON output.
    pub json: Option<bool>,
}

/// A role's prompt: the system message and the user message template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// The system message (placeholders allowed, as in `template`).
    pub system: String,
    /// The user message template; contains `{{context}}`.
    pub template: String,
}

impl PromptSpec {
    /// The user message: the template with its placeholders substituted.
    pub fn render(&self, vars: &TemplateVars<'_>) -> String {
        render_template(&self.template, vars)
    }

    /// The system message with its placeholders substituted.
    pub fn render_system(&self, vars: &TemplateVars<'_>) -> String {
        render_template(&self.system, vars)
    }
}

/// How a role's reply is turned into memory items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// A JSON object: `{"items": [{"kind", "content", "key"?, "confidence"?, "cites"?}],
    /// "answer": {"content", "confidence"?, "cites"?}}`.
    #[default]
    Json,
    /// The whole reply is one item of the role's `text_kind`.
    Text,
}

/// The output settings of a role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// JSON items or plain text.
    pub format: OutputFormat,
    /// Kind of the item holding raw text: the whole reply (format `text`) or a JSON reply that
    /// cannot be parsed. `note` or one of the role's `writes`.
    pub text_kind: Kind,
}

/// Loads and checks a role file; the role's name is the file stem.
pub fn load_role(path: &Path) -> Result<RoleSpec, ConfigErrors> {
    let shown = path.display().to_string();
    let text = read_file(path, &shown)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut ck = Checker::new(Source::new(shown, &text));
    let role = ck
        .parse::<RoleFile>()
        .and_then(|raw| build_role(&mut ck, raw, &stem, None, Some(path.to_path_buf())));
    match role {
        Some(role) if ck.errors.is_empty() => Ok(role),
        _ => Err(ConfigErrors(ck.errors).sorted()),
    }
}

/// Checks a parsed role. `expected` is the name it must have (file stem or inline key);
/// `inline_key` is the span of the inline key, `None` for a role file. Returns `None` when the
/// role has errors (recorded in the checker).
pub(crate) fn build_role(
    ck: &mut Checker<'_>,
    raw: RoleFile,
    expected: &str,
    inline_key: Option<std::ops::Range<usize>>,
    path: Option<PathBuf>,
) -> Option<RoleSpec> {
    let before = ck.errors.len();
    if let Some(name) = &raw.name
        && name.get_ref() != expected
    {
        let help = match inline_key {
            Some(_) => format!(
                "an inline role's name is its key: write name = \"{expected}\" or remove it"
            ),
            None => format!(
                "a role's name is its file name: write name = \"{expected}\", remove the line, \
                 or rename the file to {}.toml",
                name.get_ref()
            ),
        };
        ck.error(
            name.span(),
            format!("role name `{}` does not match `{expected}`", name.get_ref()),
            help,
        );
    }
    let description = ck.non_empty(&raw.description, "description");
    let reads: Vec<Kind> = raw.reads.iter().filter_map(|k| ck.kind(k)).collect();
    if raw.writes.get_ref().is_empty() {
        ck.error(
            raw.writes.span(),
            "`writes` is empty",
            "list the kinds this role writes, e.g. writes = [\"fact\", \"note\"]",
        );
    }
    let writes: Vec<Kind> = raw
        .writes
        .get_ref()
        .iter()
        .filter_map(|k| ck.kind(k))
        .collect();
    let readers = match &raw.readers {
        None => Readers::All,
        Some(list) if list.get_ref().is_empty() => {
            ck.error(
                list.span(),
                "`readers` is empty: no role could read what this role writes",
                "list the roles that may read it, or remove `readers` to let every role read it",
            );
            Readers::All
        }
        Some(list) => {
            for r in list.get_ref() {
                if r.get_ref().trim().is_empty() {
                    ck.error(
                        r.span(),
                        "empty role name in `readers`",
                        "write a role name",
                    );
                }
            }
            Readers::roles(list.get_ref().iter().map(|r| r.get_ref().clone()))
        }
    };
    let mut profile = RoleProfile::new(expected);
    profile.description = description;
    profile.keywords = raw.keywords.clone();
    profile.reads = reads;
    if let Some(b) = &raw.budget {
        profile.budget = ck.at_least_one(b, "budget");
    }
    for (role, affinity) in &raw.affinity {
        let v = ck.unit(affinity, &format!("affinity for `{}`", role.get_ref()));
        profile.affinity.insert(role.get_ref().clone(), v);
    }
    if let Some(a) = &raw.default_affinity {
        profile.default_affinity = ck.unit(a, "default_affinity");
    }
    let model = ModelOverrides {
        name: raw
            .model
            .name
            .as_ref()
            .map(|n| ck.non_empty(n, "model name")),
        temperature: raw.model.temperature.as_ref().map(|t| ck.temperature(t)),
        max_tokens: raw
            .model
            .max_tokens
            .as_ref()
            .map(|m| ck.at_least_one(m, "max_tokens")),
        json: raw.model.json,
    };
    let (system, template) = match &raw.prompt {
        None => (String::new(), DEFAULT_TEMPLATE.to_owned()),
        Some(prompt) => {
            let prompt = prompt.get_ref();
            let system = ck.non_empty(&prompt.system, "system prompt");
            ck.template(
                &prompt.system,
                "the system prompt",
                PROMPT_PLACEHOLDERS,
                None,
            );
            let template = match &prompt.template {
                Some(t) => {
                    ck.template(
                        t,
                        "the prompt template",
                        PROMPT_PLACEHOLDERS,
                        Some("context"),
                    );
                    t.get_ref().clone()
                }
                None => DEFAULT_TEMPLATE.to_owned(),
            };
            (system, template)
        }
    };
    let format = raw.output.format.as_ref().map_or(OutputFormat::Json, |f| {
        ck.choice(
            f,
            "output format",
            &[("json", OutputFormat::Json), ("text", OutputFormat::Text)],
        )
        .unwrap_or_default()
    });
    let text_kind = match &raw.output.text_kind {
        None => Kind::Note,
        Some(k) => match ck.kind(k) {
            Some(kind) if kind == Kind::Note || writes.contains(&kind) => kind,
            Some(kind) => {
                ck.error(
                    k.span(),
                    format!("text_kind `{kind}` is not one of `writes`"),
                    format!("add \"{kind}\" to `writes`, or use \"note\" (always allowed)"),
                );
                kind
            }
            None => Kind::Note,
        },
    };
    if ck.errors.len() > before {
        return None;
    }
    Some(RoleSpec {
        name: expected.to_owned(),
        path,
        profile,
        writes,
        readers,
        model,
        prompt: PromptSpec { system, template },
        output: OutputSpec { format, text_kind },
    })
}
