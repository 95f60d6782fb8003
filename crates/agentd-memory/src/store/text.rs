//! The BM25 index: a tantivy index derived from the item store.
//!
//! Every document holds an item's sequence number (the join key with the catalog), namespace,
//! kind, and analysed content (English stemming). Documents are immutable; whether an item is
//! still live and current is decided by the catalog at query time, so superseding an item never
//! touches this index. Each commit records the highest sequence number it contains as its commit
//! payload: that watermark is how [`super::EmbeddedStore::open`] finds items to catch up after a
//! crash between the sled write and the index commit.
//!
//! Queries are built from analysed terms, never parsed, so any user text is a valid query.

use std::collections::BinaryHeap;
use std::path::Path;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery, Weight};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, SegmentReader, TantivyDocument,
    Term,
};

use crate::error::{MemoryError, Result};
use crate::item::MemoryItem;

const TOKENIZER: &str = "en_stem";
/// Query terms beyond this many are ignored (long task texts stay fast to search).
const MAX_QUERY_TERMS: usize = 48;
const WRITER_HEAP_BYTES: usize = 96 * 1024 * 1024;

/// Field handles of the index schema.
#[derive(Clone, Copy)]
struct Fields {
    seq: Field,
    namespace: Field,
    kind: Field,
    content: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let seq = b.add_u64_field("seq", FAST | INDEXED);
    let namespace = b.add_text_field("namespace", STRING);
    let kind = b.add_text_field("kind", STRING);
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::WithFreqs);
    let content = b.add_text_field(
        "content",
        TextOptions::default().set_indexing_options(indexing),
    );
    (
        b.build(),
        Fields {
            seq,
            namespace,
            kind,
            content,
        },
    )
}

/// Restrictions pushed down into the tantivy query (the catalog re-checks every hit anyway).
pub(crate) struct Pushdown<'a> {
    pub namespaces: &'a [&'a str],
    pub kinds: &'a [&'a str],
}

/// The tantivy side of the store.
pub(crate) struct TextIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    analyzer: TextAnalyzer,
}

impl TextIndex {
    /// Opens (or creates) the index in `dir`, returning it with its writer.
    pub fn open(dir: &Path) -> Result<(Self, IndexWriter)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MemoryError::io(format!("creating {}", dir.display()), e))?;
        let (schema, fields) = schema();
        let mmap =
            tantivy::directory::MmapDirectory::open(dir).map_err(|e| MemoryError::Corrupt {
                path: dir.to_owned(),
                reason: e.to_string(),
            })?;
        let index = Index::open_or_create(mmap, schema).map_err(|e| MemoryError::Corrupt {
            path: dir.to_owned(),
            reason: format!("text index: {e}"),
        })?;
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let analyzer = index
            .tokenizers()
            .get(TOKENIZER)
            .expect("en_stem is a built-in tokenizer");
        Ok((
            TextIndex {
                index,
                reader,
                fields,
                analyzer,
            },
            writer,
        ))
    }

    /// The highest sequence number the last commit contains (0 for a new index).
    pub fn watermark(&self) -> Result<u64> {
        let metas = self.index.load_metas()?;
        Ok(metas
            .payload
            .as_deref()
            .and_then(|p| p.strip_prefix("seq:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Queues an item's document. With `replace`, first deletes any document with the same
    /// sequence number (needed when re-indexing during catch-up, where the document may already
    /// be there; fresh writes have fresh sequence numbers and skip the cost).
    pub fn add(&self, writer: &IndexWriter, item: &MemoryItem, replace: bool) -> Result<()> {
        let f = self.fields;
        if replace {
            writer.delete_term(Term::from_field_u64(f.seq, item.seq));
        }
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.seq, item.seq);
        doc.add_text(f.namespace, &item.namespace);
        doc.add_text(f.kind, item.kind.as_str());
        doc.add_text(f.content, &item.content);
        if let Some(title) = item.title() {
            doc.add_text(f.content, title);
        }
        for tag in &item.tags {
            doc.add_text(f.content, tag);
        }
        writer.add_document(doc)?;
        Ok(())
    }

    /// Removes every document of a namespace (takes effect at the next commit).
    pub fn delete_namespace(&self, writer: &IndexWriter, namespace: &str) {
        writer.delete_term(Term::from_field_text(self.fields.namespace, namespace));
    }

    /// Commits with `watermark` as payload and makes the commit visible to searches.
    pub fn commit(&self, writer: &mut IndexWriter, watermark: u64) -> Result<()> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&format!("seq:{watermark}"));
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Analysed, deduplicated query terms.
    fn terms(&self, text: &str) -> Vec<Term> {
        let mut analyzer = self.analyzer.clone();
        let mut stream = analyzer.token_stream(text);
        let mut terms: Vec<Term> = Vec::new();
        while stream.advance() {
            let term = Term::from_field_text(self.fields.content, &stream.token().text);
            if !terms.contains(&term) {
                terms.push(term);
                if terms.len() == MAX_QUERY_TERMS {
                    break;
                }
            }
        }
        terms
    }

    /// Top-`k` documents by BM25 for `text`, among documents for which `accept(seq)` holds.
    /// Returns (seq, score), best first; ties broken by sequence number.
    pub fn search(
        &self,
        text: &str,
        pushdown: &Pushdown<'_>,
        k: usize,
        accept: impl Fn(u64) -> bool + Sync,
    ) -> Result<Vec<(u64, f32)>> {
        let terms = self.terms(text);
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let text_query: Box<dyn Query> = Box::new(BooleanQuery::new(
            terms
                .into_iter()
                .map(|t| {
                    let q: Box<dyn Query> =
                        Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs));
                    (Occur::Should, q)
                })
                .collect(),
        ));
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query)];
        for (field, values) in [
            (self.fields.namespace, pushdown.namespaces),
            (self.fields.kind, pushdown.kinds),
        ] {
            if values.is_empty() {
                continue;
            }
            let any: Vec<(Occur, Box<dyn Query>)> = values
                .iter()
                .map(|v| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(field, v),
                        IndexRecordOption::Basic,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(BooleanQuery::new(any)), 0.0)),
            ));
        }
        let query: Box<dyn Query> = if clauses.len() == 1 {
            clauses.pop().expect("one clause").1
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.reader.searcher();
        let collector = FilteredTopK { k, accept: &accept };
        let mut hits = searcher.search(&*query, &collector)?;
        hits.truncate(k);
        Ok(hits)
    }
}

