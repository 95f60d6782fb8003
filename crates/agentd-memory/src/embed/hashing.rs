//! `HashingEmbedder`: a zero-setup, deterministic bag-of-words embedder (feature hashing).
//!
//! How a text becomes a vector:
//! 1. Words are maximal runs of alphanumeric characters (Unicode-aware), lowercased. A small
//!    English stopword list is dropped, and ASCII words get a light suffix stripping so that
//!    "cities"/"city", "played"/"plays"/"play" and "making"/"make" meet.
//! 2. Features are the words (weight 1) and bigrams of consecutive kept words (weight 0.5).
//! 3. Each feature is hashed with FNV-1a 64 plus a murmur3 finaliser (our own code, not std's
//!    `DefaultHasher`, so vectors are identical on every platform and Rust version). The high
//!    32 bits pick the bucket, another bit picks the sign (signed hashing: collisions cancel out
//!    on average instead of piling up).
//! 4. A feature seen `tf` times adds `±weight * (1 + ln tf)` (sublinear term frequency); the
//!    vector is then L2-normalised.
//!
//! Trade-offs: it needs no files and embeds hundreds of thousands of short texts per second per
//! core, but it only sees shared words: synonyms and paraphrases score 0. Scripts written without
//! spaces (Chinese, Japanese) become one "word" per run of characters. Changing anything above
//! changes every vector, so any such change must also change [`HashingEmbedder::name`]'s version
//! (`hashing-v1-...`); the unit tests pin a few values to catch accidental changes.

use super::{DEFAULT_HASHING_DIMENSION, EmbedError, Embedder};

/// Weight of a word feature.
const UNIGRAM_WEIGHT: f32 = 1.0;
/// Weight of a bigram feature.
const BIGRAM_WEIGHT: f32 = 0.5;
/// `1 + ln(tf)` for tf = 1..=16, as literals so that common vectors do not depend on the
/// platform's `ln` (which may differ in the last bit).
const SUBLINEAR_TF: [f32; 16] = [
    1.0,
    1.693_147_2,
    2.098_612_3,
    2.386_294_4,
    2.609_438,
    2.791_759_5,
    2.945_910_2,
    3.079_441_5,
    3.197_224_6,
    3.302_585_1,
    3.397_895_3,
    3.484_906_7,
    3.564_949_3,
    3.639_057_4,
    3.708_050_3,
    3.772_588_7,
];
/// Salt mixed into bigram hashes so that a bigram never equals a word hash by construction.
const BIGRAM_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// Words longer than this are hashed on their first `MAX_WORD_BYTES` bytes only (bounds the
/// scratch buffer on pathological input such as base64 blobs).
const MAX_WORD_BYTES: usize = 64;

/// Feature-hashing embedder: zero setup, deterministic, fast; only sees shared words.
///
/// See the module documentation for the exact recipe. A text with no kept word (empty, only
/// punctuation or only stopwords) yields the all-zero vector.
#[derive(Debug, Clone)]
pub struct HashingEmbedder {
    dimension: usize,
    name: String,
}

impl Default for HashingEmbedder {
    /// The 256-dimensional embedder (`hashing-v1-256`).
    fn default() -> Self {
        Self {
            dimension: DEFAULT_HASHING_DIMENSION,
            name: format!("hashing-v1-{DEFAULT_HASHING_DIMENSION}"),
        }
    }
}

impl HashingEmbedder {
    /// Largest supported dimension.
    pub const MAX_DIMENSION: usize = 1 << 20;

    /// An embedder producing `dimension`-long vectors (1..=[`Self::MAX_DIMENSION`]).
    pub fn new(dimension: usize) -> Result<Self, EmbedError> {
        if dimension == 0 || dimension > Self::MAX_DIMENSION {
            return Err(EmbedError::InvalidConfig(format!(
                "hashing embedder dimension must be between 1 and {}, got {dimension}",
                Self::MAX_DIMENSION
            )));
        }
        Ok(Self {
            dimension,
            name: format!("hashing-v1-{dimension}"),
        })
    }

