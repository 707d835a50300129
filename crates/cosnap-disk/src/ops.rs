//! Whole-image operations over any format: open a chain, create, create a differencing
//! child, merge, rebase, changed ranges, flatten (the copy engine), compare, check, info.
//!
//! These are the calls the host and the export crates make; format details stay in the
//! format modules. The copy engine lives in [`crate::copy`] (its entry points are re-exported at
//! the crate root), the allocation vocabulary both share in [`crate::extents`].
//!
//! Decisions:
//! - Chains are opened top-down; each backing file must be a regular file or a block
//!   device, must exist (else a `Chain` error naming the child and the missing file), must
//!   not already be in the chain (loop), and the chain is at most [`MAX_CHAIN_DEPTH`] deep.
//! - qcow2 overlays record the parent path relative to the overlay's directory and the
//!   parent's format (`qemu-img create -b REL -F FMT` equivalent).
//! - `commit` into a qcow2 or raw parent copies the child's own ranges (data and explicit
//!   zeros) through the generic image API; VHDX chains use the VHDX module's logged merge.
//! - `pull` makes a VHDX child standalone by writing explicit zeros where nothing below it
//!   holds data (a VHDX differencing file cannot otherwise drop its parent).
//! - `check` of a raw image reports clean (there is no metadata); qemu-img says "not
//!   supported" (63) instead.
//! - `compare` reads only ranges where either side's chain holds data; everything else is
//!   zeros on both sides by construction.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::chain::MAX_CHAIN_DEPTH;
use crate::chain::{LayerSpec, open_chain};
use crate::error::{DiskError, Result};
pub use crate::extents::{ChainExtent, chain_map, changed_ranges_open, layers, merge_ranges};
use crate::image::push_extent;
use crate::image::{Extent, ExtentState, Format, Image};
use crate::paths::{canonical, relative_path};
pub use crate::probe::{detect_format, open, open_backing};
pub use crate::progress::{CancelToken, Progress};
use crate::qcow2;
use crate::raw;
pub use crate::report::CheckReport;
use crate::vhdx;

/// Bytes moved per read/write step in merges and comparisons.
const STEP: u64 = 4 << 20;

/// Creates a new, empty base image. Fails if `path` exists.
pub fn create(path: &Path, format: Format, virtual_size: u64) -> Result<()> {
    match format {
        Format::Qcow2 => qcow2::create(
            path,
            &qcow2::CreateOptions {
                virtual_size,
                cluster_bits: qcow2::DEFAULT_CLUSTER_BITS,
                backing: None,
            },
        ),
        Format::Raw => raw::create(path, virtual_size),
        Format::Vhdx => vhdx::create(path, &vhdx::CreateOptions::dynamic(virtual_size)),
    }
}

/// Creates a qcow2 overlay of `parent` (any format) at `child`, the same virtual size, the
/// backing path recorded relative to the child's directory with the parent's format.
pub fn create_qcow2_overlay(parent: &Path, child: &Path) -> Result<()> {
    let parent_format = detect_format(parent)?;
    let size = open(parent, false)?.virtual_size();
    let dir = child
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let rel = relative_path(dir, parent);
    let name = rel
        .to_str()
        .ok_or_else(|| DiskError::invalid(parent, "path is not UTF-8"))?
        .to_string();
    qcow2::create(
        child,
        &qcow2::CreateOptions {
            virtual_size: size.div_ceil(512) * 512,
            cluster_bits: qcow2::DEFAULT_CLUSTER_BITS,
            backing: Some((name, parent_format)),
        },
    )
}

/// Creates a differencing child of `parent` at `child` and returns its format: a VHDX
/// child (`.avhdx`) for a VHDX parent, a qcow2 overlay for a qcow2 or raw parent. The child
/// names its parent by a path relative to the child's directory. Fails if `child` exists.
pub fn create_child(parent: &Path, child: &Path) -> Result<Format> {
    match detect_format(parent)? {
        Format::Vhdx => {
            vhdx::create_child(parent, child)?;
            Ok(Format::Vhdx)
        }
        Format::Qcow2 | Format::Raw => {
            create_qcow2_overlay(parent, child)?;
            Ok(Format::Qcow2)
        }
    }
}

