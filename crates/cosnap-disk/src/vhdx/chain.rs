//! Chain maintenance on VHDX files: merge a child into its parent, repoint a child,
//! structural check, and parent lookup.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::format::*;
use super::image::VhdxImage;
use super::metadata::{self, MetaItem};
use crate::error::{DiskError, Result};
use crate::image::Image;
use crate::report::CheckReport;

/// Points reached by [`commit_with_hook`]; the hook may stop there to simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStep {
    /// The child's locator now accepts the parent's next DataWriteGuid (`parent_linkage2`).
    LinkageWritten,
    /// Payload block `n` of the child has been written into the parent (not yet flushed).
    BlockCopied(u64),
    /// The parent holds everything and is flushed.
    ParentFlushed,
}

/// Merges `child` into its direct parent. See [`super::commit`] for the ordering.
pub fn commit_with_hook(child: &Path, hook: &mut dyn FnMut(CommitStep) -> bool) -> Result<()> {
    // 1. The chain must be valid now (this also checks the current linkage).
    let chain = VhdxImage::open(child, false)?;
    let parent = chain.parent.as_ref().ok_or_else(|| {
        DiskError::invalid(child, "not a differencing image: nothing to commit into")
    })?;
    let parent_path = parent.path.clone();
    let current = parent.header.data_write_guid;
    drop(chain);

    // 2. Record, through the child's log, the DataWriteGuid the parent is about to get,
    //    keeping the current one: the child accepts the parent before and after.
    let next = Uuid::new_v4();
    {
        let mut layer = VhdxImage::open_layer(child, true)?;
        let mut loc = layer.locator()?.clone();
        loc.set("parent_linkage", metadata::linkage_string(&current));
        loc.set("parent_linkage2", metadata::linkage_string(&next));
        let items = replace_locator(&layer.meta.items, loc.serialize());
        layer.rewrite_metadata(items)?;
    }
    if !hook(CommitStep::LinkageWritten) {
        return Ok(());
    }

    // 3. Copy what the child holds into the parent (opened writable, its own parents
    //    read-only). Its first write sets DataWriteGuid = `next`.
    let src = VhdxImage::open(child, false)?;
    let mut dst = VhdxImage::open(&parent_path, true)?;
    dst.next_data_write_guid = Some(next);
    let bs = src.geo.block_size;
    let mut buf = vec![0u8; bs.min(4 * MIB) as usize];
    for b in 0..src.geo.payload_blocks {
        let base = b * bs;
        let blen = bs.min(src.geo.virtual_size - base);
        let mut copied = false;
        for ext in src.layer_map(base, blen)? {
            match ext.state {
                crate::ExtentState::Inherited => continue,
                crate::ExtentState::Zero => dst.write_zeroes(ext.offset, ext.len)?,
                crate::ExtentState::Data { .. } => {
                    let mut done = 0;
                    while done < ext.len {
                        let n = (ext.len - done).min(buf.len() as u64) as usize;
                        src.read_at(&mut buf[..n], ext.offset + done)?;
                        dst.write_at(&buf[..n], ext.offset + done)?;
                        done += n as u64;
                    }
                }
            }
            copied = true;
        }
        if copied && !hook(CommitStep::BlockCopied(b)) {
            std::mem::forget(dst); // simulated crash: nothing flushed
            return Ok(());
        }
    }
    dst.flush()?;
    drop(dst);
    hook(CommitStep::ParentFlushed);
    Ok(())
}

fn replace_locator(items: &[MetaItem], locator: Vec<u8>) -> Vec<MetaItem> {
    let mut out: Vec<MetaItem> = items.to_vec();
    match out
        .iter_mut()
        .find(|i| i.id == META_PARENT_LOCATOR && !i.is_user())
    {
        Some(i) => i.data = locator,
        None => out.push(MetaItem::new(META_PARENT_LOCATOR, false, locator)),
    }
    out
}

