//! qcow2 persistent dirty bitmaps, read offline: the bitmap directory named by the header's
//! bitmaps extension, each bitmap's table and data clusters, and the dirty byte ranges they
//! mark. Read only; cosnap never writes bitmaps (qemu does, through QMP).
//!
//! The input is untrusted (a guest-reachable file): every size is capped before anything is
//! allocated, every table and cluster must lie inside the file, and each data cluster may be
//! used once, so the work is linear in the file's size.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{OFFSET_MASK, be16, be32, be64, open_with_header};
use crate::error::{DiskError, Result};

/// qemu's limit on the number of bitmaps in one image.
pub const MAX_BITMAPS: u32 = 65_535;
/// qemu's limit on the directory: 1 KiB per bitmap.
pub const MAX_DIRECTORY_BYTES: u64 = 1024 * MAX_BITMAPS as u64;
/// qemu's limit on a bitmap's name.
pub const MAX_NAME_BYTES: usize = 1023;
/// A bitmap table is held in memory while it is read: capped as the L1 table is.
pub const MAX_TABLE_BYTES: u64 = super::MAX_L1_BYTES;
/// qemu's limit on a directory entry's extra data.
const MAX_EXTRA_DATA_BYTES: usize = 1024;
const MIN_GRANULARITY_BITS: u8 = 9;
const MAX_GRANULARITY_BITS: u8 = 31;
const ENTRY_HEADER_BYTES: usize = 24;
const FLAG_IN_USE: u32 = 1;
const FLAG_AUTO: u32 = 1 << 1;
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
const KNOWN_FLAGS: u32 = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;
const TYPE_DIRTY_TRACKING: u8 = 1;
/// Autoclear bit 0: the bitmaps extension is consistent with the data.
const AUTOCLEAR_BITMAPS: u64 = 1;
/// Table entry bit 0 when the offset is 0: the cluster reads as all ones.
const ENTRY_ALL_ONES: u64 = 1;
/// Table entry bits that must be zero (1–8 and 56–63).
const ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;

/// One entry of an image's bitmap directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// The bitmap's name (unique in the image).
    pub name: String,
    /// Bytes of guest data one bit covers.
    pub granularity: u64,
    /// Not stored cleanly (qemu had the image open and did not close it): untrustworthy.
    pub in_use: bool,
    /// Enabled: qemu records every write into it.
    pub auto: bool,
    /// Whether cosnap can read the entry's bits: a dirty-tracking bitmap with no extra data
    /// it would have to understand.
    pub readable: bool,
    /// Where its bitmap table starts in the file.
    pub table_offset: u64,
    /// Entries in its bitmap table.
    pub table_entries: u32,
}

/// What a bitmap says about the changes since it was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeInfo {
    /// The dirty guest byte ranges, sorted, merged, clipped to the virtual size.
    Known(Vec<Range<u64>>),
    /// The bitmap cannot be trusted or is not there: treat every byte as changed.
    Lost(LostReason),
}

/// Why a bitmap's change information is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No bitmap of that name in the image.
    Missing,
    /// Flagged in use: qemu had it loaded and did not store it (killed, or still running).
    InUse,
    /// The image's autoclear bit says a program without bitmap support wrote to it.
    Inconsistent,
    /// A bitmap type or extra data cosnap does not understand.
    Unsupported(String),
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Missing => f.write_str("the bitmap is missing"),
            LostReason::InUse => f.write_str(
                "the bitmap is flagged in use (its hypervisor did not store it cleanly)",
            ),
            LostReason::Inconsistent => f.write_str(
                "the image was modified by a program without bitmap support, so its bitmaps are stale",
            ),
            LostReason::Unsupported(what) => write!(f, "unsupported bitmap: {what}"),
        }
    }
}

/// Geometry the directory and tables are checked against.
#[derive(Debug, Clone, Copy)]
pub struct ImageGeometry {
    /// The image's cluster size (bitmap tables and data clusters are aligned to it).
    pub cluster_size: u64,
    /// Guest bytes the bitmaps cover.
    pub virtual_size: u64,
    /// Length of the image file: every table and cluster must lie inside it.
    pub file_len: u64,
}

