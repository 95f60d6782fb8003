//! Tolerant parsing of an agent's reply into structured memory items.
//!
//! Agents are asked to reply with JSON such as
//!
//! ```json
//! {"items": [{"kind": "fact", "content": "...", "key": "optional-stable-key",
//!             "confidence": 0.8, "cites": ["1a2b3c4d"]}],
//!  "answer": {"content": "...", "confidence": 0.8, "cites": ["1a2b3c4d"]}}
//! ```
//!
//! where cites are the 8-hex-character id prefixes shown in the rendered context. Models, small
//! local ones above all, get that wrong in many ways, so [`parse_output`] never fails:
//!
//! 1. A reply that is valid JSON as a whole is read as it is ([`ParseOutcome::Json`]).
//! 2. Otherwise a small hand-written scanner looks for the first JSON object or array in the reply
//!    (after prose, inside a code fence; braces inside strings do not count) and parses it
//!    leniently, repairing what it can: `//`, `/* */` and `#` comments, trailing, extra or
//!    missing commas, missing colons, single and smart quotes, unquoted keys and bare words,
//!    Python literals (`True`, `False`, `None`), malformed numbers and escapes, unescaped quotes
//!    inside strings, and truncation (open strings, arrays and objects are closed, a dangling key
//!    is dropped). Values that follow one another (JSON lines) are merged. Each repair is
//!    described in [`ParseOutcome::Repaired`]. A candidate that yields no usable item is
//!    skipped for the next one.
//! 3. If no JSON yields a usable item, the whole trimmed reply becomes one item of the caller's
//!    default kind ([`ParseOutcome::RawText`]).
//!
//! The JSON is then read with a lenient schema: a bare array of items, a single item object,
//! `{"answer": "text"}` or an answer object, items nested under another key, strings and
//! `{"<kind>": "<content>"}` objects in an `items` list, alternate field names (`text`,
//! `statement`, `claim` for `content`; `type`, `category` for `kind`; `topic` for `key`;
//! `score`, `probability` for `confidence`; `citations`, `evidence`, `sources`, `refs` for
//! `cites`), confidences as strings, percentages (`"80%"`, `80`) or words (`"high"`), cites as
//! strings, numbers or bracketed tokens, and cites written inline as `[1a2b3c4d]` in the content
//! when there is no cites field.
//!
//! The trade-off: lenient parsing keeps the work of a model that almost followed the format,
//! at the risk of silently accepting garbage. So the outcome records how the reply was read:
//! every textual repair is listed (callers log it, and can count how often a model needs them),
//! and a reply with no usable item is kept verbatim rather than guessed at. Schema leniency
//! (aliases and coercions) is not recorded: `Json` means the reply was syntactically clean JSON.
//! Items without content (or with placeholder content such as `"..."`) are dropped, cites that
//! are not hex ids (`"<id>"`) are ignored, and unrecognised fields of an item are kept in its
//! `payload`.
//!
//! Everything is linear in the size of the reply (the scanner tries a bounded number of
//! candidate positions within a bounded amount of work) and deterministic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One item the agent wants to write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputItem {
    /// The item's kind, trimmed and lowercased (`"answer"` for the answer).
    pub kind: String,
    /// The item's text, trimmed; never empty.
    pub content: String,
    /// A stable key the item supersedes older items by, if the agent gave one.
    pub key: Option<String>,
    /// The agent's confidence, clamped to `[0, 1]`.
    pub confidence: Option<f32>,
    /// Cited item id prefixes (hex), lowercased, deduplicated, in order of appearance.
    pub cites: Vec<String>,
    /// The item object's other fields (merged with a `payload` object, if it had one), or
    /// `None` if there were none. Always an object when present.
    pub payload: Option<Value>,
}

/// What a reply parsed into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentOutput {
    /// The items, in reply order; answers come last.
    pub items: Vec<OutputItem>,
    /// How the reply was read.
    pub parsed: ParseOutcome,
}

/// How a reply was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParseOutcome {
    /// The reply was valid JSON as it was.
    Json,
    /// The reply held JSON that needed repairs, each described (`"removed code fence"`,
    /// `"closed 2 brackets"`, `"removed trailing comma"`, ...), in the order found.
    Repaired(Vec<String>),
    /// No usable JSON: the reply became one item of the default kind holding its trimmed text
    /// (no item if it was blank).
    RawText,
}

/// Parses `raw`, an agent's reply. Never panics, never fails: the worst case is the
/// [`ParseOutcome::RawText`] fallback, one item of `default_kind` holding the trimmed reply
/// (zero items if the reply is empty or whitespace). Items of the reply whose kind is missing
/// get `default_kind`; the answer becomes an item of kind `"answer"` after the other items.
#[must_use]
pub fn parse_output(raw: &str, default_kind: &str) -> AgentOutput {
    let default_kind = normalize_kind(default_kind);
    let text = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if text.is_empty() {
        return AgentOutput {
            items: Vec::new(),
            parsed: ParseOutcome::RawText,
        };
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let mut found = Found::default();
        interpret_top(&value, &default_kind, &mut found);
        if !found.is_empty() {
            return AgentOutput {
                items: found.finish(),
                parsed: ParseOutcome::Json,
            };
        }
    } else if let Some((items, repairs)) = parse_repaired(text, &default_kind) {
        return AgentOutput {
            items,
            parsed: ParseOutcome::Repaired(repairs),
        };
    }
    AgentOutput {
        items: vec![text_item(text, &default_kind)],
        parsed: ParseOutcome::RawText,
    }
}

// ---------------------------------------------------------------------------------------------
// Field names.

const CONTENT_KEYS: &[&str] = &["content", "text", "statement", "claim"];
const KIND_KEYS: &[&str] = &["kind", "type", "category"];
const KEY_KEYS: &[&str] = &["key", "topic"];
const CONFIDENCE_KEYS: &[&str] = &["confidence", "score", "probability"];
const CITE_KEYS: &[&str] = &["cites", "citations", "evidence", "sources", "refs"];
const ITEMS_KEYS: &[&str] = &["items", "memories"];
const ANSWER_KEYS: &[&str] = &["answer", "final_answer"];
const PAYLOAD_KEY: &str = "payload";

fn is_known_key(key: &str) -> bool {
    key == PAYLOAD_KEY
        || [
            CONTENT_KEYS,
            KIND_KEYS,
            KEY_KEYS,
            CONFIDENCE_KEYS,
            CITE_KEYS,
            ITEMS_KEYS,
            ANSWER_KEYS,
        ]
        .iter()
        .any(|keys| keys.contains(&key))
}

// ---------------------------------------------------------------------------------------------
// Limits (they keep the parser linear and its recursion shallow).

/// Nesting depth beyond which the lenient parser gives up on a candidate.
const MAX_DEPTH: usize = 64;
/// Nesting depth up to which items are searched for under other keys.
const MAX_SEARCH_DEPTH: usize = 8;
/// Candidate start positions tried in one reply.
const MAX_CANDIDATES: usize = 64;
/// Stray characters skipped inside one candidate before it is given up.
const MAX_STRAYS: usize = 16;

// ---------------------------------------------------------------------------------------------
// Finding and repairing the JSON.

/// Finds the first JSON value in `text` that yields usable items, parsing leniently.
fn parse_repaired(text: &str, default_kind: &str) -> Option<(Vec<OutputItem>, Vec<String>)> {
    let bytes = text.as_bytes();
    let budget = text.len().saturating_mul(8).saturating_add(4096);
    let mut work = 0usize;
    let mut from = 0usize;
    for _ in 0..MAX_CANDIDATES {
        if work > budget || from >= bytes.len() {
            break;
        }
        let start = from + bytes[from..].iter().position(|&b| b == b'{' || b == b'[')?;
        let mut parser = Parser::new(text, start);
        let first = match parser.value(0) {
            Ok(value) => value,
            Err(()) => {
                work += parser.pos - start + 1;
                from = start + 1;
                continue;
            }
        };
        let mut values = vec![first];
        // Further values separated only by whitespace or commas (JSON lines, several objects).
        let mut end = parser.pos;
        loop {
            let mut next = end;
            while next < bytes.len() && (bytes[next].is_ascii_whitespace() || bytes[next] == b',') {
                next += 1;
            }
            if next >= bytes.len() || !(bytes[next] == b'{' || bytes[next] == b'[') {
                break;
            }
            let saved = parser.notes.clone();
            parser.pos = next;
            match parser.value(0) {
                Ok(value) => {
                    values.push(value);
                    end = parser.pos;
                }
                Err(()) => {
                    parser.notes = saved;
                    break;
                }
            }
        }
        work += end - start + 1;
        let mut found = Found::default();
        for value in &values {
            interpret_top(value, default_kind, &mut found);
        }
        if found.is_empty() {
            from = end.max(start + 1);
            continue;
        }
        let mut notes = Notes::default();
        let (fence_before, text_before) = surroundings_before(&text[..start]);
        let (fence_after, text_after) = surroundings_after(&text[end..]);
        if fence_before || fence_after {
            notes.add(Note::CodeFence);
        }
        if text_before {
            notes.add(Note::TextBefore);
        }
        if values.len() > 1 {
            notes.add_n(Note::Merged, values.len());
        }
        notes.extend(&parser.notes);
        if text_after {
            notes.add(Note::TextAfter);
        }
        let mut repairs = notes.render();
        if repairs.is_empty() {
            // The scanner accepted something serde_json did not, without noticing what: still
            // say it was not clean JSON.
            repairs.push("repaired invalid JSON".to_owned());
        }
        return Some((found.finish(), repairs));
    }
    None
}

