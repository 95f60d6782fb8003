//! Token counting: how many LLM tokens a text costs, for context budgets.
//!
//! [`BpeTokenCounter`] counts exactly what OpenAI's `o200k_base` (default) or `cl100k_base`
//! encodings produce for ordinary text (special tokens such as `<|endoftext|>` are counted as
//! plain text). Other model families tokenise differently, so for them the count is only an
//! estimate.
//!
//! Speed: tiktoken-rs splits text with a backtracking regex (`fancy-regex`) because of one
//! look-ahead (`\s+(?!\S)`) in the split pattern, and looks pieces up in a map keyed by byte
//! vectors. This module instead splits with the `regex` crate's automata on the same pattern
//! minus the look-ahead and re-creates the look-ahead by hand (a whitespace run followed by more
//! text gives its last character to the next piece), looks short pieces up by one packed integer
//! key, and runs tiktoken's byte-pair merge (re-implemented step for step, with the same merge
//! order and tie-break) only for pieces that are not a single token. Pieces of 100 bytes or more
//! go to tiktoken-rs itself. The counts are identical to tiktoken-rs's
//! `encode_ordinary(..).len()`: a unit test compares them on thousands of tricky strings (and
//! 300k random strings plus the QA data sets and source files were compared while developing).
//! Measured on ~290-byte English paragraphs, per CPU-second on a busy 2-core machine:
//! `cl100k_base` ~105k texts/s (tiktoken-rs ~50k), `o200k_base` ~88k texts/s (tiktoken-rs
//! ~71k). If the fast path cannot be set up, counting falls back to tiktoken-rs.
//!
//! Trade-offs: each encoding's tables are built once per process on first use (about 0.3 s and
//! 65 MB for `o200k_base`, most of it tiktoken-rs's own tables) and then shared by every
//! counter; counting is exact only for OpenAI-tokenised models.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use regex::Regex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tiktoken_rs::{CoreBPE, Rank};

/// Counts the tokens of a text.
pub trait TokenCounter: Send + Sync {
    /// Stable name of the tokenisation, e.g. `"o200k_base"`.
    fn name(&self) -> &str;
    /// Number of tokens in `text` (saturating at `u32::MAX`).
    fn count(&self, text: &str) -> u32;
}

/// Errors from setting up a token counter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenCounterError {
    /// The name does not denote a supported encoding.
    #[error("unknown token encoding {0:?}: expected `o200k_base` or `cl100k_base`")]
    UnknownEncoding(String),
    /// The encoding's vocabulary could not be loaded.
    #[error("could not load the {encoding} vocabulary: {message}")]
    Load {
        /// The encoding.
        encoding: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A supported BPE encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BpeEncoding {
    /// GPT-4o / GPT-4.1 / o-series / GPT-5 tokenisation (the default).
    #[default]
    #[serde(rename = "o200k_base")]
    O200kBase,
    /// GPT-4 / GPT-3.5-turbo tokenisation.
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
}

impl BpeEncoding {
    /// The encoding's canonical name (`"o200k_base"` or `"cl100k_base"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::O200kBase => "o200k_base",
            Self::Cl100kBase => "cl100k_base",
        }
    }
}

impl fmt::Display for BpeEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BpeEncoding {
    type Err = TokenCounterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "o200k_base" | "o200k" => Ok(Self::O200kBase),
            "cl100k_base" | "cl100k" => Ok(Self::Cl100kBase),
            _ => Err(TokenCounterError::UnknownEncoding(s.to_owned())),
        }
    }
}

/// Exact BPE token counts for `o200k_base` or `cl100k_base` (ordinary encoding, no special
/// tokens). Cheap to create and clone once the encoding's shared tables are built.
#[derive(Clone, Copy)]
pub struct BpeTokenCounter {
    encoding: BpeEncoding,
    bpe: &'static FastBpe,
}

impl fmt::Debug for BpeTokenCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpeTokenCounter")
            .field("encoding", &self.encoding)
            .field("fast_path", &self.bpe.fast.is_some())
            .finish()
    }
}

