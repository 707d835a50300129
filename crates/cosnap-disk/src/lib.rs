//! Virtual disk images — VHDX (with `.avhdx` differencing children and log replay), qcow2
//! (with backing files) and raw — behind one [`Image`] trait, plus the operations cosnap
//! builds snapshots and exports from: chains, per-layer allocation maps, crash-safe merges,
//! changed ranges between layers, and the sparse, parallel flatten/copy engine.
//!
//! Knows nothing of CIM or the repository. Every format module parses untrusted headers
//! with bounds checks and reports typed [`DiskError`]s that name the file and the defect.

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
pub mod vhdx;

pub use chain::{LayerSpec, open_chain};
pub use copy::{FlattenJob, FlattenReport, flatten_all, flatten_all_digested};
pub use error::{DiskError, Result};
pub use image::{Extent, ExtentState, Format, Image};
pub use ops::*;
