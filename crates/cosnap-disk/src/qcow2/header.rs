//! The qcow2 header: the fixed fields decoded into a struct and validated, then the header
//! extensions and the backing file name from the first cluster; and the header flags that
//! refuse a writable open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{
    EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE, EXT_END, MAGIC, MAX_L1_BYTES,
    MAX_REFTABLE_BYTES, be32, be64,
};
use crate::error::{DiskError, Result};

/// The parsed, validated header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table spans.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (version 3).
    pub incompatible: u64,
    /// Compatible feature bits (version 3).
    pub compatible: u64,
    /// Autoclear feature bits (version 3; bit 0 = consistent bitmaps).
    pub autoclear: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the fixed header (72 for version 2).
    pub header_length: u32,
    /// The backing file name as recorded, if any.
    pub backing_file: Option<String>,
    /// The backing file format extension, if any.
    pub backing_format: Option<String>,
    /// Bitmaps extension: (nb_bitmaps, directory_size, directory_offset).
    pub bitmaps: Option<(u32, u64, u64)>,
    /// Extensions other than backing format and end marker, kept verbatim on rebase.
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Opens the qcow2 file `path` (read-write when `writable`) and reads and validates its
/// header: the file, its length and the header.
pub(crate) fn open_with_header(path: &Path, writable: bool) -> Result<(File, u64, Header)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DiskError::io(path, e))?.len();
    let header = read_header(path, &file, file_len)?;
    Ok((file, file_len, header))
}

/// Reads and validates the header of the qcow2 file `path` of length `file_len`.
pub fn read_header(path: &Path, file: &File, file_len: u64) -> Result<Header> {
    if file_len < 72 {
        return Err(DiskError::corrupt(
            path,
            format!("file is {file_len} bytes, too short for a qcow2 header"),
        ));
    }
    let mut h = [0u8; FIXED_HEADER_LEN];
    let n = (file_len as usize).min(FIXED_HEADER_LEN);
    file.read_exact_at(&mut h[..n], 0)
        .map_err(|e| DiskError::io(path, e))?;

    let fixed = FixedHeader::decode(&h);
    fixed.validate(path, file_len, &h)?;

    let cs = fixed.cluster_size();
    let (c0, ext_limit) =
        read_first_cluster(path, file, cs.min(file_len), fixed.backing_file_offset)?;
    let extensions = read_extensions(path, &c0, fixed.header_length as usize, ext_limit)?;
    let backing_file = read_backing_name(
        path,
        &c0,
        fixed.backing_file_offset,
        fixed.backing_file_size,
    )?;
    Ok(fixed.into_header(backing_file, extensions))
}

/// Bytes of the fixed header fields cosnap reads (version 3 with the compression type).
const FIXED_HEADER_LEN: usize = 112;

/// The fixed fields at the start of the first cluster, decoded as they are stored;
/// [`FixedHeader::validate`] then refuses what cosnap must not open.
struct FixedHeader {
    magic: [u8; 4],
    version: u32,
    backing_file_offset: u64,
    backing_file_size: u32,
    cluster_bits: u32,
    size: u64,
    crypt_method: u32,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    nb_snapshots: u32,
    snapshots_offset: u64,
    incompatible: u64,
    compatible: u64,
    autoclear: u64,
    refcount_order: u32,
    header_length: u32,
}

