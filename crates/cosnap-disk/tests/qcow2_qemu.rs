//! qcow2 and raw against the real oracles: qemu-img check/compare/map and qemu-io.

use std::path::Path;

use cosnap_disk::{ExtentState, Format, ops};
use cosnap_test_support::{RawModel, ok, p, qemu_check_clean, qemu_io, qemu_same, run};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Writes the same pattern into a cosnap image and the raw model.
fn write_both(img: &Path, model: &RawModel, off: u64, len: u64, byte: u8) {
    ops::write_pattern(img, off, len, byte).unwrap();
    model.write(off, len, byte);
}

#[test]
fn cosnap_qcow2_base_passes_qemu_check_and_compare() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("base.qcow2");
    let raw = d.path().join("expect.raw");
    let size = 6 * GIB;
    ops::create(&img, Format::Qcow2, size).unwrap();
    let model = RawModel::new(&raw, size);
    // Aligned, unaligned inside one cluster, spanning clusters and L2 tables, past 4 GiB.
    write_both(&img, &model, 0, 64 * 1024, 0xaa);
    write_both(&img, &model, 100_000, 3, 0x11);
    write_both(&img, &model, 512 * MIB - 5000, 10_000, 0x22);
    write_both(&img, &model, 5 * GIB + 12_345, 3 * MIB + 7, 0x33);
    write_both(&img, &model, 110_000, 40_000, 0x44); // rewrite inside allocated clusters
    // Zeros: full clusters become zero clusters, partial ones are written.
    {
        let mut i = ops::open(&img, true).unwrap();
        i.write_zeroes(5 * GIB + 64 * 1024, 256 * 1024 + 100)
            .unwrap();
        i.flush().unwrap();
    }
    model.write(5 * GIB + 64 * 1024, 256 * 1024 + 100, 0);
    qemu_check_clean(&img);
    qemu_same(&img, "qcow2", &raw);
    // cosnap reads it back the same way.
    assert_eq!(ops::compare(&img, &raw).unwrap(), None);
    // qemu-io agrees on a pattern past 4 GiB.
    ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "qcow2",
            "-c",
            "read -P 0x33 5368721465 4096",
            p(&img),
        ],
    );
}

#[test]
fn overlays_on_qcow2_and_raw_bases() {
    for base_fmt in ["qcow2", "raw"] {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("b")).unwrap();
        let base = d.path().join("b").join(format!("base.{base_fmt}"));
        ok(
            "qemu-img",
            &["create", "-q", "-f", base_fmt, p(&base), "256M"],
        );
        qemu_io(
            &base,
            base_fmt,
            &["write -P 0xaa 0 4M", "write -P 0x55 100M 1M"],
        );
        let raw = d.path().join("expect.raw");
        let model = RawModel::new(&raw, 256 * MIB);
        model.write(0, 4 * MIB, 0xaa);
        model.write(100 * MIB, MIB, 0x55);
        std::fs::create_dir(d.path().join("o")).unwrap();
        let top = d.path().join("o").join("top.qcow2");
        assert_eq!(ops::create_child(&base, &top).unwrap(), Format::Qcow2);
        write_both(&top, &model, 1000, 5000, 0x77);
        write_both(&top, &model, 100 * MIB + 4096, 8192, 0x66);
        qemu_check_clean(&top);
        qemu_same(&top, "qcow2", &raw);
        let info = ok("qemu-img", &["info", "--output=json", p(&top)]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["backing-filename"], format!("../b/base.{base_fmt}"));
        assert_eq!(v["backing-filename-format"], base_fmt);
        assert_eq!(ops::chain(&top).unwrap().len(), 2);
    }
}

