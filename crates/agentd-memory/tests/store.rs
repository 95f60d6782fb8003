//! The embedded store on a real directory: writes, reads, filters, supersession, search modes,
//! reopening, index catch-up and refusing foreign or mismatched directories.

mod common;

use agentd_memory::{
    EmbeddedStore, Filter, Kind, MemoryError, MemoryStore, NewItem, Page, Producer, Readers,
    SearchMode, SearchQuery,
};
use common::{open, options, put_docs};

#[test]
fn put_get_and_read_your_writes_in_every_search_mode() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let item = store
        .put(
            NewItem::new(
                "run-1",
                Kind::Fact,
                "The Eiffel Tower stands in Paris, France.",
            )
            .producer(Producer::new("researcher", "research", 1))
            .stage("gather")
            .tag("geo")
            .payload(serde_json::json!({"title": "Eiffel Tower"})),
        )
        .unwrap();
    assert_eq!(item.version, 1);
    assert!(item.tokens > 5, "token count is cached: {}", item.tokens);
    assert_eq!(store.get(item.id).unwrap().unwrap(), item);

    for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = store
            .search(
                &SearchQuery::new("Where is the Eiffel Tower?", mode),
                &Filter::namespace("run-1"),
                5,
            )
            .unwrap();
        assert_eq!(hits.len(), 1, "{mode:?}");
        assert_eq!(hits[0].item.id, item.id, "{mode:?}");
        assert!(hits[0].score > 0.0);
    }
    // An absurd result size is clamped, not a panic.
    for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = store
            .search(
                &SearchQuery::new("Eiffel", mode),
                &Filter::namespace("run-1"),
                usize::MAX,
            )
            .unwrap();
        assert_eq!(hits.len(), 1, "{mode:?}");
    }
    // Another namespace sees nothing.
    let hits = store
        .search(
            &SearchQuery::new("Eiffel Tower", SearchMode::Hybrid),
            &Filter::namespace("run-2"),
            5,
        )
        .unwrap();
    assert!(hits.is_empty());
}

#[test]
fn bm25_ranks_the_matching_document_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = put_docs(
        &store,
        "docs",
        &[
            "Marie Curie won the Nobel Prize in Physics in 1903.",
            "The Amazon river flows through Brazil and Peru.",
            "Mount Everest is the highest mountain above sea level.",
            "Curie also won the Nobel Prize in Chemistry in 1911.",
        ],
    );
    let hits = store
        .search(
            &SearchQuery::new("highest mountain", SearchMode::Bm25),
            &Filter::namespace("docs"),
            2,
        )
        .unwrap();
    assert_eq!(hits[0].item.id, ids[2]);
    let hits = store
        .search(
            &SearchQuery::new("Nobel prize Curie", SearchMode::Hybrid),
            &Filter::namespace("docs"),
            2,
        )
        .unwrap();
    let top: Vec<_> = hits.iter().map(|h| h.item.id).collect();
    assert!(top.contains(&ids[0]) && top.contains(&ids[3]), "{hits:#?}");
}

#[test]
fn supersede_by_key_keeps_history_and_hides_old_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v1 = store
        .put(NewItem::new("run", Kind::Answer, "The answer is Lyon").key("answer"))
        .unwrap();
    let v2 = store
        .put(NewItem::new("run", Kind::Answer, "The answer is Paris").key("answer"))
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert!(store.get(v1.id).unwrap().unwrap().superseded);
    assert!(!store.get(v2.id).unwrap().unwrap().superseded);

    let listed = store
        .list(&Filter::namespace("run"), &Page::default())
        .unwrap();
    assert_eq!(listed.iter().map(|i| i.id).collect::<Vec<_>>(), vec![v2.id]);
    let all = store
        .list(
            &Filter::namespace("run").include_superseded(true),
            &Page::default(),
        )
        .unwrap();
    assert_eq!(all.len(), 2);
    for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = store
            .search(
                &SearchQuery::new("answer Lyon", mode),
                &Filter::namespace("run"),
                10,
            )
            .unwrap();
        assert!(hits.iter().all(|h| h.item.id != v1.id), "{mode:?}");
    }
    let history = store.history("run", "answer").unwrap();
    assert_eq!(
        history.iter().map(|i| i.version).collect::<Vec<_>>(),
        vec![1, 2]
    );

    // A batch with the same key twice versions in order.
    let batch = store
        .put_batch(vec![
            NewItem::new("run", Kind::Answer, "Marseille").key("answer"),
            NewItem::new("run", Kind::Answer, "Nice").key("answer"),
        ])
        .unwrap();
    assert_eq!((batch[0].version, batch[1].version), (3, 4));
    assert!(batch[0].superseded && !batch[1].superseded);

    // Supersession survives a reopen.
    drop(store);
    let store = open(dir.path());
    let listed = store
        .list(&Filter::namespace("run"), &Page::default())
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].content, "Nice");
    let next = store
        .put(NewItem::new("run", Kind::Answer, "Toulouse").key("answer"))
        .unwrap();
    assert_eq!(next.version, 5);
}

