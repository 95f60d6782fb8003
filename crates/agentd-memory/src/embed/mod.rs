//! Text embedders: turn texts into dense, L2-normalised vectors for the store's vector index.
//!
//! Two implementations sit behind the [`Embedder`] trait:
//!
//! * [`HashingEmbedder`] (always available): feature hashing of word unigrams and bigrams. It needs
//!   no files and no native library, is deterministic across platforms and Rust versions, and is
//!   fast enough for the ingest path (hundreds of thousands of short texts per second per core).
//!   The trade-off is that it only knows about shared words: "car" and "automobile" are unrelated
//!   to it.
//! * `MiniLmEmbedder` (cargo feature `minilm`): all-MiniLM-L6-v2 through a dynamically loaded
//!   ONNX Runtime. It captures meaning beyond shared words, but it needs model files and the
//!   runtime library on disk (`scripts/fetch-models.sh` puts them there) and embeds about 145
//!   texts of ~145 word pieces per second on two cores.
//!
//! A store records [`Embedder::name`] and [`Embedder::dimension`] and refuses to reopen with an
//! embedder that differs in either, since vectors of different embedders are not comparable.
//! [`EmbedderConfig`] is the serialisable choice a user makes (in a config file, or through
//! environment variables with [`EmbedderConfig::from_env`]).

mod hashing;
#[cfg(feature = "minilm")]
mod minilm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use hashing::{HashingEmbedder, HashingScratch};
#[cfg(feature = "minilm")]
pub use minilm::{MINILM_DIMENSION, MINILM_FILES, MINILM_NAME, MiniLmConfig, MiniLmEmbedder};

/// Name of the cargo feature that compiles the MiniLM embedder in.
pub const MINILM_FEATURE: &str = "minilm";

/// Default dimension of the hashing embedder.
pub const DEFAULT_HASHING_DIMENSION: usize = 256;

/// Default models directory (relative to the working directory) when `AGENTD_MODELS_DIR` is unset;
/// `scripts/fetch-models.sh` fills `<repo root>/.models` by default.
pub const DEFAULT_MODELS_DIR: &str = ".models";

/// Sub-directory of the models directory that holds the MiniLM files.
pub const MINILM_SUBDIR: &str = "minilm";

/// Sub-directory of the models directory that holds the ONNX Runtime shared library.
pub const ONNXRUNTIME_SUBDIR: &str = "onnxruntime";

/// Turns texts into fixed-size, L2-normalised vectors.
///
/// Implementations are shared between threads (`Arc<dyn Embedder>`), so they must be `Send + Sync`.
pub trait Embedder: Send + Sync {
    /// Stable name recorded by the store, e.g. `"hashing-v1-256"` or `"minilm-l6-v2"`; a store
    /// refuses to open with an embedder of another name or dimension.
    fn name(&self) -> &str;

    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;

    /// One L2-normalised vector per text, in order.
    ///
    /// A text with nothing to embed (empty, or for the hashing embedder only stopwords and
    /// punctuation) may yield the all-zero vector, whose cosine with anything is 0.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// Whether a vector is a cheap, deterministic function of its text (microseconds, the
    /// same on every run), so a store need not persist it: it recomputes it when it opens.
    /// Default `false` (model inference is too slow to redo at every start).
    fn recomputable(&self) -> bool {
        false
    }

    /// Embed a search query. The default embeds it like a document (`embed_batch` of one);
    /// models with query/document prefixes can override it.
    fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut vectors = self.embed_batch(&[text])?;
        match vectors.pop() {
            Some(v) if vectors.is_empty() => Ok(v),
            _ => Err(EmbedError::Inference(format!(
                "embedder {} returned {} vectors for one text",
                self.name(),
                vectors.len() + 1
            ))),
        }
    }
}

