//! The text index is derived: written without fsyncs, committed in batches (small writes wait in
//! an in-memory tail), rebuilt from sled when it cannot be trusted. These tests check that BM25
//! sees every item exactly once and scores it the same whichever side of a commit it is on.

mod common;

use std::path::Path;

use agentd_memory::{Filter, ItemId, Kind, MemoryStore, NewItem, SearchMode, SearchQuery};

/// Writes `n` items one `put` each; item `i` holds the unique word `unique{i}`.
fn put_singles(store: &dyn MemoryStore, from: usize, n: usize) -> Vec<ItemId> {
    (from..from + n)
        .map(|i| {
            store
                .put(NewItem::new(
                    "docs",
                    Kind::Document,
                    format!("unique{i} {}", common::synthetic_text(i as u64)),
                ))
                .unwrap()
                .id
        })
        .collect()
}

fn bm25(store: &dyn MemoryStore, query: &str, k: usize) -> Vec<(ItemId, f32)> {
    store
        .search(
            &SearchQuery::new(query, SearchMode::Bm25),
            &Filter::namespace("docs"),
            k,
        )
        .unwrap()
        .into_iter()
        .map(|h| (h.item.id, h.score))
        .collect()
}

/// Every item is found by its unique word, exactly once.
fn assert_all_found(store: &dyn MemoryStore, ids: &[ItemId]) {
    for (i, id) in ids.iter().enumerate() {
        let hits = bm25(store, &format!("unique{i}"), 10);
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![*id],
            "unique{i}"
        );
    }
    let all = bm25(store, "river mountain city election film album", 100_000);
    let mut found: Vec<ItemId> = all.iter().map(|h| h.0).collect();
    found.sort();
    found.dedup();
    assert_eq!(found.len(), all.len(), "no item comes back twice");
}

fn assert_same_ranking(before: &[(ItemId, f32)], after: &[(ItemId, f32)], query: &str) {
    assert_eq!(before.len(), after.len(), "{query}");
    for (b, a) in before.iter().zip(after) {
        assert!(
            (b.1 - a.1).abs() <= 1e-4 * b.1.abs().max(1.0),
            "{query}: score {} before the commit, {} after",
            b.1,
            a.1
        );
    }
    // Same items; the order may differ only between (near-)equal scores.
    let mut ids_b: Vec<ItemId> = before.iter().map(|h| h.0).collect();
    let mut ids_a: Vec<ItemId> = after.iter().map(|h| h.0).collect();
    ids_b.sort();
    ids_a.sort();
    assert_eq!(ids_b, ids_a, "{query}");
}

#[test]
fn small_writes_are_searchable_at_once_and_score_the_same_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    // A committed part (a large batch commits), then small writes that stay in the tail.
    let mut ids: Vec<ItemId> = store
        .put_batch(
            (0..200)
                .map(|i| {
                    NewItem::new(
                        "docs",
                        Kind::Document,
                        format!("unique{i} {}", common::synthetic_text(i as u64)),
                    )
                })
                .collect(),
        )
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.extend(put_singles(&store, 200, 150));
    assert_all_found(&store, &ids);
    let queries = [
        "river",
        "mountain city",
        "film album novel battle",
        "unique7 unique250 king",
        "queen opera lighthouse",
    ];
    let before: Vec<_> = queries.iter().map(|q| bm25(&store, q, 1000)).collect();
    // Closing commits the tail.
    drop(store);
    let store = common::open(dir.path());
    for (q, b) in queries.iter().zip(&before) {
        assert_same_ranking(b, &bm25(&store, q, 1000), q);
    }
    assert_all_found(&store, &ids);
}

#[test]
fn the_tail_is_committed_as_it_fills_and_nothing_is_lost_across_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    // More single writes than the tail holds: some of them commit it.
    let ids = put_singles(&store, 0, 1300);
    assert_all_found(&store, &ids);
    drop(store);
    let store = common::open(dir.path());
    assert_all_found(&store, &ids);
}

fn for_each_file(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            f(&entry.path());
        }
    }
}

fn truncate_half(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len / 2).unwrap();
}

/// Writes committed and tail items, closes the store, damages `text/` with `damage`, reopens:
/// every item must be found by BM25, exactly once.
fn survives(damage: &dyn Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = common::open(dir.path());
        let mut ids: Vec<ItemId> = store
            .put_batch(
                (0..100)
                    .map(|i| {
                        NewItem::new(
                            "docs",
                            Kind::Document,
                            format!("unique{i} {}", common::synthetic_text(i as u64)),
                        )
                    })
                    .collect(),
            )
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.extend(put_singles(&store, 100, 40));
        ids
    };
    damage(&dir.path().join("text"));
    let store = common::open(dir.path());
    assert_all_found(&store, &ids);
    // And the rebuilt index is sound for the next open.
    drop(store);
    let store = common::open(dir.path());
    assert_all_found(&store, &ids);
}

#[test]
fn a_deleted_text_index_is_rebuilt() {
    survives(&|text| std::fs::remove_dir_all(text).unwrap());
}

#[test]
fn a_text_index_without_meta_json_is_rebuilt() {
    survives(&|text| std::fs::remove_file(text.join("meta.json")).unwrap());
}

#[test]
fn a_text_index_with_truncated_files_is_rebuilt() {
    survives(&|text| for_each_file(text, &mut |p| truncate_half(p)));
}

