//! Structural check and leak repair of one qcow2 file, like `qemu-img check` and
//! `qemu-img check -r leaks`: recomputes reference counts from the metadata and compares.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use super::{
    CACHE_BYTES, MAX_L1_BYTES, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, Qcow2Image, State,
    be16, be32, be64, get_entry, open_with_header,
};
use crate::error::{DiskError, Result};
use crate::report::CheckReport;
/// Structural check like `qemu-img check`: recomputes every cluster's reference count
/// from the L1/L2 tables, the refcount structures, the snapshot table and the bitmap
/// directory, then compares with the stored refcounts. Stored < computed is corruption,
/// stored > computed a leak (qemu-img's rule).
pub fn check(path: &Path) -> Result<CheckReport> {
    // One file only: a missing or hostile backing file does not stop the check.
    let img = open_standalone(path)?;
    img.check_refcounts()
}

/// Opens one qcow2 file read-only without its backing chain (reads of unallocated
/// clusters return zeros). For structural checks and fuzzing.
pub fn open_standalone(path: &Path) -> Result<Qcow2Image> {
    let (file, file_len, hdr) = open_with_header(path, false)?;
    let cs = hdr.cluster_size();
    let mut l1_bytes = vec![0u8; hdr.l1_size as usize * 8];
    file.read_exact_at(&mut l1_bytes, hdr.l1_table_offset)
        .map_err(|e| DiskError::io(path, e))?;
    let l1 = l1_bytes.chunks_exact(8).map(|c| be64(c, 0)).collect();
    let cap = ((CACHE_BYTES / cs) as usize).max(2);
    Ok(Qcow2Image {
        path: path.to_path_buf(),
        file,
        writable: false,
        ordered: true,
        backing: None,
        state: Mutex::new(State {
            l1,
            l2_cache: Vec::new(),
            refblock_cache: Vec::new(),
            reftable: Vec::new(),
            rt_offset: hdr.refcount_table_offset,
            rt_clusters: hdr.refcount_table_clusters as u64,
            next_free: file_len.div_ceil(cs) * cs,
            file_len,
        }),
        hdr,
        l2_cache_cap: cap,
        refblock_cache_cap: cap,
    })
}

/// A host range referenced by metadata: (what, offset, length).
type HostRef = (&'static str, u64, u64);

/// Repairs leaked clusters (stored refcount higher than the references to it) by lowering
/// their refcounts to what the metadata references, like `qemu-img check -r leaks`.
/// Returns the number of clusters repaired. Refuses to touch an image with corruptions.
///
/// Why: allocation writes the refcount before the L2 entry, so a crash in between leaves
/// leaked (never corrupt) clusters; merges re-run after a crash call this to leave a
/// clean image behind.
pub fn repair_leaks(path: &Path) -> Result<u64> {
    let (report, leaked) = open_standalone(path)?.audit_refcounts()?;
    if !report.corruptions.is_empty() {
        return Err(DiskError::corrupt(
            path,
            format!("not repairing leaks: {}", report.corruptions.join("; ")),
        ));
    }
    if leaked.is_empty() {
        return Ok(0);
    }
    let mut img = open_standalone(path)?;
    img.file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| DiskError::io(path, e))?;
    {
        let mut st = img.lock();
        let cs = img.cluster_size();
        let mut rt = vec![0u8; (img.hdr.refcount_table_clusters as u64 * cs) as usize];
        img.pread_host(&mut rt, img.hdr.refcount_table_offset)?;
        st.reftable = rt
            .chunks_exact(8)
            .map(|c| be64(c, 0) & OFFSET_MASK)
            .collect();
        for &(cluster, want) in &leaked {
            img.set_refcounts(&mut st, cluster, 1, want)?;
        }
    }
    img.file.sync_all().map_err(|e| DiskError::io(path, e))?;
    Ok(leaked.len() as u64)
}

impl Qcow2Image {
    fn check_refcounts(&self) -> Result<CheckReport> {
        Ok(self.audit_refcounts()?.0)
    }