impl BpeTokenCounter {
    /// A counter for `encoding`; the first call per encoding builds its tables (slow, once).
    pub fn new(encoding: BpeEncoding) -> Result<Self, TokenCounterError> {
        static O200K: OnceLock<Result<FastBpe, String>> = OnceLock::new();
        static CL100K: OnceLock<Result<FastBpe, String>> = OnceLock::new();
        let cell = match encoding {
            BpeEncoding::O200kBase => &O200K,
            BpeEncoding::Cl100kBase => &CL100K,
        };
        match cell.get_or_init(|| FastBpe::build(encoding)) {
            Ok(bpe) => Ok(Self { encoding, bpe }),
            Err(message) => Err(TokenCounterError::Load {
                encoding: encoding.as_str(),
                message: message.clone(),
            }),
        }
    }

    /// The `o200k_base` counter.
    pub fn o200k() -> Result<Self, TokenCounterError> {
        Self::new(BpeEncoding::O200kBase)
    }

    /// The `cl100k_base` counter.
    pub fn cl100k() -> Result<Self, TokenCounterError> {
        Self::new(BpeEncoding::Cl100kBase)
    }

    /// The encoding this counter uses.
    pub fn encoding(&self) -> BpeEncoding {
        self.encoding
    }

    /// Exact token count as `usize`.
    pub fn count_usize(&self, text: &str) -> usize {
        self.bpe.count(text)
    }
}

impl TokenCounter for BpeTokenCounter {
    fn name(&self) -> &str {
        self.encoding.as_str()
    }

    fn count(&self, text: &str) -> u32 {
        u32::try_from(self.bpe.count(text)).unwrap_or(u32::MAX)
    }
}

/// A rough counter (one token per 4 bytes, rounded up) for when no vocabulary is available.
/// Overestimates for plain English by roughly 10-30%, underestimates for code and non-Latin
/// scripts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxTokenCounter;

impl TokenCounter for ApproxTokenCounter {
    fn name(&self) -> &str {
        "approx-bytes-div-4"
    }

    fn count(&self, text: &str) -> u32 {
        u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
    }
}

/// The process-wide default counter: `o200k_base`. Its tables (about a quarter of a second
/// of CPU) are built at its first count, not when it is created, so a command that opens a
/// store only to read never builds them; [`BpeTokenCounter::o200k`] on another thread builds
/// them ahead. Should the compiled-in vocabulary fail to load (not expected: tests cover it),
/// it counts with [`ApproxTokenCounter`] and logs the error once.
pub fn default_token_counter() -> Arc<dyn TokenCounter> {
    static DEFAULT: OnceLock<Arc<dyn TokenCounter>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Arc::new(LazyBpeCounter {
                encoding: BpeEncoding::O200kBase,
            })
        })
        .clone()
}

/// A [`BpeTokenCounter`] whose tables are built at the first count (see
/// [`default_token_counter`]).
#[derive(Debug)]
struct LazyBpeCounter {
    encoding: BpeEncoding,
}

impl TokenCounter for LazyBpeCounter {
    fn name(&self) -> &str {
        self.encoding.as_str()
    }

    fn count(&self, text: &str) -> u32 {
        match BpeTokenCounter::new(self.encoding) {
            Ok(counter) => counter.count(text),
            Err(e) => {
                static LOGGED: std::sync::Once = std::sync::Once::new();
                LOGGED.call_once(|| {
                    tracing::error!(error = %e, "the BPE vocabulary failed to load; counting about 4 bytes per token");
                });
                ApproxTokenCounter.count(text)
            }
        }
    }
}

/// `cl100k_base`'s split pattern as tiktoken-rs spells it, for reference:
/// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`.
/// Below: possessive quantifiers made plain (equivalent here, since what follows each one can
/// never match what it gave back) and `\s+(?!\S)|\s` replaced by `\s+` plus the fix-up in
/// [`FastSplit::count`].
const CL100K_SPLIT: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

/// The tail of `o200k_base`'s split pattern that has the look-ahead, and its replacement.
const O200K_LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";
const O200K_PLAIN_TAIL: &str = r"|\s+";

/// Pieces at least this long go to tiktoken-rs's encoder, which has a merge that is not
/// quadratic in the piece length.
const LONG_PIECE: usize = 100;

/// Pieces each thread's merge cache holds before it is cleared.
const MERGE_CACHE_ENTRIES: usize = 1 << 16;

/// Merge caches per thread: (address of the owning [`FastSplit`], piece -> token count). A
/// process has at most one `FastSplit` per encoding (they live in statics), so the list has at
/// most two entries.
type MergeCaches = Vec<(usize, FxHashMap<Box<[u8]>, u32>)>;

