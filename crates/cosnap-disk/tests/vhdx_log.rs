//! Log replay: a VHDX with pending log entries written here by hand from the spec
//! (MS-VHDX 2.3), read in memory by a read-only open, replayed by a writable open.

use std::os::unix::fs::FileExt;
use std::path::Path;

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

/// CRC-32C with the 4-byte field at `at` zeroed, stored into that field.
fn seal(b: &mut [u8], at: usize) {
    b[at..at + 4].fill(0);
    let c = crc32c::crc32c(b);
    b[at..at + 4].copy_from_slice(&c.to_le_bytes());
}

/// One log entry: header + descriptors in the first sector, then data sectors.
/// `zeros` are (file offset, length) zero descriptors, `datas` are 4 KiB updates.
fn log_entry(
    seq: u64,
    tail: u32,
    guid: &[u8; 16],
    file_size: u64,
    zeros: &[(u64, u64)],
    datas: &[(u64, Vec<u8>)],
) -> Vec<u8> {
    assert!(zeros.len() + datas.len() <= 126);
    let mut e = vec![0u8; 4096 * (1 + datas.len())];
    let len = e.len() as u32;
    e[0..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&len.to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&((zeros.len() + datas.len()) as u32).to_le_bytes());
    e[32..48].copy_from_slice(guid);
    e[48..56].copy_from_slice(&file_size.to_le_bytes());
    e[56..64].copy_from_slice(&file_size.to_le_bytes());
    let mut d = 64;
    for (off, zlen) in zeros {
        e[d..d + 4].copy_from_slice(b"zero");
        e[d + 8..d + 16].copy_from_slice(&zlen.to_le_bytes());
        e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
    }
    for (k, (off, data)) in datas.iter().enumerate() {
        e[d..d + 4].copy_from_slice(b"desc");
        e[d + 4..d + 8].copy_from_slice(&data[4092..4096]);
        e[d + 8..d + 16].copy_from_slice(&data[0..8]);
        e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
        let s = 4096 * (1 + k);
        e[s..s + 4].copy_from_slice(b"data");
        e[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
        e[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
        e[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
    }
    seal(&mut e, 4);
    e
}

struct Layout {
    log_offset: u64,
    bat_offset: u64,
    current_header: u64,
    other_header: u64,
}

fn layout(f: &std::fs::File) -> Layout {
    let mut h = [vec![0u8; 4096], vec![0u8; 4096]];
    f.read_exact_at(&mut h[0], 64 << 10).unwrap();
    f.read_exact_at(&mut h[1], 128 << 10).unwrap();
    let cur = if le64(&h[1], 8) > le64(&h[0], 8) {
        1
    } else {
        0
    };
    let mut rt = vec![0u8; 65536];
    f.read_exact_at(&mut rt, 192 << 10).unwrap();
    let bat_guid = uuid::Uuid::parse_str("2DC27766-F623-4200-9D64-115E9BFD4A08")
        .unwrap()
        .to_bytes_le();
    let n = le32(&rt, 8) as usize;
    let bat_offset = (0..n)
        .find(|i| rt[16 + 32 * i..32 + 32 * i] == bat_guid)
        .map(|i| le64(&rt, 32 + 32 * i))
        .unwrap();
    Layout {
        log_offset: le64(&h[cur], 72),
        bat_offset,
        current_header: [64u64 << 10, 128 << 10][cur],
        other_header: [64u64 << 10, 128 << 10][1 - cur],
    }
}

/// Writes a new current header naming `log_guid`.
fn set_log_guid(f: &std::fs::File, l: &Layout, guid: &[u8; 16]) {
    let mut h = vec![0u8; 4096];
    f.read_exact_at(&mut h, l.current_header).unwrap();
    let seq = le64(&h, 8) + 1;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[48..64].copy_from_slice(guid);
    seal(&mut h, 4);
    f.write_all_at(&h, l.other_header).unwrap();
}

fn header_guids(path: &Path) -> (uuid::Uuid, uuid::Uuid, uuid::Uuid) {
    let f = std::fs::File::open(path).unwrap();
    let l = layout(&f);
    let mut h = vec![0u8; 4096];
    f.read_exact_at(&mut h, l.current_header).unwrap();
    let g = |o: usize| uuid::Uuid::from_bytes_le(h[o..o + 16].try_into().unwrap());
    (g(16), g(32), g(48))
}

/// Builds a dynamic image whose log holds: a stale older entry, and the active sequence
/// of two entries that allocate blocks 2 and 3 (pointing at payload appended here).
/// Returns the model of what the replayed image must show.
fn dirty_image(path: &Path) -> Model {
    let mut o = CreateOptions::dynamic(16 * MIB);
    o.block_size = MIB as u32;
    vhdx::create(path, &o).unwrap();
    let mut m = Model::new(16 * MIB);
    {
        let mut v = VhdxImage::open(path, true).unwrap();
        let d = pattern(1, 4096);
        v.write_at(&d, 0).unwrap();
        m.write(0, &d);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let l = layout(&f);
    // Payload for the logged blocks, appended at the (1 MiB-aligned) end.
    let end = f.metadata().unwrap().len();
    assert_eq!(end % MIB, 0);
    let (b2, b3, stale) = (end, end + MIB, end + 2 * MIB);
    f.write_all_at(&vec![0x5a; MIB as usize], b2).unwrap();
    f.write_all_at(&vec![0x6b; MIB as usize], b3).unwrap();
    f.write_all_at(&vec![0x11; MIB as usize], stale).unwrap();
    let size = end + 3 * MIB;
    m.write(2 * MIB, &vec![0x5a; MIB as usize]);
    m.write(3 * MIB, &vec![0x6b; MIB as usize]);
    let mut bat = vec![0u8; 4096];
    f.read_exact_at(&mut bat, l.bat_offset).unwrap();
    let set = |bat: &mut Vec<u8>, block: usize, off: u64| {
        bat[8 * block..8 * block + 8].copy_from_slice(&(off | 6).to_le_bytes())
    };
    let guid = *uuid::Uuid::new_v4().as_bytes();
    // Stale entry (seq 3): would map block 2 to the 0x11 payload.
    let mut bat_stale = bat.clone();
    set(&mut bat_stale, 2, stale);
    let e_stale = log_entry(3, 512 << 10, &guid, size, &[], &[(l.bat_offset, bat_stale)]);
    f.write_all_at(&e_stale, l.log_offset + (512 << 10))
        .unwrap();
    // Active sequence: seq 7 at 0 (tail 0), seq 8 right after it (tail 0).
    let mut bat1 = bat.clone();
    set(&mut bat1, 2, b2);
    let e1 = log_entry(7, 0, &guid, size, &[], &[(l.bat_offset, bat1.clone())]);
    f.write_all_at(&e1, l.log_offset).unwrap();
    let mut bat2 = bat1;
    set(&mut bat2, 3, b3);
    // Zero descriptor over the (already zero) second BAT sector, then the BAT sector.
    let e2 = log_entry(
        8,
        0,
        &guid,
        size,
        &[(l.bat_offset + 4096, 4096)],
        &[(l.bat_offset, bat2)],
    );
    f.write_all_at(&e2, l.log_offset + e1.len() as u64).unwrap();
    set_log_guid(&f, &l, &guid);
    f.sync_all().unwrap();
    m
}

fn assert_model(v: &VhdxImage, m: &Model) {
    let mut buf = vec![0u8; m.size as usize];
    v.read_at(&mut buf, 0).unwrap();
    assert!(
        buf == m.read(0, m.size as usize),
        "contents differ from the model"
    );
}

#[test]
fn read_only_open_replays_in_memory_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.vhdx");
    let m = dirty_image(&p);
    let before = std::fs::read(&p).unwrap();
    let v = VhdxImage::open(&p, false).unwrap();
    assert!(v.has_log_overlay());
    assert_model(&v, &m);
    drop(v);
    assert!(
        before == std::fs::read(&p).unwrap(),
        "read-only open modified the file"
    );
    let report = vhdx::check(&p).unwrap();
    assert!(
        report
            .corruptions
            .iter()
            .any(|c| c.contains("not yet replayed")),
        "{report:?}"
    );
}

#[test]
fn writable_open_replays_clears_the_log_and_passes_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.vhdx");
    let m = dirty_image(&p);
    let (fw0, dw0, lg0) = header_guids(&p);
    assert!(!lg0.is_nil());
    drop(VhdxImage::open(&p, true).unwrap());
    let (fw1, dw1, lg1) = header_guids(&p);
    assert!(lg1.is_nil(), "LogGuid must be cleared after replay");
    assert_ne!(
        fw0, fw1,
        "FileWriteGuid must change before the replay modifies the file"
    );
    assert_eq!(dw0, dw1, "replay is not a guest-visible change");
    let v = VhdxImage::open(&p, false).unwrap();
    assert!(!v.has_log_overlay());
    assert_model(&v, &m);
    drop(v);
    if have_qemu() {
        let raw = dir.path().join("e.raw");
        m.to_raw(&raw);
        qemu_check_as(&p, "vhdx");
        qemu_compare_raw(&p, &raw);
    }
}

#[test]
fn truncated_file_with_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.vhdx");
    dirty_image(&p);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - MIB).unwrap();
    let err = VhdxImage::open(&p, false).expect_err("truncated");
    assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("truncated") && err.to_string().contains("dirty.vhdx"),
        "{err}"
    );
}

