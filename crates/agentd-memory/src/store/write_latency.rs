//! Write-latency harness (not a timed assertion): 200 single-item `put_batch` calls on a fresh
//! store, under each durability, with the median and a per-phase breakdown. Run it in release:
//! `cargo test -p agentd-memory --release -- --ignored --nocapture write_latency`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::phases;
use super::{Durability, EmbeddedStore, MemoryStore, SearchMode, SearchQuery, StoreOptions};
use crate::embed::HashingEmbedder;
use crate::filter::Filter;
use crate::item::{Kind, NewItem};
use crate::synthetic::Corpus;
use crate::tokens::default_token_counter;

/// Puts per run (`AGENTD_PUTS` overrides; past the text tail's size a run includes the puts
/// that commit it).
fn puts() -> usize {
    std::env::var("AGENTD_PUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(durability: Durability, batch: usize) {
    let puts = puts();
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::new(
        Arc::new(HashingEmbedder::new(256).unwrap()),
        default_token_counter(),
    )
    .durability(durability);
    let store = EmbeddedStore::open(dir.path(), options).unwrap();
    let corpus = Corpus::new(7);
    let _ = phases::take();
    let mut totals: Vec<Duration> = Vec::with_capacity(puts);
    let mut by_phase: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut searches: Vec<Duration> = Vec::with_capacity(puts);
    for i in 0..puts {
        let items: Vec<NewItem> = (0..batch)
            .map(|j| {
                let n = (i * batch + j) as u64;
                NewItem::new(
                    "run",
                    Kind::Document,
                    format!("{} {}", corpus.document(n), n),
                )
            })
            .collect();
        let t = Instant::now();
        let stored = store.put_batch(items).unwrap();
        totals.push(t.elapsed());
        for (name, d) in phases::take() {
            by_phase.entry(name).or_default().push(d);
        }
        // Read-your-writes, BM25 included (and what routing over a small namespace costs).
        let t = Instant::now();
        let tag = format!("{}", i * batch);
        let hits = store
            .search(
                &SearchQuery::new(&tag, SearchMode::Hybrid),
                &Filter::namespace("run"),
                10,
            )
            .unwrap();
        searches.push(t.elapsed());
        let _ = phases::take();
        assert!(hits.iter().any(|h| h.item.id == stored[0].id));
    }
    totals.sort();
    searches.sort();
    println!(
        "{durability:?}, {puts} puts of {batch}: median {:.3} ms, mean {:.3} ms, p90 {:.3} ms, \
         max {:.3} ms; hybrid search after each: median {:.3} ms",
        ms(percentile(&totals, 0.5)),
        ms(totals.iter().sum::<Duration>() / puts as u32),
        ms(percentile(&totals, 0.9)),
        ms(*totals.last().unwrap()),
        ms(percentile(&searches, 0.5)),
    );
    for (name, mut ds) in by_phase {
        ds.sort();
        let mean = ds.iter().sum::<Duration>() / ds.len() as u32;
        println!(
            "  {name:<14} x{:<4} median {:>8.3} ms  mean {:>8.3} ms  p90 {:>8.3} ms",
            ds.len(),
            ms(percentile(&ds, 0.5)),
            ms(mean),
            ms(percentile(&ds, 0.9)),
        );
    }
}

#[test]
#[ignore = "timing harness: run in release with --ignored --nocapture"]
fn write_latency() {
    run(
        Durability::Background {
            flush_every_ms: 1000,
        },
        1,
    );
    run(Durability::Fsync, 1);
    run(
        Durability::Background {
            flush_every_ms: 1000,
        },
        5,
    );
}
