//! `cosnap disk …` end to end: the built binary against qemu-img as the oracle.

use std::os::unix::fs::FileExt;

use cosnap_test_support::{Cli, Outcome, p, run};

/// `cosnap disk …`.
fn disk() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_cosnap")).arg("disk")
}

#[test]
fn create_write_info_check_compare() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("a.qcow2");
    disk().ok(&["create", p(&img), "--format", "qcow2", "--size", "64M"]);
    disk().ok(&[
        "write",
        p(&img),
        "--offset",
        "1M",
        "--length",
        "65536",
        "--pattern",
        "0xaa",
    ]);
    disk().ok(&[
        "write",
        p(&img),
        "--offset",
        "3000",
        "--length",
        "10",
        "--pattern",
        "17",
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&disk().ok(&["--json", "info", p(&img)])).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual_size"], 64 << 20);
    assert_eq!(info["block_size"], 65536);
    assert_eq!(info["chain"].as_array().unwrap().len(), 1);
    let text = disk().ok(&["info", p(&img)]);
    assert!(text.contains("file format: qcow2"), "{text}");
    assert!(disk().ok(&["check", p(&img)]).contains("No errors"));
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 0);
    // The same bytes made by qemu: identical; one byte off: mismatch at that offset.
    let raw = d.path().join("a.raw");
    run("qemu-img", &["create", "-f", "raw", p(&raw), "64M"]);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&[0xaa; 65536], 1 << 20).unwrap();
    f.write_all_at(&[17; 10], 3000).unwrap();
    let Outcome {
        code, stdout: out, ..
    } = disk().run(&["compare", p(&img), p(&raw)]);
    assert_eq!((code, out.trim()), (0, "Images are identical."));
    assert_eq!(
        run("qemu-img", &["compare", "-F", "raw", p(&img), p(&raw)]).0,
        0
    );
    f.write_all_at(&[1], 3005).unwrap();
    let Outcome {
        code, stdout: out, ..
    } = disk().run(&["compare", p(&img), p(&raw)]);
    assert_eq!((code, out.trim()), (1, "Content mismatch at offset 3005!"));
    let Outcome {
        code, stderr: err, ..
    } = disk().run(&["compare", p(&img), "/nonexistent.img"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn child_convert_and_map() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    disk().ok(&["create", p(&base), "--format", "raw", "--size", "32M"]);
    disk().ok(&[
        "write",
        p(&base),
        "--offset",
        "0",
        "--length",
        "2M",
        "--pattern",
        "0x11",
    ]);
    let top = d.path().join("top.qcow2");
    disk().ok(&["create", p(&top), "--format", "qcow2", "--parent", p(&base)]);
    disk().ok(&[
        "write",
        p(&top),
        "--offset",
        "1M",
        "--length",
        "2M",
        "--pattern",
        "0x22",
    ]);
    assert_eq!(run("qemu-img", &["check", p(&top)]).0, 0);
    // Wrong child format is refused with a one-line error.
    let Outcome {
        code, stderr: err, ..
    } = disk().run(&[
        "create",
        p(&d.path().join("x.raw")),
        "--format",
        "raw",
        "--parent",
        p(&base),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("must be qcow2"), "{err}");
    // Flatten to every cosnap-writable format and compare with qemu.
    for fmt in ["raw", "qcow2"] {
        let out = d.path().join(format!("flat.{fmt}"));
        disk().ok(&["convert", p(&top), p(&out), "--format", fmt]);
        let (code, o) = run("qemu-img", &["compare", p(&top), p(&out)]);
        assert_eq!(code, 0, "{fmt}: {o}");
    }
    // Only what changed above the base.
    let delta = d.path().join("delta.qcow2");
    let rep: serde_json::Value = serde_json::from_str(&disk().ok(&[
        "--json",
        "convert",
        p(&top),
        p(&delta),
        "--format",
        "qcow2",
        "--base",
        p(&base),
    ]))
    .unwrap();
    assert_eq!(
        rep["ranges"],
        serde_json::json!([{ "start": 1 << 20, "end": 3 << 20 }])
    );
    let map: serde_json::Value =
        serde_json::from_str(&disk().ok(&["--json", "map", p(&delta)])).unwrap();
    let data: Vec<(u64, u64)> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_bool().unwrap())
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(1 << 20, 2 << 20)]);
    // Map of the chain names the layer holding each range.
    let map: serde_json::Value =
        serde_json::from_str(&disk().ok(&["--json", "map", p(&top)])).unwrap();
    let first = &map.as_array().unwrap()[0];
    assert_eq!(first["depth"], 1);
    assert!(first["filename"].as_str().unwrap().ends_with("base.raw"));
}

#[test]
fn check_exit_codes_like_qemu() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("c.qcow2");
    disk().ok(&["create", p(&img), "--format", "qcow2", "--size", "16M"]);
    disk().ok(&[
        "write",
        p(&img),
        "--offset",
        "0",
        "--length",
        "1M",
        "--pattern",
        "1",
    ]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let len = f.metadata().unwrap().len();
    // Leak: an extra cluster counted but unused.
    f.set_len(len + 65536).unwrap();
    f.write_all_at(&1u16.to_be_bytes(), 2 * 65536 + (len / 65536) * 2)
        .unwrap();
    assert_eq!(disk().run(&["check", p(&img)]).code, 3);
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 3);
    // Corruption: a used cluster with refcount 0.
    f.write_all_at(&0u16.to_be_bytes(), 2 * 65536 + (len / 65536 - 1) * 2)
        .unwrap();
    assert_eq!(disk().run(&["check", p(&img)]).code, 2);
    assert_eq!(run("qemu-img", &["check", p(&img)]).0, 2);
    // Not checkable at all.
    let bad = d.path().join("bad.qcow2");
    std::fs::write(&bad, b"QFI\xfb\0\0\0\x03").unwrap();
    let Outcome {
        code, stderr: err, ..
    } = disk().run(&["check", p(&bad)]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.qcow2"), "{err}");
}

#[test]
fn argument_parsing() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("t.raw");
    disk().ok(&["create", p(&img), "--format", "raw", "--size", "1G"]);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
    let Outcome { code, .. } = disk().run(&[
        "create",
        p(&d.path().join("u.raw")),
        "--format",
        "raw",
        "--size",
        "12Q",
    ]);
    assert_eq!(code, 2);
    let Outcome { code, .. } = disk().run(&[
        "write",
        p(&img),
        "--offset",
        "0",
        "--length",
        "1",
        "--pattern",
        "0x100",
    ]);
    assert_eq!(code, 2);
    // Creating over an existing file fails and leaves it alone.
    let Outcome {
        code, stderr: err, ..
    } = disk().run(&["create", p(&img), "--format", "qcow2", "--size", "1M"]);
    assert_eq!(code, 1);
    assert!(err.contains("t.raw"), "{err}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
}
