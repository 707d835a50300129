//! VHDX images checked against qemu-img/qemu-io, both directions.

use cosnap_disk::Image;
use cosnap_disk::vhdx::{self, CreateOptions, VhdxImage};
use cosnap_test_support::*;

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
        let target = v
            .direct_write_target(7 * bs, bs)
            .unwrap()
            .expect("whole free block");
        let data = pattern(99, bs as usize);
        std::os::unix::fs::FileExt::write_all_at(v.file(), &data, target).unwrap();
        model.write(7 * bs, &data);
        v.flush().unwrap();
        // Read back through cosnap before closing.
        for (off, len) in [
            (0u64, 8192usize),
            (bs - 200, 600),
            (3 * bs, bs as usize * 2),
            (7 * bs, 4096),
        ] {
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
    qemu_check_as(&img, "vhdx");
    qemu_compare_raw(&img, &raw);
    let report = vhdx::check(&img).unwrap();
    assert!(
        report.corruptions.is_empty() && report.leaks.is_empty(),
        "{report:?}"
    );
}

#[test]
fn dynamic_1m_blocks_passes_qemu() {
    require_qemu!();
    let mut o = CreateOptions::dynamic(64 * MIB);
    o.block_size = MIB as u32;
    cosnap_written_image_passes_qemu(o, "dyn1m");
}

#[test]
fn dynamic_1m_blocks_over_4g_with_bitmap_slots_passes_qemu() {
    require_qemu!();
    // 1 MiB blocks: chunk ratio 4096, so the BAT interleaves sector-bitmap slots and
    // writes past 4 GiB land after the first of them.
    let mut o = CreateOptions::dynamic(9 * GIB);
    o.block_size = MIB as u32;
    cosnap_written_image_passes_qemu(o, "dyn1m9g");
}

#[test]
fn dynamic_32m_blocks_over_4g_passes_qemu() {
    require_qemu!();
    cosnap_written_image_passes_qemu(CreateOptions::dynamic(5 * GIB), "dyn32m");
}

#[test]
fn dynamic_8m_blocks_4k_sectors_passes_qemu() {
    require_qemu!();
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
    require_qemu!();
    let mut o = CreateOptions::dynamic(96 * MIB);
    o.block_size = 2 << 20;
    o.fixed = true;
    cosnap_written_image_passes_qemu(o, "fixed");
}

/// Compares every byte cosnap reads from `img` with qemu's raw conversion of it, reading
/// both in 4 MiB pieces.
fn assert_same_as_raw(img: &std::path::Path, raw: &std::path::Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let v = VhdxImage::open(img, false).unwrap();
    assert_eq!(v.virtual_size(), size);
    let f = std::fs::File::open(raw).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    let chunk = 4 * MIB as usize;
    let (mut a, mut b) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut off = 0;
    while off < size {
        let n = chunk.min((size - off) as usize);
        // Holes in qemu's sparse raw output read as zeros; skip reading them.
        let data_at = unsafe {
            libc::lseek(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                off as i64,
                libc::SEEK_DATA,
            )
        };
        if data_at < 0 || data_at as u64 >= off + n as u64 {
            // Where cosnap's map holds no data for a hole, reads are zeros by the base-image
            // read rule (checked elsewhere); only stored blocks need reading here.
            let map = v.layer_map(off, n as u64).unwrap();
            if map
                .iter()
                .all(|e| !matches!(e.state, cosnap_disk::ExtentState::Data { .. }))
            {
                off += n as u64;
                continue;
            }
            v.read_at(&mut a[..n], off).unwrap();
            assert!(
                a[..n].iter().all(|&x| x == 0),
                "{}: non-zero bytes in a hole at {off}",
                img.display()
            );
        } else {
            v.read_at(&mut a[..n], off).unwrap();
            f.read_exact_at(&mut b[..n], off).unwrap();
            if a[..n] != b[..n] {
                let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
                panic!(
                    "{}: differs from qemu at byte {}",
                    img.display(),
                    off + i as u64
                );
            }
        }
        off += n as u64;
    }
}