impl FixedHeader {
    /// Decodes the fields at their on-disk offsets, without judging them. Version 2
    /// headers end at byte 72: their later fields take version 2's implied values.
    fn decode(h: &[u8; FIXED_HEADER_LEN]) -> FixedHeader {
        let version = be32(h, 4);
        let v3 = version >= 3;
        FixedHeader {
            magic: [h[0], h[1], h[2], h[3]],
            version,
            backing_file_offset: be64(h, 8),
            backing_file_size: be32(h, 16),
            cluster_bits: be32(h, 20),
            size: be64(h, 24),
            crypt_method: be32(h, 32),
            l1_size: be32(h, 36),
            l1_table_offset: be64(h, 40),
            refcount_table_offset: be64(h, 48),
            refcount_table_clusters: be32(h, 56),
            nb_snapshots: be32(h, 60),
            snapshots_offset: be64(h, 64),
            incompatible: if v3 { be64(h, 72) } else { 0 },
            compatible: if v3 { be64(h, 80) } else { 0 },
            autoclear: if v3 { be64(h, 88) } else { 0 },
            refcount_order: if v3 { be32(h, 96) } else { 4 },
            header_length: if v3 { be32(h, 100) } else { 72 },
        }
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Refuses, in this order, what is not a qcow2 header cosnap can read: bad magic,
    /// other versions, absurd cluster sizes, encryption, a truncated or oversized version 3
    /// header, unknown refcount widths and incompatible features, then L1 and refcount
    /// tables that do not fit the file (`h` is the raw header, for the compression type).
    fn validate(&self, path: &Path, file_len: u64, h: &[u8]) -> Result<()> {
        let corrupt = |d: String| DiskError::corrupt(path, d);
        if self.magic != MAGIC {
            return Err(corrupt("not a qcow2 file (bad magic)".into()));
        }
        let version = self.version;
        if version != 2 && version != 3 {
            return Err(DiskError::unsupported(
                path,
                format!("qcow2 version {version}"),
            ));
        }
        let cluster_bits = self.cluster_bits;
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside 9..=21"
            )));
        }
        if self.crypt_method != 0 {
            return Err(DiskError::unsupported(path, "encrypted qcow2 images"));
        }
        self.validate_lengths(path, file_len)?;

        let cs = self.cluster_size();
        check_incompatible_features(path, self.incompatible, self.header_length, h)?;
        check_l1_table(
            path,
            cs,
            file_len,
            self.size,
            self.l1_size,
            self.l1_table_offset,
        )?;
        check_refcount_table(
            path,
            cs,
            file_len,
            self.refcount_table_offset,
            self.refcount_table_clusters,
        )
    }

    /// A version 3 header must be in the file and fit its first cluster; refcounts are at
    /// most 64 bits wide.
    fn validate_lengths(&self, path: &Path, file_len: u64) -> Result<()> {
        let corrupt = |d: String| DiskError::corrupt(path, d);
        if self.version >= 3 && file_len < 104 {
            return Err(corrupt("truncated version 3 header".into()));
        }
        let header_length = self.header_length;
        if self.version >= 3 && (header_length < 104 || header_length as u64 > self.cluster_size())
        {
            return Err(corrupt(format!(
                "header_length {header_length} outside 104..=cluster size"
            )));
        }
        let refcount_order = self.refcount_order;
        if refcount_order > 6 {
            return Err(corrupt(format!("refcount_order {refcount_order} > 6")));
        }
        Ok(())
    }

    /// The public header: these fields plus what the first cluster's extensions and
    /// backing name say.
    fn into_header(self, backing_file: Option<String>, extensions: Extensions) -> Header {
        Header {
            version: self.version,
            cluster_bits: self.cluster_bits,
            size: self.size,
            l1_size: self.l1_size,
            l1_table_offset: self.l1_table_offset,
            refcount_table_offset: self.refcount_table_offset,
            refcount_table_clusters: self.refcount_table_clusters,
            nb_snapshots: self.nb_snapshots,
            snapshots_offset: self.snapshots_offset,
            incompatible: self.incompatible,
            compatible: self.compatible,
            autoclear: self.autoclear,
            refcount_order: self.refcount_order,
            header_length: self.header_length,
            backing_file,
            backing_format: extensions.backing_format,
            bitmaps: extensions.bitmaps,
            other_extensions: extensions.others,
        }
    }
}