#[test]
fn filters_apply_to_listing_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store
        .put(
            NewItem::new("run", Kind::Plan, "plan: find the river")
                .producer(Producer::new("planner", "plan", 1))
                .stage("plan"),
        )
        .unwrap();
    let b = store
        .put(
            NewItem::new("run", Kind::Evidence, "the river Seine flows through Paris")
                .producer(Producer::new("researcher", "research", 2))
                .stage("gather")
                .tag("water")
                .readers(Readers::roles(["answerer"])),
        )
        .unwrap();
    let c = store
        .put(
            NewItem::new(
                "run",
                Kind::Evidence,
                "the river Thames flows through London",
            )
            .producer(Producer::new("researcher", "research", 3))
            .stage("gather"),
        )
        .unwrap();
    let ids = |f: &Filter| -> Vec<_> {
        store
            .list(f, &Page::default())
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    };
    let ns = || Filter::namespace("run");
    assert_eq!(ids(&ns()), vec![a.id, b.id, c.id]);
    assert_eq!(ids(&ns().kinds([Kind::Evidence])), vec![b.id, c.id]);
    assert_eq!(ids(&ns().stages(["plan"])), vec![a.id]);
    assert_eq!(ids(&ns().rounds(2, 3)), vec![b.id, c.id]);
    assert_eq!(ids(&ns().producer_roles(["planner"])), vec![a.id]);
    assert_eq!(ids(&ns().producer_nodes(["research"])), vec![b.id, c.id]);
    assert_eq!(ids(&ns().tag("water")), vec![b.id]);
    assert_eq!(ids(&ns().reader("critic")), vec![a.id, c.id]);
    assert_eq!(ids(&ns().reader("answerer")), vec![a.id, b.id, c.id]);
    assert_eq!(ids(&ns().reader("nobody-known")), vec![a.id, c.id]);
    assert_eq!(ids(&Filter::namespace("other")), Vec::new());
    assert_eq!(store.count(&ns().kinds([Kind::Evidence])).unwrap(), 2);

    // Paging: newest first, with a cursor.
    let first = store.list(&ns(), &Page::newest(2)).unwrap();
    assert_eq!(
        first.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![c.id, b.id]
    );
    let rest = store
        .list(
            &ns(),
            &Page {
                after_seq: Some(first[1].seq),
                ..Page::newest(2)
            },
        )
        .unwrap();
    assert_eq!(rest.iter().map(|i| i.id).collect::<Vec<_>>(), vec![a.id]);

    // Search honours the reader: the critic never sees b, whatever the query.
    for mode in [SearchMode::Bm25, SearchMode::Vector, SearchMode::Hybrid] {
        let hits = store
            .search(
                &SearchQuery::new("river Seine Paris", mode),
                &ns().reader("critic"),
                10,
            )
            .unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|h| h.item.id != b.id), "{mode:?}");
        let hits = store
            .search(
                &SearchQuery::new("river Seine Paris", mode),
                &ns().kinds([Kind::Plan]),
                10,
            )
            .unwrap();
        assert!(hits.iter().all(|h| h.item.kind == Kind::Plan), "{mode:?}");
    }
}

