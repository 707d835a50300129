//! qcow2 persistent dirty bitmaps written by qemu, read by cosnap: the dirty ranges must be
//! the writes made (aligned to the granularity) and what qemu itself reports over NBD.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use cosnap_disk::qcow2::{self, ChangeInfo, LostReason};
use cosnap_disk::{DiskError, ops};
use cosnap_test_support::{ok, p, qemu_io, require_qemu, run};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const KIB64: u64 = 64 * 1024;

/// A 1 GiB qcow2 made by qemu-img with the given bitmaps added (name, granularity flag).
fn image_with_bitmaps(dir: &Path, bitmaps: &[(&str, &str)]) -> std::path::PathBuf {
    let img = dir.join("disk.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&img), "1G"]);
    for (name, granularity) in bitmaps {
        ok(
            "qemu-img",
            &["bitmap", "--add", "-g", granularity, p(&img), name],
        );
    }
    img
}

/// The writes of the main test, as (offset, length).
const WRITES: [(u64, u64); 4] = [
    (4 * MIB, 4096),
    (512 * MIB, 128 * 1024),
    (700 * MIB, KIB64),
    (1_000_000, 100),
];

/// An image with the bitmaps "b64k" and "b1m" (64 KiB and 1 MiB granules) that recorded
/// [`WRITES`], made through qemu-io (offline, so enabled bitmaps record them).
fn tracked_image_with_writes(dir: &Path) -> std::path::PathBuf {
    let img = image_with_bitmaps(dir, &[("b64k", "64K"), ("b1m", "1M")]);
    let commands = write_commands();
    qemu_io(
        &img,
        "qcow2",
        &commands.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    img
}

fn write_commands() -> Vec<String> {
    vec![
        format!("write -P 1 {} {}", WRITES[0].0, WRITES[0].1),
        format!("write {} {}", WRITES[1].0, WRITES[1].1),
        // A zero-write counts as dirty too.
        format!("write -z {} {}", WRITES[2].0, WRITES[2].1),
        format!("write {} {}", WRITES[3].0, WRITES[3].1),
    ]
}

/// The writes widened to whole granules, sorted and merged.
fn expected(writes: &[(u64, u64)], granularity: u64) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = writes
        .iter()
        .map(|&(o, l)| o / granularity * granularity..(o + l).div_ceil(granularity) * granularity)
        .collect();
    ranges.sort_by_key(|r| r.start);
    ops::merge_ranges(ranges)
}

/// qemu's own view of bitmap `name`: exported by qemu-nbd, mapped by qemu-img, where dirty
/// extents come back as `"data": false`.
fn qemu_dirty_ranges(img: &Path, name: &str) -> Vec<Range<u64>> {
    let dir = img.parent().unwrap();
    let sock = dir.join(format!("{name}.sock"));
    let pid_file = dir.join(format!("{name}.pid"));
    ok(
        "qemu-nbd",
        &[
            "-r",
            "-f",
            "qcow2",
            "-B",
            name,
            "-k",
            p(&sock),
            "--fork",
            "--pid-file",
            p(&pid_file),
            p(img),
        ],
    );

    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:{name}",
        sock.display()
    );
    let (code, out) = run("qemu-img", &["map", "--output=json", "--image-opts", &opts]);
    stop_nbd_server(&pid_file);
    assert_eq!(code, 0, "qemu-img map over NBD: {out}");

    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let dirty = map
        .iter()
        .filter(|e| e["data"] == false)
        .map(|e| {
            let start = e["start"].as_u64().unwrap();
            start..start + e["length"].as_u64().unwrap()
        })
        .collect();
    ops::merge_ranges(dirty)
}

/// qemu-nbd exits after its one client; kill it by pid in case it did not.
fn stop_nbd_server(pid_file: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
}

fn known(info: ChangeInfo) -> Vec<Range<u64>> {
    match info {
        ChangeInfo::Known(r) => r,
        ChangeInfo::Lost(why) => panic!("change information lost: {why}"),
    }
}

