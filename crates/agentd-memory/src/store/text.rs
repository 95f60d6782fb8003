//! The BM25 index: a tantivy index derived from the item store, plus an in-memory tail.
//!
//! Every document holds an item's sequence number (the join key with the catalog), namespace,
//! kind, and analysed content (English stemming). Documents are immutable; whether an item is
//! still live and current is decided by the catalog at query time, so superseding an item never
//! touches this index. Each commit records the highest sequence number it contains as its commit
//! payload: that watermark is how [`super::EmbeddedStore::open`] finds items to catch up after a
//! crash (everything acknowledged above it is in sled but maybe not in the index).
//!
//! A tantivy commit costs milliseconds whatever its size (it finishes a segment: a thread
//! hand-off, a few megabytes of hash table to allocate and walk, a handful of new files, a
//! reader reload), so small writes are not committed one by one. Their documents go to the
//! index writer (uncommitted) and to the [`Tail`], an in-memory inverted list of the documents
//! added since the last commit. A search scores the committed segments and the tail with the
//! same BM25 statistics (committed plus tail: document count, token count, document
//! frequencies, through [`Bm25StatisticsProvider`]) and the same [`Bm25Weight`] and quantised
//! field norms tantivy uses, so a document scores the same before and after the commit that
//! moves it out of the tail (up to the order of a float sum).
//!
//! Tail documents reach the index writer only when they are committed, and the commit runs off
//! the write path: when the tail grows past [`TAIL_MAX_DOCS`] documents or [`TAIL_MAX_TOKENS`]
//! tokens the store wakes its committer thread, which *freezes* the tail (moves it aside, still
//! searchable, while new documents start a fresh tail), adds the frozen documents to the index
//! writer, commits, and then replaces the searcher and drops the frozen tail in one step, so a
//! search sees every document exactly once. Large batches, namespace deletions and close commit
//! inline (everything pending with them). A failed commit rolls the writer back and keeps the
//! frozen tail, documents included, for the next attempt.
//!
//! Queries are built from analysed terms, never parsed, so any user text is a valid query.

use std::collections::{BinaryHeap, HashMap};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::{
    Bm25StatisticsProvider, Bm25Weight, BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery,
    Weight,
};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocId, Index, IndexReader, IndexWriter, ReloadPolicy, Score, Searcher, SegmentReader,
    TantivyDocument, Term,
};

use super::background;
use super::textdir::{self, UnsyncedDirectory};
use crate::error::{MemoryError, Result};
use crate::item::{ItemId, MemoryItem};

const TOKENIZER: &str = "en_stem";
/// Query terms beyond this many are ignored (long task texts stay fast to search).
const MAX_QUERY_TERMS: usize = 48;
const WRITER_HEAP_BYTES: usize = 96 * 1024 * 1024;
/// The tail is committed once it holds this many documents...
pub(crate) const TAIL_MAX_DOCS: usize = 1024;
/// ...or this many tokens.
pub(crate) const TAIL_MAX_TOKENS: u64 = 1 << 20;
/// The name of tantivy's indexing threads (`thrd-tantivy-index{N}`) as the OS keeps it
/// (15 bytes).
const INDEXING_THREAD: &str = "thrd-tantivy-in";
/// The prefix of tantivy's merge threads (`merge_thread_{N}`).
const MERGE_THREAD: &str = "merge_thread_";
/// tantivy's segment updater thread.
const UPDATER_THREAD: &str = "segment_updater";

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

/// The texts of an item that are indexed (as values of the `content` field).
fn indexed_texts(item: &MemoryItem) -> impl Iterator<Item = &str> {
    std::iter::once(item.content.as_str())
        .chain(item.title())
        .chain(item.tags.iter().map(String::as_str))
}

/// Restrictions pushed down into the tantivy query (the catalog re-checks every hit anyway).
pub(crate) struct Pushdown<'a> {
    pub namespaces: &'a [&'a str],
    pub kinds: &'a [&'a str],
}

/// One document of the tail.
struct TailDoc {
    seq: u64,
    id: ItemId,
    /// Index into the tail's namespaces.
    namespace: u32,
    kind: Box<str>,
    /// Quantised token count of the content field, as tantivy stores it.
    fieldnorm_id: u8,
}

/// A tail document analysed outside the locks; [`Analysed::assign`] gives it its item's id and
/// sequence number once the store has assigned them.
pub(crate) struct Analysed {
    doc: TailDoc,
    namespace: Box<str>,
    /// Term text and frequency.
    terms: Vec<(Box<str>, u32)>,
    tokens: u64,
    /// The index document, without its sequence number (added at commit).
    document: TantivyDocument,
}

