//! Creating qcow2 v3 images (optionally as overlays) and rewriting the backing file an
//! image records (rebase): both write only the header cluster.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    EXT_BACKING_FORMAT, EXT_END, Header, MAGIC, MAX_L1_BYTES, be32, be64, open_with_header,
};
use crate::error::{DiskError, Result};
use crate::image::Format;

/// Options for a new qcow2 image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// log2 of the cluster size (see [`super::DEFAULT_CLUSTER_BITS`]).
    pub cluster_bits: u32,
    /// Backing file name as recorded (relative to the new image's directory, or absolute)
    /// and its format.
    pub backing: Option<(String, Format)>,
}

/// Builds header cluster bytes (header, extensions, backing name) for `hdr`-like fields.
fn header_bytes(
    h: &Header,
    backing: Option<&(String, Format)>,
    extra_ext: &[(u32, Vec<u8>)],
) -> std::result::Result<Vec<u8>, String> {
    let header_length = if h.version >= 3 {
        h.header_length.max(104)
    } else {
        72
    };
    let mut b = vec![0u8; header_length as usize];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..8].copy_from_slice(&h.version.to_be_bytes());
    b[20..24].copy_from_slice(&h.cluster_bits.to_be_bytes());
    b[24..32].copy_from_slice(&h.size.to_be_bytes());
    b[36..40].copy_from_slice(&h.l1_size.to_be_bytes());
    b[40..48].copy_from_slice(&h.l1_table_offset.to_be_bytes());
    b[48..56].copy_from_slice(&h.refcount_table_offset.to_be_bytes());
    b[56..60].copy_from_slice(&h.refcount_table_clusters.to_be_bytes());
    b[60..64].copy_from_slice(&h.nb_snapshots.to_be_bytes());
    b[64..72].copy_from_slice(&h.snapshots_offset.to_be_bytes());
    if h.version >= 3 {
        b[72..80].copy_from_slice(&h.incompatible.to_be_bytes());
        b[80..88].copy_from_slice(&h.compatible.to_be_bytes());
        b[88..96].copy_from_slice(&h.autoclear.to_be_bytes());
        b[96..100].copy_from_slice(&h.refcount_order.to_be_bytes());
        b[100..104].copy_from_slice(&header_length.to_be_bytes());
    }
    let push_ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(8) * 8, 0);
    };
    if let Some((_, fmt)) = backing {
        push_ext(&mut b, EXT_BACKING_FORMAT, fmt.name().as_bytes());
    }
    for (ty, data) in extra_ext {
        push_ext(&mut b, *ty, data);
    }
    push_ext(&mut b, EXT_END, &[]);
    if let Some((name, _)) = backing {
        if name.len() > 1023 {
            return Err(format!(
                "backing file name of {} bytes is too long",
                name.len()
            ));
        }
        let off = b.len() as u64;
        b[8..16].copy_from_slice(&off.to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
    }
    if b.len() as u64 > h.cluster_size() {
        return Err("header, extensions and backing name do not fit in the first cluster".into());
    }
    Ok(b)
}

/// Creates a new qcow2 v3 image (optionally an overlay). Fails if `path` exists.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    let cb = opts.cluster_bits;
    if !(9..=21).contains(&cb) {
        return Err(DiskError::invalid(
            path,
            format!("cluster_bits {cb} outside 9..=21"),
        ));
    }
    let cs = 1u64 << cb;
    let size = opts.virtual_size;
    if !size.is_multiple_of(512) {
        return Err(DiskError::invalid(
            path,
            format!("virtual size {size} is not a multiple of 512"),
        ));
    }
    let l1_size = size.div_ceil(cs * (cs / 8));
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(DiskError::invalid(
            path,
            format!("virtual size {size} is too large for qcow2"),
        ));
    }
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let epb = cs * 8 / 16;
    // Fixed point: header + reftable + refblocks + L1 must be covered by the refblocks.
    let (mut rt_clusters, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt_clusters + rb + l1_clusters;
        let need_rb = total.div_ceil(epb);
        let need_rt = need_rb.div_ceil(cs / 8);
        if need_rb <= rb && need_rt <= rt_clusters {
            break;
        }
        rb = rb.max(need_rb);
        rt_clusters = rt_clusters.max(need_rt);
    }
    let rt_off = cs;
    let rb_off = rt_off + rt_clusters * cs;
    let l1_off = rb_off + rb * cs;
    let total_clusters = 1 + rt_clusters + rb + l1_clusters;
    let hdr = Header {
        version: 3,
        cluster_bits: cb,
        size,
        l1_size: l1_size as u32,
        l1_table_offset: l1_off,
        refcount_table_offset: rt_off,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: 0,
        compatible: 0,
        autoclear: 0,
        refcount_order: 4,
        header_length: 112,
        backing_file: None,
        backing_format: None,
        bitmaps: None,
        other_extensions: Vec::new(),
    };
    let head =
        header_bytes(&hdr, opts.backing.as_ref(), &[]).map_err(|d| DiskError::invalid(path, d))?;
    let mut meta = vec![0u8; (total_clusters * cs) as usize];
    meta[..head.len()].copy_from_slice(&head);
    for i in 0..rb {
        let o = (rt_off + i * 8) as usize;
        meta[o..o + 8].copy_from_slice(&(rb_off + i * cs).to_be_bytes());
    }
    for c in 0..total_clusters {
        let o = (rb_off + c * 2) as usize;
        meta[o..o + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    let written = file.write_all_at(&meta, 0).and_then(|_| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(DiskError::io(path, e));
    }
    Ok(())
}

/// Rewrites the backing file recorded in `path` (or removes it) with one write of the
/// header area in the first cluster, then fsync. The header area is far below one page,
/// so the write is not torn in practice (qemu relies on the same).
pub fn set_backing(path: &Path, backing: Option<(String, Format)>) -> Result<()> {
    let (file, _, hdr) = open_with_header(path, true)?;
    // Old used length of the header area, to clear stale bytes.
    let mut old_len = hdr.header_length as u64 + 8;
    for (_, d) in &hdr.other_extensions {
        old_len += 8 + (d.len() as u64).div_ceil(8) * 8;
    }
    if let Some(f) = &hdr.backing_format {
        old_len += 8 + (f.len() as u64).div_ceil(8) * 8;
    }
    if let Some(b) = &hdr.backing_file {
        old_len = old_len.max(
            hdr_backing_end(&file, path)?
                .unwrap_or(0)
                .max(old_len + b.len() as u64),
        );
    }
    let mut bytes = header_bytes(&hdr, backing.as_ref(), &hdr.other_extensions)
        .map_err(|d| DiskError::invalid(path, d))?;
    if (bytes.len() as u64) < old_len {
        bytes.resize(old_len.min(hdr.cluster_size()) as usize, 0);
    }
    file.write_all_at(&bytes, 0)
        .map_err(|e| DiskError::io(path, e))?;
    file.sync_all().map_err(|e| DiskError::io(path, e))
}

fn hdr_backing_end(file: &File, path: &Path) -> Result<Option<u64>> {
    let mut b = [0u8; 20];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| DiskError::io(path, e))?;
    let off = be64(&b, 8);
    let size = be32(&b, 16) as u64;
    Ok(if off == 0 { None } else { Some(off + size) })
}
