//! Memory items: the unit of shared memory that agents read (through the router) and write.
//!
//! A [`NewItem`] is what a writer hands the store; the store assigns the id (UUID v7, so ids sort
//! by creation time), the sequence number, the version (per key), the creation time and the token
//! count, and returns the stored [`MemoryItem`]. Stored items are immutable: a newer item with the
//! same key *supersedes* an older one, and the history is kept.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{MemoryError, Result};

/// Longest namespace, key, role, node, stage, kind or tag name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Identifier of a memory item: a UUID v7 (time-ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub Uuid);

impl ItemId {
    /// A fresh, time-ordered id.
    pub fn new_v7() -> Self {
        ItemId(Uuid::now_v7())
    }

    /// The id's 16 bytes, big-endian (sorts like the id).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ItemId(Uuid::from_bytes(bytes))
    }

    /// The 8-hex-character handle that prompts show and agents cite: the id's last 32 bits.
    /// (A v7 id starts with its timestamp, so items written within a minute share their first
    /// characters; the last ones are random.)
    pub fn short(&self) -> String {
        let b = self.as_bytes();
        format!("{:02x}{:02x}{:02x}{:02x}", b[12], b[13], b[14], b[15])
    }

    /// Whether `handle` (a short handle, a full id, or a prefix of one of at least 9
    /// characters, in any case, with or without brackets) designates this id.
    pub fn matches_handle(&self, handle: &str) -> bool {
        let h = handle.trim().trim_matches(|c| c == '[' || c == ']');
        if h.len() == 8 {
            return h.eq_ignore_ascii_case(&self.short());
        }
        h.len() > 8 && self.to_string().starts_with(&h.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod short_tests {
    use super::ItemId;

    #[test]
    fn short_handles_differ_for_ids_made_together_and_match_back() {
        let a = ItemId::new_v7();
        let b = ItemId::new_v7();
        assert_eq!(a.to_string()[..8], b.to_string()[..8]);
        assert_ne!(a.short(), b.short());
        assert!(a.matches_handle(&a.short()));
        assert!(a.matches_handle(&format!("[{}]", a.short().to_uppercase())));
        assert!(a.matches_handle(&a.to_string()));
        assert!(!a.matches_handle(&b.short()));
        assert!(!a.matches_handle("abc"));
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ItemId {
    type Err = MemoryError;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(ItemId)
            .map_err(|e| MemoryError::invalid("item id", format!("`{s}` is not a UUID: {e}")))
    }
}

/// What an item is. Known kinds have variants; any other lowercase name is a custom kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The task or question a run works on.
    Task,
    /// A plan: steps to take.
    Plan,
    /// A sub-question derived from the task.
    Subquestion,
    /// A piece of evidence selected or extracted from documents.
    Evidence,
    /// A source document (or paragraph) loaded into memory.
    Document,
    /// A fact stated by an agent.
    Fact,
    /// A hypothesis to be checked.
    Hypothesis,
    /// An answer, usually with cited evidence.
    Answer,
    /// A critique of other items.
    Critique,
    /// The result of a tool call.
    ToolResult,
    /// Free text that fits no other kind (e.g. unparseable model output).
    Note,
    /// Any other kind, by name.
    Custom(String),
}

impl Kind {
    /// Every built-in kind, in the order prompts group them.
    pub const BUILTIN: [Kind; 11] = [
        Kind::Task,
        Kind::Plan,
        Kind::Subquestion,
        Kind::Hypothesis,
        Kind::Fact,
        Kind::Evidence,
        Kind::Document,
        Kind::ToolResult,
        Kind::Critique,
        Kind::Answer,
        Kind::Note,
    ];

    /// The kind's position in [`Kind::BUILTIN`], or `None` for a custom kind (a jump, not a
    /// search: hot loops key small tables by it).
    pub fn builtin_index(&self) -> Option<usize> {
        Some(match self {
            Kind::Task => 0,
            Kind::Plan => 1,
            Kind::Subquestion => 2,
            Kind::Hypothesis => 3,
            Kind::Fact => 4,
            Kind::Evidence => 5,
            Kind::Document => 6,
            Kind::ToolResult => 7,
            Kind::Critique => 8,
            Kind::Answer => 9,
            Kind::Note => 10,
            Kind::Custom(_) => return None,
        })
    }

    /// The kind's name as written in TOML, JSON and the index.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Task => "task",
            Kind::Plan => "plan",
            Kind::Subquestion => "subquestion",
            Kind::Evidence => "evidence",
            Kind::Document => "document",
            Kind::Fact => "fact",
            Kind::Hypothesis => "hypothesis",
            Kind::Answer => "answer",
            Kind::Critique => "critique",
            Kind::ToolResult => "tool_result",
            Kind::Note => "note",
            Kind::Custom(name) => name,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = MemoryError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "task" => Kind::Task,
            "plan" => Kind::Plan,
            "subquestion" => Kind::Subquestion,
            "evidence" => Kind::Evidence,
            "document" => Kind::Document,
            "fact" => Kind::Fact,
            "hypothesis" => Kind::Hypothesis,
            "answer" => Kind::Answer,
            "critique" => Kind::Critique,
            "tool_result" => Kind::ToolResult,
            "note" => Kind::Note,
            other => {
                let valid = !other.is_empty()
                    && other.len() <= 64
                    && other.starts_with(|c: char| c.is_ascii_lowercase())
                    && other
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(MemoryError::invalid(
                        "kind",
                        format!(
                            "`{other}` is not a kind name: use lowercase letters, digits and `_`, \
                             starting with a letter (at most 64 bytes)"
                        ),
                    ));
                }
                Kind::Custom(other.to_owned())
            }
        })
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who wrote an item: the role, the workflow node, and the round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Producer {
    /// The producing role's name (e.g. `researcher`), or `user` / `system` for inputs.
    pub role: String,
    /// The workflow node that ran the role.
    pub node: String,
    /// The round the item was written in (0 for inputs).
    pub round: u32,
}