#[test]
fn log_guid_without_valid_entries_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.vhdx");
    vhdx::create(&p, &CreateOptions::dynamic(64 * MIB)).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let l = layout(&f);
    set_log_guid(&f, &l, uuid::Uuid::new_v4().as_bytes());
    let err = VhdxImage::open(&p, false).expect_err("no valid log sequence");
    assert!(err.to_string().contains("no valid entry sequence"), "{err}");
}

/// cosnap's own metadata updates go through the log: a crash right after the log entry
/// is named by the header (before the BAT is written in place) is repaired by replay.
/// Simulated by writing the BAT region back to its old bytes after a flush while the
/// log still holds the entry and the header names it.
#[test]
fn cosnap_logged_bat_update_survives_a_lost_in_place_write() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.vhdx");
    let mut o = CreateOptions::dynamic(16 * MIB);
    o.block_size = MIB as u32;
    vhdx::create(&p, &o).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let l = layout(&f);
    let mut old_bat = vec![0u8; 4096];
    f.read_exact_at(&mut old_bat, l.bat_offset).unwrap();
    let mut old_headers = vec![0u8; 128 << 10];
    f.read_exact_at(&mut old_headers, 64 << 10).unwrap();
    let data = pattern(5, 3 * MIB as usize);
    {
        let mut v = VhdxImage::open(&p, true).unwrap();
        v.write_at(&data, 1000).unwrap();
        v.flush().unwrap();
    }
    // The log entry cosnap wrote is still in the log region; find its LogGuid.
    let mut entry = vec![0u8; 4096];
    f.read_exact_at(&mut entry, l.log_offset).unwrap();
    assert_eq!(&entry[0..4], b"loge");
    let guid: [u8; 16] = entry[32..48].try_into().unwrap();
    // Roll back: the in-place BAT write "never happened" and the header still names the log.
    f.write_all_at(&old_bat, l.bat_offset).unwrap();
    let l = layout(&f);
    set_log_guid(&f, &l, &guid);
    // qemu, an independent log implementation, replays cosnap's entry too.
    let q = dir.path().join("for-qemu.vhdx");
    std::fs::copy(&p, &q).unwrap();
    let v = VhdxImage::open(&p, false).unwrap();
    assert!(v.has_log_overlay());
    let mut buf = vec![0u8; data.len()];
    v.read_at(&mut buf, 1000).unwrap();
    assert!(buf == data, "replayed BAT must map the written data");
    drop(v);
    if have_qemu() {
        let (rc, out) = run(
            "qemu-img",
            &["check", "-r", "all", "-f", "vhdx", q.to_str().unwrap()],
        );
        assert_eq!(rc, 0, "qemu-img check -r all (log replay): {out}");
        let mut m = Model::new(16 * MIB);
        m.write(1000, &data);
        let raw = dir.path().join("e.raw");
        m.to_raw(&raw);
        qemu_check_as(&q, "vhdx");
        qemu_compare_raw(&q, &raw);
    }
}