/// Everything that can go wrong while building an embedder or embedding texts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The configuration is unusable (bad dimension, unknown embedder kind, ...).
    #[error("invalid embedder configuration: {0}")]
    InvalidConfig(String),

    /// The embedder was asked for but this build does not contain it.
    #[error(
        "the `{kind}` embedder is not compiled into this build: rebuild with the cargo feature `{feature}` (e.g. `cargo build --features {feature}`), or use the `hashing` embedder"
    )]
    FeatureDisabled {
        /// The embedder kind that was requested.
        kind: &'static str,
        /// The cargo feature that would compile it in.
        feature: &'static str,
    },

    /// Files the embedder needs are missing or unreadable.
    #[error(
        "{what} missing or unreadable: {}; run scripts/fetch-models.sh (it puts them under .models/, or under $AGENTD_MODELS_DIR)",
        display_paths(.paths)
    )]
    MissingFiles {
        /// What the files are, e.g. "MiniLM model files".
        what: String,
        /// Each missing path, with the reason in parentheses when it exists but cannot be used.
        paths: Vec<String>,
    },

    /// The ONNX Runtime shared library could not be loaded or initialised.
    #[error(
        "could not load ONNX Runtime from {path}: {message}; run scripts/fetch-models.sh or set ORT_DYLIB_PATH to libonnxruntime.so 1.32"
    )]
    Runtime {
        /// The library path that was tried.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// The model could not be loaded (bad ONNX file, bad tokenizer files, ...).
    #[error("could not load the embedding model from {path}: {message}")]
    ModelLoad {
        /// The model directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// Embedding failed at run time.
    #[error("embedding failed: {0}")]
    Inference(String),

    /// A native library or dependency panicked; the panic was caught and turned into this error.
    #[error("{context} panicked: {message}")]
    Panicked {
        /// What was being done.
        context: &'static str,
        /// The panic message.
        message: String,
    },
}

fn display_paths(paths: &[String]) -> String {
    paths.join(", ")
}

/// Which embedder to use, as a user configures it.
///
/// Serialised with a `kind` tag, e.g. `{"kind": "hashing", "dimension": 256}` or
/// `{"kind": "minilm", "model_dir": ".models/minilm"}`; unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum EmbedderConfig {
    /// The zero-setup [`HashingEmbedder`].
    #[serde(rename = "hashing")]
    Hashing {
        /// Vector dimension (default 256).
        #[serde(default = "default_hashing_dimension")]
        dimension: usize,
    },
    /// all-MiniLM-L6-v2 through ONNX Runtime (needs the `minilm` cargo feature and the files
    /// that `scripts/fetch-models.sh` fetches).
    #[serde(rename = "minilm")]
    MiniLm {
        /// Directory holding model.onnx, tokenizer.json, config.json, special_tokens_map.json and
        /// tokenizer_config.json (`<models dir>/minilm`).
        model_dir: PathBuf,
        /// ONNX Runtime shared library; when absent, `ORT_DYLIB_PATH`, then
        /// `<model_dir>/../onnxruntime/libonnxruntime.so`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ort_dylib: Option<PathBuf>,
    },
}

fn default_hashing_dimension() -> usize {
    DEFAULT_HASHING_DIMENSION
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self::Hashing {
            dimension: DEFAULT_HASHING_DIMENSION,
        }
    }
}

impl EmbedderConfig {
    /// MiniLM with the files where `scripts/fetch-models.sh` puts them under `models_dir`.
    pub fn minilm_in(models_dir: impl AsRef<Path>) -> Self {
        Self::MiniLm {
            model_dir: models_dir.as_ref().join(MINILM_SUBDIR),
            ort_dylib: None,
        }
    }

