//! qcow2 images (version 2 read, version 3 read and write) with backing files.
//!
//! Own code rather than `imago`: imago clears the autoclear feature bits on every writable
//! open, which silently invalidates persistent dirty bitmaps (the bitmaps decision below).
//!
//! Decisions:
//! - **Persistent dirty bitmaps** are never destroyed: a writable open of an image whose
//!   autoclear bits are set (bit 0 = consistent bitmaps extension) is refused with an error
//!   that says why. cosnap does not update bitmaps, so writing would make them lie.
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

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{DiskError, Result};
use crate::image::{Extent, ExtentState, Format, Image};

pub mod bitmaps;
mod check;
mod compressed;
mod create;

pub use crate::image::push_extent;
pub use crate::paths::{canonical, relative_path, resolve_backing};
pub use bitmaps::{BitmapInfo, ChangeInfo, LostReason, dirty_ranges, list_bitmaps};
pub use check::{check, open_standalone, repair_leaks};
use compressed::inflate_raw;
pub use create::{CreateOptions, create, set_backing};

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

/// The parsed, validated header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Bitmaps extension: (nb_bitmaps, directory_size, directory_offset).
    pub bitmaps: Option<(u32, u64, u64)>,
    /// Extensions other than backing format and end marker, kept verbatim on rebase.
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Reads and validates the header of the qcow2 file `path` of length `file_len`.
pub fn read_header(path: &Path, file: &File, file_len: u64) -> Result<Header> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    if file_len < 72 {
        return Err(corrupt(format!(
            "file is {file_len} bytes, too short for a qcow2 header"
        )));
    }
    let mut h = [0u8; 112];
    let n = (file_len as usize).min(112);
    file.read_exact_at(&mut h[..n], 0)
        .map_err(|e| DiskError::io(path, e))?;
    if h[0..4] != MAGIC {
        return Err(corrupt("not a qcow2 file (bad magic)".into()));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(DiskError::unsupported(
            path,
            format!("qcow2 version {version}"),
        ));
    }
    let backing_file_offset = be64(&h, 8);
    let backing_file_size = be32(&h, 16);
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!(
            "cluster_bits {cluster_bits} outside 9..=21"
        )));
    }
    let cs = 1u64 << cluster_bits;
    let size = be64(&h, 24);
    let crypt = be32(&h, 32);
    if crypt != 0 {
        return Err(DiskError::unsupported(path, "encrypted qcow2 images"));
    }
    let l1_size = be32(&h, 36);
    let l1_table_offset = be64(&h, 40);
    let refcount_table_offset = be64(&h, 48);
    let refcount_table_clusters = be32(&h, 56);
    let nb_snapshots = be32(&h, 60);
    let snapshots_offset = be64(&h, 64);
    let (incompatible, compatible, autoclear, refcount_order, header_length) = if version >= 3 {
        if file_len < 104 {
            return Err(corrupt("truncated version 3 header".into()));
        }
        (
            be64(&h, 72),
            be64(&h, 80),
            be64(&h, 88),
            be32(&h, 96),
            be32(&h, 100),
        )
    } else {
        (0, 0, 0, 4, 72)
    };
    if version >= 3 && (header_length < 104 || header_length as u64 > cs) {
        return Err(corrupt(format!(
            "header_length {header_length} outside 104..=cluster size"
        )));
    }
    if refcount_order > 6 {
        return Err(corrupt(format!("refcount_order {refcount_order} > 6")));
    }
    check_incompatible_features(path, incompatible, header_length, &h)?;
    check_l1_table(path, cs, file_len, size, l1_size, l1_table_offset)?;
    check_refcount_table(
        path,
        cs,
        file_len,
        refcount_table_offset,
        refcount_table_clusters,
    )?;
    let (c0, ext_limit) = read_first_cluster(path, file, cs.min(file_len), backing_file_offset)?;
    let (backing_format, bitmaps, other_extensions) =
        read_extensions(path, &c0, header_length as usize, ext_limit)?;
    let backing_file = read_backing_name(path, &c0, backing_file_offset, backing_file_size)?;
    Ok(Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
        incompatible,
        compatible,
        autoclear,
        refcount_order,
        header_length,
        backing_file,
        backing_format,
        bitmaps,
        other_extensions,
    })
}