/// A rebase rewrites the parent locator through the log: a crash before the in-place
/// write leaves the old locator (if the header did not yet name the entry) or replays the
/// new one (if it did). Both are valid chains.
#[test]
fn rebase_is_atomic_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let copy = dir.path().join("copy.vhdx");
    let child = dir.path().join("child.avhdx");
    let mut o = CreateOptions::dynamic(8 * MIB);
    o.block_size = MIB as u32;
    vhdx::create(&base, &o).unwrap();
    {
        let mut b = VhdxImage::open(&base, true).unwrap();
        b.write_at(&[3u8; 5000], 0).unwrap();
    }
    std::fs::copy(&base, &copy).unwrap();
    vhdx::create_child(&base, &child).unwrap();
    let meta_old = {
        let f = std::fs::File::open(&child).unwrap();
        let mut b = vec![0u8; MIB as usize];
        f.read_exact_at(&mut b, 2 * MIB).unwrap(); // cosnap's metadata region
        b
    };
    vhdx::rebase(&child, Some(&copy)).unwrap();
    let name = |p: &Path| {
        vhdx::parent_path(p)
            .unwrap()
            .unwrap()
            .file_name()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(&child), "copy.vhdx");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&child)
        .unwrap();
    let l = layout(&f);
    let mut entry = vec![0u8; 4096];
    f.read_exact_at(&mut entry, l.log_offset).unwrap();
    let guid: [u8; 16] = entry[32..48].try_into().unwrap();
    // Crash before the header named the entry: the in-place write never happened.
    f.write_all_at(&meta_old, 2 * MIB).unwrap();
    assert_eq!(name(&child), "base.vhdx");
    VhdxImage::open(&child, false).unwrap();
    // Crash after the header named it: replay gives the new locator.
    set_log_guid(&f, &l, &guid);
    assert_eq!(name(&child), "copy.vhdx");
    let v = VhdxImage::open(&child, false).unwrap();
    let mut b = [0u8; 4];
    v.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [3; 4]);
}

