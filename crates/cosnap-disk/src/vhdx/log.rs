//! The metadata log (MS-VHDX 2.3): finding the active sequence, replaying it, and
//! writing entries.

use uuid::Uuid;

use super::format::*;

/// One replayed update, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogOp {
    Zero { offset: u64, len: u64 },
    Data { offset: u64, data: Box<[u8]> },
}

impl LogOp {
    pub fn end(&self) -> u64 {
        match self {
            LogOp::Zero { offset, len } => offset.saturating_add(*len),
            LogOp::Data { offset, .. } => offset.saturating_add(LOG_SECTOR as u64),
        }
    }
}

/// The active sequence, flattened into the updates to apply.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub ops: Vec<LogOp>,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
    /// Sequence number of the head entry (diagnostics and tests).
    #[allow(dead_code)]
    pub head_seq: u64,
}

struct Entry {
    start: usize,
    len: usize,
    tail: usize,
    seq: u64,
    flushed: u64,
    last: u64,
    ops: Vec<LogOp>,
}

fn sector(log: &[u8], off: usize) -> &[u8] {
    let o = off % log.len();
    &log[o..o + LOG_SECTOR]
}

/// Validates the entry at `start` (every field, descriptor, data sector and the CRC).
fn read_entry(log: &[u8], start: usize, guid: &Uuid) -> Option<Entry> {
    let l = log.len();
    let s0 = sector(log, start);
    if &s0[0..4] != SIG_LOGE || guid_at(s0, 32) != *guid {
        return None;
    }
    let len = u32_at(s0, 8) as usize;
    let tail = u32_at(s0, 12) as usize;
    let seq = u64_at(s0, 16);
    let desc_count = u32_at(s0, 24) as usize;
    if len == 0
        || !len.is_multiple_of(LOG_SECTOR)
        || len > l
        || !tail.is_multiple_of(LOG_SECTOR)
        || tail >= l
        || seq == 0
    {
        return None;
    }
    let nsec = len / LOG_SECTOR;
    let desc_sectors = if desc_count <= 126 {
        1
    } else {
        1 + (desc_count - 126).div_ceil(128)
    };
    if desc_sectors > nsec {
        return None;
    }
    // CRC over the whole entry (which may wrap around the end of the ring).
    let mut crc = crc32c::crc32c(&s0[..4]);
    crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc = crc32c::crc32c_append(crc, &s0[8..]);
    for i in 1..nsec {
        crc = crc32c::crc32c_append(crc, sector(log, start + i * LOG_SECTOR));
    }
    if crc != u32_at(s0, 4) {
        return None;
    }
    let mut ops = Vec::with_capacity(desc_count.min(nsec * 128));
    let mut data_index = 0usize;
    for k in 0..desc_count {
        let (sec, off) = if k < 126 {
            (0, 64 + 32 * k)
        } else {
            (1 + (k - 126) / 128, 32 * ((k - 126) % 128))
        };
        let d = &sector(log, start + sec * LOG_SECTOR)[off..off + 32];
        if u64_at(d, 24) != seq {
            return None;
        }
        let file_offset = u64_at(d, 16);
        if !file_offset.is_multiple_of(LOG_SECTOR as u64) {
            return None;
        }
        match &d[0..4] {
            s if s == SIG_ZERO => {
                let zlen = u64_at(d, 8);
                if !zlen.is_multiple_of(LOG_SECTOR as u64)
                    || file_offset.checked_add(zlen).is_none()
                {
                    return None;
                }
                ops.push(LogOp::Zero {
                    offset: file_offset,
                    len: zlen,
                });
            }
            s if s == SIG_DESC => {
                let idx = desc_sectors + data_index;
                if idx >= nsec {
                    return None;
                }
                let ds = sector(log, start + idx * LOG_SECTOR);
                if &ds[0..4] != SIG_DATA
                    || u32_at(ds, 4) != (seq >> 32) as u32
                    || u32_at(ds, 4092) != seq as u32
                {
                    return None;
                }
                let mut data = vec![0u8; LOG_SECTOR].into_boxed_slice();
                data[0..8].copy_from_slice(&d[8..16]);
                data[8..4092].copy_from_slice(&ds[8..4092]);
                data[4092..4096].copy_from_slice(&d[4..8]);
                ops.push(LogOp::Data {
                    offset: file_offset,
                    data,
                });
                data_index += 1;
            }
            _ => return None,
        }
    }
    Some(Entry {
        start: start % l,
        len,
        tail,
        seq,
        flushed: u64_at(s0, 48),
        last: u64_at(s0, 56),
        ops,
    })
}

