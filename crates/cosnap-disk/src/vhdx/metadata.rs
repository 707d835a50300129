//! The metadata region (MS-VHDX 2.6): the item table, the known items and the parent
//! locator (2.6.2.6).

use std::path::Path;

use uuid::Uuid;

use super::format::*;
use crate::error::{DiskError, Result};

const FLAG_IS_USER: u32 = 1;
const FLAG_IS_VIRTUAL_DISK: u32 = 2;
const FLAG_IS_REQUIRED: u32 = 4;

/// One metadata item, with its raw value (kept verbatim so unknown items survive rewrites).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaItem {
    pub id: Uuid,
    pub flags: u32,
    pub data: Vec<u8>,
}

impl MetaItem {
    pub fn is_user(&self) -> bool {
        self.flags & FLAG_IS_USER != 0
    }
    pub fn is_virtual_disk(&self) -> bool {
        self.flags & FLAG_IS_VIRTUAL_DISK != 0
    }
    pub fn new(id: Uuid, virtual_disk: bool, data: Vec<u8>) -> MetaItem {
        let mut flags = FLAG_IS_REQUIRED;
        if virtual_disk {
            flags |= FLAG_IS_VIRTUAL_DISK;
        }
        MetaItem { id, flags, data }
    }
}

/// The parsed metadata: every item plus the decoded known values.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub items: Vec<MetaItem>,
    pub block_size: u32,
    pub leave_block_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    pub virtual_disk_id: Uuid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub locator: Option<Locator>,
}

/// Reads the table from the first 64 KiB of the region; `read_item(offset, len)` returns
/// item bytes relative to the region start (bounds already checked against `region_len`).
pub(crate) fn parse(
    path: &Path,
    table: &[u8],
    region_len: u64,
    mut read_item: impl FnMut(u64, usize) -> Result<Vec<u8>>,
) -> Result<Metadata> {
    let (mut items, locations) = read_item_table(path, table, region_len)?;

    // Values are read after the overlap check, so together they are at most the
    // region's size (which lies inside the file).
    for (item, at) in items.iter_mut().zip(&locations) {
        if at.len > 0 {
            item.data = read_item(at.offset, at.len as usize)?;
        }
    }
    decode_known_items(path, items)
}

/// Where an item's value lies, relative to the metadata region's start.
struct ItemLocation {
    offset: u64,
    len: u32,
}

/// The item table's entries (values not read yet) and where each value lies: every entry
/// bounded, inside the item area, listed once, understood if required, none overlapping.
fn read_item_table(
    path: &Path,
    table: &[u8],
    region_len: u64,
) -> Result<(Vec<MetaItem>, Vec<ItemLocation>)> {
    let bad = |what: String| DiskError::corrupt(path, format!("metadata: {what}"));
    if table.len() < METADATA_TABLE_SIZE || &table[0..8] != SIG_METADATA {
        return Err(bad("table signature \"metadata\" missing".into()));
    }
    let count = u16_at(table, 10) as usize;
    if count > MAX_TABLE_ENTRIES {
        return Err(bad(format!(
            "table has {count} entries (at most 2047 allowed)"
        )));
    }
    let mut items = Vec::with_capacity(count);
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(count);
    let mut locations: Vec<ItemLocation> = Vec::with_capacity(count);
    for i in 0..count {
        let o = 32 + i * 32;
        let id = guid_at(table, o);
        let off = u32_at(table, o + 16) as u64;
        let len = u32_at(table, o + 20);
        let flags = u32_at(table, o + 24) & 7;
        if len > MAX_METADATA_ITEM {
            return Err(bad(format!(
                "item {id} is {len} bytes long (at most 1 MiB allowed)"
            )));
        }
        if len == 0 {
            if off != 0 {
                return Err(bad(format!("empty item {id} has a non-zero offset")));
            }
        } else if off < METADATA_TABLE_SIZE as u64 || off + len as u64 > region_len {
            return Err(bad(format!(
                "item {id} at offset {off} length {len} lies outside the metadata region's item area"
            )));
        }
        let is_user = flags & FLAG_IS_USER != 0;
        if items
            .iter()
            .any(|x: &MetaItem| x.id == id && x.is_user() == is_user)
        {
            return Err(bad(format!("item {id} listed twice")));
        }
        let known = [
            META_FILE_PARAMETERS,
            META_VIRTUAL_DISK_SIZE,
            META_VIRTUAL_DISK_ID,
            META_LOGICAL_SECTOR_SIZE,
            META_PHYSICAL_SECTOR_SIZE,
            META_PARENT_LOCATOR,
        ];
        if flags & FLAG_IS_REQUIRED != 0 && !is_user && !known.contains(&id) {
            return Err(DiskError::unsupported(
                path,
                format!("required metadata item {id} is not understood"),
            ));
        }
        if len > 0 {
            spans.push((off, off + len as u64));
        }
        items.push(MetaItem {
            id,
            flags,
            data: Vec::new(),
        });
        locations.push(ItemLocation { offset: off, len });
    }
    let mut sorted = spans.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(bad("two items overlap".into()));
    }
    Ok((items, locations))
}