/// The first cluster (`len` bytes) and where its header extensions must end: header
/// extensions live between the header and the backing name.
fn read_first_cluster(
    path: &Path,
    file: &File,
    len: u64,
    backing_file_offset: u64,
) -> Result<(Vec<u8>, usize)> {
    let first_cluster_len = len as usize;
    let mut c0 = vec![0u8; first_cluster_len];
    file.read_exact_at(&mut c0, 0)
        .map_err(|e| DiskError::io(path, e))?;
    let ext_limit = if backing_file_offset != 0 {
        (backing_file_offset as usize).min(first_cluster_len)
    } else {
        first_cluster_len
    };
    Ok((c0, ext_limit))
}

/// Refuses incompatible features cosnap does not implement (`h` is the raw header).
fn check_incompatible_features(
    path: &Path,
    incompatible: u64,
    header_length: u32,
    h: &[u8],
) -> Result<()> {
    if incompatible & 0b100 != 0 {
        return Err(DiskError::unsupported(path, "qcow2 external data files"));
    }
    if incompatible & 0b1000 != 0 && (header_length < 105 || h[104] != 0) {
        return Err(DiskError::unsupported(
            path,
            "qcow2 compression types other than zlib",
        ));
    }
    if incompatible & 0b1_0000 != 0 {
        return Err(DiskError::unsupported(path, "qcow2 extended L2 entries"));
    }
    if incompatible & !0b1_1111 != 0 {
        return Err(DiskError::unsupported(
            path,
            format!(
                "unknown incompatible qcow2 features {:#x}",
                incompatible & !0b1_1111
            ),
        ));
    }
    Ok(())
}

/// The L1 table must cover the virtual size, stay under qemu's 32 MiB and lie in the file.
fn check_l1_table(
    path: &Path,
    cs: u64,
    file_len: u64,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
) -> Result<()> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    if size > (1u64 << 56) {
        return Err(corrupt(format!("virtual size {size} is absurd")));
    }
    let l2_bytes_covered = cs * (cs / 8);
    let needed_l1 = size.div_ceil(l2_bytes_covered);
    if (l1_size as u64) * 8 > MAX_L1_BYTES {
        return Err(corrupt(format!(
            "L1 table of {l1_size} entries exceeds 32 MiB"
        )));
    }
    if (l1_size as u64) < needed_l1 {
        return Err(corrupt(format!(
            "L1 table of {l1_size} entries is too small for virtual size {size}"
        )));
    }
    if l1_size > 0 {
        if !l1_table_offset.is_multiple_of(cs) || l1_table_offset == 0 {
            return Err(corrupt(format!(
                "L1 table offset {l1_table_offset:#x} is not cluster aligned"
            )));
        }
        if l1_table_offset.saturating_add(l1_size as u64 * 8) > file_len {
            return Err(corrupt(format!(
                "L1 table at {l1_table_offset:#x} ({l1_size} entries) is past the end of the file"
            )));
        }
    }
    Ok(())
}

/// The refcount table must be cluster aligned, of sane size and inside the file.
fn check_refcount_table(
    path: &Path,
    cs: u64,
    file_len: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
) -> Result<()> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    if !refcount_table_offset.is_multiple_of(cs) || refcount_table_offset == 0 {
        return Err(corrupt(format!(
            "refcount table offset {refcount_table_offset:#x} is not cluster aligned"
        )));
    }
    let rt_bytes = refcount_table_clusters as u64 * cs;
    if rt_bytes > MAX_REFTABLE_BYTES || refcount_table_clusters == 0 {
        return Err(corrupt(format!(
            "refcount table of {refcount_table_clusters} clusters is absurd"
        )));
    }
    if refcount_table_offset.saturating_add(rt_bytes) > file_len {
        return Err(corrupt(format!(
            "refcount table at {refcount_table_offset:#x} is past the end of the file"
        )));
    }
    Ok(())
}

/// Header extensions found in `c0[start..ext_limit]`.
struct Extensions {
    backing_format: Option<String>,
    /// The bitmaps extension: (nb_bitmaps, directory_size, directory_offset).
    bitmaps: Option<(u32, u64, u64)>,
    /// The others (and the bitmaps extension again), kept verbatim.
    others: Vec<(u32, Vec<u8>)>,
}

