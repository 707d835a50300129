//! Fuzz target: arbitrary bytes as a qcow2 file — open read-only without following a
//! backing file (header, extensions, L1), read a few ranges (L2 tables, zero, compressed
//! clusters), map the layer, run the refcount check. Any panic, hang or huge allocation is
//! a bug; errors are expected.
#![no_main]

use cosnap_disk::Image;
use cosnap_disk::qcow2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("cosnap-fuzz-qcow2-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.qcow2");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = qcow2::check(&path);
    if let Ok(img) = qcow2::open_standalone(&path) {
        let size = img.virtual_size();
        let mut buf = vec![0u8; 64 * 1024];
        for off in [0, size / 3, size.saturating_sub(buf.len() as u64)] {
            let n = (buf.len() as u64).min(size - off.min(size)) as usize;
            let _ = img.read_at(&mut buf[..n], off);
        }
        let _ = img.layer_map(0, size.min(1 << 34));
    }
});
