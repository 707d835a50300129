//! VHDX (MS-VHDX) images: dynamic, fixed and differencing (`.avhdx`), with log replay.
//!
//! Own reader and writer, written from the MS-VHDX specification. Every header value is
//! validated before it sizes an allocation: tables live inside the file, so a hostile
//! file can make cosnap allocate at most about its own size (the log is capped at 16 MiB).
//!
//! Decisions on points the spec leaves open:
//! * Reads of NOT_PRESENT blocks in a base, and of UNDEFINED/UNMAPPED blocks anywhere,
//!   return zeros; in [`crate::Image::layer_map`] NOT_PRESENT is `Inherited`, the others `Zero`.
//! * A partial write into a NOT_PRESENT block of a differencing child allocates the block
//!   as PARTIALLY_PRESENT and sets the sector-bitmap bits of the sectors written (sub-sector
//!   edges are completed with the bytes the chain showed), so untouched sectors still come
//!   from the parent and the child records exactly what changed.
//! * Metadata updates go through the log at flush time; see [`image`] for the ordering.
//! * New children use the parent's block size.

mod bat;
mod chain;
mod create;
mod format;
mod header;
pub mod image;
mod log;
mod metadata;
mod region;

use std::path::{Path, PathBuf};

use crate::error::Result;

pub use chain::{CommitStep, commit_with_hook};
pub use image::VhdxImage;

/// Options for [`create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Payload block size: power of two, 1 MiB ..= 256 MiB. Default 32 MiB (Hyper-V's
    /// default for dynamic disks; large blocks keep the BAT small and copies sequential).
    pub block_size: u32,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// Fixed image (every block FULLY_PRESENT, LeaveBlockAllocated) instead of dynamic.
    pub fixed: bool,
}

impl CreateOptions {
    /// 32 MiB, Hyper-V's default payload block size for dynamic disks.
    pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
    /// A dynamic image of `virtual_size` bytes with 32 MiB blocks, 512-byte logical and
    /// 4096-byte physical sectors (Hyper-V's defaults).
    pub fn dynamic(virtual_size: u64) -> Self {
        CreateOptions {
            virtual_size,
            block_size: Self::DEFAULT_BLOCK_SIZE,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            fixed: false,
        }
    }
}

/// Creates a new dynamic or fixed VHDX. Fails if `path` exists.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    create::create(path, opts)
}

/// Creates a differencing child (`.avhdx`) of `parent` at `child`: `parent_linkage` = the
/// parent's DataWriteGuid, `relative_path` (with `\`) and `absolute_win32_path`
/// (`\\?\Z:\…`, Wine's mapping of `/`); the parent's virtual-disk metadata is copied.
/// Fails if `child` exists.
pub fn create_child(parent: &Path, child: &Path) -> Result<()> {
    create::create_child(parent, child)
}

/// Merges `child`'s data into its direct parent, crash-safely and re-runnably.
///
/// Ordering (the chain read from `child` shows the same bytes at every instant):
/// 1. open the chain read-only: the current linkage must hold;
/// 2. through the child's log, write `parent_linkage` = the parent's current
///    DataWriteGuid and `parent_linkage2` = a new GUID `N` (the child's own DataWriteGuid
///    does not change, so its children stay valid);
/// 3. open the parent writable with `N` as its next DataWriteGuid and copy every range
///    the child holds (data and zeros). Before its header changes the parent matches
///    `parent_linkage`, afterwards `parent_linkage2`; the ranges written are shadowed by
///    the child, so the child's view never changes;
/// 4. flush the parent (data, then BAT through its log).
///
/// A crash anywhere leaves a valid chain; running `commit` again redoes steps 1–4. Other
/// children of the parent are invalidated (their linkage no longer matches), as in
/// Hyper-V; the caller deletes `child` afterwards and rebases the child's own children.
pub fn commit(child: &Path) -> Result<()> {
    commit_with_hook(child, &mut |_| true)
}

/// Points `image` (a differencing child) at `new_parent`: `parent_linkage` = its
/// DataWriteGuid, new paths; written through the log, so a crash leaves the old or the
/// new locator. The caller guarantees the new parent shows the same bytes. `None` makes
/// the image standalone, only if every block is present in it (else `Invalid`).
pub fn rebase(image: &Path, new_parent: Option<&Path>) -> Result<()> {
    chain::rebase(image, new_parent)
}

/// Structural check: corruptions vs leaks.
pub fn check(path: &Path) -> Result<crate::report::CheckReport> {
    chain::check(path)
}

/// True if the bytes start with the VHDX file type identifier `"vhdxfile"`.
pub fn is_vhdx(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"vhdxfile")
}

/// The resolved parent file of a differencing image, `None` for a base image.
pub fn parent_path(path: &Path) -> Result<Option<PathBuf>> {
    chain::parent_path(path)
}