/// [`create_child`] of the top of a recorded chain: the chain is opened (and so checked)
/// as recorded, and the child records the parent's recorded format.
pub fn create_child_of(parent_chain: &[LayerSpec], child: &Path) -> Result<Format> {
    let size = open_chain(parent_chain, false)?.virtual_size();
    let parent = &parent_chain[0];
    match parent.format {
        Format::Vhdx => {
            vhdx::create_child(&parent.path, child)?;
            Ok(Format::Vhdx)
        }
        Format::Qcow2 | Format::Raw => {
            write_qcow2_overlay(child, parent, size)?;
            Ok(Format::Qcow2)
        }
    }
}

/// A qcow2 overlay at `child` over the top of a recorded chain of any format: the new active
/// layer of a running VM (QEMU runs qcow2 overlays above VHDX bases; it cannot open
/// `.avhdx`). The child names its parent relative to its own directory, with the parent's
/// recorded format. Fails if `child` exists.
pub fn create_qcow2_overlay_of(parent_chain: &[LayerSpec], child: &Path) -> Result<()> {
    let size = open_chain(parent_chain, false)?.virtual_size();
    write_qcow2_overlay(child, &parent_chain[0], size)
}

fn write_qcow2_overlay(child: &Path, parent: &LayerSpec, virtual_size: u64) -> Result<()> {
    qcow2::create(
        child,
        &qcow2::CreateOptions {
            virtual_size: virtual_size.div_ceil(512) * 512,
            cluster_bits: qcow2::DEFAULT_CLUSTER_BITS,
            backing: Some((relative_name(child, &parent.path)?, parent.format)),
        },
    )
}

/// The direct parent file of `image`, or `None` for a base image.
pub fn parent_path(image: &Path) -> Result<Option<PathBuf>> {
    parent_path_as(&LayerSpec::new(image, detect_format(image)?))
}

/// The parent file a layer of recorded format names (what it names, unchecked), or `None`.
pub fn parent_path_as(layer: &LayerSpec) -> Result<Option<PathBuf>> {
    let image = layer.path.as_path();
    match layer.format {
        Format::Raw => Ok(None),
        Format::Vhdx => vhdx::parent_path(image),
        Format::Qcow2 => {
            let file = File::open(image).map_err(|e| DiskError::io(image, e))?;
            let len = file.metadata().map_err(|e| DiskError::io(image, e))?.len();
            let hdr = qcow2::read_header(image, &file, len)?;
            Ok(hdr.backing_file.map(|n| qcow2::resolve_backing(image, &n)))
        }
    }
}

/// Copies the guest bytes of `ranges` (as `src` shows them) into `dst`, zero ranges as
/// zeros. Used by commit and pull.
fn copy_ranges_through(src: &dyn Image, dst: &mut dyn Image, extents: &[Extent]) -> Result<()> {
    let mut buf = vec![0u8; STEP as usize];
    for e in extents {
        match e.state {
            ExtentState::Inherited => {}
            ExtentState::Zero => dst.write_zeroes(e.offset, e.len)?,
            ExtentState::Data { .. } => {
                let mut done = 0;
                while done < e.len {
                    let n = (e.len - done).min(STEP) as usize;
                    src.read_at(&mut buf[..n], e.offset + done)?;
                    dst.write_at(&buf[..n], e.offset + done)?;
                    done += n as u64;
                }
            }
        }
    }
    Ok(())
}

/// Merges `child`'s data into its direct parent, crash-safely: at every instant, the
/// chain read from `child` shows the same guest bytes, and running `commit` again after a
/// crash completes the merge. Afterwards the parent alone holds what the child showed; the
/// caller deletes the child and repoints the child's own children with [`rebase`].
///
/// Why this is crash-safe: only the parent is written, and only over ranges the child
/// itself holds (data or zeros), which the child hides; the copy is idempotent.
pub fn commit(child: &Path) -> Result<()> {
    if detect_format(child)? == Format::Vhdx {
        return vhdx::commit(child);
    }
    let src = open(child, false)?;
    let Some(parent) = parent_path(child)? else {
        return Err(DiskError::invalid(
            child,
            "image has no parent to commit into",
        ));
    };
    let dst = open(&parent, true)?;
    commit_open(child, src.as_ref(), dst)?;
    // A run cut short by a crash left clusters allocated but never referenced.
    repair_leaks(&parent).map(|_| ())
}

