//! Crash safety: a child process ingests batches (and, on another thread, single items, which
//! take another write path) and reports each acknowledged write on stdout;
//! the parent kills it with SIGKILL mid-stream, reopens the store, and checks that every
//! acknowledged item is present exactly once and found by search.
//!
//! The child is this same test binary, re-run with `AGENTD_CRASH_CHILD` set, so the test needs
//! no extra executable.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentd_memory::{Filter, ItemId, Kind, MemoryStore, NewItem, Page, SearchMode, SearchQuery};

const CHILD_ENV: &str = "AGENTD_CRASH_CHILD";
const BATCH: usize = 50;
/// Writer threads in the child.
const WRITERS: u64 = 3;

/// The child: ingest forever on several threads (so writes share fsyncs through the store's
/// group commit), printing the ids of each batch once `put_batch` returned; one more thread
/// puts single items in the namespace `single`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful when spawned by the parent test.
    };
    let store = common::open(std::path::Path::new(&dir));
    std::thread::scope(|scope| {
        let singles = &store;
        scope.spawn(move || {
            for n in 1u64.. {
                let item = NewItem::new(
                    "single",
                    Kind::Document,
                    format!("singleword{n} {}", common::synthetic_text(n)),
                );
                let stored = singles.put(item).expect("put");
                println!("ACK {}=singleword{n}", stored.id);
            }
        });
        for thread in 0..WRITERS {
            let store = &store;
            scope.spawn(move || {
                let mut n = thread * 1_000_000_000;
                loop {
                    let batch: Vec<NewItem> = (0..BATCH)
                        .map(|_| {
                            n += 1;
                            NewItem::new(
                                "ingest",
                                Kind::Document,
                                format!("uniqueword{n} {}", common::synthetic_text(n)),
                            )
                        })
                        .collect();
                    let stored = store.put_batch(batch).expect("put_batch");
                    let line: Vec<String> = stored
                        .iter()
                        .map(|i| format!("{}={}", i.id, i.content.split(' ').next().unwrap()))
                        .collect();
                    println!("ACK {}", line.join(","));
                }
            });
        }
    });
}

/// Reads one whole line of the child's output; records the items of an `ACK` line. `None` at
/// the end of the output (or at a last line cut short by the kill), else whether it was an ACK.
fn read_ack(reader: &mut impl BufRead, acked: &mut Vec<(ItemId, String)>) -> Option<bool> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with('\n') => {}
        _ => return None,
    }
    let Some(rest) = line.trim_end().strip_prefix("ACK ") else {
        return Some(false);
    };
    for pair in rest.split(',') {
        let (id, word) = pair.split_once('=').expect("a whole ACK line");
        acked.push((id.parse().expect("an item id"), word.to_owned()));
    }
    Some(true)
}

#[test]
fn sigkill_mid_batch_loses_no_acknowledged_item_and_duplicates_none() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(ItemId, String)> = Vec::new();
    // Kill the writer at a different point each time, reopening the same store in between.
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let target = 4 + round * 3;
        let mut batches = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while batches < target && Instant::now() < deadline {
            match read_ack(&mut reader, &mut acked) {
                Some(true) => batches += 1,
                Some(false) => {}
                None => break,
            }
        }
        assert_eq!(batches, target, "the child acknowledged too few batches");
        // Let it get into the next batch, then kill it without warning.
        std::thread::sleep(Duration::from_millis(3 + 7 * round as u64));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        // Anything printed after our last read was acknowledged too (a line the kill cut
        // short is not read: its batch was acknowledged, but the line does not say which items).
        while read_ack(&mut reader, &mut acked).is_some() {}

        let store = common::open(dir.path());
        let list = |namespace: &str| -> Vec<ItemId> {
            store
                .list(&Filter::namespace(namespace), &Page::first(usize::MAX))
                .unwrap()
                .iter()
                .map(|i| i.id)
                .collect()
        };
        let batched = list("ingest");
        // Batches are atomic: the store holds whole batches only.
        assert_eq!(batched.len() % BATCH, 0, "a partial batch survived");
        let ids: Vec<ItemId> = batched.into_iter().chain(list("single")).collect();
        let unique: HashSet<ItemId> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "an item is listed twice");
        assert!(
            acked.iter().any(|(_, word)| word.starts_with("single")),
            "the single writer acknowledged nothing"
        );
        for (id, word) in &acked {
            assert!(unique.contains(id), "acknowledged item {id} was lost");
            let namespace = if word.starts_with("single") {
                "single"
            } else {
                "ingest"
            };
            let hits = store
                .search(
                    &SearchQuery::new(word, SearchMode::Bm25),
                    &Filter::namespace(namespace),
                    5,
                )
                .unwrap();
            assert_eq!(
                hits.iter().filter(|h| h.item.id == *id).count(),
                1,
                "{word} must find its item exactly once"
            );
        }
        let hits = store
            .search(
                &SearchQuery::new("uniqueword1", SearchMode::Hybrid),
                &Filter::namespace("ingest"),
                3,
            )
            .unwrap();
        assert!(!hits.is_empty());
    }
}
