//! BAT geometry (MS-VHDX 2.5): chunk ratio, entry counts and the interleaving of payload
//! and sector-bitmap entries.

use super::format::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector_size: u64,
    /// Payload blocks per sector-bitmap block.
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
    pub bitmap_blocks: u64,
    /// BAT entries the file must hold.
    pub entries: u64,
}

impl Geometry {
    /// Inputs are validated metadata values (block size 1..=256 MiB power of two, sector
    /// 512/4096, size ≤ 64 TiB), so nothing here can overflow.
    pub fn new(
        virtual_size: u64,
        block_size: u32,
        logical_sector_size: u32,
        has_parent: bool,
    ) -> Self {
        let block_size = block_size as u64;
        let lss = logical_sector_size as u64;
        let chunk_ratio = SECTORS_PER_BITMAP * lss / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        let entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else if payload_blocks == 0 {
            0
        } else {
            payload_blocks + (payload_blocks - 1) / chunk_ratio
        };
        Geometry {
            virtual_size,
            block_size,
            logical_sector_size: lss,
            chunk_ratio,
            payload_blocks,
            bitmap_blocks,
            entries,
        }
    }

    /// BAT index of payload block `b`.
    pub fn payload_index(&self, b: u64) -> u64 {
        b + b / self.chunk_ratio
    }

    /// BAT index of the sector-bitmap entry of chunk `c`.
    pub fn bitmap_index(&self, c: u64) -> u64 {
        c * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// True if BAT index `i` holds a sector-bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        (i + 1).is_multiple_of(self.chunk_ratio + 1)
    }

    /// The payload block number of payload index `i` (not a bitmap index).
    pub fn block_of_index(&self, i: u64) -> u64 {
        i - i / (self.chunk_ratio + 1)
    }

    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_verified_10g_layout() {
        // 10 GiB, 1 MiB blocks, 512-byte sectors: CR 4096, 10242 entries, block 5120 at 5121.
        let g = Geometry::new(10 << 30, 1 << 20, 512, false);
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.entries, 10242);
        assert_eq!(g.payload_index(5120), 5121);
        assert_eq!(g.bitmap_index(0), 4096);
        assert_eq!(g.bitmap_index(1), 8193);
        assert!(g.is_bitmap_index(4096) && g.is_bitmap_index(8193) && !g.is_bitmap_index(5121));
        assert_eq!(g.block_of_index(5121), 5120);
        let d = Geometry::new(10 << 30, 1 << 20, 512, true);
        assert_eq!(d.entries, 3 * 4097);
        let big = Geometry::new(64 << 40, 32 << 20, 4096, false);
        assert_eq!(big.chunk_ratio, 1024);
    }
}