#[test]
fn a_text_index_with_truncated_segment_files_is_rebuilt() {
    survives(&|text| {
        for_each_file(text, &mut |p| {
            let name = p.file_name().unwrap().to_string_lossy();
            if !name.starts_with('.') && !name.ends_with(".json") {
                truncate_half(p);
            }
        })
    });
}

#[test]
fn a_text_index_with_emptied_files_is_rebuilt() {
    survives(&|text| {
        for_each_file(text, &mut |p| {
            std::fs::write(p, b"").unwrap();
        })
    });
}

#[test]
fn a_text_index_written_before_a_machine_crash_is_rebuilt() {
    // A marker left by a session of another boot: the index may have lost unsynced writes, so
    // it is rebuilt even though tantivy could open it (the planted file goes with it).
    survives(&|text| {
        std::fs::write(text.join("UNSYNCED"), b"another-boot").unwrap();
        std::fs::write(text.join("planted"), b"x").unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    drop(common::open(dir.path()));
    let text = dir.path().join("text");
    assert!(
        !text.join("UNSYNCED").exists(),
        "a clean close removes the marker"
    );
    std::fs::write(text.join("UNSYNCED"), b"another-boot").unwrap();
    std::fs::write(text.join("planted"), b"x").unwrap();
    drop(common::open(dir.path()));
    assert!(!text.join("planted").exists());
}

#[cfg(target_os = "linux")]
#[test]
fn a_text_index_that_outlived_a_process_crash_is_kept() {
    // A marker of this boot: only the process died, the OS kept every write; no rebuild.
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = common::open(dir.path());
        put_singles(&store, 0, 100)
    };
    let text = dir.path().join("text");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(text.join("UNSYNCED"), boot.trim()).unwrap();
    std::fs::write(text.join("planted"), b"x").unwrap();
    let store = common::open(dir.path());
    assert!(text.join("planted").exists());
    assert!(text.join("UNSYNCED").exists(), "marked while open");
    assert_all_found(&store, &ids);
}

#[test]
fn searches_racing_with_writes_and_commits_see_every_acknowledged_item_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(common::open(dir.path()));
    let acked: Arc<Mutex<Vec<ItemId>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (store, acked, done) = (Arc::clone(&store), Arc::clone(&acked), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut x = r + 1;
                let mut checked = 0;
                while !done.load(Ordering::Acquire) {
                    let snapshot: Vec<ItemId> = acked.lock().unwrap().clone();
                    if snapshot.is_empty() {
                        std::thread::yield_now();
                        continue;
                    }
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    // Favour the newest items: they are the ones in the tail or being committed.
                    let back = (x >> 33) as usize % snapshot.len().min(64);
                    let i = snapshot.len() - 1 - back;
                    let hits = bm25(store.as_ref(), &format!("unique{i}"), 10);
                    assert_eq!(
                        hits.iter().map(|h| h.0).collect::<Vec<_>>(),
                        vec![snapshot[i]],
                        "unique{i}"
                    );
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    for i in 0..1100 {
        let id = store
            .put(NewItem::new(
                "docs",
                Kind::Document,
                format!("unique{i} {}", common::synthetic_text(i as u64)),
            ))
            .unwrap()
            .id;
        acked.lock().unwrap().push(id);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

/// Items of `namespace` (one `put_batch`: 64 items or more commit a segment of their own), each
/// holding `{word}{i}` and the shared word `common`.
fn put_namespace(store: &dyn MemoryStore, namespace: &str, word: &str, n: usize) -> Vec<ItemId> {
    store
        .put_batch(
            (0..n)
                .map(|i| NewItem::new(namespace, Kind::Document, format!("{word}{i} common")))
                .collect(),
        )
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// BM25 ids for `query` among `namespaces`, sorted.
fn bm25_in(store: &dyn MemoryStore, query: &str, namespaces: &[&str]) -> Vec<ItemId> {
    let filter = Filter {
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        ..Filter::default()
    };
    let mut ids: Vec<ItemId> = store
        .search(&SearchQuery::new(query, SearchMode::Bm25), &filter, 10_000)
        .unwrap()
        .into_iter()
        .map(|h| h.item.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_search_of_small_namespaces_finds_them_in_every_segment_and_the_tail() {
    // Small namespaces (the search is restricted in tantivy, and segments without them are
    // skipped) spread over segments between large ones, and the tail.
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    put_namespace(&store, "bulk", "bulk", 600);
    let mut small = put_namespace(&store, "small", "small", 100);
    put_namespace(&store, "bulk", "bulkmore", 600);
    let tiny = put_namespace(&store, "tiny", "tiny", 70);
    put_namespace(&store, "bulk", "bulklast", 600);
    for i in 0..5 {
        let item = NewItem::new("small", Kind::Document, format!("smalltail{i} common"));
        small.push(store.put(item).unwrap().id);
    }
    let check = |store: &dyn MemoryStore| {
        let mut expected = small.clone();
        expected.sort();
        assert_eq!(bm25_in(store, "common", &["small"]), expected);
        assert_eq!(bm25_in(store, "small7 smalltail3", &["small"]).len(), 2);
        assert!(bm25_in(store, "bulk7 tiny7", &["small"]).is_empty());
        let mut both: Vec<ItemId> = small.iter().chain(&tiny).copied().collect();
        both.sort();
        assert_eq!(bm25_in(store, "common", &["small", "tiny"]), both);
        assert!(bm25_in(store, "common", &["nowhere"]).is_empty());
    };
    check(&store);
    // Closing commits the tail.
    drop(store);
    check(&common::open(dir.path()));
}