#[test]
fn invalid_items_reject_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .put_batch(vec![
            NewItem::new("run", Kind::Fact, "fine"),
            NewItem::new("run", Kind::Fact, "bad").confidence(2.0),
        ])
        .unwrap_err();
    assert!(matches!(err, MemoryError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("item 1 of the batch"), "{err}");
    assert_eq!(store.count(&Filter::namespace("run")).unwrap(), 0);
}

#[test]
fn delete_namespace_removes_items_everywhere_and_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put_docs(&store, "gone", &["alpha beta", "beta gamma"]);
    let kept = put_docs(&store, "kept", &["alpha beta delta"]);
    assert_eq!(store.delete_namespace("gone").unwrap(), 2);
    assert_eq!(store.delete_namespace("gone").unwrap(), 0);
    let hits = store
        .search(
            &SearchQuery::new("alpha beta", SearchMode::Hybrid),
            &Filter::default(),
            10,
        )
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.item.id).collect::<Vec<_>>(), kept);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.count(&Filter::namespace("gone")).unwrap(), 0);
    let names: Vec<_> = store
        .namespaces()
        .unwrap()
        .into_iter()
        .map(|n| n.namespace)
        .collect();
    assert_eq!(names, vec!["kept".to_string()]);
    // The namespace can be used again, and old documents do not come back with it.
    put_docs(&store, "gone", &["epsilon"]);
    let hits = store
        .search(
            &SearchQuery::new("alpha", SearchMode::Bm25),
            &Filter::namespace("gone"),
            10,
        )
        .unwrap();
    assert!(hits.is_empty());
}

#[test]
fn reopen_keeps_everything_and_a_lost_text_index_is_rebuilt_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..300)
        .map(|i| format!("document {i} about topic{} and word{}", i % 7, i))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = {
        let store = open(dir.path());
        put_docs(&store, "docs", &refs)
    };
    // Simulate an index that lags behind sled: remove it entirely.
    std::fs::remove_dir_all(dir.path().join("text")).unwrap();
    let store = open(dir.path());
    assert_eq!(store.count(&Filter::namespace("docs")).unwrap(), 300);
    for (i, id) in ids.iter().enumerate().step_by(37) {
        let hits = store
            .search(
                &SearchQuery::new(&format!("word{i}"), SearchMode::Bm25),
                &Filter::namespace("docs"),
                10,
            )
            .unwrap();
        assert_eq!(
            hits.len(),
            1,
            "word{i} is in exactly one document: {hits:#?}"
        );
        assert_eq!(hits[0].item.id, *id);
    }
    // A second reopen does not index anything twice.
    drop(store);
    let store = open(dir.path());
    let hits = store
        .search(
            &SearchQuery::new("document", SearchMode::Bm25),
            &Filter::namespace("docs"),
            1000,
        )
        .unwrap();
    assert_eq!(hits.len(), 300);
}

#[test]
fn a_text_index_rolled_back_to_an_older_commit_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let early = put_docs(
        &store,
        "docs",
        &["first early document", "second early document"],
    );
    drop(store);
    copy_dir(&dir.path().join("text"), backup.path());
    let store = open(dir.path());
    let late = put_docs(&store, "docs", &["third late document"]);
    drop(store);
    std::fs::remove_dir_all(dir.path().join("text")).unwrap();
    copy_dir(backup.path(), &dir.path().join("text"));

    let store = open(dir.path());
    let hits = store
        .search(
            &SearchQuery::new("document", SearchMode::Bm25),
            &Filter::namespace("docs"),
            10,
        )
        .unwrap();
    let mut found: Vec<_> = hits.iter().map(|h| h.item.id).collect();
    found.sort();
    let mut expected = [early, late].concat();
    expected.sort();
    assert_eq!(found, expected);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn foreign_corrupt_and_mismatched_directories_are_clear_errors() {
    // A directory with someone else's files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = EmbeddedStore::open(dir.path(), options()).err().unwrap();
    assert!(matches!(err, MemoryError::ForeignDirectory { .. }), "{err}");
    assert!(err.to_string().contains("not an agentd memory store"));

    // A file, not a directory.
    let file = dir.path().join("notes.txt");
    let err = EmbeddedStore::open(&file, options()).err().unwrap();
    assert!(matches!(err, MemoryError::ForeignDirectory { .. }), "{err}");

    // A damaged marker.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(dir.path().join("STORE"), "{ not json").unwrap();
    let err = EmbeddedStore::open(dir.path(), options()).err().unwrap();
    assert!(matches!(err, MemoryError::Corrupt { .. }), "{err}");

    // A newer schema.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::write(
        dir.path().join("STORE"),
        r#"{"format":"agentd-memory","schema_version":99}"#,
    )
    .unwrap();
    let err = EmbeddedStore::open(dir.path(), options()).err().unwrap();
    assert!(
        matches!(err, MemoryError::UnsupportedSchema { found: 99, .. }),
        "{err}"
    );

    // Damaged item data.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        put_docs(&store, "docs", &["some text"]);
    }
    corrupt_sled(&dir.path().join("items"));
    match EmbeddedStore::open(dir.path(), options()) {
        Err(MemoryError::Corrupt { .. }) | Err(MemoryError::Sled(_)) => {}
        Err(other) => panic!("expected a corruption error, got {other}"),
        Ok(store) => {
            // sled may not notice damage to bytes it does not read; then the data must be intact.
            assert_eq!(store.count(&Filter::namespace("docs")).unwrap(), 1);
        }
    }

    // Another embedder.
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let err = EmbeddedStore::open(dir.path(), common::options_with_dimension(64))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            MemoryError::ConfigMismatch {
                what: "embedder",
                ..
            }
        ),
        "{err}"
    );
}

