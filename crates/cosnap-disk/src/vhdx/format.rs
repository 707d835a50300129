//! MS-VHDX constants, GUIDs (stored in Microsoft mixed-endian form), CRC-32C and
//! little-endian field helpers shared by the VHDX modules.

use uuid::{Uuid, uuid};

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
/// The header section: file identifier, two headers, two region tables.
pub(crate) const HEADER_SECTION_SIZE: u64 = MIB;
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
pub(crate) const HEADER_SIZE: usize = 4096;
pub(crate) const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
pub(crate) const REGION_TABLE_SIZE: usize = 64 * 1024;
pub(crate) const METADATA_TABLE_SIZE: usize = 64 * 1024;
pub(crate) const MAX_TABLE_ENTRIES: usize = 2047;
pub(crate) const MAX_METADATA_ITEM: u32 = 1 << 20;
pub(crate) const SECTOR_BITMAP_BLOCK: u64 = MIB;
/// Sectors described by one sector-bitmap block (2^23 bits).
pub(crate) const SECTORS_PER_BITMAP: u64 = 1 << 23;
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
pub(crate) const MIN_BLOCK_SIZE: u32 = 1 << 20;
pub(crate) const MAX_BLOCK_SIZE: u32 = 256 << 20;
pub(crate) const LOG_SECTOR: usize = 4096;
/// The largest log cosnap reads into memory for replay. The spec allows any multiple of
/// 1 MiB up to 4 GiB; Hyper-V and qemu write 1 MiB logs. The spec's active-sequence scan is
/// quadratic in the log length on hostile input, so larger logs are refused as
/// unsupported rather than read into memory.
pub(crate) const MAX_LOG_LENGTH: u64 = 16 * MIB;

pub(crate) const SIG_FILE: &[u8; 8] = b"vhdxfile";
pub(crate) const SIG_HEAD: &[u8; 4] = b"head";
pub(crate) const SIG_REGI: &[u8; 4] = b"regi";
pub(crate) const SIG_METADATA: &[u8; 8] = b"metadata";
pub(crate) const SIG_LOGE: &[u8; 4] = b"loge";
pub(crate) const SIG_ZERO: &[u8; 4] = b"zero";
pub(crate) const SIG_DESC: &[u8; 4] = b"desc";
pub(crate) const SIG_DATA: &[u8; 4] = b"data";

pub(crate) const REGION_BAT: Uuid = uuid!("2DC27766-F623-4200-9D64-115E9BFD4A08");
pub(crate) const REGION_METADATA: Uuid = uuid!("8B7CA206-4790-4B9A-B8FE-575F050F886E");

pub(crate) const META_FILE_PARAMETERS: Uuid = uuid!("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
pub(crate) const META_VIRTUAL_DISK_SIZE: Uuid = uuid!("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
pub(crate) const META_VIRTUAL_DISK_ID: Uuid = uuid!("BECA12AB-B2E6-4523-93EF-C309E000C746");
pub(crate) const META_LOGICAL_SECTOR_SIZE: Uuid = uuid!("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
pub(crate) const META_PHYSICAL_SECTOR_SIZE: Uuid = uuid!("CDA348C7-445D-4471-9CC9-E9885251C556");
pub(crate) const META_PARENT_LOCATOR: Uuid = uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
pub(crate) const LOCATOR_TYPE_VHDX: Uuid = uuid!("B04AEFB7-D19E-4A81-B789-25B8E9445913");

// Payload block states (MS-VHDX 2.5.1.1).
pub(crate) const PAYLOAD_NOT_PRESENT: u64 = 0;
pub(crate) const PAYLOAD_UNDEFINED: u64 = 1;
pub(crate) const PAYLOAD_ZERO: u64 = 2;
pub(crate) const PAYLOAD_UNMAPPED: u64 = 3;
/// Unmapped in the v0.95 draft; qemu reads it as UNMAPPED, and so does cosnap.
pub(crate) const PAYLOAD_UNMAPPED_V095: u64 = 5;
pub(crate) const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub(crate) const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
// Sector bitmap block states (MS-VHDX 2.5.1.2).
pub(crate) const SB_NOT_PRESENT: u64 = 0;
pub(crate) const SB_PRESENT: u64 = 6;

pub(crate) const BAT_STATE_MASK: u64 = 0x7;
pub(crate) const BAT_RESERVED_MASK: u64 = 0xF_FFF8;
pub(crate) const BAT_OFFSET_MASK: u64 = !0xF_FFFF;

pub(crate) fn bat_state(entry: u64) -> u64 {
    entry & BAT_STATE_MASK
}
pub(crate) fn bat_offset(entry: u64) -> u64 {
    entry & BAT_OFFSET_MASK
}
pub(crate) fn bat_entry(state: u64, offset: u64) -> u64 {
    (offset & BAT_OFFSET_MASK) | state
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn guid_at(b: &[u8], o: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[o..o + 16]);
    Uuid::from_bytes_le(a)
}
pub(crate) fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_guid(b: &mut [u8], o: usize, g: &Uuid) {
    b[o..o + 16].copy_from_slice(&g.to_bytes_le());
}

/// CRC-32C of `buf` with the 4-byte checksum field at `crc_at` taken as zero.
pub(crate) fn crc_with_zeroed_field(buf: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&buf[..crc_at]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &buf[crc_at + 4..])
}

/// Stores the CRC-32C of `buf` (checksum field at `crc_at`) into that field.
pub(crate) fn seal_crc(buf: &mut [u8], crc_at: usize) {
    let crc = crc_with_zeroed_field(buf, crc_at);
    put_u32(buf, crc_at, crc);
}

pub(crate) fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