#[test]
fn dirty_ranges_equal_the_writes_and_qemus_map() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = tracked_image_with_writes(d.path());

    let listed = qcow2::list_bitmaps(&img).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].granularity),
        ("b64k", KIB64)
    );
    assert_eq!(
        (listed[1].name.as_str(), listed[1].granularity),
        ("b1m", MIB)
    );
    assert!(listed.iter().all(|b| b.auto && !b.in_use && b.readable));

    for (name, granularity) in [("b64k", KIB64), ("b1m", MIB)] {
        let ours = known(qcow2::dirty_ranges(&img, name).unwrap());
        assert_eq!(ours, expected(&WRITES, granularity), "bitmap {name}");
        assert_eq!(
            ours,
            qemu_dirty_ranges(&img, name),
            "bitmap {name} against qemu"
        );
    }
}

#[test]
fn disabled_bitmap_ignores_writes_and_merge_copies_bits() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = image_with_bitmaps(d.path(), &[("on", "64K"), ("off", "64K")]);
    ok("qemu-img", &["bitmap", "--disable", p(&img), "off"]);
    qemu_io(&img, "qcow2", &["write 0 4k", "write 300M 64k"]);
    ok("qemu-img", &["bitmap", "--merge", "on", p(&img), "off"]);
    qemu_io(&img, "qcow2", &["write 2M 4k"]);

    let listed = qcow2::list_bitmaps(&img).unwrap();
    let off = listed.iter().find(|b| b.name == "off").unwrap();
    assert!(!off.auto, "a disabled bitmap is not auto");
    // "off" holds the merged bits of "on" from before the last write, and not that write.
    assert_eq!(
        known(qcow2::dirty_ranges(&img, "off").unwrap()),
        expected(&[(0, 4096), (300 * MIB, KIB64)], KIB64)
    );
    assert_eq!(
        known(qcow2::dirty_ranges(&img, "on").unwrap()),
        expected(&[(0, 4096), (2 * MIB, 4096), (300 * MIB, KIB64)], KIB64)
    );
}

#[test]
fn a_large_image_past_one_bitmap_cluster_maps_right() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("big.qcow2");
    // 40 GiB at 64 KiB granularity = 655,360 bits: two data clusters of 524,288 bits each.
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&img), "40G"]);
    ok("qemu-img", &["bitmap", "--add", p(&img), "b"]);
    let writes = [
        (0, 4096),
        (32 * GIB - 4096, 8192),
        (40 * GIB - KIB64, KIB64),
    ];
    let commands: Vec<String> = writes
        .iter()
        .map(|(o, l)| format!("write -z {o} {l}"))
        .collect();
    qemu_io(
        &img,
        "qcow2",
        &commands.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let ours = known(qcow2::dirty_ranges(&img, "b").unwrap());
    assert_eq!(ours, expected(&writes, KIB64));
    assert_eq!(ours, qemu_dirty_ranges(&img, "b"));
}

#[test]
fn in_use_missing_and_inconsistent_bitmaps_are_lost_not_errors() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = image_with_bitmaps(d.path(), &[("b", "64K")]);

    assert_eq!(
        qcow2::dirty_ranges(&img, "nope").unwrap(),
        ChangeInfo::Lost(LostReason::Missing)
    );

    // qemu-io killed while it holds the image leaves the bitmap flagged in use.
    let (code, _) = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write 0 4k",
            "-c",
            "sigraise 9",
            p(&img),
        ],
    );
    assert_ne!(code, 0, "qemu-io should have been killed");
    assert!(qcow2::list_bitmaps(&img).unwrap()[0].in_use);
    assert_eq!(
        qcow2::dirty_ranges(&img, "b").unwrap(),
        ChangeInfo::Lost(LostReason::InUse)
    );

    // Autoclear bit 0 cleared, as a program without bitmap support does.
    let other = d.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let fresh = image_with_bitmaps(&other, &[("b", "64K")]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fresh)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 95).unwrap();
    file.write_all_at(&[byte[0] & !1], 95).unwrap();
    assert_eq!(
        qcow2::dirty_ranges(&fresh, "b").unwrap(),
        ChangeInfo::Lost(LostReason::Inconsistent)
    );
}

