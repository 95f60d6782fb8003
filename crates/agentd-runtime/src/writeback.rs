//! Write-back: an agent's output becomes memory items.
//!
//! - Kinds are checked against the role's `writes`; anything else is written as the role's text
//!   kind (tagged `coerced:<kind>`), so a confused agent cannot pose as another role.
//! - Citations (the 8-hex handles of the rendered context, see `ItemId::short`) are resolved against the items the
//!   agent actually saw; the full ids go into the payload (`cites`), unknown ones into
//!   `unresolved_cites`.
//! - Keys are scoped by role (`<role>/<key>`), so a newer item with the same key supersedes the
//!   role's older one and never another role's. An answer without a key gets `<role>/answer`:
//!   each round's answer supersedes the last.
//! - Near-duplicates (same kind, same normalised text, or embedding cosine above
//!   [`NEAR_DUPLICATE`]) of live items in the run's namespace are not written again: the node's
//!   output refers to the existing item instead, so memory does not bloat across rounds.
//! - Idempotence: every item carries the tag `origin:<node>@<round>`. If items with that tag
//!   exist (a crash after the write, before the checkpoint), they are the node's output and
//!   nothing is written again.

use agentd_memory::{
    Filter, ItemId, Kind, MemoryError, MemoryItem, MemoryStore, NewItem, Page, Producer,
    SearchMode, SearchQuery,
};
use agentd_router::ContextPack;
use agentd_workflow::RoleSpec;
use serde_json::{Value, json};

use crate::output::{AgentOutput, OutputItem};

/// Cosine similarity from which two items of the same kind count as duplicates.
pub const NEAR_DUPLICATE: f32 = 0.97;

/// Where an output is written and who wrote it.
pub struct WriteTarget<'a> {
    /// The run's namespace.
    pub namespace: &'a str,
    /// Node name.
    pub node: &'a str,
    /// The node's role.
    pub role: &'a RoleSpec,
    /// Stage name.
    pub stage: &'a str,
    /// Round.
    pub round: u32,
    /// The context the agent saw (to resolve its citations).
    pub context: &'a ContextPack,
}

/// What a write-back did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteOutcome {
    /// New items.
    pub written: Vec<MemoryItem>,
    /// Existing items the output duplicated.
    pub merged: Vec<ItemId>,
    /// Whether the output had been written before (a resumed node): `written` holds those items.
    pub replayed: bool,
}

impl WriteOutcome {
    /// Every item the node produced: written, then merged into.
    pub fn item_ids(&self) -> Vec<ItemId> {
        self.written
            .iter()
            .map(|i| i.id)
            .chain(self.merged.iter().copied())
            .collect()
    }
}

/// The idempotency tag of a node's output in a round.
pub fn origin_tag(node: &str, round: u32) -> String {
    format!("origin:{node}@{round}")
}

/// Writes `output` to memory (see the module docs). The write is deferred: it is visible at
/// once, and the caller makes it durable (`MemoryStore::make_durable`) before acknowledging it.
pub fn write_back(
    store: &dyn MemoryStore,
    target: &WriteTarget<'_>,
    output: &AgentOutput,
) -> Result<WriteOutcome, MemoryError> {
    let origin = origin_tag(target.node, target.round);
    let previous = store.list(
        &Filter::namespace(target.namespace)
            .tag(origin.clone())
            .include_superseded(true),
        &Page::first(10_000),
    )?;
    if !previous.is_empty() {
        return Ok(WriteOutcome {
            written: previous,
            merged: Vec::new(),
            replayed: true,
        });
    }

    let mut outcome = WriteOutcome::default();
    let mut batch: Vec<NewItem> = Vec::with_capacity(output.items.len());
    let mut seen: Vec<(Kind, String)> = Vec::new();
    for out in &output.items {
        let content = out.content.trim();
        if content.is_empty() {
            continue;
        }
        let (kind, coerced) = resolve_kind(target.role, &out.kind);
        let norm = normalise(content);
        if seen.iter().any(|(k, n)| *k == kind && *n == norm) {
            continue;
        }
        if let Some(existing) = find_duplicate(store, target.namespace, &kind, content, &norm)? {
            if !outcome.merged.contains(&existing) {
                outcome.merged.push(existing);
            }
            continue;
        }
        seen.push((kind.clone(), norm));
        batch.push(new_item(target, out, kind, coerced, content, &origin));
    }
    if !batch.is_empty() {
        // Deferred: the runtime makes the write durable alongside the node's checkpoint.
        outcome.written = store.put_batch_deferred(batch)?;
    }
    Ok(outcome)
}

