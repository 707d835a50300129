//! VHDX images checked against qemu-img/qemu-io, both directions.

mod vhdx_util;

use cosnap_disk::Image;
use cosnap_disk::vhdx::{self, CreateOptions, VhdxImage};
use vhdx_util::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Writes a mix of aligned, unaligned, block-crossing and large writes into a fresh image
/// made by cosnap, then asks qemu to check it and compare it with the expected raw bytes.
fn cosnap_written_image_passes_qemu(opts: CreateOptions, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join(format!("{name}.vhdx"));
    let raw = dir.path().join(format!("{name}.raw"));
    vhdx::create(&img, &opts).unwrap();
    let bs = opts.block_size as u64;
    let size = opts.virtual_size;
    let mut model = Model::new(size);
    let writes: Vec<(u64, usize)> = vec![
        (0, 4096),
        (513, 1000),
        (bs - 100, 300),
        (3 * bs + 7, (bs + 9000) as usize),
        (size - 512, 512),
        (size / 2 + 12345, 70_000),
        (5 * bs, bs as usize),
    ];
    {
        let mut v = VhdxImage::open(&img, true).unwrap();
        for (k, (off, len)) in writes.iter().enumerate() {
            let (off, len) = (*off, (*len).min((size - off) as usize));
            let data = pattern(k as u64 + 1, len);
            v.write_at(&data, off).unwrap();
            model.write(off, &data);
        }
        // Zeroing a whole block and part of one.
        v.write_zeroes(5 * bs, bs).unwrap();
        model.write(5 * bs, &vec![0; bs as usize]);
        v.write_zeroes(3 * bs + 100, 5000).unwrap();
        model.write(3 * bs + 100, &vec![0; 5000]);
        // Direct target: a whole unallocated block written by the caller.
        let target = v.direct_write_target(7 * bs, bs).unwrap().expect("whole free block");
        let data = pattern(99, bs as usize);
        std::os::unix::fs::FileExt::write_all_at(v.file(), &data, target).unwrap();
        model.write(7 * bs, &data);
        v.flush().unwrap();
        // Read back through cosnap before closing.
        for (off, len) in [(0u64, 8192usize), (bs - 200, 600), (3 * bs, bs as usize * 2), (7 * bs, 4096)] {
            let mut buf = vec![0u8; len];
            v.read_at(&mut buf, off).unwrap();
            assert_eq!(buf, model.read(off, len), "cosnap read back at {off}");
        }
    }
    // cosnap's own view of every allocated byte after reopening.
    let v = VhdxImage::open(&img, false).unwrap();
    for (off, data) in &model.writes {
        let mut buf = vec![0u8; data.len()];
        v.read_at(&mut buf, *off).unwrap();
        assert_eq!(buf, model.read(*off, data.len()), "reopened read at {off}");
    }
    drop(v);
    if opts.logical_sector_size != 512 {
        // qemu refuses VHDX files with 4096-byte logical sectors (ENOTSUP).
        return;
    }
    model.to_raw(&raw);
    qemu_check(&img);
    qemu_compare_raw(&img, &raw);
    let report = vhdx::check(&img).unwrap();
    assert!(report.corruptions.is_empty(), "{:?}", report.corruptions);
}

#[test]
fn dynamic_1m_blocks_passes_qemu() {
    if !have_qemu() {
        return;
    }
    let mut o = CreateOptions::dynamic(64 * MIB);
    o.block_size = MIB as u32;
    cosnap_written_image_passes_qemu(o, "dyn1m");
}

#[test]
fn dynamic_32m_blocks_over_4g_passes_qemu() {
    if !have_qemu() {
        return;
    }
    cosnap_written_image_passes_qemu(CreateOptions::dynamic(5 * GIB), "dyn32m");
}

#[test]
fn dynamic_8m_blocks_4k_sectors_passes_qemu() {
    if !have_qemu() {
        return;
    }
    let o = CreateOptions {
        virtual_size: 6 * GIB,
        block_size: 8 << 20,
        logical_sector_size: 4096,
        physical_sector_size: 4096,
        fixed: false,
    };
    cosnap_written_image_passes_qemu(o, "dyn8m4k");
}

#[test]
fn fixed_image_passes_qemu() {
    if !have_qemu() {
        return;
    }
    let mut o = CreateOptions::dynamic(96 * MIB);
    o.block_size = 2 << 20;
    o.fixed = true;
    cosnap_written_image_passes_qemu(o, "fixed");
}