/// The first cluster (`len` bytes) and where its header extensions must end: header
/// extensions live between the header and the backing name.
fn read_first_cluster(
    path: &Path,
    file: &File,
    len: u64,
    backing_file_offset: u64,
) -> Result<(Vec<u8>, usize)> {
    let first_cluster_len = len as usize;
    let mut c0 = vec![0u8; first_cluster_len];
    file.read_exact_at(&mut c0, 0)
        .map_err(|e| DiskError::io(path, e))?;
    let ext_limit = if backing_file_offset != 0 {
        (backing_file_offset as usize).min(first_cluster_len)
    } else {
        first_cluster_len
    };
    Ok((c0, ext_limit))
}

/// Refuses incompatible features cosnap does not implement (`h` is the raw header).
fn check_incompatible_features(
    path: &Path,
    incompatible: u64,
    header_length: u32,
    h: &[u8],
) -> Result<()> {
    if incompatible & 0b100 != 0 {
        return Err(DiskError::unsupported(path, "qcow2 external data files"));
    }
    if incompatible & 0b1000 != 0 && (header_length < 105 || h[104] != 0) {
        return Err(DiskError::unsupported(
            path,
            "qcow2 compression types other than zlib",
        ));
    }
    if incompatible & 0b1_0000 != 0 {
        return Err(DiskError::unsupported(path, "qcow2 extended L2 entries"));
    }
    if incompatible & !0b1_1111 != 0 {
        return Err(DiskError::unsupported(
            path,
            format!(
                "unknown incompatible qcow2 features {:#x}",
                incompatible & !0b1_1111
            ),
        ));
    }
    Ok(())
}

/// The L1 table must cover the virtual size, stay under qemu's 32 MiB and lie in the file.
fn check_l1_table(
    path: &Path,
    cs: u64,
    file_len: u64,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
) -> Result<()> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    if size > (1u64 << 56) {
        return Err(corrupt(format!("virtual size {size} is absurd")));
    }
    let l2_bytes_covered = cs * (cs / 8);
    let needed_l1 = size.div_ceil(l2_bytes_covered);
    if (l1_size as u64) * 8 > MAX_L1_BYTES {
        return Err(corrupt(format!(
            "L1 table of {l1_size} entries exceeds 32 MiB"
        )));
    }
    if (l1_size as u64) < needed_l1 {
        return Err(corrupt(format!(
            "L1 table of {l1_size} entries is too small for virtual size {size}"
        )));
    }
    if l1_size > 0 {
        if !l1_table_offset.is_multiple_of(cs) || l1_table_offset == 0 {
            return Err(corrupt(format!(
                "L1 table offset {l1_table_offset:#x} is not cluster aligned"
            )));
        }
        if l1_table_offset.saturating_add(l1_size as u64 * 8) > file_len {
            return Err(corrupt(format!(
                "L1 table at {l1_table_offset:#x} ({l1_size} entries) is past the end of the file"
            )));
        }
    }
    Ok(())
}

/// The refcount table must be cluster aligned, of sane size and inside the file.
fn check_refcount_table(
    path: &Path,
    cs: u64,
    file_len: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
) -> Result<()> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    if !refcount_table_offset.is_multiple_of(cs) || refcount_table_offset == 0 {
        return Err(corrupt(format!(
            "refcount table offset {refcount_table_offset:#x} is not cluster aligned"
        )));
    }
    let rt_bytes = refcount_table_clusters as u64 * cs;
    if rt_bytes > MAX_REFTABLE_BYTES || refcount_table_clusters == 0 {
        return Err(corrupt(format!(
            "refcount table of {refcount_table_clusters} clusters is absurd"
        )));
    }
    if refcount_table_offset.saturating_add(rt_bytes) > file_len {
        return Err(corrupt(format!(
            "refcount table at {refcount_table_offset:#x} is past the end of the file"
        )));
    }
    Ok(())
}

/// Header extensions found in `c0[start..ext_limit]`: backing format, bitmaps extension, and
/// the others kept verbatim.
type Extensions = (Option<String>, Option<(u32, u64, u64)>, Vec<(u32, Vec<u8>)>);