fn qemu_made_image_reads_identically(block: &str, size: &str, size_bytes: u64, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.vhdx");
    let raw = dir.path().join("q.raw");
    let img_s = img.to_str().unwrap();
    let opts = format!("block_size={block}{extra}");
    let (rc, out) = run(
        "qemu-img",
        &["create", "-q", "-f", "vhdx", "-o", &opts, img_s, size],
    );
    assert_eq!(rc, 0, "{out}");
    let last = size_bytes - 65536;
    let cmds = [
        "write -P 0xaa 0 1M".to_string(),
        "write -P 0x55 3145728 12345".to_string(),
        "write -P 0x11 8388000 300000".to_string(),
        format!("write -P 0x77 {} 65536", size_bytes / 2 + 4096),
        format!("write -P 0x99 {last} 65536"),
        "write -z 512 1024".to_string(),
    ];
    let mut args = vec!["-f", "vhdx"];
    for c in &cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img_s);
    let (rc, out) = run("qemu-io", &args);
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            img_s,
            raw.to_str().unwrap(),
        ],
    );
    assert_eq!(rc, 0, "{out}");
    let before = std::fs::read(&img).unwrap();
    assert_same_as_raw(&img, &raw, size_bytes);
    let report = vhdx::check(&img).unwrap();
    assert!(
        report.corruptions.is_empty() && report.leaks.is_empty(),
        "{report:?}"
    );
    // A read-only open never touches the file.
    assert!(
        before == std::fs::read(&img).unwrap(),
        "read-only open modified the image"
    );
}

#[test]
fn qemu_dynamic_1m_not_present_blocks() {
    if have_qemu() {
        qemu_made_image_reads_identically("1M", "256M", 256 * MIB, ",block_state_zero=off");
    }
}

#[test]
fn qemu_dynamic_8m_default_zero_blocks() {
    if have_qemu() {
        qemu_made_image_reads_identically("8M", "300M", 300 * MIB, "");
    }
}

#[test]
fn qemu_dynamic_32m_10g() {
    if have_qemu() {
        qemu_made_image_reads_identically("32M", "10G", 10 * GIB, ",block_state_zero=off");
    }
}

#[test]
fn qemu_dynamic_1m_10g_with_bitmap_entries() {
    if have_qemu() {
        qemu_made_image_reads_identically("1M", "10G", 10 * GIB, "");
    }
}

#[test]
fn qemu_fixed_image() {
    if have_qemu() {
        qemu_made_image_reads_identically(
            "8M",
            "64M",
            64 * MIB,
            ",subformat=fixed,block_state_zero=off",
        );
    }
}

/// cosnap writes into a qemu-made image (its log, BAT and layout), then qemu checks it.
#[test]
fn cosnap_writes_into_qemu_image() {
    require_qemu!();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("q.vhdx");
    let raw = dir.path().join("e.raw");
    let (rc, out) = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            img.to_str().unwrap(),
            "5G",
        ],
    );
    assert_eq!(rc, 0, "{out}");
    let (rc, out) = run(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 0xaa 0 3M",
            img.to_str().unwrap(),
        ],
    );
    assert_eq!(rc, 0, "{out}");
    let mut m = Model::new(5 * GIB);
    m.write(0, &vec![0xaa; 3 * MIB as usize]);
    {
        let mut v = VhdxImage::open(&img, true).unwrap();
        for (k, off) in [MIB + 3, 4 * GIB + 100, 5 * GIB - 3000]
            .into_iter()
            .enumerate()
        {
            let d = pattern(k as u64, 2500);
            v.write_at(&d, off).unwrap();
            m.write(off, &d);
        }
    }
    m.to_raw(&raw);
    qemu_check_as(&img, "vhdx");
    qemu_compare_raw(&img, &raw);
}
