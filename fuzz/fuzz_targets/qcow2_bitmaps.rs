//! Fuzz target: the qcow2 bitmap directory, tables and data clusters. The input becomes the
//! tail of a small valid qcow2 file whose bitmaps extension points at it, so every step of
//! `list_bitmaps` and `dirty_ranges` is reached; the raw bytes also go to the pure directory
//! parser. Any panic, hang or huge allocation is a bug; errors are expected.
#![no_main]

use cosnap_disk::qcow2::{self, bitmaps};
use libfuzzer_sys::fuzz_target;

const CLUSTER: usize = 512;
/// Clusters 1..=8 hold the L1 table (512 entries cover 16 MiB), cluster 9 the refcount table.
const L1_CLUSTER: usize = 1;
const REFTABLE_CLUSTER: usize = 9;
const PAYLOAD_CLUSTER: usize = 10;
const EXT_BITMAPS: u32 = 0x2385_2875;

/// A qcow2 v3 image (512-byte clusters) whose bitmap directory is `payload`'s start.
fn image_around(
    size_units: u16,
    count: u16,
    dir_size: u16,
    consistent: bool,
    payload: &[u8],
) -> Vec<u8> {
    let virtual_size = u64::from(size_units % 513) * 32 * 1024;
    let mut f = vec![0u8; PAYLOAD_CLUSTER * CLUSTER];
    f[0..4].copy_from_slice(b"QFI\xfb");
    f[4..8].copy_from_slice(&3u32.to_be_bytes());
    f[20..24].copy_from_slice(&9u32.to_be_bytes());
    f[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    f[36..40].copy_from_slice(&512u32.to_be_bytes());
    f[40..48].copy_from_slice(&((L1_CLUSTER * CLUSTER) as u64).to_be_bytes());
    f[48..56].copy_from_slice(&((REFTABLE_CLUSTER * CLUSTER) as u64).to_be_bytes());
    f[56..60].copy_from_slice(&1u32.to_be_bytes());
    f[88..96].copy_from_slice(&u64::from(consistent).to_be_bytes());
    f[96..100].copy_from_slice(&4u32.to_be_bytes());
    f[100..104].copy_from_slice(&104u32.to_be_bytes());
    f[104..108].copy_from_slice(&EXT_BITMAPS.to_be_bytes());
    f[108..112].copy_from_slice(&24u32.to_be_bytes());
    f[112..116].copy_from_slice(&u32::from(count).to_be_bytes());
    f[120..128].copy_from_slice(&u64::from(dir_size).to_be_bytes());
    f[128..136].copy_from_slice(&((PAYLOAD_CLUSTER * CLUSTER) as u64).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let field = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let payload = &data[7..];

    let geometry = bitmaps::ImageGeometry {
        cluster_size: CLUSTER as u64,
        virtual_size: u64::from(field(0)) * 4096,
        file_len: payload.len() as u64 * 4,
    };
    let _ = bitmaps::parse_directory(payload, u32::from(field(2)), &geometry);

    let dir = std::env::temp_dir().join(format!("cosnap-fuzz-bitmaps-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.qcow2");
    let image = image_around(field(0), field(2), field(4), data[6] & 1 == 1, payload);
    if std::fs::write(&path, image).is_err() {
        return;
    }
    if let Ok(list) = qcow2::list_bitmaps(&path) {
        for b in list.iter().take(8) {
            let _ = qcow2::dirty_ranges(&path, &b.name);
        }
    }
});
