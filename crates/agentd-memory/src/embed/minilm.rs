//! `MiniLmEmbedder`: all-MiniLM-L6-v2 sentence embeddings (384 dimensions, mean pooling) through
//! fastembed and a dynamically loaded ONNX Runtime.
//!
//! Files (all put in place by `scripts/fetch-models.sh`):
//! * `<model_dir>/`: `model.onnx`, `tokenizer.json`, `config.json`, `special_tokens_map.json`,
//!   `tokenizer_config.json`;
//! * the ONNX Runtime shared library (1.32): [`MiniLmConfig::ort_dylib`], else the
//!   `ORT_DYLIB_PATH` environment variable, else `<model_dir>/../onnxruntime/libonnxruntime.so`.
//!
//! `ort` panics (rather than returning an error) when it has to load the runtime itself and the
//! library is missing, so before touching ort or fastembed this module checks that every file
//! exists and is readable, then loads the library explicitly with `ort::init_from`, and runs all
//! ort/fastembed calls under `catch_unwind`: every failure becomes an [`EmbedError`].
//!
//! Trade-offs: much better semantic matching than the hashing embedder (paraphrases and related
//! concepts score high), but it needs ~60 MB of files, takes ~0.3 s to load, and embeds a few
//! hundred short texts per second on two cores, about 8,000 word pieces per second
//! (inference is serialised behind a mutex; ONNX Runtime itself uses every core for one
//! batch). Within a call, texts are embedded in order of length, in batches of similar
//! length (the model pads each batch to its longest text), and returned in input order. Texts longer than `max_length` word pieces
//! (256 by default, as the model was trained) are truncated. The runtime library is loaded once
//! per process: the first successfully loaded path wins for the rest of the process.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

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
    /// Texts per inference call (default 8). Texts are embedded in order of length and each
    /// call pads to its longest text. Measured on 2 cores with `agentd bench memory --items
    /// 1000 --embedder minilm` (items/s, peak RSS): 8: 52-63, 460 MB; 16: 57-58, 680 MB; 32:
    /// 53-57, 870 MB; 64: 46-48, 1.3 GB. 8 and 16 are level within noise; 8 needs least memory.
    pub batch_size: usize,
    /// Longest input in word pieces; longer texts are truncated (default 256).
    pub max_length: usize,
    /// ONNX Runtime intra-op threads; `None` uses every core.
    pub intra_threads: Option<usize>,
}