thread_local! {
    static MERGE_CACHE: std::cell::RefCell<MergeCaches> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One encoding's shared tables.
struct FastBpe {
    core: CoreBPE,
    fast: Option<FastSplit>,
}

struct FastSplit {
    split: Regex,
    /// Ordinary tokens of at most [`SHORT_KEY_BYTES`] bytes, keyed by [`short_key`]: a lookup
    /// is one integer hash and compare, with no pointer chase or `memcmp`.
    short: FxHashMap<u128, Rank>,
    /// The longer ordinary tokens.
    long: FxHashMap<Vec<u8>, Rank>,
}

/// Longest piece that has a [`short_key`].
const SHORT_KEY_BYTES: usize = 15;

/// Packs up to 15 bytes and their length into one integer (distinct for distinct inputs).
fn short_key(bytes: &[u8]) -> Option<u128> {
    if bytes.len() > SHORT_KEY_BYTES {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    buf[15] = bytes.len() as u8;
    Some(u128::from_le_bytes(buf))
}

impl FastBpe {
    fn build(encoding: BpeEncoding) -> Result<Self, String> {
        let core = match encoding {
            BpeEncoding::O200kBase => tiktoken_rs::o200k_base(),
            BpeEncoding::Cl100kBase => tiktoken_rs::cl100k_base(),
        }
        .map_err(|e| e.to_string())?;
        // The fast path is an optimisation only: if it cannot be built, count with tiktoken-rs.
        let fast = FastSplit::build(encoding, &core).ok();
        Ok(Self { core, fast })
    }

    fn count(&self, text: &str) -> usize {
        match &self.fast {
            Some(fast) => fast.count(text, &self.core),
            None => self.core.encode_ordinary(text).len(),
        }
    }
}

impl FastSplit {
    fn build(encoding: BpeEncoding, core: &CoreBPE) -> Result<Self, String> {
        let pattern = match encoding {
            BpeEncoding::Cl100kBase => CL100K_SPLIT.to_owned(),
            BpeEncoding::O200kBase => {
                let full = tiktoken_rs::O200K_BASE_PAT_STR;
                let head = full
                    .strip_suffix(O200K_LOOKAHEAD_TAIL)
                    .ok_or("o200k_base split pattern has an unexpected shape")?;
                format!("{head}{O200K_PLAIN_TAIL}")
            }
        };
        let split = Regex::new(&pattern).map_err(|e| e.to_string())?;

        // Recover the ordinary vocabulary (bytes -> rank) through the public decoder.
        let specials: HashSet<&[u8]> = core
            .special_tokens()
            .into_iter()
            .map(str::as_bytes)
            .collect();
        let mut short = FxHashMap::default();
        let mut long = FxHashMap::default();
        short.reserve(200_000);
        let mut misses = 0;
        let mut rank: Rank = 0;
        // Vocabularies are dense up to their size, with special tokens just past the end; stop
        // after a long run of unknown ranks.
        while misses < 4096 {
            match core.decode_bytes(&[rank]) {
                Ok(bytes) if !specials.contains(bytes.as_slice()) => {
                    match short_key(&bytes) {
                        Some(key) => short.insert(key, rank),
                        None => long.insert(bytes, rank),
                    };
                    misses = 0;
                }
                _ => misses += 1,
            }
            rank = rank.checked_add(1).ok_or("rank overflow")?;
        }
        let missing_byte =
            (0u8..=255).any(|b| short_key(&[b]).is_none_or(|k| !short.contains_key(&k)));
        if missing_byte {
            return Err("vocabulary lacks a single-byte token".to_owned());
        }
        Ok(Self { split, short, long })
    }

    fn count(&self, text: &str, core: &CoreBPE) -> usize {
        let mut total = 0;
        let mut pos = 0;
        // The split patterns have no look-behind and no `^`, so matching on the suffix
        // `text[pos..]` is the same as matching `text` from `pos`; `find_iter` over a suffix is
        // much faster than repeated `find_at`, so we only restart it after a fix-up.
        'restart: while let Some(rest) = text.get(pos..).filter(|r| !r.is_empty()) {
            for m in self.split.find_iter(rest) {
                let piece = m.as_str();
                // Re-create `\s+(?!\S)`: a run of whitespace (no line break at its end) that
                // is followed by more text gives its last character to the next piece, unless
                // it is a single character. Matches of the other whitespace alternatives
                // either end the text or end in '\r'/'\n'.
                if m.end() < rest.len()
                    && !piece.ends_with(['\r', '\n'])
                    && piece.chars().all(char::is_whitespace)
                {
                    let mut chars = piece.char_indices();
                    if let (Some((last, _)), Some(_)) = (chars.next_back(), chars.next_back()) {
                        total += self.piece_tokens(&piece[..last], core);
                        pos += m.start() + last;
                        continue 'restart;
                    }
                }
                total += self.piece_tokens(piece, core);
            }
            break;
        }
        total
    }

    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        match short_key(bytes) {
            Some(key) => self.short.get(&key).copied(),
            None => self.long.get(bytes).copied(),
        }
    }

    fn piece_tokens(&self, piece: &str, core: &CoreBPE) -> usize {
        let bytes = piece.as_bytes();
        if bytes.len() <= 1 {
            bytes.len()
        } else if self.rank(bytes).is_some() {
            1
        } else if bytes.len() < LONG_PIECE {
            self.cached_merge_count(bytes)
        } else {
            core.encode_ordinary(piece).len()
        }
    }

    /// [`Self::merge_count`] through a per-thread cache: text is Zipfian, so the same few
    /// thousand out-of-vocabulary words make up most merges, and a lookup is several times
    /// cheaper than a merge. Each cache holds at most [`MERGE_CACHE_ENTRIES`] pieces and is
    /// cleared when full (no eviction bookkeeping on the hot path).
    fn cached_merge_count(&self, piece: &[u8]) -> usize {
        let me = self as *const Self as usize;
        MERGE_CACHE.with(|caches| {
            let mut caches = caches.borrow_mut();
            let index = match caches.iter().position(|(owner, _)| *owner == me) {
                Some(i) => i,
                None => {
                    caches.push((me, FxHashMap::default()));
                    caches.len() - 1
                }
            };
            let cache = &mut caches[index].1;
            if let Some(&n) = cache.get(piece) {
                return n as usize;
            }
            let n = self.merge_count(piece);
            if cache.len() >= MERGE_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(piece.into(), n as u32);
            n
        })
    }

    /// Number of tokens byte-pair merging turns `piece` (2 to `LONG_PIECE - 1` bytes) into.
    ///
    /// This is tiktoken's `_byte_pair_merge` step for step (same merge order, same tie-break
    /// on the leftmost lowest rank), with its parts on the stack and our faster rank lookups.
    fn merge_count(&self, piece: &[u8]) -> usize {
        const NONE: Rank = Rank::MAX;
        let n = piece.len();
        // parts[k] = (start of part k, rank of merging part k with part k + 1).
        let mut parts = [(0usize, NONE); LONG_PIECE + 1];
        if n < 2 || n + 1 > parts.len() {
            return n;
        }
        let mut len = 0;
        let mut min = (NONE, usize::MAX);
        for i in 0..n - 1 {
            let rank = self.rank(&piece[i..i + 2]).unwrap_or(NONE);
            if rank < min.0 {
                min = (rank, i);
            }
            parts[len] = (i, rank);
            len += 1;
        }
        parts[len] = (n - 1, NONE);
        parts[len + 1] = (n, NONE);
        len += 2;

        let rank_at = |parts: &[(usize, Rank)], len: usize, i: usize| {
            if i + 3 < len {
                self.rank(&piece[parts[i].0..parts[i + 3].0])
                    .unwrap_or(NONE)
            } else {
                NONE
            }
        };
        while min.0 != NONE {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, len, i - 1);
            }
            parts[i].1 = rank_at(&parts, len, i);
            parts.copy_within(i + 2..len, i + 1);
            len -= 1;

            min = (NONE, usize::MAX);
            for (k, &(_, rank)) in parts[..len - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, k);
                }
            }
        }
        len - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(counter: &BpeTokenCounter, text: &str) -> usize {
        counter.bpe.core.encode_ordinary(text).len()
    }

    #[test]
    fn known_counts() {
        let o = BpeTokenCounter::o200k().unwrap();
        let c = BpeTokenCounter::cl100k().unwrap();
        assert!(o.bpe.fast.is_some() && c.bpe.fast.is_some());
        assert_eq!(c.bpe.core.encode_ordinary("hello world"), [15339, 1917]);
        assert_eq!(o.bpe.core.encode_ordinary("hello world"), [24912, 2375]);
        // Values from OpenAI's "How to count tokens with tiktoken" guide.
        for (text, cl100k, o200k) in [
            ("hello world", 2, 2),
            ("antidisestablishmentarianism", 6, 6),
            ("2 + 2 = 4", 7, 7),
            ("お誕生日おめでとう", 9, 8),
            ("", 0, 0),
        ] {
            assert_eq!(c.count(text), cl100k, "cl100k {text:?}");
            assert_eq!(o.count(text), o200k, "o200k {text:?}");
        }
        // Special tokens are counted as ordinary text.
        assert!(o.count("<|endoftext|>") > 1);
        assert_eq!(o.name(), "o200k_base");
        assert_eq!(c.name(), "cl100k_base");
        assert_eq!(default_token_counter().name(), "o200k_base");
        for text in ["hello world", "お誕生日おめでとう", "  indented\n\ttext  "] {
            assert_eq!(
                default_token_counter().count(text),
                o.count(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn encoding_names_parse() {
        assert_eq!(
            "cl100k_base".parse::<BpeEncoding>().unwrap(),
            BpeEncoding::Cl100kBase
        );
        assert_eq!(
            "O200K".parse::<BpeEncoding>().unwrap(),
            BpeEncoding::O200kBase
        );
        assert!("gpt2".parse::<BpeEncoding>().is_err());
        assert_eq!(BpeEncoding::default().to_string(), "o200k_base");
    }

    /// Deterministic strings over an alphabet chosen to hit every branch of both split
    /// patterns: whitespace runs of all kinds, line breaks, contractions, digits, punctuation,
    /// case changes, combining marks, CJK, emoji and non-breaking / ideographic spaces.
    fn tricky_strings() -> Vec<String> {
        let alphabet = [
            " ",
            " ",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "\u{a0}",
            "\u{3000}",
            "\u{2003}",
            "a",
            "b",
            "Z",
            "Hello",
            "world",
            "WORLD",
            "'s",
            "'T",
            "'ll",
            "'",
            "\"",
            "7",
            "42",
            "12345",
            ".",
            ",",
            "!?",
            "...",
            "/",
            "-",
            "(",
            ")",
            "é",
            "e\u{301}",
            "\u{301}",
            "ß",
            "İ",
            "東京",
            "日本語",
            "😀",
            "👍🏽",
            "ǅ",
            "ʰ",
            "Ⅻ",
            "١٢٣",
            "\u{200b}",
            "<|endoftext|>",
            "x",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut out: Vec<String> = [
            "",
            " ",
            "  ",
            "   ",
            "\n",
            " \n",
            "\n ",
            "  \n  ",
            "a  ",
            "a  b",
            "a   b",
            "a \n b",
            "a\t\tb",
            "a \u{a0}b",
            "1  2",
            "x   5",
            "  x",
            "x  ",
            "x \r\n\r\n  y",
            "don't",
            "I'M",
            "hello   world\n\n\nfoo",
            "end with spaces   ",
            "end with newline\n",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for _ in 0..3000 {
            let len = next(24);
            let s: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            out.push(s);
        }
        out
    }

    #[test]
    fn fast_path_matches_tiktoken_exactly() {
        for counter in [
            BpeTokenCounter::o200k().unwrap(),
            BpeTokenCounter::cl100k().unwrap(),
        ] {
            for s in tricky_strings() {
                assert_eq!(
                    counter.count_usize(&s),
                    reference(&counter, &s),
                    "{} on {s:?}",
                    counter.name()
                );
            }
            let prose = "The Seine is a 777-kilometre-long river and an important commercial \
                waterway within the Paris Basin in the north of France. It rises at \
                Source-Seine, 30 kilometres (19 mi) northwest of Dijon in northeastern France \
                in the Langres plateau, flowing through Paris and into the English Channel at \
                Le Havre (and Honfleur on the left bank).\n\n    fn main() {\n        \
                println!(\"{}\", x);\n    }\n";
            assert_eq!(counter.count_usize(prose), reference(&counter, prose));
            let long = format!("{} {}", "x".repeat(5000), "-=".repeat(700));
            assert_eq!(counter.count_usize(&long), reference(&counter, &long));
        }
    }

    #[test]
    fn approx_counter() {
        assert_eq!(ApproxTokenCounter.count(""), 0);
        assert_eq!(ApproxTokenCounter.count("abcde"), 2);
    }
}