/// Whether the text before the JSON ends with a code fence opener, and whether other text is
/// left before it.
fn surroundings_before(prefix: &str) -> (bool, bool) {
    let p = prefix.trim_end();
    if let Some(i) = p.rfind("```") {
        let tag = &p[i + 3..];
        if tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.'))
        {
            return (true, !p[..i].trim().is_empty());
        }
    }
    (false, !p.is_empty())
}

/// Whether the text after the JSON starts with a code fence closer, and whether other text is
/// left after it.
fn surroundings_after(suffix: &str) -> (bool, bool) {
    let s = suffix.trim_start();
    match s.strip_prefix("```") {
        Some(rest) => (true, !rest.trim().is_empty()),
        None => (false, !s.is_empty()),
    }
}

/// A repair, as counted by the lenient parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Note {
    CodeFence,
    TextBefore,
    Merged,
    Comment,
    TrailingComma,
    ExtraComma,
    MissingComma,
    MissingColon,
    EqualsSign,
    SingleQuote,
    SmartQuote,
    UnquotedKey,
    BareWord,
    PythonLiteral,
    OtherLiteral,
    MalformedNumber,
    InvalidEscape,
    InnerQuote,
    RawControl,
    Whitespace,
    StrayChar,
    Unterminated,
    DanglingKey,
    MissingBracket,
    ClosedBracket,
    TextAfter,
}

impl Note {
    fn describe(self, n: usize) -> String {
        let (one, many): (&str, &str) = match self {
            Note::CodeFence => ("removed code fence", "removed {} code fences"),
            Note::TextBefore => ("removed text before JSON", "removed text before JSON"),
            Note::Merged => ("merged {} JSON values", "merged {} JSON values"),
            Note::Comment => ("removed comment", "removed {} comments"),
            Note::TrailingComma => ("removed trailing comma", "removed {} trailing commas"),
            Note::ExtraComma => ("removed extra comma", "removed {} extra commas"),
            Note::MissingComma => ("inserted missing comma", "inserted {} missing commas"),
            Note::MissingColon => ("inserted missing colon", "inserted {} missing colons"),
            Note::EqualsSign => ("replaced '=' with ':'", "replaced {} '=' with ':'"),
            Note::SingleQuote => (
                "converted single-quoted string",
                "converted {} single-quoted strings",
            ),
            Note::SmartQuote => (
                "converted smart-quoted string",
                "converted {} smart-quoted strings",
            ),
            Note::UnquotedKey => ("quoted unquoted key", "quoted {} unquoted keys"),
            Note::BareWord => ("quoted bare word", "quoted {} bare words"),
            Note::PythonLiteral => ("converted Python literal", "converted {} Python literals"),
            Note::OtherLiteral => (
                "converted non-JSON literal",
                "converted {} non-JSON literals",
            ),
            Note::MalformedNumber => ("fixed malformed number", "fixed {} malformed numbers"),
            Note::InvalidEscape => ("fixed invalid escape", "fixed {} invalid escapes"),
            Note::InnerQuote => (
                "kept unescaped quote inside string",
                "kept {} unescaped quotes inside strings",
            ),
            Note::RawControl => (
                "kept raw control character in string",
                "kept {} raw control characters in strings",
            ),
            Note::Whitespace => (
                "skipped non-ASCII whitespace",
                "skipped {} non-ASCII whitespace characters",
            ),
            Note::StrayChar => ("skipped stray character", "skipped {} stray characters"),
            Note::Unterminated => (
                "closed unterminated string",
                "closed {} unterminated strings",
            ),
            Note::DanglingKey => (
                "dropped dangling key without value",
                "dropped {} dangling keys without value",
            ),
            Note::MissingBracket => (
                "inserted bracket before mismatched one",
                "inserted {} brackets before mismatched ones",
            ),
            Note::ClosedBracket => ("closed 1 bracket", "closed {} brackets"),
            Note::TextAfter => ("removed text after JSON", "removed text after JSON"),
        };
        let template = if n == 1 { one } else { many };
        template.replace("{}", &n.to_string())
    }
}

/// Repairs with their counts, in order of first occurrence.
#[derive(Clone, Debug, Default)]
struct Notes(Vec<(Note, usize)>);

impl Notes {
    fn add(&mut self, note: Note) {
        self.add_n(note, 1);
    }

    fn add_n(&mut self, note: Note, n: usize) {
        match self.0.iter_mut().find(|(k, _)| *k == note) {
            Some((_, count)) => *count += n,
            None => self.0.push((note, n)),
        }
    }

    fn extend(&mut self, other: &Notes) {
        for &(note, n) in &other.0 {
            self.add_n(note, n);
        }
    }

    fn render(&self) -> Vec<String> {
        self.0.iter().map(|&(note, n)| note.describe(n)).collect()
    }
}

/// The kinds of quotes a string can be delimited by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    Double,
    Single,
    SmartDouble,
    SmartSingle,
}

impl Quote {
    /// Whether `other` can close a string opened by `self`.
    fn closed_by(self, other: Quote) -> bool {
        match self {
            Quote::Double => other == Quote::Double,
            Quote::Single => other == Quote::Single,
            Quote::SmartDouble => matches!(other, Quote::SmartDouble | Quote::Double),
            Quote::SmartSingle => matches!(other, Quote::SmartSingle | Quote::Single),
        }
    }
}