/// The bitmaps of the qcow2 image at `path` (empty when it has none).
pub fn list_bitmaps(path: &Path) -> Result<Vec<BitmapInfo>> {
    Ok(open_directory(path)?.map(|d| d.entries).unwrap_or_default())
}

/// The dirty ranges of bitmap `name` in the qcow2 image at `path`, or why they are lost.
/// Structural damage (a table past the end of the file, …) is an error, not a loss.
pub fn dirty_ranges(path: &Path, name: &str) -> Result<ChangeInfo> {
    let Some(directory) = open_directory(path)? else {
        return Ok(ChangeInfo::Lost(LostReason::Missing));
    };

    let Some(entry) = directory.entries.iter().find(|e| e.name == name) else {
        return Ok(ChangeInfo::Lost(LostReason::Missing));
    };
    if !directory.consistent {
        return Ok(ChangeInfo::Lost(LostReason::Inconsistent));
    }
    if entry.in_use {
        return Ok(ChangeInfo::Lost(LostReason::InUse));
    }
    if !entry.readable {
        return Ok(ChangeInfo::Lost(LostReason::Unsupported(format!(
            "{name:?} has a type or extra data cosnap does not read"
        ))));
    }

    let table = read_table(&directory.file, path, entry, &directory.geometry)?;
    let ranges = ranges_from_table(&directory.file, path, entry, &table, &directory.geometry)?;
    Ok(ChangeInfo::Known(ranges))
}

/// An image's bitmap directory, with the open file to read tables from.
struct Directory {
    file: File,
    geometry: ImageGeometry,
    /// Autoclear bit 0 set: the bitmaps match the data.
    consistent: bool,
    entries: Vec<BitmapInfo>,
}

/// Reads the header and, when the bitmaps extension is present, the directory it names.
fn open_directory(path: &Path) -> Result<Option<Directory>> {
    let (file, file_len, header) = open_with_header(path, false)?;
    let Some((count, dir_size, dir_offset)) = header.bitmaps else {
        return Ok(None);
    };

    let geometry = ImageGeometry {
        cluster_size: header.cluster_size(),
        virtual_size: header.size,
        file_len,
    };
    check_directory_location(count, dir_size, dir_offset, &geometry)
        .map_err(|d| DiskError::corrupt(path, d))?;

    let mut bytes = vec![0u8; dir_size as usize];
    file.read_exact_at(&mut bytes, dir_offset)
        .map_err(|e| DiskError::io(path, e))?;
    let entries =
        parse_directory(&bytes, count, &geometry).map_err(|d| DiskError::corrupt(path, d))?;
    Ok(Some(Directory {
        file,
        geometry,
        consistent: header.autoclear & AUTOCLEAR_BITMAPS != 0,
        entries,
    }))
}

/// The directory must be non-empty, capped, cluster aligned and inside the file.
fn check_directory_location(
    count: u32,
    dir_size: u64,
    dir_offset: u64,
    geometry: &ImageGeometry,
) -> std::result::Result<(), String> {
    if count == 0 || count > MAX_BITMAPS {
        return Err(format!(
            "bitmaps extension counts {count} bitmaps (1..={MAX_BITMAPS})"
        ));
    }
    if dir_size > MAX_DIRECTORY_BYTES || dir_size < ENTRY_HEADER_BYTES as u64 {
        return Err(format!("bitmap directory of {dir_size} bytes is absurd"));
    }
    if dir_offset == 0 || !dir_offset.is_multiple_of(geometry.cluster_size) {
        return Err(format!(
            "bitmap directory offset {dir_offset:#x} is not cluster aligned"
        ));
    }
    if dir_offset.saturating_add(dir_size) > geometry.file_len {
        return Err(format!(
            "bitmap directory at {dir_offset:#x} ({dir_size} bytes) is past the end of the file"
        ));
    }
    Ok(())
}