/// [`commit`] over a recorded chain (`chain[0]` the child, `chain[1]` its parent): every
/// link is checked against the record first and every layer opened with its recorded
/// format.
pub fn commit_chain(chain: &[LayerSpec]) -> Result<()> {
    let src = open_chain(chain, false)?;
    let (child, parent) = child_and_parent(chain)?;
    if child.format == Format::Vhdx {
        drop(src);
        return vhdx::commit(&child.path);
    }
    let dst = open_chain(&chain[1..], true)?;
    commit_open(&child.path, src.as_ref(), dst)?;
    repair_leaks_as(parent).map(|_| ())
}

fn child_and_parent(chain: &[LayerSpec]) -> Result<(&LayerSpec, &LayerSpec)> {
    match chain {
        [child, parent, ..] => Ok((child, parent)),
        [child] => Err(DiskError::invalid(
            &child.path,
            "image has no recorded parent",
        )),
        [] => Err(DiskError::invalid("", "an empty chain was asked for")),
    }
}

/// Copies what the open child `src` holds into its open parent `dst`.
fn commit_open(child: &Path, src: &dyn Image, mut dst: Box<dyn Image>) -> Result<()> {
    let size = src.virtual_size().min(dst.virtual_size());
    if src.virtual_size() > dst.virtual_size() {
        // Data past the parent's end cannot be merged.
        let tail = src.layer_map(dst.virtual_size(), src.virtual_size() - dst.virtual_size())?;
        if tail
            .iter()
            .any(|e| matches!(e.state, ExtentState::Data { .. }))
        {
            return Err(DiskError::unsupported(
                child,
                "committing data past the parent's virtual size",
            ));
        }
    }
    let extents = src.layer_map(0, size)?;
    copy_ranges_through(src, dst.as_mut(), &extents)?;
    dst.flush()
}

/// Gives back host space that a crash left allocated but unreferenced (qcow2 leaked
/// clusters; a no-op for VHDX and raw). Returns how many clusters were repaired. Never
/// touches an image with corruptions.
pub fn repair_leaks(path: &Path) -> Result<u64> {
    repair_leaks_as(&LayerSpec::new(path, detect_format(path)?))
}

/// [`repair_leaks`] of a layer whose format is recorded.
pub fn repair_leaks_as(layer: &LayerSpec) -> Result<u64> {
    match layer.format {
        Format::Qcow2 => qcow2::repair_leaks(&layer.path),
        Format::Vhdx | Format::Raw => Ok(0),
    }
}

/// Gives up the change tracking of a layer whose format is recorded before cosnap writes it
/// offline: a qcow2 layer's persistent dirty bitmaps are removed ([`qcow2::forget_bitmaps`]),
/// since cosnap does not update them; VHDX and raw layers hold none. Returns how many
/// bitmaps were removed.
pub fn forget_bitmaps_as(layer: &LayerSpec) -> Result<u32> {
    match layer.format {
        Format::Qcow2 => qcow2::forget_bitmaps(&layer.path),
        Format::Vhdx | Format::Raw => Ok(0),
    }
}

/// Replays a pending VHDX log into the file itself (what a writable open does) and returns
/// whether there was one. A crash between a log write and its in-place apply leaves a valid
/// file whose last update lives only in the log; cosnap reads it through the log, but qemu
/// refuses such a file read-only, so recovery settles every layer it skips over. A no-op for
/// qcow2, raw and clean VHDX files (they are not even opened writable).
pub fn settle(path: &Path) -> Result<bool> {
    settle_as(&LayerSpec::new(path, detect_format(path)?))
}

/// [`settle`] of a layer whose format is recorded.
pub fn settle_as(layer: &LayerSpec) -> Result<bool> {
    let path = layer.path.as_path();
    if layer.format != Format::Vhdx {
        return Ok(false);
    }
    if !vhdx::VhdxImage::open_layer(path, false)?.has_log_overlay() {
        return Ok(false);
    }
    let mut img = vhdx::VhdxImage::open(path, true)?;
    img.flush()?;
    Ok(true)
}

