//! The one trait every format implements, and the vocabulary of allocation maps.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// The image formats cosnap reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// VHDX (`.vhdx`, and `.avhdx` differencing children).
    Vhdx,
    /// qcow2 (version 2 read, version 3 read and write).
    Qcow2,
    /// A raw byte-for-byte image.
    Raw,
}

impl Format {
    /// The lowercase name qemu-img and the repository use.
    pub fn name(self) -> &'static str {
        match self {
            Format::Vhdx => "vhdx",
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
    /// The format `name` names (`avhdx` is VHDX), ignoring case.
    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "vhdx" | "avhdx" => Some(Format::Vhdx),
            "qcow2" => Some(Format::Qcow2),
            "raw" | "img" => Some(Format::Raw),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one layer says about a range of guest bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtentState {
    /// This layer holds the bytes. `host_offset` is where they start in this layer's file
    /// when they are stored contiguously there for the whole extent (enables
    /// `copy_file_range`); `None` when the layout does not allow a direct copy.
    Data {
        /// Where the extent starts in this layer's file, when stored contiguously.
        host_offset: Option<u64>,
    },
    /// This layer says the bytes read as zeros (explicit zeros, hiding any parent).
    Zero,
    /// This layer does not hold the bytes: they come from the parent, or read as zeros when
    /// there is no parent.
    Inherited,
}

/// A run of guest bytes `[offset, offset + len)` in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// First guest byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What this layer holds there.
    pub state: ExtentState,
}

impl Extent {
    /// Whether `next` starts where this extent ends in the same state (and, for data, at the
    /// next host byte), so the two can be reported as one run.
    pub fn continues_into(&self, next: &Extent) -> bool {
        self.offset + self.len == next.offset
            && match (self.state, next.state) {
                (
                    ExtentState::Data {
                        host_offset: Some(a),
                    },
                    ExtentState::Data {
                        host_offset: Some(b),
                    },
                ) => a + self.len == b,
                (a, b) => a == b,
            }
    }
}

/// An open image: one layer, with its parent chain opened read-only beneath it.
///
/// Reads go through the chain; writes go to this layer only. Parents are never opened
/// writable.
pub trait Image: Send + Sync {
    /// This layer's format.
    fn format(&self) -> Format;
    /// This layer's file.
    fn path(&self) -> &Path;
    /// The layer's own file (for sparse copies and fsync).
    fn file(&self) -> &File;
    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;
    /// Allocation granularity of this layer (VHDX block size, qcow2 cluster size, 4 KiB for raw).
    fn granularity(&self) -> u64;
    /// Reads guest bytes at `offset` through the whole chain. Reading past the virtual size
    /// is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes guest bytes into this layer (allocating as needed). Errors on a read-only open.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes `[offset, offset + len)` read as zeros in this layer (hiding any parent).
    /// Formats override this to record zeros without writing data.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
    /// Allocates this layer's storage for `[offset, offset + len)` and returns the offset in
    /// [`Image::file`] where the caller may write those guest bytes directly (with
    /// `copy_file_range`), or `None` when the layout does not allow it. `offset` and `len`
    /// are multiples of [`Image::granularity`]. The default is `None`.
    fn direct_write_target(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        let _ = (offset, len);
        Ok(None)
    }
    /// Makes every write so far durable (data, then metadata, then fsync).
    fn flush(&mut self) -> Result<()>;
    /// This layer's own allocation over `[offset, offset + len)`: sorted, adjacent extents
    /// that cover the range exactly, adjacent runs of the same state merged.
    fn layer_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
    /// The parent layer, opened read-only, if any.
    fn parent(&self) -> Option<&dyn Image>;
}

/// Appends `e`, merging with the previous extent when the state continues it.
pub fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.continues_into(&e)
    {
        last.len += e.len;
        return;
    }
    out.push(e);
}
