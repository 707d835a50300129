//! qcow2 images (version 2 read, version 3 read and write) with backing files.
//!
//! Rooms: this file holds the open layer ([`Qcow2Image`]) and its [`Image`] impl;
//! `header` decodes and validates the header; `tables` is the L1/L2 read path;
//! `allocation` the refcounts and the crash-ordered write path; `create` creates images
//! and rewrites backing links; `forget_bitmaps` removes persistent bitmaps; `check`
//! checks and repairs refcounts; `compressed`
//! inflates compressed clusters. Opening a qcow2 image with its backing chain lives in
//! [`crate::probe`] (the probing policy) and [`crate::chain`](mod@crate::chain) (recorded chains).
//!
//! Own code rather than `imago`: imago clears the autoclear feature bits on every writable
//! open, which silently invalidates persistent dirty bitmaps (the bitmaps decision below).
//!
//! Decisions:
//! - **Persistent dirty bitmaps** are never destroyed: a writable open of an image whose
//!   autoclear bits are set (bit 0 = consistent bitmaps extension) is refused with an error
//!   that says why. cosnap does not update bitmaps, so writing would make them lie. A
//!   caller that gives up an image's change tracking says so with [`forget_bitmaps`]
//!   (the bitmaps are removed, never left stale), then writes.
//! - Writable opens are also refused for images with internal snapshots, the dirty bit
//!   (lazy refcounts not yet repaired) or the corrupt bit; reading them is fine.
//! - Allocation always appends at the end of the file (freed clusters are not reused), and
//!   refcounts are written before the L2 entry that uses them, with an fsync in between
//!   unless the image is a fresh copy target ([`Qcow2Image::set_ordered`]); a crash can
//!   leak clusters but never leaves a cluster referenced without a refcount.
//! - Compressed clusters are reported as `Data { host_offset: None }` in maps and are read
//!   with a raw-deflate decoder; writing over one is refused as unsupported.
//! - Every table size comes from a validated header field: L1 ≤ 32 MiB, refcount table ≤
//!   8 MiB (qemu's limits), both inside the file; caches are bounded by bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{DiskError, Result};
use crate::image::{Extent, ExtentState, Format, Image};

mod allocation;
pub mod bitmaps;
mod check;
mod compressed;
mod create;
mod forget_bitmaps;
mod header;
mod tables;

pub use crate::image::push_extent;
pub use crate::paths::{canonical, relative_path, resolve_backing};
use allocation::get_entry;
pub use bitmaps::{BitmapInfo, ChangeInfo, LostReason, dirty_ranges, list_bitmaps};
pub use check::{check, open_standalone, repair_leaks};
pub use create::{CreateOptions, create, set_backing};
pub use forget_bitmaps::forget_bitmaps;
use header::open_with_header;
use header::refuse_writable;
pub use header::{Header, read_header};

/// The first four bytes of every qcow2 file.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const CACHE_BYTES: u64 = 4 << 20;
/// Default cluster size for images cosnap creates (as qemu-img).
pub const DEFAULT_CLUSTER_BITS: u32 = 16;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}

/// What one guest cluster (or run of clusters) maps to in this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unallocated,
    Zero,
    /// Host offset of the guest position asked about.
    Data(u64),
    /// The raw L2 entry of a compressed cluster.
    Compressed(u64),
}

/// Mutable state: table caches and, when writable, the allocator.
struct State {
    l1: Vec<u64>,
    /// Most recently used last.
    l2_cache: Vec<(u64, Arc<Vec<u64>>)>,
    refblock_cache: Vec<(u64, Vec<u8>)>,
    reftable: Vec<u64>,
    rt_offset: u64,
    rt_clusters: u64,
    /// First never-used host offset (cluster aligned); allocation appends here.
    next_free: u64,
    /// Host length of the file as far as reads are concerned.
    file_len: u64,
}

/// An open qcow2 layer, its backing chain opened read-only beneath it.
pub struct Qcow2Image {
    path: PathBuf,
    file: File,
    hdr: Header,
    writable: bool,
    /// fsync between refcount updates and the L2 entries that use them.
    ordered: bool,
    backing: Option<Box<dyn Image>>,
    state: Mutex<State>,
    l2_cache_cap: usize,
    refblock_cache_cap: usize,
}

impl Qcow2Image {
    /// Opens this one layer without its backing chain (unallocated clusters read as
    /// zeros until [`Qcow2Image::attach_backing`] gives it one).
    pub fn open_layer(path: &Path, writable: bool) -> Result<Qcow2Image> {
        let (file, file_len, hdr) = open_with_header(path, writable)?;
        let cs = hdr.cluster_size();
        if writable {
            refuse_writable(path, &hdr)?;
        }
        let mut l1_bytes = vec![0u8; hdr.l1_size as usize * 8];
        file.read_exact_at(&mut l1_bytes, hdr.l1_table_offset)
            .map_err(|e| DiskError::io(path, e))?;
        let l1: Vec<u64> = l1_bytes.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let mut reftable = Vec::new();
        if writable {
            let mut rt = vec![0u8; (hdr.refcount_table_clusters as u64 * cs) as usize];
            file.read_exact_at(&mut rt, hdr.refcount_table_offset)
                .map_err(|e| DiskError::io(path, e))?;
            reftable = rt.chunks_exact(8).map(|c| be64(c, 0)).collect();
        }
        let state = State {
            l1,
            l2_cache: Vec::new(),
            refblock_cache: Vec::new(),
            reftable,
            rt_offset: hdr.refcount_table_offset,
            rt_clusters: hdr.refcount_table_clusters as u64,
            next_free: file_len.div_ceil(cs) * cs,
            file_len,
        };
        let cap = ((CACHE_BYTES / cs) as usize).max(2);
        Ok(Qcow2Image {
            path: path.to_path_buf(),
            file,
            hdr,
            writable,
            ordered: true,
            backing: None,
            state: Mutex::new(state),
            l2_cache_cap: cap,
            refblock_cache_cap: cap,
        })
    }

