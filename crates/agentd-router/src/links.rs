//! Links between items: who mentions whom.
//!
//! Multi-hop questions need evidence the question does not name: "the director of the film
//! that starred X" needs the paragraph about the film (which names X) *and* the paragraph about
//! its director (which does not). The first paragraph names the second's title. The router
//! therefore links items that mention each other and lets strong candidates lend relevance to
//! their neighbours (the bridge score).
//!
//! Edges, in a petgraph [`UnGraph`] over candidates:
//! - **title**: one item's title (payload `title`) occurs in another's text (weight 1.0);
//! - **citation**: an item's payload `cites` lists another's id (weight 1.0);
//! - **entity**: the items share a proper-noun phrase (weight 0.6 per shared entity, capped
//!   at 1.0); phrases found in most candidates carry no information and are ignored.
//!
//! Extraction is a single pass over bytes with no regex; the graph is built only over a bounded
//! set of candidates, so this stays cheap on the routing path.

use std::collections::HashMap;

use agentd_memory::{ItemId, MemoryItem};
use petgraph::graph::{NodeIndex, UnGraph};

/// Words that start sentences or questions and are capitalised without being names.
const NOT_NAMES: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "it",
    "its",
    "he",
    "she",
    "they",
    "his",
    "her",
    "their",
    "in",
    "on",
    "at",
    "of",
    "for",
    "from",
    "by",
    "with",
    "and",
    "or",
    "but",
    "as",
    "is",
    "was",
    "are",
    "were",
    "be",
    "which",
    "who",
    "whom",
    "whose",
    "what",
    "when",
    "where",
    "why",
    "how",
    "after",
    "before",
    "during",
    "since",
    "while",
    "there",
    "here",
    "also",
    "both",
    "either",
    "neither",
    "not",
    "no",
    "yes",
    "if",
    "then",
    "than",
    "so",
    "such",
    "one",
    "some",
    "many",
    "most",
    "all",
    "each",
    "other",
    "another",
    "following",
    "during",
    "however",
];

/// Lower-cased proper-noun phrases in `text`: maximal runs of capitalised words (allowing
/// `of`, `the`, `de`, `von`, `and` between them), minus single stop-words.
pub fn entities(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut pending_connector: Option<&str> = None;
    let flush = |current: &mut Vec<&str>, out: &mut Vec<String>| {
        if !current.is_empty() {
            let phrase = current.join(" ").to_lowercase();
            let informative = current.len() > 1 || !NOT_NAMES.contains(&phrase.as_str());
            if informative && phrase.len() >= 3 && !out.contains(&phrase) {
                out.push(phrase);
            }
            current.clear();
        }
    };
    for raw in text.split(|c: char| c.is_whitespace()) {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let ends_clause = raw.ends_with([',', '.', ';', ':', '?', '!', ')']);
        if word.is_empty() {
            flush(&mut current, &mut out);
            pending_connector = None;
            continue;
        }
        let capitalised = word.chars().next().is_some_and(char::is_uppercase)
            || (word.chars().next().is_some_and(|c| c.is_ascii_digit()) && !current.is_empty());
        if capitalised {
            if let Some(c) = pending_connector.take() {
                current.push(c);
            }
            current.push(word);
        } else if !current.is_empty()
            && pending_connector.is_none()
            && matches!(word, "of" | "the" | "de" | "von" | "van" | "la" | "du")
        {
            pending_connector = Some(word);
        } else {
            pending_connector = None;
            flush(&mut current, &mut out);
        }
        if ends_clause {
            pending_connector = None;
            flush(&mut current, &mut out);
        }
    }
    flush(&mut current, &mut out);
    out
}

/// Whether `needle` (lower case) occurs in `haystack_lower` on word boundaries.
pub(crate) fn mentions(haystack_lower: &str, needle: &str) -> bool {
    if needle.len() < 3 {
        return false;
    }
    let bytes = haystack_lower.as_bytes();
    haystack_lower.match_indices(needle).any(|(at, _)| {
        let before = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let end = at + needle.len();
        let after = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
        before && after
    })
}

/// What link analysis needs of a candidate.
pub struct LinkInput<'a> {
    /// The item.
    pub item: &'a MemoryItem,
    /// Its entities (see [`entities`]).
    pub entities: &'a [String],
}

/// The link graph over a set of candidates (node `i` is candidate `i`).
pub struct LinkGraph {
    graph: UnGraph<(), f32>,
}

