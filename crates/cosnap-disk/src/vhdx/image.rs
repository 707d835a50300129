//! An open VHDX layer: validation on open, log replay, the read path through the chain,
//! the write path, and crash-safe metadata updates.
//!
//! Rooms: this file holds [`VhdxImage`], its chain links and its [`Image`] impl;
//! `image/open.rs` opens and validates one layer (header, log replay, regions, metadata,
//! BAT); `image/blocks.rs` is the block I/O below the impl (sector bitmaps, pieces of
//! blocks, allocation, stored runs); `image/commit.rs` commits metadata changes through the
//! log as described below.
//!
//! # Crash safety of metadata updates
//! Payload data is written in place (never through the log, as the spec requires).
//! Metadata that cosnap changes in an existing file — BAT entries, sector-bitmap sectors,
//! the metadata region (parent locator rewrites) — is buffered in memory and committed
//! at [`Image::flush`] (and on drop) through the log, in this order:
//!
//! 1. `fsync` the file, so every payload byte a new BAT entry will point at is stable;
//! 2. write one log entry carrying the changed 4 KiB metadata sectors, stamped with a
//!    fresh LogGuid `G`, then `fsync`;
//! 3. header update with LogGuid = `G` (from here a crash is repaired by log replay);
//! 4. write the sectors to their final places, `fsync`;
//! 5. header update with LogGuid = 0.
//!
//! A crash before step 3 leaves LogGuid = 0, so the new entry is ignored and the file
//! shows the previous metadata (writes since the last flush are lost, like a disk
//! cache; the blocks they allocated at the end of the file are leaked, not referenced).
//! A crash after step 3 replays the entry. The BAT is therefore never torn. (The spec
//! asks for a new LogGuid in the header *before* the log is overwritten; writing the entry
//! first under a GUID no header names yet is equivalent — the entry is invalid until
//! step 3 — and avoids a window where the header names a log without a valid entry, which
//! the spec would make a corrupt file.) When more sectors change than one entry holds,
//! the steps repeat per batch; each batch is self-contained, so a crash between batches
//! leaves a consistent older BAT.
//!
//! # Header GUIDs
//! The first modification of a writable session updates both headers with a new
//! FileWriteGuid; the first guest-visible change (data write, zeroing, allocation) also
//! gets a new DataWriteGuid — the chain identity children link to. Log replay and locator
//! rewrites change only the FileWriteGuid.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::bat::Geometry;
use super::format::*;
use super::header::{self, Header};
use super::log::{self, LogOp};
use super::metadata::{self, MetaItem, Metadata};
use super::region::{self, RegionEntry};
use crate::error::{DiskError, Result};
use crate::image::{Extent, ExtentState, Format, Image};

mod blocks;
mod commit;
mod open;

/// Deepest chain cosnap follows before calling it a loop or an attack.
pub(crate) const MAX_CHAIN_DEPTH: usize = 256;

/// An open VHDX layer with its parents (read-only) beneath it.
pub struct VhdxImage {
    pub(crate) path: PathBuf,
    file: File,
    writable: bool,
    /// Log updates replayed in memory for a read-only open with a dirty log.
    overlay: Vec<LogOp>,
    /// File length as reads see it (the real length, or the log's LastFileOffset).
    file_len: u64,
    pub(crate) header: Header,
    header_slot: usize,
    regions: Vec<RegionEntry>,
    bat_region: (u64, u64),
    meta_region: (u64, u64),
    pub(crate) meta: Metadata,
    pub(crate) geo: Geometry,
    /// The BAT as stored: `round_up(entries * 8, 4096)` bytes.
    bat_raw: Vec<u8>,
    pub(crate) parent: Option<Box<VhdxImage>>,
    next_free: u64,
    dirty_bat_sectors: BTreeSet<u64>,
    /// Changed sector-bitmap sectors not yet committed, by file offset (4 KiB each).
    pending_bitmap: BTreeMap<u64, Box<[u8]>>,
    file_guid_rotated: bool,
    data_guid_rotated: bool,
    /// DataWriteGuid to use at the first guest-visible change (commit chooses it ahead).
    pub(crate) next_data_write_guid: Option<Uuid>,
    data_written: bool,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .field("virtual_size", &self.geo.virtual_size)
            .field("block_size", &self.geo.block_size)
            .field("differencing", &self.meta.has_parent)
            .field("parent", &self.parent)
            .finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DiskError + '_ {
    move |e| DiskError::io(path, e)
}