fn read_extensions(path: &Path, c0: &[u8], start: usize, ext_limit: usize) -> Result<Extensions> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    let mut pos = start;
    let mut backing_format = None;
    let mut bitmaps = None;
    let mut other_extensions = Vec::new();
    while pos + 8 <= ext_limit {
        let ty = be32(c0, pos);
        let len = be32(c0, pos + 4) as usize;
        if ty == EXT_END {
            break;
        }
        let data_start = pos + 8;
        if data_start + len > ext_limit {
            return Err(corrupt(format!(
                "header extension {ty:#x} runs past the first cluster"
            )));
        }
        let data = &c0[data_start..data_start + len];
        match ty {
            EXT_BACKING_FORMAT => {
                backing_format = Some(String::from_utf8_lossy(data).into_owned());
            }
            EXT_BITMAPS => {
                if len < 24 {
                    return Err(corrupt("bitmaps extension shorter than 24 bytes".into()));
                }
                bitmaps = Some((be32(data, 0), be64(data, 8), be64(data, 16)));
                other_extensions.push((ty, data.to_vec()));
            }
            EXT_DATA_FILE => return Err(DiskError::unsupported(path, "qcow2 external data files")),
            EXT_CRYPTO => return Err(DiskError::unsupported(path, "encrypted qcow2 images")),
            _ => other_extensions.push((ty, data.to_vec())),
        }
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok((backing_format, bitmaps, other_extensions))
}