impl Analysed {
    /// Sets the item's id and sequence number.
    pub fn assign(&mut self, id: ItemId, seq: u64) {
        self.doc.id = id;
        self.doc.seq = seq;
    }
}

/// How full the tail is after an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TailFill {
    /// Below the commit threshold.
    Room,
    /// Past [`TAIL_MAX_DOCS`] or [`TAIL_MAX_TOKENS`]: time for the committer.
    Full,
    /// Several times past it (the committer is falling behind): the writer commits itself.
    Overfull,
}

/// The tail grows this many times past its commit threshold before writers commit themselves.
const TAIL_OVERFULL_FACTOR: u64 = 8;

/// Documents written since the last commit, searchable in memory, with their index documents
/// (added to the index writer at commit).
#[derive(Default)]
struct Tail {
    docs: Vec<TailDoc>,
    /// Namespace → its index in the documents (namespaces compared as integers in a search's
    /// inner loop).
    namespaces: HashMap<Box<str>, u32>,
    /// Term text → (document index, term frequency).
    postings: HashMap<Box<str>, Vec<(u32, u32)>>,
    /// Tokens of the content field over all documents.
    tokens: u64,
    /// Index documents, in the order of `docs`, without their sequence numbers.
    documents: Vec<TantivyDocument>,
}

impl Tail {
    fn push(&mut self, analysed: Analysed) {
        let index = self.docs.len() as u32;
        for (term, tf) in analysed.terms {
            self.postings.entry(term).or_default().push((index, tf));
        }
        self.tokens += analysed.tokens;
        let mut doc = analysed.doc;
        doc.namespace = self.namespace_id(analysed.namespace);
        self.docs.push(doc);
        self.documents.push(analysed.document);
    }

    /// The index of `namespace`, given one if it has none yet.
    fn namespace_id(&mut self, namespace: Box<str>) -> u32 {
        let next = self.namespaces.len() as u32;
        *self.namespaces.entry(namespace).or_insert(next)
    }

    /// Appends another tail's documents (which are newer).
    fn absorb(&mut self, other: Tail) {
        if self.docs.is_empty() {
            *self = other;
            return;
        }
        let offset = self.docs.len() as u32;
        let mut renumbered = vec![0u32; other.namespaces.len()];
        for (namespace, id) in other.namespaces {
            renumbered[id as usize] = self.namespace_id(namespace);
        }
        for (term, postings) in other.postings {
            self.postings
                .entry(term)
                .or_default()
                .extend(postings.into_iter().map(|(doc, tf)| (doc + offset, tf)));
        }
        self.tokens += other.tokens;
        self.docs.extend(other.docs.into_iter().map(|mut d| {
            d.namespace = renumbered[d.namespace as usize];
            d
        }));
        self.documents.extend(other.documents);
    }

    fn fill(&self) -> TailFill {
        let docs = self.docs.len() as u64;
        let max_docs = TAIL_MAX_DOCS as u64;
        if docs >= TAIL_OVERFULL_FACTOR * max_docs
            || self.tokens >= TAIL_OVERFULL_FACTOR * TAIL_MAX_TOKENS
        {
            TailFill::Overfull
        } else if docs >= max_docs || self.tokens >= TAIL_MAX_TOKENS {
            TailFill::Full
        } else {
            TailFill::Room
        }
    }
}

/// What a search reads: the committed segments, the tail being committed and the tail, swapped
/// together by a commit.
struct Published {
    searcher: Searcher,
    /// Documents a commit in progress (or a failed one) is adding to the index.
    frozen: Tail,
    tail: Tail,
}

/// BM25 statistics over the committed segments and the tail together.
struct Stats<'a> {
    published: &'a Published,
    content: Field,
}

impl Bm25StatisticsProvider for Stats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let tail = if field == self.content {
            self.published.frozen.tokens + self.published.tail.tokens
        } else {
            0
        };
        Ok(self.published.searcher.total_num_tokens(field)? + tail)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(
            Bm25StatisticsProvider::total_num_docs(&self.published.searcher)?
                + self.published.frozen.docs.len() as u64
                + self.published.tail.docs.len() as u64,
        )
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let tail = match term.value().as_str() {
            Some(text) if term.field() == self.content => {
                [&self.published.frozen, &self.published.tail]
                    .iter()
                    .map(|t| t.postings.get(text).map_or(0, |p| p.len() as u64))
                    .sum()
            }
            _ => 0,
        };
        Ok(self.published.searcher.doc_freq(term)? + tail)
    }
}

