//! The layer's block I/O below the [`Image`] impl: sector bitmaps of differencing
//! layers, reads and writes of pieces of a block, allocation at the end of the file and
//! the allocation map of stored runs.

use super::*;

impl VhdxImage {
    /// Gives the space of a block that became ZERO back to the host filesystem (best
    /// effort). The block's space is not reused by the file; as a hole it costs nothing.
    /// Safe before the BAT change is committed: a crash then shows the old entry over
    /// zeros, i.e. the zeroing write partly done, as a disk may after a crash.
    pub(super) fn punch_hole(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a valid descriptor; no memory is passed.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
    }

    /// Splits stored bytes `[host, host + len)` (guest offset `voff`) into `Data` runs and
    /// `Zero` runs where the host file has holes (SEEK_DATA/SEEK_HOLE). When the
    /// filesystem cannot tell, everything is `Data`.
    pub(super) fn stored_runs(&self, voff: u64, host: u64, len: u64, out: &mut Vec<Extent>) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let data = |o: u64, l: u64| Extent {
            offset: voff + o,
            len: l,
            state: ExtentState::Data {
                host_offset: Some(host + o),
            },
        };
        let zero = |o: u64, l: u64| Extent {
            offset: voff + o,
            len: l,
            state: ExtentState::Zero,
        };
        let mut p = 0u64;
        while p < len {
            // SAFETY: lseek on a valid, open descriptor has no memory-safety requirements.
            let d = unsafe { libc::lseek(fd, (host + p) as libc::off_t, libc::SEEK_DATA) };
            if d < 0 {
                let enxio = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
                out.push(if enxio {
                    zero(p, len - p)
                } else {
                    data(p, len - p)
                });
                return;
            }
            let d = (d as u64).saturating_sub(host).max(p);
            if d >= len {
                out.push(zero(p, len - p));
                return;
            }
            if d > p {
                out.push(zero(p, d - p));
            }
            // SAFETY: as above.
            let h = unsafe { libc::lseek(fd, (host + d) as libc::off_t, libc::SEEK_HOLE) };
            let h = if h < 0 {
                len
            } else {
                (h as u64).saturating_sub(host).clamp(d + 1, len)
            };
            out.push(data(d, h - d));
            p = h;
        }
    }

    pub(super) fn allocate(&mut self, len: u64) -> Result<u64> {
        let host = self.next_free;
        self.next_free = host + len;
        let real = self.file.metadata().map_err(io(&self.path))?.len();
        if real < self.next_free {
            self.file.set_len(self.next_free).map_err(io(&self.path))?;
        }
        self.file_len = self.file_len.max(self.next_free);
        Ok(host)
    }

    pub(super) fn block_len(&self, b: u64) -> u64 {
        self.geo
            .block_size
            .min(self.geo.virtual_size - b * self.geo.block_size)
    }

    pub(super) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.geo.virtual_size)
        {
            return Err(DiskError::invalid(
                &self.path,
                format!(
                    "range {offset}+{len} lies past the virtual size {}",
                    self.geo.virtual_size
                ),
            ));
        }
        Ok(())
    }

    /// Bitmap bytes `[byte_off, byte_off + n)` of chunk `c`'s sector bitmap, with
    /// uncommitted changes applied.
    pub(super) fn bitmap_bytes(&self, c: u64, byte_off: u64, n: usize) -> Result<Vec<u8>> {
        let e = self.entry(self.geo.bitmap_index(c));
        let mut out = vec![0u8; n];
        if bat_state(e) != SB_PRESENT {
            return Ok(out);
        }
        let host = bat_offset(e) + byte_off;
        self.read_raw(&mut out, host)?;
        let end = host + n as u64;
        let first_sector = host / LOG_SECTOR as u64 * LOG_SECTOR as u64;
        for (&so, data) in self.pending_bitmap.range(first_sector..end) {
            let (lo, hi) = (so.max(host), (so + LOG_SECTOR as u64).min(end));
            out[(lo - host) as usize..(hi - host) as usize]
                .copy_from_slice(&data[(lo - so) as usize..(hi - so) as usize]);
        }
        Ok(out)
    }

    /// Runs of `(start, len, present)` (offsets within block `b`) covering
    /// `[within, within + len)` of a partially present block.
    pub(super) fn sector_runs(
        &self,
        b: u64,
        within: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let lss = self.geo.logical_sector_size;
        let s0 = within / lss;
        let s1 = (within + len).div_ceil(lss);
        let c = b / self.geo.chunk_ratio;
        let first = (b % self.geo.chunk_ratio) * self.geo.sectors_per_block() + s0;
        let byte0 = first / 8;
        let bytes =
            self.bitmap_bytes(c, byte0, ((first + (s1 - s0)).div_ceil(8) - byte0) as usize)?;
        let bit = |s: u64| {
            let k = first + (s - s0) - byte0 * 8;
            bytes[(k / 8) as usize] >> (k % 8) & 1 == 1
        };
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        for s in s0..s1 {
            let p = bit(s);
            let lo = (s * lss).max(within);
            let hi = ((s + 1) * lss).min(within + len);
            match runs.last_mut() {
                Some(r) if r.2 == p => r.1 += hi - lo,
                _ => runs.push((lo, hi - lo, p)),
            }
        }
        Ok(runs)
    }

    pub(super) fn set_bitmap_bits(&mut self, b: u64, s0: u64, s1: u64) -> Result<()> {
        let c = b / self.geo.chunk_ratio;
        let e = self.entry(self.geo.bitmap_index(c));
        let base = bat_offset(e);
        let first = (b % self.geo.chunk_ratio) * self.geo.sectors_per_block();
        let (k0, k1) = (first + s0, first + s1);
        let mut k = k0;
        while k < k1 {
            let sector_off = base + (k / 8) / LOG_SECTOR as u64 * LOG_SECTOR as u64;
            let mut sec = match self.pending_bitmap.remove(&sector_off) {
                Some(s) => s,
                None => {
                    let mut s = vec![0u8; LOG_SECTOR].into_boxed_slice();
                    self.read_raw(&mut s, sector_off)?;
                    s
                }
            };
            let sector_bits_end = ((sector_off - base) + LOG_SECTOR as u64) * 8;
            while k < k1 && k < sector_bits_end {
                let byte = (k / 8 - (sector_off - base)) as usize;
                if k % 8 == 0 && k + 8 <= k1.min(sector_bits_end) {
                    sec[byte] = 0xff;
                    k += 8;
                } else {
                    sec[byte] |= 1 << (k % 8);
                    k += 1;
                }
            }
            self.pending_bitmap.insert(sector_off, sec);
        }
        Ok(())
    }

    pub(super) fn read_piece(&self, b: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        let e = self.payload_entry(b);
        let voff = b * self.geo.block_size + within;
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => self.read_raw(buf, bat_offset(e) + within),
            PAYLOAD_PARTIALLY_PRESENT => {
                for (start, len, present) in self.sector_runs(b, within, buf.len() as u64)? {
                    let dst = &mut buf[(start - within) as usize..(start - within + len) as usize];
                    if present {
                        self.read_raw(dst, bat_offset(e) + start)?;
                    } else {
                        self.read_parent(dst, b * self.geo.block_size + start)?;
                    }
                }
                Ok(())
            }
            PAYLOAD_NOT_PRESENT => self.read_parent(buf, voff),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    pub(super) fn read_parent(&self, buf: &mut [u8], voff: u64) -> Result<()> {
        match &self.parent {
            Some(p) => p.read_at(buf, voff),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Writes into the sectors of a partially present block and marks them present.
    pub(super) fn write_sectors(
        &mut self,
        b: u64,
        host: u64,
        within: u64,
        data: &[u8],
    ) -> Result<()> {
        let lss = self.geo.logical_sector_size;
        let end = within + data.len() as u64;
        let (a, z) = (within / lss * lss, end.div_ceil(lss) * lss);
        if a == within && z == end {
            self.write_raw(data, host + within)?;
        } else {
            let mut buf = vec![0u8; (z - a) as usize];
            // Head and tail sectors keep what the chain shows there now.
            self.read_piece(b, a, &mut buf[..lss as usize])?;
            let tl = (z - lss - a) as usize;
            if tl > 0 {
                let (head, tail) = buf.split_at_mut(tl);
                let _ = head;
                self.read_piece(b, z - lss, tail)?;
            }
            buf[(within - a) as usize..(end - a) as usize].copy_from_slice(data);
            self.write_raw(&buf, host + a)?;
        }
        self.set_bitmap_bits(b, a / lss, z / lss)
    }

    pub(super) fn ensure_bitmap(&mut self, c: u64) -> Result<()> {
        let i = self.geo.bitmap_index(c);
        if bat_state(self.entry(i)) != SB_PRESENT {
            let host = self.allocate(SECTOR_BITMAP_BLOCK)?;
            self.set_entry(i, SB_PRESENT, host);
        }
        Ok(())
    }

    pub(super) fn write_piece(&mut self, b: u64, within: u64, data: &[u8]) -> Result<()> {
        let i = self.geo.payload_index(b);
        let e = self.entry(i);
        match bat_state(e) {
            PAYLOAD_FULLY_PRESENT => self.write_raw(data, bat_offset(e) + within),
            PAYLOAD_PARTIALLY_PRESENT if within == 0 && data.len() as u64 == self.block_len(b) => {
                // Every sector is now this layer's: the bitmap no longer matters.
                self.write_raw(data, bat_offset(e))?;
                self.set_entry(i, PAYLOAD_FULLY_PRESENT, bat_offset(e));
                Ok(())
            }
            PAYLOAD_PARTIALLY_PRESENT => self.write_sectors(b, bat_offset(e), within, data),
            state => {
                let whole = within == 0 && data.len() as u64 == self.block_len(b);
                let parent_visible = state == PAYLOAD_NOT_PRESENT && self.parent.is_some();
                if whole || !parent_visible {
                    let host = self.allocate(self.geo.block_size)?;
                    self.write_raw(data, host + within)?;
                    self.set_entry(i, PAYLOAD_FULLY_PRESENT, host);
                    Ok(())
                } else {
                    self.ensure_bitmap(b / self.geo.chunk_ratio)?;
                    let host = self.allocate(self.geo.block_size)?;
                    self.set_entry(i, PAYLOAD_PARTIALLY_PRESENT, host);
                    self.write_sectors(b, host, within, data)
                }
            }
        }
    }
}
