//! Virtual disk images — VHDX (with `.avhdx` differencing children and log replay), qcow2
//! (with backing files) and raw — behind one [`Image`] trait, plus the operations cosnap
//! builds snapshots and exports from: chains, per-layer allocation maps, crash-safe merges,
//! changed ranges between layers, and the sparse, parallel flatten/copy engine.
//!
//! Knows nothing of CIM or the repository. Every format module parses untrusted headers
//! with bounds checks and reports typed [`DiskError`]s that name the file and the defect.
//!
//! Rooms: [`image`] (the [`Image`] trait and its extents), one module per format
//! ([`vhdx`], [`qcow2`], [`raw`]), [`chain`](mod@chain) (recorded chains, nothing probed) and
//! [`probe`] (the one probing policy, for paths a person typed), [`extents`] (the
//! allocation vocabulary), [`ops`] (whole-image operations), [`copy`] (the flatten engine),
//! [`digest`], and the leaves [`error`], [`paths`], [`progress`] and [`report`].
//!
//! # Examples
//!
//! Flattening a two-layer qcow2 chain into one raw image with [`flatten_all`]:
//!
//! ```
//! use cosnap_disk::{CancelToken, FlattenJob, Format, flatten_all, ops};
//!
//! let dir = tempfile::tempdir()?;
//! let base = dir.path().join("base.qcow2");
//! let top = dir.path().join("top.qcow2");
//! ops::create(&base, Format::Qcow2, 64 << 20)?;
//! ops::write_pattern(&base, 0, 1 << 20, 0x11)?;
//! ops::create_child(&base, &top)?;
//! ops::write_pattern(&top, 1 << 20, 1 << 20, 0x22)?;
//!
//! let flat = dir.path().join("flat.raw");
//! let job = FlattenJob::whole(top.clone(), flat.clone(), Format::Raw);
//! let reports = flatten_all(&[job], 1, &|_done, _total| {}, &CancelToken::new())?;
//! assert_eq!(reports[0].virtual_size, 64 << 20);
//! assert_eq!(ops::compare(&top, &flat)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod chain;
pub mod copy;
pub mod digest;
pub mod error;
pub mod extents;
pub mod image;
pub mod ops;
pub mod paths;
pub mod probe;
pub mod progress;
pub mod qcow2;
pub mod raw;
pub mod report;
pub mod sparse;
pub mod vhdx;

pub use chain::{LayerSpec, open_chain};
pub use copy::{
    FileDigest, FlattenJob, FlattenReport, IoPath, flatten_all, flatten_all_digested,
    flatten_all_digested_with,
};
pub use error::{DiskError, Result};
pub use image::{Extent, ExtentState, Format, Image};
pub use ops::*;