impl LinkGraph {
    /// Links the given candidates.
    pub fn build(inputs: &[LinkInput<'_>]) -> Self {
        let n = inputs.len();
        let mut graph: UnGraph<(), f32> = UnGraph::with_capacity(n, n * 2);
        for _ in 0..n {
            graph.add_node(());
        }
        let mut weights: HashMap<(usize, usize), f32> = HashMap::new();
        let mut link = |a: usize, b: usize, w: f32| {
            if a != b {
                let key = (a.min(b), a.max(b));
                let e = weights.entry(key).or_default();
                *e = (*e + w).min(1.0);
            }
        };
        let lower: Vec<String> = inputs
            .iter()
            .map(|i| i.item.content.to_lowercase())
            .collect();
        let titles: Vec<Option<String>> = inputs
            .iter()
            .map(|i| i.item.title().map(str::to_lowercase))
            .collect();
        let ids: HashMap<ItemId, usize> = inputs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.item.id, i))
            .collect();
        for (a, input) in inputs.iter().enumerate() {
            // Titles named in other items' text.
            if let Some(title) = &titles[a] {
                for (b, text) in lower.iter().enumerate() {
                    if b != a && mentions(text, title) {
                        link(a, b, 1.0);
                    }
                }
            }
            // Citations.
            if let Some(cites) = input
                .item
                .payload
                .as_ref()
                .and_then(|p| p.get("cites"))
                .and_then(|c| c.as_array())
            {
                for cited in cites.iter().filter_map(|c| c.as_str()) {
                    if let Some(&b) = cited.parse::<ItemId>().ok().and_then(|id| ids.get(&id)) {
                        link(a, b, 1.0);
                    }
                }
            }
        }
        // Shared entities, ignoring those most candidates mention.
        let mut by_entity: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            for e in input.entities {
                by_entity.entry(e.as_str()).or_default().push(i);
            }
        }
        let common = (n / 2).max(3);
        let mut shared: Vec<(&str, Vec<usize>)> = by_entity
            .into_iter()
            .filter(|(_, items)| items.len() > 1 && items.len() <= common)
            .collect();
        shared.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (_, items) in shared {
            for (x, &a) in items.iter().enumerate() {
                for &b in &items[x + 1..] {
                    link(a, b, 0.6);
                }
            }
        }
        let mut edges: Vec<((usize, usize), f32)> = weights.into_iter().collect();
        edges.sort_unstable_by_key(|e| e.0);
        for ((a, b), w) in edges {
            graph.add_edge(NodeIndex::new(a), NodeIndex::new(b), w);
        }
        LinkGraph { graph }
    }

    /// Bridge scores: for each candidate, the strongest `strength[neighbour] * edge weight`
    /// over its neighbours, in `[0, 1]`.
    pub fn bridge_scores(&self, strength: &[f32]) -> Vec<f32> {
        (0..self.graph.node_count())
            .map(|i| {
                self.graph
                    .edges(NodeIndex::new(i))
                    .map(|e| {
                        let other = if e.source().index() == i {
                            e.target().index()
                        } else {
                            e.source().index()
                        };
                        strength[other] * e.weight()
                    })
                    .fold(0.0f32, f32::max)
                    .clamp(0.0, 1.0)
            })
            .collect()
    }

    /// Number of links.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }
}

use petgraph::visit::EdgeRef;

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_memory::{Kind, Producer, Readers, Timestamp};

    fn item(title: &str, content: &str) -> MemoryItem {
        MemoryItem {
            id: ItemId::new_v7(),
            seq: 1,
            namespace: "ns".into(),
            kind: Kind::Document,
            content: content.into(),
            payload: Some(serde_json::json!({ "title": title })),
            producer: Producer::default(),
            stage: None,
            tags: vec![],
            key: None,
            version: 1,
            confidence: 1.0,
            created_at: Timestamp(0),
            tokens: 10,
            readers: Readers::All,
            superseded: false,
        }
    }

    #[test]
    fn entities_are_capitalised_phrases() {
        let e = entities(
            "The film Blade Runner was directed by Ridley Scott in 1982. It starred Harrison Ford.",
        );
        assert!(e.contains(&"blade runner".to_string()), "{e:?}");
        assert!(e.contains(&"ridley scott".to_string()), "{e:?}");
        assert!(e.contains(&"harrison ford".to_string()), "{e:?}");
        assert!(
            !e.contains(&"the".to_string()) && !e.contains(&"it".to_string()),
            "{e:?}"
        );
        let e = entities("University of California and Bank of America.");
        assert!(e.contains(&"university of california".to_string()), "{e:?}");
    }

    #[test]
    fn titles_named_in_text_link_items_and_lend_bridge_scores() {
        let film = item(
            "Blade Runner",
            "Blade Runner is a 1982 film directed by Ridley Scott.",
        );
        let director = item(
            "Ridley Scott",
            "Sir Ridley Scott is an English film director born in South Shields.",
        );
        let other = item("Paris", "Paris is the capital of France.");
        let ents: Vec<Vec<String>> = [&film, &director, &other]
            .iter()
            .map(|i| entities(&i.content))
            .collect();
        let inputs: Vec<LinkInput<'_>> = [&film, &director, &other]
            .iter()
            .zip(&ents)
            .map(|(i, e)| LinkInput {
                item: i,
                entities: e,
            })
            .collect();
        let graph = LinkGraph::build(&inputs);
        assert!(graph.edge_count() >= 1);
        // The film paragraph matches the query strongly; the director gets a bridge score.
        let bridge = graph.bridge_scores(&[1.0, 0.1, 0.0]);
        assert!(bridge[1] > 0.9, "{bridge:?}");
        assert_eq!(bridge[2], 0.0);
    }

    #[test]
    fn mentions_respect_word_boundaries() {
        assert!(mentions("the city of paris, france", "paris"));
        assert!(!mentions("comparison", "paris"));
        assert!(!mentions("anything", "an"));
    }
}
