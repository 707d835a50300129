//! The two 4 KiB headers (MS-VHDX 2.2.2): parse, choose the current one, serialize.

use uuid::Uuid;

use super::format::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub seq: u64,
    pub file_write_guid: Uuid,
    pub data_write_guid: Uuid,
    pub log_guid: Uuid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// `None` when the signature or the CRC is wrong (the header is not valid).
    pub fn parse(buf: &[u8]) -> Option<Header> {
        if buf.len() < HEADER_SIZE || &buf[0..4] != SIG_HEAD {
            return None;
        }
        let buf = &buf[..HEADER_SIZE];
        if u32_at(buf, 4) != crc_with_zeroed_field(buf, 4) {
            return None;
        }
        Some(Header {
            seq: u64_at(buf, 8),
            file_write_guid: guid_at(buf, 16),
            data_write_guid: guid_at(buf, 32),
            log_guid: guid_at(buf, 48),
            log_version: u16_at(buf, 64),
            version: u16_at(buf, 66),
            log_length: u32_at(buf, 68),
            log_offset: u64_at(buf, 72),
        })
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(SIG_HEAD);
        put_u64(&mut b, 8, self.seq);
        put_guid(&mut b, 16, &self.file_write_guid);
        put_guid(&mut b, 32, &self.data_write_guid);
        put_guid(&mut b, 48, &self.log_guid);
        put_u16(&mut b, 64, self.log_version);
        put_u16(&mut b, 66, self.version);
        put_u32(&mut b, 68, self.log_length);
        put_u64(&mut b, 72, self.log_offset);
        seal_crc(&mut b, 4);
        b
    }
}

/// Picks the current header: the valid one with the larger sequence number.
/// Returns the header and its slot (0 = 64 KiB, 1 = 128 KiB), or `None` if neither is valid.
pub(crate) fn current(h1: Option<Header>, h2: Option<Header>) -> Option<(Header, usize)> {
    match (h1, h2) {
        (Some(a), Some(b)) => Some(if b.seq > a.seq { (b, 1) } else { (a, 0) }),
        (Some(a), None) => Some((a, 0)),
        (None, Some(b)) => Some((b, 1)),
        (None, None) => None,
    }
}