/// Copies into `child` every range it inherits from its direct parent, then makes the
/// parent's parent the child's parent (or makes the child standalone). Crash-safe: the
/// child's guest bytes never change. What deleting a layer with several children needs.
pub fn pull(child: &Path) -> Result<()> {
    let Some(parent) = parent_path(child)? else {
        return Err(DiskError::invalid(
            child,
            "image has no parent to pull from",
        ));
    };
    let grandparent = parent_path(&parent)?;
    {
        let mut img = open(child, true)?;
        pull_open(child, img.as_mut(), grandparent.is_some())?;
    }
    repair_leaks(child)?;
    rebase(child, grandparent.as_deref())
}

/// [`pull`] over a recorded chain (`chain[0]` the child, `chain[1]` the parent it drops,
/// `chain[2]`, if any, its new parent), every link checked against the record.
pub fn pull_chain(chain: &[LayerSpec]) -> Result<()> {
    let (child, _) = child_and_parent(chain)?;
    let grandparent = chain.get(2);
    {
        let mut img = open_chain(chain, true)?;
        pull_open(&child.path, img.as_mut(), grandparent.is_some())?;
    }
    repair_leaks_as(child)?;
    rebase_as(child, grandparent)
}

/// Copies into the open `img` every range it inherits from its parent.
fn pull_open(child: &Path, img: &mut dyn Image, has_grandparent: bool) -> Result<()> {
    let size = img.virtual_size();
    let child_map = img.layer_map(0, size)?;
    let parent_img = img
        .parent()
        .ok_or_else(|| DiskError::chain(child, "parent did not open"))?;
    let psize = parent_img.virtual_size().min(size);
    let parent_map = parent_img.layer_map(0, psize)?;
    // Ranges the child inherits and the parent holds. Without a grandparent, what the
    // parent does not hold reads as zeros; a VHDX child only stands alone once it holds
    // every block, so there those ranges become explicit zeros too.
    let zeros_everywhere = !has_grandparent && img.format() == Format::Vhdx;
    let mut todo = Vec::new();
    for c in child_map
        .iter()
        .filter(|e| e.state == ExtentState::Inherited)
    {
        if zeros_everywhere && c.offset + c.len > psize {
            let s = c.offset.max(psize);
            todo.push(Extent {
                offset: s,
                len: c.offset + c.len - s,
                state: ExtentState::Zero,
            });
        }
        for p in &parent_map {
            let s = c.offset.max(p.offset);
            let e = (c.offset + c.len).min(p.offset + p.len);
            if s >= e {
                continue;
            }
            let state = match p.state {
                ExtentState::Data { .. } => ExtentState::Data { host_offset: None },
                ExtentState::Zero if has_grandparent || zeros_everywhere => ExtentState::Zero,
                ExtentState::Inherited if zeros_everywhere => ExtentState::Zero,
                _ => continue,
            };
            todo.push(Extent {
                offset: s,
                len: e - s,
                state,
            });
        }
    }
    let mut buf = vec![0u8; STEP as usize];
    for e in &todo {
        match e.state {
            ExtentState::Inherited => {}
            ExtentState::Zero => img.write_zeroes(e.offset, e.len)?,
            ExtentState::Data { .. } => {
                let mut done = 0;
                while done < e.len {
                    let n = (e.len - done).min(STEP) as usize;
                    img.read_at(&mut buf[..n], e.offset + done)?;
                    img.write_at(&buf[..n], e.offset + done)?;
                    done += n as u64;
                }
            }
        }
    }
    img.flush()
}

/// Points `image` at a new parent (or none) without touching data. The caller guarantees
/// the new parent shows the same bytes as the old one. Atomic: a crash leaves either the
/// old or the new parent recorded. For VHDX, the linkage becomes the new parent's
/// DataWriteGuid.
pub fn rebase(image: &Path, new_parent: Option<&Path>) -> Result<()> {
    let new_parent = match new_parent {
        Some(p) => Some(LayerSpec::new(p, detect_format(p)?)),
        None => None,
    };
    rebase_as(
        &LayerSpec::new(image, detect_format(image)?),
        new_parent.as_ref(),
    )
}

