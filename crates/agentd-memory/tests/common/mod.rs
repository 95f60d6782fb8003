//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use agentd_memory::embed::HashingEmbedder;
use agentd_memory::tokens::default_token_counter;
use agentd_memory::{EmbeddedStore, ItemId, Kind, MemoryStore, NewItem, StoreOptions};

/// Default options: the hashing embedder (no model needed) and the BPE token counter.
pub fn options() -> StoreOptions {
    options_with_dimension(256)
}

pub fn options_with_dimension(dim: usize) -> StoreOptions {
    StoreOptions::new(
        Arc::new(HashingEmbedder::new(dim).unwrap()),
        default_token_counter(),
    )
}

pub fn open(path: &Path) -> EmbeddedStore {
    EmbeddedStore::open(path, options()).unwrap()
}

/// Stores `texts` as documents of `namespace` in one batch; returns their ids in order.
pub fn put_docs(store: &dyn MemoryStore, namespace: &str, texts: &[&str]) -> Vec<ItemId> {
    store
        .put_batch(
            texts
                .iter()
                .map(|t| NewItem::new(namespace, Kind::Document, *t))
                .collect(),
        )
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// A deterministic pseudo-sentence drawn from a few overlapping topic vocabularies.
pub fn synthetic_text(seed: u64) -> String {
    const WORDS: [&str; 40] = [
        "river",
        "mountain",
        "city",
        "election",
        "film",
        "album",
        "novel",
        "battle",
        "king",
        "queen",
        "university",
        "football",
        "island",
        "bridge",
        "painter",
        "poet",
        "company",
        "railway",
        "temple",
        "desert",
        "planet",
        "comet",
        "senate",
        "treaty",
        "opera",
        "violin",
        "harbor",
        "castle",
        "glacier",
        "volcano",
        "forest",
        "bishop",
        "museum",
        "airport",
        "festival",
        "dynasty",
        "empire",
        "canal",
        "lighthouse",
        "observatory",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let topic = (seed % 8) as usize * 5;
    (0..12)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = if x.is_multiple_of(3) {
                (x >> 8) as usize % WORDS.len()
            } else {
                topic + (x >> 8) as usize % 5
            };
            WORDS[w]
        })
        .collect::<Vec<_>>()
        .join(" ")
}