#[test]
fn image_without_bitmaps_lists_none() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = image_with_bitmaps(d.path(), &[]);
    assert!(qcow2::list_bitmaps(&img).unwrap().is_empty());
    assert_eq!(
        qcow2::dirty_ranges(&img, "b").unwrap(),
        ChangeInfo::Lost(LostReason::Missing)
    );
}

#[test]
fn all_ones_table_entry_marks_everything_as_qemu_reads_it() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = image_with_bitmaps(d.path(), &[("b", "64K")]);
    qemu_io(&img, "qcow2", &["write 0 4k"]);
    let table = qcow2::list_bitmaps(&img).unwrap()[0].table_offset;

    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    file.write_all_at(&1u64.to_be_bytes(), table).unwrap();
    drop(file);

    let ours = known(qcow2::dirty_ranges(&img, "b").unwrap());
    assert_eq!(ours, vec![0..GIB]);
    assert_eq!(ours, qemu_dirty_ranges(&img, "b"));
}

#[test]
fn damaged_tables_are_corrupt_errors() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = image_with_bitmaps(d.path(), &[("b", "64K")]);
    qemu_io(&img, "qcow2", &["write 0 4k"]);
    let table = qcow2::list_bitmaps(&img).unwrap()[0].table_offset;
    let file = std::fs::OpenOptions::new().write(true).open(&img).unwrap();

    // A data cluster past the end of the file.
    file.write_all_at(&(1u64 << 40).to_be_bytes(), table)
        .unwrap();
    let err = qcow2::dirty_ranges(&img, "b").unwrap_err();
    assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");

    // Reserved bits in a table entry.
    file.write_all_at(&(1u64 << 60).to_be_bytes(), table)
        .unwrap();
    let err = qcow2::dirty_ranges(&img, "b").unwrap_err();
    assert!(err.to_string().contains("table entry 0"), "{err}");
}

/// Giving up an image's change tracking: the bitmaps are gone for qemu and for cosnap, their
/// clusters freed (qemu-img check clean, no leaks), the data unchanged, and the image can be
/// written by cosnap; a second call changes nothing.
#[test]
fn forgotten_bitmaps_leave_a_clean_writable_image_with_the_same_data() {
    require_qemu!();
    let d = tempfile::tempdir().unwrap();
    let img = tracked_image_with_writes(d.path());
    let before = d.path().join("before.qcow2");
    ok("cp", &["--sparse=always", p(&img), p(&before)]);
    assert!(
        ops::open(&img, true).is_err(),
        "bitmaps refuse a writable open"
    );

    assert_eq!(qcow2::forget_bitmaps(&img).unwrap(), 2);

    assert!(qcow2::list_bitmaps(&img).unwrap().is_empty());
    assert!(matches!(
        qcow2::dirty_ranges(&img, "b64k").unwrap(),
        ChangeInfo::Lost(LostReason::Missing)
    ));
    let info = ok("qemu-img", &["info", "--output=json", p(&img)]);
    assert!(!info.contains("bitmaps"), "{info}");
    ok("qemu-img", &["check", p(&img)]);
    ok("qemu-img", &["compare", p(&before), p(&img)]);
    assert_eq!(qcow2::forget_bitmaps(&img).unwrap(), 0);

    let mut image = ops::open(&img, true).unwrap();
    image.write_at(&[9u8; 4096], 8 * MIB).unwrap();
    image.flush().unwrap();
    drop(image);
    ok("qemu-img", &["check", p(&img)]);
    qemu_io(&img, "qcow2", &["read -P 9 8M 4k", "read -P 1 4M 4k"]);
}
