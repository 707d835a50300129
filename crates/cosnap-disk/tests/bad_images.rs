//! Hostile and broken images: typed errors naming the file and the defect, never a panic.

use std::os::unix::fs::FileExt;
use std::path::Path;

use cosnap_disk::{DiskError, Format, ops};
use cosnap_test_support::{ok, p, qemu_io};

fn good_qcow2(dir: &Path, name: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&img), "64M"]);
    qemu_io(&img, "qcow2", &["write -P 0xaa 0 1M"]);
    img
}

fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn open_err(path: &Path) -> DiskError {
    match ops::open(path, false) {
        Ok(img) => {
            // Some defects only show when the tables are used.
            let mut buf = vec![0u8; 1 << 20];
            match img
                .read_at(&mut buf, 0)
                .and_then(|_| img.layer_map(0, img.virtual_size()))
            {
                Ok(_) => panic!("{} opened and read without error", path.display()),
                Err(e) => e,
            }
        }
        Err(e) => e,
    }
}

fn assert_names(e: &DiskError, path: &Path, words: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(p(path)),
        "{msg:?} does not name {}",
        path.display()
    );
    assert!(msg.contains(words), "{msg:?} does not say {words:?}");
}

#[test]
fn truncated_files() {
    let d = tempfile::tempdir().unwrap();
    let img = good_qcow2(d.path(), "t.qcow2");
    for len in [0u64, 3, 50, 100, 70_000, 200_000] {
        let t = d.path().join(format!("trunc{len}.qcow2"));
        let bytes = std::fs::read(&img).unwrap();
        std::fs::write(&t, &bytes[..(len as usize).min(bytes.len())]).unwrap();
        if len < 4 {
            // No magic left: it is a (tiny) raw file.
            assert_eq!(ops::detect_format(&t).unwrap(), Format::Raw);
            continue;
        }
        let e = open_err(&t);
        assert!(matches!(e, DiskError::Corrupt { .. }), "len {len}: {e}");
        assert!(e.to_string().contains(p(&t)), "{e}");
    }
}

#[test]
fn absurd_header_fields() {
    let d = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64, &[u8], &str)] = &[
        ("cluster_bits", 20, &40u32.to_be_bytes(), "cluster_bits"),
        (
            "cluster_bits_small",
            20,
            &3u32.to_be_bytes(),
            "cluster_bits",
        ),
        ("l1_size", 36, &u32::MAX.to_be_bytes(), "L1 table"),
        ("l1_small", 36, &0u32.to_be_bytes(), "too small"),
        (
            "l1_past_eof",
            40,
            &(1u64 << 40).to_be_bytes(),
            "past the end",
        ),
        (
            "reftable_past_eof",
            48,
            &(1u64 << 40).to_be_bytes(),
            "refcount table",
        ),
        (
            "reftable_huge",
            56,
            &u32::MAX.to_be_bytes(),
            "refcount table",
        ),
        ("size", 24, &u64::MAX.to_be_bytes(), "virtual size"),
        ("l1_misaligned", 40, &0x30001u64.to_be_bytes(), "aligned"),
    ];
    for (name, off, bytes, words) in cases {
        let img = good_qcow2(d.path(), &format!("{name}.qcow2"));
        poke(&img, *off, bytes);
        let e = open_err(&img);
        assert!(matches!(e, DiskError::Corrupt { .. }), "{name}: {e}");
        assert_names(&e, &img, words);
    }
    // An L1 entry pointing past the end of the file is found when reading.
    let img = good_qcow2(d.path(), "l2_past_eof.qcow2");
    let l1_off = u64::from_be_bytes(std::fs::read(&img).unwrap()[40..48].try_into().unwrap());
    poke(&img, l1_off, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    let e = open_err(&img);
    assert_names(&e, &img, "past the end");
    // Unknown incompatible feature bits and encryption are unsupported, not misread.
    let img = good_qcow2(d.path(), "feature.qcow2");
    poke(&img, 72, &(1u64 << 40).to_be_bytes());
    assert!(matches!(open_err(&img), DiskError::Unsupported { .. }));
    let img = good_qcow2(d.path(), "crypt.qcow2");
    poke(&img, 32, &1u32.to_be_bytes());
    assert!(matches!(open_err(&img), DiskError::Unsupported { .. }));
}

#[test]
fn broken_chains() {
    let d = tempfile::tempdir().unwrap();
    // Missing backing file.
    let base = good_qcow2(d.path(), "base.qcow2");
    let top = d.path().join("top.qcow2");
    ops::create_child(&base, &top).unwrap();
    std::fs::remove_file(&base).unwrap();
    let e = ops::open(&top, false).err().unwrap();
    assert!(matches!(e, DiskError::Chain { .. }), "{e}");
    assert_names(&e, &top, "base.qcow2");
    // Loop: a → b → a.
    let a = d.path().join("a.qcow2");
    let b = d.path().join("b.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&a), "64M"]);
    ops::create_child(&a, &b).unwrap();
    ops::rebase(&a, Some(&b)).unwrap();
    let e = ops::open(&b, false).err().unwrap();
    assert!(matches!(e, DiskError::Chain { .. }), "{e}");
    assert!(e.to_string().contains("loop"), "{e}");
    // Self loop.
    let s = d.path().join("self.qcow2");
    ok("qemu-img", &["create", "-q", "-f", "qcow2", p(&s), "64M"]);
    ops::rebase(&s, Some(&s)).unwrap();
    assert!(matches!(ops::open(&s, false), Err(DiskError::Chain { .. })));
    // Structural check still works on a file whose backing is gone.
    let rep = ops::check(&top).unwrap();
    assert!(rep.corruptions.is_empty());
}

#[test]
fn random_garbage_never_panics() {
    use proptest::prelude::*;
    let d = tempfile::tempdir().unwrap();
    let img = good_qcow2(d.path(), "seed.qcow2");
    let seed = std::fs::read(&img).unwrap();
    let target = d.path().join("fuzz.qcow2");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..Default::default()
    });
    runner
        .run(
            &proptest::collection::vec((0usize..4096, any::<u8>()), 1..16),
            |edits| {
                let mut bytes = seed.clone();
                for (i, b) in edits {
                    bytes[i] = b;
                }
                std::fs::write(&target, &bytes).unwrap();
                if let Ok(img) = ops::open(&target, false) {
                    let n = img.virtual_size().min(1 << 20) as usize;
                    let mut buf = vec![0u8; n];
                    let _ = img.read_at(&mut buf, 0);
                    let _ = img.layer_map(0, img.virtual_size());
                }
                let _ = ops::check(&target);
                Ok(())
            },
        )
        .unwrap();
}