/// Overwrites the middle of every sled file with garbage.
fn corrupt_sled(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            corrupt_sled(&path);
        } else {
            let mut bytes = std::fs::read(&path).unwrap();
            let len = bytes.len();
            for b in bytes.iter_mut().skip(len / 4).take(len / 2) {
                *b = 0xA5;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let err = EmbeddedStore::open(dir.path(), options()).err().unwrap();
    assert!(
        matches!(err, MemoryError::Locked { .. } | MemoryError::Text(_)),
        "{err}"
    );
}

#[test]
fn large_namespaces_use_the_graph_and_still_see_fresh_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.ann_min_rows = 500;
    let store = EmbeddedStore::open(dir.path(), opts).unwrap();
    let texts: Vec<String> = (0..1500)
        .map(|i| common::synthetic_text(i as u64))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    put_docs(&store, "big", &refs);
    store.wait_for_vector_index();
    // Fresh write after the graph caught up: found through the exact tail scan.
    let fresh = store
        .put(NewItem::new(
            "big",
            Kind::Fact,
            "zebra quagga okapi giraffe savanna",
        ))
        .unwrap();
    let hits = store
        .search(
            &SearchQuery::new("zebra quagga okapi giraffe savanna", SearchMode::Vector),
            &Filter::namespace("big"),
            5,
        )
        .unwrap();
    assert_eq!(hits[0].item.id, fresh.id);

    // Graph results agree with an exact scan on most queries.
    let all = store
        .list(&Filter::namespace("big"), &Page::first(10_000))
        .unwrap();
    let ids: Vec<_> = all.iter().map(|i| i.id).collect();
    let vectors = store.embeddings(&ids).unwrap();
    let embedder = MemoryStore::embedder(&store).clone();
    let mut agree = 0;
    for q in 0..20u64 {
        let text = common::synthetic_text(10_000 + q);
        let v = embedder.embed_query(&text).unwrap();
        let ann: Vec<_> = store
            .search(
                &SearchQuery::new(&text, SearchMode::Vector).with_vector(&v),
                &Filter::namespace("big"),
                10,
            )
            .unwrap()
            .into_iter()
            .map(|h| h.item.id)
            .collect();
        let mut exact: Vec<(f32, _)> = ids
            .iter()
            .zip(&vectors)
            .map(|(id, u)| {
                let u = u.as_ref().unwrap();
                (u.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>(), *id)
            })
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        agree += exact[..10]
            .iter()
            .filter(|(_, id)| ann.contains(id))
            .count();
    }
    assert!(agree >= 180, "recall@10 of the graph: {agree}/200");

    // The graph is saved on close and reused on open; results are the same.
    let probe = common::synthetic_text(20_000);
    let before: Vec<_> = store
        .search(
            &SearchQuery::new(&probe, SearchMode::Vector),
            &Filter::namespace("big"),
            10,
        )
        .unwrap()
        .into_iter()
        .map(|h| h.item.id)
        .collect();
    drop(store);
    let saved = std::fs::read_dir(dir.path().join("graphs"))
        .unwrap()
        .count();
    assert_eq!(saved, 1, "one graph file for the one large namespace");
    let mut opts = options();
    opts.ann_min_rows = 500;
    let store = EmbeddedStore::open(dir.path(), opts).unwrap();
    let after: Vec<_> = store
        .search(
            &SearchQuery::new(&probe, SearchMode::Vector),
            &Filter::namespace("big"),
            10,
        )
        .unwrap()
        .into_iter()
        .map(|h| h.item.id)
        .collect();
    assert_eq!(before, after);
    // A damaged graph file is ignored (rebuilt), never an error.
    drop(store);
    for f in std::fs::read_dir(dir.path().join("graphs")).unwrap() {
        std::fs::write(f.unwrap().path(), b"AGDHNSW1 garbage").unwrap();
    }
    let mut opts = options();
    opts.ann_min_rows = 500;
    let store = EmbeddedStore::open(dir.path(), opts).unwrap();
    store.wait_for_vector_index();
    assert_eq!(store.count(&Filter::namespace("big")).unwrap(), 1501);
}