    /// Reads the configuration from the environment:
    ///
    /// * `AGENTD_EMBEDDER`: `hashing` (the default when unset or empty) or `minilm`;
    /// * `AGENTD_HASHING_DIMENSION`: dimension of the hashing embedder (default 256);
    /// * `AGENTD_MODELS_DIR`: where `scripts/fetch-models.sh` put the models (default `.models`,
    ///   relative to the working directory); MiniLM is read from its `minilm/` sub-directory;
    /// * `ORT_DYLIB_PATH`: the ONNX Runtime library (default
    ///   `<models dir>/onnxruntime/libonnxruntime.so`).
    pub fn from_env() -> Result<Self, EmbedError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`EmbedderConfig::from_env`], with variables looked up through `var` (for tests and
    /// for callers that merge several sources).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, EmbedError> {
        let get = |key: &str| {
            var(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let kind = get("AGENTD_EMBEDDER").unwrap_or_else(|| "hashing".to_owned());
        match kind.to_ascii_lowercase().as_str() {
            "hashing" | "hash" => {
                let dimension = match get("AGENTD_HASHING_DIMENSION") {
                    None => DEFAULT_HASHING_DIMENSION,
                    Some(s) => s.parse().map_err(|_| {
                        EmbedError::InvalidConfig(format!(
                            "AGENTD_HASHING_DIMENSION must be a positive integer, got {s:?}"
                        ))
                    })?,
                };
                Ok(Self::Hashing { dimension })
            }
            "minilm" | "minilm-l6-v2" => {
                let models_dir = PathBuf::from(
                    get("AGENTD_MODELS_DIR").unwrap_or_else(|| DEFAULT_MODELS_DIR.to_owned()),
                );
                Ok(Self::MiniLm {
                    model_dir: models_dir.join(MINILM_SUBDIR),
                    ort_dylib: get("ORT_DYLIB_PATH").map(PathBuf::from),
                })
            }
            other => Err(EmbedError::InvalidConfig(format!(
                "AGENTD_EMBEDDER must be `hashing` or `minilm`, got {other:?}"
            ))),
        }
    }

    /// Builds the configured embedder.
    ///
    /// For MiniLM this checks that the runtime library and every model file exist before loading
    /// anything, and reports what is missing (see `scripts/fetch-models.sh`). Without the `minilm`
    /// cargo feature, asking for MiniLM returns [`EmbedError::FeatureDisabled`].
    pub fn build(&self) -> Result<Arc<dyn Embedder>, EmbedError> {
        match self {
            Self::Hashing { dimension } => Ok(Arc::new(HashingEmbedder::new(*dimension)?)),
            #[cfg(feature = "minilm")]
            Self::MiniLm {
                model_dir,
                ort_dylib,
            } => {
                let config = MiniLmConfig {
                    ort_dylib: ort_dylib.clone(),
                    ..MiniLmConfig::new(model_dir)
                };
                Ok(Arc::new(MiniLmEmbedder::new(config)?))
            }
            #[cfg(not(feature = "minilm"))]
            Self::MiniLm { .. } => Err(EmbedError::FeatureDisabled {
                kind: "minilm",
                feature: MINILM_FEATURE,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_defaults_to_hashing_256() {
        let cfg = EmbedderConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(cfg, EmbedderConfig::default());
        let e = cfg.build().unwrap();
        assert_eq!(e.name(), "hashing-v1-256");
        assert_eq!(e.dimension(), 256);
    }

    #[test]
    fn env_minilm_paths() {
        let cfg = EmbedderConfig::from_lookup(lookup(&[
            ("AGENTD_EMBEDDER", "minilm"),
            ("AGENTD_MODELS_DIR", "/m"),
            ("ORT_DYLIB_PATH", "/lib/libonnxruntime.so"),
        ]))
        .unwrap();
        assert_eq!(
            cfg,
            EmbedderConfig::MiniLm {
                model_dir: PathBuf::from("/m/minilm"),
                ort_dylib: Some(PathBuf::from("/lib/libonnxruntime.so")),
            }
        );
        let cfg = EmbedderConfig::from_lookup(lookup(&[("AGENTD_EMBEDDER", "minilm")])).unwrap();
        assert_eq!(cfg, EmbedderConfig::minilm_in(".models"));
    }

    #[test]
    fn env_rejects_bad_values() {
        let err = EmbedderConfig::from_lookup(lookup(&[("AGENTD_EMBEDDER", "bert")])).unwrap_err();
        assert!(err.to_string().contains("hashing"), "{err}");
        let err =
            EmbedderConfig::from_lookup(lookup(&[("AGENTD_HASHING_DIMENSION", "x")])).unwrap_err();
        assert!(matches!(err, EmbedError::InvalidConfig(_)));
        let cfg =
            EmbedderConfig::from_lookup(lookup(&[("AGENTD_HASHING_DIMENSION", "0")])).unwrap();
        assert!(cfg.build().is_err());
    }

    #[test]
    fn serde_round_trip_and_strictness() {
        let cfg: EmbedderConfig = serde_json::from_str(r#"{"kind":"hashing"}"#).unwrap();
        assert_eq!(cfg, EmbedderConfig::Hashing { dimension: 256 });
        let cfg: EmbedderConfig =
            serde_json::from_str(r#"{"kind":"minilm","model_dir":"/x/minilm"}"#).unwrap();
        assert_eq!(
            cfg,
            EmbedderConfig::MiniLm {
                model_dir: PathBuf::from("/x/minilm"),
                ort_dylib: None
            }
        );
        let json = serde_json::to_string(&EmbedderConfig::Hashing { dimension: 64 }).unwrap();
        assert_eq!(json, r#"{"kind":"hashing","dimension":64}"#);
        assert!(serde_json::from_str::<EmbedderConfig>(r#"{"kind":"hashing","dim":3}"#).is_err());
        assert!(serde_json::from_str::<EmbedderConfig>(r#"{"kind":"bert"}"#).is_err());
    }

    #[cfg(not(feature = "minilm"))]
    #[test]
    fn minilm_without_feature_says_rebuild() {
        let err = EmbedderConfig::minilm_in("/nowhere").build().err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("feature") && msg.contains("minilm"), "{msg}");
    }

    #[cfg(feature = "minilm")]
    #[test]
    fn minilm_config_reports_missing_files() {
        let cfg = EmbedderConfig::MiniLm {
            model_dir: PathBuf::from("/nonexistent-agentd-models/minilm"),
            ort_dylib: Some(PathBuf::from(
                "/nonexistent-agentd-models/libonnxruntime.so",
            )),
        };
        let err = cfg.build().err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::MissingFiles { .. }), "{msg}");
        assert!(
            msg.contains("/nonexistent-agentd-models/minilm/model.onnx"),
            "{msg}"
        );
        assert!(
            msg.contains("/nonexistent-agentd-models/libonnxruntime.so"),
            "{msg}"
        );
    }

    #[test]
    fn default_embed_query_matches_batch() {
        let e = HashingEmbedder::default();
        let q = e.embed_query("rivers of Europe").unwrap();
        let b = e.embed_batch(&["rivers of Europe"]).unwrap();
        assert_eq!(q, b[0]);
    }
}