/// Decodes the known items every VHDX file must have (and the parent locator of a
/// differencing file), refusing values outside the format's ranges.
fn decode_known_items(path: &Path, items: Vec<MetaItem>) -> Result<Metadata> {
    let bad = |what: String| DiskError::corrupt(path, format!("metadata: {what}"));
    let get = |id: Uuid, name: &str, len: usize| -> Result<&[u8]> {
        let item = items
            .iter()
            .find(|i| i.id == id && !i.is_user())
            .ok_or_else(|| bad(format!("required item {name} is missing")))?;
        if item.data.len() < len {
            return Err(bad(format!(
                "item {name} is {} bytes, expected {len}",
                item.data.len()
            )));
        }
        Ok(&item.data[..len])
    };
    let fp = get(META_FILE_PARAMETERS, "File Parameters", 8)?;
    let block_size = u32_at(fp, 0);
    let fp_flags = u32_at(fp, 4);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(bad(format!(
            "block size {block_size} is not a power of two between 1 MiB and 256 MiB"
        )));
    }
    let lss = u32_at(get(META_LOGICAL_SECTOR_SIZE, "Logical Sector Size", 4)?, 0);
    if lss != 512 && lss != 4096 {
        return Err(bad(format!(
            "logical sector size {lss} is neither 512 nor 4096"
        )));
    }
    let pss = u32_at(
        get(META_PHYSICAL_SECTOR_SIZE, "Physical Sector Size", 4)?,
        0,
    );
    if pss != 512 && pss != 4096 {
        return Err(bad(format!(
            "physical sector size {pss} is neither 512 nor 4096"
        )));
    }
    let virtual_size = u64_at(get(META_VIRTUAL_DISK_SIZE, "Virtual Disk Size", 8)?, 0);
    if virtual_size > MAX_VIRTUAL_SIZE || !virtual_size.is_multiple_of(lss as u64) {
        return Err(bad(format!(
            "virtual disk size {virtual_size} is over 64 TiB or not a multiple of the {lss}-byte sector"
        )));
    }
    let virtual_disk_id = guid_at(get(META_VIRTUAL_DISK_ID, "Virtual Disk ID", 16)?, 0);
    let has_parent = fp_flags & 2 != 0;
    let locator = match items
        .iter()
        .find(|i| i.id == META_PARENT_LOCATOR && !i.is_user())
    {
        Some(item) if has_parent => Some(Locator::parse(&item.data).map_err(&bad)?),
        None if has_parent => {
            return Err(bad("HasParent is set but there is no parent locator".into()));
        }
        _ => None,
    };
    Ok(Metadata {
        block_size,
        leave_block_allocated: fp_flags & 1 != 0,
        has_parent,
        virtual_size,
        virtual_disk_id,
        logical_sector_size: lss,
        physical_sector_size: pss,
        locator,
        items,
    })
}

