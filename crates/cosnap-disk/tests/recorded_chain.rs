//! `open_chain`: layers opened with the formats the caller recorded, parents checked
//! against the record, nothing probed or followed.

use std::os::unix::fs::FileExt;
use std::path::Path;

use cosnap_disk::{Format, LayerSpec, open_chain};
use cosnap_test_support::{qcow2_overlay, qcow2_rebase_unsafe};

const MIB: u64 = 1 << 20;

fn spec(p: &Path, f: Format) -> LayerSpec {
    LayerSpec::new(p, f)
}

fn err(layers: &[LayerSpec]) -> String {
    match open_chain(layers, false) {
        Ok(_) => panic!("{layers:?} opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_raw_layer_is_raw_whatever_its_bytes_say() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, vec![0x5a; MIB as usize]).unwrap();
    let lure = tmp.path().join("lure.qcow2");
    qcow2_overlay(&lure, &secret, "raw", "4M");
    let raw = tmp.path().join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(4 * MIB).unwrap();
    f.write_all_at(&std::fs::read(&lure).unwrap(), 0).unwrap();

    let img = open_chain(&[spec(&raw, Format::Raw)], false).unwrap();
    assert_eq!(img.format(), Format::Raw);
    assert!(img.parent().is_none());
    let mut buf = vec![0u8; 4096];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..4], b"QFI\xfb", "its own bytes, header and all");

    // The same bytes recorded as qcow2 with no parent: the backing reference is refused.
    let e = err(&[spec(&raw, Format::Qcow2)]);
    assert!(e.contains("refusing to follow"), "{e}");
    // A raw layer cannot have a recorded parent.
    let e = err(&[spec(&raw, Format::Raw), spec(&secret, Format::Raw)]);
    assert!(e.contains("cannot have a parent"), "{e}");
}

#[test]
fn qcow2_backing_references_must_match_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = dir.join("base.qcow2");
    let other = dir.join("other.raw");
    std::fs::write(&other, vec![0x5a; MIB as usize]).unwrap();
    cosnap_disk::create(&base, Format::Qcow2, 4 * MIB).unwrap();
    let top = dir.join("top.qcow2");
    cosnap_disk::create_child_of(&[spec(&base, Format::Qcow2)], &top).unwrap();
    let chain = [spec(&top, Format::Qcow2), spec(&base, Format::Qcow2)];
    assert_eq!(
        cosnap_disk::layers(open_chain(&chain, false).unwrap().as_ref()).len(),
        2
    );

    // Recorded parent's format differs from the backing format the file records.
    let e = err(&[spec(&top, Format::Qcow2), spec(&base, Format::Raw)]);
    assert!(e.contains("backing format"), "{e}");
    // The record knows a parent the file does not name (and the other way round).
    let e = err(&[spec(&base, Format::Qcow2), spec(&other, Format::Raw)]);
    assert!(e.contains("has no backing file"), "{e}");
    let e = err(&[spec(&top, Format::Qcow2)]);
    assert!(e.contains("not a recorded parent"), "{e}");

    // Rewritten to another file.
    qcow2_rebase_unsafe(&top, &other, "raw");
    let e = err(&chain);
    assert!(e.contains("refusing to follow"), "{e}");
    // Rewritten without a backing format (its header extension renamed to an unknown
    // one, which readers skip): nothing is guessed.
    qcow2_rebase_unsafe(&top, &base, "qcow2");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&top)
        .unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    let at = head
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    f.write_all_at(&[0x0c, 0x05, 0x4a, 0x70], at as u64)
        .unwrap();
    let e = err(&chain);
    assert!(e.contains("without a backing format"), "{e}");

    // A chain that lists one file twice is refused before anything is opened.
    let e = err(&[spec(&base, Format::Qcow2), spec(&base, Format::Qcow2)]);
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn vhdx_parent_locators_must_match_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = dir.join("a.vhdx");
    let b = dir.join("b.vhdx");
    cosnap_disk::create(&a, Format::Vhdx, 8 * MIB).unwrap();
    cosnap_disk::create(&b, Format::Vhdx, 8 * MIB).unwrap();
    let child = dir.join("c.avhdx");
    assert_eq!(
        cosnap_disk::create_child_of(&[spec(&a, Format::Vhdx)], &child).unwrap(),
        Format::Vhdx
    );
    open_chain(&[spec(&child, Format::Vhdx), spec(&a, Format::Vhdx)], true).unwrap();

    let e = err(&[spec(&child, Format::Vhdx), spec(&b, Format::Vhdx)]);
    assert!(e.contains("parent locator names"), "{e}");
    let e = err(&[spec(&child, Format::Vhdx)]);
    assert!(e.contains("no parent is recorded"), "{e}");
    let e = err(&[spec(&a, Format::Vhdx), spec(&b, Format::Vhdx)]);
    assert!(e.contains("not a differencing image"), "{e}");
}
