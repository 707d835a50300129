//! Forgetting a qcow2 image's persistent dirty bitmaps, so that a caller that has decided to
//! give up the image's change tracking can write it: cosnap does not update bitmaps, and a
//! bitmap that misses writes would make a differential export silently incomplete.
//!
//! The bitmaps extension is taken out of the header and the consistent-bitmaps autoclear
//! bit cleared in one write of the header area (as `set_backing` does), then the bitmap
//! directory, tables and data clusters, now referenced by nothing, are freed as leaks. A
//! crash in between leaves leaked clusters only, which the next call (or any leak repair)
//! frees; the image is never left with a bitmap that lies.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{EXT_BITMAPS, EXT_END, be32, be64, open_with_header, repair_leaks};
use crate::error::{DiskError, Result};

/// Autoclear bit 0: the bitmaps extension is consistent with the image.
const AUTOCLEAR_BITMAPS: u64 = 1;

/// Removes every persistent dirty bitmap of the qcow2 image at `path` and frees their
/// clusters. Returns how many bitmaps the header listed (0: nothing was changed except,
/// perhaps, leaks a crashed earlier call left behind).
pub fn forget_bitmaps(path: &Path) -> Result<u32> {
    let (file, file_len, hdr) = open_with_header(path, true)?;
    let listed = hdr.bitmaps.map_or(0, |b| b.0);
    if hdr.version < 3 || (hdr.bitmaps.is_none() && hdr.autoclear & AUTOCLEAR_BITMAPS == 0) {
        repair_leaks(path)?;
        return Ok(0);
    }

    let first_cluster_len = hdr.cluster_size().min(file_len) as usize;
    let mut c0 = vec![0u8; first_cluster_len];
    file.read_exact_at(&mut c0, 0)
        .map_err(|e| DiskError::io(path, e))?;
    let area_end = drop_bitmaps_extension(&mut c0, hdr.header_length as usize);
    c0[88..96].copy_from_slice(&(hdr.autoclear & !AUTOCLEAR_BITMAPS).to_be_bytes());

    file.write_all_at(&c0[..area_end], 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| DiskError::io(path, e))?;

    repair_leaks(path)?;
    Ok(listed)
}

/// Rewrites the header extensions in `c0` (already validated by `read_header`) without the
/// bitmaps extension, zero-filling what it occupied. Returns the end of the rewritten area.
fn drop_bitmaps_extension(c0: &mut [u8], start: usize) -> usize {
    let backing_offset = be64(c0, 8) as usize;
    let limit = if backing_offset != 0 {
        backing_offset.min(c0.len())
    } else {
        c0.len()
    };

    let mut kept = Vec::new();
    let mut pos = start;
    while pos + 8 <= limit {
        let ty = be32(c0, pos);
        if ty == EXT_END {
            break;
        }
        let next = pos + 8 + (be32(c0, pos + 4) as usize).div_ceil(8) * 8;
        if ty != EXT_BITMAPS {
            kept.extend_from_slice(&c0[pos..next.min(limit)]);
        }
        pos = next;
    }

    // The end marker follows the kept extensions; everything up to the old end marker's
    // end is rewritten (zeros where the bitmaps extension was).
    let area_end = (pos + 8).min(limit);
    kept.resize(area_end - start, 0);
    c0[start..area_end].copy_from_slice(&kept);
    area_end
}

#[cfg(test)]
mod tests {
    use super::drop_bitmaps_extension;

    fn ext(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut b = ty.to_be_bytes().to_vec();
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(8) * 8, 0);
        b
    }

    #[test]
    fn the_bitmaps_extension_alone_is_removed_and_its_bytes_zeroed() {
        let mut c0 = vec![0u8; 104];
        c0.extend(ext(0xE279_2ACA, b"qcow2"));
        c0.extend(ext(super::EXT_BITMAPS, &[7u8; 24]));
        c0.extend(ext(0x1234_5678, b"keep me"));
        c0.extend([0u8; 8]);
        let old_len = c0.len();
        c0.resize(512, 0);

        let end = drop_bitmaps_extension(&mut c0, 104);

        assert_eq!(end, old_len);
        let mut want = vec![0u8; 104];
        want.extend(ext(0xE279_2ACA, b"qcow2"));
        want.extend(ext(0x1234_5678, b"keep me"));
        want.resize(512, 0);
        assert_eq!(c0, want);
    }
}
