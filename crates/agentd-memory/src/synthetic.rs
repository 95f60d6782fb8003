//! A deterministic synthetic corpus for benchmarks and large tests.
//!
//! Real multi-hop QA data is small (a few thousand paragraphs); measuring the store at a million
//! items needs text with the statistics that matter to retrieval, generated on the fly:
//!
//! - a vocabulary of [`VOCABULARY`] pseudo-words (syllable strings, e.g. `tarovesi`) whose global
//!   frequencies follow Zipf's law (exponent ~1), like natural language;
//! - [`TOPICS`] topics, each owning 150 words drawn from the vocabulary, so documents cluster
//!   (lexically and in embedding space) the way documents about one subject do;
//! - document `i` picks a topic from a hash of `i` and has 30 to 60 words: 60% from its topic
//!   (Zipf within the topic), 40% from the global distribution;
//! - query `j` picks a topic from a hash of `j` (with a different salt) and has 4 to 8 topic words
//!   plus 1 or 2 global words.
//!
//! Everything is a pure function of the index and [`Corpus::seed`], so runs are reproducible and
//! any item can be regenerated without keeping the corpus in memory.

use crate::item::{Kind, NewItem, Producer};

/// Distinct words in the corpus.
pub const VOCABULARY: usize = 50_000;
/// Number of topics.
pub const TOPICS: usize = 1_000;
const TOPIC_WORDS: usize = 150;
const SYLLABLES: [&str; 32] = [
    "ta", "ro", "ve", "si", "ka", "lu", "mi", "no", "pe", "da", "ri", "so", "ge", "fa", "tu", "ba",
    "le", "mo", "ni", "za", "ke", "po", "shi", "ra", "en", "ol", "ur", "an", "is", "or", "ex",
    "ul",
];

/// SplitMix64: a tiny, high-quality mixing function.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic stream of pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Samples ranks 0..n with probability ∝ 1 / (rank + 1) via the inverse of the continuous CDF.
fn zipf(rng: &mut Rng, n: usize) -> usize {
    let u = rng.unit();
    let r = ((n as f64 + 1.0).powf(u) - 1.0).floor() as usize;
    r.min(n - 1)
}

/// The synthetic corpus.
pub struct Corpus {
    /// Seed of every choice.
    pub seed: u64,
    words: Vec<String>,
    topics: Vec<[u32; TOPIC_WORDS]>,
}

impl Corpus {
    /// Builds the vocabulary and topics for `seed` (takes a few milliseconds).
    pub fn new(seed: u64) -> Self {
        let mut words = Vec::with_capacity(VOCABULARY);
        let mut seen = std::collections::HashSet::with_capacity(VOCABULARY);
        let mut rng = Rng(seed ^ 0x5EED);
        while words.len() < VOCABULARY {
            let syllables = 2 + rng.below(3);
            let w: String = (0..syllables)
                .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
                .collect();
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let topics = (0..TOPICS)
            .map(|_| {
                let mut t = [0u32; TOPIC_WORDS];
                for w in &mut t {
                    // Topic words come from the middle of the frequency range: distinctive, not rare.
                    *w = (100 + rng.below(VOCABULARY / 2)) as u32;
                }
                t
            })
            .collect();
        Corpus {
            seed,
            words,
            topics,
        }
    }

    /// The topic of document `i`.
    pub fn topic_of_document(&self, i: u64) -> usize {
        (mix(self.seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)) % TOPICS as u64) as usize
    }

    fn text(&self, rng: &mut Rng, topic: usize, topic_words: usize, global_words: usize) -> String {
        let mut out = String::with_capacity((topic_words + global_words) * 8);
        let total = topic_words + global_words;
        let mut topical_left = topic_words;
        for n in 0..total {
            let from_topic = topical_left > 0
                && (rng.below(total - n) < topical_left || total - n == topical_left);
            let w = if from_topic {
                topical_left -= 1;
                self.topics[topic][zipf(rng, TOPIC_WORDS)] as usize
            } else {
                zipf(rng, VOCABULARY)
            };
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&self.words[w]);
        }
        out
    }

    /// The text of document `i`.
    pub fn document(&self, i: u64) -> String {
        let mut rng = Rng(self.seed ^ mix(i));
        let len = 30 + rng.below(31);
        let topical = len * 6 / 10;
        self.text(&mut rng, self.topic_of_document(i), topical, len - topical)
    }

    /// Document `i` as an item of `namespace`.
    pub fn item(&self, namespace: &str, i: u64) -> NewItem {
        NewItem::new(namespace, Kind::Document, self.document(i))
            .producer(Producer::new("loader", "bench", 0))
    }

    /// The text of query `j`.
    pub fn query(&self, j: u64) -> String {
        let mut rng = Rng(self.seed ^ mix(j ^ 0xA5A5_A5A5));
        let topic = rng.below(TOPICS);
        let topical = 4 + rng.below(5);
        let global = 1 + rng.below(2);
        self.text(&mut rng, topic, topical, global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_topical() {
        let a = Corpus::new(7);
        let b = Corpus::new(7);
        assert_eq!(a.document(42), b.document(42));
        assert_eq!(a.query(3), b.query(3));
        assert_ne!(a.document(42), a.document(43));
        let words = a.document(42).split(' ').count();
        assert!((30..=60).contains(&words), "{words}");
        let q = a.query(9).split(' ').count();
        assert!((5..=10).contains(&q), "{q}");
        // Documents of one topic share far more words than documents of different topics.
        let docs: Vec<u64> = (0..5000).collect();
        let t = a.topic_of_document(0);
        let same = docs
            .iter()
            .copied()
            .find(|&i| i != 0 && a.topic_of_document(i) == t)
            .unwrap();
        let other = docs
            .iter()
            .copied()
            .find(|&i| a.topic_of_document(i) != t)
            .unwrap();
        let words = |i: u64| -> std::collections::HashSet<String> {
            a.document(i).split(' ').map(str::to_owned).collect()
        };
        let overlap = |x: u64, y: u64| words(x).intersection(&words(y)).count();
        assert!(overlap(0, same) > overlap(0, other));
    }
}