pub fn rebase(image: &Path, new_parent: Option<&Path>) -> Result<()> {
    let mut layer = VhdxImage::open_layer(image, true)?;
    let Some(np) = new_parent else {
        return layer.make_standalone();
    };
    if !layer.meta.has_parent {
        return Err(DiskError::invalid(
            image,
            "not a differencing image: cosnap only repoints existing .avhdx children",
        ));
    }
    let parent = VhdxImage::open(np, false)?;
    let me = std::fs::canonicalize(image).map_err(|e| DiskError::io(image, e))?;
    let mut p = Some(&parent);
    while let Some(x) = p {
        if std::fs::canonicalize(&x.path).ok().as_deref() == Some(me.as_path()) {
            return Err(DiskError::chain(
                image,
                format!("rebasing onto {} would make a parent loop", np.display()),
            ));
        }
        p = x.vhdx_parent();
    }
    layer.check_compatible(&parent)?;
    let canon = std::fs::canonicalize(np).map_err(|e| DiskError::io(np, e))?;
    let mut loc = super::create::locator_for(image, &canon, &parent.data_write_guid())?;
    // Keep any entries cosnap does not manage (e.g. volume_path is stale now: dropped).
    for (k, v) in &layer.locator()?.entries {
        if !matches!(
            k.as_str(),
            "parent_linkage"
                | "parent_linkage2"
                | "relative_path"
                | "absolute_win32_path"
                | "volume_path"
        ) {
            loc.set(k, v.clone());
        }
    }
    let items = replace_locator(&layer.meta.items, loc.serialize());
    layer.rewrite_metadata(items)
}

pub fn parent_path(path: &Path) -> Result<Option<PathBuf>> {
    let layer = VhdxImage::open_layer(path, false)?;
    if !layer.meta.has_parent {
        return Ok(None);
    }
    layer.resolve_parent().map(Some)
}

/// Structural check. Defects that stop an open (bad CRCs, overlaps, entries past the end,
/// broken chain) are corruptions; space in the file that no structure uses is a leak.
pub fn check(path: &Path) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let img = match VhdxImage::open_layer(path, false) {
        Ok(i) => i,
        Err(DiskError::Corrupt { defect, .. }) => {
            report.corruptions.push(defect);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    if img.meta.has_parent {
        match VhdxImage::open(path, false) {
            Ok(_) => {}
            Err(DiskError::Io { source, .. }) => return Err(DiskError::io(path, source)),
            Err(e) => report.corruptions.push(e.to_string()),
        }
    }
    if img.has_log_overlay() {
        report.corruptions.push(
            "the log holds updates that were not yet replayed (a writable open replays them)"
                .into(),
        );
    }
    let g = img.geo;
    let mut used: Vec<(u64, u64)> = vec![(0, HEADER_SECTION_SIZE)];
    if img.header.log_length > 0 {
        used.push((
            img.header.log_offset,
            img.header.log_offset + img.header.log_length as u64,
        ));
    }
    for i in 0..g.entries {
        let e = img.entry(i);
        if e & BAT_RESERVED_MASK != 0 {
            report
                .corruptions
                .push(format!("BAT entry {i} has reserved bits set ({e:#x})"));
        }
        let off = bat_offset(e);
        if g.is_bitmap_index(i) {
            if bat_state(e) == SB_PRESENT {
                used.push((off, off + SECTOR_BITMAP_BLOCK));
            }
        } else if matches!(
            bat_state(e),
            PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
        ) && g.block_of_index(i) < g.payload_blocks
        {
            used.push((off, off + g.block_size));
        }
    }
    let file_len = img
        .file()
        .metadata()
        .map_err(|e| DiskError::io(path, e))?
        .len();
    let regions = region_spans(&img);
    used.extend(regions);
    used.sort_unstable();
    let mut covered = 0u64;
    let mut leaks = Vec::new();
    for (s, e) in used {
        if s > covered {
            leaks.push((covered, s));
        }
        covered = covered.max(e);
    }
    let tail_end = round_up(file_len, MIB);
    if covered < tail_end {
        leaks.push((covered, tail_end));
    }
    // Only host space that holds data counts: qemu leaves never-written holes between
    // structures, which cost nothing and which qemu-img check does not flag either.
    for (s, e) in leaks {
        for (ds, de) in data_runs(img.file(), s, e.min(file_len)) {
            report.leaks.push(format!(
                "{} bytes at offset {ds} hold data but are not used by any structure",
                de - ds
            ));
        }
    }
    Ok(report)
}

/// Data (non-hole) runs of `file` within `[start, end)`, via SEEK_DATA/SEEK_HOLE. Where
/// the filesystem cannot tell, the whole range counts as data.
fn data_runs(file: &std::fs::File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a valid, open descriptor has no memory-safety requirements.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                out.push((pos, end));
            }
            break;
        }
        let d = d as u64;
        if d >= end {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        let h = if h < 0 { end } else { (h as u64).min(end) };
        out.push((d, h));
        pos = h;
    }
    out
}

fn region_spans(img: &VhdxImage) -> Vec<(u64, u64)> {
    img.region_spans()
}
