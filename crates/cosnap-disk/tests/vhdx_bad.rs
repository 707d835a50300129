//! Damaged and hostile VHDX files give typed errors that name the file and the defect.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cosnap_disk::vhdx::{self, CreateOptions, VhdxImage};
use cosnap_disk::{DiskError, Image};
use cosnap_test_support::*;

const MIB: u64 = 1 << 20;

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A small dynamic image with one written block, in its own temp dir.
fn good(dir: &Path) -> PathBuf {
    let p = dir.join("disk.vhdx");
    let mut o = CreateOptions::dynamic(32 * MIB);
    o.block_size = MIB as u32;
    vhdx::create(&p, &o).unwrap();
    let mut v = VhdxImage::open(&p, true).unwrap();
    v.write_at(&[7u8; 5000], 0).unwrap();
    p
}

fn read_at(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(bytes, off)
        .unwrap();
}

/// Rewrites both region tables with `f` applied, and a fresh CRC.
fn edit_region_tables(p: &Path, f: impl Fn(&mut Vec<u8>)) {
    for off in [192u64 << 10, 256 << 10] {
        let mut t = read_at(p, off, 65536);
        f(&mut t);
        t[4..8].fill(0);
        let c = crc32c::crc32c(&t);
        t[4..8].copy_from_slice(&c.to_le_bytes());
        patch(p, off, &t);
    }
}

fn region(p: &Path, guid: &str) -> (u64, usize) {
    let t = read_at(p, 192 << 10, 65536);
    let g = uuid::Uuid::parse_str(guid).unwrap().to_bytes_le();
    let i = (0..le32(&t, 8) as usize)
        .find(|i| t[16 + 32 * i..32 + 32 * i] == g)
        .unwrap();
    (le64(&t, 32 + 32 * i), 16 + 32 * i)
}
const BAT: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
const META: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";

/// Offset in the file of a metadata item's value.
fn meta_item(p: &Path, guid: &str) -> u64 {
    let (moff, _) = region(p, META);
    let t = read_at(p, moff, 65536);
    let g = uuid::Uuid::parse_str(guid).unwrap().to_bytes_le();
    let i = (0..u16::from_le_bytes([t[10], t[11]]) as usize)
        .find(|i| t[32 + 32 * i..48 + 32 * i] == g)
        .unwrap();
    moff + le32(&t, 48 + 32 * i) as u64
}

#[track_caller]
fn expect_corrupt(p: &Path, words: &str) -> String {
    let err = VhdxImage::open(p, false)
        .err()
        .unwrap_or_else(|| panic!("{} opened; expected: {words}", p.display()));
    let msg = err.to_string();
    assert!(
        matches!(err, DiskError::Corrupt { .. }),
        "not Corrupt: {msg}"
    );
    assert!(
        msg.contains("disk.vhdx"),
        "error does not name the file: {msg}"
    );
    assert!(msg.contains(words), "error {msg:?} does not say {words:?}");
    // check() reports the same defect instead of failing.
    let r = vhdx::check(p).unwrap();
    assert!(
        r.corruptions.iter().any(|c| c.contains(words)),
        "check: {r:?}"
    );
    msg
}

#[test]
fn not_a_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.vhdx");
    std::fs::write(&p, pattern(1, 3 * MIB as usize)).unwrap();
    expect_corrupt(&p, "not a VHDX file");
    assert!(!vhdx::is_vhdx(&pattern(1, 64)));
    assert!(vhdx::is_vhdx(b"vhdxfile\0\0"));
}

#[test]
fn truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let full = f.metadata().unwrap().len();
    f.set_len(full - MIB).unwrap(); // cuts off the written payload block
    expect_corrupt(&p, "past the end of the file");
    f.set_len(3 * MIB / 2).unwrap(); // cuts into the log/metadata/BAT regions
    expect_corrupt(&p, "past the end of the file");
    f.set_len(300 << 10).unwrap();
    expect_corrupt(&p, "truncated");
}

#[test]
fn bad_header_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    // One bad header: the other one is current.
    patch(&p, (64 << 10) + 100, &[0xff]);
    let v = VhdxImage::open(&p, false).unwrap();
    let mut b = [0u8; 4];
    v.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [7; 4]);
    drop(v);
    patch(&p, (128 << 10) + 100, &[0xff]);
    expect_corrupt(&p, "both headers are invalid");
}

#[test]
fn bad_region_table_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    patch(&p, (192 << 10) + 40, &[0xee]);
    VhdxImage::open(&p, false).expect("second region table copy is used");
    patch(&p, (256 << 10) + 40, &[0xee]);
    expect_corrupt(&p, "both region tables are invalid");
}

#[test]
fn bat_entry_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let (bat, _) = region(&p, BAT);
    patch(&p, bat + 8 * 3, &((1u64 << 40) | 6).to_le_bytes());
    expect_corrupt(
        &p,
        "BAT entry 3: payload block at 1099511627776+1048576 lies past the end of the file",
    );
    if have_qemu() {
        // qemu agrees that this is a corruption (exit 2).
        let (rc, out) = run("qemu-img", &["check", "-f", "vhdx", p.to_str().unwrap()]);
        assert_eq!(rc, 2, "{out}");
    }
}

