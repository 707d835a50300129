//! Whole-image operations over any format: open a chain, create, create a differencing
//! child, merge, rebase, changed ranges, flatten (the copy engine), compare, check, info.
//!
//! These are the calls the host and the export crates make; format details stay in the
//! format modules.
//!
//! NOTE (skeleton): bodies marked `todo!` are being written by the disk engine work.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::image::{Extent, Format, Image};

/// Cooperative cancellation shared between a job and the work it runs.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress callback: `(bytes_done, bytes_total)` across the whole operation.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Detects the format of an existing image from its magic bytes (raw when none matches).
pub fn detect_format(path: &Path) -> Result<Format> {
    let _ = path;
    todo!("disk engine")
}

/// Opens an image and its whole parent chain (parents read-only).
pub fn open(path: &Path, writable: bool) -> Result<Box<dyn Image>> {
    let _ = (path, writable);
    todo!("disk engine")
}

/// Creates a new, empty base image. Fails if `path` exists.
pub fn create(path: &Path, format: Format, virtual_size: u64) -> Result<()> {
    let _ = (path, format, virtual_size);
    todo!("disk engine")
}

/// Creates a differencing child of `parent` at `child` and returns its format: a VHDX
/// child (`.avhdx`) for a VHDX parent, a qcow2 overlay for a qcow2 or raw parent. The child
/// names its parent by a path relative to the child's directory. Fails if `child` exists.
pub fn create_child(parent: &Path, child: &Path) -> Result<Format> {
    let _ = (parent, child);
    todo!("disk engine")
}

/// Merges `child`'s data into its direct parent, crash-safely: at every instant, the
/// chain read from `child` shows the same guest bytes, and running `commit` again after a
/// crash completes the merge. Afterwards the parent alone holds what the child showed; the
/// caller deletes the child and repoints the child's own children with [`rebase`].
pub fn commit(child: &Path) -> Result<()> {
    let _ = child;
    todo!("disk engine")
}

/// Copies into `child` every range it inherits from its direct parent, then makes the
/// parent's parent the child's parent (or makes the child standalone). Crash-safe: the
/// child's guest bytes never change. What deleting a layer with several children needs.
pub fn pull(child: &Path) -> Result<()> {
    let _ = child;
    todo!("disk engine")
}

/// Points `image` at a new parent (or none) without touching data. The caller guarantees
/// the new parent shows the same bytes as the old one. Atomic: a crash leaves either the
/// old or the new parent recorded. For VHDX, the linkage becomes the new parent's
/// DataWriteGuid.
pub fn rebase(image: &Path, new_parent: Option<&Path>) -> Result<()> {
    let _ = (image, new_parent);
    todo!("disk engine")
}

/// Layers of the chain, top first.
pub fn chain(path: &Path) -> Result<Vec<PathBuf>> {
    let _ = path;
    todo!("disk engine")
}

/// The exact guest byte ranges that may differ between `top` and `ancestor` (a layer in
/// `top`'s chain): the union of what every layer above `ancestor` holds (data or zeros),
/// merged and sorted. Errors if `ancestor` is not in the chain.
pub fn changed_ranges(top: &Path, ancestor: &Path) -> Result<Vec<Range<u64>>> {
    let _ = (top, ancestor);
    todo!("disk engine")
}

/// One flatten: read the chain from `source` and write a new image at `dest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlattenJob {
    /// Top layer of the chain to read.
    pub source: PathBuf,
    /// Only the ranges that changed above this ancestor are written (see
    /// [`changed_ranges`]); `None` = every allocated range of the whole chain.
    pub base: Option<PathBuf>,
    pub dest: PathBuf,
    pub dest_format: Format,
    /// Makes `dest` a differencing image of this parent (VHDX child for a VHDX parent,
    /// qcow2 overlay otherwise), named by a path relative to `dest`'s directory. Ranges not
    /// written are inherited from it.
    pub dest_parent: Option<PathBuf>,
}

/// What a flatten wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlattenReport {
    pub dest: PathBuf,
    pub format: Format,
    pub virtual_size: u64,
    /// Guest bytes written as data.
    pub data_bytes: u64,
    /// The ranges written (data or zero), merged and sorted.
    pub ranges: Vec<Range<u64>>,
}

/// Flattens several images in parallel (up to `threads` at once), sparse, with
/// `copy_file_range` per extent where the layouts allow and read/write otherwise.
/// A failed or cancelled flatten removes the destination files it created.
pub fn flatten_all(
    jobs: &[FlattenJob],
    threads: usize,
    progress: Progress<'_>,
    cancel: &CancelToken,
) -> Result<Vec<FlattenReport>> {
    let _ = (jobs, threads, progress, cancel);
    todo!("disk engine")
}

/// Facts about one image and its chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    pub path: PathBuf,
    pub format: Format,
    pub virtual_size: u64,
    /// VHDX block size or qcow2 cluster size; 4096 for raw.
    pub block_size: u64,
    /// Host bytes allocated to this layer's file.
    pub allocated_bytes: u64,
    /// Chain, top first (includes this image).
    pub chain: Vec<PathBuf>,
}

pub fn info(path: &Path) -> Result<ImageInfo> {
    let _ = path;
    todo!("disk engine")
}

/// Whole-chain allocation map (top layer's view: data, zero or unallocated per range).
pub fn map(path: &Path) -> Result<Vec<Extent>> {
    let _ = path;
    todo!("disk engine")
}

/// Outcome of a structural check, like `qemu-img check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// Structural errors (exit 2 like qemu-img).
    pub corruptions: Vec<String>,
    /// Leaked host space (exit 3 like qemu-img).
    pub leaks: Vec<String>,
}

pub fn check(path: &Path) -> Result<CheckReport> {
    let _ = path;
    todo!("disk engine")
}

/// Compares the guest bytes of two images (any formats). `None` = identical (the larger
/// one's tail must be zeros); `Some(offset)` = first differing byte.
pub fn compare(a: &Path, b: &Path) -> Result<Option<u64>> {
    let _ = (a, b);
    todo!("disk engine")
}

/// Writes `len` bytes of `pattern` at `offset` into the image's top layer, then flushes.
pub fn write_pattern(path: &Path, offset: u64, len: u64, pattern: u8) -> Result<()> {
    let _ = (path, offset, len, pattern);
    todo!("disk engine")
}