impl Producer {
    /// A producer.
    pub fn new(role: impl Into<String>, node: impl Into<String>, round: u32) -> Self {
        Producer {
            role: role.into(),
            node: node.into(),
            round,
        }
    }
}

/// Which roles may read an item.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readers {
    /// Every role (the default).
    #[default]
    All,
    /// Only the named roles.
    Roles(Vec<String>),
}

impl Readers {
    /// Only the given roles (sorted and deduplicated).
    pub fn roles<I, S>(roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v: Vec<String> = roles.into_iter().map(Into::into).collect();
        v.sort();
        v.dedup();
        Readers::Roles(v)
    }

    /// Whether `role` may read an item with these readers.
    pub fn allows(&self, role: &str) -> bool {
        match self {
            Readers::All => true,
            Readers::Roles(roles) => roles.iter().any(|r| r == role),
        }
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// An item as stored: everything the writer gave plus what the store assigned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryItem {
    /// Time-ordered unique id (assigned by the store).
    pub id: ItemId,
    /// Store-wide write sequence number (assigned by the store; increases with every write).
    pub seq: u64,
    /// The namespace: a run, or a named shared space such as a document collection.
    pub namespace: String,
    /// What the item is.
    pub kind: Kind,
    /// The text agents read.
    pub content: String,
    /// Optional structured data (e.g. cited item ids, a title).
    pub payload: Option<serde_json::Value>,
    /// Who wrote it.
    pub producer: Producer,
    /// The stage it was written in, if any.
    pub stage: Option<String>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// A key; a newer item with the same key in the same namespace supersedes this one.
    pub key: Option<String>,
    /// Version within the key (1 for the first; 1 for items without a key).
    pub version: u32,
    /// The writer's confidence in the item, in `[0, 1]`.
    pub confidence: f32,
    /// When the store accepted it.
    pub created_at: Timestamp,
    /// Tokens of `content` under the store's token counter (cached at write time).
    pub tokens: u32,
    /// The roles allowed to read it.
    pub readers: Readers,
    /// Whether a newer version with the same key exists (computed when read, not stored).
    #[serde(skip)]
    pub superseded: bool,
}

impl MemoryItem {
    /// The item's title, if its payload has a string `title`.
    pub fn title(&self) -> Option<&str> {
        self.payload.as_ref()?.get("title")?.as_str()
    }
}

/// An item to write; the store fills in id, sequence, version, time and token count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// Target namespace.
    pub namespace: String,
    /// What the item is.
    pub kind: Kind,
    /// The text.
    pub content: String,
    /// Optional structured data.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// Who writes it.
    #[serde(default)]
    pub producer: Producer,
    /// The stage it is written in.
    #[serde(default)]
    pub stage: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Supersession key within the namespace.
    #[serde(default)]
    pub key: Option<String>,
    /// Confidence in `[0, 1]` (default 1).
    #[serde(default = "one")]
    pub confidence: f32,
    /// Roles allowed to read it (default: all).
    #[serde(default)]
    pub readers: Readers,
}

fn one() -> f32 {
    1.0
}