    /// Embeds one text into `out` (which must be `dimension()` long), reusing `scratch` between
    /// calls so that embedding allocates nothing once the scratch has grown.
    pub fn embed_into(
        &self,
        text: &str,
        scratch: &mut HashingScratch,
        out: &mut [f32],
    ) -> Result<(), EmbedError> {
        if out.len() != self.dimension {
            return Err(EmbedError::InvalidConfig(format!(
                "output buffer has length {}, the embedder's dimension is {}",
                out.len(),
                self.dimension
            )));
        }
        out.fill(0.0);
        let features = &mut scratch.features;
        features.clear();
        let mut prev: Option<u64> = None;
        for_each_word(text, &mut scratch.word, |h| {
            // The low bit tells words (0) from bigrams (1); the rest of the hash is the feature.
            features.push(h & !1);
            if let Some(p) = prev {
                features.push(bigram_hash(p, h) | 1);
            }
            prev = Some(h);
        });
        features.sort_unstable();

        let dim = self.dimension as u64;
        let mut i = 0;
        while i < features.len() {
            let h = features[i];
            let mut j = i + 1;
            while j < features.len() && features[j] == h {
                j += 1;
            }
            let tf = j - i;
            i = j;
            let weight = if h & 1 == 0 {
                UNIGRAM_WEIGHT
            } else {
                BIGRAM_WEIGHT
            };
            let damped = match SUBLINEAR_TF.get(tf - 1) {
                Some(v) => *v,
                None => 1.0 + (tf as f32).ln(),
            };
            // Lemire's multiply-shift reduction of the high 32 bits onto 0..dim.
            let bucket = (((h >> 32) * dim) >> 32) as usize;
            let value = if h & 2 == 0 { weight } else { -weight } * damped;
            if let Some(slot) = out.get_mut(bucket) {
                *slot += value;
            }
        }

        let norm_sq: f32 = out.iter().map(|x| x * x).sum();
        if norm_sq > 0.0 {
            let inv = 1.0 / norm_sq.sqrt();
            out.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }
}

/// Reusable buffers for [`HashingEmbedder::embed_into`].
#[derive(Debug, Default, Clone)]
pub struct HashingScratch {
    word: Vec<u8>,
    features: Vec<u64>,
}

impl Embedder for HashingEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    /// Feature hashing is a pure function of the text and costs a few microseconds.
    fn recomputable(&self) -> bool {
        true
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut scratch = HashingScratch::default();
        texts
            .iter()
            .map(|text| {
                let mut v = vec![0.0; self.dimension];
                self.embed_into(text, &mut scratch, &mut v)?;
                Ok(v)
            })
            .collect()
    }
}

/// Calls `emit` with the hash of every kept (non-stopword, stemmed) word of `text`, in order.
fn for_each_word(text: &str, word: &mut Vec<u8>, mut emit: impl FnMut(u64)) {
    word.clear();
    // Only pure ASCII-letter words are stemmed.
    let mut ascii_alpha = true;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            i += 1;
            if b.is_ascii_alphanumeric() {
                if word.len() < MAX_WORD_BYTES {
                    word.push(b.to_ascii_lowercase());
                }
                ascii_alpha &= b.is_ascii_alphabetic();
            } else if !word.is_empty() {
                finish_word(word, ascii_alpha, &mut emit);
                ascii_alpha = true;
            }
            continue;
        }
        // Non-ASCII: decode one char (i is always on a char boundary here).
        let Some(ch) = text.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        i += ch.len_utf8();
        if ch.is_alphanumeric() {
            ascii_alpha = false;
            for lower in ch.to_lowercase() {
                let mut utf8 = [0u8; 4];
                let encoded = lower.encode_utf8(&mut utf8).as_bytes();
                if word.len() + encoded.len() <= MAX_WORD_BYTES {
                    word.extend_from_slice(encoded);
                }
            }
        } else if !word.is_empty() {
            finish_word(word, ascii_alpha, &mut emit);
            ascii_alpha = true;
        }
    }
    if !word.is_empty() {
        finish_word(word, ascii_alpha, &mut emit);
    }
}