#[test]
fn bat_entries_overlapping_metadata_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let (bat, _) = region(&p, BAT);
    let (meta, _) = region(&p, META);
    patch(&p, bat + 8 * 4, &(meta | 6).to_le_bytes());
    expect_corrupt(&p, "overlaps");
    let first = le64(&read_at(&p, bat, 8), 0);
    patch(&p, bat + 8 * 4, &first.to_le_bytes()); // block 4 shares block 0's space
    expect_corrupt(&p, "overlaps");
    patch(&p, bat + 8 * 4, &((MIB / 2) | 6).to_le_bytes()); // inside the header section
    expect_corrupt(&p, "header section");
    patch(&p, bat + 8 * 4, &7u64.to_le_bytes()); // partially present without a parent
    expect_corrupt(&p, "partially present in a file without a parent");
    patch(&p, bat + 8 * 4, &4u64.to_le_bytes());
    expect_corrupt(&p, "invalid payload block state 4");
}

#[test]
fn overlapping_and_unknown_regions() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let (bat, _) = region(&p, BAT);
    let (_, meta_entry) = region(&p, META);
    edit_region_tables(&p, |t| {
        t[meta_entry + 16..meta_entry + 24].copy_from_slice(&bat.to_le_bytes())
    });
    expect_corrupt(&p, "overlaps");

    let p2 = dir.path().join("b").join("disk.vhdx");
    std::fs::create_dir(p2.parent().unwrap()).unwrap();
    let p2 = {
        let q = good(p2.parent().unwrap());
        assert_eq!(q, p2);
        q
    };
    // An unknown region marked required must be refused as unsupported.
    edit_region_tables(&p2, |t| {
        let n = le32(t, 8) as usize;
        let o = 16 + 32 * n;
        t[o..o + 16].copy_from_slice(&uuid::Uuid::new_v4().to_bytes_le());
        t[o + 16..o + 24].copy_from_slice(&(MIB * 40).to_le_bytes());
        t[o + 24..o + 28].copy_from_slice(&(MIB as u32).to_le_bytes());
        t[o + 28..o + 32].copy_from_slice(&1u32.to_le_bytes());
        t[8..12].copy_from_slice(&((n + 1) as u32).to_le_bytes());
    });
    let err = VhdxImage::open(&p2, false).err().unwrap();
    // The region lies past the end: either defect is acceptable, the file is named.
    assert!(err.to_string().contains("disk.vhdx"), "{err}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p2)
        .unwrap()
        .set_len(41 * MIB)
        .unwrap();
    let err = VhdxImage::open(&p2, false).err().unwrap();
    assert!(
        matches!(err, DiskError::Unsupported { .. }) && err.to_string().contains("required region"),
        "{err}"
    );
}

#[test]
fn absurd_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let vs = meta_item(&p, "2FA54224-CD1B-4876-B211-5DBED83BF4B8");
    let orig = read_at(&p, vs, 8);
    patch(&p, vs, &(1u64 << 62).to_le_bytes());
    expect_corrupt(&p, "over 64 TiB");
    // Legal size, but its BAT would not fit the BAT region: refused, nothing allocated.
    patch(&p, vs, &(60u64 << 40).to_le_bytes());
    expect_corrupt(&p, "BAT region holds");
    patch(&p, vs, &orig);
    let fp = meta_item(&p, "CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
    patch(&p, fp, &(3u32 << 20).to_le_bytes());
    expect_corrupt(&p, "block size 3145728");
    patch(&p, fp, &(1u32 << 20).to_le_bytes());
    let lss = meta_item(&p, "8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
    patch(&p, lss, &1000u32.to_le_bytes());
    expect_corrupt(&p, "logical sector size 1000");
    patch(&p, lss, &512u32.to_le_bytes());
    // Region and metadata entry counts beyond the spec's 2047.
    let (meta, _) = region(&p, META);
    patch(&p, meta + 10, &60000u16.to_le_bytes());
    expect_corrupt(&p, "60000 entries");
    patch(&p, meta + 10, &5u16.to_le_bytes());
    edit_region_tables(&p, |t| t[8..12].copy_from_slice(&100_000u32.to_le_bytes()));
    expect_corrupt(&p, "100000 entries");
    edit_region_tables(&p, |t| t[8..12].copy_from_slice(&2u32.to_le_bytes()));
    // A region claiming 4 GiB - 1 MiB of a small file.
    let (_, bat_entry) = region(&p, BAT);
    edit_region_tables(&p, |t| {
        t[bat_entry + 24..bat_entry + 28].copy_from_slice(&(4095u32 << 20).to_le_bytes())
    });
    expect_corrupt(&p, "past the end of the file");
}

#[test]
fn writes_to_read_only_and_out_of_range_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let mut v = VhdxImage::open(&p, false).unwrap();
    assert!(matches!(
        v.write_at(&[1], 0),
        Err(DiskError::Invalid { .. })
    ));
    let mut b = [0u8; 16];
    assert!(matches!(
        v.read_at(&mut b, 32 * MIB - 8),
        Err(DiskError::Invalid { .. })
    ));
    assert!(matches!(
        v.read_at(&mut b, u64::MAX - 4),
        Err(DiskError::Invalid { .. })
    ));
}