#[test]
fn reads_qemu_images_byte_for_byte() {
    for cluster in ["4k", "64k", "2M"] {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.qcow2");
        let top = d.path().join("top.qcow2");
        ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster}"),
                p(&base),
                "5G",
            ],
        );
        qemu_io(
            &base,
            "qcow2",
            &[
                "write -P 0xaa 0 3M",
                "write -P 0x5a 4294967000 70000",
                "write -P 0x42 5000M 1M",
            ],
        );
        ok(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster}"),
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                p(&top),
            ],
        );
        qemu_io(
            &top,
            "qcow2",
            &[
                "write -P 0x11 1M 64k",
                "write -z 5000M 512k",
                "write -P 0x12 4294967296 4096",
            ],
        );
        let flat = d.path().join("flat.raw");
        ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&flat)]);
        assert_eq!(
            ops::compare(&top, &flat).unwrap(),
            None,
            "cluster {cluster}"
        );
        // A differing byte is found at its offset.
        qemu_io(&flat, "raw", &["write -P 0x99 4294967300 1"]);
        assert_eq!(
            ops::compare(&top, &flat).unwrap(),
            Some(4294967300),
            "cluster {cluster}"
        );
        qemu_map_agrees(&top);
        qemu_map_agrees(&base);
    }
}

/// `qemu-img map --output=json` and cosnap's chain map agree on data/zero/unallocated ranges
/// (and host offsets for the top layer).
fn qemu_map_agrees(img: &Path) {
    let out = ok("qemu-img", &["map", "--output=json", p(img)]);
    let qemu: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let opened = ops::open(img, false).unwrap();
    let ours = ops::chain_map(opened.as_ref(), 0, opened.virtual_size()).unwrap();
    // Compare byte by byte on a grid of boundaries: both lists as (start, end, class).
    let class_q = |e: &serde_json::Value| -> (u64, u64, u8, u64) {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let c = if e["data"].as_bool().unwrap() {
            1
        } else if e["present"].as_bool().unwrap() {
            2
        } else {
            0
        };
        let depth = e["depth"].as_u64().unwrap();
        (
            start,
            start + len,
            c,
            if c == 1 && depth == 0 {
                e["offset"].as_u64().unwrap()
            } else {
                0
            },
        )
    };
    let q: Vec<_> = qemu.iter().map(class_q).collect();
    let o: Vec<(u64, u64, u8, u64)> = ours
        .iter()
        .map(|e| {
            let c = match e.state {
                ExtentState::Data { .. } => 1,
                ExtentState::Zero => 2,
                ExtentState::Inherited => 0,
            };
            let h = match e.state {
                ExtentState::Data {
                    host_offset: Some(h),
                } if e.depth == 0 => h,
                _ => 0,
            };
            (e.offset, e.offset + e.len, c, h)
        })
        .collect();
    let mut cuts: Vec<u64> = q
        .iter()
        .flat_map(|x| [x.0, x.1])
        .chain(o.iter().flat_map(|x| [x.0, x.1]))
        .collect();
    cuts.sort();
    cuts.dedup();
    let find =
        |v: &[(u64, u64, u8, u64)], at: u64| v.iter().find(|x| x.0 <= at && at < x.1).copied();
    for w in cuts.windows(2) {
        let (a, b) = (find(&q, w[0]).unwrap(), find(&o, w[0]).unwrap());
        assert_eq!(
            a.2,
            b.2,
            "{}: class differs at {:#x}: qemu {a:?} cosnap {b:?}",
            img.display(),
            w[0]
        );
        if a.2 == 1 && a.3 != 0 {
            assert_eq!(
                a.3 + (w[0] - a.0),
                b.3 + (w[0] - b.0),
                "{}: host offset at {:#x}",
                img.display(),
                w[0]
            );
        }
    }
}

#[test]
fn raw_map_agrees_with_qemu() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("d.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", p(&img), "64M"]);
    qemu_io(&img, "raw", &["write -P 1 1M 1M", "write -P 2 10M 64k"]);
    let out = ok("qemu-img", &["map", "--output=json", "-f", "raw", p(&img)]);
    let qemu: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let data_q: Vec<(u64, u64)> = qemu
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        // qemu-img create writes the first 4 KiB of a raw file (for its alignment probe) and
        // always maps it as data; whether the file system still shows it varies: skip it.
        .filter(|&(s, l)| (s, l) != (0, 4096))
        .collect();
    let ours = ops::open(&img, false)
        .unwrap()
        .layer_map(0, 64 * MIB)
        .unwrap();
    let data_o: Vec<(u64, u64)> = ours
        .iter()
        .filter_map(|e| match e.state {
            ExtentState::Data { host_offset } => {
                assert_eq!(host_offset, Some(e.offset));
                Some((e.offset, e.len))
            }
            _ => None,
        })
        .filter(|&(s, l)| (s, l) != (0, 4096))
        .collect();
    assert_eq!(data_q, data_o);
    assert_eq!(data_o, vec![(MIB, MIB), (10 * MIB, 64 * 1024)]);
}