/// Parses `count` directory entries that must fill `bytes` exactly. Pure, for fuzzing: the
/// defect comes back in words.
pub fn parse_directory(
    bytes: &[u8],
    count: u32,
    geometry: &ImageGeometry,
) -> std::result::Result<Vec<BitmapInfo>, String> {
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    let mut pos = 0usize;

    for index in 0..count {
        let (entry, next) = parse_entry(bytes, pos, geometry)
            .map_err(|d| format!("bitmap directory entry {index}: {d}"))?;
        if !names.insert(entry.name.clone()) {
            return Err(format!("two bitmaps are named {:?}", entry.name));
        }
        entries.push(entry);
        pos = next;
    }

    if pos != bytes.len() {
        return Err(format!(
            "bitmap directory holds {} bytes but its {count} entries end at {pos}",
            bytes.len()
        ));
    }
    Ok(entries)
}

/// One entry at `bytes[pos..]`; returns it and where the next one starts.
fn parse_entry(
    bytes: &[u8],
    pos: usize,
    geometry: &ImageGeometry,
) -> std::result::Result<(BitmapInfo, usize), String> {
    let Some(head) = bytes.get(pos..pos + ENTRY_HEADER_BYTES) else {
        return Err("truncated".into());
    };
    let table_offset = be64(head, 0);
    let table_entries = be32(head, 8);
    let flags = be32(head, 12);
    let kind = head[16];
    let granularity_bits = head[17];
    let name_len = be16(head, 18) as usize;
    let extra_len = be32(head, 20) as usize;

    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("reserved flags {:#x} set", flags & !KNOWN_FLAGS));
    }
    if !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits) {
        return Err(format!(
            "granularity bits {granularity_bits} outside 9..=31"
        ));
    }
    if name_len == 0 || name_len > MAX_NAME_BYTES {
        return Err(format!("name of {name_len} bytes (1..={MAX_NAME_BYTES})"));
    }
    if extra_len > MAX_EXTRA_DATA_BYTES {
        return Err(format!("{extra_len} bytes of extra data"));
    }

    let name_start = pos + ENTRY_HEADER_BYTES + extra_len;
    let end = (name_start + name_len).div_ceil(8) * 8;
    let Some(name_bytes) = bytes.get(name_start..name_start + name_len) else {
        return Err("name runs past the directory".into());
    };
    if end > bytes.len() {
        return Err("padding runs past the directory".into());
    }
    let name = std::str::from_utf8(name_bytes)
        .map_err(|_| "name is not UTF-8".to_string())?
        .to_owned();

    let granularity = 1u64 << granularity_bits;
    check_table_location(table_offset, table_entries, granularity, geometry)
        .map_err(|d| format!("{name:?}: {d}"))?;
    let extra_understood = extra_len == 0 || flags & FLAG_EXTRA_DATA_COMPATIBLE != 0;
    let info = BitmapInfo {
        name,
        granularity,
        in_use: flags & FLAG_IN_USE != 0,
        auto: flags & FLAG_AUTO != 0,
        readable: kind == TYPE_DIRTY_TRACKING && extra_understood,
        table_offset,
        table_entries,
    };
    Ok((info, end))
}

/// The table must cover the virtual size at this granularity, be capped and lie in the file.
fn check_table_location(
    table_offset: u64,
    table_entries: u32,
    granularity: u64,
    geometry: &ImageGeometry,
) -> std::result::Result<(), String> {
    let needed = table_entries_needed(granularity, geometry);
    if (table_entries as u64) < needed {
        return Err(format!(
            "table of {table_entries} entries cannot cover the virtual size ({needed} needed)"
        ));
    }
    let table_bytes = table_entries as u64 * 8;
    if table_bytes > MAX_TABLE_BYTES {
        return Err(format!("table of {table_entries} entries exceeds 32 MiB"));
    }
    if table_offset == 0 || !table_offset.is_multiple_of(geometry.cluster_size) {
        return Err(format!(
            "table offset {table_offset:#x} is not cluster aligned"
        ));
    }
    if table_offset.saturating_add(table_bytes) > geometry.file_len {
        return Err(format!(
            "table at {table_offset:#x} is past the end of the file"
        ));
    }
    Ok(())
}