impl VhdxImage {
    /// Opens `path`; parents are opened read-only via the parent locator, and each link is
    /// checked (parent DataWriteGuid = `parent_linkage` or `parent_linkage2`, same logical
    /// sector size, same virtual size). Loops and chains deeper than 256 are refused.
    pub fn open(path: &Path, writable: bool) -> Result<VhdxImage> {
        let mut visited = Vec::new();
        Self::open_chain(path, writable, &mut visited)
    }

    fn open_chain(path: &Path, writable: bool, visited: &mut Vec<PathBuf>) -> Result<VhdxImage> {
        let canon = std::fs::canonicalize(path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound && !visited.is_empty() {
                DiskError::chain(path, "parent file does not exist")
            } else {
                DiskError::io(path, e)
            }
        })?;
        if visited.contains(&canon) {
            return Err(DiskError::chain(
                path,
                format!(
                    "parent loop: {} appears twice in the chain",
                    canon.display()
                ),
            ));
        }
        if visited.len() >= MAX_CHAIN_DEPTH {
            return Err(DiskError::chain(
                path,
                format!("chain deeper than {MAX_CHAIN_DEPTH} layers"),
            ));
        }
        visited.push(canon);
        let mut img = Self::open_layer(path, writable)?;
        if img.meta.has_parent {
            let parent_path = img.resolve_parent()?;
            let parent = Self::open_chain(&parent_path, false, visited)?;
            img.check_link(&parent)?;
            img.parent = Some(Box::new(parent));
        }
        Ok(img)
    }

    /// Checks that `parent` may be this layer's parent.
    pub(crate) fn check_link(&self, parent: &VhdxImage) -> Result<()> {
        let (l1, l2) = self.linkages()?;
        let g = parent.header.data_write_guid;
        if Some(g) != l1 && Some(g) != l2 {
            return Err(DiskError::chain(
                &self.path,
                format!(
                    "linkage mismatch: parent {} has DataWriteGuid {} but this file expects {}",
                    parent.path.display(),
                    metadata::linkage_string(&g),
                    [l1, l2]
                        .iter()
                        .flatten()
                        .map(metadata::linkage_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        self.check_compatible(parent)
    }

    pub(crate) fn check_compatible(&self, parent: &VhdxImage) -> Result<()> {
        if parent.meta.logical_sector_size != self.meta.logical_sector_size {
            return Err(DiskError::chain(
                &self.path,
                format!(
                    "logical sector size {} differs from parent {}'s {}",
                    self.meta.logical_sector_size,
                    parent.path.display(),
                    parent.meta.logical_sector_size
                ),
            ));
        }
        if parent.meta.virtual_size != self.meta.virtual_size {
            return Err(DiskError::chain(
                &self.path,
                format!(
                    "virtual size {} differs from parent {}'s {}",
                    self.meta.virtual_size,
                    parent.path.display(),
                    parent.meta.virtual_size
                ),
            ));
        }
        Ok(())
    }

    /// `(parent_linkage, parent_linkage2)` of a differencing layer.
    pub(crate) fn linkages(&self) -> Result<(Option<Uuid>, Option<Uuid>)> {
        let loc = self.locator()?;
        let l1 = match loc.get("parent_linkage") {
            Some(s) => Some(metadata::parse_linkage(s).ok_or_else(|| {
                DiskError::corrupt(&self.path, format!("parent_linkage {s:?} is not a GUID"))
            })?),
            None => {
                return Err(DiskError::corrupt(
                    &self.path,
                    "parent locator has no parent_linkage",
                ));
            }
        };
        let l2 = loc.get("parent_linkage2").and_then(metadata::parse_linkage);
        Ok((l1, l2))
    }

    pub(crate) fn locator(&self) -> Result<&metadata::Locator> {
        let loc = self
            .meta
            .locator
            .as_ref()
            .ok_or_else(|| DiskError::invalid(&self.path, "not a differencing image"))?;
        if loc.locator_type != LOCATOR_TYPE_VHDX {
            return Err(DiskError::unsupported(
                &self.path,
                format!(
                    "parent locator type {} (only VHDX parents are supported)",
                    loc.locator_type
                ),
            ));
        }
        Ok(loc)
    }

    /// Candidate parent paths from the locator, in the spec's order: `relative_path`
    /// (from this file's directory, `\` mapped to `/`), then `absolute_win32_path`.
    /// `volume_path` names a Windows volume GUID and cannot be resolved on Linux.
    ///
    /// Decision: cosnap writes `absolute_win32_path` as `\\?\Z:` + the Linux absolute path
    /// with `\` separators (Wine's convention: drive Z: is `/`), and maps only `Z:` back.
    pub(crate) fn parent_candidates(&self) -> Result<Vec<PathBuf>> {
        let loc = self.locator()?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        if let Some(rel) = loc.get("relative_path") {
            let rel = rel.replace('\\', "/");
            let rel = rel.trim_start_matches("./");
            out.push(dir.join(rel.trim_start_matches('/')));
        }
        if let Some(abs) = loc.get("absolute_win32_path") {
            let rest = abs.strip_prefix("\\\\?\\").unwrap_or(abs);
            if let Some(p) = rest.strip_prefix("Z:").or_else(|| rest.strip_prefix("z:")) {
                out.push(PathBuf::from(p.replace('\\', "/")));
            }
        }
        Ok(out)
    }

    /// The parent file named by the locator (the first candidate that exists).
    pub(crate) fn resolve_parent(&self) -> Result<PathBuf> {
        let cands = self.parent_candidates()?;
        for c in &cands {
            if c.exists() {
                return Ok(c.clone());
            }
        }
        Err(DiskError::chain(
            &self.path,
            format!(
                "missing parent: none of the locator's paths exists (tried {})",
                if cands.is_empty() {
                    "nothing: no usable path entry".to_string()
                } else {
                    cands
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ))
    }

    pub(crate) fn entry(&self, i: u64) -> u64 {
        u64_at(&self.bat_raw, (i * 8) as usize)
    }

    fn set_entry(&mut self, i: u64, state: u64, offset: u64) {
        put_u64(
            &mut self.bat_raw,
            (i * 8) as usize,
            bat_entry(state, offset),
        );
        self.dirty_bat_sectors.insert(i * 8 / LOG_SECTOR as u64);
    }

    pub(crate) fn payload_entry(&self, block: u64) -> u64 {
        self.entry(self.geo.payload_index(block))
    }

    /// Reads file bytes, applying the in-memory log overlay. Bytes past the real end of
    /// the file but below the log's LastFileOffset read as zeros; anything further is a
    /// structure past the end of the file.
    pub(crate) fn read_raw(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(DiskError::io(&self.path, e)),
            }
        }
        if done < buf.len() {
            if off + (buf.len() as u64) <= self.file_len {
                buf[done..].fill(0);
            } else {
                return Err(DiskError::corrupt(
                    &self.path,
                    format!(
                        "truncated: {} bytes at offset {off} lie past the end of the file",
                        buf.len()
                    ),
                ));
            }
        }
        let end = off + buf.len() as u64;
        for op in &self.overlay {
            let (s, e) = match op {
                LogOp::Zero { offset, .. } | LogOp::Data { offset, .. } => (*offset, op.end()),
            };
            let (lo, hi) = (s.max(off), e.min(end));
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - off) as usize..(hi - off) as usize];
            match op {
                LogOp::Zero { .. } => dst.fill(0),
                LogOp::Data { data, .. } => {
                    dst.copy_from_slice(&data[(lo - s) as usize..(hi - s) as usize])
                }
            }
        }
        Ok(())
    }

    fn write_raw(&self, buf: &[u8], off: u64) -> Result<()> {
        self.file.write_all_at(buf, off).map_err(io(&self.path))
    }

    // ---- public accessors ----

    /// True for a differencing (`.avhdx`) layer.
    pub fn is_differencing(&self) -> bool {
        self.meta.has_parent
    }
    /// Payload block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.meta.block_size
    }
    /// Logical sector size (512 or 4096).
    pub fn logical_sector_size(&self) -> u32 {
        self.meta.logical_sector_size
    }
    /// Physical sector size (512 or 4096).
    pub fn physical_sector_size(&self) -> u32 {
        self.meta.physical_sector_size
    }
    /// The chain identity children link to.
    pub fn data_write_guid(&self) -> Uuid {
        self.header.data_write_guid
    }
    /// The VirtualDiskId metadata item.
    pub fn virtual_disk_id(&self) -> Uuid {
        self.meta.virtual_disk_id
    }
    /// The parent layer as a `VhdxImage`.
    pub fn vhdx_parent(&self) -> Option<&VhdxImage> {
        self.parent.as_deref()
    }
    pub(crate) fn region_spans(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .map(|r| (r.offset, r.offset + r.length as u64))
            .collect()
    }

    /// True when the file was opened with a dirty log replayed in memory only.
    pub fn has_log_overlay(&self) -> bool {
        !self.overlay.is_empty()
    }
}

impl Drop for VhdxImage {
    fn drop(&mut self) {
        if self.writable {
            let _ = self.flush();
        }
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
        self.geo.virtual_size
    }
    fn granularity(&self) -> u64 {
        self.geo.block_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (b, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            self.read_piece(b, within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.require_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.begin_modification(true)?;
        self.data_written = true;
        let bs = self.geo.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (b, within) = (pos / bs, pos % bs);
            let n = ((bs - within) as usize).min(buf.len() - done);
            self.write_piece(b, within, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Whole blocks become ZERO (hiding any parent; their old space is punched out of the
    /// file, not reused); partial blocks get zeros written unless they already read as zeros. In a
    /// fixed image (LeaveBlockAllocated) blocks stay allocated and zeros are written.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.require_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.begin_modification(true)?;
        self.data_written = true;
        let bs = self.geo.block_size;
        let fixed = self.meta.leave_block_allocated && !self.meta.has_parent;
        let zeros = vec![0u8; (bs.min(4 * MIB)) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let (b, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(offset + len - pos);
            let i = self.geo.payload_index(b);
            let state = bat_state(self.entry(i));
            let reads_zero = matches!(
                state,
                PAYLOAD_ZERO | PAYLOAD_UNMAPPED | PAYLOAD_UNDEFINED | PAYLOAD_UNMAPPED_V095
            ) || (state == PAYLOAD_NOT_PRESENT && self.parent.is_none());
            if within == 0 && n == self.block_len(b) && !fixed {
                if state != PAYLOAD_ZERO {
                    let old = self.entry(i);
                    self.set_entry(i, PAYLOAD_ZERO, 0);
                    if matches!(state, PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
                        self.punch_hole(bat_offset(old), self.geo.block_size);
                    }
                }
            } else if !reads_zero {
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(zeros.len() as u64);
                    self.write_piece(b, within + done, &zeros[..k as usize])?;
                    done += k;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Allocates whole blocks: returns the host offset when every block of the range is
    /// already fully present and contiguous, or none is allocated (then a contiguous run
    /// is allocated at the end of the file and marked FULLY_PRESENT — the caller must write
    /// every byte of it; unwritten bytes read as zeros). Mixed ranges give `None`.
    fn direct_write_target(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        self.require_writable()?;
        self.check_range(offset, len)?;
        let bs = self.geo.block_size;
        if len == 0
            || !offset.is_multiple_of(bs)
            || (!len.is_multiple_of(bs) && offset + len != self.geo.virtual_size)
        {
            return Ok(None);
        }
        let (b0, b1) = (offset / bs, (offset + len).div_ceil(bs));
        let states: Vec<u64> = (b0..b1).map(|b| self.payload_entry(b)).collect();
        if states
            .iter()
            .all(|e| bat_state(*e) == PAYLOAD_FULLY_PRESENT)
        {
            let h0 = bat_offset(states[0]);
            let contiguous = states
                .iter()
                .enumerate()
                .all(|(k, e)| bat_offset(*e) == h0 + k as u64 * bs);
            return Ok(contiguous.then_some(h0));
        }
        if states.iter().any(|e| {
            matches!(
                bat_state(*e),
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT
            )
        }) {
            return Ok(None);
        }
        self.begin_modification(true)?;
        self.data_written = true;
        let host = self.allocate((b1 - b0) * bs)?;
        for b in b0..b1 {
            let i = self.geo.payload_index(b);
            self.set_entry(i, PAYLOAD_FULLY_PRESENT, host + (b - b0) * bs);
        }
        Ok(Some(host))
    }

    fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let writes = self.take_dirty_sectors();
        if !writes.is_empty() {
            self.commit_metadata(&writes)?;
        } else if self.data_written {
            self.file.sync_data().map_err(io(&self.path))?;
        }
        self.data_written = false;
        Ok(())
    }

    /// Stored runs are split by the host file's holes: never-written parts of an
    /// allocated block read as zeros and are reported as `Zero` (qemu allocates whole
    /// blocks sparsely; copying their holes would be wasted work).
    fn layer_map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let bs = self.geo.block_size;
        let mut raw: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let (b, within) = (pos / bs, pos % bs);
            let n = (bs - within).min(offset + len - pos);
            let e = self.payload_entry(b);
            match bat_state(e) {
                PAYLOAD_FULLY_PRESENT => self.stored_runs(pos, bat_offset(e) + within, n, &mut raw),
                PAYLOAD_PARTIALLY_PRESENT => {
                    for (start, l, present) in self.sector_runs(b, within, n)? {
                        if present {
                            self.stored_runs(b * bs + start, bat_offset(e) + start, l, &mut raw);
                        } else {
                            raw.push(Extent {
                                offset: b * bs + start,
                                len: l,
                                state: ExtentState::Inherited,
                            });
                        }
                    }
                }
                PAYLOAD_NOT_PRESENT => raw.push(Extent {
                    offset: pos,
                    len: n,
                    state: ExtentState::Inherited,
                }),
                _ => raw.push(Extent {
                    offset: pos,
                    len: n,
                    state: ExtentState::Zero,
                }),
            }
            pos += n;
        }
        let mut out: Vec<Extent> = Vec::with_capacity(raw.len());
        for x in raw {
            if x.len == 0 {
                continue;
            }
            if let Some(last) = out.last_mut() {
                let merge = match (last.state, x.state) {
                    (
                        ExtentState::Data {
                            host_offset: Some(a),
                        },
                        ExtentState::Data {
                            host_offset: Some(b),
                        },
                    ) => a + last.len == b,
                    (p, q) => p == q,
                };
                if merge {
                    last.len += x.len;
                    continue;
                }
            }
            out.push(x);
        }
        Ok(out)
    }

    fn parent(&self) -> Option<&dyn Image> {
        self.parent.as_deref().map(|p| p as &dyn Image)
    }
}