#[test]
fn compressed_clusters_are_read() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src.raw");
    ok("qemu-img", &["create", "-q", "-f", "raw", p(&src), "32M"]);
    qemu_io(
        &src,
        "raw",
        &["write -P 0x61 0 3M", "write -P 0x62 20M 100k"],
    );
    let comp = d.path().join("c.qcow2");
    ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", p(&src), p(&comp)],
    );
    assert_eq!(ops::compare(&comp, &src).unwrap(), None);
    // And the map calls them data without a host offset.
    let map = ops::map(&comp).unwrap();
    assert!(
        map.iter()
            .any(|e| e.state == ExtentState::Data { host_offset: None })
    );
    // cosnap's refcount check counts compressed clusters like qemu: clean.
    let rep = ops::check(&comp).unwrap();
    assert!(
        rep.corruptions.is_empty() && rep.leaks.is_empty(),
        "{rep:?}"
    );
}

#[test]
fn commit_pull_rebase_keep_guest_bytes() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    let mid = d.path().join("mid.qcow2");
    let top = d.path().join("top.qcow2");
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&base), "128M"],
    );
    qemu_io(
        &base,
        "qcow2",
        &["write -P 0xaa 0 8M", "write -P 0xbb 64M 2M"],
    );
    ops::create_child(&base, &mid).unwrap();
    ops::write_pattern(&mid, 4 * MIB, 2 * MIB + 17, 0x11).unwrap();
    {
        let mut m = ops::open(&mid, true).unwrap();
        m.write_zeroes(64 * MIB, MIB).unwrap();
        m.flush().unwrap();
    }
    ops::create_child(&mid, &top).unwrap();
    ops::write_pattern(&top, 5 * MIB, 100_000, 0x22).unwrap();
    ops::write_pattern(&top, 100 * MIB, 3 * MIB, 0x33).unwrap();
    let expect = d.path().join("expect.raw");
    ok("qemu-img", &["convert", "-O", "raw", p(&top), p(&expect)]);
    let mid_expect = d.path().join("mid.raw");
    ok(
        "qemu-img",
        &["convert", "-O", "raw", p(&mid), p(&mid_expect)],
    );

    // pull: top takes what it inherits from mid, then points at base.
    ops::pull(&top).unwrap();
    qemu_check_clean(&top);
    qemu_same(&top, "qcow2", &expect);
    let chain = ops::chain(&top).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].file_name(), base.file_name());
    // mid is untouched.
    qemu_same(&mid, "qcow2", &mid_expect);

    // commit: top's data merged into base; top still shows the same bytes; base alone too.
    ops::commit(&top).unwrap();
    qemu_check_clean(&base);
    qemu_same(&top, "qcow2", &expect);
    qemu_same(&base, "qcow2", &expect);
    // Re-running a commit is harmless (what crash recovery does).
    ops::commit(&top).unwrap();
    qemu_same(&base, "qcow2", &expect);
    qemu_check_clean(&base);

    // rebase to none after the commit: top now standalone only where it holds data, so
    // compare its changed ranges instead; rebase back keeps the bytes.
    ops::rebase(&top, None).unwrap();
    assert_eq!(ops::chain(&top).unwrap().len(), 1);
    ops::rebase(&top, Some(&base)).unwrap();
    qemu_same(&top, "qcow2", &expect);
    qemu_check_clean(&top);
}

