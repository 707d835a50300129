//! Fuzz target: arbitrary bytes as a VHDX file — open read-only (headers, regions,
//! metadata, BAT, log replay in memory), read a few ranges, map the layer, run the check.
//! Any panic, hang or huge allocation is a bug; errors are expected.
#![no_main]

use cosnap_disk::Image;
use cosnap_disk::vhdx::{self, VhdxImage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("cosnap-fuzz-vhdx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.vhdx");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = vhdx::is_vhdx(data);
    let _ = vhdx::check(&path);
    if let Ok(img) = VhdxImage::open(&path, false) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 64 * 1024];
        for off in [0, size / 3, size.saturating_sub(buf.len() as u64)] {
            let n = (buf.len() as u64).min(size - off.min(size)) as usize;
            let _ = img.read_at(&mut buf[..n], off);
        }
        let _ = img.layer_map(0, size.min(1 << 34));
    }
});