/// [`rebase`] with the image's and the new parent's formats as recorded.
pub fn rebase_as(image: &LayerSpec, new_parent: Option<&LayerSpec>) -> Result<()> {
    let path = image.path.as_path();
    match image.format {
        Format::Vhdx => vhdx::rebase(path, new_parent.map(|p| p.path.as_path())),
        Format::Raw => match new_parent {
            None => Ok(()),
            Some(_) => Err(DiskError::invalid(path, "a raw image cannot have a parent")),
        },
        Format::Qcow2 => {
            let backing = match new_parent {
                None => None,
                Some(p) => Some((relative_name(path, &p.path)?, p.format)),
            };
            qcow2::set_backing(path, backing)
        }
    }
}

/// `target` as a qcow2 backing name: relative to `image`'s directory.
fn relative_name(image: &Path, target: &Path) -> Result<String> {
    let dir = image
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(relative_path(dir, target)
        .to_str()
        .ok_or_else(|| DiskError::invalid(target, "path is not UTF-8"))?
        .to_string())
}

/// Layers of the chain, top first.
pub fn chain(path: &Path) -> Result<Vec<PathBuf>> {
    let img = open(path, false)?;
    let mut out = Vec::new();
    let mut cur: Option<&dyn Image> = Some(img.as_ref());
    while let Some(layer) = cur {
        out.push(layer.path().to_path_buf());
        cur = layer.parent();
    }
    Ok(out)
}

/// The depth of `ancestor` in `img`'s chain (0 = `img` itself).
fn ancestor_depth(img: &dyn Image, ancestor: &Path) -> Result<usize> {
    let want = canonical(ancestor);
    layers(img)
        .iter()
        .position(|l| canonical(l.path()) == want)
        .ok_or_else(|| {
            DiskError::invalid(
                img.path(),
                format!("{} is not in this image's chain", ancestor.display()),
            )
        })
}

/// The exact guest byte ranges that may differ between `top` and `ancestor` (a layer in
/// `top`'s chain): the union of what every layer above `ancestor` holds (data or zeros),
/// merged and sorted. Errors if `ancestor` is not in the chain.
pub fn changed_ranges(top: &Path, ancestor: &Path) -> Result<Vec<Range<u64>>> {
    let img = open(top, false)?;
    let depth = ancestor_depth(img.as_ref(), ancestor)?;
    changed_ranges_open(img.as_ref(), depth)
}

/// [`changed_ranges`] over a recorded chain: what layers `chain[..depth]` hold.
pub fn changed_ranges_of(chain: &[LayerSpec], depth: usize) -> Result<Vec<Range<u64>>> {
    let img = open_chain(chain, false)?;
    changed_ranges_open(img.as_ref(), depth)
}

/// Facts about one image and its chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The top layer's file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// VHDX block size or qcow2 cluster size; 4096 for raw.
    pub block_size: u64,
    /// Host bytes allocated to this layer's file.
    pub allocated_bytes: u64,
    /// Chain, top first (includes this image).
    pub chain: Vec<PathBuf>,
}

/// Format, size and chain of the image at `path` (probed: for paths a person typed).
pub fn info(path: &Path) -> Result<ImageInfo> {
    info_open(path, open(path, false)?)
}

/// [`info`] of a recorded chain.
pub fn info_of(chain: &[LayerSpec]) -> Result<ImageInfo> {
    let img = open_chain(chain, false)?;
    info_open(&chain[0].path, img)
}

fn info_open(path: &Path, img: Box<dyn Image>) -> Result<ImageInfo> {
    let meta = img.file().metadata().map_err(|e| DiskError::io(path, e))?;
    Ok(ImageInfo {
        path: path.to_path_buf(),
        format: img.format(),
        virtual_size: img.virtual_size(),
        block_size: img.granularity(),
        allocated_bytes: meta.blocks() * 512,
        chain: layers(img.as_ref())
            .iter()
            .map(|l| l.path().to_path_buf())
            .collect(),
    })
}

