//! VHDX (MS-VHDX) images: dynamic, fixed and differencing (`.avhdx`), with log replay.
//!
//! NOTE (skeleton): the public signatures below are stable; bodies are being written.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::image::{Extent, Format, Image};

/// Options for [`create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    pub virtual_size: u64,
    /// Payload block size: power of two, 1 MiB ..= 256 MiB. Default 32 MiB (Hyper-V's default).
    pub block_size: u32,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// Fixed image (every block FULLY_PRESENT, LeaveBlockAllocated) instead of dynamic.
    pub fixed: bool,
}

impl CreateOptions {
    pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;
    /// A dynamic image of `virtual_size` bytes with 32 MiB blocks and 512/4096 sectors.
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

/// An open VHDX layer with its parents (read-only) beneath it.
pub struct VhdxImage {
    path: PathBuf,
    file: File,
}

impl VhdxImage {
    /// Opens `path`; parents are opened read-only via the parent locator and linkage-checked.
    pub fn open(path: &Path, writable: bool) -> Result<VhdxImage> {
        let _ = (path, writable);
        todo!("vhdx engine")
    }
}

impl Image for VhdxImage {
    fn format(&self) -> Format {
        Format::Vhdx
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn file(&self) -> &File {
        &self.file
    }
    fn virtual_size(&self) -> u64 {
        todo!()
    }
    fn granularity(&self) -> u64 {
        todo!()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        todo!()
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        todo!()
    }
    fn flush(&mut self) -> Result<()> {
        todo!()
    }
    fn layer_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let _ = (offset, len);
        todo!()
    }
    fn parent(&self) -> Option<&dyn Image> {
        todo!()
    }
}

/// Creates a new dynamic or fixed VHDX. Fails if `path` exists.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    let _ = (path, opts);
    todo!("vhdx engine")
}

/// Creates a differencing child (`.avhdx`) of `parent` at `child`.
pub fn create_child(parent: &Path, child: &Path) -> Result<()> {
    let _ = (parent, child);
    todo!("vhdx engine")
}

/// Merges `child`'s data into its direct parent, crash-safely and re-runnably.
pub fn commit(child: &Path) -> Result<()> {
    let _ = child;
    todo!("vhdx engine")
}

/// Points `image` at `new_parent` (linkage = its DataWriteGuid), or makes it standalone.
pub fn rebase(image: &Path, new_parent: Option<&Path>) -> Result<()> {
    let _ = (image, new_parent);
    todo!("vhdx engine")
}

/// Structural check: corruptions vs leaks.
pub fn check(path: &Path) -> Result<crate::CheckReport> {
    let _ = path;
    todo!("vhdx engine")
}

/// True if the bytes start with the VHDX file type identifier `"vhdxfile"`.
pub fn is_vhdx(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"vhdxfile")
}

/// The resolved parent file of a differencing image, `None` for a base image.
pub fn parent_path(path: &Path) -> Result<Option<PathBuf>> {
    let _ = path;
    todo!("vhdx engine")
}