#[test]
fn persistent_bitmaps_are_never_destroyed() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("bm.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&img), "64M"]);
    ok("qemu-img", &["bitmap", "--add", p(&img), "cbt0"]);
    let before = std::fs::read(&img).unwrap();
    let err = ops::write_pattern(&img, 0, 4096, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bitmap"), "{err}");
    assert!(err.contains("bm.qcow2"), "{err}");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "refused open must not touch the file"
    );
    let info = ok("qemu-img", &["info", "--output=json", p(&img)]);
    assert!(info.contains("cbt0"), "{info}");
    qemu_check_clean(&img);
    // Read-only use is fine, and creating an overlay on it is fine.
    assert!(ops::open(&img, false).is_ok());
    let top = d.path().join("top.qcow2");
    ops::create_child(&img, &top).unwrap();
    ops::write_pattern(&top, 0, 4096, 1).unwrap();
    assert!(ok("qemu-img", &["info", p(&img)]).contains("cbt0"));
    // cosnap's own check counts bitmap clusters: clean.
    let rep = ops::check(&img).unwrap();
    assert!(
        rep.corruptions.is_empty() && rep.leaks.is_empty(),
        "{rep:?}"
    );
}

#[test]
fn check_agrees_with_qemu_on_leaks_and_corruption() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("c.qcow2");
    ops::create(&img, Format::Qcow2, 64 * MIB).unwrap();
    ops::write_pattern(&img, 0, 3 * MIB, 7).unwrap();
    let rep = ops::check(&img).unwrap();
    assert!(
        rep.corruptions.is_empty() && rep.leaks.is_empty(),
        "{rep:?}"
    );
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    // The refcount block is cluster 2 in cosnap's layout; `last` is the last data cluster.
    let len = f.metadata().unwrap().len();
    let last = len / 65536 - 1;
    // Refcount 2 on a cluster whose L2 entry says "copied" (refcount 1): corruption (rc 2).
    f.write_all_at(&2u16.to_be_bytes(), 2 * 65536 + last * 2)
        .unwrap();
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 2);
    assert!(!ops::check(&img).unwrap().corruptions.is_empty());
    f.write_all_at(&1u16.to_be_bytes(), 2 * 65536 + last * 2)
        .unwrap();
    // Leak: one more cluster with refcount 1 that nothing uses — qemu says leak (rc 3).
    f.set_len(len + 65536).unwrap();
    f.write_all_at(&1u16.to_be_bytes(), 2 * 65536 + (last + 1) * 2)
        .unwrap();
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 3);
    let rep = ops::check(&img).unwrap();
    assert!(
        rep.corruptions.is_empty() && !rep.leaks.is_empty(),
        "{rep:?}"
    );
    // Corruption: refcount 0 for a used cluster — qemu rc 2.
    f.write_all_at(&0u16.to_be_bytes(), 2 * 65536 + last * 2)
        .unwrap();
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 2);
    let rep = ops::check(&img).unwrap();
    assert!(!rep.corruptions.is_empty(), "{rep:?}");
}

#[test]
fn qemu_checks_image_cosnap_filled_past_first_refcount_block() {
    // 512-byte clusters: each refcount block covers 128 KiB, so writes must add refcount
    // blocks and grow the refcount table.
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("small.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            p(&img),
            "64M",
        ],
    );
    let raw = d.path().join("e.raw");
    let model = RawModel::new(&raw, 64 * MIB);
    write_both(&img, &model, 0, 12 * MIB, 0x5c);
    write_both(&img, &model, 40 * MIB + 3, 1000, 0x5d);
    qemu_check_clean(&img);
    qemu_same(&img, "qcow2", &raw);
}

#[test]
fn qcow2_overlay_on_a_vhdx_base() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.vhdx");
    ok("qemu-img", &["create", "-q", "-f", "vhdx", p(&base), "64M"]);
    qemu_io(&base, "vhdx", &["write -P 0xaa 0 3M"]);
    let top = d.path().join("top.qcow2");
    ops::create_qcow2_overlay(&base, &top).unwrap();
    ops::write_pattern(&top, MIB, 4096, 0x42).unwrap();
    qemu_check_clean(&top);
    let raw = d.path().join("e.raw");
    let model = RawModel::new(&raw, 64 * MIB);
    model.write(0, 3 * MIB, 0xaa);
    model.write(MIB, 4096, 0x42);
    qemu_same(&top, "qcow2", &raw);
    assert_eq!(ops::compare(&top, &raw).unwrap(), None);
    let info = ok("qemu-img", &["info", "--output=json", p(&top)]);
    assert!(
        info.contains("\"backing-filename-format\": \"vhdx\""),
        "{info}"
    );
}
