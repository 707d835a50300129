//! Structural check and leak repair of one qcow2 file, like `qemu-img check` and
//! `qemu-img check -r leaks`: recomputes reference counts from the metadata and compares.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use super::{
    CACHE_BYTES, MAX_L1_BYTES, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, Qcow2Image, State,
    be16, be32, be64, get_entry, read_header,
};
use crate::error::{DiskError, Result};
/// Structural check like `qemu-img check`: recomputes every cluster's reference count
/// from the L1/L2 tables, the refcount structures, the snapshot table and the bitmap
/// directory, then compares with the stored refcounts. Stored < computed is corruption,
/// stored > computed a leak (qemu-img's rule).
pub fn check(path: &Path) -> Result<crate::report::CheckReport> {
    // One file only: a missing or hostile backing file does not stop the check.
    let img = open_standalone(path)?;
    img.check_refcounts()
}

/// Opens one qcow2 file read-only without its backing chain (reads of unallocated
/// clusters return zeros). For structural checks and fuzzing.
pub fn open_standalone(path: &Path) -> Result<Qcow2Image> {
    let file = File::open(path).map_err(|e| DiskError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DiskError::io(path, e))?.len();
    let hdr = read_header(path, &file, file_len)?;
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
    fn check_refcounts(&self) -> Result<crate::report::CheckReport> {
        Ok(self.audit_refcounts()?.0)
    }

    /// The check report plus every leaked cluster with the refcount its references want.
    fn audit_refcounts(&self) -> Result<(crate::report::CheckReport, Vec<(u64, u64)>)> {
        let mut leaked_clusters = Vec::new();
        let mut report = crate::report::CheckReport::default();
        let cs = self.cluster_size();
        let file_len = self.lock().file_len;
        let nclusters = file_len.div_ceil(cs);
        if nclusters > (1 << 28) {
            return Err(DiskError::unsupported(
                &self.path,
                "checking images with more than 2^28 clusters",
            ));
        }
        let mut refs = vec![0u16; nclusters as usize];
        let corrupt_msgs = std::cell::RefCell::new(Vec::new());
        let add = |refs: &mut Vec<u16>, off: u64, len: u64, what: &str| {
            if len == 0 {
                return;
            }
            let first = off / cs;
            let last = (off + len - 1) / cs;
            for c in first..=last {
                match refs.get_mut(c as usize) {
                    Some(r) => *r = r.saturating_add(1),
                    None => corrupt_msgs.borrow_mut().push(format!(
                        "{what} at {off:#x} is outside the image file (length {file_len:#x})"
                    )),
                }
            }
        };
        add(&mut refs, 0, cs, "header");
        let hdr = &self.hdr;
        add(
            &mut refs,
            hdr.l1_table_offset,
            hdr.l1_size as u64 * 8,
            "L1 table",
        );
        add(
            &mut refs,
            hdr.refcount_table_offset,
            hdr.refcount_table_clusters as u64 * cs,
            "refcount table",
        );
        // Active L1/L2 tables; OFLAG_COPIED must agree with refcount 1 (checked below).
        let l1 = self.lock().l1.clone();
        let mut copied_checks: Vec<(u64, bool, String)> = Vec::new();
        self.walk_l1(&l1, &mut |kind, off, len, copied| {
            add(&mut refs, off, len, kind);
            if let Some(c) = copied {
                copied_checks.push((off, c, kind.to_string()));
            }
        })?;
        // Snapshots: table and their L1 tables (and the L2/data clusters those reference).
        if hdr.nb_snapshots > 0 {
            self.walk_snapshots(
                &mut |kind, off, len| add(&mut refs, off, len, kind),
                &mut |l1| {
                    let mut inner = Vec::new();
                    self.walk_l1(l1, &mut |kind, off, len, _| inner.push((kind, off, len)))?;
                    Ok(inner)
                },
            )?;
        }
        if let Some((nb, dir_size, dir_off)) = hdr.bitmaps {
            self.walk_bitmaps(nb, dir_size, dir_off, &mut |kind, off, len| {
                add(&mut refs, off, len, kind)
            })?;
        }
        // Refcount blocks.
        let mut rt = vec![0u8; (hdr.refcount_table_clusters as u64 * cs) as usize];
        self.file
            .read_exact_at(&mut rt, hdr.refcount_table_offset)
            .map_err(|e| self.io(e))?;
        let reftable: Vec<u64> = rt
            .chunks_exact(8)
            .map(|c| be64(c, 0) & OFFSET_MASK)
            .collect();
        for &rb in &reftable {
            if rb != 0 {
                if !rb.is_multiple_of(cs) {
                    corrupt_msgs
                        .borrow_mut()
                        .push(format!("refcount block at {rb:#x} is not cluster aligned"));
                } else {
                    add(&mut refs, rb, cs, "refcount block");
                }
            }
        }
        report.corruptions.extend(corrupt_msgs.into_inner());
        // Compare with the stored refcounts.
        let epb = self.refblock_entries();
        let bits = self.refcount_bits();
        let mut block = vec![0u8; cs as usize];
        let mut loaded = u64::MAX;
        let stored = |c: u64, block: &mut Vec<u8>, loaded: &mut u64| -> Result<u64> {
            let bi = c / epb;
            let Some(&rb) = reftable.get(bi as usize) else {
                return Ok(0);
            };
            if rb == 0 || !rb.is_multiple_of(cs) {
                return Ok(0);
            }
            if *loaded != rb {
                self.pread_host(block, rb)?;
                *loaded = rb;
            }
            Ok(get_entry(block, c % epb, bits))
        };
        let mut leaks = 0u64;
        for c in 0..nclusters {
            let want = refs[c as usize] as u64;
            let have = stored(c, &mut block, &mut loaded)?;
            if have != want {
                if have > want {
                    leaks += 1;
                    leaked_clusters.push((c, want));
                    if report.leaks.len() < 100 {
                        report.leaks.push(format!(
                            "cluster {c} (offset {:#x}) refcount={have} reference={want}",
                            c * cs
                        ));
                    }
                } else {
                    report.corruptions.push(format!(
                        "cluster {c} (offset {:#x}) refcount={have} reference={want}",
                        c * cs
                    ));
                }
            }
        }
        if leaks > report.leaks.len() as u64 {
            report
                .leaks
                .push(format!("… {leaks} leaked clusters in all"));
        }
        // Refcounts past the end of the file are leaks too when nonzero.
        for (off, copied, kind) in copied_checks {
            let c = off / cs;
            if c >= nclusters {
                continue;
            }
            let have = stored(c, &mut block, &mut loaded)?;
            if copied != (have == 1) {
                report.corruptions.push(format!(
                    "{kind} at {off:#x}: OFLAG_COPIED is {} but refcount is {have}",
                    if copied { "set" } else { "clear" }
                ));
            }
        }
        Ok((report, leaked_clusters))
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