#[test]
fn concurrent_writers_share_fsyncs_and_keep_versions_and_items_exact() {
    // Writers on several threads: their fsyncs are shared (group commit) and the text index's
    // tail is committed in the background while they write; every acknowledged item must be
    // there exactly once, versions of a shared key must be 1..=n without gaps or repeats, and
    // all of it must survive a reopen.
    const THREADS: usize = 4;
    const PUTS: usize = 320;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let acked: Vec<Vec<(agentd_memory::ItemId, u32)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = &store;
                scope.spawn(move || {
                    (0..PUTS)
                        .map(|i| {
                            let item = store
                                .put(
                                    NewItem::new(
                                        "shared",
                                        Kind::Fact,
                                        format!(
                                            "writer{t}x{i} {}",
                                            common::synthetic_text(i as u64)
                                        ),
                                    )
                                    .key("hot"),
                                )
                                .unwrap();
                            (item.id, item.version)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let check = |store: &EmbeddedStore| {
        let mut versions: Vec<u32> = acked.iter().flatten().map(|&(_, v)| v).collect();
        versions.sort_unstable();
        assert_eq!(versions, (1..=(THREADS * PUTS) as u32).collect::<Vec<_>>());
        let listed = store
            .list(
                &Filter::namespace("shared").include_superseded(true),
                &Page::first(usize::MAX),
            )
            .unwrap();
        assert_eq!(listed.len(), THREADS * PUTS);
        let current = store
            .list(&Filter::namespace("shared"), &Page::first(usize::MAX))
            .unwrap();
        assert_eq!(current.len(), 1, "one current version of the key");
        assert_eq!(current[0].version, (THREADS * PUTS) as u32);
        // Superseded items are out of search by default; with them included, each writer's
        // items are found by their unique word, exactly once.
        for (t, items) in acked.iter().enumerate() {
            for (i, (id, _)) in items.iter().enumerate().step_by(37) {
                let hits = store
                    .search(
                        &SearchQuery::new(&format!("writer{t}x{i}"), SearchMode::Bm25),
                        &Filter::namespace("shared").include_superseded(true),
                        5,
                    )
                    .unwrap();
                assert_eq!(
                    hits.iter().filter(|h| h.item.id == *id).count(),
                    1,
                    "writer{t}x{i}"
                );
            }
        }
    };
    check(&store);
    // Every write waited for a flush, at most one of its own.
    let flushes = store.write_flushes();
    assert!(
        (1..=(THREADS * PUTS) as u64).contains(&flushes),
        "{flushes}"
    );
    drop(store);
    let store = open(dir.path());
    check(&store);
    // Alone, a writer flushes once per write.
    for i in 0..3 {
        store
            .put(NewItem::new("alone", Kind::Fact, format!("alone {i}")))
            .unwrap();
    }
    assert_eq!(store.write_flushes(), 3);
}
