//! Property tests: for random items and random filters, the store's listings equal a reference
//! evaluation of the filter, supersession follows the highest version per key, and no search
//! mode ever returns an item the filter (in particular its reader) excludes.

mod common;

use std::collections::HashMap;

use agentd_memory::{
    Filter, Kind, MemoryItem, MemoryStore, NewItem, Page, Producer, Readers, SearchMode,
    SearchQuery,
};
use proptest::prelude::*;

const NAMESPACES: [&str; 2] = ["run-a", "run-b"];
const KINDS: [Kind; 4] = [Kind::Fact, Kind::Evidence, Kind::Plan, Kind::Answer];
const STAGES: [&str; 3] = ["plan", "gather", "answer"];
const ROLES: [&str; 3] = ["planner", "researcher", "answerer"];
const WORDS: [&str; 8] = [
    "paris", "river", "tower", "king", "film", "novel", "bridge", "island",
];

fn arb_item() -> impl Strategy<Value = NewItem> {
    (
        0..NAMESPACES.len(),
        0..KINDS.len(),
        proptest::option::of(0..STAGES.len()),
        0..ROLES.len(),
        0u32..4,
        proptest::option::of(proptest::collection::vec(0..ROLES.len(), 0..3)),
        proptest::collection::vec(0..WORDS.len(), 1..5),
        proptest::option::of(0u8..3),
        proptest::collection::vec(0..2usize, 0..2),
    )
        .prop_map(
            |(ns, kind, stage, role, round, readers, words, key, tags)| {
                let content: Vec<&str> = words.iter().map(|w| WORDS[*w]).collect();
                let mut item = NewItem::new(NAMESPACES[ns], KINDS[kind].clone(), content.join(" "))
                    .producer(Producer::new(ROLES[role], format!("node-{role}"), round));
                if let Some(s) = stage {
                    item = item.stage(STAGES[s]);
                }
                if let Some(r) = readers {
                    item = item.readers(Readers::roles(r.iter().map(|i| ROLES[*i])));
                }
                if let Some(k) = key {
                    item = item.key(format!("key-{k}"));
                }
                for t in tags {
                    item = item.tag(["red", "blue"][t]);
                }
                item
            },
        )
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    (
        proptest::collection::vec(0..NAMESPACES.len(), 0..2),
        proptest::collection::vec(0..KINDS.len(), 0..3),
        proptest::collection::vec(0..STAGES.len(), 0..2),
        proptest::option::of((0u32..4, 0u32..4)),
        proptest::collection::vec(0..ROLES.len(), 0..2),
        proptest::option::of(0..ROLES.len() + 1),
        proptest::option::of(0..2usize),
        any::<bool>(),
        proptest::option::of(0u64..40),
    )
        .prop_map(
            |(ns, kinds, stages, rounds, roles, reader, tag, superseded, max_seq)| {
                let mut f = Filter {
                    namespaces: ns.iter().map(|i| NAMESPACES[*i].to_string()).collect(),
                    kinds: kinds.iter().map(|i| KINDS[*i].clone()).collect(),
                    stages: stages.iter().map(|i| STAGES[*i].to_string()).collect(),
                    rounds: rounds.map(|(a, b)| (a.min(b), a.max(b))),
                    producer_roles: roles.iter().map(|i| ROLES[*i].to_string()).collect(),
                    include_superseded: superseded,
                    max_seq,
                    ..Filter::default()
                };
                // Index ROLES.len() stands for a role no item names.
                f.reader = reader.map(|r| ROLES.get(r).copied().unwrap_or("stranger").into());
                if let Some(t) = tag {
                    f = f.tag(["red", "blue"][t]);
                }
                f
            },
        )
}

/// Reference supersession: per (namespace, key), every version but the highest is superseded.
fn with_reference_supersession(mut items: Vec<MemoryItem>) -> Vec<MemoryItem> {
    let mut top: HashMap<(String, String), u32> = HashMap::new();
    for item in &items {
        if let Some(k) = &item.key {
            let v = top.entry((item.namespace.clone(), k.clone())).or_default();
            *v = (*v).max(item.version);
        }
    }
    for item in &mut items {
        item.superseded = item
            .key
            .as_ref()
            .is_some_and(|k| top[&(item.namespace.clone(), k.clone())] > item.version);
    }
    items
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn listings_match_the_reference_and_searches_respect_filters(
        batches in proptest::collection::vec(proptest::collection::vec(arb_item(), 1..8), 1..5),
        filters in proptest::collection::vec(arb_filter(), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = common::open(dir.path());
        let mut stored: Vec<MemoryItem> = Vec::new();
        for batch in batches {
            stored.extend(store.put_batch(batch).unwrap());
        }
        // Versions count up per key in write order.
        let mut seen: HashMap<(String, String), u32> = HashMap::new();
        for item in &stored {
            if let Some(k) = &item.key {
                let v = seen.entry((item.namespace.clone(), k.clone())).or_default();
                *v += 1;
                prop_assert_eq!(item.version, *v);
            } else {
                prop_assert_eq!(item.version, 1);
            }
        }
        let reference = with_reference_supersession(stored);

        for filter in &filters {
            let expected: Vec<_> = reference.iter().filter(|i| filter.matches(i)).map(|i| i.id).collect();
            let listed: Vec<_> = store.list(filter, &Page::first(10_000)).unwrap();
            for item in &listed {
                prop_assert!(filter.matches(item), "listed item fails the filter: {:?}", item);
            }
            let listed: Vec<_> = listed.into_iter().map(|i| i.id).collect();
            prop_assert_eq!(&listed, &expected);
            prop_assert_eq!(store.count(filter).unwrap(), expected.len());

            for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
                let hits = store.search(&SearchQuery::new("paris river tower", mode), filter, 50).unwrap();
                for hit in &hits {
                    prop_assert!(expected.contains(&hit.item.id), "{:?} returned an excluded item", mode);
                    if let Some(reader) = &filter.reader {
                        prop_assert!(hit.item.readers.allows(reader));
                    }
                }
                // Vector search ranks every admitted item (small namespaces are scanned exactly).
                if mode == SearchMode::Vector {
                    prop_assert_eq!(hits.len(), expected.len().min(50));
                }
            }
        }
    }
}