/// Bitmap table entries that cover the virtual size: one data cluster holds
/// `cluster_size * 8` bits of `granularity` bytes each.
fn table_entries_needed(granularity: u64, geometry: &ImageGeometry) -> u64 {
    let bits = geometry.virtual_size.div_ceil(granularity);
    bits.div_ceil(geometry.cluster_size * 8)
}

/// The table entries covering the virtual size (trailing extra entries are ignored).
fn read_table(
    file: &File,
    path: &Path,
    entry: &BitmapInfo,
    geometry: &ImageGeometry,
) -> Result<Vec<u64>> {
    let used = table_entries_needed(entry.granularity, geometry) as usize;
    let mut bytes = vec![0u8; used * 8];
    file.read_exact_at(&mut bytes, entry.table_offset)
        .map_err(|e| DiskError::io(path, e))?;
    Ok(bytes.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

/// Turns the table's clusters into merged dirty byte ranges. Each data cluster is read once
/// and may appear once, so the work is bounded by the file.
fn ranges_from_table(
    file: &File,
    path: &Path,
    entry: &BitmapInfo,
    table: &[u64],
    geometry: &ImageGeometry,
) -> Result<Vec<Range<u64>>> {
    let corrupt = |d: String| DiskError::corrupt(path, format!("bitmap {:?}: {d}", entry.name));
    let cs = geometry.cluster_size;
    let bits_per_cluster = cs * 8;
    let total_bits = geometry.virtual_size.div_ceil(entry.granularity);
    let mut collector = RangeCollector::new(entry.granularity, geometry.virtual_size);
    let mut seen_clusters = HashSet::new();
    let mut cluster = vec![0u8; cs as usize];

    for (index, &raw) in table.iter().enumerate() {
        let first_bit = index as u64 * bits_per_cluster;
        let bits = bits_per_cluster.min(total_bits - first_bit);
        let offset = raw & OFFSET_MASK;
        if raw & ENTRY_RESERVED != 0 || (offset != 0 && raw & ENTRY_ALL_ONES != 0) {
            return Err(corrupt(format!("table entry {index} is {raw:#x}")));
        }

        if offset == 0 {
            if raw & ENTRY_ALL_ONES != 0 {
                collector.push_bits(first_bit, first_bit + bits);
            }
            continue;
        }
        check_data_cluster(offset, geometry, &mut seen_clusters).map_err(corrupt)?;
        file.read_exact_at(&mut cluster, offset)
            .map_err(|e| DiskError::io(path, e))?;
        collector.push_cluster(&cluster, first_bit, bits);
    }
    Ok(collector.ranges)
}

/// A data cluster must be aligned, inside the file, and not shared with another entry.
fn check_data_cluster(
    offset: u64,
    geometry: &ImageGeometry,
    seen: &mut HashSet<u64>,
) -> std::result::Result<(), String> {
    if !offset.is_multiple_of(geometry.cluster_size) {
        return Err(format!("data cluster {offset:#x} is not cluster aligned"));
    }
    if offset.saturating_add(geometry.cluster_size) > geometry.file_len {
        return Err(format!(
            "data cluster {offset:#x} is past the end of the file"
        ));
    }
    if !seen.insert(offset) {
        return Err(format!("data cluster {offset:#x} is used twice"));
    }
    Ok(())
}

/// Accumulates set bits as merged byte ranges clipped to the virtual size.
struct RangeCollector {
    granularity: u64,
    virtual_size: u64,
    ranges: Vec<Range<u64>>,
}

impl RangeCollector {
    fn new(granularity: u64, virtual_size: u64) -> Self {
        RangeCollector {
            granularity,
            virtual_size,
            ranges: Vec::new(),
        }
    }

    /// Bits `[start, end)` are set.
    fn push_bits(&mut self, start: u64, end: u64) {
        let from = start * self.granularity;
        let to = (end * self.granularity).min(self.virtual_size);
        if from >= to {
            return;
        }
        match self.ranges.last_mut() {
            Some(last) if last.end == from => last.end = to,
            _ => self.ranges.push(from..to),
        }
    }

    /// The first `bits` bits of `data` (LSB first in each byte) are bits `first_bit..`.
    /// Whole zero and all-ones bytes are taken in one step.
    fn push_cluster(&mut self, data: &[u8], first_bit: u64, bits: u64) {
        let mut run_start = None;
        let mut bit = 0u64;
        while bit < bits {
            let byte = data[(bit / 8) as usize];
            let uniform_byte =
                bit.is_multiple_of(8) && bit + 8 <= bits && (byte == 0 || byte == 0xff);
            let set = if uniform_byte {
                byte == 0xff
            } else {
                byte >> (bit % 8) & 1 == 1
            };

            match (set, run_start) {
                (true, None) => run_start = Some(bit),
                (false, Some(s)) => {
                    self.push_bits(first_bit + s, first_bit + bit);
                    run_start = None;
                }
                _ => {}
            }
            bit += if uniform_byte { 8 } else { 1 };
        }
        if let Some(s) = run_start {
            self.push_bits(first_bit + s, first_bit + bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ImageGeometry {
        ImageGeometry {
            cluster_size: 512,
            virtual_size: 1 << 20,
            file_len: 1 << 20,
        }
    }

    fn entry(name: &str, flags: u32, table_offset: u64, table_entries: u32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&table_offset.to_be_bytes());
        e.extend_from_slice(&table_entries.to_be_bytes());
        e.extend_from_slice(&flags.to_be_bytes());
        e.push(TYPE_DIRTY_TRACKING);
        e.push(16);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(&0u32.to_be_bytes());
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().div_ceil(8) * 8, 0);
        e
    }

    #[test]
    fn directory_entries_parse_with_flags() {
        let mut dir = entry("a", FLAG_AUTO, 4096, 1);
        dir.extend(entry("broken", FLAG_IN_USE, 8192, 1));
        let parsed = parse_directory(&dir, 2, &geometry()).unwrap();
        assert_eq!(parsed[0].name, "a");
        assert!(parsed[0].auto && !parsed[0].in_use);
        assert_eq!(parsed[0].granularity, 65_536);
        assert!(parsed[1].in_use && !parsed[1].auto);
    }

    #[test]
    fn directory_defects_are_refused_in_words() {
        let one = entry("a", 0, 4096, 1);
        let twice = [one.clone(), one.clone()].concat();
        assert!(
            parse_directory(&twice, 2, &geometry())
                .unwrap_err()
                .contains("two bitmaps")
        );
        assert!(
            parse_directory(&one, 2, &geometry())
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            parse_directory(&twice, 1, &geometry())
                .unwrap_err()
                .contains("end at")
        );
        let past_end = entry("a", 0, 1 << 20, 1);
        assert!(
            parse_directory(&past_end, 1, &geometry())
                .unwrap_err()
                .contains("past the end")
        );
        let reserved = entry("a", 1 << 7, 4096, 1);
        assert!(
            parse_directory(&reserved, 1, &geometry())
                .unwrap_err()
                .contains("reserved")
        );
    }

    #[test]
    fn bits_become_merged_byte_ranges() {
        let mut c = RangeCollector::new(512, 40 * 512);
        // Bits 0-1, 8-15 (a whole byte), 16 and 20; 38-39 clipped by the virtual size (40 bits).
        let data = [0b0000_0011, 0xff, 0b0001_0001, 0, 0b1100_0000];
        c.push_cluster(&data, 0, 40);
        assert_eq!(
            c.ranges,
            vec![
                0..1024,
                8 * 512..17 * 512,
                20 * 512..21 * 512,
                38 * 512..40 * 512
            ]
        );
    }

    #[test]
    fn last_range_is_clipped_to_the_virtual_size() {
        let mut c = RangeCollector::new(65_536, 100_000);
        c.push_bits(0, 2);
        assert_eq!(c.ranges, vec![0..100_000]);
    }
}