    /// The check report plus every leaked cluster with the refcount its references want.
    fn audit_refcounts(&self) -> Result<(CheckReport, Vec<(u64, u64)>)> {
        let cs = self.cluster_size();
        let file_len = self.lock().file_len;
        let nclusters = file_len.div_ceil(cs);
        if nclusters > (1 << 28) {
            return Err(DiskError::unsupported(
                &self.path,
                "checking images with more than 2^28 clusters",
            ));
        }

        let mut counter = ReferenceCounter::new(nclusters, cs, file_len);
        let copied_flags = self.count_metadata_references(&mut counter)?;
        let reftable = self.read_reftable()?;
        counter.count_refblocks(&reftable);

        let mut report = CheckReport::default();
        report.corruptions.append(&mut counter.corruptions);
        let mut stored = StoredRefcounts::new(self, &reftable);
        let leaked_clusters = compare_refcounts(&counter.refs, &mut stored, cs, &mut report)?;
        check_copied_flags(copied_flags, &mut stored, nclusters, cs, &mut report)?;
        Ok((report, leaked_clusters))
    }

    /// Counts the references of the header, the L1 and refcount tables, the active L2
    /// tables and data clusters, the snapshots and the bitmap directory. Returns the
    /// `OFLAG_COPIED` flags seen on the active tables, to hold against the refcounts later.
    fn count_metadata_references(&self, counter: &mut ReferenceCounter) -> Result<Vec<CopiedFlag>> {
        let cs = self.cluster_size();
        let hdr = &self.hdr;
        counter.add(0, cs, "header");
        counter.add(hdr.l1_table_offset, hdr.l1_size as u64 * 8, "L1 table");
        counter.add(
            hdr.refcount_table_offset,
            hdr.refcount_table_clusters as u64 * cs,
            "refcount table",
        );

        // Active L1/L2 tables; OFLAG_COPIED must agree with refcount 1 (checked later).
        let l1 = self.lock().l1.clone();
        let mut copied_flags = Vec::new();
        self.walk_l1(&l1, &mut |kind, off, len, copied| {
            counter.add(off, len, kind);
            if let Some(copied) = copied {
                copied_flags.push(CopiedFlag {
                    offset: off,
                    copied,
                    kind: kind.to_string(),
                });
            }
        })?;

        // Snapshots: table and their L1 tables (and the L2/data clusters those reference).
        if hdr.nb_snapshots > 0 {
            self.walk_snapshots(
                &mut |kind, off, len| counter.add(off, len, kind),
                &mut |l1| {
                    let mut inner = Vec::new();
                    self.walk_l1(l1, &mut |kind, off, len, _| inner.push((kind, off, len)))?;
                    Ok(inner)
                },
            )?;
        }

        if let Some((nb, dir_size, dir_off)) = hdr.bitmaps {
            self.walk_bitmaps(nb, dir_size, dir_off, &mut |kind, off, len| {
                counter.add(off, len, kind)
            })?;
        }
        Ok(copied_flags)
    }

    /// The refcount table as stored, flag bits masked off.
    fn read_reftable(&self) -> Result<Vec<u64>> {
        let cs = self.cluster_size();
        let mut rt = vec![0u8; (self.hdr.refcount_table_clusters as u64 * cs) as usize];
        self.file
            .read_exact_at(&mut rt, self.hdr.refcount_table_offset)
            .map_err(|e| self.io(e))?;
        Ok(rt
            .chunks_exact(8)
            .map(|c| be64(c, 0) & OFFSET_MASK)
            .collect())
    }