impl NewItem {
    /// A new item with default producer (`user`, round 0), confidence 1 and readable by all.
    pub fn new(namespace: impl Into<String>, kind: Kind, content: impl Into<String>) -> Self {
        NewItem {
            namespace: namespace.into(),
            kind,
            content: content.into(),
            payload: None,
            producer: Producer::new("user", "input", 0),
            stage: None,
            tags: Vec::new(),
            key: None,
            confidence: 1.0,
            readers: Readers::All,
        }
    }

    /// Sets the producer.
    pub fn producer(mut self, producer: Producer) -> Self {
        self.producer = producer;
        self
    }

    /// Sets the stage.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the supersession key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the confidence.
    pub fn confidence(mut self, confidence: f32) -> Self {
        self.confidence = confidence;
        self
    }

    /// Sets the readers.
    pub fn readers(mut self, readers: Readers) -> Self {
        self.readers = readers;
        self
    }

    /// Checks every field; the store calls this before writing anything.
    pub fn validate(&self) -> Result<()> {
        check_name("namespace", &self.namespace)?;
        check_name("producer.role", &self.producer.role)?;
        check_name("producer.node", &self.producer.node)?;
        if let Some(stage) = &self.stage {
            check_name("stage", stage)?;
        }
        if let Some(key) = &self.key {
            check_name("key", key)?;
        }
        for tag in &self.tags {
            check_name("tag", tag)?;
        }
        if let Readers::Roles(roles) = &self.readers {
            for role in roles {
                check_name("readers", role)?;
            }
        }
        if let Kind::Custom(name) = &self.kind {
            name.parse::<Kind>()?;
        }
        if !(0.0..=1.0).contains(&self.confidence) {
            return Err(MemoryError::invalid(
                "confidence",
                format!("{} is outside [0, 1]", self.confidence),
            ));
        }
        Ok(())
    }
}

/// Names (namespaces, keys, roles, ...) are non-empty, at most [`MAX_NAME_LEN`] bytes, and free
/// of control characters (the store uses NUL as a separator in its keys).
pub(crate) fn check_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(MemoryError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(MemoryError::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_NAME_LEN}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(MemoryError::invalid(
            field,
            format!("`{}` contains a control character", value.escape_debug()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for (i, kind) in Kind::BUILTIN.into_iter().enumerate() {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), kind);
            assert_eq!(kind.builtin_index(), Some(i));
        }
        assert_eq!(Kind::Custom("summary".into()).builtin_index(), None);
        assert_eq!(
            "summary".parse::<Kind>().unwrap(),
            Kind::Custom("summary".into())
        );
        assert!("Bad Kind".parse::<Kind>().is_err());
        assert!("".parse::<Kind>().is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let item = NewItem::new("", Kind::Fact, "x");
        let err = item.validate().unwrap_err().to_string();
        assert!(err.contains("namespace"), "{err}");
        let item = NewItem::new("ns", Kind::Fact, "x").confidence(1.5);
        assert!(
            item.validate()
                .unwrap_err()
                .to_string()
                .contains("confidence")
        );
        let item = NewItem::new("ns", Kind::Fact, "x").key("a\0b");
        assert!(item.validate().unwrap_err().to_string().contains("key"));
        let item = NewItem::new("ns", Kind::Fact, "x").confidence(f32::NAN);
        assert!(item.validate().is_err());
    }

    #[test]
    fn item_serde_round_trip() {
        let item = MemoryItem {
            id: ItemId::new_v7(),
            seq: 7,
            namespace: "run-1".into(),
            kind: Kind::Custom("summary".into()),
            content: "Paris is the capital of France.".into(),
            payload: Some(serde_json::json!({"title": "Paris", "cites": [1, 2]})),
            producer: Producer::new("researcher", "research", 2),
            stage: Some("gather".into()),
            tags: vec!["geo".into()],
            key: Some("capital".into()),
            version: 3,
            confidence: 0.75,
            created_at: Timestamp(1_700_000_000_000),
            tokens: 8,
            readers: Readers::roles(["answerer", "critic"]),
            superseded: false,
        };
        let json = serde_json::to_string(&item).unwrap();
        let back: MemoryItem = serde_json::from_str(&json).unwrap();
        assert_eq!(back, item);
        assert_eq!(back.title(), Some("Paris"));
    }

    #[test]
    fn readers_allow() {
        assert!(Readers::All.allows("anyone"));
        let r = Readers::roles(["b", "a", "a"]);
        assert_eq!(r, Readers::Roles(vec!["a".into(), "b".into()]));
        assert!(r.allows("a") && !r.allows("c"));
    }
}
