//! Creating new VHDX files: dynamic, fixed, and differencing children.
//!
//! Layout cosnap writes (everything 1 MiB-aligned): header section at 0, a 1 MiB log at
//! 1 MiB, a 1 MiB metadata region at 2 MiB, the BAT at 3 MiB (rounded up to 1 MiB), then
//! payload blocks (all of them, contiguous, for a fixed image). Both headers start with
//! LogGuid = 0, so a new file has nothing to replay.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

use super::CreateOptions;
use super::bat::Geometry;
use super::format::*;
use super::header::Header;
use super::image::VhdxImage;
use super::metadata::{self, Locator, MetaItem};
use super::region::{self, RegionEntry};
use crate::error::{DiskError, Result};

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;

pub(crate) fn validate_options(path: &Path, o: &CreateOptions) -> Result<()> {
    let bad = |w: String| Err(DiskError::invalid(path, w));
    if !o.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size)
    {
        return bad(format!(
            "block size {} is not a power of two from 1 MiB to 256 MiB",
            o.block_size
        ));
    }
    for s in [o.logical_sector_size, o.physical_sector_size] {
        if s != 512 && s != 4096 {
            return bad(format!("sector size {s} is neither 512 nor 4096"));
        }
    }
    if o.virtual_size == 0
        || o.virtual_size > MAX_VIRTUAL_SIZE
        || !o.virtual_size.is_multiple_of(o.logical_sector_size as u64)
    {
        return bad(format!(
            "virtual size {} must be a non-zero multiple of {} bytes, at most 64 TiB",
            o.virtual_size, o.logical_sector_size
        ));
    }
    Ok(())
}

fn u32_item(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Writes a whole new file. Fails if `path` exists; removes what it wrote on error.
pub(crate) fn build_file(
    path: &Path,
    block_size: u32,
    lss: u32,
    virtual_size: u64,
    fixed: bool,
    has_parent: bool,
    items: &[MetaItem],
) -> Result<()> {
    let geo = Geometry::new(virtual_size, block_size, lss, has_parent);
    let bat_len = round_up((geo.entries * 8).max(1), MIB);
    let payload_start = BAT_OFFSET + bat_len;
    let mut bat = vec![0u8; (geo.entries * 8) as usize];
    let mut end = payload_start;
    if fixed {
        for b in 0..geo.payload_blocks {
            let i = geo.payload_index(b) as usize;
            put_u64(
                &mut bat,
                i * 8,
                bat_entry(PAYLOAD_FULLY_PRESENT, payload_start + b * geo.block_size),
            );
        }
        end = payload_start + geo.payload_blocks * geo.block_size;
    }
    let meta = metadata::serialize(path, items, METADATA_LENGTH)?;
    let mut ident = vec![0u8; 8 + 512];
    ident[..8].copy_from_slice(SIG_FILE);
    for (k, u) in "cosnap".encode_utf16().enumerate() {
        put_u16(&mut ident, 8 + 2 * k, u);
    }
    let mut h = Header {
        seq: 1,
        file_write_guid: Uuid::new_v4(),
        data_write_guid: Uuid::new_v4(),
        log_guid: Uuid::nil(),
        log_version: 0,
        version: 1,
        log_length: LOG_LENGTH as u32,
        log_offset: LOG_OFFSET,
    };
    let regions = region::serialize(&[
        RegionEntry {
            guid: REGION_BAT,
            offset: BAT_OFFSET,
            length: bat_len as u32,
            required: true,
        },
        RegionEntry {
            guid: REGION_METADATA,
            offset: METADATA_OFFSET,
            length: METADATA_LENGTH as u32,
            required: true,
        },
    ]);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    let result = (|| -> std::io::Result<()> {
        file.set_len(end)?;
        file.write_all_at(&ident, 0)?;
        file.write_all_at(&h.serialize(), HEADER_OFFSETS[0])?;
        h.seq = 2;
        file.write_all_at(&h.serialize(), HEADER_OFFSETS[1])?;
        file.write_all_at(&regions, REGION_TABLE_OFFSETS[0])?;
        file.write_all_at(&regions, REGION_TABLE_OFFSETS[1])?;
        file.write_all_at(&meta, METADATA_OFFSET)?;
        // Only the non-zero part of the BAT needs writing: the file is sparse.
        if fixed {
            file.write_all_at(&bat, BAT_OFFSET)?;
        }
        file.sync_all()
    })();
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(DiskError::io(path, e));
    }
    Ok(())
}

/// Creates a dynamic or fixed VHDX (see [`CreateOptions`]).
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    validate_options(path, opts)?;
    let items = vec![
        MetaItem::new(
            META_FILE_PARAMETERS,
            false,
            metadata::file_parameters(opts.block_size, opts.fixed, false),
        ),
        MetaItem::new(
            META_VIRTUAL_DISK_SIZE,
            true,
            opts.virtual_size.to_le_bytes().to_vec(),
        ),
        MetaItem::new(
            META_VIRTUAL_DISK_ID,
            true,
            Uuid::new_v4().to_bytes_le().to_vec(),
        ),
        MetaItem::new(
            META_LOGICAL_SECTOR_SIZE,
            true,
            u32_item(opts.logical_sector_size),
        ),
        MetaItem::new(
            META_PHYSICAL_SECTOR_SIZE,
            true,
            u32_item(opts.physical_sector_size),
        ),
    ];
    build_file(
        path,
        opts.block_size,
        opts.logical_sector_size,
        opts.virtual_size,
        opts.fixed,
        false,
        &items,
    )
}

/// `to` relative to directory `from` (both absolute, canonical).
pub(crate) fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// The locator entries that name `parent` (canonical) from a child at `child`.
pub(crate) fn locator_for(child: &Path, parent_canon: &Path, linkage: &Uuid) -> Result<Locator> {
    let child_dir = match child.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&child_dir).map_err(|e| DiskError::io(&child_dir, e))?;
    let rel = relative_path(&dir, parent_canon);
    let to_win = |p: &Path| p.to_string_lossy().replace('/', "\\");
    Ok(Locator {
        locator_type: LOCATOR_TYPE_VHDX,
        entries: vec![
            ("parent_linkage".into(), metadata::linkage_string(linkage)),
            ("relative_path".into(), to_win(&rel)),
            (
                "absolute_win32_path".into(),
                format!("\\\\?\\Z:{}", to_win(parent_canon)),
            ),
        ],
    })
}

/// Creates a differencing child of `parent` at `child`: same block size, every
/// IsVirtualDisk metadata item copied from the parent (size, sector sizes, disk id and any
/// others), `parent_linkage` = the parent's DataWriteGuid.
pub fn create_child(parent: &Path, child: &Path) -> Result<()> {
    let p = VhdxImage::open(parent, false)?;
    let canon = std::fs::canonicalize(parent).map_err(|e| DiskError::io(parent, e))?;
    let loc = locator_for(child, &canon, &p.header.data_write_guid)?;
    let mut items = vec![MetaItem::new(
        META_FILE_PARAMETERS,
        false,
        metadata::file_parameters(p.meta.block_size, false, true),
    )];
    items.extend(p.meta.items.iter().filter(|i| i.is_virtual_disk()).cloned());
    items.push(MetaItem::new(META_PARENT_LOCATOR, false, loc.serialize()));
    build_file(
        child,
        p.meta.block_size,
        p.meta.logical_sector_size,
        p.meta.virtual_size,
        false,
        true,
        &items,
    )
}