/// The tantivy side of the store.
pub(crate) struct TextIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    analyzer: TextAnalyzer,
    published: RwLock<Published>,
    /// The watermark of the last commit (never lowered).
    committed: AtomicU64,
}

impl TextIndex {
    /// Opens (or creates) the index in `dir`, returning it with its writer and whether it is
    /// new (created, or rebuilt because it could not be trusted: then the caller re-indexes
    /// every item). An index that may have lost unsynced writes to a machine crash, or that
    /// tantivy cannot open, is deleted and started afresh (see [`super::textdir`]).
    pub fn open(dir: &Path) -> Result<(Self, TextWriter, bool)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MemoryError::io(format!("creating {}", dir.display()), e))?;
        let mut fresh = false;
        if let Err(reason) = textdir::check(dir) {
            tracing::warn!(path = %dir.display(), %reason, "the text index may be damaged; rebuilding it from the item store");
            wipe(dir)?;
            fresh = true;
        }
        fresh |= !dir.join("meta.json").exists();
        let (text, writer) = match Self::try_open(dir) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "the text index is unreadable; rebuilding it from the item store");
                wipe(dir)?;
                fresh = true;
                Self::try_open(dir)?
            }
        };
        // From here on the index is written without syncs.
        textdir::mark(dir)?;
        Ok((
            text,
            TextWriter {
                writer: Some(writer),
                dir: dir.to_owned(),
            },
            fresh,
        ))
    }

    fn try_open(dir: &Path) -> Result<(Self, IndexWriter)> {
        let corrupt = |e: String| MemoryError::Corrupt {
            path: dir.to_owned(),
            reason: format!("text index: {e}"),
        };
        // tantivy may panic rather than fail on some damaged files.
        std::panic::catch_unwind(|| -> Result<(Self, IndexWriter)> {
            let (schema, fields) = schema();
            let directory = UnsyncedDirectory::open(dir)?;
            let index =
                Index::open_or_create(directory, schema).map_err(|e| corrupt(e.to_string()))?;
            // Opening the reader opens every segment; reading the metas checks the payload.
            let reader: IndexReader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .try_into()
                .map_err(|e: tantivy::TantivyError| corrupt(e.to_string()))?;
            index.load_metas().map_err(|e| corrupt(e.to_string()))?;
            // tantivy's indexing and merge threads, started with the writer, inherit the
            // priority of the thread that creates it: background work.
            let writer = background::spawn_low_priority(|| {
                index.writer_with_num_threads(1, WRITER_HEAP_BYTES)
            })
            .map_err(|e| corrupt(e.to_string()))?;
            let analyzer = index
                .tokenizers()
                .get(TOKENIZER)
                .expect("en_stem is a built-in tokenizer");
            let published = RwLock::new(Published {
                searcher: reader.searcher(),
                frozen: Tail::default(),
                tail: Tail::default(),
            });
            Ok((
                TextIndex {
                    index,
                    reader,
                    fields,
                    analyzer,
                    published,
                    committed: AtomicU64::new(0),
                },
                writer,
            ))
        })
        .unwrap_or_else(|_| Err(corrupt("opening it panicked".into())))
    }

    /// The highest sequence number the last commit contains (0 for a new index).
    pub fn watermark(&self) -> Result<u64> {
        let metas = self.index.load_metas()?;
        let watermark = metas
            .payload
            .as_deref()
            .and_then(|p| p.strip_prefix("seq:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        self.committed.fetch_max(watermark, Ordering::AcqRel);
        Ok(watermark)
    }

    /// An item's index document, without its sequence number.
    fn document(&self, item: &MemoryItem) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.namespace, &item.namespace);
        doc.add_text(f.kind, item.kind.as_str());
        for text in indexed_texts(item) {
            doc.add_text(f.content, text);
        }
        doc
    }

    /// Queues an item's document in the index writer (searchable after the next commit). With
    /// `replace`, first deletes any document with the same sequence number (needed when
    /// re-indexing during catch-up, where the document may already be there; fresh writes have
    /// fresh sequence numbers and skip the cost).
    pub fn add(&self, writer: &IndexWriter, item: &MemoryItem, replace: bool) -> Result<()> {
        if replace {
            writer.delete_term(Term::from_field_u64(self.fields.seq, item.seq));
        }
        let mut doc = self.document(item);
        doc.add_u64(self.fields.seq, item.seq);
        writer.add_document(doc)?;
        Ok(())
    }

    /// Analyses an item the way tantivy indexes it, for the tail. Needs neither the item's id
    /// nor its sequence number (see [`Analysed::assign`]).
    pub fn analyse(&self, item: &MemoryItem) -> Analysed {
        let mut analyzer = self.analyzer.clone();
        let mut tf: HashMap<Box<str>, u32> = HashMap::new();
        let mut tokens = 0u64;
        for text in indexed_texts(item) {
            let mut stream = analyzer.token_stream(text);
            while stream.advance() {
                let token = stream.token().text.as_str();
                match tf.get_mut(token) {
                    Some(n) => *n += 1,
                    None => {
                        tf.insert(token.into(), 1);
                    }
                }
                tokens += 1;
            }
        }
        Analysed {
            doc: TailDoc {
                seq: item.seq,
                id: item.id,
                namespace: 0,
                kind: item.kind.as_str().into(),
                fieldnorm_id: FieldNormReader::fieldnorm_to_id(tokens as u32),
            },
            namespace: item.namespace.as_str().into(),
            terms: tf.into_iter().collect(),
            tokens,
            document: self.document(item),
        }
    }

    /// Makes documents searchable before they are committed. Callers append in sequence order
    /// (under the store's writer lock), after every document of a lower sequence number was
    /// appended or committed: a commit of the tail records its last sequence number as the
    /// watermark.
    pub fn append_tail(&self, analysed: Vec<Analysed>) -> TailFill {
        let mut published = self.published.write();
        for a in analysed {
            published.tail.push(a);
        }
        published.tail.fill()
    }

    /// Whether documents wait in a tail for a commit.
    pub fn has_tail(&self) -> bool {
        let published = self.published.read();
        !published.tail.docs.is_empty() || !published.frozen.docs.is_empty()
    }

    /// Removes every document of a namespace (takes effect at the next commit).
    pub fn delete_namespace(&self, writer: &IndexWriter, namespace: &str) {
        writer.delete_term(Term::from_field_text(self.fields.namespace, namespace));
    }

    /// Commits the tails' documents and every document queued with [`TextIndex::add`], and
    /// makes the commit visible to searches in place of the tails. The commit's watermark is
    /// the highest of `watermark`, the tails' last sequence number and the previous watermark;
    /// without a `watermark` and with nothing in the tails there is nothing to do. On failure
    /// the writer is rolled back and the tails' documents stay (searchable) for the next
    /// commit; documents queued with `add` are dropped.
    pub fn commit(&self, writer: &mut IndexWriter, watermark: Option<u64>) -> Result<()> {
        let mut phases = super::phases::Phases::start();
        // Freeze the tail, and take the frozen documents' index documents out (searches
        // don't read them; they go back if the commit fails). Only a commit (under the index
        // writer, which the caller holds) changes the frozen tail, so they are prepared for
        // the index writer with no lock held: a write appending to the tail meanwhile never
        // waits for that copy.
        let (originals, seqs) = {
            let mut published = self.published.write();
            let tail = std::mem::take(&mut published.tail);
            published.frozen.absorb(tail);
            if watermark.is_none() && published.frozen.docs.is_empty() {
                return Ok(());
            }
            let seqs: Vec<u64> = published.frozen.docs.iter().map(|d| d.seq).collect();
            (std::mem::take(&mut published.frozen.documents), seqs)
        };
        let documents: Vec<TantivyDocument> = originals
            .iter()
            .zip(&seqs)
            .map(|(doc, &seq)| {
                let mut doc = doc.clone();
                doc.add_u64(self.fields.seq, seq);
                doc
            })
            .collect();
        let frozen_last = seqs.iter().max().copied();
        let watermark = watermark
            .into_iter()
            .chain(frozen_last)
            .chain([self.committed.load(Ordering::Acquire)])
            .max()
            .unwrap_or(0);
        phases.lap("text_freeze");
        // tantivy's threads are background work, but every commit (`prepare_commit`) starts
        // new indexing threads from the committing thread, at its priority, and a rollback
        // new merge threads too: they are lowered here, before they get documents. (A
        // commit's indexing took up to both cores for tens of ms, and the checkpoints waiting
        // for the cores meanwhile were the load benchmark's p99.) Not right after they start:
        // a new thread names itself, so it may not bear its name yet.
        background::lower_priority_of_threads(&[INDEXING_THREAD, MERGE_THREAD, UPDATER_THREAD]);
        let result = (|| -> Result<Searcher> {
            for doc in documents {
                writer.add_document(doc)?;
            }
            let mut prepared = writer.prepare_commit()?;
            phases.lap("text_prepare");
            prepared.set_payload(&format!("seq:{watermark}"));
            prepared.commit()?;
            phases.lap("text_commit");
            self.reader.reload()?;
            Ok(self.reader.searcher())
        })();
        match result {
            Ok(searcher) => {
                self.committed.fetch_max(watermark, Ordering::AcqRel);
                let mut published = self.published.write();
                published.searcher = searcher;
                published.frozen = Tail::default();
                drop(published);
                phases.lap("text_reload");
                Ok(())
            }
            Err(e) => {
                if let Err(rollback) = writer.rollback() {
                    tracing::error!(error = %rollback, "rolling back the text index writer after a failed commit");
                }
                self.published.write().frozen.documents = originals;
                Err(e)
            }
        }
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
        let published = self.published.read();
        let stats = Stats {
            published: &published,
            content: self.fields.content,
        };
        let mut tail_hits =
            Self::search_tail(&published.frozen, &stats, &terms, pushdown, &accept)?;
        tail_hits.extend(Self::search_tail(
            &published.tail,
            &stats,
            &terms,
            pushdown,
            &accept,
        )?);
        let gate: Vec<Term> = pushdown
            .namespaces
            .iter()
            .map(|n| Term::from_field_text(self.fields.namespace, n))
            .collect();
        // Most searches of a run's own namespace find it in no committed segment (its items are
        // still in the tail): then no query, weight or scorer is built at all.
        let segments = published.searcher.segment_readers();
        let mut searched = false;
        for reader in segments {
            if holds_any(reader, &gate)? {
                searched = true;
                break;
            }
        }
        let mut hits = Vec::new();
        if searched {
            let query = self.committed_query(terms, pushdown);
            let collector = FilteredTopK {
                k,
                accept: &accept,
                gate: &gate,
            };
            hits = published
                .searcher
                .search_with_statistics_provider(&*query, &collector, &stats)?;
        }
        if !tail_hits.is_empty() {
            hits.extend(tail_hits);
            hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        hits.truncate(k);
        Ok(hits)
    }

    /// The query over committed segments: any of `terms` (scored), restricted to the pushed-down
    /// namespaces and kinds (not scored).
    fn committed_query(&self, terms: Vec<Term>, pushdown: &Pushdown<'_>) -> Box<dyn Query> {
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
        if clauses.len() == 1 {
            clauses.pop().expect("one clause").1
        } else {
            Box::new(BooleanQuery::new(clauses))
        }
    }

    /// Every accepted tail document matching at least one term, scored as tantivy scores the
    /// committed ones (per term: [`Bm25Weight`] over the combined statistics, the quantised
    /// field norm, the term frequency; summed over the terms).
    fn search_tail(
        tail: &Tail,
        stats: &Stats<'_>,
        terms: &[Term],
        pushdown: &Pushdown<'_>,
        accept: &(impl Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32)>> {
        if tail.docs.is_empty() {
            return Ok(Vec::new());
        }
        // The tail holds every namespace's recent documents: filter by namespace before
        // scoring, with the namespaces as integers.
        let namespaces: Option<Vec<u32>> = (!pushdown.namespaces.is_empty()).then(|| {
            pushdown
                .namespaces
                .iter()
                .filter_map(|n| tail.namespaces.get(*n).copied())
                .collect()
        });
        if namespaces.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut scores: HashMap<u32, Score> = HashMap::new();
        for term in terms {
            let Some(postings) = term.value().as_str().and_then(|t| tail.postings.get(t)) else {
                continue;
            };
            let mut weight = None;
            for &(doc, tf) in postings {
                let d = &tail.docs[doc as usize];
                if namespaces
                    .as_ref()
                    .is_some_and(|ns| !ns.contains(&d.namespace))
                {
                    continue;
                }
                let weight = match &weight {
                    Some(w) => w,
                    None => {
                        weight.insert(Bm25Weight::for_terms(stats, std::slice::from_ref(term))?)
                    }
                };
                *scores.entry(doc).or_default() += weight.score(d.fieldnorm_id, tf);
            }
        }
        Ok(scores
            .into_iter()
            .filter_map(|(doc, score)| {
                let d = &tail.docs[doc as usize];
                let admitted = (pushdown.kinds.is_empty() || pushdown.kinds.contains(&&*d.kind))
                    && accept(d.seq);
                admitted.then_some((d.seq, score))
            })
            .collect())
    }
}

/// Whether the segment holds a document with one of the `gate` terms (all of one field), or
/// `gate` is empty (no restriction). Counts deleted documents too, which only costs a search.
fn holds_any(reader: &SegmentReader, gate: &[Term]) -> tantivy::Result<bool> {
    let Some(first) = gate.first() else {
        return Ok(true);
    };
    let index = reader.inverted_index(first.field())?;
    for term in gate {
        if index.get_term_info(term)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes everything in the index directory.
fn wipe(dir: &Path) -> Result<()> {
    let ctx = |e| MemoryError::io(format!("clearing {}", dir.display()), e);
    std::fs::remove_dir_all(dir).map_err(ctx)?;
    std::fs::create_dir_all(dir).map_err(ctx)
}

/// The index writer. Dropping it stops the writer, makes the index durable and records that it
/// was closed cleanly (see [`super::textdir`]).
pub(crate) struct TextWriter {
    writer: Option<IndexWriter>,
    dir: PathBuf,
}

impl Deref for TextWriter {
    type Target = IndexWriter;
    fn deref(&self) -> &IndexWriter {
        self.writer.as_ref().expect("the writer lives until drop")
    }
}

impl DerefMut for TextWriter {
    fn deref_mut(&mut self) -> &mut IndexWriter {
        self.writer.as_mut().expect("the writer lives until drop")
    }
}

impl Drop for TextWriter {
    fn drop(&mut self) {
        // Stops the indexing and segment-updater work: no commit can follow.
        drop(self.writer.take());
        if let Err(e) = textdir::sync_and_unmark(&self.dir) {
            tracing::warn!(path = %self.dir.display(), error = %e, "syncing the text index on close (it will be rebuilt if the machine crashes)");
        }
    }
}

/// Top-k collector that checks each candidate against the catalog (through `accept`) and keeps
/// tantivy's block-max WAND pruning: the threshold handed back is the k-th best accepted score.
struct FilteredTopK<'a, F> {
    k: usize,
    accept: &'a F,
    /// The namespace terms of a namespace-restricted search (empty: unrestricted). A segment
    /// holding none of them is skipped before any scorer is built: a run's items sit in one or
    /// two segments, and building a scorer per query term in every other segment used to cost
    /// as much as the scoring itself.
    gate: &'a [Term],
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
        if !holds_any(reader, self.gate)? {
            return Ok(Vec::new());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn analysed(namespace: &str, seq: u64, terms: &[&str]) -> Analysed {
        Analysed {
            doc: TailDoc {
                seq,
                id: ItemId::new_v7(),
                namespace: 0,
                kind: "note".into(),
                fieldnorm_id: 1,
            },
            namespace: namespace.into(),
            terms: terms.iter().map(|t| (Box::<str>::from(*t), 1)).collect(),
            tokens: terms.len() as u64,
            document: TantivyDocument::default(),
        }
    }

    fn namespace_of(tail: &Tail, doc: &TailDoc) -> String {
        let (name, _) = tail
            .namespaces
            .iter()
            .find(|(_, id)| **id == doc.namespace)
            .expect("every document's namespace is known");
        name.to_string()
    }

    #[test]
    fn an_absorbed_tail_keeps_each_document_in_its_namespace() {
        let mut older = Tail::default();
        older.push(analysed("north", 1, &["river"]));
        older.push(analysed("south", 2, &["river"]));
        let mut newer = Tail::default();
        // In the newer tail, "south" comes first and gets the other number.
        newer.push(analysed("south", 3, &["river", "town"]));
        newer.push(analysed("east", 4, &["town"]));
        newer.push(analysed("north", 5, &["town"]));
        older.absorb(newer);

        let by_seq: Vec<(u64, String)> = older
            .docs
            .iter()
            .map(|d| (d.seq, namespace_of(&older, d)))
            .collect();
        assert_eq!(
            by_seq,
            [
                (1, "north".to_owned()),
                (2, "south".to_owned()),
                (3, "south".to_owned()),
                (4, "east".to_owned()),
                (5, "north".to_owned()),
            ]
        );
        assert_eq!(older.namespaces.len(), 3);
        assert_eq!(older.postings["town"], [(2, 1), (3, 1), (4, 1)]);
    }
}