    /// Calls `f(kind, host_offset, len, copied_flag)` for every L2 table and data cluster
    /// referenced from `l1`.
    fn walk_l1(
        &self,
        l1: &[u64],
        f: &mut dyn FnMut(&'static str, u64, u64, Option<bool>),
    ) -> Result<()> {
        let cs = self.cluster_size();
        let cb = self.hdr.cluster_bits as u64;
        let file_len = self.lock().file_len;
        for (i, &l1e) in l1.iter().enumerate() {
            let l2_off = l1e & OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            if !l2_off.is_multiple_of(cs) || l2_off + cs > file_len {
                return Err(self.corrupt(format!(
                    "L1 entry {i} points to L2 table at {l2_off:#x}, which is misaligned or past the end of the file"
                )));
            }
            f("L2 table", l2_off, cs, Some(l1e & OFLAG_COPIED != 0));
            let mut bytes = vec![0u8; cs as usize];
            self.file
                .read_exact_at(&mut bytes, l2_off)
                .map_err(|e| self.io(e))?;
            for c in bytes.chunks_exact(8) {
                let e = be64(c, 0);
                if e & OFLAG_COMPRESSED != 0 {
                    let x = 62 - (cb - 8);
                    let host = e & ((1u64 << x) - 1);
                    let sectors = ((e >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
                    let end = (host & !511) + sectors * 512;
                    f("compressed cluster", host, end - host, None);
                } else {
                    let host = e & OFFSET_MASK;
                    if host != 0 {
                        if !host.is_multiple_of(cs) {
                            return Err(self.corrupt(format!(
                                "data cluster offset {host:#x} is not cluster aligned"
                            )));
                        }
                        f("data cluster", host, cs, Some(e & OFLAG_COPIED != 0));
                    }
                }
            }
        }
        Ok(())
    }

    fn walk_snapshots(
        &self,
        f: &mut dyn FnMut(&'static str, u64, u64),
        l1_refs: &mut dyn FnMut(&[u64]) -> Result<Vec<HostRef>>,
    ) -> Result<()> {
        let file_len = self.lock().file_len;
        let mut pos = self.hdr.snapshots_offset;
        let start = pos;
        for _ in 0..self.hdr.nb_snapshots.min(65536) {
            let mut h = [0u8; 40];
            if pos + 40 > file_len {
                return Err(self.corrupt("snapshot table past the end of the file".into()));
            }
            self.file
                .read_exact_at(&mut h, pos)
                .map_err(|e| self.io(e))?;
            let l1_off = be64(&h, 0);
            let l1_size = be32(&h, 8) as u64;
            let id_len = be16(&h, 12) as u64;
            let name_len = be16(&h, 14) as u64;
            let extra = be32(&h, 36) as u64;
            if l1_size * 8 > MAX_L1_BYTES || l1_off + l1_size * 8 > file_len {
                return Err(self.corrupt(format!("snapshot L1 table at {l1_off:#x} is invalid")));
            }
            f("snapshot L1 table", l1_off, l1_size * 8);
            let mut b = vec![0u8; (l1_size * 8) as usize];
            self.file
                .read_exact_at(&mut b, l1_off)
                .map_err(|e| self.io(e))?;
            let l1: Vec<u64> = b.chunks_exact(8).map(|c| be64(c, 0)).collect();
            for (k, o, l) in l1_refs(&l1)? {
                f(k, o, l);
            }
            pos += (40 + extra + id_len + name_len).div_ceil(8) * 8;
        }
        f("snapshot table", start, pos - start);
        Ok(())
    }

    fn walk_bitmaps(
        &self,
        nb: u32,
        dir_size: u64,
        dir_off: u64,
        f: &mut dyn FnMut(&'static str, u64, u64),
    ) -> Result<()> {
        let cs = self.cluster_size();
        let file_len = self.lock().file_len;
        if dir_size > (64 << 20) || dir_off + dir_size > file_len {
            return Err(self.corrupt("bitmap directory past the end of the file".into()));
        }
        f("bitmap directory", dir_off, dir_size);
        let mut dir = vec![0u8; dir_size as usize];
        self.file
            .read_exact_at(&mut dir, dir_off)
            .map_err(|e| self.io(e))?;
        let mut pos = 0usize;
        for _ in 0..nb {
            if pos + 24 > dir.len() {
                return Err(self.corrupt("bitmap directory entry truncated".into()));
            }
            let table_off = be64(&dir, pos);
            let table_size = be32(&dir, pos + 8) as u64;
            let name_size = be16(&dir, pos + 18) as usize;
            let extra = be32(&dir, pos + 20) as usize;
            if table_size * 8 > (64 << 20) || table_off + table_size * 8 > file_len {
                return Err(self.corrupt(format!("bitmap table at {table_off:#x} is invalid")));
            }
            f("bitmap table", table_off, table_size * 8);
            let mut t = vec![0u8; (table_size * 8) as usize];
            self.file
                .read_exact_at(&mut t, table_off)
                .map_err(|e| self.io(e))?;
            for c in t.chunks_exact(8) {
                let o = be64(c, 0) & OFFSET_MASK;
                if o != 0 {
                    f("bitmap data", o, cs);
                }
            }
            pos += (24 + extra + name_size).div_ceil(8) * 8;
        }
        Ok(())
    }
}

/// The references the metadata makes to each host cluster, counted while walking it,
/// and the corruptions met on the way (references outside the file, misaligned blocks).
struct ReferenceCounter {
    refs: Vec<u16>,
    cluster_size: u64,
    file_len: u64,
    corruptions: Vec<String>,
}

impl ReferenceCounter {
    fn new(nclusters: u64, cluster_size: u64, file_len: u64) -> ReferenceCounter {
        ReferenceCounter {
            refs: vec![0u16; nclusters as usize],
            cluster_size,
            file_len,
            corruptions: Vec::new(),
        }
    }

    /// Counts one reference to every cluster that `[off, off + len)` touches.
    fn add(&mut self, off: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let cs = self.cluster_size;
        let first = off / cs;
        let last = (off + len - 1) / cs;
        for c in first..=last {
            match self.refs.get_mut(c as usize) {
                Some(r) => *r = r.saturating_add(1),
                None => self.corruptions.push(format!(
                    "{what} at {off:#x} is outside the image file (length {:#x})",
                    self.file_len
                )),
            }
        }
    }

    /// Counts the refcount blocks the refcount table names.
    fn count_refblocks(&mut self, reftable: &[u64]) {
        let cs = self.cluster_size;
        for &rb in reftable {
            if rb == 0 {
                continue;
            }
            if !rb.is_multiple_of(cs) {
                self.corruptions
                    .push(format!("refcount block at {rb:#x} is not cluster aligned"));
            } else {
                self.add(rb, cs, "refcount block");
            }
        }
    }
}

/// An `OFLAG_COPIED` flag seen on an active table entry: it must be set exactly when the
/// cluster's refcount is 1.
struct CopiedFlag {
    offset: u64,
    copied: bool,
    kind: String,
}

/// Reads stored refcounts cluster by cluster, keeping the last refcount block loaded.
struct StoredRefcounts<'a> {
    img: &'a Qcow2Image,
    reftable: &'a [u64],
    block: Vec<u8>,
    loaded: u64,
}

impl<'a> StoredRefcounts<'a> {
    fn new(img: &'a Qcow2Image, reftable: &'a [u64]) -> StoredRefcounts<'a> {
        StoredRefcounts {
            img,
            reftable,
            block: vec![0u8; img.cluster_size() as usize],
            loaded: u64::MAX,
        }
    }

    /// The stored refcount of host cluster `c` (0 where no valid refcount block covers it).
    fn get(&mut self, c: u64) -> Result<u64> {
        let cs = self.img.cluster_size();
        let epb = self.img.refblock_entries();
        let Some(&rb) = self.reftable.get((c / epb) as usize) else {
            return Ok(0);
        };
        if rb == 0 || !rb.is_multiple_of(cs) {
            return Ok(0);
        }
        if self.loaded != rb {
            self.img.pread_host(&mut self.block, rb)?;
            self.loaded = rb;
        }
        Ok(get_entry(&self.block, c % epb, self.img.refcount_bits()))
    }
}

/// Holds every cluster's stored refcount against its counted references: higher is a
/// leak (the first 100 are listed), lower a corruption. Returns the leaked clusters with
/// the refcount their references want.
fn compare_refcounts(
    refs: &[u16],
    stored: &mut StoredRefcounts,
    cs: u64,
    report: &mut CheckReport,
) -> Result<Vec<(u64, u64)>> {
    let mut leaked_clusters = Vec::new();
    for (c, &want) in (0u64..).zip(refs) {
        let want = want as u64;
        let have = stored.get(c)?;
        if have == want {
            continue;
        }
        let line = format!(
            "cluster {c} (offset {:#x}) refcount={have} reference={want}",
            c * cs
        );
        if have > want {
            leaked_clusters.push((c, want));
            if report.leaks.len() < 100 {
                report.leaks.push(line);
            }
        } else {
            report.corruptions.push(line);
        }
    }

    let leaks = leaked_clusters.len() as u64;
    if leaks > report.leaks.len() as u64 {
        report
            .leaks
            .push(format!("… {leaks} leaked clusters in all"));
    }
    Ok(leaked_clusters)
}

/// Every `OFLAG_COPIED` flag must match a refcount of exactly 1.
fn check_copied_flags(
    copied_flags: Vec<CopiedFlag>,
    stored: &mut StoredRefcounts,
    nclusters: u64,
    cs: u64,
    report: &mut CheckReport,
) -> Result<()> {
    for flag in copied_flags {
        let c = flag.offset / cs;
        if c >= nclusters {
            continue;
        }
        let have = stored.get(c)?;
        if flag.copied != (have == 1) {
            report.corruptions.push(format!(
                "{} at {:#x}: OFLAG_COPIED is {} but refcount is {have}",
                flag.kind,
                flag.offset,
                if flag.copied { "set" } else { "clear" }
            ));
        }
    }
    Ok(())
}