fn finish_word(word: &mut Vec<u8>, ascii_alpha: bool, emit: &mut impl FnMut(u64)) {
    if !is_stopword(word) {
        if ascii_alpha {
            stem(word);
        }
        emit(fmix64(fnv1a64(word)));
    }
    word.clear();
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// murmur3's 64-bit finaliser: spreads FNV's weak high bits.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Order-sensitive hash of two word hashes.
fn bigram_hash(first: u64, second: u64) -> u64 {
    fmix64(first.wrapping_mul(0x0000_0100_0000_01b3) ^ second.rotate_left(29) ^ BIGRAM_SALT)
}

/// Light English suffix stripping for lowercase ASCII words (a small subset of Porter's step 1
/// plus dropping a final "e"). Words of three letters or fewer are left alone.
fn stem(w: &mut Vec<u8>) {
    if w.len() <= 3 {
        return;
    }
    // Plurals and third person: cities -> city, classes -> class, plays -> play.
    if w.ends_with(b"ies") && w.len() > 4 {
        w.truncate(w.len() - 3);
        w.push(b'y');
    } else if w.ends_with(b"sses") {
        w.truncate(w.len() - 2);
    } else if w.ends_with(b"s") && !w.ends_with(b"ss") && !w.ends_with(b"us") && !w.ends_with(b"is")
    {
        w.truncate(w.len() - 1);
    }
    // Past tense and gerund: played -> play, playing -> play, stopped -> stop, tried -> try.
    let stripped = if w.len() >= 6 && w.ends_with(b"ing") {
        w.truncate(w.len() - 3);
        true
    } else if w.len() >= 5 && w.ends_with(b"ed") {
        w.truncate(w.len() - 2);
        true
    } else {
        false
    };
    if stripped {
        let n = w.len();
        if n >= 2 && w[n - 1] == w[n - 2] && !matches!(w[n - 1], b'l' | b's' | b'z') {
            w.truncate(n - 1);
        } else if w.ends_with(b"i") {
            w.truncate(n - 1);
            w.push(b'y');
        }
    }
    // make / making / makes -> mak.
    if w.len() > 3 && w.ends_with(b"e") {
        w.truncate(w.len() - 1);
    }
}

/// A small English stopword list (lowercase).
fn is_stopword(w: &[u8]) -> bool {
    matches!(
        w,
        b"a" | b"about"
            | b"above"
            | b"after"
            | b"again"
            | b"against"
            | b"all"
            | b"also"
            | b"am"
            | b"an"
            | b"and"
            | b"any"
            | b"are"
            | b"as"
            | b"at"
            | b"be"
            | b"because"
            | b"been"
            | b"before"
            | b"being"
            | b"below"
            | b"between"
            | b"both"
            | b"but"
            | b"by"
            | b"can"
            | b"could"
            | b"d"
            | b"did"
            | b"do"
            | b"does"
            | b"doing"
            | b"down"
            | b"during"
            | b"each"
            | b"few"
            | b"for"
            | b"from"
            | b"further"
            | b"had"
            | b"has"
            | b"have"
            | b"having"
            | b"he"
            | b"her"
            | b"here"
            | b"hers"
            | b"herself"
            | b"him"
            | b"himself"
            | b"his"
            | b"how"
            | b"i"
            | b"if"
            | b"in"
            | b"into"
            | b"is"
            | b"it"
            | b"its"
            | b"itself"
            | b"just"
            | b"ll"
            | b"m"
            | b"me"
            | b"more"
            | b"most"
            | b"my"
            | b"myself"
            | b"no"
            | b"nor"
            | b"not"
            | b"of"
            | b"off"
            | b"on"
            | b"once"
            | b"only"
            | b"or"
            | b"other"
            | b"our"
            | b"ours"
            | b"out"
            | b"over"
            | b"own"
            | b"re"
            | b"s"
            | b"same"
            | b"she"
            | b"should"
            | b"so"
            | b"some"
            | b"such"
            | b"t"
            | b"than"
            | b"that"
            | b"the"
            | b"their"
            | b"theirs"
            | b"them"
            | b"themselves"
            | b"then"
            | b"there"
            | b"these"
            | b"they"
            | b"this"
            | b"those"
            | b"through"
            | b"to"
            | b"too"
            | b"under"
            | b"until"
            | b"up"
            | b"ve"
            | b"very"
            | b"was"
            | b"we"
            | b"were"
            | b"what"
            | b"when"
            | b"where"
            | b"which"
            | b"while"
            | b"who"
            | b"whom"
            | b"why"
            | b"will"
            | b"with"
            | b"would"
            | b"you"
            | b"your"
            | b"yours"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn words(text: &str) -> Vec<String> {
        // Re-run the tokeniser, capturing the words instead of their hashes.
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut ascii_alpha = true;
        for ch in text.chars() {
            if ch.is_alphanumeric() {
                ascii_alpha &= ch.is_ascii_alphabetic();
                buf.extend(ch.to_lowercase().to_string().bytes());
            } else if !buf.is_empty() {
                if !is_stopword(&buf) {
                    if ascii_alpha {
                        stem(&mut buf);
                    }
                    out.push(String::from_utf8(buf.clone()).unwrap());
                }
                buf.clear();
                ascii_alpha = true;
            }
        }
        if !buf.is_empty() && !is_stopword(&buf) {
            if ascii_alpha {
                stem(&mut buf);
            }
            out.push(String::from_utf8(buf).unwrap());
        }
        out
    }

    #[test]
    fn hash_functions_are_pinned() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
    }

    #[test]
    fn stemming_meets_variants() {
        let pairs = [
            ("cities", "city"),
            ("played", "play"),
            ("plays", "play"),
            ("playing", "play"),
            ("running", "run"),
            ("stopped", "stop"),
            ("tried", "try"),
            ("studies", "study"),
            ("making", "make"),
            ("classes", "class"),
            ("rivers", "river"),
            ("called", "call"),
        ];
        for (a, b) in pairs {
            assert_eq!(words(a), words(b), "{a} vs {b}");
        }
        assert_eq!(words("status analysis bus"), ["status", "analysis", "bus"]);
    }

    #[test]
    fn tokeniser_drops_stopwords_and_lowercases() {
        assert_eq!(
            words("The Eiffel Tower is in PARIS, isn't it?"),
            ["eiffel", "tower", "paris", "isn"]
        );
        assert_eq!(words("Ünïcode Straße 42"), ["ünïcode", "straße", "42"]);
    }

    #[test]
    fn deterministic_and_normalised() {
        let e = HashingEmbedder::default();
        let texts = [
            "The quick brown fox jumps over the lazy dog.",
            "Ünïcode Straße, 東京 and emoji 🚀 survive",
            "x",
        ];
        let a = e.embed_batch(&texts).unwrap();
        let b = e.embed_batch(&texts).unwrap();
        assert_eq!(a, b);
        for v in &a {
            assert_eq!(v.len(), 256);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
    }

    #[test]
    fn empty_and_stopword_only_texts_give_zero_vectors() {
        let e = HashingEmbedder::new(32).unwrap();
        for text in ["", "   ", "?!, ...", "the and of it is"] {
            let v = e.embed_query(text).unwrap();
            assert!(v.iter().all(|x| *x == 0.0), "{text:?}");
        }
    }

    #[test]
    fn known_vector_is_stable() {
        // Pinned so that an accidental change of tokenising, hashing or weighting is caught.
        // If you change the recipe on purpose, bump the name to hashing-v2 and re-pin.
        let e = HashingEmbedder::new(64).unwrap();
        let v = e
            .embed_query("Rivers flow to the sea; the river Seine flows through Paris.")
            .unwrap();
        let nonzero: Vec<(usize, f32)> = v
            .iter()
            .enumerate()
            .filter(|(_, x)| **x != 0.0)
            .map(|(i, x)| (i, *x))
            .collect();
        let expected: &[(usize, f32)] = PINNED;
        assert_eq!(
            nonzero.len(),
            expected.len(),
            "nonzero entries changed: {nonzero:?}"
        );
        for ((i, x), (ei, ex)) in nonzero.iter().zip(expected) {
            assert_eq!(i, ei, "bucket changed: {nonzero:?}");
            assert!((x - ex).abs() < 1e-6, "value at {i} changed: {nonzero:?}");
        }
        assert_eq!(e.name(), "hashing-v1-64");
    }

    const PINNED: &[(usize, f32)] = &[
        (1, 0.15629965),
        (5, 0.3125993),
        (6, 0.3125993),
        (22, 0.15629965),
        (25, 0.5292766),
        (26, -0.3125993),
        (34, -0.5292766),
        (45, -0.15629965),
        (48, -0.15629965),
        (50, 0.15629965),
        (56, 0.15629965),
    ];

    #[test]
    fn related_texts_score_higher_than_unrelated() {
        let e = HashingEmbedder::default();
        let v = e
            .embed_batch(&[
                "The Seine is a river that flows through Paris, the capital of France.",
                "Paris, France's capital city, lies on the river Seine.",
                "Quarterly earnings of the software company beat analyst expectations.",
            ])
            .unwrap();
        let related = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        assert!(related > 0.4, "related {related}");
        assert!(unrelated.abs() < 0.15, "unrelated {unrelated}");
        assert!(related > unrelated + 0.3);
    }

    #[test]
    fn bigrams_are_order_sensitive() {
        let e = HashingEmbedder::default();
        let v = e.embed_batch(&["dog bites man", "man bites dog"]).unwrap();
        let c = cosine(&v[0], &v[1]);
        assert!(c < 0.999 && c > 0.5, "{c}");
    }

    #[test]
    fn bad_dimensions_and_buffers_are_errors() {
        assert!(HashingEmbedder::new(0).is_err());
        assert!(HashingEmbedder::new(HashingEmbedder::MAX_DIMENSION + 1).is_err());
        let e = HashingEmbedder::new(8).unwrap();
        let mut out = vec![0.0; 7];
        assert!(
            e.embed_into("x", &mut HashingScratch::default(), &mut out)
                .is_err()
        );
        assert_eq!(e.embed_batch(&[]).unwrap().len(), 0);
    }

    #[test]
    fn long_and_odd_inputs_do_not_panic() {
        let e = HashingEmbedder::new(16).unwrap();
        let long_word = "a".repeat(100_000);
        let mixed = "ß\u{0130}\u{1F600}\u{0301}x".repeat(1000);
        let v = e.embed_batch(&[&long_word, &mixed, "\0\u{FFFF}"]).unwrap();
        assert_eq!(v.len(), 3);
    }
}