/// Top-k collector that checks each candidate against the catalog (through `accept`) and keeps
/// tantivy's block-max WAND pruning: the threshold handed back is the k-th best accepted score.
struct FilteredTopK<'a, F> {
    k: usize,
    accept: &'a F,
}

/// Heap entry ordered so the *worst* hit is on top (score ascending, then seq descending).
#[derive(PartialEq)]
struct Worst(f32, u64);
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

/// Unused segment collector type: [`FilteredTopK`] overrides `collect_segment`.
struct NoopSegment;
impl SegmentCollector for NoopSegment {
    type Fruit = Vec<(u64, f32)>;
    fn collect(&mut self, _doc: DocId, _score: Score) {}
    fn harvest(self) -> Self::Fruit {
        Vec::new()
    }
}

impl<F: Fn(u64) -> bool + Sync> Collector for FilteredTopK<'_, F> {
    type Fruit = Vec<(u64, f32)>;
    type Child = NoopSegment;

    fn for_segment(&self, _ord: u32, _segment: &SegmentReader) -> tantivy::Result<NoopSegment> {
        Ok(NoopSegment)
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(u64, f32)>>) -> tantivy::Result<Self::Fruit> {
        let mut all: Vec<(u64, f32)> = fruits.into_iter().flatten().collect();
        all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(self.k);
        Ok(all)
    }

    fn collect_segment(
        &self,
        weight: &dyn Weight,
        _ord: u32,
        reader: &SegmentReader,
    ) -> tantivy::Result<Vec<(u64, f32)>> {
        let seqs: Column<u64> = reader.fast_fields().u64("seq")?;
        let alive = reader.alive_bitset();
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(self.k + 1);
        let k = self.k;
        let accept = self.accept;
        weight.for_each_pruning(Score::MIN, reader, &mut |doc, score| {
            if alive.is_none_or(|a| a.is_alive(doc))
                && let Some(seq) = seqs.first(doc)
                && accept(seq)
            {
                heap.push(Worst(score, seq));
                if heap.len() > k {
                    heap.pop();
                }
            }
            if heap.len() == k {
                heap.peek().map_or(Score::MIN, |w| w.0)
            } else {
                Score::MIN
            }
        })?;
        Ok(heap.into_iter().map(|w| (w.1, w.0)).collect())
    }
}