/// Finds the active sequence (MS-VHDX 2.3.3) in the whole log region `log` whose entries
/// carry `guid`. `None` when there is no valid sequence.
pub(crate) fn find_active(log: &[u8], guid: &Uuid) -> Option<Replay> {
    let l = log.len();
    if l == 0 || !l.is_multiple_of(LOG_SECTOR) {
        return None;
    }
    let mut candidate: Option<Vec<Entry>> = None;
    let mut cur_tail = 0usize;
    let mut old_tail = 0usize;
    // Each round moves the tail forward by at least one sector until it wraps.
    for _ in 0..=(l / LOG_SECTOR) {
        let mut seq_entries: Vec<Entry> = Vec::new();
        let mut pos = cur_tail;
        let mut total = 0usize;
        while let Some(e) = read_entry(log, pos, guid) {
            if let Some(prev) = seq_entries.last()
                && e.seq != prev.seq.wrapping_add(1)
            {
                break;
            }
            if total + e.len > l {
                break;
            }
            total += e.len;
            pos = (pos + e.len) % l;
            seq_entries.push(e);
        }
        let valid_from = seq_entries
            .last()
            .and_then(|head| seq_entries.iter().position(|e| e.start == head.tail));
        let valid = valid_from.is_some();
        if let Some(from) = valid_from {
            let head_seq = seq_entries.last().map(|e| e.seq).unwrap_or(0);
            let cand_seq = candidate
                .as_ref()
                .and_then(|c| c.last())
                .map(|e| e.seq)
                .unwrap_or(0);
            if head_seq > cand_seq {
                let mut entries = seq_entries;
                let end = entries.len();
                candidate = Some(entries.drain(from..end).collect());
            }
        }
        if !valid {
            cur_tail += LOG_SECTOR;
            if cur_tail >= l {
                cur_tail = 0;
            }
        } else {
            cur_tail = pos;
        }
        if cur_tail <= old_tail {
            break;
        }
        old_tail = cur_tail;
    }
    let entries = candidate?;
    let head = entries.last()?;
    let (flushed_file_offset, last_file_offset, head_seq) = (head.flushed, head.last, head.seq);
    Some(Replay {
        ops: entries.into_iter().flat_map(|e| e.ops).collect(),
        flushed_file_offset,
        last_file_offset,
        head_seq,
    })
}

/// Data sectors one log entry of `log_sectors` sectors can carry.
pub(crate) fn entry_capacity(log_sectors: usize) -> usize {
    let mut n = log_sectors.saturating_sub(1);
    while n > 0 {
        let desc = if n <= 126 {
            1
        } else {
            1 + (n - 126).div_ceil(128)
        };
        if desc + n <= log_sectors {
            return n;
        }
        n -= 1;
    }
    0
}

/// Builds one log entry holding 4 KiB data `writes` (file offset, 4096 bytes each).
pub(crate) fn build_entry(
    seq: u64,
    tail: u32,
    guid: &Uuid,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[(u64, &[u8])],
) -> Vec<u8> {
    let n = writes.len();
    let desc_sectors = if n <= 126 {
        1
    } else {
        1 + (n - 126).div_ceil(128)
    };
    let mut b = vec![0u8; (desc_sectors + n) * LOG_SECTOR];
    let len = b.len() as u32;
    b[0..4].copy_from_slice(SIG_LOGE);
    put_u32(&mut b, 8, len);
    put_u32(&mut b, 12, tail);
    put_u64(&mut b, 16, seq);
    put_u32(&mut b, 24, n as u32);
    put_guid(&mut b, 32, guid);
    put_u64(&mut b, 48, flushed_file_offset);
    put_u64(&mut b, 56, last_file_offset);
    for (k, (offset, data)) in writes.iter().enumerate() {
        let d = if k < 126 {
            64 + 32 * k
        } else {
            (1 + (k - 126) / 128) * LOG_SECTOR + 32 * ((k - 126) % 128)
        };
        b[d..d + 4].copy_from_slice(SIG_DESC);
        b[d + 4..d + 8].copy_from_slice(&data[4092..4096]);
        b[d + 8..d + 16].copy_from_slice(&data[0..8]);
        put_u64(&mut b, d + 16, *offset);
        put_u64(&mut b, d + 24, seq);
        let s = (desc_sectors + k) * LOG_SECTOR;
        b[s..s + 4].copy_from_slice(SIG_DATA);
        put_u32(&mut b, s + 4, (seq >> 32) as u32);
        b[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
        put_u32(&mut b, s + 4092, seq as u32);
    }
    seal_crc(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_entry_is_found_and_replayed() {
        let guid = Uuid::new_v4();
        let mut log = vec![0u8; 1 << 20];
        let data: Vec<Vec<u8>> = (0..130u8).map(|i| vec![i; 4096]).collect();
        let writes: Vec<(u64, &[u8])> = data
            .iter()
            .enumerate()
            .map(|(i, d)| ((3 << 20) + i as u64 * 4096, d.as_slice()))
            .collect();
        let e = build_entry(7, 0, &guid, 4 << 20, 5 << 20, &writes);
        log[..e.len()].copy_from_slice(&e);
        let r = find_active(&log, &guid).expect("active sequence");
        assert_eq!(r.ops.len(), 130);
        assert_eq!(r.head_seq, 7);
        assert_eq!(r.last_file_offset, 5 << 20);
        assert_eq!(
            r.ops[129],
            LogOp::Data {
                offset: (3 << 20) + 129 * 4096,
                data: vec![129u8; 4096].into()
            }
        );
        // A different LogGuid makes the entry invalid.
        assert!(find_active(&log, &Uuid::new_v4()).is_none());
        // A flipped byte breaks the CRC.
        log[5000] ^= 1;
        assert!(find_active(&log, &guid).is_none());
    }

    #[test]
    fn newest_sequence_wins() {
        let guid = Uuid::new_v4();
        let mut log = vec![0u8; 1 << 20];
        let a = vec![1u8; 4096];
        let b = vec![2u8; 4096];
        let e1 = build_entry(10, 0, &guid, 0, 0, &[(1 << 20, &a)]);
        log[..e1.len()].copy_from_slice(&e1);
        let off = 64 * 4096;
        let e2 = build_entry(20, off as u32, &guid, 0, 0, &[(1 << 20, &b)]);
        log[off..off + e2.len()].copy_from_slice(&e2);
        let r = find_active(&log, &guid).unwrap();
        assert_eq!(r.head_seq, 20);
        assert_eq!(
            r.ops,
            vec![LogOp::Data {
                offset: 1 << 20,
                data: b.into()
            }]
        );
    }
}
