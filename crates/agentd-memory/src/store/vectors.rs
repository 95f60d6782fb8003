//! The vector index: per-namespace flat arrays of embeddings, with an HNSW graph for large ones.
//!
//! Vectors are loaded from sled on open (sled keeps them, so a restart never re-embeds). A
//! namespace below [`ANN_MIN_ROWS`] is searched exactly: a filtered scan is fast at that size and
//! has perfect recall. Above it, an HNSW graph is built in the background over the namespace's
//! rows; a search walks the graph over the rows it covers and scans the rows appended since
//! exactly, so a just-acknowledged vector is always found (read-your-writes) while the graph
//! catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::catalog::{Catalog, CompiledFilter, IntMap, Sym};
use crate::vector::hnsw::{Hnsw, HnswParams, exact_top_k};

/// Default size from which a namespace gets an approximate (HNSW) index.
pub const ANN_MIN_ROWS: usize = 20_000;
/// When a filter admits fewer than this share of a namespace's rows, an exact scan over the
/// admitted rows is both cheaper and exact, so the graph is not used.
const ANN_MIN_SELECTIVITY: f64 = 0.05;

/// Embeddings of one namespace.
pub(crate) struct NamespaceVectors {
    /// Row-major vectors, `dim` floats per row.
    pub data: Vec<f32>,
    /// Catalog slot of each row.
    pub slots: Vec<u32>,
    /// The graph over rows `0..ann_rows`, once the namespace is large enough.
    pub ann: Option<Arc<Hnsw>>,
    /// Rows the graph covers (grows as the background builder inserts them).
    pub ann_rows: Arc<AtomicUsize>,
}

impl NamespaceVectors {
    fn rows(&self) -> usize {
        self.slots.len()
    }
}

/// All namespaces' vectors.
pub(crate) struct VectorIndex {
    pub dim: usize,
    pub spaces: IntMap<Sym, NamespaceVectors>,
    pub hnsw_params: HnswParams,
    /// Namespaces with at least this many rows get a graph.
    pub ann_min_rows: usize,
}

impl VectorIndex {
    pub fn new(dim: usize, hnsw_params: HnswParams, ann_min_rows: usize) -> Self {
        VectorIndex {
            dim,
            spaces: IntMap::default(),
            hnsw_params,
            ann_min_rows: ann_min_rows.max(1),
        }
    }

    /// Row the next vector of `ns` will get.
    pub fn next_row(&self, ns: Sym) -> u32 {
        self.spaces.get(&ns).map_or(0, |s| s.rows() as u32)
    }

    /// Appends a vector for the item in `slot`; returns its row.
    pub fn push(&mut self, ns: Sym, slot: u32, vector: &[f32]) -> u32 {
        debug_assert_eq!(vector.len(), self.dim);
        let space = self.spaces.entry(ns).or_insert_with(|| NamespaceVectors {
            data: Vec::new(),
            slots: Vec::new(),
            ann: None,
            ann_rows: Arc::new(AtomicUsize::new(0)),
        });
        space.data.extend_from_slice(vector);
        space.slots.push(slot);
        if space.ann.is_none() && space.rows() >= self.ann_min_rows {
            space.ann = Some(Arc::new(Hnsw::new(self.dim, self.hnsw_params.clone())));
        }
        (space.rows() - 1) as u32
    }

    pub fn remove_namespace(&mut self, ns: Sym) {
        self.spaces.remove(&ns);
    }

    /// The vector in `row` of `ns`.
    pub fn vector(&self, ns: Sym, row: u32) -> Option<&[f32]> {
        let space = self.spaces.get(&ns)?;
        let start = row as usize * self.dim;
        space.data.get(start..start + self.dim)
    }

    /// Namespaces whose graph lags behind their rows.
    pub fn ann_backlog(&self) -> Vec<Sym> {
        self.spaces
            .iter()
            .filter(|(_, s)| s.ann.is_some() && s.ann_rows.load(Ordering::Acquire) < s.rows())
            .map(|(ns, _)| *ns)
            .collect()
    }

