//! Typed disk errors. Every variant names the file it concerns.

use std::path::PathBuf;
use thiserror::Error;

pub type Result<T, E = DiskError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's structure is invalid; `defect` says what is wrong, in words.
    #[error("{path}: corrupt image: {defect}")]
    Corrupt { path: PathBuf, defect: String },
    /// A valid image using a feature cosnap does not handle.
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    /// A differencing chain is broken: missing parent, linkage mismatch, backing loop.
    #[error("{path}: broken chain: {defect}")]
    Chain { path: PathBuf, defect: String },
    /// A request that cannot be honoured (offset past the end, wrong format, …).
    #[error("{path}: invalid request: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("operation cancelled")]
    Cancelled,
}

impl DiskError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DiskError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn corrupt(path: impl Into<PathBuf>, defect: impl Into<String>) -> Self {
        DiskError::Corrupt {
            path: path.into(),
            defect: defect.into(),
        }
    }
    pub fn unsupported(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DiskError::Unsupported {
            path: path.into(),
            what: what.into(),
        }
    }
    pub fn chain(path: impl Into<PathBuf>, defect: impl Into<String>) -> Self {
        DiskError::Chain {
            path: path.into(),
            defect: defect.into(),
        }
    }
    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DiskError::Invalid {
            path: path.into(),
            what: what.into(),
        }
    }
}