/// The backing file name stored at `offset` in the first cluster `c0`, if any.
fn read_backing_name(path: &Path, c0: &[u8], offset: u64, size: u32) -> Result<Option<String>> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    Ok(if offset != 0 && size != 0 {
        if size > 1023 {
            return Err(corrupt(format!("backing file name of {size} bytes")));
        }
        let end = offset.saturating_add(size as u64);
        if end > c0.len() as u64 {
            return Err(corrupt(
                "backing file name is outside the first cluster".into(),
            ));
        }
        let name = &c0[offset as usize..end as usize];
        Some(
            String::from_utf8(name.to_vec())
                .map_err(|_| corrupt("backing file name is not UTF-8".into()))?,
        )
    } else {
        None
    })
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
    /// Opens `path` and its backing chain (read-only).
    pub fn open(path: &Path, writable: bool) -> Result<Qcow2Image> {
        Self::open_in_chain(path, writable, &mut Vec::new())
    }

    /// Opens `path`; `seen` holds the layers above it (canonical paths) to detect loops.
    /// Follows the backing file the header names (probing its format when the header
    /// records none): only for images a person named, never for repository layers (see
    /// [`crate::chain`](mod@crate::chain)).
    pub fn open_in_chain(
        path: &Path,
        writable: bool,
        seen: &mut Vec<PathBuf>,
    ) -> Result<Qcow2Image> {
        let mut img = Self::open_layer(path, writable)?;
        if let Some(name) = img.hdr.backing_file.clone() {
            let backing_path = resolve_backing(path, &name);
            let fmt = match img.hdr.backing_format.as_deref() {
                None => None,
                Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                    DiskError::unsupported(path, format!("backing file format {f:?}"))
                })?),
            };
            seen.push(canonical(path));
            let opened = crate::probe::open_backing(path, &backing_path, fmt, seen);
            seen.pop();
            img.backing = Some(opened?);
        }
        Ok(img)
    }

    /// Opens this one layer without its backing chain (unallocated clusters read as
    /// zeros until [`Qcow2Image::attach_backing`] gives it one).
    pub fn open_layer(path: &Path, writable: bool) -> Result<Qcow2Image> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| DiskError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| DiskError::io(path, e))?.len();
        let hdr = read_header(path, &file, file_len)?;
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

    pub fn header(&self) -> &Header {
        &self.hdr
    }

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

    /// The L2 table at `l2_offset`, through the cache.
    fn l2_table(&self, st: &mut State, l2_offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(i) = st.l2_cache.iter().position(|(o, _)| *o == l2_offset) {
            let entry = st.l2_cache.remove(i);
            let table = entry.1.clone();
            st.l2_cache.push(entry);
            return Ok(table);
        }
        let cs = self.cluster_size();
        if !l2_offset.is_multiple_of(cs) {
            return Err(self.corrupt(format!(
                "L2 table offset {l2_offset:#x} is not cluster aligned"
            )));
        }
        if l2_offset.saturating_add(cs) > st.file_len.max(st.next_free) {
            return Err(self.corrupt(format!(
                "L2 table at {l2_offset:#x} is past the end of the file"
            )));
        }
        let mut bytes = vec![0u8; cs as usize];
        self.file
            .read_exact_at(&mut bytes, l2_offset)
            .map_err(|e| self.io(e))?;
        let table = Arc::new(
            bytes
                .chunks_exact(8)
                .map(|c| be64(c, 0))
                .collect::<Vec<u64>>(),
        );
        if st.l2_cache.len() >= self.l2_cache_cap {
            st.l2_cache.remove(0);
        }
        st.l2_cache.push((l2_offset, table.clone()));
        Ok(table)
    }

    fn classify(&self, entry: u64) -> Result<Kind> {
        if entry & OFLAG_COMPRESSED != 0 {
            return Ok(Kind::Compressed(entry));
        }
        let host = entry & OFFSET_MASK;
        if self.hdr.version >= 3 && entry & OFLAG_ZERO != 0 {
            return Ok(Kind::Zero);
        }
        if host == 0 {
            return Ok(Kind::Unallocated);
        }
        if !host.is_multiple_of(self.cluster_size()) {
            return Err(self.corrupt(format!(
                "data cluster offset {host:#x} is not cluster aligned"
            )));
        }
        Ok(Kind::Data(host))
    }

    /// The mapping of guest `offset` and how many bytes from there (≤ `max_len`) map the same
    /// way (contiguous host bytes for data). Runs stop at L2 table boundaries.
    fn lookup(&self, st: &mut State, offset: u64, max_len: u64) -> Result<(Kind, u64)> {
        let cb = self.hdr.cluster_bits;
        let cs = self.cluster_size();
        let l2n = self.l2_entries();
        let cluster = offset >> cb;
        let l1_idx = (cluster / l2n) as usize;
        let l2_idx = (cluster % l2n) as usize;
        let in_cluster = offset & (cs - 1);
        let table_end = (cluster / l2n + 1) * l2n * cs;
        let limit = max_len.min(table_end - offset);
        let l1e = st.l1.get(l1_idx).copied().unwrap_or(0) & OFFSET_MASK;
        if l1e == 0 {
            return Ok((Kind::Unallocated, limit));
        }
        let table = self.l2_table(st, l1e)?;
        let first = self.classify(table[l2_idx])?;
        let mut clusters = 1u64;
        let want = (in_cluster + limit).div_ceil(cs);
        while clusters < want {
            let next = self.classify(table[l2_idx + clusters as usize])?;
            let same = match (first, next) {
                (Kind::Data(a), Kind::Data(b)) => b == a + clusters * cs,
                (Kind::Compressed(_), _) => false,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            clusters += 1;
        }
        let len = (clusters * cs - in_cluster).min(limit);
        let kind = match first {
            Kind::Data(h) => Kind::Data(h + in_cluster),
            k => k,
        };
        Ok((kind, len))
    }

    fn read_compressed(&self, entry: u64, in_cluster: u64, out: &mut [u8]) -> Result<()> {
        let cb = self.hdr.cluster_bits as u64;
        let cs = self.cluster_size();
        let x = 62 - (cb - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
        let csize = (sectors * 512 - (host & 511)).min(2 * cs);
        let file_len = self.lock().file_len;
        if host >= file_len {
            return Err(self.corrupt(format!(
                "compressed cluster at {host:#x} is past the end of the file"
            )));
        }
        let mut input = vec![0u8; csize.min(file_len - host) as usize];
        self.file
            .read_exact_at(&mut input, host)
            .map_err(|e| self.io(e))?;
        let cluster = inflate_raw(&input, cs as usize).map_err(|d| {
            self.corrupt(format!(
                "compressed cluster at {host:#x} does not decompress: {d}"
            ))
        })?;
        out.copy_from_slice(&cluster[in_cluster as usize..in_cluster as usize + out.len()]);
        Ok(())
    }

    /// Reads host bytes, zero-filling anything past the end of the file.
    fn pread_host(&self, buf: &mut [u8], host: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], host + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.virtual_size();
                if offset >= bsize {
                    buf.fill(0);
                } else {
                    let n = ((bsize - offset) as usize).min(buf.len());
                    b.read_at(&mut buf[..n], offset)?;
                    buf[n..].fill(0);
                }
            }
        }
        Ok(())
    }

    fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (kind, len) = {
                let mut st = self.lock();
                self.lookup(&mut st, pos, (buf.len() - done) as u64)?
            };
            let out = &mut buf[done..done + len as usize];
            match kind {
                Kind::Unallocated => self.read_backing(out, pos)?,
                Kind::Zero => out.fill(0),
                Kind::Data(host) => self.pread_host(out, host)?,
                Kind::Compressed(entry) => {
                    let in_cluster = pos & (self.cluster_size() - 1);
                    self.read_compressed(entry, in_cluster, out)?
                }
            }
            done += len as usize;
        }
        Ok(())
    }

    fn ensure_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::invalid(&self.path, "image is open read-only"))
        }
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io(e))
    }

    // ---- refcounts (writable only) ----

    fn refcount_bits(&self) -> u64 {
        1 << self.hdr.refcount_order
    }

    fn refblock_entries(&self) -> u64 {
        self.cluster_size() * 8 / self.refcount_bits()
    }

    fn refblock<'a>(&self, st: &'a mut State, offset: u64) -> Result<&'a mut Vec<u8>> {
        if let Some(i) = st.refblock_cache.iter().position(|(o, _)| *o == offset) {
            let entry = st.refblock_cache.remove(i);
            st.refblock_cache.push(entry);
        } else {
            let mut bytes = vec![0u8; self.cluster_size() as usize];
            self.pread_host(&mut bytes, offset)?;
            if st.refblock_cache.len() >= self.refblock_cache_cap {
                st.refblock_cache.remove(0);
            }
            st.refblock_cache.push((offset, bytes));
        }
        Ok(&mut st.refblock_cache.last_mut().unwrap().1)
    }

    /// Sets the refcount of `count` clusters from host cluster index `first` to `value`.
    fn set_refcounts(&self, st: &mut State, first: u64, count: u64, value: u64) -> Result<()> {
        let epb = self.refblock_entries();
        let bits = self.refcount_bits();
        let mut idx = first;
        let end = first + count;
        while idx < end {
            let block_idx = idx / epb;
            let block_off = self.ensure_refblock(st, block_idx)?;
            let stop = end.min((block_idx + 1) * epb);
            let (lo, hi) = (idx % epb, (stop - 1) % epb);
            let block = self.refblock(st, block_off)?;
            for i in lo..=hi {
                set_entry(block, i, bits, value);
            }
            let (byte_lo, byte_hi) = (
                (lo * bits / 8) as usize,
                ((hi + 1) * bits).div_ceil(8) as usize,
            );
            let span = block[byte_lo..byte_hi].to_vec();
            self.file
                .write_all_at(&span, block_off + byte_lo as u64)
                .map_err(|e| self.io(e))?;
            idx = stop;
        }
        Ok(())
    }

    /// The host offset of refcount block `block_idx`, allocating it (and growing the
    /// refcount table) if needed.
    fn ensure_refblock(&self, st: &mut State, block_idx: u64) -> Result<u64> {
        if block_idx >= st.reftable.len() as u64 {
            self.grow_reftable(st, block_idx + 1)?;
        }
        let existing = st.reftable[block_idx as usize] & OFFSET_MASK;
        if existing != 0 {
            return Ok(existing);
        }
        let cs = self.cluster_size();
        let off = st.next_free;
        st.next_free += cs;
        let zeros = vec![0u8; cs as usize];
        self.file
            .write_all_at(&zeros, off)
            .map_err(|e| self.io(e))?;
        st.file_len = st.file_len.max(off + cs);
        st.refblock_cache.retain(|(o, _)| *o != off);
        st.reftable[block_idx as usize] = off;
        self.file
            .write_all_at(&off.to_be_bytes(), st.rt_offset + block_idx * 8)
            .map_err(|e| self.io(e))?;
        self.set_refcounts(st, off / cs, 1, 1)?;
        Ok(off)
    }

    fn grow_reftable(&self, st: &mut State, min_entries: u64) -> Result<()> {
        let cs = self.cluster_size();
        let epb = self.refblock_entries();
        let per_cluster = cs / 8;
        let cover = (st.next_free / cs + 64).div_ceil(epb) * 2 + 2;
        let entries = min_entries.max(st.reftable.len() as u64 * 2).max(cover);
        let clusters = entries.div_ceil(per_cluster);
        if clusters * cs > MAX_REFTABLE_BYTES {
            return Err(DiskError::unsupported(
                &self.path,
                "the image would need a refcount table larger than 8 MiB",
            ));
        }
        let new_off = st.next_free;
        st.next_free += clusters * cs;
        st.reftable.resize((clusters * per_cluster) as usize, 0);
        let mut bytes = Vec::with_capacity((clusters * cs) as usize);
        for e in &st.reftable {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.file
            .write_all_at(&bytes, new_off)
            .map_err(|e| self.io(e))?;
        st.file_len = st.file_len.max(new_off + clusters * cs);
        let (old_off, old_clusters) = (st.rt_offset, st.rt_clusters);
        st.rt_offset = new_off;
        st.rt_clusters = clusters;
        self.set_refcounts(st, new_off / cs, clusters, 1)?;
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&new_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        self.file.write_all_at(&hdr, 48).map_err(|e| self.io(e))?;
        self.sync()?;
        self.set_refcounts(st, old_off / cs, old_clusters, 0)
    }

    fn alloc_clusters(&self, st: &mut State, n: u64) -> Result<u64> {
        let cs = self.cluster_size();
        let off = st.next_free;
        st.next_free += n * cs;
        self.set_refcounts(st, off / cs, n, 1)?;
        Ok(off)
    }

    /// Applies `f(old_entry) -> new_entry` to the L2 entries of `count` guest clusters from
    /// cluster index `first`, allocating L2 tables where needed.
    fn update_l2(
        &self,
        st: &mut State,
        first: u64,
        count: u64,
        f: &mut dyn FnMut(u64, u64) -> Result<u64>,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let l2n = self.l2_entries();
        let mut c = first;
        let end = first + count;
        while c < end {
            let l1_idx = (c / l2n) as usize;
            let stop = end.min((c / l2n + 1) * l2n);
            let l1e = st.l1[l1_idx];
            let l2_off = if l1e & OFFSET_MASK == 0 {
                let off = self.alloc_clusters(st, 1)?;
                let zeros = vec![0u8; cs as usize];
                self.file
                    .write_all_at(&zeros, off)
                    .map_err(|e| self.io(e))?;
                st.file_len = st.file_len.max(off + cs);
                if self.ordered {
                    self.sync()?;
                }
                let entry = off | OFLAG_COPIED;
                st.l1[l1_idx] = entry;
                self.file
                    .write_all_at(
                        &entry.to_be_bytes(),
                        self.hdr.l1_table_offset + l1_idx as u64 * 8,
                    )
                    .map_err(|e| self.io(e))?;
                off
            } else if l1e & OFLAG_COPIED == 0 {
                return Err(DiskError::unsupported(
                    &self.path,
                    "writing to an L2 table shared with an internal snapshot",
                ));
            } else {
                l1e & OFFSET_MASK
            };
            let mut table = self.l2_table(st, l2_off)?;
            let t = Arc::make_mut(&mut table);
            let (lo, hi) = ((c % l2n) as usize, ((stop - 1) % l2n) as usize);
            let mut bytes = Vec::with_capacity((hi - lo + 1) * 8);
            for (i, slot) in t[lo..=hi].iter_mut().enumerate() {
                *slot = f(c + i as u64, *slot)?;
                bytes.extend_from_slice(&slot.to_be_bytes());
            }
            self.file
                .write_all_at(&bytes, l2_off + lo as u64 * 8)
                .map_err(|e| self.io(e))?;
            if let Some(slot) = st.l2_cache.iter_mut().find(|(o, _)| *o == l2_off) {
                slot.1 = table;
            }
            c = stop;
        }
        Ok(())
    }

    /// Writes `data` at guest `pos` into freshly allocated clusters covering the clusters
    /// `[pos, pos + data.len())` touches (copy-on-write of partial clusters from below).
    fn write_allocating(&self, st: &mut State, data: &[u8], pos: u64, kind: Kind) -> Result<()> {
        if let Kind::Compressed(_) = kind {
            return Err(DiskError::unsupported(
                &self.path,
                "overwriting compressed clusters",
            ));
        }
        let cs = self.cluster_size();
        let first = pos / cs * cs;
        let end = pos + data.len() as u64;
        let last_end = end.div_ceil(cs) * cs;
        let n = (last_end - first) / cs;
        // Partial first/last clusters: start from what the cluster shows now.
        let old_cluster = |c: u64| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; cs as usize];
            if kind == Kind::Unallocated {
                let n = cs.min(self.hdr.size - c) as usize;
                self.read_backing(&mut buf[..n], c)?;
            }
            Ok(buf)
        };
        let head = if pos > first || (n == 1 && end < last_end) {
            let mut b = old_cluster(first)?;
            let s = (pos - first) as usize;
            let m = data.len().min(cs as usize - s);
            b[s..s + m].copy_from_slice(&data[..m]);
            Some(b)
        } else {
            None
        };
        let tail = if n > 1 && end < last_end {
            let c = last_end - cs;
            let mut b = old_cluster(c)?;
            let m = (end - c) as usize;
            b[..m].copy_from_slice(&data[data.len() - m..]);
            Some(b)
        } else {
            None
        };
        let host = self.alloc_clusters(st, n)?;
        if self.ordered {
            self.sync()?;
        }
        // Data: head cluster, middle straight from `data`, tail cluster.
        let mut w_guest = first;
        if let Some(h) = &head {
            self.file.write_all_at(h, host).map_err(|e| self.io(e))?;
            w_guest += cs;
        }
        let mid_end = if tail.is_some() {
            last_end - cs
        } else {
            last_end
        };
        if mid_end > w_guest {
            let s = (w_guest - pos) as usize;
            let e = (mid_end - pos) as usize;
            self.file
                .write_all_at(&data[s..e], host + (w_guest - first))
                .map_err(|e| self.io(e))?;
        }
        if let Some(t) = &tail {
            self.file
                .write_all_at(t, host + (last_end - cs - first))
                .map_err(|e| self.io(e))?;
        }
        st.file_len = st.file_len.max(host + n * cs);
        let mut freed = Vec::new();
        let first_cluster = first / cs;
        self.update_l2(st, first_cluster, n, &mut |c, old| {
            let old_host = old & OFFSET_MASK;
            if old & OFLAG_COMPRESSED == 0 && old_host != 0 {
                freed.push(old_host);
            }
            Ok((host + (c - first_cluster) * cs) | OFLAG_COPIED)
        })?;
        for h in freed {
            self.set_refcounts(st, h / cs, 1, 0)?;
        }
        Ok(())
    }
}