    /// Top-`k` (catalog slot, cosine) over the given namespaces among entries passing `filter`.
    pub fn search(
        &self,
        catalog: &Catalog,
        filter: &CompiledFilter,
        namespaces: &[Sym],
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Vec<(u32, f32)> {
        let mut hits: Vec<(u32, f32)> = Vec::new();
        for ns in namespaces {
            let Some(space) = self.spaces.get(ns) else {
                continue;
            };
            let admit = |row: u32| {
                let slot = space.slots[row as usize];
                catalog.matches(filter, catalog.entry(slot))
            };
            let ann_rows = space.ann_rows.load(Ordering::Acquire).min(space.rows());
            let use_ann = space.ann.is_some()
                && ann_rows > 0
                && (filter.is_namespace_only()
                    || estimate_selectivity(space, &admit) >= ANN_MIN_SELECTIVITY);
            let rows: Vec<(u32, f32)> = if use_ann {
                let ann = space.ann.as_ref().expect("checked");
                let mut found =
                    ann.search(&space.data, query, k, ef.max(k).min(space.rows()), |row| {
                        (row as usize) < ann_rows && admit(row)
                    });
                // Rows appended since the graph last caught up: exact.
                let tail_start = ann_rows;
                let tail = &space.data[tail_start * self.dim..];
                found.extend(
                    exact_top_k(tail, self.dim, query, k, |r| admit(r + tail_start as u32))
                        .into_iter()
                        .map(|(r, s)| (r + tail_start as u32, s)),
                );
                found
            } else {
                exact_top_k(&space.data, self.dim, query, k, admit)
            };
            hits.extend(
                rows.into_iter()
                    .map(|(row, s)| (space.slots[row as usize], s)),
            );
        }
        hits.sort_unstable_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then_with(|| catalog.entry(a.0).seq.cmp(&catalog.entry(b.0).seq))
        });
        hits.dedup_by_key(|h| h.0);
        hits.truncate(k);
        hits
    }
}

/// Share of rows a filter admits, estimated on an evenly spaced sample of at most 256 rows.
fn estimate_selectivity(space: &NamespaceVectors, admit: &impl Fn(u32) -> bool) -> f64 {
    let rows = space.rows();
    if rows == 0 {
        return 0.0;
    }
    let samples = rows.min(256);
    let step = rows / samples;
    let admitted = (0..samples).filter(|i| admit((i * step) as u32)).count();
    admitted as f64 / samples as f64
}

/// Saved HNSW graphs: `<dir>/<hash of namespace>.hnsw`, written on a clean close so a restart
/// does not rebuild large graphs. Layout: magic, namespace (length-prefixed), rows covered, the
/// sequence number of the last covered row, then [`Hnsw::to_bytes`]. A file is used only if the
/// namespace's row `rows - 1` still holds that sequence number (rows are appended in sequence
/// order and sequence numbers are never reused, so this proves the covered rows are unchanged);
/// anything else is ignored and the graph is rebuilt.
pub(crate) mod saved {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::VectorIndex;
    use crate::store::catalog::Catalog;
    use crate::vector::hnsw::Hnsw;

    const MAGIC: &[u8; 8] = b"AGDHNSW1";

    fn file_for(dir: &Path, namespace: &str) -> PathBuf {
        // FNV-1a: a stable, short file name for any namespace.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in namespace.as_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        dir.join(format!("{h:016x}.hnsw"))
    }

    /// Writes every graph (best effort: a failure only costs a rebuild on the next open).
    pub fn save(dir: &Path, index: &VectorIndex, catalog: &Catalog) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (ns, space) in &index.spaces {
            let Some(ann) = &space.ann else { continue };
            let rows = space
                .ann_rows
                .load(Ordering::Acquire)
                .min(space.slots.len());
            if rows == 0 {
                continue;
            }
            let name = catalog.syms.name(*ns);
            let last_seq = catalog.entry(space.slots[rows - 1]).seq;
            let mut out = Vec::new();
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(rows as u64).to_le_bytes());
            out.extend_from_slice(&last_seq.to_le_bytes());
            out.extend_from_slice(&ann.to_bytes());
            let path = file_for(dir, name);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &out)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// Loads the saved graphs that still match; returns how many were used.
    pub fn load(dir: &Path, index: &mut VectorIndex, catalog: &Catalog) -> usize {
        let mut used = 0;
        for (ns, space) in index.spaces.iter_mut() {
            let Some(ann) = &space.ann else { continue };
            if !ann.is_empty() {
                continue;
            }
            let name = catalog.syms.name(*ns);
            let Ok(bytes) = std::fs::read(file_for(dir, name)) else {
                continue;
            };
            let parsed = (|| {
                let rest = bytes.strip_prefix(MAGIC)?;
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let stored = rest.get(4..4 + len)?;
                let rest = &rest[4 + len..];
                let rows = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
                let last_seq = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
                (stored == name.as_bytes()
                    && rows > 0
                    && rows <= space.slots.len()
                    && catalog.entry(space.slots[rows - 1]).seq == last_seq)
                    .then(|| Hnsw::from_bytes(&rest[16..]).ok())
                    .flatten()
                    .filter(|g| g.len() == rows && g.dim() == index_dim(space))
                    .map(|g| (g, rows))
            })();
            if let Some((graph, rows)) = parsed {
                space.ann = Some(Arc::new(graph));
                space.ann_rows.store(rows, Ordering::Release);
                used += 1;
            }
        }
        used
    }

    fn index_dim(space: &super::NamespaceVectors) -> usize {
        space.data.len() / space.slots.len().max(1)
    }

    /// Removes a namespace's saved graph, if any.
    pub fn remove(dir: &Path, namespace: &str) {
        let _ = std::fs::remove_file(file_for(dir, namespace));
    }
}