#[test]
fn create_refuses_existing_files_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let err = vhdx::create(&p, &CreateOptions::dynamic(MIB))
        .err()
        .unwrap();
    assert!(matches!(err, DiskError::Io { .. }), "{err}");
    let q = dir.path().join("n.vhdx");
    let mut o = CreateOptions::dynamic(MIB);
    o.block_size = 3 << 20;
    assert!(matches!(
        vhdx::create(&q, &o),
        Err(DiskError::Invalid { .. })
    ));
    o = CreateOptions::dynamic(1000);
    assert!(matches!(
        vhdx::create(&q, &o),
        Err(DiskError::Invalid { .. })
    ));
    assert!(!q.exists());
}

/// Random byte damage to the structures of a differencing child and of a dirty-free base
/// never panics: every open, read, map and check returns (Ok or a typed error).
#[test]
fn random_damage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let base = good(dir.path());
    let child = dir.path().join("child.avhdx");
    vhdx::create_child(&base, &child).unwrap();
    {
        let mut c = VhdxImage::open(&child, true).unwrap();
        c.write_at(&[9u8; 3000], 1000).unwrap();
        c.write_at(&vec![8u8; MIB as usize], 2 * MIB).unwrap();
    }
    let pristine_base = std::fs::read(&base).unwrap();
    let pristine_child = std::fs::read(&child).unwrap();
    let mut seed = 0x1234_5678u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Offsets worth hitting: headers, region tables, log, metadata, BAT, bitmap.
    let hot: [(u64, u64); 5] = [
        (64 << 10, 8192),
        (192 << 10, 128),
        (2 * MIB, 4096),
        (3 * MIB, 4096),
        (0, 5 * MIB),
    ];
    for round in 0..300 {
        let (target, pristine) = if round % 2 == 0 {
            (&child, &pristine_child)
        } else {
            (&base, &pristine_base)
        };
        let mut bytes = pristine.clone();
        for _ in 0..(1 + next() % 4) {
            let (start, len) = hot[(next() % hot.len() as u64) as usize];
            let at = (start + next() % len) as usize;
            if at < bytes.len() {
                bytes[at] = next() as u8;
            }
        }
        if round % 7 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        std::fs::write(target, &bytes).unwrap();
        let _ = vhdx::check(target);
        if let Ok(img) = VhdxImage::open(target, false) {
            let size = img.virtual_size();
            let mut buf = vec![0u8; 8192];
            for off in [0, size / 2, size.saturating_sub(8192)] {
                let n = 8192.min(size.saturating_sub(off)) as usize;
                let _ = img.read_at(&mut buf[..n], off);
            }
            let _ = img.layer_map(0, size);
        }
    }
    std::fs::write(&base, &pristine_base).unwrap();
    std::fs::write(&child, &pristine_child).unwrap();
}

/// A block allocated and written but never committed to the BAT (a crash before flush)
/// is reported as a leak, not a corruption.
#[test]
fn uncommitted_allocation_is_a_leak() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    assert_eq!(vhdx::check(&p).unwrap().leaks, Vec::<String>::new());
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let end = f.metadata().unwrap().len();
    f.write_all_at(&[1u8; 4096], end).unwrap();
    f.set_len(end + MIB).unwrap();
    let r = vhdx::check(&p).unwrap();
    assert!(r.corruptions.is_empty(), "{r:?}");
    assert_eq!(r.leaks.len(), 1, "{r:?}");
    assert!(r.leaks[0].contains(&format!("at offset {end}")), "{r:?}");
}

/// 2047 metadata entries all pointing at the same 1 MiB would ask for 2 GiB if items were
/// read before the overlap check; they must be refused first.
#[test]
fn overlapping_metadata_items_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let p = good(dir.path());
    let (meta, _) = region(&p, META);
    let mut t = read_at(&p, meta, 65536);
    let first: Vec<u8> = t[32..64].to_vec();
    for i in 0..2047usize {
        let o = 32 + 32 * i;
        t[o..o + 32].copy_from_slice(&first);
        t[o..o + 4].copy_from_slice(&(i as u32).to_le_bytes()); // distinct, unknown, not required
        t[o + 16..o + 20].copy_from_slice(&(64u32 << 10).to_le_bytes());
        t[o + 20..o + 24].copy_from_slice(&(960u32 << 10).to_le_bytes());
        t[o + 24..o + 28].copy_from_slice(&0u32.to_le_bytes());
    }
    t[10..12].copy_from_slice(&2047u16.to_le_bytes());
    patch(&p, meta, &t);
    expect_corrupt(&p, "two items overlap");
}
