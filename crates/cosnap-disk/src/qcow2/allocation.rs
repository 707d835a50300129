//! The write path's allocation: refcount blocks and the refcount table (grown by
//! appending), appending clusters, and L2 updates in the crash-safe order (refcounts first,
//! then the L2 entry that uses them).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{
    Kind, MAX_REFTABLE_BYTES, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, Qcow2Image, State,
};
use crate::error::{DiskError, Result};

impl Qcow2Image {
    pub(super) fn ensure_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::invalid(&self.path, "image is open read-only"))
        }
    }

    pub(super) fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io(e))
    }

    // ---- refcounts (writable only) ----

    pub(super) fn refcount_bits(&self) -> u64 {
        1 << self.hdr.refcount_order
    }

    pub(super) fn refblock_entries(&self) -> u64 {
        self.cluster_size() * 8 / self.refcount_bits()
    }

    pub(super) fn refblock<'a>(&self, st: &'a mut State, offset: u64) -> Result<&'a mut Vec<u8>> {
        if let Some(i) = st.refblock_cache.iter().position(|(o, _)| *o == offset) {
            let entry = st.refblock_cache.remove(i);
            st.refblock_cache.push(entry);
        } else {
            let mut bytes = vec![0u8; self.cluster_size() as usize];
            self.pread_host(&mut bytes, offset)?;
            if st.refblock_cache.len() >= self.refblock_cache_cap {
                st.refblock_cache.remove(0);
            }
            st.refblock_cache.push((offset, bytes));
        }
        Ok(&mut st.refblock_cache.last_mut().unwrap().1)
    }

    /// Sets the refcount of `count` clusters from host cluster index `first` to `value`.
    pub(super) fn set_refcounts(
        &self,
        st: &mut State,
        first: u64,
        count: u64,
        value: u64,
    ) -> Result<()> {
        let epb = self.refblock_entries();
        let bits = self.refcount_bits();
        let mut idx = first;
        let end = first + count;
        while idx < end {
            let block_idx = idx / epb;
            let block_off = self.ensure_refblock(st, block_idx)?;
            let stop = end.min((block_idx + 1) * epb);
            let (lo, hi) = (idx % epb, (stop - 1) % epb);
            let block = self.refblock(st, block_off)?;
            for i in lo..=hi {
                set_entry(block, i, bits, value);
            }
            let (byte_lo, byte_hi) = (
                (lo * bits / 8) as usize,
                ((hi + 1) * bits).div_ceil(8) as usize,
            );
            let span = block[byte_lo..byte_hi].to_vec();
            self.file
                .write_all_at(&span, block_off + byte_lo as u64)
                .map_err(|e| self.io(e))?;
            idx = stop;
        }
        Ok(())
    }

    /// The host offset of refcount block `block_idx`, allocating it (and growing the
    /// refcount table) if needed.
    pub(super) fn ensure_refblock(&self, st: &mut State, block_idx: u64) -> Result<u64> {
        if block_idx >= st.reftable.len() as u64 {
            self.grow_reftable(st, block_idx + 1)?;
        }
        let existing = st.reftable[block_idx as usize] & OFFSET_MASK;
        if existing != 0 {
            return Ok(existing);
        }
        let cs = self.cluster_size();
        let off = st.next_free;
        st.next_free += cs;
        let zeros = vec![0u8; cs as usize];
        self.file
            .write_all_at(&zeros, off)
            .map_err(|e| self.io(e))?;
        st.file_len = st.file_len.max(off + cs);
        st.refblock_cache.retain(|(o, _)| *o != off);
        st.reftable[block_idx as usize] = off;
        self.file
            .write_all_at(&off.to_be_bytes(), st.rt_offset + block_idx * 8)
            .map_err(|e| self.io(e))?;
        self.set_refcounts(st, off / cs, 1, 1)?;
        Ok(off)
    }

    pub(super) fn grow_reftable(&self, st: &mut State, min_entries: u64) -> Result<()> {
        let cs = self.cluster_size();
        let epb = self.refblock_entries();
        let per_cluster = cs / 8;
        let cover = (st.next_free / cs + 64).div_ceil(epb) * 2 + 2;
        let entries = min_entries.max(st.reftable.len() as u64 * 2).max(cover);
        let clusters = entries.div_ceil(per_cluster);
        if clusters * cs > MAX_REFTABLE_BYTES {
            return Err(DiskError::unsupported(
                &self.path,
                "the image would need a refcount table larger than 8 MiB",
            ));
        }
        let new_off = st.next_free;
        st.next_free += clusters * cs;
        st.reftable.resize((clusters * per_cluster) as usize, 0);
        let mut bytes = Vec::with_capacity((clusters * cs) as usize);
        for e in &st.reftable {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.file
            .write_all_at(&bytes, new_off)
            .map_err(|e| self.io(e))?;
        st.file_len = st.file_len.max(new_off + clusters * cs);
        let (old_off, old_clusters) = (st.rt_offset, st.rt_clusters);
        st.rt_offset = new_off;
        st.rt_clusters = clusters;
        self.set_refcounts(st, new_off / cs, clusters, 1)?;
        self.sync()?;
        let mut hdr = [0u8; 12];
        hdr[..8].copy_from_slice(&new_off.to_be_bytes());
        hdr[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        self.file.write_all_at(&hdr, 48).map_err(|e| self.io(e))?;
        self.sync()?;
        self.set_refcounts(st, old_off / cs, old_clusters, 0)
    }

    pub(super) fn alloc_clusters(&self, st: &mut State, n: u64) -> Result<u64> {
        let cs = self.cluster_size();
        let off = st.next_free;
        st.next_free += n * cs;
        self.set_refcounts(st, off / cs, n, 1)?;
        Ok(off)
    }

    /// Applies `f(old_entry) -> new_entry` to the L2 entries of `count` guest clusters from
    /// cluster index `first`, allocating L2 tables where needed.
    pub(super) fn update_l2(
        &self,
        st: &mut State,
        first: u64,
        count: u64,
        f: &mut dyn FnMut(u64, u64) -> Result<u64>,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let l2n = self.l2_entries();
        let mut c = first;
        let end = first + count;
        while c < end {
            let l1_idx = (c / l2n) as usize;
            let stop = end.min((c / l2n + 1) * l2n);
            let l1e = st.l1[l1_idx];
            let l2_off = if l1e & OFFSET_MASK == 0 {
                let off = self.alloc_clusters(st, 1)?;
                let zeros = vec![0u8; cs as usize];
                self.file
                    .write_all_at(&zeros, off)
                    .map_err(|e| self.io(e))?;
                st.file_len = st.file_len.max(off + cs);
                if self.ordered {
                    self.sync()?;
                }
                let entry = off | OFLAG_COPIED;
                st.l1[l1_idx] = entry;
                self.file
                    .write_all_at(
                        &entry.to_be_bytes(),
                        self.hdr.l1_table_offset + l1_idx as u64 * 8,
                    )
                    .map_err(|e| self.io(e))?;
                off
            } else if l1e & OFLAG_COPIED == 0 {
                return Err(DiskError::unsupported(
                    &self.path,
                    "writing to an L2 table shared with an internal snapshot",
                ));
            } else {
                l1e & OFFSET_MASK
            };
            let mut table = self.l2_table(st, l2_off)?;
            let t = Arc::make_mut(&mut table);
            let (lo, hi) = ((c % l2n) as usize, ((stop - 1) % l2n) as usize);
            let mut bytes = Vec::with_capacity((hi - lo + 1) * 8);
            for (i, slot) in t[lo..=hi].iter_mut().enumerate() {
                *slot = f(c + i as u64, *slot)?;
                bytes.extend_from_slice(&slot.to_be_bytes());
            }
            self.file
                .write_all_at(&bytes, l2_off + lo as u64 * 8)
                .map_err(|e| self.io(e))?;
            if let Some(slot) = st.l2_cache.iter_mut().find(|(o, _)| *o == l2_off) {
                slot.1 = table;
            }
            c = stop;
        }
        Ok(())
    }

    /// Writes `data` at guest `pos` into freshly allocated clusters covering the clusters
    /// `[pos, pos + data.len())` touches (copy-on-write of partial clusters from below).
    pub(super) fn write_allocating(
        &self,
        st: &mut State,
        data: &[u8],
        pos: u64,
        kind: Kind,
    ) -> Result<()> {
        if let Kind::Compressed(_) = kind {
            return Err(DiskError::unsupported(
                &self.path,
                "overwriting compressed clusters",
            ));
        }
        let cs = self.cluster_size();
        let first = pos / cs * cs;
        let end = pos + data.len() as u64;
        let last_end = end.div_ceil(cs) * cs;
        let n = (last_end - first) / cs;
        // Partial first/last clusters: start from what the cluster shows now.
        let old_cluster = |c: u64| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; cs as usize];
            if kind == Kind::Unallocated {
                let n = cs.min(self.hdr.size - c) as usize;
                self.read_backing(&mut buf[..n], c)?;
            }
            Ok(buf)
        };
        let head = if pos > first || (n == 1 && end < last_end) {
            let mut b = old_cluster(first)?;
            let s = (pos - first) as usize;
            let m = data.len().min(cs as usize - s);
            b[s..s + m].copy_from_slice(&data[..m]);
            Some(b)
        } else {
            None
        };
        let tail = if n > 1 && end < last_end {
            let c = last_end - cs;
            let mut b = old_cluster(c)?;
            let m = (end - c) as usize;
            b[..m].copy_from_slice(&data[data.len() - m..]);
            Some(b)
        } else {
            None
        };
        let host = self.alloc_clusters(st, n)?;
        if self.ordered {
            self.sync()?;
        }
        // Data: head cluster, middle straight from `data`, tail cluster.
        let mut w_guest = first;
        if let Some(h) = &head {
            self.file.write_all_at(h, host).map_err(|e| self.io(e))?;
            w_guest += cs;
        }
        let mid_end = if tail.is_some() {
            last_end - cs
        } else {
            last_end
        };
        if mid_end > w_guest {
            let s = (w_guest - pos) as usize;
            let e = (mid_end - pos) as usize;
            self.file
                .write_all_at(&data[s..e], host + (w_guest - first))
                .map_err(|e| self.io(e))?;
        }
        if let Some(t) = &tail {
            self.file
                .write_all_at(t, host + (last_end - cs - first))
                .map_err(|e| self.io(e))?;
        }
        st.file_len = st.file_len.max(host + n * cs);
        let mut freed = Vec::new();
        let first_cluster = first / cs;
        self.update_l2(st, first_cluster, n, &mut |c, old| {
            let old_host = old & OFFSET_MASK;
            if old & OFLAG_COMPRESSED == 0 && old_host != 0 {
                freed.push(old_host);
            }
            Ok((host + (c - first_cluster) * cs) | OFLAG_COPIED)
        })?;
        for h in freed {
            self.set_refcounts(st, h / cs, 1, 0)?;
        }
        Ok(())
    }
}

/// Refcount entry `i` of a refcount block of `bits`-bit entries (big-endian; sub-byte
/// entries packed from the low bits up).
pub(super) fn get_entry(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let s = i as usize * w;
        block[s..s + w]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64)
    } else {
        let per = 8 / bits;
        let byte = block[(i / per) as usize];
        ((byte >> ((i % per) * bits)) as u64) & ((1 << bits) - 1)
    }
}

/// Sets refcount entry `i` of a refcount block of `bits`-bit entries to `value`.
pub(super) fn set_entry(block: &mut [u8], i: u64, bits: u64, value: u64) {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let s = i as usize * w;
        let be = value.to_be_bytes();
        block[s..s + w].copy_from_slice(&be[8 - w..]);
    } else {
        let per = 8 / bits;
        let shift = (i % per) * bits;
        let mask = (((1u16 << bits) - 1) as u8) << shift;
        let b = &mut block[(i / per) as usize];
        *b = (*b & !mask) | (((value as u8) << shift) & mask);
    }
}
