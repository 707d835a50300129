//! An open VHDX layer: validation on open, log replay, the read path through the chain,
//! the write path, and crash-safe metadata updates.
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

    /// Opens one layer without its parents, validating every structure.
    pub(crate) fn open_layer(path: &Path, writable: bool) -> Result<VhdxImage> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io(path))?;
        let real_len = file.metadata().map_err(io(path))?.len();
        let mut img = VhdxImage::unparsed(path, file, writable, real_len);

        img.refuse_short_file(real_len)?;
        let (h, slot) = img.read_current_header()?;
        img.header = h;
        img.header_slot = slot;
        img.replay_log()?;

        img.load_region_table()?;
        img.load_metadata()?;
        img.load_bat()?;
        Ok(img)
    }

    /// An image over `file` whose structures are not read yet: every field holds a
    /// placeholder until the open steps fill it.
    fn unparsed(path: &Path, file: File, writable: bool, real_len: u64) -> VhdxImage {
        VhdxImage {
            path: path.to_path_buf(),
            file,
            writable,
            overlay: Vec::new(),
            file_len: real_len,
            header: Header {
                seq: 0,
                file_write_guid: Uuid::nil(),
                data_write_guid: Uuid::nil(),
                log_guid: Uuid::nil(),
                log_version: 0,
                version: 1,
                log_length: 0,
                log_offset: 0,
            },
            header_slot: 0,
            regions: Vec::new(),
            bat_region: (0, 0),
            meta_region: (0, 0),
            meta: Metadata {
                items: Vec::new(),
                block_size: MIN_BLOCK_SIZE,
                leave_block_allocated: false,
                has_parent: false,
                virtual_size: 0,
                virtual_disk_id: Uuid::nil(),
                logical_sector_size: 512,
                physical_sector_size: 512,
                locator: None,
            },
            geo: Geometry::new(0, MIN_BLOCK_SIZE, 512, false),
            bat_raw: Vec::new(),
            parent: None,
            next_free: 0,
            dirty_bat_sectors: BTreeSet::new(),
            pending_bitmap: BTreeMap::new(),
            file_guid_rotated: false,
            data_guid_rotated: false,
            next_data_write_guid: None,
            data_written: false,
        }
    }

    /// A file shorter than the 1 MiB header section is refused, saying whether it is a
    /// VHDX file at all.
    fn refuse_short_file(&self, real_len: u64) -> Result<()> {
        let path = self.path.as_path();
        if real_len < HEADER_SECTION_SIZE {
            let mut sig = [0u8; 8];
            if real_len >= 8 {
                self.read_raw(&mut sig, 0)?;
            }
            if &sig != SIG_FILE {
                return Err(DiskError::corrupt(
                    path,
                    "not a VHDX file: no \"vhdxfile\" signature",
                ));
            }
            return Err(DiskError::corrupt(
                path,
                format!(
                    "truncated: the file is {real_len} bytes, shorter than the 1 MiB header section"
                ),
            ));
        }
        Ok(())
    }

    /// The current of the two headers (the valid one with the higher sequence number).
    fn read_current_header(&self) -> Result<(Header, usize)> {
        let path = self.path.as_path();
        let mut hs = vec![0u8; 320 * 1024];
        self.read_raw(&mut hs, 0)?;
        if &hs[0..8] != SIG_FILE {
            return Err(DiskError::corrupt(
                path,
                "not a VHDX file: no \"vhdxfile\" signature",
            ));
        }
        let h1 = Header::parse(&hs[HEADER_OFFSETS[0] as usize..]);
        let h2 = Header::parse(&hs[HEADER_OFFSETS[1] as usize..]);
        let (h, slot) = header::current(h1, h2).ok_or_else(|| {
            DiskError::corrupt(path, "both headers are invalid (bad signature or CRC-32C)")
        })?;
        if h.version != 1 {
            return Err(DiskError::unsupported(
                path,
                format!("VHDX header version {}", h.version),
            ));
        }
        Ok((h, slot))
    }

    /// The region table, read through the log overlay: a logged update may have changed it.
    fn load_region_table(&mut self) -> Result<()> {
        let path = self.path.as_path();
        let mut rt = vec![0u8; REGION_TABLE_SIZE];
        let mut regions = None;
        for off in REGION_TABLE_OFFSETS {
            self.read_raw(&mut rt, off)?;
            if let Some(r) = region::parse(path, &rt)? {
                regions = Some(r);
                break;
            }
        }
        let regions = regions.ok_or_else(|| {
            DiskError::corrupt(
                path,
                "both region tables are invalid (bad signature or CRC-32C)",
            )
        })?;
        self.validate_regions(&regions)?;
        self.regions = regions;
        Ok(())
    }

    /// The metadata region's table and the items it names.
    fn load_metadata(&mut self) -> Result<()> {
        let path = self.path.as_path();
        let (moff, mlen) = self.meta_region;
        if mlen < METADATA_TABLE_SIZE as u64 {
            return Err(DiskError::corrupt(
                path,
                "metadata region is smaller than its 64 KiB table",
            ));
        }
        let mut table = vec![0u8; METADATA_TABLE_SIZE];
        self.read_raw(&mut table, moff)?;
        let meta = metadata::parse(path, &table, mlen, |off, len| {
            let mut b = vec![0u8; len];
            self.read_raw(&mut b, moff + off)?;
            Ok(b)
        })?;
        self.meta = meta;
        Ok(())
    }

    /// Replays a dirty log: in memory (read-only) or on disk (writable), per MS-VHDX 2.3.3.
    fn replay_log(&mut self) -> Result<()> {
        let h = self.header;
        if h.log_guid.is_nil() {
            return Ok(());
        }

        let (lo, ll) = self.checked_log_region()?;
        let (replay, limit) = self.read_active_log(lo, ll)?;
        self.check_log_targets(&replay, lo, ll, limit)?;

        if !self.writable {
            self.overlay = replay.ops;
            self.file_len = limit;
            return Ok(());
        }
        self.replay_on_disk(&replay)
    }

    /// The log's offset and length, refused unless a supported version, 1 MiB aligned
    /// after the header section, at most 16 MiB and inside the file.
    fn checked_log_region(&self) -> Result<(u64, u64)> {
        let h = self.header;
        let path = self.path.as_path();
        if h.log_version != 0 {
            return Err(DiskError::unsupported(
                path,
                format!("log version {}", h.log_version),
            ));
        }
        let (lo, ll) = (h.log_offset, h.log_length as u64);
        if lo % MIB != 0 || ll % MIB != 0 || lo < HEADER_SECTION_SIZE || ll == 0 {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "log at offset {lo} length {ll} is not 1 MiB-aligned after the header section"
                ),
            ));
        }
        if ll > MAX_LOG_LENGTH {
            return Err(DiskError::unsupported(
                path,
                format!("log of {ll} bytes (cosnap replays logs up to 16 MiB)"),
            ));
        }
        if lo.checked_add(ll).is_none_or(|e| e > self.file_len) {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "log at {lo}+{ll} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok((lo, ll))
    }

    /// The log's active entry sequence, and the file length reads may see once it is
    /// applied. Refuses a log whose file was truncated below what it flushed.
    fn read_active_log(&self, lo: u64, ll: u64) -> Result<(log::Replay, u64)> {
        let h = self.header;
        let path = self.path.as_path();
        let mut logbuf = vec![0u8; ll as usize];
        self.read_raw(&mut logbuf, lo)?;
        let replay = log::find_active(&logbuf, &h.log_guid).ok_or_else(|| {
            DiskError::corrupt(
                path,
                "the header names a log (LogGuid set) but the log has no valid entry sequence",
            )
        })?;
        if self.file_len < replay.flushed_file_offset {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "truncated: the log says the file was at least {} bytes, it is {}",
                    replay.flushed_file_offset, self.file_len
                ),
            ));
        }
        let limit = self.file_len.max(replay.last_file_offset);
        if replay.last_file_offset > MAX_VIRTUAL_SIZE * 2 {
            return Err(DiskError::corrupt(
                path,
                format!("log LastFileOffset {} is absurd", replay.last_file_offset),
            ));
        }
        Ok((replay, limit))
    }

    /// Every logged write must land in the metadata area below `limit`, never in the log.
    fn check_log_targets(&self, replay: &log::Replay, lo: u64, ll: u64, limit: u64) -> Result<()> {
        let path = self.path.as_path();
        for op in &replay.ops {
            let start = match op {
                LogOp::Zero { offset, .. } | LogOp::Data { offset, .. } => *offset,
            };
            if start < REGION_TABLE_OFFSETS[0] || op.end() > limit {
                return Err(DiskError::corrupt(
                    path,
                    format!(
                        "log entry writes at {start}..{} outside the file's metadata area",
                        op.end()
                    ),
                ));
            }
            if start < lo + ll && op.end() > lo {
                return Err(DiskError::corrupt(
                    path,
                    "log entry writes into the log itself",
                ));
            }
        }
        Ok(())
    }

    /// Applies the log to the file: a new FileWriteGuid before the first modification,
    /// the logged writes, the logged file length, then a header without the log.
    fn replay_on_disk(&mut self, replay: &log::Replay) -> Result<()> {
        let path = self.path.clone();
        let mut nh = self.header;
        nh.file_write_guid = Uuid::new_v4();
        self.write_header(nh)?;
        self.file_guid_rotated = true;
        let zeros = vec![0u8; MIB as usize];
        for op in &replay.ops {
            match op {
                LogOp::Data { offset, data } => self.write_raw(data, *offset)?,
                LogOp::Zero { offset, len } => {
                    let mut done = 0;
                    while done < *len {
                        let n = (*len - done).min(MIB);
                        self.write_raw(&zeros[..n as usize], offset + done)?;
                        done += n;
                    }
                }
            }
        }
        let real = self.file.metadata().map_err(io(&path))?.len();
        if real < replay.last_file_offset {
            self.file
                .set_len(replay.last_file_offset)
                .map_err(io(&path))?;
        }
        self.file.sync_all().map_err(io(&path))?;
        self.file_len = self.file.metadata().map_err(io(&path))?.len();
        let mut nh = self.header;
        nh.log_guid = Uuid::nil();
        self.write_header(nh)
    }

    fn validate_regions(&mut self, regions: &[RegionEntry]) -> Result<()> {
        let path = self.path.clone();
        let mut spans: Vec<(u64, u64, String)> =
            vec![(0, HEADER_SECTION_SIZE, "header section".into())];
        if self.header.log_length > 0 {
            let (lo, ll) = (self.header.log_offset, self.header.log_length as u64);
            if lo % MIB != 0
                || ll % MIB != 0
                || lo.checked_add(ll).is_none_or(|e| e > self.file_len)
            {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "log at {lo}+{ll} is misaligned or lies past the end of the file ({} bytes)",
                        self.file_len
                    ),
                ));
            }
            spans.push((lo, lo + ll, "log".into()));
        }
        let (mut bat, mut meta) = (None, None);
        for r in regions {
            let name = if r.guid == REGION_BAT {
                "BAT region".to_string()
            } else if r.guid == REGION_METADATA {
                "metadata region".to_string()
            } else {
                format!("region {}", r.guid)
            };
            let len = r.length as u64;
            if !r.offset.is_multiple_of(MIB)
                || !len.is_multiple_of(MIB)
                || r.offset < HEADER_SECTION_SIZE
                || len == 0
            {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "{name} at {}+{len} is not 1 MiB-aligned after the header section",
                        r.offset
                    ),
                ));
            }
            if r.offset.checked_add(len).is_none_or(|e| e > self.file_len) {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "{name} at {}+{len} lies past the end of the file ({} bytes)",
                        r.offset, self.file_len
                    ),
                ));
            }
            if r.guid == REGION_BAT {
                bat = Some((r.offset, len));
            } else if r.guid == REGION_METADATA {
                meta = Some((r.offset, len));
            } else if r.required {
                return Err(DiskError::unsupported(
                    &path,
                    format!("required region {} is not understood", r.guid),
                ));
            }
            spans.push((r.offset, r.offset + len, name));
        }
        check_overlaps(&path, &mut spans)?;
        self.bat_region =
            bat.ok_or_else(|| DiskError::corrupt(&path, "region table has no BAT region"))?;
        self.meta_region =
            meta.ok_or_else(|| DiskError::corrupt(&path, "region table has no metadata region"))?;
        Ok(())
    }

    /// Reads the BAT and validates every entry: states, offsets inside the file, no
    /// overlap with each other or with the header section, log and regions.
    fn load_bat(&mut self) -> Result<()> {
        self.read_bat()?;

        let mut spans = self.metadata_spans();
        let partial_chunks = self.check_bat_entries(&mut spans)?;
        self.check_partial_chunks(partial_chunks)?;
        check_overlaps(&self.path, &mut spans)?;

        let end = spans
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(HEADER_SECTION_SIZE);
        self.next_free = round_up(end.max(self.file_len), MIB);
        Ok(())
    }

    /// The geometry the metadata implies, and the raw BAT, which the BAT region must hold.
    fn read_bat(&mut self) -> Result<()> {
        let path = self.path.clone();
        let m = &self.meta;
        self.geo = Geometry::new(
            m.virtual_size,
            m.block_size,
            m.logical_sector_size,
            m.has_parent,
        );
        let need = self.geo.entries * 8;
        if need > self.bat_region.1 {
            return Err(DiskError::corrupt(
                &path,
                format!(
                    "BAT region holds {} entries but a {}-byte disk with {}-byte blocks needs {}",
                    self.bat_region.1 / 8,
                    m.virtual_size,
                    m.block_size,
                    self.geo.entries
                ),
            ));
        }
        let mut raw = vec![0u8; round_up(need, LOG_SECTOR as u64) as usize];
        self.read_raw(&mut raw, self.bat_region.0)?;
        self.bat_raw = raw;
        Ok(())
    }

    /// The file spans that are not payload: header section, log and regions.
    fn metadata_spans(&self) -> Vec<(u64, u64, String)> {
        let mut spans: Vec<(u64, u64, String)> =
            vec![(0, HEADER_SECTION_SIZE, "header section".into())];
        if self.header.log_length > 0 {
            spans.push((
                self.header.log_offset,
                self.header.log_offset + self.header.log_length as u64,
                "log".into(),
            ));
        }
        for r in &self.regions {
            spans.push((
                r.offset,
                r.offset + r.length as u64,
                format!("region {}", r.guid),
            ));
        }
        spans
    }

    /// Checks every BAT entry's state and span, adding each allocated block to `spans`.
    /// Returns the chunks that hold partially present blocks.
    fn check_bat_entries(&self, spans: &mut Vec<(u64, u64, String)>) -> Result<BTreeSet<u64>> {
        let path = self.path.as_path();
        let bs = self.geo.block_size;
        let has_parent = self.meta.has_parent;
        let mut partial_chunks = BTreeSet::new();
        for i in 0..self.geo.entries {
            let e = self.entry(i);
            let state = bat_state(e);
            let off = bat_offset(e);
            if self.geo.is_bitmap_index(i) {
                let chunk = i / (self.geo.chunk_ratio + 1);
                match state {
                    SB_NOT_PRESENT => {}
                    SB_PRESENT if has_parent => {
                        self.check_block_span(i, off, SECTOR_BITMAP_BLOCK, "sector bitmap")?;
                        spans.push((
                            off,
                            off + SECTOR_BITMAP_BLOCK,
                            format!("sector bitmap of chunk {chunk}"),
                        ));
                    }
                    SB_PRESENT => {
                        return Err(DiskError::corrupt(
                            path,
                            format!(
                                "BAT entry {i}: sector bitmap block present in a file without a parent"
                            ),
                        ));
                    }
                    s => {
                        return Err(DiskError::corrupt(
                            path,
                            format!("BAT entry {i}: invalid sector bitmap state {s}"),
                        ));
                    }
                }
                continue;
            }
            let block = self.geo.block_of_index(i);
            if block >= self.geo.payload_blocks {
                continue; // padding after the last block of a differencing BAT
            }
            match state {
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => {}
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                    if state == PAYLOAD_PARTIALLY_PRESENT {
                        if !has_parent {
                            return Err(DiskError::corrupt(
                                path,
                                format!(
                                    "BAT entry {i}: block {block} is partially present in a file without a parent"
                                ),
                            ));
                        }
                        partial_chunks.insert(block / self.geo.chunk_ratio);
                    }
                    self.check_block_span(i, off, bs, "payload block")?;
                    spans.push((off, off + bs, format!("payload block {block}")));
                }
                s => {
                    return Err(DiskError::corrupt(
                        path,
                        format!("BAT entry {i}: invalid payload block state {s}"),
                    ));
                }
            }
        }
        Ok(partial_chunks)
    }

    /// A chunk with partially present blocks needs its sector bitmap block.
    fn check_partial_chunks(&self, partial_chunks: BTreeSet<u64>) -> Result<()> {
        for c in partial_chunks {
            if bat_state(self.entry(self.geo.bitmap_index(c))) != SB_PRESENT {
                return Err(DiskError::corrupt(
                    &self.path,
                    format!("chunk {c} has partially present blocks but no sector bitmap block"),
                ));
            }
        }
        Ok(())
    }

    fn check_block_span(&self, i: u64, off: u64, len: u64, what: &str) -> Result<()> {
        if off < HEADER_SECTION_SIZE {
            return Err(DiskError::corrupt(
                &self.path,
                format!("BAT entry {i}: {what} at offset {off} lies inside the header section"),
            ));
        }
        if off.checked_add(len).is_none_or(|e| e > self.file_len) {
            return Err(DiskError::corrupt(
                &self.path,
                format!(
                    "BAT entry {i}: {what} at {off}+{len} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(())
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

    /// Header update (MS-VHDX 2.2.2.1): write `h` with seq+1 over the non-current slot,
    /// flush, and once more over the other slot so both are current.
    fn write_header(&mut self, mut h: Header) -> Result<()> {
        for _ in 0..2 {
            h.seq = self.header.seq.wrapping_add(1);
            let slot = 1 - self.header_slot;
            self.write_raw(&h.serialize(), HEADER_OFFSETS[slot])?;
            self.file.sync_data().map_err(io(&self.path))?;
            self.header = h;
            self.header_slot = slot;
        }
        Ok(())
    }

    fn require_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::invalid(&self.path, "image is opened read-only"))
        }
    }

    /// Rotates FileWriteGuid (and DataWriteGuid when `data_visible`) before the first
    /// such modification of this session.
    pub(crate) fn begin_modification(&mut self, data_visible: bool) -> Result<()> {
        self.require_writable()?;
        let need_file = !self.file_guid_rotated;
        let need_data = data_visible && !self.data_guid_rotated;
        if !need_file && !need_data {
            return Ok(());
        }
        let mut h = self.header;
        if need_file {
            h.file_write_guid = Uuid::new_v4();
        }
        if need_data {
            h.data_write_guid = self
                .next_data_write_guid
                .take()
                .unwrap_or_else(Uuid::new_v4);
        }
        self.write_header(h)?;
        self.file_guid_rotated = true;
        self.data_guid_rotated |= need_data;
        Ok(())
    }

    /// Commits 4 KiB metadata sector updates through the log (see the module docs).
    pub(crate) fn commit_metadata(&mut self, writes: &[(u64, Vec<u8>)]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.begin_modification(false)?;
        let (lo, ll) = (self.header.log_offset, self.header.log_length as u64);
        if ll == 0 {
            return Err(DiskError::unsupported(
                &self.path,
                "file has no log, so metadata cannot be updated safely",
            ));
        }
        let cap = log::entry_capacity((ll / LOG_SECTOR as u64) as usize).max(1);
        self.file.sync_all().map_err(io(&self.path))?;
        for batch in writes.chunks(cap) {
            let len = self.file.metadata().map_err(io(&self.path))?.len();
            let guid = Uuid::new_v4();
            let refs: Vec<(u64, &[u8])> = batch.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            let last = refs
                .iter()
                .map(|(o, _)| o + LOG_SECTOR as u64)
                .max()
                .unwrap_or(0)
                .max(len);
            let entry = log::build_entry(1, 0, &guid, len / MIB * MIB, round_up(last, MIB), &refs);
            self.write_raw(&entry, lo)?;
            self.file.sync_data().map_err(io(&self.path))?;
            let mut h = self.header;
            h.log_guid = guid;
            self.write_header(h)?;
            for (o, d) in batch {
                self.write_raw(d, *o)?;
            }
            self.file.sync_data().map_err(io(&self.path))?;
            let mut h = self.header;
            h.log_guid = Uuid::nil();
            self.write_header(h)?;
        }
        Ok(())
    }

    /// Gives the space of a block that became ZERO back to the host filesystem (best
    /// effort). The block's space is not reused by the file; as a hole it costs nothing.
    /// Safe before the BAT change is committed: a crash then shows the old entry over
    /// zeros, i.e. the zeroing write partly done, as a disk may after a crash.
    fn punch_hole(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a valid descriptor; no memory is passed.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
    }

    /// Splits stored bytes `[host, host + len)` (guest offset `voff`) into `Data` runs and
    /// `Zero` runs where the host file has holes (SEEK_DATA/SEEK_HOLE). When the
    /// filesystem cannot tell, everything is `Data`.
    fn stored_runs(&self, voff: u64, host: u64, len: u64, out: &mut Vec<Extent>) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let data = |o: u64, l: u64| Extent {
            offset: voff + o,
            len: l,
            state: ExtentState::Data {
                host_offset: Some(host + o),
            },
        };
        let zero = |o: u64, l: u64| Extent {
            offset: voff + o,
            len: l,
            state: ExtentState::Zero,
        };
        let mut p = 0u64;
        while p < len {
            // SAFETY: lseek on a valid, open descriptor has no memory-safety requirements.
            let d = unsafe { libc::lseek(fd, (host + p) as libc::off_t, libc::SEEK_DATA) };
            if d < 0 {
                let enxio = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
                out.push(if enxio {
                    zero(p, len - p)
                } else {
                    data(p, len - p)
                });
                return;
            }
            let d = (d as u64).saturating_sub(host).max(p);
            if d >= len {
                out.push(zero(p, len - p));
                return;
            }
            if d > p {
                out.push(zero(p, d - p));
            }
            // SAFETY: as above.
            let h = unsafe { libc::lseek(fd, (host + d) as libc::off_t, libc::SEEK_HOLE) };
            let h = if h < 0 {
                len
            } else {
                (h as u64).saturating_sub(host).clamp(d + 1, len)
            };
            out.push(data(d, h - d));
            p = h;
        }
    }

    fn allocate(&mut self, len: u64) -> Result<u64> {
        let host = self.next_free;
        self.next_free = host + len;
        let real = self.file.metadata().map_err(io(&self.path))?.len();
        if real < self.next_free {
            self.file.set_len(self.next_free).map_err(io(&self.path))?;
        }
        self.file_len = self.file_len.max(self.next_free);
        Ok(host)
    }

    fn block_len(&self, b: u64) -> u64 {
        self.geo
            .block_size
            .min(self.geo.virtual_size - b * self.geo.block_size)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.geo.virtual_size)
        {
            return Err(DiskError::invalid(
                &self.path,
                format!(
                    "range {offset}+{len} lies past the virtual size {}",
                    self.geo.virtual_size
                ),
            ));
        }
        Ok(())
    }

    /// Bitmap bytes `[byte_off, byte_off + n)` of chunk `c`'s sector bitmap, with
    /// uncommitted changes applied.
    fn bitmap_bytes(&self, c: u64, byte_off: u64, n: usize) -> Result<Vec<u8>> {
        let e = self.entry(self.geo.bitmap_index(c));
        let mut out = vec![0u8; n];
        if bat_state(e) != SB_PRESENT {
            return Ok(out);
        }
        let host = bat_offset(e) + byte_off;
        self.read_raw(&mut out, host)?;
        let end = host + n as u64;
        let first_sector = host / LOG_SECTOR as u64 * LOG_SECTOR as u64;
        for (&so, data) in self.pending_bitmap.range(first_sector..end) {
            let (lo, hi) = (so.max(host), (so + LOG_SECTOR as u64).min(end));
            out[(lo - host) as usize..(hi - host) as usize]
                .copy_from_slice(&data[(lo - so) as usize..(hi - so) as usize]);
        }
        Ok(out)
    }

    /// Runs of `(start, len, present)` (offsets within block `b`) covering
    /// `[within, within + len)` of a partially present block.
    fn sector_runs(&self, b: u64, within: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        let lss = self.geo.logical_sector_size;
        let s0 = within / lss;
        let s1 = (within + len).div_ceil(lss);
        let c = b / self.geo.chunk_ratio;
        let first = (b % self.geo.chunk_ratio) * self.geo.sectors_per_block() + s0;
        let byte0 = first / 8;
        let bytes =
            self.bitmap_bytes(c, byte0, ((first + (s1 - s0)).div_ceil(8) - byte0) as usize)?;
        let bit = |s: u64| {
            let k = first + (s - s0) - byte0 * 8;
            bytes[(k / 8) as usize] >> (k % 8) & 1 == 1
        };
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        for s in s0..s1 {
            let p = bit(s);
            let lo = (s * lss).max(within);
            let hi = ((s + 1) * lss).min(within + len);
            match runs.last_mut() {
                Some(r) if r.2 == p => r.1 += hi - lo,
                _ => runs.push((lo, hi - lo, p)),
            }
        }
        Ok(runs)
    }

    fn set_bitmap_bits(&mut self, b: u64, s0: u64, s1: u64) -> Result<()> {
        let c = b / self.geo.chunk_ratio;
        let e = self.entry(self.geo.bitmap_index(c));
        let base = bat_offset(e);
        let first = (b % self.geo.chunk_ratio) * self.geo.sectors_per_block();
        let (k0, k1) = (first + s0, first + s1);
        let mut k = k0;
        while k < k1 {
            let sector_off = base + (k / 8) / LOG_SECTOR as u64 * LOG_SECTOR as u64;
            let mut sec = match self.pending_bitmap.remove(&sector_off) {
                Some(s) => s,
                None => {
                    let mut s = vec![0u8; LOG_SECTOR].into_boxed_slice();
                    self.read_raw(&mut s, sector_off)?;
                    s
                }
            };
            let sector_bits_end = ((sector_off - base) + LOG_SECTOR as u64) * 8;
            while k < k1 && k < sector_bits_end {
                let byte = (k / 8 - (sector_off - base)) as usize;
                if k % 8 == 0 && k + 8 <= k1.min(sector_bits_end) {
                    sec[byte] = 0xff;
                    k += 8;
                } else {
                    sec[byte] |= 1 << (k % 8);
                    k += 1;
                }
            }
            self.pending_bitmap.insert(sector_off, sec);
        }
        Ok(())
    }

    fn read_piece(&self, b: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        let e = self.payload_entry(b);
        let voff = b * self.geo.block_size + within;
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => self.read_raw(buf, bat_offset(e) + within),
            PAYLOAD_PARTIALLY_PRESENT => {
                for (start, len, present) in self.sector_runs(b, within, buf.len() as u64)? {
                    let dst = &mut buf[(start - within) as usize..(start - within + len) as usize];
                    if present {
                        self.read_raw(dst, bat_offset(e) + start)?;
                    } else {
                        self.read_parent(dst, b * self.geo.block_size + start)?;
                    }
                }
                Ok(())
            }
            PAYLOAD_NOT_PRESENT => self.read_parent(buf, voff),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn read_parent(&self, buf: &mut [u8], voff: u64) -> Result<()> {
        match &self.parent {
            Some(p) => p.read_at(buf, voff),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Writes into the sectors of a partially present block and marks them present.
    fn write_sectors(&mut self, b: u64, host: u64, within: u64, data: &[u8]) -> Result<()> {
        let lss = self.geo.logical_sector_size;
        let end = within + data.len() as u64;
        let (a, z) = (within / lss * lss, end.div_ceil(lss) * lss);
        if a == within && z == end {
            self.write_raw(data, host + within)?;
        } else {
            let mut buf = vec![0u8; (z - a) as usize];
            // Head and tail sectors keep what the chain shows there now.
            self.read_piece(b, a, &mut buf[..lss as usize])?;
            let tl = (z - lss - a) as usize;
            if tl > 0 {
                let (head, tail) = buf.split_at_mut(tl);
                let _ = head;
                self.read_piece(b, z - lss, tail)?;
            }
            buf[(within - a) as usize..(end - a) as usize].copy_from_slice(data);
            self.write_raw(&buf, host + a)?;
        }
        self.set_bitmap_bits(b, a / lss, z / lss)
    }

    fn ensure_bitmap(&mut self, c: u64) -> Result<()> {
        let i = self.geo.bitmap_index(c);
        if bat_state(self.entry(i)) != SB_PRESENT {
            let host = self.allocate(SECTOR_BITMAP_BLOCK)?;
            self.set_entry(i, SB_PRESENT, host);
        }
        Ok(())
    }

    fn write_piece(&mut self, b: u64, within: u64, data: &[u8]) -> Result<()> {
        let i = self.geo.payload_index(b);
        let e = self.entry(i);
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => self.write_raw(data, bat_offset(e) + within),
            PAYLOAD_PARTIALLY_PRESENT if within == 0 && data.len() as u64 == self.block_len(b) => {
                // Every sector is now this layer's: the bitmap no longer matters.
                self.write_raw(data, bat_offset(e))?;
                self.set_entry(i, PAYLOAD_FULLY_PRESENT, bat_offset(e));
                Ok(())
            }
            PAYLOAD_PARTIALLY_PRESENT => self.write_sectors(b, bat_offset(e), within, data),
            state => {
                let whole = within == 0 && data.len() as u64 == self.block_len(b);
                let parent_visible = state == PAYLOAD_NOT_PRESENT && self.parent.is_some();
                if whole || !parent_visible {
                    let host = self.allocate(self.geo.block_size)?;
                    self.write_raw(data, host + within)?;
                    self.set_entry(i, PAYLOAD_FULLY_PRESENT, host);
                    Ok(())
                } else {
                    self.ensure_bitmap(b / self.geo.chunk_ratio)?;
                    let host = self.allocate(self.geo.block_size)?;
                    self.set_entry(i, PAYLOAD_PARTIALLY_PRESENT, host);
                    self.write_sectors(b, host, within, data)
                }
            }
        }
    }

    /// Metadata sectors changed since the last commit (BAT and sector bitmaps).
    fn take_dirty_sectors(&mut self) -> Vec<(u64, Vec<u8>)> {
        let mut w = Vec::new();
        for s in std::mem::take(&mut self.dirty_bat_sectors) {
            let o = (s as usize) * LOG_SECTOR;
            w.push((
                self.bat_region.0 + o as u64,
                self.bat_raw[o..o + LOG_SECTOR].to_vec(),
            ));
        }
        for (o, d) in std::mem::take(&mut self.pending_bitmap) {
            w.push((o, d.into_vec()));
        }
        w
    }

    /// Rewrites the metadata region with `items` through the log (one atomic entry when
    /// the changed sectors fit the log) together with any pending BAT changes.
    pub(crate) fn rewrite_metadata(&mut self, items: Vec<MetaItem>) -> Result<()> {
        self.require_writable()?;
        let (moff, mlen) = self.meta_region;
        let new = metadata::serialize(&self.path, &items, mlen)?;
        let mut old = vec![0u8; new.len()];
        self.read_raw(&mut old, moff)?;
        let mut writes = self.take_dirty_sectors();
        for (k, (n, o)) in new
            .chunks(LOG_SECTOR)
            .zip(old.chunks(LOG_SECTOR))
            .enumerate()
        {
            if n != o {
                writes.push((moff + (k * LOG_SECTOR) as u64, n.to_vec()));
            }
        }
        self.commit_metadata(&writes)?;
        let mut table = vec![0u8; METADATA_TABLE_SIZE];
        self.read_raw(&mut table, moff)?;
        let meta = metadata::parse(&self.path, &table, mlen, |off, len| {
            let mut b = vec![0u8; len];
            self.read_raw(&mut b, moff + off)?;
            Ok(b)
        })?;
        self.meta = meta;
        Ok(())
    }

    /// Makes a differencing layer standalone: every block must already be held by this
    /// layer (fully present, zero, or partially present with every sector present).
    pub(crate) fn make_standalone(&mut self) -> Result<()> {
        self.require_writable()?;
        if !self.meta.has_parent {
            return Ok(());
        }
        for b in 0..self.geo.payload_blocks {
            let i = self.geo.payload_index(b);
            let e = self.entry(i);
            match bat_state(e) {
                PAYLOAD_NOT_PRESENT => {
                    return Err(DiskError::invalid(
                        &self.path,
                        format!(
                            "block {b} is inherited from the parent, so the image cannot stand alone"
                        ),
                    ));
                }
                PAYLOAD_PARTIALLY_PRESENT => {
                    let len = self.block_len(b);
                    if self.sector_runs(b, 0, len)?.iter().any(|r| !r.2) {
                        return Err(DiskError::invalid(
                            &self.path,
                            format!(
                                "block {b} has sectors inherited from the parent, so the image cannot stand alone"
                            ),
                        ));
                    }
                    self.set_entry(i, PAYLOAD_FULLY_PRESENT, bat_offset(e));
                }
                _ => {}
            }
        }
        let geo = Geometry::new(
            self.meta.virtual_size,
            self.meta.block_size,
            self.meta.logical_sector_size,
            false,
        );
        // Old bitmap entries (and padding past the last block) become NOT_PRESENT.
        for i in 0..self.geo.entries {
            let unused = self.geo.is_bitmap_index(i)
                || self.geo.block_of_index(i) >= self.geo.payload_blocks;
            if unused && self.entry(i) != 0 {
                self.set_entry(i, SB_NOT_PRESENT, 0);
            }
        }
        let items: Vec<MetaItem> = self
            .meta
            .items
            .iter()
            .filter(|it| it.is_user() || it.id != META_PARENT_LOCATOR)
            .map(|it| {
                let mut it = it.clone();
                if !it.is_user() && it.id == META_FILE_PARAMETERS {
                    it.data = metadata::file_parameters(self.meta.block_size, false, false);
                }
                it
            })
            .collect();
        self.pending_bitmap.clear();
        self.rewrite_metadata(items)?;
        self.geo = geo;
        self.parent = None;
        Ok(())
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

fn check_overlaps(path: &Path, spans: &mut [(u64, u64, String)]) -> Result<()> {
    spans.sort_by_key(|s| (s.0, s.1));
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "{} at {}..{} overlaps {} at {}..{}",
                    w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                ),
            ));
        }
    }
    Ok(())
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
