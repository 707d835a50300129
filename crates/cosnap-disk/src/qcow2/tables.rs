//! The read path through the L1 and L2 tables: cached L2 tables, what an entry maps a
//! guest cluster to, and reads of data, compressed clusters and the backing file.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::compressed::inflate_raw;
use super::{Kind, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO, Qcow2Image, State, be64};
use crate::error::Result;

impl Qcow2Image {
    /// The L2 table at `l2_offset`, through the cache.
    pub(super) fn l2_table(&self, st: &mut State, l2_offset: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(i) = st.l2_cache.iter().position(|(o, _)| *o == l2_offset) {
            let entry = st.l2_cache.remove(i);
            let table = entry.1.clone();
            st.l2_cache.push(entry);
            return Ok(table);
        }
        let cs = self.cluster_size();
        if !l2_offset.is_multiple_of(cs) {
            return Err(self.corrupt(format!(
                "L2 table offset {l2_offset:#x} is not cluster aligned"
            )));
        }
        if l2_offset.saturating_add(cs) > st.file_len.max(st.next_free) {
            return Err(self.corrupt(format!(
                "L2 table at {l2_offset:#x} is past the end of the file"
            )));
        }
        let mut bytes = vec![0u8; cs as usize];
        self.file
            .read_exact_at(&mut bytes, l2_offset)
            .map_err(|e| self.io(e))?;
        let table = Arc::new(
            bytes
                .chunks_exact(8)
                .map(|c| be64(c, 0))
                .collect::<Vec<u64>>(),
        );
        if st.l2_cache.len() >= self.l2_cache_cap {
            st.l2_cache.remove(0);
        }
        st.l2_cache.push((l2_offset, table.clone()));
        Ok(table)
    }

    pub(super) fn classify(&self, entry: u64) -> Result<Kind> {
        if entry & OFLAG_COMPRESSED != 0 {
            return Ok(Kind::Compressed(entry));
        }
        let host = entry & OFFSET_MASK;
        if self.hdr.version >= 3 && entry & OFLAG_ZERO != 0 {
            return Ok(Kind::Zero);
        }
        if host == 0 {
            return Ok(Kind::Unallocated);
        }
        if !host.is_multiple_of(self.cluster_size()) {
            return Err(self.corrupt(format!(
                "data cluster offset {host:#x} is not cluster aligned"
            )));
        }
        Ok(Kind::Data(host))
    }

    /// The mapping of guest `offset` and how many bytes from there (≤ `max_len`) map the same
    /// way (contiguous host bytes for data). Runs stop at L2 table boundaries.
    pub(super) fn lookup(&self, st: &mut State, offset: u64, max_len: u64) -> Result<(Kind, u64)> {
        let cb = self.hdr.cluster_bits;
        let cs = self.cluster_size();
        let l2n = self.l2_entries();
        let cluster = offset >> cb;
        let l1_idx = (cluster / l2n) as usize;
        let l2_idx = (cluster % l2n) as usize;
        let in_cluster = offset & (cs - 1);
        let table_end = (cluster / l2n + 1) * l2n * cs;
        let limit = max_len.min(table_end - offset);
        let l1e = st.l1.get(l1_idx).copied().unwrap_or(0) & OFFSET_MASK;
        if l1e == 0 {
            return Ok((Kind::Unallocated, limit));
        }
        let table = self.l2_table(st, l1e)?;
        let first = self.classify(table[l2_idx])?;
        let mut clusters = 1u64;
        let want = (in_cluster + limit).div_ceil(cs);
        while clusters < want {
            let next = self.classify(table[l2_idx + clusters as usize])?;
            let same = match (first, next) {
                (Kind::Data(a), Kind::Data(b)) => b == a + clusters * cs,
                (Kind::Compressed(_), _) => false,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            clusters += 1;
        }
        let len = (clusters * cs - in_cluster).min(limit);
        let kind = match first {
            Kind::Data(h) => Kind::Data(h + in_cluster),
            k => k,
        };
        Ok((kind, len))
    }

    pub(super) fn read_compressed(
        &self,
        entry: u64,
        in_cluster: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let cb = self.hdr.cluster_bits as u64;
        let cs = self.cluster_size();
        let x = 62 - (cb - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
        let csize = (sectors * 512 - (host & 511)).min(2 * cs);
        let file_len = self.lock().file_len;
        if host >= file_len {
            return Err(self.corrupt(format!(
                "compressed cluster at {host:#x} is past the end of the file"
            )));
        }
        let mut input = vec![0u8; csize.min(file_len - host) as usize];
        self.file
            .read_exact_at(&mut input, host)
            .map_err(|e| self.io(e))?;
        let cluster = inflate_raw(&input, cs as usize).map_err(|d| {
            self.corrupt(format!(
                "compressed cluster at {host:#x} does not decompress: {d}"
            ))
        })?;
        out.copy_from_slice(&cluster[in_cluster as usize..in_cluster as usize + out.len()]);
        Ok(())
    }

    /// Reads host bytes, zero-filling anything past the end of the file.
    pub(super) fn pread_host(&self, buf: &mut [u8], host: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], host + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        Ok(())
    }

    pub(super) fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => buf.fill(0),
            Some(b) => {
                let bsize = b.virtual_size();
                if offset >= bsize {
                    buf.fill(0);
                } else {
                    let n = ((bsize - offset) as usize).min(buf.len());
                    b.read_at(&mut buf[..n], offset)?;
                    buf[n..].fill(0);
                }
            }
        }
        Ok(())
    }

    pub(super) fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (kind, len) = {
                let mut st = self.lock();
                self.lookup(&mut st, pos, (buf.len() - done) as u64)?
            };
            let out = &mut buf[done..done + len as usize];
            match kind {
                Kind::Unallocated => self.read_backing(out, pos)?,
                Kind::Zero => out.fill(0),
                Kind::Data(host) => self.pread_host(out, host)?,
                Kind::Compressed(entry) => {
                    let in_cluster = pos & (self.cluster_size() - 1);
                    self.read_compressed(entry, in_cluster, out)?
                }
            }
            done += len as usize;
        }
        Ok(())
    }
}