fn resolve_kind(role: &RoleSpec, name: &str) -> (Kind, Option<String>) {
    match name.parse::<Kind>() {
        Ok(kind) if role.writes.contains(&kind) => (kind, None),
        _ => (role.output.text_kind.clone(), Some(name.to_owned())),
    }
}

fn new_item(
    target: &WriteTarget<'_>,
    out: &OutputItem,
    kind: Kind,
    coerced: Option<String>,
    content: &str,
    origin: &str,
) -> NewItem {
    let (cites, unresolved) = resolve_cites(target.context, &out.cites);
    let mut payload = serde_json::Map::new();
    if !cites.is_empty() {
        payload.insert(
            "cites".into(),
            Value::Array(cites.iter().map(|id| json!(id.to_string())).collect()),
        );
    }
    if !unresolved.is_empty() {
        payload.insert("unresolved_cites".into(), json!(unresolved));
    }
    if let Some(extra) = &out.payload {
        payload.insert("extra".into(), extra.clone());
    }
    let key = match (&out.key, &kind) {
        (Some(k), _) if !k.trim().is_empty() => Some(format!("{}/{}", target.role.name, k.trim())),
        (_, Kind::Answer) => Some(format!("{}/answer", target.role.name)),
        _ => None,
    };
    let mut item = NewItem::new(target.namespace, kind, content)
        .producer(Producer::new(
            target.role.name.clone(),
            target.node,
            target.round,
        ))
        .stage(target.stage)
        .tag(origin)
        .confidence(out.confidence.unwrap_or(0.5).clamp(0.0, 1.0))
        .readers(target.role.readers.clone());
    if let Some(original) = coerced {
        item = item.tag(format!("coerced:{original}"));
    }
    if let Some(key) = key {
        item = item.key(key);
    }
    if !payload.is_empty() {
        item = item.payload(Value::Object(payload));
    }
    item
}

/// Resolves cited handles against the items of the context.
fn resolve_cites(context: &ContextPack, cites: &[String]) -> (Vec<ItemId>, Vec<String>) {
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    for cite in cites {
        let hit = context
            .items
            .iter()
            .find(|p| p.item.id.matches_handle(cite));
        match hit {
            Some(p) if !found.contains(&p.item.id) => found.push(p.item.id),
            Some(_) => {}
            None => unresolved.push(cite.clone()),
        }
    }
    (found, unresolved)
}

fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if !word.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(word.chars().flat_map(char::to_lowercase));
        }
    }
    out
}

fn find_duplicate(
    store: &dyn MemoryStore,
    namespace: &str,
    kind: &Kind,
    content: &str,
    norm: &str,
) -> Result<Option<ItemId>, MemoryError> {
    let filter = Filter::namespace(namespace).kinds([kind.clone()]);
    let hits = store.search(&SearchQuery::new(content, SearchMode::Hybrid), &filter, 3)?;
    Ok(hits
        .into_iter()
        .find(|h| {
            h.cosine.is_some_and(|c| c >= NEAR_DUPLICATE) || normalise(&h.item.content) == norm
        })
        .map(|h| h.item.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_ignores_case_and_punctuation() {
        assert_eq!(normalise("Paris, France!"), "paris france");
        assert_eq!(normalise("  paris   FRANCE "), "paris france");
    }
}