    /// Gives a layer opened with [`Qcow2Image::open_layer`] the parent the caller checked.
    pub fn attach_backing(&mut self, parent: Box<dyn Image>) {
        self.backing = Some(parent);
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.hdr
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.hdr.cluster_size()
    }

    /// Turns off the fsync between refcount and L2 updates. Only for images that are being
    /// built from scratch and are deleted if the build fails (the copy engine's outputs).
    pub fn set_ordered(&mut self, ordered: bool) {
        self.ordered = ordered;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn corrupt(&self, defect: String) -> DiskError {
        DiskError::corrupt(&self.path, defect)
    }

    fn io(&self, e: std::io::Error) -> DiskError {
        DiskError::io(&self.path, e)
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.hdr.size => Ok(()),
            _ => Err(DiskError::invalid(
                &self.path,
                format!(
                    "range {offset}+{len} is past the virtual size {}",
                    self.hdr.size
                ),
            )),
        }
    }
}

impl Image for Qcow2Image {
    fn format(&self) -> Format {
        Format::Qcow2
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn file(&self) -> &File {
        &self.file
    }
    fn virtual_size(&self) -> u64 {
        self.hdr.size
    }
    fn granularity(&self) -> u64 {
        self.cluster_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_inner(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.ensure_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        (|| {
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let (kind, len) = self.lookup(st, pos, (buf.len() - done) as u64)?;
                let data = &buf[done..done + len as usize];
                match kind {
                    Kind::Data(host) => {
                        self.file.write_all_at(data, host).map_err(|e| self.io(e))?
                    }
                    k => self.write_allocating(st, data, pos, k)?,
                }
                done += len as usize;
            }
            Ok(())
        })()
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.ensure_writable()?;
        self.check_range(offset, len)?;
        let cs = self.cluster_size();
        let end = offset + len;
        let first_full = offset.div_ceil(cs) * cs;
        let last_full = end / cs * cs;
        let zero_partial = |img: &mut Self, s: u64, e: u64| -> Result<()> {
            if e > s {
                let zeros = vec![0u8; (e - s) as usize];
                img.write_at(&zeros, s)?;
            }
            Ok(())
        };
        if first_full >= last_full {
            return zero_partial(self, offset, end);
        }
        zero_partial(self, offset, first_full)?;
        zero_partial(self, last_full, end)?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        // Full clusters: set the zero flag, keeping any host cluster (preallocated zero).
        let path = self.path.clone();
        let mut f = |_c: u64, old: u64| -> Result<u64> {
            if old & OFLAG_COMPRESSED != 0 {
                return Err(DiskError::unsupported(&path, "zeroing compressed clusters"));
            }
            let host = old & OFFSET_MASK;
            Ok(if host != 0 {
                host | OFLAG_COPIED | OFLAG_ZERO
            } else {
                OFLAG_ZERO
            })
        };
        self.update_l2(st, first_full / cs, (last_full - first_full) / cs, &mut f)
    }
    fn direct_write_target(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        self.ensure_writable()?;
        self.check_range(offset, len)?;
        let cs = self.cluster_size();
        if !offset.is_multiple_of(cs) || !len.is_multiple_of(cs) || len == 0 {
            return Ok(None);
        }
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        // Either already one contiguous data run, or nothing allocated in this layer.
        let mut pos = offset;
        let mut all_free = true;
        let mut contiguous: Option<u64> = None;
        while pos < offset + len {
            let (kind, n) = self.lookup(st, pos, offset + len - pos)?;
            match kind {
                Kind::Unallocated => contiguous = None,
                Kind::Data(h) if pos == offset && n == len => contiguous = Some(h),
                _ => {
                    all_free = false;
                    contiguous = None;
                }
            }
            if kind != Kind::Unallocated {
                all_free = false;
            }
            pos += n;
        }
        if let Some(h) = contiguous {
            return Ok(Some(h));
        }
        if !all_free {
            return Ok(None);
        }
        let n = len / cs;
        let host = self.alloc_clusters(st, n)?;
        if self.ordered {
            self.sync()?;
        }
        let first = offset / cs;
        self.update_l2(st, first, n, &mut |c, _| {
            Ok((host + (c - first) * cs) | OFLAG_COPIED)
        })?;
        Ok(Some(host))
    }
    fn flush(&mut self) -> Result<()> {
        if self.writable {
            let next_free = self.lock().next_free;
            // Keep the file covering every allocated cluster, even if its data was never written.
            let len = self.file.metadata().map_err(|e| self.io(e))?.len();
            if len < next_free {
                self.file.set_len(next_free).map_err(|e| self.io(e))?;
            }
            self.file.sync_all().map_err(|e| self.io(e))?;
        }
        Ok(())
    }
    fn layer_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        let mut st = self.lock();
        while pos < end {
            let (kind, n) = self.lookup(&mut st, pos, end - pos)?;
            let state = match kind {
                Kind::Unallocated => ExtentState::Inherited,
                Kind::Zero => ExtentState::Zero,
                Kind::Data(h) => ExtentState::Data {
                    host_offset: Some(h),
                },
                Kind::Compressed(_) => ExtentState::Data { host_offset: None },
            };
            push_extent(
                &mut out,
                Extent {
                    offset: pos,
                    len: n,
                    state,
                },
            );
            pos += n;
        }
        Ok(out)
    }
    fn parent(&self) -> Option<&dyn Image> {
        self.backing.as_deref()
    }
}