/// Whole-chain allocation map (top layer's view: data, zero or unallocated per range).
/// `Data` host offsets refer to the file of whichever layer holds the range; use
/// [`chain_map`] to know which.
pub fn map(path: &Path) -> Result<Vec<Extent>> {
    let img = open(path, false)?;
    let mut out = Vec::new();
    for e in chain_map(img.as_ref(), 0, img.virtual_size())? {
        let state = match e.state {
            ExtentState::Data { .. } if e.depth > 0 => ExtentState::Data { host_offset: None },
            s => s,
        };
        push_extent(
            &mut out,
            Extent {
                offset: e.offset,
                len: e.len,
                state,
            },
        );
    }
    Ok(out)
}

/// Structural check of one file (not its parents). Raw images have no structure: always
/// clean. A file that cannot be parsed at all is an `Err` (the CLI's "could not check").
pub fn check(path: &Path) -> Result<CheckReport> {
    check_as(&LayerSpec::new(path, detect_format(path)?))
}

/// [`check`] of one layer read as its recorded format (nothing probed).
pub fn check_as(layer: &LayerSpec) -> Result<CheckReport> {
    match layer.format {
        Format::Qcow2 => qcow2::check(&layer.path),
        Format::Vhdx => vhdx::check(&layer.path),
        Format::Raw => Ok(CheckReport::default()),
    }
}

/// Compares the guest bytes of two images (any formats). `None` = identical (the larger
/// one's tail must be zeros); `Some(offset)` = first differing byte.
pub fn compare(a: &Path, b: &Path) -> Result<Option<u64>> {
    let ia = open(a, false)?;
    let ib = open(b, false)?;
    let (sa, sb) = (ia.virtual_size(), ib.virtual_size());
    let size = sa.max(sb);
    // Where either side may hold non-zero bytes; everything else is zeros on both sides.
    let data = |img: &dyn Image| -> Result<Vec<Range<u64>>> {
        Ok(chain_map(img, 0, img.virtual_size())?
            .into_iter()
            .filter(|e| matches!(e.state, ExtentState::Data { .. }))
            .map(|e| e.offset..e.offset + e.len)
            .collect())
    };
    let mut ranges = data(ia.as_ref())?;
    ranges.extend(data(ib.as_ref())?);
    let ranges = merge_ranges(ranges);
    let mut ba = vec![0u8; STEP as usize];
    let mut bb = vec![0u8; STEP as usize];
    let read = |img: &dyn Image, size: u64, buf: &mut [u8], off: u64| -> Result<()> {
        if off >= size {
            buf.fill(0);
            return Ok(());
        }
        let n = ((size - off) as usize).min(buf.len());
        img.read_at(&mut buf[..n], off)?;
        buf[n..].fill(0);
        Ok(())
    };
    for r in ranges {
        let mut off = r.start;
        while off < r.end.min(size) {
            let n = (r.end - off).min(STEP) as usize;
            read(ia.as_ref(), sa, &mut ba[..n], off)?;
            read(ib.as_ref(), sb, &mut bb[..n], off)?;
            if ba[..n] != bb[..n] {
                let i = ba[..n]
                    .iter()
                    .zip(&bb[..n])
                    .position(|(x, y)| x != y)
                    .unwrap_or(0);
                return Ok(Some(off + i as u64));
            }
            off += n as u64;
        }
    }
    Ok(None)
}

/// Writes `len` bytes of `pattern` at `offset` into the image's top layer, then flushes.
pub fn write_pattern(path: &Path, offset: u64, len: u64, pattern: u8) -> Result<()> {
    write_pattern_open(open(path, true)?, offset, len, pattern)
}

/// [`write_pattern`] into the top of a recorded chain.
pub fn write_pattern_to(chain: &[LayerSpec], offset: u64, len: u64, pattern: u8) -> Result<()> {
    write_pattern_open(open_chain(chain, true)?, offset, len, pattern)
}

fn write_pattern_open(mut img: Box<dyn Image>, offset: u64, len: u64, pattern: u8) -> Result<()> {
    let buf = vec![pattern; len.min(STEP) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(STEP) as usize;
        img.write_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    img.flush()
}
