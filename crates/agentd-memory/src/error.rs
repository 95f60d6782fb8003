//! Errors of the memory crate.
//!
//! One enum for everything a store can refuse or fail at. Variants carry enough context (paths,
//! names, the offending value) for the binary to print a message a person can act on.

use std::path::PathBuf;

use crate::embed::EmbedError;

/// Everything that can go wrong in the memory store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// An item or a request was malformed; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field or parameter at fault.
        field: &'static str,
        /// What is wrong with it and what is expected.
        reason: String,
    },

    /// The directory exists and holds something that is not an agentd store.
    #[error(
        "{path} is not an agentd memory store (it is not empty and has no STORE marker); \
         point the store at an empty or new directory"
    )]
    ForeignDirectory {
        /// The directory that was opened.
        path: PathBuf,
    },

    /// The store's files are damaged.
    #[error("the memory store at {path} is corrupt: {reason}")]
    Corrupt {
        /// The store directory.
        path: PathBuf,
        /// What was found to be wrong.
        reason: String,
    },

    /// The store was written by a newer (or unknown) on-disk schema.
    #[error(
        "the memory store at {path} has schema version {found}, this build reads version {supported}; \
         upgrade agentd to open it"
    )]
    UnsupportedSchema {
        /// The store directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// The store was created with another embedder or token counter than the one given.
    #[error(
        "the memory store at {path} was created with {what} `{stored}`, but it was opened with `{given}`; \
         open it with the same {what}, or use a new directory"
    )]
    ConfigMismatch {
        /// The store directory.
        path: PathBuf,
        /// "embedder" or "token counter".
        what: &'static str,
        /// What the store recorded.
        stored: String,
        /// What this open used.
        given: String,
    },

    /// Another process holds the store open.
    #[error("the memory store at {path} is in use by another process: {reason}")]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// The underlying lock error.
        reason: String,
    },

    /// Computing embeddings failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),

    /// Reading or writing the durable item store failed (disk full, I/O error).
    #[error("item store (sled) error: {0}")]
    Sled(#[from] sled::Error),

    /// The full-text index failed.
    #[error("text index (tantivy) error: {0}")]
    Text(#[from] tantivy::TantivyError),

    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl MemoryError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        MemoryError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MemoryError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with [`MemoryError`].
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;