/// Metadata items cosnap does not know (here a user item) survive a locator rewrite.
#[test]
fn rebase_keeps_unknown_metadata_items() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let copy = dir.path().join("copy.vhdx");
    let child = dir.path().join("child.avhdx");
    vhdx::create(&base, &CreateOptions::dynamic(8 * MIB)).unwrap();
    std::fs::copy(&base, &copy).unwrap();
    vhdx::create_child(&base, &child).unwrap();
    let user_id = uuid::Uuid::new_v4();
    let value = b"kept by cosnap!!".to_vec();
    let meta = 2 * MIB; // cosnap's metadata region
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&child)
        .unwrap();
    let mut t = vec![0u8; 65536];
    f.read_exact_at(&mut t, meta).unwrap();
    let n = u16::from_le_bytes([t[10], t[11]]) as usize;
    let o = 32 + 32 * n;
    t[o..o + 16].copy_from_slice(&user_id.to_bytes_le());
    t[o + 16..o + 20].copy_from_slice(&(512u32 << 10).to_le_bytes());
    t[o + 20..o + 24].copy_from_slice(&(value.len() as u32).to_le_bytes());
    t[o + 24..o + 28].copy_from_slice(&1u32.to_le_bytes()); // IsUser
    t[10..12].copy_from_slice(&((n + 1) as u16).to_le_bytes());
    f.write_all_at(&t, meta).unwrap();
    f.write_all_at(&value, meta + (512 << 10)).unwrap();
    drop(f);
    vhdx::rebase(&child, Some(&copy)).unwrap();
    let f = std::fs::File::open(&child).unwrap();
    f.read_exact_at(&mut t, meta).unwrap();
    let n = u16::from_le_bytes([t[10], t[11]]) as usize;
    let i = (0..n)
        .find(|i| t[32 + 32 * i..48 + 32 * i] == user_id.to_bytes_le())
        .expect("user item still listed");
    let (off, len) = (le32(&t, 48 + 32 * i) as u64, le32(&t, 52 + 32 * i) as usize);
    assert_eq!(le32(&t, 56 + 32 * i) & 1, 1, "still a user item");
    let mut got = vec![0u8; len];
    f.read_exact_at(&mut got, meta + off).unwrap();
    assert_eq!(got, value);
    assert_eq!(
        vhdx::parent_path(&child)
            .unwrap()
            .unwrap()
            .file_name()
            .unwrap(),
        "copy.vhdx"
    );
}

#[test]
fn settle_replays_a_pending_log_and_leaves_clean_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.vhdx");
    let m = dirty_image(&p);
    assert!(
        cosnap_disk::settle(&p).unwrap(),
        "there was a log to replay"
    );
    let v = VhdxImage::open(&p, false).unwrap();
    assert!(!v.has_log_overlay());
    assert_model(&v, &m);
    drop(v);
    assert!(vhdx::check(&p).unwrap().corruptions.is_empty());
    // Clean now: a second settle changes nothing, not even the header.
    let before = std::fs::read(&p).unwrap();
    assert!(!cosnap_disk::settle(&p).unwrap());
    assert!(
        before == std::fs::read(&p).unwrap(),
        "settle touched a clean file"
    );
    // Other formats are never opened writable.
    let raw = dir.path().join("x.raw");
    std::fs::write(&raw, b"raw bytes").unwrap();
    assert!(!cosnap_disk::settle(&raw).unwrap());
    assert_eq!(std::fs::read(&raw).unwrap(), b"raw bytes");
}