/// A lenient recursive-descent JSON parser over `text`, starting at `pos`. Failure (`Err(())`)
/// means "this is not JSON worth repairing"; the caller tries the next candidate.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    notes: Notes,
    strays: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, pos: usize) -> Self {
        Parser {
            text,
            bytes: text.as_bytes(),
            pos,
            notes: Notes::default(),
            strays: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn byte_at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    /// The character at `self.pos` (which is always on a character boundary between tokens).
    fn char_here(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|s| s.chars().next())
    }

    /// Skips whitespace and comments (`//`, `/* */`, `#`).
    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                b'/' if self.byte_at(self.pos + 1) == Some(b'/') => {
                    self.skip_line();
                    self.notes.add(Note::Comment);
                }
                b'/' if self.byte_at(self.pos + 1) == Some(b'*') => {
                    self.pos = match self.text[self.pos + 2..].find("*/") {
                        Some(i) => self.pos + 2 + i + 2,
                        None => self.bytes.len(),
                    };
                    self.notes.add(Note::Comment);
                }
                b'#' => {
                    self.skip_line();
                    self.notes.add(Note::Comment);
                }
                0x80.. => match self.char_here() {
                    Some(c) if c.is_whitespace() || c == '\u{feff}' => {
                        self.pos += c.len_utf8();
                        self.notes.add(Note::Whitespace);
                    }
                    _ => break,
                },
                _ => break,
            }
        }
    }

    fn skip_line(&mut self) {
        self.pos = match self.bytes[self.pos..].iter().position(|&b| b == b'\n') {
            Some(i) => self.pos + i + 1,
            None => self.bytes.len(),
        };
    }

    /// The quote starting at `i`, and its length in bytes.
    fn quote_at(&self, i: usize) -> Option<(Quote, usize)> {
        match self.byte_at(i)? {
            b'"' => Some((Quote::Double, 1)),
            b'\'' => Some((Quote::Single, 1)),
            0xE2 if self.byte_at(i + 1) == Some(0x80) => match self.byte_at(i + 2)? {
                // “ ” „
                0x9C..=0x9E => Some((Quote::SmartDouble, 3)),
                // ‘ ’
                0x98 | 0x99 => Some((Quote::SmartSingle, 3)),
                _ => None,
            },
            _ => None,
        }
    }

    fn ident_start(&self) -> bool {
        match self.peek() {
            Some(b) if b.is_ascii() => b.is_ascii_alphanumeric() || b == b'_' || b == b'$',
            Some(_) => self.char_here().is_some_and(char::is_alphanumeric),
            None => false,
        }
    }

    fn scalar_start(&self) -> bool {
        self.ident_start() || matches!(self.peek(), Some(b'-' | b'+' | b'.'))
    }

    fn value_start(&self) -> bool {
        matches!(self.peek(), Some(b'{' | b'['))
            || self.quote_at(self.pos).is_some()
            || self.scalar_start()
    }

    /// Skips one stray character, or fails if there were too many.
    fn stray(&mut self) -> Result<(), ()> {
        self.strays += 1;
        if self.strays > MAX_STRAYS {
            return Err(());
        }
        self.notes.add(Note::StrayChar);
        self.pos += self.char_here().map_or(1, char::len_utf8);
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, ()> {
        if depth > MAX_DEPTH {
            return Err(());
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(_) if self.quote_at(self.pos).is_some() => Ok(Value::String(self.string())),
            Some(_) if self.scalar_start() => Ok(self.scalar()),
            _ => Err(()),
        }
    }

    /// After a comma: notes it if it was extra or trailing.
    fn comma(&mut self, after_member: bool) {
        self.pos += 1;
        if !after_member {
            self.notes.add(Note::ExtraComma);
            return;
        }
        self.skip_ws();
        if matches!(self.peek(), Some(b'}' | b']')) {
            self.notes.add(Note::TrailingComma);
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ()> {
        self.pos += 1;
        let mut map = Map::new();
        let mut after_member = false;
        loop {
            self.skip_ws();
            let Some(b) = self.peek() else {
                self.notes.add(Note::ClosedBracket);
                return Ok(Value::Object(map));
            };
            match b {
                b'}' => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                b']' => {
                    // `[{...]`: close this object, let the array take the bracket.
                    self.notes.add(Note::MissingBracket);
                    return Ok(Value::Object(map));
                }
                b',' => {
                    self.comma(after_member);
                    after_member = false;
                    continue;
                }
                _ => {}
            }
            let quoted = self.quote_at(self.pos).is_some();
            if !quoted && !self.ident_start() {
                self.stray()?;
                continue;
            }
            if after_member {
                self.notes.add(Note::MissingComma);
            }
            let key = if quoted {
                self.string()
            } else {
                self.notes.add(Note::UnquotedKey);
                self.ident()
            };
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.pos += 1,
                Some(b'=') => {
                    self.pos += 1;
                    self.notes.add(Note::EqualsSign);
                }
                None | Some(b'}' | b']' | b',') => {
                    self.notes.add(Note::DanglingKey);
                    after_member = true;
                    continue;
                }
                // An unquoted word not followed by a colon is prose, not a key.
                Some(_) if !quoted => return Err(()),
                Some(_) => self.notes.add(Note::MissingColon),
            }
            self.skip_ws();
            if matches!(self.peek(), None | Some(b'}' | b']' | b',')) {
                self.notes.add(Note::DanglingKey);
                after_member = true;
                continue;
            }
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            after_member = true;
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ()> {
        self.pos += 1;
        let mut list = Vec::new();
        let mut after_element = false;
        loop {
            self.skip_ws();
            let Some(b) = self.peek() else {
                self.notes.add(Note::ClosedBracket);
                return Ok(Value::Array(list));
            };
            match b {
                b']' => {
                    self.pos += 1;
                    return Ok(Value::Array(list));
                }
                b'}' => {
                    // `{"a": [1}`: close this array, let the object take the brace.
                    self.notes.add(Note::MissingBracket);
                    return Ok(Value::Array(list));
                }
                b',' => {
                    self.comma(after_element);
                    after_element = false;
                    continue;
                }
                _ => {}
            }
            if !self.value_start() {
                self.stray()?;
                continue;
            }
            if after_element {
                self.notes.add(Note::MissingComma);
            }
            list.push(self.value(depth + 1)?);
            after_element = true;
        }
    }

    /// An unquoted key: letters, digits and `_ $ - .`.
    fn ident(&mut self) -> String {
        let start = self.pos;
        while let Some(c) = self.char_here() {
            if c.is_alphanumeric() || matches!(c, '_' | '$' | '-' | '.') {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        self.text[start..self.pos].to_owned()
    }

    /// Whether a quote ending just before `i` closes its string: it does if what follows (after
    /// spaces) ends a line or the input, is `, : } ]` or a comment, or is another short quoted
    /// string followed by one of `: , } ]` (a missing comma or colon). Otherwise the quote is
    /// taken as part of the text. Valid JSON always satisfies this.
    fn closes_at(&self, start: usize) -> bool {
        let mut i = start;
        while matches!(self.byte_at(i), Some(b' ' | b'\t' | b'\r')) {
            i += 1;
        }
        match self.byte_at(i) {
            None | Some(b'\n' | b',' | b':' | b'}' | b']') => true,
            Some(b'/') => matches!(self.byte_at(i + 1), Some(b'/' | b'*')),
            Some(_) => i > start && self.short_string_then_separator(i),
        }
    }

    /// Whether a quoted string of at most 64 bytes starts at `i` and is followed by one of
    /// `: , } ]` or a line end (the lookahead is bounded to keep the scanner linear).
    fn short_string_then_separator(&self, i: usize) -> bool {
        let Some((open, len)) = self.quote_at(i) else {
            return false;
        };
        let limit = (i + len + 64).min(self.bytes.len());
        let mut j = i + len;
        while j < limit {
            match self.bytes[j] {
                b'\\' | b'\n' => return false,
                _ => {}
            }
            if let Some((quote, qlen)) = self.quote_at(j)
                && open.closed_by(quote)
            {
                let mut k = j + qlen;
                while matches!(self.byte_at(k), Some(b' ' | b'\t' | b'\r')) {
                    k += 1;
                }
                return matches!(
                    self.byte_at(k),
                    None | Some(b'\n' | b':' | b',' | b'}' | b']')
                );
            }
            j += 1;
        }
        false
    }

    /// A quoted string (the opening quote is at `self.pos`). Unterminated strings are closed
    /// at the end of the input.
    fn string(&mut self) -> String {
        let Some((open, len)) = self.quote_at(self.pos) else {
            return String::new();
        };
        match open {
            Quote::Double => {}
            Quote::Single => self.notes.add(Note::SingleQuote),
            Quote::SmartDouble | Quote::SmartSingle => self.notes.add(Note::SmartQuote),
        }
        self.pos += len;
        let mut out = String::new();
        let mut seg = self.pos;
        loop {
            let Some(b) = self.peek() else {
                out.push_str(&self.text[seg..]);
                self.notes.add(Note::Unterminated);
                return out;
            };
            match b {
                b'\\' => {
                    out.push_str(&self.text[seg..self.pos]);
                    self.pos += 1;
                    self.escape(&mut out);
                    seg = self.pos;
                }
                b'"' | b'\'' | 0xE2 => match self.quote_at(self.pos) {
                    Some((quote, qlen)) if open.closed_by(quote) => {
                        if self.closes_at(self.pos + qlen) {
                            out.push_str(&self.text[seg..self.pos]);
                            self.pos += qlen;
                            return out;
                        }
                        if open == Quote::Double {
                            self.notes.add(Note::InnerQuote);
                        }
                        self.pos += qlen;
                    }
                    _ => self.pos += 1,
                },
                0..0x20 => {
                    self.notes.add(Note::RawControl);
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn hex4(&self, i: usize) -> Option<u32> {
        let digits = self.bytes.get(i..i + 4)?;
        let s = std::str::from_utf8(digits).ok()?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    }

    /// An escape sequence (`self.pos` is just after the backslash).
    fn escape(&mut self, out: &mut String) {
        let Some(b) = self.peek() else {
            return;
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => match self.hex4(self.pos) {
                Some(code) => {
                    self.pos += 4;
                    self.unicode_escape(code)
                }
                None => {
                    self.notes.add(Note::InvalidEscape);
                    out.push('\\');
                    'u'
                }
            },
            b'\'' => {
                self.notes.add(Note::InvalidEscape);
                '\''
            }
            _ => {
                // Unknown escape: keep the backslash, read the character as usual.
                self.notes.add(Note::InvalidEscape);
                self.pos -= 1;
                '\\'
            }
        };
        out.push(c);
    }

    /// The character of a `\uXXXX` escape, pairing surrogates (`self.pos` is after the digits).
    fn unicode_escape(&mut self, code: u32) -> char {
        if (0xD800..0xDC00).contains(&code)
            && self.byte_at(self.pos) == Some(b'\\')
            && self.byte_at(self.pos + 1) == Some(b'u')
            && let Some(low) = self.hex4(self.pos + 2)
            && (0xDC00..0xE000).contains(&low)
        {
            self.pos += 6;
            let combined = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
            return char::from_u32(combined).unwrap_or('\u{fffd}');
        }
        char::from_u32(code).unwrap_or_else(|| {
            self.notes.add(Note::InvalidEscape);
            '\u{fffd}'
        })
    }

    /// A number, literal or bare word: up to the end of the line or the next `, } ]` (or a
    /// comment). A number or literal followed by a quote or bracket ends at its own end (the
    /// comma after it is missing).
    fn scalar(&mut self) -> Value {
        let start = self.pos;
        let mut end = start;
        while let Some(b) = self.byte_at(end) {
            let after_space = end > start && matches!(self.bytes[end - 1], b' ' | b'\t');
            match b {
                b',' | b'}' | b']' | b'\n' | b'\r' => break,
                b'/' if after_space && matches!(self.byte_at(end + 1), Some(b'/' | b'*')) => break,
                b'#' if after_space => break,
                _ => end += 1,
            }
        }
        let token = self.text[start..end].trim_end();
        if let Some(space) = token.find([' ', '\t']) {
            let word = &token[..space];
            let rest = token[space..].trim_start();
            let rest_start = start + (token.len() - rest.len());
            if classify_strict(word).is_some()
                && (self.quote_at(rest_start).is_some() || rest.starts_with(['{', '[']))
            {
                self.pos = start + space;
                return self.classify(word);
            }
        }
        self.pos = end;
        self.classify(token)
    }

    fn classify(&mut self, token: &str) -> Value {
        if let Some(value) = classify_strict(token) {
            return value;
        }
        let literal = match token {
            "True" => Some((Value::Bool(true), Note::PythonLiteral)),
            "False" => Some((Value::Bool(false), Note::PythonLiteral)),
            "None" => Some((Value::Null, Note::PythonLiteral)),
            _ => match token.to_ascii_lowercase().as_str() {
                "true" => Some((Value::Bool(true), Note::OtherLiteral)),
                "false" => Some((Value::Bool(false), Note::OtherLiteral)),
                "null" | "none" | "nil" | "undefined" | "nan" | "-nan" | "infinity"
                | "-infinity" | "+infinity" | "inf" | "-inf" | "+inf" => {
                    Some((Value::Null, Note::OtherLiteral))
                }
                _ => None,
            },
        };
        if let Some((value, note)) = literal {
            self.notes.add(note);
            return value;
        }
        if let Some(number) = fix_number(token) {
            self.notes.add(Note::MalformedNumber);
            return number;
        }
        self.notes.add(Note::BareWord);
        Value::String(token.to_owned())
    }
}

/// `token` as a JSON number or literal, if it is one exactly.
fn classify_strict(token: &str) -> Option<Value> {
    match token {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        "null" => Some(Value::Null),
        _ if token.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
            match serde_json::from_str::<Value>(token) {
                Ok(number @ Value::Number(_)) => Some(number),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Fixes `+1`, `.5`, `-.5`, `5.` into JSON numbers (leading zeros are left alone: `0123` may be
/// an id).
fn fix_number(token: &str) -> Option<Value> {
    let (sign, body) = match token.as_bytes().first()? {
        b'+' => ("", &token[1..]),
        b'-' => ("-", &token[1..]),
        _ => ("", token),
    };
    if body.is_empty() || !body.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let lead = if body.starts_with('.') { "0" } else { "" };
    let trail = if body.ends_with('.') { "0" } else { "" };
    let fixed = format!("{sign}{lead}{body}{trail}");
    if fixed == token {
        return None;
    }
    match serde_json::from_str::<Value>(&fixed) {
        Ok(number @ Value::Number(_)) => Some(number),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading items out of the JSON.

/// Items found so far; answers go after the items.
#[derive(Default)]
struct Found {
    items: Vec<OutputItem>,
    answers: Vec<OutputItem>,
}

impl Found {
    fn len(&self) -> usize {
        self.items.len() + self.answers.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(mut self) -> Vec<OutputItem> {
        self.items.append(&mut self.answers);
        self.items
    }
}

fn interpret_top(value: &Value, default_kind: &str, found: &mut Found) {
    match value {
        // A reply that is a JSON string holding the JSON.
        Value::String(s) => {
            if let Some(inner) = embedded_json(s) {
                interpret_value(&inner, default_kind, 1, found);
            }
        }
        _ => {
            interpret_value(value, default_kind, 0, found);
        }
    }
}

/// A string that is itself JSON (`"items": "[{...}]"`).
fn embedded_json(s: &str) -> Option<Value> {
    let t = s.trim();
    let wrapped =
        (t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']'));
    if wrapped {
        serde_json::from_str(t).ok()
    } else {
        None
    }
}

fn interpret_value(value: &Value, default_kind: &str, depth: usize, found: &mut Found) -> bool {
    if depth > MAX_SEARCH_DEPTH {
        return false;
    }
    match value {
        Value::Object(map) => interpret_object(map, default_kind, depth, found),
        Value::Array(list) => {
            let before = found.len();
            for element in list {
                if let Value::Object(map) = element {
                    interpret_object(map, default_kind, depth + 1, found);
                }
            }
            found.len() > before
        }
        _ => false,
    }
}

fn first_present<'m>(map: &'m Map<String, Value>, keys: &[&str]) -> Option<&'m Value> {
    keys.iter()
        .filter_map(|k| map.get(*k))
        .find(|v| !is_blank(v))
}

fn interpret_object(
    map: &Map<String, Value>,
    default_kind: &str,
    depth: usize,
    found: &mut Found,
) -> bool {
    let before = found.len();
    if let Some(items) = first_present(map, ITEMS_KEYS) {
        items_from(items, default_kind, depth, found);
    }
    if let Some(answer) = first_present(map, ANSWER_KEYS) {
        answer_from(answer, map, found);
    }
    if found.len() > before {
        return true;
    }
    if let Some(item) = item_from_object(map, default_kind, false) {
        found.items.push(item);
        return true;
    }
    if depth >= MAX_SEARCH_DEPTH {
        return false;
    }
    map.iter()
        .filter(|(k, _)| !ITEMS_KEYS.contains(&k.as_str()) && !ANSWER_KEYS.contains(&k.as_str()))
        .any(|(_, v)| {
            matches!(v, Value::Object(_) | Value::Array(_))
                && interpret_value(v, default_kind, depth + 1, found)
        })
}

/// The value of an `items` field.
fn items_from(value: &Value, default_kind: &str, depth: usize, found: &mut Found) {
    match value {
        Value::Array(list) => {
            for element in list {
                let item = match element {
                    Value::Object(map) => item_from_object(map, default_kind, true),
                    Value::String(s) => item_from_string(s, default_kind),
                    _ => None,
                };
                found.items.extend(item);
            }
        }
        Value::Object(map) => match item_from_object(map, default_kind, true) {
            Some(item) => found.items.push(item),
            None => {
                interpret_object(map, default_kind, depth + 1, found);
            }
        },
        Value::String(s) => match embedded_json(s) {
            Some(inner) => {
                if depth < MAX_SEARCH_DEPTH {
                    items_from(&inner, default_kind, depth + 1, found);
                }
            }
            None => found.items.extend(item_from_string(s, default_kind)),
        },
        _ => {}
    }
}

/// The value of an `answer` field of `parent`.
fn answer_from(value: &Value, parent: &Map<String, Value>, found: &mut Found) {
    match value {
        Value::Object(map) => {
            if let Some(mut item) = item_from_object(map, "answer", false) {
                item.kind = "answer".to_owned();
                found.answers.push(item);
            }
        }
        Value::String(_) | Value::Number(_) => {
            let Some(content) = content_text(value) else {
                return;
            };
            // `{"answer": "...", "confidence": 0.8, "cites": [...]}`: the siblings describe it.
            let confidence = CONFIDENCE_KEYS
                .iter()
                .filter_map(|k| parent.get(*k))
                .find_map(confidence_of);
            let cites = match first_present(parent, CITE_KEYS) {
                Some(cites) => parse_cites(cites),
                None => harvest_cites(&content),
            };
            found.answers.push(OutputItem {
                kind: "answer".to_owned(),
                content,
                key: None,
                confidence,
                cites,
                payload: None,
            });
        }
        _ => {}
    }
}

/// An item of `default_kind` holding `text` (raw text, or a string in an `items` list).
fn text_item(text: &str, default_kind: &str) -> OutputItem {
    let content = text.trim().to_owned();
    OutputItem {
        kind: default_kind.to_owned(),
        cites: harvest_cites(&content),
        content,
        key: None,
        confidence: None,
        payload: None,
    }
}

fn item_from_string(s: &str, default_kind: &str) -> Option<OutputItem> {
    has_text(s).then(|| text_item(s, default_kind))
}

/// Null, or a string of whitespace only.
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// Whether `s` has any letter or digit (`"..."` copied from the prompt has none).
fn has_text(s: &str) -> bool {
    s.chars().any(char::is_alphanumeric)
}

/// A string or number as trimmed, non-empty text.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim()).filter(|t| !t.is_empty()).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Text usable as an item's content.
fn content_text(value: &Value) -> Option<String> {
    text_of(value).filter(|t| has_text(t))
}

fn normalize_kind(kind: &str) -> String {
    kind.trim().to_lowercase()
}

/// A plausible kind name (for `{"fact": "..."}` items): ASCII letters, `_`, `-`.
fn is_kind_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-')
}

/// The item an object describes, if it has content. With `kind_key`, an object with no
/// content field but exactly one other string field reads as `{"<kind>": "<content>"}`.
fn item_from_object(
    map: &Map<String, Value>,
    default_kind: &str,
    kind_key: bool,
) -> Option<OutputItem> {
    let mut used: Vec<&str> = Vec::new();
    let mut content = None;
    for key in CONTENT_KEYS {
        if let Some(text) = map.get(*key).and_then(content_text) {
            content = Some(text);
            used.push(key);
            break;
        }
    }
    let mut kind = None;
    if content.is_none() && kind_key {
        let mut others = map.iter().filter(|(k, v)| !is_known_key(k) && !is_blank(v));
        if let (Some((k, v)), None) = (others.next(), others.next())
            && is_kind_name(k)
            && let Some(text) = content_text(v)
        {
            content = Some(text);
            kind = Some(normalize_kind(k));
            used.push(k.as_str());
        }
    }
    let content = content?;
    let kind = kind
        .or_else(|| {
            take_first(map, KIND_KEYS, &mut used, |v| {
                text_of(v).map(|t| normalize_kind(&t))
            })
        })
        .unwrap_or_else(|| default_kind.to_owned());
    let key = take_first(map, KEY_KEYS, &mut used, text_of);
    let confidence = take_first(map, CONFIDENCE_KEYS, &mut used, confidence_of);
    let cites = match CITE_KEYS
        .iter()
        .find(|k| map.get(**k).is_some_and(|v| !is_blank(v)))
    {
        Some(key) => {
            used.push(key);
            parse_cites(&map[*key])
        }
        None => harvest_cites(&content),
    };

    let mut extra = Map::new();
    let mut explicit = None;
    for (k, v) in map {
        if used.contains(&k.as_str()) || (is_blank(v) && is_known_key(k)) {
            continue;
        }
        if k == PAYLOAD_KEY
            && let Value::Object(payload) = v
        {
            explicit = Some(payload);
            continue;
        }
        extra.insert(k.clone(), v.clone());
    }
    if let Some(payload) = explicit {
        for (k, v) in payload {
            extra.insert(k.clone(), v.clone());
        }
    }
    Some(OutputItem {
        kind,
        content,
        key,
        confidence,
        cites,
        payload: (!extra.is_empty()).then_some(Value::Object(extra)),
    })
}

/// The first of `keys` whose value `read` accepts; marks it used.
fn take_first<'k, T>(
    map: &Map<String, Value>,
    keys: &[&'k str],
    used: &mut Vec<&'k str>,
    read: impl Fn(&Value) -> Option<T>,
) -> Option<T> {
    for key in keys {
        if let Some(value) = map.get(*key).and_then(&read) {
            used.push(key);
            return Some(value);
        }
    }
    None
}

/// A confidence: a number (above 1 read as a percentage), a numeric string, `"80%"`, or
/// `"high"`/`"medium"`/`"low"` (0.9/0.6/0.3). Clamped to `[0, 1]`.
fn confidence_of(value: &Value) -> Option<f32> {
    match value {
        Value::Number(n) => clamp_confidence(n.as_f64()?, false),
        Value::String(s) => confidence_text(s),
        _ => None,
    }
}

fn confidence_text(s: &str) -> Option<f32> {
    let t = s.trim().to_lowercase();
    let word = match t.as_str() {
        "very high" | "very_high" | "certain" => Some(0.95),
        "high" => Some(0.9),
        "medium" | "med" | "moderate" => Some(0.6),
        "low" => Some(0.3),
        "very low" | "very_low" => Some(0.1),
        _ => None,
    };
    if let Some(c) = word {
        return Some(c);
    }
    if let Some(percent) = t.strip_suffix('%') {
        return clamp_confidence(percent.trim().parse::<f64>().ok()?, true);
    }
    if let Ok(x) = t.parse::<f64>() {
        return clamp_confidence(x, false);
    }
    // "0.8 (fairly sure)"
    let first = t.split_whitespace().next()?;
    if first.len() < t.len() {
        return confidence_text(first);
    }
    None
}

fn clamp_confidence(x: f64, percent: bool) -> Option<f32> {
    if !x.is_finite() {
        return None;
    }
    let x = if percent || x > 1.0 { x / 100.0 } else { x };
    let c = x.clamp(0.0, 1.0) as f32;
    Some(if c <= 0.0 { 0.0 } else { c })
}

/// Cites from a `cites` field: an array of strings or numbers (or `{"id": ...}` objects), or a
/// string listing them.
fn parse_cites(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |v: &Value| match v {
        Value::String(s) => cite_tokens(s, &mut out),
        Value::Number(n) => cite_tokens(&n.to_string(), &mut out),
        Value::Object(m) => {
            if let Some(id) = m.get("id").and_then(text_of) {
                cite_tokens(&id, &mut out);
            }
        }
        _ => {}
    };
    match value {
        Value::Array(list) => list.iter().for_each(&mut add),
        other => add(other),
    }
    dedup(out)
}

/// Hex (and `-`, for whole UUIDs) with at least 4 hex digits.
fn is_hexish(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && token.bytes().filter(u8::is_ascii_hexdigit).count() >= 4
}

/// The id prefixes in `s`. A lone token (`"1a2b3c4d"`, `"[1a2b3c4d]"`) counts if it is hex; in
/// a longer text (`"1a2b3c4d, 5e6f7a8b"`, `"see 1a2b3c4d"`) a hex token also needs a digit or
/// exactly 8 characters, so that words such as `"added"` are not taken for ids.
fn cite_tokens(s: &str, out: &mut Vec<String>) {
    let tokens: Vec<&str> = s
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .map(|t| t.trim_matches('-'))
        .filter(|t| !t.is_empty())
        .collect();
    let lone = tokens.len() == 1;
    for token in tokens {
        let ok = is_hexish(token)
            && (lone || token.len() == 8 || token.bytes().any(|b| b.is_ascii_digit()));
        if ok {
            out.push(token.to_ascii_lowercase());
        }
    }
}

/// Cites written inline in a text: 8 hex digits in square brackets, alone or in a list
/// (`[1a2b3c4d]`, `[1a2b3c4d, 5e6f7a8b]`).
fn harvest_cites(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'[') {
        let open = i + offset;
        let mut j = open + 1;
        while j < bytes.len()
            && j - open <= 200
            && (bytes[j].is_ascii_hexdigit() || matches!(bytes[j], b',' | b';' | b' '))
        {
            j += 1;
        }
        if bytes.get(j) == Some(&b']') {
            let inner = &text[open + 1..j];
            let tokens: Vec<&str> = inner
                .split([',', ';', ' '])
                .filter(|t| !t.is_empty())
                .collect();
            if !tokens.is_empty() && tokens.iter().all(|t| t.len() == 8) {
                out.extend(tokens.iter().map(|t| t.to_ascii_lowercase()));
            }
        }
        i = j.max(open + 1);
    }
    dedup(out)
}

/// Removes repeats, keeping first occurrences in order.
fn dedup(cites: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    cites
        .into_iter()
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(kind: &str, content: &str) -> OutputItem {
        OutputItem {
            kind: kind.to_owned(),
            content: content.to_owned(),
            key: None,
            confidence: None,
            cites: Vec::new(),
            payload: None,
        }
    }

    fn repairs(out: &AgentOutput) -> Vec<String> {
        match &out.parsed {
            ParseOutcome::Repaired(r) => r.clone(),
            other => panic!("expected Repaired, got {other:?}"),
        }
    }

    fn contents(out: &AgentOutput) -> Vec<(&str, &str)> {
        out.items
            .iter()
            .map(|i| (i.kind.as_str(), i.content.as_str()))
            .collect()
    }

    const CONTRACT: &str = r#"{"items": [{"kind": "fact", "content": "Paris is in France", "key": "paris", "confidence": 0.8, "cites": ["1A2B3C4D"]}], "answer": {"content": "France", "confidence": 0.7, "cites": ["1a2b3c4d"]}}"#;

    #[test]
    fn clean_contract_json() {
        let out = parse_output(CONTRACT, "note");
        assert_eq!(out.parsed, ParseOutcome::Json);
        assert_eq!(out.items.len(), 2);
        let fact = &out.items[0];
        assert_eq!(fact.kind, "fact");
        assert_eq!(fact.content, "Paris is in France");
        assert_eq!(fact.key.as_deref(), Some("paris"));
        assert_eq!(fact.confidence, Some(0.8));
        assert_eq!(fact.cites, vec!["1a2b3c4d"]);
        assert_eq!(fact.payload, None);
        let answer = &out.items[1];
        assert_eq!(answer.kind, "answer");
        assert_eq!(answer.content, "France");
        assert_eq!(answer.confidence, Some(0.7));
        assert_eq!(answer.cites, vec!["1a2b3c4d"]);
    }

    #[test]
    fn blank_reply_gives_no_items() {
        for raw in ["", "   \n\t ", "\u{feff}"] {
            let out = parse_output(raw, "note");
            assert_eq!(out.parsed, ParseOutcome::RawText);
            assert!(out.items.is_empty());
        }
    }

    #[test]
    fn plain_prose_is_raw_text() {
        let out = parse_output("  The capital is Paris [1A2B3C4D].\n", " Note ");
        assert_eq!(out.parsed, ParseOutcome::RawText);
        assert_eq!(out.items.len(), 1);
        assert_eq!(out.items[0].kind, "note");
        assert_eq!(out.items[0].content, "The capital is Paris [1A2B3C4D].");
        assert_eq!(out.items[0].cites, vec!["1a2b3c4d"]);
    }

    #[test]
    fn code_fences() {
        let fenced = format!("```json\n{CONTRACT}\n```");
        let out = parse_output(&fenced, "note");
        assert_eq!(repairs(&out), vec!["removed code fence"]);
        assert_eq!(out.items, parse_output(CONTRACT, "note").items);

        let bare = format!("```\n{CONTRACT}\n```");
        let out = parse_output(&bare, "note");
        assert_eq!(repairs(&out), vec!["removed code fence"]);
        assert_eq!(out.items.len(), 2);
    }

    #[test]
    fn prose_around_json() {
        let raw =
            format!("Sure! Here's the JSON you asked for:\n{CONTRACT}\nHope this helps {{:)}}.");
        let out = parse_output(&raw, "note");
        assert_eq!(
            repairs(&out),
            vec!["removed text before JSON", "removed text after JSON"]
        );
        assert_eq!(out.items, parse_output(CONTRACT, "note").items);

        let raw = format!("Here:\n```json\n{CONTRACT}\n```\nDone.");
        let out = parse_output(&raw, "note");
        assert_eq!(
            repairs(&out),
            vec![
                "removed code fence",
                "removed text before JSON",
                "removed text after JSON"
            ]
        );
    }

    #[test]
    fn braces_inside_strings_and_brackets_in_prose() {
        let raw = r#"As noted in [1a2b3c4d], {see below}: {"items": [{"kind": "fact", "content": "a } tricky ] {string"}]} trailing"#;
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "a } tricky ] {string")]);
        assert!(repairs(&out).contains(&"removed text before JSON".to_owned()));
    }

    #[test]
    fn trailing_commas_and_comments() {
        let raw = r#"{
            // the items
            "items": [
                {"kind": "fact", "content": "one", /* inline */ },
                {"kind": "fact", "content": "two",},
            ],
        }"#;
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "one"), ("fact", "two")]);
        assert_eq!(
            repairs(&out),
            vec!["removed 2 comments", "removed 4 trailing commas"]
        );
    }

    #[test]
    fn single_quotes_unquoted_keys_python_literals() {
        let raw = "{items: [{kind: 'fact', content: 'it's raining', confidence: 0.9, verified: True, extra: None}]}";
        let out = parse_output(raw, "note");
        let it = &out.items[0];
        assert_eq!(it.content, "it's raining");
        assert_eq!(it.confidence, Some(0.9));
        assert_eq!(it.payload, Some(json!({"verified": true, "extra": null})));
        let r = repairs(&out);
        assert!(r.contains(&"quoted 6 unquoted keys".to_owned()), "{r:?}");
        assert!(r.contains(&"converted 2 single-quoted strings".to_owned()));
        assert!(r.contains(&"converted 2 Python literals".to_owned()));
    }

    #[test]
    fn smart_quotes() {
        let raw = "{“items”: [{“kind”: “fact”, “content”: “He said ‘hi’ to me”}]}";
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "He said ‘hi’ to me")]);
        assert_eq!(repairs(&out), vec!["converted 5 smart-quoted strings"]);
    }

    #[test]
    fn truncated_output_is_closed() {
        let raw = r#"{"items": [{"kind": "fact", "content": "first"}, {"kind": "fact", "content": "The sky is bl"#;
        let out = parse_output(raw, "note");
        assert_eq!(
            contents(&out),
            vec![("fact", "first"), ("fact", "The sky is bl")]
        );
        assert_eq!(
            repairs(&out),
            vec!["closed unterminated string", "closed 3 brackets"]
        );

        let raw = r#"{"items": [{"kind": "fact", "content": "first"}], "answer"#;
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "first")]);
        assert_eq!(
            repairs(&out),
            vec![
                "closed unterminated string",
                "dropped dangling key without value",
                "closed 1 bracket"
            ]
        );

        let raw = r#"{"items": [{"kind": "fact", "content": "first", "confidence": "#;
        let out = parse_output(raw, "note");
        assert_eq!(out.items[0].confidence, None);
        assert_eq!(out.items[0].payload, None);
        assert!(repairs(&out).contains(&"closed 3 brackets".to_owned()));

        let raw =
            "```json\n{\"items\": [{\"kind\": \"fact\", \"content\": \"x\", \"confidence\": 0.";
        let out = parse_output(raw, "note");
        assert_eq!(out.items[0].confidence, Some(0.0));
        assert!(repairs(&out).contains(&"fixed malformed number".to_owned()));
    }

    #[test]
    fn bare_array_and_single_item() {
        let out = parse_output(
            r#"[{"kind": "fact", "content": "a"}, {"type": "Decision", "text": "b"}]"#,
            "note",
        );
        assert_eq!(out.parsed, ParseOutcome::Json);
        assert_eq!(contents(&out), vec![("fact", "a"), ("decision", "b")]);

        let out = parse_output(r#"{"text": "just one", "confidence": "80%"}"#, "note");
        assert_eq!(contents(&out), vec![("note", "just one")]);
        assert_eq!(out.items[0].confidence, Some(0.8));
    }

    #[test]
    fn answer_as_string_or_object() {
        let out = parse_output(r#"{"answer": "It is 42 [abcdef12]."}"#, "note");
        assert_eq!(out.parsed, ParseOutcome::Json);
        assert_eq!(contents(&out), vec![("answer", "It is 42 [abcdef12].")]);
        assert_eq!(out.items[0].cites, vec!["abcdef12"]);

        let out = parse_output(
            r#"{"answer": "42", "confidence": "high", "cites": "1a2b3c4d, 5E6F7A8B"}"#,
            "note",
        );
        assert_eq!(out.items[0].confidence, Some(0.9));
        assert_eq!(out.items[0].cites, vec!["1a2b3c4d", "5e6f7a8b"]);

        let out = parse_output(
            r#"{"answer": {"text": "42", "kind": "fact", "why": "because"}, "items": [{"content": "x"}]}"#,
            "claim",
        );
        assert_eq!(contents(&out), vec![("claim", "x"), ("answer", "42")]);
        assert_eq!(out.items[1].payload, Some(json!({"why": "because"})));
    }

    #[test]
    fn alternate_field_names() {
        let raw = r#"{"items": [
            {"category": "Fact", "statement": "s", "topic": "t", "score": 0.5, "citations": ["aaaa1111"]},
            {"type": "fact", "claim": "c", "probability": 75, "evidence": "[bbbb2222]"},
            {"kind": "fact", "content": "d", "sources": [12345678, 12345678], "refs": ["cccc3333"]}
        ]}"#;
        let out = parse_output(raw, "note");
        assert_eq!(out.parsed, ParseOutcome::Json);
        let [a, b, c] = &out.items[..] else {
            panic!("{out:?}")
        };
        assert_eq!((a.kind.as_str(), a.content.as_str()), ("fact", "s"));
        assert_eq!(a.key.as_deref(), Some("t"));
        assert_eq!(a.confidence, Some(0.5));
        assert_eq!(a.cites, vec!["aaaa1111"]);
        assert_eq!(b.content, "c");
        assert_eq!(b.confidence, Some(0.75));
        assert_eq!(b.cites, vec!["bbbb2222"]);
        assert_eq!(c.cites, vec!["12345678"]);
        // The second cites field is not read; it stays in the payload.
        assert_eq!(c.payload, Some(json!({"refs": ["cccc3333"]})));
    }

    #[test]
    fn cites_in_many_shapes() {
        let cites = |v: Value| parse_cites(&v);
        assert_eq!(
            cites(json!("1a2b3c4d, 5e6f7a8b")),
            vec!["1a2b3c4d", "5e6f7a8b"]
        );
        assert_eq!(
            cites(json!("[1A2B3C4D] [5e6f7a8b]")),
            vec!["1a2b3c4d", "5e6f7a8b"]
        );
        assert_eq!(cites(json!(["[1a2b3c4d]", "1a2b3c4d"])), vec!["1a2b3c4d"]);
        assert_eq!(
            cites(json!([12345678, "deadbeef"])),
            vec!["12345678", "deadbeef"]
        );
        assert_eq!(
            cites(json!("see item 1a2b3c4d, as added")),
            vec!["1a2b3c4d"]
        );
        assert_eq!(cites(json!(["<id>", "none", "abc"])), Vec::<String>::new());
        assert_eq!(cites(json!([{"id": "1a2b3c4d"}])), vec!["1a2b3c4d"]);
        assert_eq!(
            cites(json!("0190A1B2-1234-7abc-8def-0123456789ab")),
            vec!["0190a1b2-1234-7abc-8def-0123456789ab"]
        );
    }

    #[test]
    fn inline_cites_are_harvested_only_without_a_cites_field() {
        let out = parse_output(
            r#"{"items": [{"kind": "fact", "content": "A [1a2b3c4d] and [5e6f7a8b, 1A2B3C4D] but not [xyz] or [123]"}]}"#,
            "note",
        );
        assert_eq!(out.items[0].cites, vec!["1a2b3c4d", "5e6f7a8b"]);
        let out = parse_output(
            r#"{"items": [{"kind": "fact", "content": "A [1a2b3c4d]", "cites": []}]}"#,
            "note",
        );
        assert!(out.items[0].cites.is_empty());
    }

    #[test]
    fn confidence_shapes() {
        let c = |v: Value| confidence_of(&v);
        assert_eq!(c(json!(0.8)), Some(0.8));
        assert_eq!(c(json!("0.8")), Some(0.8));
        assert_eq!(c(json!("80%")), Some(0.8));
        assert_eq!(c(json!("150%")), Some(1.0));
        assert_eq!(c(json!(80)), Some(0.8));
        assert_eq!(c(json!(1)), Some(1.0));
        assert_eq!(c(json!(-3)), Some(0.0));
        assert_eq!(c(json!(1000)), Some(1.0));
        assert_eq!(c(json!("High")), Some(0.9));
        assert_eq!(c(json!("medium")), Some(0.6));
        assert_eq!(c(json!("low")), Some(0.3));
        assert_eq!(c(json!("0.7 (fairly sure)")), Some(0.7));
        assert_eq!(c(json!("unsure")), None);
        assert_eq!(c(json!("NaN")), None);
        assert_eq!(c(json!(true)), None);
    }

    #[test]
    fn items_without_content_are_dropped() {
        let out = parse_output(
            r#"{"items": [{"kind": "fact"}, {"kind": "fact", "content": "  "}, {"kind": "fact", "content": "..."}, {"kind": "fact", "content": " ok "}]}"#,
            "note",
        );
        assert_eq!(contents(&out), vec![("fact", "ok")]);
    }

    #[test]
    fn unusable_json_falls_back_to_raw_text() {
        for raw in [
            "{}",
            "[]",
            r#"{"foo": 1, "bar": [1, 2]}"#,
            r#"{"items": []}"#,
            r#"{"answer": ""}"#,
            "42",
            r#""just a string""#,
            "```json\n{}\n```",
            "I think {this is wrong} and [that] too",
        ] {
            let out = parse_output(raw, "note");
            assert_eq!(out.parsed, ParseOutcome::RawText, "{raw}");
            assert_eq!(contents(&out), vec![("note", raw.trim())], "{raw}");
        }
    }

    #[test]
    fn nested_items() {
        let out = parse_output(
            r#"{"result": {"status": "ok", "items": [{"kind": "fact", "content": "deep"}]}}"#,
            "note",
        );
        assert_eq!(out.parsed, ParseOutcome::Json);
        assert_eq!(contents(&out), vec![("fact", "deep")]);

        let out = parse_output(
            r#"{"data": [{"kind": "fact", "content": "in array"}]}"#,
            "note",
        );
        assert_eq!(contents(&out), vec![("fact", "in array")]);

        let out = parse_output(
            r#"{"items": "[{\"kind\": \"fact\", \"content\": \"double-encoded\"}]"}"#,
            "note",
        );
        assert_eq!(contents(&out), vec![("fact", "double-encoded")]);
    }

    #[test]
    fn string_and_kind_keyed_items() {
        let out = parse_output(
            r#"{"items": ["The sky is blue", "...", {"fact": "Water is wet", "confidence": 0.9}]}"#,
            "note",
        );
        assert_eq!(
            contents(&out),
            vec![("note", "The sky is blue"), ("fact", "Water is wet")]
        );
        assert_eq!(out.items[1].confidence, Some(0.9));
    }

    #[test]
    fn payload_keeps_extra_fields_and_merges_payload_object() {
        let out = parse_output(
            r#"{"items": [{"kind": "fact", "content": "x", "source_url": "u", "payload": {"n": 1}, "key": null}]}"#,
            "note",
        );
        assert_eq!(
            out.items[0].payload,
            Some(json!({"source_url": "u", "n": 1}))
        );
        assert_eq!(out.items[0].key, None);
    }

    #[test]
    fn several_json_values_are_merged() {
        let raw =
            "{\"kind\": \"fact\", \"content\": \"a\"}\n{\"kind\": \"fact\", \"content\": \"b\"}\n";
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "a"), ("fact", "b")]);
        assert_eq!(repairs(&out), vec!["merged 2 JSON values"]);
    }

    #[test]
    fn missing_commas_and_colons_and_mismatched_brackets() {
        let raw = "{\"items\": [\n {\"kind\": \"fact\" \"content\": \"a\" \"confidence\": 0.5 \"cites\": [\"1a2b3c4d\"]}\n {\"kind\" \"fact\", \"content\": \"b\"}\n}";
        let out = parse_output(raw, "note");
        assert_eq!(contents(&out), vec![("fact", "a"), ("fact", "b")]);
        assert_eq!(out.items[0].confidence, Some(0.5));
        assert_eq!(out.items[0].cites, vec!["1a2b3c4d"]);
        let r = repairs(&out);
        assert!(r.contains(&"inserted 4 missing commas".to_owned()), "{r:?}");
        assert!(r.contains(&"inserted missing colon".to_owned()), "{r:?}");
        assert!(
            r.contains(&"inserted bracket before mismatched one".to_owned()),
            "{r:?}"
        );
    }

    #[test]
    fn unescaped_inner_quotes_and_raw_newlines() {
        let raw =
            "{\"items\": [{\"kind\": \"fact\", \"content\": \"He said \"hi\" to me\nthen left\"}]}";
        let out = parse_output(raw, "note");
        assert_eq!(out.items[0].content, "He said \"hi\" to me\nthen left");
        let r = repairs(&out);
        assert!(
            r.contains(&"kept 2 unescaped quotes inside strings".to_owned()),
            "{r:?}"
        );
        assert!(
            r.contains(&"kept raw control character in string".to_owned()),
            "{r:?}"
        );
    }

    #[test]
    fn escapes() {
        let raw = r#"{'content': 'it\'s \u00e9 \ud83d\ude00 \d \ud800'}"#;
        let out = parse_output(raw, "note");
        assert_eq!(out.items[0].content, "it's é 😀 \\d \u{fffd}");
        assert!(repairs(&out).contains(&"fixed 3 invalid escapes".to_owned()));
    }

    #[test]
    fn bare_words_and_odd_numbers() {
        let raw = "{content: The time is 10:30, confidence: high, n: +5, m: .5, z: 0123, w: NaN}";
        let out = parse_output(raw, "note");
        let it = &out.items[0];
        assert_eq!(it.content, "The time is 10:30");
        assert_eq!(it.confidence, Some(0.9));
        assert_eq!(
            it.payload,
            Some(json!({"n": 5, "m": 0.5, "z": "0123", "w": null}))
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = "[".repeat(100_000);
        let out = parse_output(&deep, "note");
        assert_eq!(out.parsed, ParseOutcome::RawText);
        let deep = format!("{}{}", "{\"a\":".repeat(5_000), "1");
        assert_eq!(parse_output(&deep, "note").parsed, ParseOutcome::RawText);
    }

    #[test]
    fn large_garbage_is_fast() {
        // Many candidate starts, each failing late: the candidate and work limits keep this
        // linear.
        let raw = "{\"a\" \"b\" (".repeat(20_000);
        let start = std::time::Instant::now();
        let out = parse_output(&raw, "note");
        assert_eq!(out.parsed, ParseOutcome::RawText);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn lenient_parser_accepts_valid_json_unchanged() {
        let v = json!({"a": [1, -2.5e10, "x\"y\\z\u{1}", null, true, {"b": {}}], "c": "“quoted”", "d'": "it's"});
        for text in [v.to_string(), serde_json::to_string_pretty(&v).unwrap()] {
            let mut parser = Parser::new(&text, 0);
            assert_eq!(parser.value(0), Ok(v.clone()));
            assert!(parser.notes.0.is_empty());
            assert_eq!(parser.pos, text.len());
        }
    }

    #[test]
    fn serialized_agent_output_round_trips() {
        let mut fact = item("fact", "Paris [deadbeef] is in France");
        fact.key = Some("paris".into());
        fact.confidence = Some(0.25);
        fact.payload = Some(json!({"lang": "en"}));
        let output = AgentOutput {
            items: vec![fact, item("answer", "France")],
            parsed: ParseOutcome::Json,
        };
        let text = serde_json::to_string(&output).unwrap();
        assert_eq!(parse_output(&text, "note"), output);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn hex8() -> impl Strategy<Value = String> {
            "[0-9a-f]{8}"
        }

        fn scalar_json() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                // serde_json (without `float_roundtrip`) reads a few floats back 1 ulp off:
                // keep those it round-trips.
                any::<f64>()
                    .prop_filter("finite, round-trips", |x| {
                        x.is_finite()
                            && serde_json::from_str::<f64>(&Value::from(*x).to_string()).ok()
                                == Some(*x)
                    })
                    .prop_map(Value::from),
                any::<String>().prop_map(Value::String),
            ]
        }

        fn arb_json() -> impl Strategy<Value = Value> {
            scalar_json().prop_recursive(4, 32, 5, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn payload() -> impl Strategy<Value = Option<Value>> {
            prop::option::of(
                prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 1..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            )
        }

        fn arb_item(kind: BoxedStrategy<String>) -> impl Strategy<Value = OutputItem> {
            (
                kind,
                "[^\\[]*[a-zA-Z0-9][^\\[]*",
                prop::option::of("[a-z0-9/_-]{1,16}"),
                prop::option::of(0.0f32..=1.0),
                prop::collection::vec(hex8(), 0..4),
                payload(),
            )
                .prop_map(|(kind, content, key, confidence, cites, payload)| {
                    OutputItem {
                        kind,
                        content: content.trim().to_owned(),
                        key,
                        confidence,
                        cites: dedup(cites),
                        payload,
                    }
                })
        }

        fn arb_items() -> impl Strategy<Value = Vec<OutputItem>> {
            prop::collection::vec(arb_item("[a-z_]{1,12}".boxed()), 1..5)
        }

        /// The contract's shape: extra fields flat in the item object.
        fn contract_item(item: &OutputItem, with_kind: bool) -> Value {
            let mut m = Map::new();
            if with_kind {
                m.insert("kind".into(), json!(item.kind));
            }
            m.insert("content".into(), json!(item.content));
            if let Some(key) = &item.key {
                m.insert("key".into(), json!(key));
            }
            if let Some(c) = item.confidence {
                m.insert("confidence".into(), json!(c));
            }
            m.insert("cites".into(), json!(item.cites));
            if let Some(Value::Object(extra)) = &item.payload {
                for (k, v) in extra {
                    m.insert(format!("x_{k}"), v.clone());
                }
            }
            Value::Object(m)
        }

        fn flat_payload(item: &OutputItem) -> OutputItem {
            let mut item = item.clone();
            if let Some(Value::Object(extra)) = &item.payload {
                item.payload = Some(Value::Object(
                    extra
                        .iter()
                        .map(|(k, v)| (format!("x_{k}"), v.clone()))
                        .collect(),
                ));
            }
            item
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings_never_panic_and_are_deterministic(raw in any::<String>()) {
                let a = parse_output(&raw, "note");
                let b = parse_output(&raw, "note");
                prop_assert_eq!(&a, &b);
                if raw.trim().is_empty() {
                    prop_assert!(a.items.is_empty());
                } else {
                    prop_assert!(!a.items.is_empty());
                }
            }

            #[test]
            fn json_ish_strings_never_panic_and_are_deterministic(
                raw in "[\\[\\]{}\"':,/*#\\\\ \n\t.+0-9a-fA-Z_“”‘’é-]{0,300}"
            ) {
                let a = parse_output(&raw, "note");
                prop_assert_eq!(&a, &parse_output(&raw, "note"));
                for it in &a.items {
                    prop_assert!(!it.content.is_empty());
                    prop_assert!(it.confidence.is_none_or(|c| (0.0..=1.0).contains(&c)));
                }
            }

            #[test]
            fn prefixes_of_valid_replies_never_panic(items in arb_items(), cut in any::<prop::sample::Index>()) {
                let text = json!({"items": items.iter().map(|i| contract_item(i, true)).collect::<Vec<_>>()}).to_string();
                let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                let prefix = &text[..boundaries[cut.index(boundaries.len())]];
                let a = parse_output(prefix, "note");
                prop_assert_eq!(&a, &parse_output(prefix, "note"));
            }

            #[test]
            fn serialized_agent_outputs_round_trip(items in arb_items(), pretty in any::<bool>()) {
                let output = AgentOutput { items, parsed: ParseOutcome::Json };
                let text = if pretty {
                    serde_json::to_string_pretty(&output).unwrap()
                } else {
                    serde_json::to_string(&output).unwrap()
                };
                prop_assert_eq!(&parse_output(&text, "note"), &output);
                // The same through the lenient scanner.
                let fenced = format!("Here you go:\n```json\n{text}\n```\n");
                let out = parse_output(&fenced, "note");
                prop_assert_eq!(&out.items, &output.items);
                prop_assert_eq!(
                    out.parsed,
                    ParseOutcome::Repaired(vec![
                        "removed code fence".into(),
                        "removed text before JSON".into()
                    ])
                );
            }

            #[test]
            fn contract_shaped_replies_round_trip(
                items in arb_items(),
                answer in prop::option::of(arb_item(Just("answer".to_owned()).boxed())),
                bare in any::<bool>(),
                pretty in any::<bool>(),
            ) {
                let list: Vec<Value> = items.iter().map(|i| contract_item(i, true)).collect();
                let reply = if bare && answer.is_none() {
                    Value::Array(list)
                } else {
                    let mut m = Map::new();
                    m.insert("items".into(), Value::Array(list));
                    if let Some(a) = &answer {
                        m.insert("answer".into(), contract_item(a, false));
                    }
                    Value::Object(m)
                };
                let text = if pretty {
                    serde_json::to_string_pretty(&reply).unwrap()
                } else {
                    reply.to_string()
                };
                let mut expected: Vec<OutputItem> = items.iter().map(flat_payload).collect();
                expected.extend(answer.as_ref().map(flat_payload));
                let out = parse_output(&text, "note");
                prop_assert_eq!(&out.items, &expected);
                prop_assert_eq!(out.parsed, ParseOutcome::Json);
            }

            #[test]
            fn lenient_parser_agrees_with_serde_json_on_valid_json(v in arb_json(), pretty in any::<bool>()) {
                let text = if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    v.to_string()
                };
                let strict: Value = serde_json::from_str(&text).unwrap();
                let mut parser = Parser::new(&text, 0);
                prop_assert_eq!(parser.value(0), Ok(strict));
                prop_assert!(parser.notes.0.is_empty(), "{:?}", parser.notes);
            }
        }
    }
}
