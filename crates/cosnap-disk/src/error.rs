//! Typed disk errors. Every variant names the file it concerns.

use std::path::PathBuf;
use thiserror::Error;

/// The result of every fallible call in this crate.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// Everything that can go wrong with a disk image, each naming the file.
#[derive(Debug, Error)]
pub enum DiskError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file's structure is invalid; `defect` says what is wrong, in words.
    #[error("{path}: corrupt image: {defect}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is wrong, in words.
        defect: String,
    },
    /// A valid image using a feature cosnap does not handle.
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature, in words.
        what: String,
    },
    /// A differencing chain is broken: missing parent, linkage mismatch, backing loop.
    #[error("{path}: broken chain: {defect}")]
    Chain {
        /// The layer whose link is broken.
        path: PathBuf,
        /// What is wrong with the link, in words.
        defect: String,
    },
    /// A request that cannot be honoured (offset past the end, wrong format, …).
    #[error("{path}: invalid request: {what}")]
    Invalid {
        /// The image the request was about.
        path: PathBuf,
        /// Why it cannot be honoured, in words.
        what: String,
    },
    /// The caller cancelled the operation through its [`crate::progress::CancelToken`].
    #[error("operation cancelled")]
    Cancelled,
}

impl DiskError {
    /// An [`DiskError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DiskError::Io {
            path: path.into(),
            source,
        }
    }
    /// A [`DiskError::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, defect: impl Into<String>) -> Self {
        DiskError::Corrupt {
            path: path.into(),
            defect: defect.into(),
        }
    }
    /// A [`DiskError::Unsupported`] for `path`.
    pub fn unsupported(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DiskError::Unsupported {
            path: path.into(),
            what: what.into(),
        }
    }
    /// A [`DiskError::Chain`] for `path`.
    pub fn chain(path: impl Into<PathBuf>, defect: impl Into<String>) -> Self {
        DiskError::Chain {
            path: path.into(),
            defect: defect.into(),
        }
    }
    /// An [`DiskError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DiskError::Invalid {
            path: path.into(),
            what: what.into(),
        }
    }
}