fn refuse_writable(path: &Path, hdr: &Header) -> Result<()> {
    if hdr.version < 3 {
        return Err(DiskError::unsupported(
            path,
            "writing qcow2 version 2 images (convert to v3)",
        ));
    }
    if hdr.autoclear & 1 != 0 || (hdr.autoclear != 0 && hdr.bitmaps.is_some()) {
        let n = hdr.bitmaps.map(|b| b.0).unwrap_or(0);
        return Err(DiskError::unsupported(
            path,
            format!(
                "image has {n} persistent dirty bitmap(s); cosnap does not update bitmaps, so \
                 writing would make them inconsistent — refusing to open writable \
                 (remove them with `qemu-img bitmap --remove`, or write with qemu)"
            ),
        ));
    }
    if hdr.autoclear != 0 {
        return Err(DiskError::unsupported(
            path,
            format!(
                "unknown autoclear features {:#x}; refusing to open writable",
                hdr.autoclear
            ),
        ));
    }
    if hdr.incompatible & 1 != 0 {
        return Err(DiskError::unsupported(
            path,
            "image is marked dirty (lazy refcounts); repair it with `qemu-img check -r all` first",
        ));
    }
    if hdr.incompatible & 2 != 0 {
        return Err(DiskError::corrupt(
            path,
            "image is marked corrupt; refusing to open writable",
        ));
    }
    if hdr.nb_snapshots != 0 {
        return Err(DiskError::unsupported(
            path,
            "writing qcow2 images with internal snapshots",
        ));
    }
    Ok(())
}

fn get_entry(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let s = i as usize * w;
        block[s..s + w]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64)
    } else {
        let per = 8 / bits;
        let byte = block[(i / per) as usize];
        ((byte >> ((i % per) * bits)) as u64) & ((1 << bits) - 1)
    }
}

fn set_entry(block: &mut [u8], i: u64, bits: u64, value: u64) {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let s = i as usize * w;
        let be = value.to_be_bytes();
        block[s..s + w].copy_from_slice(&be[8 - w..]);
    } else {
        let per = 8 / bits;
        let shift = (i % per) * bits;
        let mask = (((1u16 << bits) - 1) as u8) << shift;
        let b = &mut block[(i / per) as usize];
        *b = (*b & !mask) | (((value as u8) << shift) & mask);
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