/// Lays the items out into a metadata region image: the 64 KiB table, then the items
/// packed from 64 KiB on, each 8-byte aligned. Errors if they do not fit in `region_len`.
pub(crate) fn serialize(path: &Path, items: &[MetaItem], region_len: u64) -> Result<Vec<u8>> {
    let mut end = METADATA_TABLE_SIZE as u64;
    for it in items {
        end = round_up(end, 8) + it.data.len() as u64;
    }
    if end > region_len || items.len() > MAX_TABLE_ENTRIES {
        return Err(DiskError::unsupported(
            path,
            "metadata items do not fit the metadata region",
        ));
    }
    let mut b = vec![0u8; round_up(end, LOG_SECTOR as u64) as usize];
    b[0..8].copy_from_slice(SIG_METADATA);
    put_u16(&mut b, 10, items.len() as u16);
    let mut at = METADATA_TABLE_SIZE;
    for (i, it) in items.iter().enumerate() {
        let o = 32 + i * 32;
        put_guid(&mut b, o, &it.id);
        if it.data.is_empty() {
            put_u32(&mut b, o + 16, 0);
        } else {
            at = round_up(at as u64, 8) as usize;
            put_u32(&mut b, o + 16, at as u32);
            b[at..at + it.data.len()].copy_from_slice(&it.data);
            at += it.data.len();
        }
        put_u32(&mut b, o + 20, it.data.len() as u32);
        put_u32(&mut b, o + 24, it.flags);
    }
    Ok(b)
}

pub(crate) fn file_parameters(block_size: u32, leave_allocated: bool, has_parent: bool) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    put_u32(&mut b, 0, block_size);
    put_u32(&mut b, 4, leave_allocated as u32 | (has_parent as u32) << 1);
    b
}

/// A parent locator (2.6.2.6): a type GUID and UTF-16LE key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locator {
    pub locator_type: Uuid,
    pub entries: Vec<(String, String)>,
}

impl Locator {
    pub fn parse(data: &[u8]) -> std::result::Result<Locator, String> {
        if data.len() < 20 {
            return Err("parent locator is shorter than its 20-byte header".into());
        }
        let locator_type = guid_at(data, 0);
        let count = u16_at(data, 18) as usize;
        if 20 + count * 12 > data.len() {
            return Err(format!(
                "parent locator has {count} entries but is {} bytes",
                data.len()
            ));
        }
        let text = |off: u32, len: u16, what: &str| -> std::result::Result<String, String> {
            let (off, len) = (off as usize, len as usize);
            if off == 0 || len == 0 || len % 2 != 0 || off + len > data.len() {
                return Err(format!(
                    "parent locator {what} at {off}+{len} is out of bounds"
                ));
            }
            let units: Vec<u16> = data[off..off + len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| format!("parent locator {what} is not UTF-16"))
        };
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let o = 20 + i * 12;
            let key = text(u32_at(data, o), u16_at(data, o + 8), "key")?;
            let value = text(u32_at(data, o + 4), u16_at(data, o + 10), "value")?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("parent locator key {key:?} appears twice"));
            }
            entries.push((key, value));
        }
        Ok(Locator {
            locator_type,
            entries,
        })
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut b = vec![0u8; 20 + self.entries.len() * 12];
        put_guid(&mut b, 0, &self.locator_type);
        put_u16(&mut b, 18, self.entries.len() as u16);
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let mut put = |s: &str| -> (u32, u16) {
                let off = b.len() as u32;
                for u in s.encode_utf16() {
                    b.extend_from_slice(&u.to_le_bytes());
                }
                (off, (b.len() as u32 - off) as u16)
            };
            let (ko, kl) = put(k);
            let (vo, vl) = put(v);
            let o = 20 + i * 12;
            put_u32(&mut b, o, ko);
            put_u32(&mut b, o + 4, vo);
            put_u16(&mut b, o + 8, kl);
            put_u16(&mut b, o + 10, vl);
        }
        b
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }
}

/// `{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}`, the spec's linkage form.
pub(crate) fn linkage_string(g: &Uuid) -> String {
    format!("{{{}}}", g.hyphenated())
}

/// Parses a linkage GUID, with or without braces, any case.
pub(crate) fn parse_linkage(s: &str) -> Option<Uuid> {
    let t = s.trim().trim_start_matches('{').trim_end_matches('}');
    Uuid::parse_str(t).ok()
}