fn read_extensions(path: &Path, c0: &[u8], start: usize, ext_limit: usize) -> Result<Extensions> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    let mut pos = start;
    let mut backing_format = None;
    let mut bitmaps = None;
    let mut other_extensions = Vec::new();
    while pos + 8 <= ext_limit {
        let ty = be32(c0, pos);
        let len = be32(c0, pos + 4) as usize;
        if ty == EXT_END {
            break;
        }
        let data_start = pos + 8;
        if data_start + len > ext_limit {
            return Err(corrupt(format!(
                "header extension {ty:#x} runs past the first cluster"
            )));
        }
        let data = &c0[data_start..data_start + len];
        match ty {
            EXT_BACKING_FORMAT => {
                backing_format = Some(String::from_utf8_lossy(data).into_owned());
            }
            EXT_BITMAPS => {
                if len < 24 {
                    return Err(corrupt("bitmaps extension shorter than 24 bytes".into()));
                }
                bitmaps = Some((be32(data, 0), be64(data, 8), be64(data, 16)));
                other_extensions.push((ty, data.to_vec()));
            }
            EXT_DATA_FILE => return Err(DiskError::unsupported(path, "qcow2 external data files")),
            EXT_CRYPTO => return Err(DiskError::unsupported(path, "encrypted qcow2 images")),
            _ => other_extensions.push((ty, data.to_vec())),
        }
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok(Extensions {
        backing_format,
        bitmaps,
        others: other_extensions,
    })
}

/// The backing file name stored at `offset` in the first cluster `c0`, if any.
fn read_backing_name(path: &Path, c0: &[u8], offset: u64, size: u32) -> Result<Option<String>> {
    let corrupt = |d: String| DiskError::corrupt(path, d);
    Ok(if offset != 0 && size != 0 {
        if size > 1023 {
            return Err(corrupt(format!("backing file name of {size} bytes")));
        }
        let end = offset.saturating_add(size as u64);
        if end > c0.len() as u64 {
            return Err(corrupt(
                "backing file name is outside the first cluster".into(),
            ));
        }
        let name = &c0[offset as usize..end as usize];
        Some(
            String::from_utf8(name.to_vec())
                .map_err(|_| corrupt("backing file name is not UTF-8".into()))?,
        )
    } else {
        None
    })
}

/// Refuses a writable open of an image whose header says writing would lose or corrupt
/// something (see the module decisions in `qcow2`).
pub(super) fn refuse_writable(path: &Path, hdr: &Header) -> Result<()> {
    if hdr.version < 3 {
        return Err(DiskError::unsupported(
            path,
            "writing qcow2 version 2 images (convert to v3)",
        ));
    }
    if hdr.autoclear & 1 != 0 || (hdr.autoclear != 0 && hdr.bitmaps.is_some()) {
        let n = hdr.bitmaps.map(|b| b.0).unwrap_or(0);
        return Err(DiskError::unsupported(
            path,
            format!(
                "image has {n} persistent dirty bitmap(s); cosnap does not update bitmaps, so \
                 writing would make them inconsistent — refusing to open writable \
                 (remove them with `qemu-img bitmap --remove`, or write with qemu)"
            ),
        ));
    }
    if hdr.autoclear != 0 {
        return Err(DiskError::unsupported(
            path,
            format!(
                "unknown autoclear features {:#x}; refusing to open writable",
                hdr.autoclear
            ),
        ));
    }
    if hdr.incompatible & 1 != 0 {
        return Err(DiskError::unsupported(
            path,
            "image is marked dirty (lazy refcounts); repair it with `qemu-img check -r all` first",
        ));
    }
    if hdr.incompatible & 2 != 0 {
        return Err(DiskError::corrupt(
            path,
            "image is marked corrupt; refusing to open writable",
        ));
    }
    if hdr.nb_snapshots != 0 {
        return Err(DiskError::unsupported(
            path,
            "writing qcow2 images with internal snapshots",
        ));
    }
    Ok(())
}
