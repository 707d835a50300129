//! Opening one VHDX layer: the header section, log replay, the region table, the metadata
//! region and the BAT, each validated before the next is read.

use super::*;

impl VhdxImage {
    /// Opens one layer without its parents, validating every structure.
    pub(crate) fn open_layer(path: &Path, writable: bool) -> Result<VhdxImage> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io(path))?;
        let real_len = file.metadata().map_err(io(path))?.len();
        let mut img = VhdxImage::unparsed(path, file, writable, real_len);

        img.refuse_short_file(real_len)?;
        let (h, slot) = img.read_current_header()?;
        img.header = h;
        img.header_slot = slot;
        img.replay_log()?;

        img.load_region_table()?;
        img.load_metadata()?;
        img.load_bat()?;
        Ok(img)
    }

    /// An image over `file` whose structures are not read yet: every field holds a
    /// placeholder until the open steps fill it.
    pub(super) fn unparsed(path: &Path, file: File, writable: bool, real_len: u64) -> VhdxImage {
        VhdxImage {
            path: path.to_path_buf(),
            file,
            writable,
            overlay: Vec::new(),
            file_len: real_len,
            header: Header {
                seq: 0,
                file_write_guid: Uuid::nil(),
                data_write_guid: Uuid::nil(),
                log_guid: Uuid::nil(),
                log_version: 0,
                version: 1,
                log_length: 0,
                log_offset: 0,
            },
            header_slot: 0,
            regions: Vec::new(),
            bat_region: (0, 0),
            meta_region: (0, 0),
            meta: Metadata {
                items: Vec::new(),
                block_size: MIN_BLOCK_SIZE,
                leave_block_allocated: false,
                has_parent: false,
                virtual_size: 0,
                virtual_disk_id: Uuid::nil(),
                logical_sector_size: 512,
                physical_sector_size: 512,
                locator: None,
            },
            geo: Geometry::new(0, MIN_BLOCK_SIZE, 512, false),
            bat_raw: Vec::new(),
            parent: None,
            next_free: 0,
            dirty_bat_sectors: BTreeSet::new(),
            pending_bitmap: BTreeMap::new(),
            file_guid_rotated: false,
            data_guid_rotated: false,
            next_data_write_guid: None,
            data_written: false,
        }
    }

    /// A file shorter than the 1 MiB header section is refused, saying whether it is a
    /// VHDX file at all.
    pub(super) fn refuse_short_file(&self, real_len: u64) -> Result<()> {
        let path = self.path.as_path();
        if real_len < HEADER_SECTION_SIZE {
            let mut sig = [0u8; 8];
            if real_len >= 8 {
                self.read_raw(&mut sig, 0)?;
            }
            if &sig != SIG_FILE {
                return Err(DiskError::corrupt(
                    path,
                    "not a VHDX file: no \"vhdxfile\" signature",
                ));
            }
            return Err(DiskError::corrupt(
                path,
                format!(
                    "truncated: the file is {real_len} bytes, shorter than the 1 MiB header section"
                ),
            ));
        }
        Ok(())
    }

    /// The current of the two headers (the valid one with the higher sequence number).
    pub(super) fn read_current_header(&self) -> Result<(Header, usize)> {
        let path = self.path.as_path();
        let mut hs = vec![0u8; 320 * 1024];
        self.read_raw(&mut hs, 0)?;
        if &hs[0..8] != SIG_FILE {
            return Err(DiskError::corrupt(
                path,
                "not a VHDX file: no \"vhdxfile\" signature",
            ));
        }
        let h1 = Header::parse(&hs[HEADER_OFFSETS[0] as usize..]);
        let h2 = Header::parse(&hs[HEADER_OFFSETS[1] as usize..]);
        let (h, slot) = header::current(h1, h2).ok_or_else(|| {
            DiskError::corrupt(path, "both headers are invalid (bad signature or CRC-32C)")
        })?;
        if h.version != 1 {
            return Err(DiskError::unsupported(
                path,
                format!("VHDX header version {}", h.version),
            ));
        }
        Ok((h, slot))
    }

    /// The region table, read through the log overlay: a logged update may have changed it.
    pub(super) fn load_region_table(&mut self) -> Result<()> {
        let path = self.path.as_path();
        let mut rt = vec![0u8; REGION_TABLE_SIZE];
        let mut regions = None;
        for off in REGION_TABLE_OFFSETS {
            self.read_raw(&mut rt, off)?;
            if let Some(r) = region::parse(path, &rt)? {
                regions = Some(r);
                break;
            }
        }
        let regions = regions.ok_or_else(|| {
            DiskError::corrupt(
                path,
                "both region tables are invalid (bad signature or CRC-32C)",
            )
        })?;
        self.validate_regions(&regions)?;
        self.regions = regions;
        Ok(())
    }

    /// The metadata region's table and the items it names.
    pub(super) fn load_metadata(&mut self) -> Result<()> {
        let path = self.path.as_path();
        let (moff, mlen) = self.meta_region;
        if mlen < METADATA_TABLE_SIZE as u64 {
            return Err(DiskError::corrupt(
                path,
                "metadata region is smaller than its 64 KiB table",
            ));
        }
        let mut table = vec![0u8; METADATA_TABLE_SIZE];
        self.read_raw(&mut table, moff)?;
        let meta = metadata::parse(path, &table, mlen, |off, len| {
            let mut b = vec![0u8; len];
            self.read_raw(&mut b, moff + off)?;
            Ok(b)
        })?;
        self.meta = meta;
        Ok(())
    }

    /// Replays a dirty log: in memory (read-only) or on disk (writable), per MS-VHDX 2.3.3.
    pub(super) fn replay_log(&mut self) -> Result<()> {
        let h = self.header;
        if h.log_guid.is_nil() {
            return Ok(());
        }

        let (lo, ll) = self.checked_log_region()?;
        let (replay, limit) = self.read_active_log(lo, ll)?;
        self.check_log_targets(&replay, lo, ll, limit)?;

        if !self.writable {
            self.overlay = replay.ops;
            self.file_len = limit;
            return Ok(());
        }
        self.replay_on_disk(&replay)
    }

    /// The log's offset and length, refused unless a supported version, 1 MiB aligned
    /// after the header section, at most 16 MiB and inside the file.
    pub(super) fn checked_log_region(&self) -> Result<(u64, u64)> {
        let h = self.header;
        let path = self.path.as_path();
        if h.log_version != 0 {
            return Err(DiskError::unsupported(
                path,
                format!("log version {}", h.log_version),
            ));
        }
        let (lo, ll) = (h.log_offset, h.log_length as u64);
        if lo % MIB != 0 || ll % MIB != 0 || lo < HEADER_SECTION_SIZE || ll == 0 {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "log at offset {lo} length {ll} is not 1 MiB-aligned after the header section"
                ),
            ));
        }
        if ll > MAX_LOG_LENGTH {
            return Err(DiskError::unsupported(
                path,
                format!("log of {ll} bytes (cosnap replays logs up to 16 MiB)"),
            ));
        }
        if lo.checked_add(ll).is_none_or(|e| e > self.file_len) {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "log at {lo}+{ll} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok((lo, ll))
    }

    /// The log's active entry sequence, and the file length reads may see once it is
    /// applied. Refuses a log whose file was truncated below what it flushed.
    pub(super) fn read_active_log(&self, lo: u64, ll: u64) -> Result<(log::Replay, u64)> {
        let h = self.header;
        let path = self.path.as_path();
        let mut logbuf = vec![0u8; ll as usize];
        self.read_raw(&mut logbuf, lo)?;
        let replay = log::find_active(&logbuf, &h.log_guid).ok_or_else(|| {
            DiskError::corrupt(
                path,
                "the header names a log (LogGuid set) but the log has no valid entry sequence",
            )
        })?;
        if self.file_len < replay.flushed_file_offset {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "truncated: the log says the file was at least {} bytes, it is {}",
                    replay.flushed_file_offset, self.file_len
                ),
            ));
        }
        let limit = self.file_len.max(replay.last_file_offset);
        if replay.last_file_offset > MAX_VIRTUAL_SIZE * 2 {
            return Err(DiskError::corrupt(
                path,
                format!("log LastFileOffset {} is absurd", replay.last_file_offset),
            ));
        }
        Ok((replay, limit))
    }

    /// Every logged write must land in the metadata area below `limit`, never in the log.
    pub(super) fn check_log_targets(
        &self,
        replay: &log::Replay,
        lo: u64,
        ll: u64,
        limit: u64,
    ) -> Result<()> {
        let path = self.path.as_path();
        for op in &replay.ops {
            let start = match op {
                LogOp::Zero { offset, .. } | LogOp::Data { offset, .. } => *offset,
            };
            if start < REGION_TABLE_OFFSETS[0] || op.end() > limit {
                return Err(DiskError::corrupt(
                    path,
                    format!(
                        "log entry writes at {start}..{} outside the file's metadata area",
                        op.end()
                    ),
                ));
            }
            if start < lo + ll && op.end() > lo {
                return Err(DiskError::corrupt(
                    path,
                    "log entry writes into the log itself",
                ));
            }
        }
        Ok(())
    }

    /// Applies the log to the file: a new FileWriteGuid before the first modification,
    /// the logged writes, the logged file length, then a header without the log.
    pub(super) fn replay_on_disk(&mut self, replay: &log::Replay) -> Result<()> {
        let path = self.path.clone();
        let mut nh = self.header;
        nh.file_write_guid = Uuid::new_v4();
        self.write_header(nh)?;
        self.file_guid_rotated = true;
        let zeros = vec![0u8; MIB as usize];
        for op in &replay.ops {
            match op {
                LogOp::Data { offset, data } => self.write_raw(data, *offset)?,
                LogOp::Zero { offset, len } => {
                    let mut done = 0;
                    while done < *len {
                        let n = (*len - done).min(MIB);
                        self.write_raw(&zeros[..n as usize], offset + done)?;
                        done += n;
                    }
                }
            }
        }
        let real = self.file.metadata().map_err(io(&path))?.len();
        if real < replay.last_file_offset {
            self.file
                .set_len(replay.last_file_offset)
                .map_err(io(&path))?;
        }
        self.file.sync_all().map_err(io(&path))?;
        self.file_len = self.file.metadata().map_err(io(&path))?.len();
        let mut nh = self.header;
        nh.log_guid = Uuid::nil();
        self.write_header(nh)
    }

    pub(super) fn validate_regions(&mut self, regions: &[RegionEntry]) -> Result<()> {
        let path = self.path.clone();
        let mut spans: Vec<(u64, u64, String)> =
            vec![(0, HEADER_SECTION_SIZE, "header section".into())];
        if self.header.log_length > 0 {
            let (lo, ll) = (self.header.log_offset, self.header.log_length as u64);
            if lo % MIB != 0
                || ll % MIB != 0
                || lo.checked_add(ll).is_none_or(|e| e > self.file_len)
            {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "log at {lo}+{ll} is misaligned or lies past the end of the file ({} bytes)",
                        self.file_len
                    ),
                ));
            }
            spans.push((lo, lo + ll, "log".into()));
        }
        let (mut bat, mut meta) = (None, None);
        for r in regions {
            let name = if r.guid == REGION_BAT {
                "BAT region".to_string()
            } else if r.guid == REGION_METADATA {
                "metadata region".to_string()
            } else {
                format!("region {}", r.guid)
            };
            let len = r.length as u64;
            if !r.offset.is_multiple_of(MIB)
                || !len.is_multiple_of(MIB)
                || r.offset < HEADER_SECTION_SIZE
                || len == 0
            {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "{name} at {}+{len} is not 1 MiB-aligned after the header section",
                        r.offset
                    ),
                ));
            }
            if r.offset.checked_add(len).is_none_or(|e| e > self.file_len) {
                return Err(DiskError::corrupt(
                    &path,
                    format!(
                        "{name} at {}+{len} lies past the end of the file ({} bytes)",
                        r.offset, self.file_len
                    ),
                ));
            }
            if r.guid == REGION_BAT {
                bat = Some((r.offset, len));
            } else if r.guid == REGION_METADATA {
                meta = Some((r.offset, len));
            } else if r.required {
                return Err(DiskError::unsupported(
                    &path,
                    format!("required region {} is not understood", r.guid),
                ));
            }
            spans.push((r.offset, r.offset + len, name));
        }
        check_overlaps(&path, &mut spans)?;
        self.bat_region =
            bat.ok_or_else(|| DiskError::corrupt(&path, "region table has no BAT region"))?;
        self.meta_region =
            meta.ok_or_else(|| DiskError::corrupt(&path, "region table has no metadata region"))?;
        Ok(())
    }

    /// Reads the BAT and validates every entry: states, offsets inside the file, no
    /// overlap with each other or with the header section, log and regions.
    pub(super) fn load_bat(&mut self) -> Result<()> {
        self.read_bat()?;

        let mut spans = self.metadata_spans();
        let partial_chunks = self.check_bat_entries(&mut spans)?;
        self.check_partial_chunks(partial_chunks)?;
        check_overlaps(&self.path, &mut spans)?;

        let end = spans
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(HEADER_SECTION_SIZE);
        self.next_free = round_up(end.max(self.file_len), MIB);
        Ok(())
    }

    /// The geometry the metadata implies, and the raw BAT, which the BAT region must hold.
    pub(super) fn read_bat(&mut self) -> Result<()> {
        let path = self.path.clone();
        let m = &self.meta;
        self.geo = Geometry::new(
            m.virtual_size,
            m.block_size,
            m.logical_sector_size,
            m.has_parent,
        );
        let need = self.geo.entries * 8;
        if need > self.bat_region.1 {
            return Err(DiskError::corrupt(
                &path,
                format!(
                    "BAT region holds {} entries but a {}-byte disk with {}-byte blocks needs {}",
                    self.bat_region.1 / 8,
                    m.virtual_size,
                    m.block_size,
                    self.geo.entries
                ),
            ));
        }
        let mut raw = vec![0u8; round_up(need, LOG_SECTOR as u64) as usize];
        self.read_raw(&mut raw, self.bat_region.0)?;
        self.bat_raw = raw;
        Ok(())
    }

    /// The file spans that are not payload: header section, log and regions.
    pub(super) fn metadata_spans(&self) -> Vec<(u64, u64, String)> {
        let mut spans: Vec<(u64, u64, String)> =
            vec![(0, HEADER_SECTION_SIZE, "header section".into())];
        if self.header.log_length > 0 {
            spans.push((
                self.header.log_offset,
                self.header.log_offset + self.header.log_length as u64,
                "log".into(),
            ));
        }
        for r in &self.regions {
            spans.push((
                r.offset,
                r.offset + r.length as u64,
                format!("region {}", r.guid),
            ));
        }
        spans
    }

    /// Checks every BAT entry's state and span, adding each allocated block to `spans`.
    /// Returns the chunks that hold partially present blocks.
    pub(super) fn check_bat_entries(
        &self,
        spans: &mut Vec<(u64, u64, String)>,
    ) -> Result<BTreeSet<u64>> {
        let path = self.path.as_path();
        let bs = self.geo.block_size;
        let has_parent = self.meta.has_parent;
        let mut partial_chunks = BTreeSet::new();
        for i in 0..self.geo.entries {
            let e = self.entry(i);
            let state = bat_state(e);
            let off = bat_offset(e);
            if self.geo.is_bitmap_index(i) {
                let chunk = i / (self.geo.chunk_ratio + 1);
                match state {
                    SB_NOT_PRESENT => {}
                    SB_PRESENT if has_parent => {
                        self.check_block_span(i, off, SECTOR_BITMAP_BLOCK, "sector bitmap")?;
                        spans.push((
                            off,
                            off + SECTOR_BITMAP_BLOCK,
                            format!("sector bitmap of chunk {chunk}"),
                        ));
                    }
                    SB_PRESENT => {
                        return Err(DiskError::corrupt(
                            path,
                            format!(
                                "BAT entry {i}: sector bitmap block present in a file without a parent"
                            ),
                        ));
                    }
                    s => {
                        return Err(DiskError::corrupt(
                            path,
                            format!("BAT entry {i}: invalid sector bitmap state {s}"),
                        ));
                    }
                }
                continue;
            }
            let block = self.geo.block_of_index(i);
            if block >= self.geo.payload_blocks {
                continue; // padding after the last block of a differencing BAT
            }
            match state {
                PAYLOAD_NOT_PRESENT
                | PAYLOAD_UNDEFINED
                | PAYLOAD_ZERO
                | PAYLOAD_UNMAPPED
                | PAYLOAD_UNMAPPED_V095 => {}
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                    if state == PAYLOAD_PARTIALLY_PRESENT {
                        if !has_parent {
                            return Err(DiskError::corrupt(
                                path,
                                format!(
                                    "BAT entry {i}: block {block} is partially present in a file without a parent"
                                ),
                            ));
                        }
                        partial_chunks.insert(block / self.geo.chunk_ratio);
                    }
                    self.check_block_span(i, off, bs, "payload block")?;
                    spans.push((off, off + bs, format!("payload block {block}")));
                }
                s => {
                    return Err(DiskError::corrupt(
                        path,
                        format!("BAT entry {i}: invalid payload block state {s}"),
                    ));
                }
            }
        }
        Ok(partial_chunks)
    }

    /// A chunk with partially present blocks needs its sector bitmap block.
    pub(super) fn check_partial_chunks(&self, partial_chunks: BTreeSet<u64>) -> Result<()> {
        for c in partial_chunks {
            if bat_state(self.entry(self.geo.bitmap_index(c))) != SB_PRESENT {
                return Err(DiskError::corrupt(
                    &self.path,
                    format!("chunk {c} has partially present blocks but no sector bitmap block"),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_block_span(&self, i: u64, off: u64, len: u64, what: &str) -> Result<()> {
        if off < HEADER_SECTION_SIZE {
            return Err(DiskError::corrupt(
                &self.path,
                format!("BAT entry {i}: {what} at offset {off} lies inside the header section"),
            ));
        }
        if off.checked_add(len).is_none_or(|e| e > self.file_len) {
            return Err(DiskError::corrupt(
                &self.path,
                format!(
                    "BAT entry {i}: {what} at {off}+{len} lies past the end of the file ({} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(())
    }
}

fn check_overlaps(path: &Path, spans: &mut [(u64, u64, String)]) -> Result<()> {
    spans.sort_by_key(|s| (s.0, s.1));
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(DiskError::corrupt(
                path,
                format!(
                    "{} at {}..{} overlaps {} at {}..{}",
                    w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                ),
            ));
        }
    }
    Ok(())
}
