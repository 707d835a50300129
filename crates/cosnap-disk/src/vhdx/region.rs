//! The region table (MS-VHDX 2.2.3): where the BAT and the metadata region live.

use std::path::Path;

use uuid::Uuid;

use super::format::*;
use crate::error::{DiskError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionEntry {
    pub guid: Uuid,
    pub offset: u64,
    pub length: u32,
    pub required: bool,
}

/// Parses one 64 KiB region table copy. `Ok(None)` when its signature or CRC is bad
/// (the caller then tries the other copy); entry-level defects are errors.
pub(crate) fn parse(path: &Path, buf: &[u8]) -> Result<Option<Vec<RegionEntry>>> {
    if buf.len() < REGION_TABLE_SIZE
        || &buf[0..4] != SIG_REGI
        || u32_at(buf, 4) != crc_with_zeroed_field(&buf[..REGION_TABLE_SIZE], 4)
    {
        return Ok(None);
    }
    let count = u32_at(buf, 8) as usize;
    if count > MAX_TABLE_ENTRIES {
        return Err(DiskError::corrupt(
            path,
            format!("region table has {count} entries (at most {MAX_TABLE_ENTRIES} allowed)"),
        ));
    }
    let mut entries: Vec<RegionEntry> = Vec::with_capacity(count);
    for i in 0..count {
        let o = 16 + i * 32;
        let e = RegionEntry {
            guid: guid_at(buf, o),
            offset: u64_at(buf, o + 16),
            length: u32_at(buf, o + 24),
            required: u32_at(buf, o + 28) & 1 == 1,
        };
        if entries.iter().any(|x| x.guid == e.guid) {
            return Err(DiskError::corrupt(
                path,
                format!("region {} listed twice", e.guid),
            ));
        }
        entries.push(e);
    }
    Ok(Some(entries))
}

pub(crate) fn serialize(entries: &[RegionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[0..4].copy_from_slice(SIG_REGI);
    put_u32(&mut b, 8, entries.len() as u32);
    for (i, e) in entries.iter().enumerate() {
        let o = 16 + i * 32;
        put_guid(&mut b, o, &e.guid);
        put_u64(&mut b, o + 16, e.offset);
        put_u32(&mut b, o + 24, e.length);
        put_u32(&mut b, o + 28, e.required as u32);
    }
    seal_crc(&mut b, 4);
    b
}
