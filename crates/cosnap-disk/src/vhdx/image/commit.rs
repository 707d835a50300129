//! Metadata updates: header rewrites, the first-modification GUID rotation, the logged
//! commit of changed metadata sectors (the protocol in the parent module's docs), locator
//! rewrites and making a differencing layer standalone.

use super::*;

impl VhdxImage {
    /// Header update (MS-VHDX 2.2.2.1): write `h` with seq+1 over the non-current slot,
    /// flush, and once more over the other slot so both are current.
    pub(super) fn write_header(&mut self, mut h: Header) -> Result<()> {
        for _ in 0..2 {
            h.seq = self.header.seq.wrapping_add(1);
            let slot = 1 - self.header_slot;
            self.write_raw(&h.serialize(), HEADER_OFFSETS[slot])?;
            self.file.sync_data().map_err(io(&self.path))?;
            self.header = h;
            self.header_slot = slot;
        }
        Ok(())
    }

    pub(super) fn require_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(DiskError::invalid(&self.path, "image is opened read-only"))
        }
    }

    /// Rotates FileWriteGuid (and DataWriteGuid when `data_visible`) before the first
    /// such modification of this session.
    pub(crate) fn begin_modification(&mut self, data_visible: bool) -> Result<()> {
        self.require_writable()?;
        let need_file = !self.file_guid_rotated;
        let need_data = data_visible && !self.data_guid_rotated;
        if !need_file && !need_data {
            return Ok(());
        }
        let mut h = self.header;
        if need_file {
            h.file_write_guid = Uuid::new_v4();
        }
        if need_data {
            h.data_write_guid = self
                .next_data_write_guid
                .take()
                .unwrap_or_else(Uuid::new_v4);
        }
        self.write_header(h)?;
        self.file_guid_rotated = true;
        self.data_guid_rotated |= need_data;
        Ok(())
    }

    /// Commits 4 KiB metadata sector updates through the log (see the module docs).
    pub(crate) fn commit_metadata(&mut self, writes: &[(u64, Vec<u8>)]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.begin_modification(false)?;
        let (lo, ll) = (self.header.log_offset, self.header.log_length as u64);
        if ll == 0 {
            return Err(DiskError::unsupported(
                &self.path,
                "file has no log, so metadata cannot be updated safely",
            ));
        }
        let cap = log::entry_capacity((ll / LOG_SECTOR as u64) as usize).max(1);
        self.file.sync_all().map_err(io(&self.path))?;
        for batch in writes.chunks(cap) {
            let len = self.file.metadata().map_err(io(&self.path))?.len();
            let guid = Uuid::new_v4();
            let refs: Vec<(u64, &[u8])> = batch.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            let last = refs
                .iter()
                .map(|(o, _)| o + LOG_SECTOR as u64)
                .max()
                .unwrap_or(0)
                .max(len);
            let entry = log::build_entry(1, 0, &guid, len / MIB * MIB, round_up(last, MIB), &refs);
            self.write_raw(&entry, lo)?;
            self.file.sync_data().map_err(io(&self.path))?;
            let mut h = self.header;
            h.log_guid = guid;
            self.write_header(h)?;
            for (o, d) in batch {
                self.write_raw(d, *o)?;
            }
            self.file.sync_data().map_err(io(&self.path))?;
            let mut h = self.header;
            h.log_guid = Uuid::nil();
            self.write_header(h)?;
        }
        Ok(())
    }

    /// Metadata sectors changed since the last commit (BAT and sector bitmaps).
    pub(super) fn take_dirty_sectors(&mut self) -> Vec<(u64, Vec<u8>)> {
        let mut w = Vec::new();
        for s in std::mem::take(&mut self.dirty_bat_sectors) {
            let o = (s as usize) * LOG_SECTOR;
            w.push((
                self.bat_region.0 + o as u64,
                self.bat_raw[o..o + LOG_SECTOR].to_vec(),
            ));
        }
        for (o, d) in std::mem::take(&mut self.pending_bitmap) {
            w.push((o, d.into_vec()));
        }
        w
    }

    /// Rewrites the metadata region with `items` through the log (one atomic entry when
    /// the changed sectors fit the log) together with any pending BAT changes.
    pub(crate) fn rewrite_metadata(&mut self, items: Vec<MetaItem>) -> Result<()> {
        self.require_writable()?;
        let (moff, mlen) = self.meta_region;
        let new = metadata::serialize(&self.path, &items, mlen)?;
        let mut old = vec![0u8; new.len()];
        self.read_raw(&mut old, moff)?;
        let mut writes = self.take_dirty_sectors();
        for (k, (n, o)) in new
            .chunks(LOG_SECTOR)
            .zip(old.chunks(LOG_SECTOR))
            .enumerate()
        {
            if n != o {
                writes.push((moff + (k * LOG_SECTOR) as u64, n.to_vec()));
            }
        }
        self.commit_metadata(&writes)?;
        let mut table = vec![0u8; METADATA_TABLE_SIZE];
        self.read_raw(&mut table, moff)?;
        let meta = metadata::parse(&self.path, &table, mlen, |off, len| {
            let mut b = vec![0u8; len];
            self.read_raw(&mut b, moff + off)?;
            Ok(b)
        })?;
        self.meta = meta;
        Ok(())
    }

    /// Makes a differencing layer standalone: every block must already be held by this
    /// layer (fully present, zero, or partially present with every sector present).
    pub(crate) fn make_standalone(&mut self) -> Result<()> {
        self.require_writable()?;
        if !self.meta.has_parent {
            return Ok(());
        }
        for b in 0..self.geo.payload_blocks {
            let i = self.geo.payload_index(b);
            let e = self.entry(i);
            match bat_state(e) {
                PAYLOAD_NOT_PRESENT => {
                    return Err(DiskError::invalid(
                        &self.path,
                        format!(
                            "block {b} is inherited from the parent, so the image cannot stand alone"
                        ),
                    ));
                }
                PAYLOAD_PARTIALLY_PRESENT => {
                    let len = self.block_len(b);
                    if self.sector_runs(b, 0, len)?.iter().any(|r| !r.2) {
                        return Err(DiskError::invalid(
                            &self.path,
                            format!(
                                "block {b} has sectors inherited from the parent, so the image cannot stand alone"
                            ),
                        ));
                    }
                    self.set_entry(i, PAYLOAD_FULLY_PRESENT, bat_offset(e));
                }
                _ => {}
            }
        }
        let geo = Geometry::new(
            self.meta.virtual_size,
            self.meta.block_size,
            self.meta.logical_sector_size,
            false,
        );
        // Old bitmap entries (and padding past the last block) become NOT_PRESENT.
        for i in 0..self.geo.entries {
            let unused = self.geo.is_bitmap_index(i)
                || self.geo.block_of_index(i) >= self.geo.payload_blocks;
            if unused && self.entry(i) != 0 {
                self.set_entry(i, SB_NOT_PRESENT, 0);
            }
        }
        let items: Vec<MetaItem> = self
            .meta
            .items
            .iter()
            .filter(|it| it.is_user() || it.id != META_PARENT_LOCATOR)
            .map(|it| {
                let mut it = it.clone();
                if !it.is_user() && it.id == META_FILE_PARAMETERS {
                    it.data = metadata::file_parameters(self.meta.block_size, false, false);
                }
                it
            })
            .collect();
        self.pending_bitmap.clear();
        self.rewrite_metadata(items)?;
        self.geo = geo;
        self.parent = None;
        Ok(())
    }
}