impl MiniLmConfig {
    /// Defaults for the model files in `model_dir`.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            ort_dylib: None,
            batch_size: 8,
            max_length: 256,
            intra_threads: None,
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

/// all-MiniLM-L6-v2 through fastembed / ONNX Runtime (384 dimensions, L2-normalised).
pub struct MiniLmEmbedder {
    model: Mutex<TextEmbedding>,
    batch_size: usize,
    model_dir: PathBuf,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder")
            .field("model_dir", &self.model_dir)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl MiniLmEmbedder {
    /// Checks the files, loads ONNX Runtime and the model, and runs one test embedding.
    pub fn new(config: MiniLmConfig) -> Result<Self, EmbedError> {
        if config.batch_size == 0 || config.max_length == 0 {
            return Err(EmbedError::InvalidConfig(
                "MiniLM batch_size and max_length must be positive".to_owned(),
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
            special_tokens,
            tokenizer_config,
        ] = files;
        let model = UserDefinedEmbeddingModel::new(
            onnx,
            TokenizerFiles {
                tokenizer_file: tokenizer,
                config_file: model_config,
                special_tokens_map_file: special_tokens,
                tokenizer_config_file: tokenizer_config,
            },
        )
        .with_pooling(Pooling::Mean);

        // 2. Load the runtime ourselves, so that ort never falls back to its panicking loader.
        load_onnx_runtime(&dylib)?;

        // 3. Build the session and tokenizer.
        let mut options = InitOptionsUserDefined::new().with_max_length(config.max_length);
        if let Some(threads) = config.intra_threads {
            options = options.with_intra_threads(threads.max(1));
        }
        let model_error = |message: String| EmbedError::ModelLoad {
            path: config.model_dir.clone(),
            message,
        };
        let embedding = catch_unwind(AssertUnwindSafe(|| {
            TextEmbedding::try_new_from_user_defined(model, options)
        }))
        .map_err(|payload| EmbedError::Panicked {
            context: "loading the MiniLM model",
            message: panic_message(payload.as_ref()),
        })?
        .map_err(|e| model_error(e.to_string()))?;

        let embedder = Self {
            model: Mutex::new(embedding),
            batch_size: config.batch_size,
            model_dir: config.model_dir.clone(),
        };
        // 4. A wrong model file would only show at the first embedding: check now (embed_batch
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
        // A panic inside is caught below, so the lock is only poisoned if catch_unwind itself
        // fails; the model holds no state between calls that a panic could corrupt.
        let mut model = self
            .model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The model pads every batch to its longest text: embed texts in order of length, so
        // a batch holds texts of similar length, and put the vectors back in input order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i]).collect();
        let vectors = catch_unwind(AssertUnwindSafe(|| {
            model.embed(&sorted, Some(self.batch_size))
        }))
        .map_err(|payload| EmbedError::Panicked {
            context: "MiniLM inference",
            message: panic_message(payload.as_ref()),
        })?
        .map_err(|e| EmbedError::Inference(e.to_string()))?;
        drop(model);

        if vectors.len() != texts.len() {
            return Err(EmbedError::Inference(format!(
                "MiniLM returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        let mut unsorted: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for (vector, &i) in vectors.into_iter().zip(&order) {
            unsorted[i] = vector;
        }
        unsorted
            .into_iter()
            .map(|mut v| {
                if v.len() != MINILM_DIMENSION {
                    return Err(EmbedError::Inference(format!(
                        "MiniLM returned a {}-dimensional vector, expected {MINILM_DIMENSION}",
                        v.len()
                    )));
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm.is_finite() && norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                } else if !norm.is_finite() {
                    return Err(EmbedError::Inference(
                        "MiniLM produced a non-finite vector".to_owned(),
                    ));
                }
                Ok(v)
            })
            .collect()
    }
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

/// Loads the ONNX Runtime library at `path` into this process (a no-op if one is loaded).
fn load_onnx_runtime(path: &Path) -> Result<(), EmbedError> {
    // ort resolves relative paths against the executable's directory; we mean the working
    // directory.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let result = catch_unwind(|| ort::init_from(&path).map(drop)).map_err(|payload| {
        EmbedError::Panicked {
            context: "loading ONNX Runtime",
            message: panic_message(payload.as_ref()),
        }
    })?;
    result.map_err(|e| EmbedError::Runtime {
        path: path.clone(),
        message: e.to_string(),
    })
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

    /// Runs the real model when its files are present. Skips (with a note) when they are not,
    /// unless `AGENTD_REQUIRE_MODELS=1`, in which case missing files fail the test.
    #[test]
    fn real_model_embeds_meaningfully() {
        let config = MiniLmConfig::new(models_dir().join(super::super::MINILM_SUBDIR));
        let required = std::env::var("AGENTD_REQUIRE_MODELS").is_ok_and(|v| v == "1");
        let embedder = match MiniLmEmbedder::new(config) {
            Ok(e) => e,
            Err(err @ EmbedError::MissingFiles { .. }) if !required => {
                eprintln!("skipping the real MiniLM test: {err}");
                return;
            }
            Err(err) => panic!("MiniLM failed to load: {err}"),
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
        let pieces: usize = {
            let model = embedder.model.lock().unwrap();
            paragraphs
                .iter()
                .map(|p| {
                    model
                        .tokenizer
                        .encode(p.as_str(), true)
                        .unwrap()
                        .len()
                        .min(256)
                })
                .sum()
        };
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
