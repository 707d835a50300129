//! Differencing chains (.avhdx): reads through 3 layers with partly present blocks,
//! cross-checked by the independent `vhdx-core` reader; commit (with simulated crashes),
//! rebase, and a property test against an in-memory model.

use std::path::{Path, PathBuf};

use cosnap_disk::vhdx::{self, CommitStep, CreateOptions, VhdxImage};
use cosnap_disk::{DiskError, ExtentState, Image};
use cosnap_test_support::*;

const MIB: u64 = 1 << 20;

fn base_opts(size: u64, bs: u64) -> CreateOptions {
    let mut o = CreateOptions::dynamic(size);
    o.block_size = bs as u32;
    o
}

fn write(path: &Path, model: &mut Model, off: u64, data: &[u8]) {
    let mut img = VhdxImage::open(path, true).unwrap();
    img.write_at(data, off).unwrap();
    img.flush().unwrap();
    model.write(off, data);
}

fn zero(path: &Path, model: &mut Model, off: u64, len: u64) {
    let mut img = VhdxImage::open(path, true).unwrap();
    img.write_zeroes(off, len).unwrap();
    img.flush().unwrap();
    model.write(off, &vec![0u8; len as usize]);
}

fn read_all(img: &dyn Image) -> Vec<u8> {
    let mut buf = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut buf, 0).unwrap();
    buf
}

fn assert_reads(path: &Path, model: &Model) {
    let img = VhdxImage::open(path, false).unwrap();
    let got = read_all(&img);
    let want = model.read(0, model.size as usize);
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{}: first difference at byte {i}: got {:#x} want {:#x}",
            path.display(),
            got[i],
            want[i]
        );
    }
}

/// Opens a chain with vhdx-core, passing each parent in by hand (top first in `layers`).
fn vhdx_core_read(layers: &[PathBuf]) -> Vec<u8> {
    use std::io::Read;
    let mut reader: Option<vhdx_core::VhdxReader> = None;
    for p in layers.iter().rev() {
        let data = std::fs::read(p).unwrap();
        reader = Some(match reader {
            None => vhdx_core::VhdxReader::from_bytes(data).unwrap(),
            Some(parent) => vhdx_core::VhdxReader::from_bytes_with_parent(data, parent).unwrap(),
        });
    }
    let mut r = reader.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// base ← c1 ← c2 with full, partial (sub-sector, unaligned, block-crossing) and zero
/// writes in every layer.
fn build_chain(dir: &Path) -> (Vec<PathBuf>, Model) {
    let size = 40 * MIB;
    let base = dir.join("base.vhdx");
    let c1 = dir.join("c1.avhdx");
    let c2 = dir.join("c2.avhdx");
    vhdx::create(&base, &base_opts(size, 2 * MIB)).unwrap();
    let mut m = Model::new(size);
    write(&base, &mut m, 0, &pattern(1, 6 * MIB as usize));
    write(&base, &mut m, 20 * MIB + 3, &pattern(2, 3 * MIB as usize));
    write(&base, &mut m, size - 4096, &pattern(3, 4096));
    vhdx::create_child(&base, &c1).unwrap();
    write(&c1, &mut m, 100, &pattern(4, 1000)); // sub-sector edges, partial block
    write(&c1, &mut m, 2 * MIB, &pattern(5, 2 * MIB as usize)); // whole block
    write(&c1, &mut m, 5 * MIB - 777, &pattern(6, 5000)); // crosses a block boundary
    zero(&c1, &mut m, 20 * MIB, 2 * MIB); // whole block ZERO hides the parent
    zero(&c1, &mut m, 22 * MIB + 512, 1024); // partial zero over parent data
    vhdx::create_child(&c1, &c2).unwrap();
    write(&c2, &mut m, 4096 + 17, &pattern(7, 300));
    write(&c2, &mut m, 30 * MIB, &pattern(8, MIB as usize + 4096));
    write(&c2, &mut m, 5 * MIB - 100, &pattern(9, 50));
    (vec![c2, c1, base], m)
}

#[test]
fn three_deep_chain_reads_match_model_and_vhdx_core() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, model) = build_chain(dir.path());
    assert_reads(&layers[0], &model);
    let theirs = vhdx_core_read(&layers);
    assert_eq!(theirs.len() as u64, model.size);
    assert!(
        theirs == model.read(0, model.size as usize),
        "vhdx-core disagrees with the model"
    );
    // The middle layer alone (with its base) too.
    let top = VhdxImage::open(&layers[0], false).unwrap();
    assert_eq!(
        vhdx::parent_path(&layers[0]).unwrap().unwrap().file_name(),
        layers[1].file_name()
    );
    assert!(top.is_differencing());
    // layer_map of c2: partially present block 0 has exactly the written sectors as data.
    let map = top.layer_map(0, 2 * MIB).unwrap();
    let data: Vec<_> = map
        .iter()
        .filter(|e| matches!(e.state, ExtentState::Data { .. }))
        .collect();
    assert_eq!(data.len(), 1, "{map:?}");
    assert_eq!((data[0].offset, data[0].len), (4096, 512));
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), 2 * MIB);
    let c1 = top.vhdx_parent().unwrap();
    assert_eq!(
        c1.layer_map(20 * MIB, 2 * MIB).unwrap()[0].state,
        ExtentState::Zero
    );
    assert_eq!(c1.layer_map(2 * MIB, 2 * MIB).unwrap().len(), 1);
    assert_eq!(
        c1.layer_map(10 * MIB, MIB).unwrap()[0].state,
        ExtentState::Inherited
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn commit_merges_and_survives_a_crash_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, model) = build_chain(dir.path());
    // Count the steps of a full run on a copy, then crash after each of them.
    let mut steps = Vec::new();
    {
        let d = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), d.path());
        vhdx::commit_with_hook(&d.path().join("c2.avhdx"), &mut |s| {
            steps.push(s);
            true
        })
        .unwrap();
    }
    assert_eq!(steps[0], CommitStep::LinkageWritten);
    assert_eq!(*steps.last().unwrap(), CommitStep::ParentFlushed);
    for stop in 0..steps.len() {
        let d = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), d.path());
        let c2 = d.path().join("c2.avhdx");
        let c1 = d.path().join("c1.avhdx");
        let mut k = 0;
        vhdx::commit_with_hook(&c2, &mut |_| {
            k += 1;
            k <= stop
        })
        .unwrap();
        // After the "crash" the chain from c2 still shows exactly the same bytes.
        assert_reads(&c2, &model);
        // Re-running the commit completes it.
        vhdx::commit(&c2).unwrap();
        assert_reads(&c2, &model);
        assert_reads(&c1, &model);
    }
    // The real thing, then delete c2: c1 alone shows what c2 showed.
    vhdx::commit(&layers[0]).unwrap();
    std::fs::remove_file(&layers[0]).unwrap();
    assert_reads(&layers[1], &model);
    let report = vhdx::check(&layers[1]).unwrap();
    assert!(
        report.corruptions.is_empty() && report.leaks.is_empty(),
        "{report:?}"
    );
}

#[test]
fn commit_middle_layer_then_rebase_grandchild() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, model) = build_chain(dir.path());
    let (c2, c1, base) = (&layers[0], &layers[1], &layers[2]);
    vhdx::commit(c1).unwrap();
    // c2 → c1 → base is still a valid chain (c1's own DataWriteGuid is unchanged).
    assert_reads(c2, &model);
    // Delete c1 and point c2 at base: same bytes.
    vhdx::rebase(c2, Some(base)).unwrap();
    std::fs::remove_file(c1).unwrap();
    assert_reads(c2, &model);
    assert_eq!(
        std::fs::canonicalize(vhdx::parent_path(c2).unwrap().unwrap()).unwrap(),
        std::fs::canonicalize(base).unwrap()
    );
    assert_eq!(
        vhdx_core_read(&[c2.clone(), base.clone()]),
        model.read(0, model.size as usize)
    );
}

#[test]
fn rebase_onto_a_moved_copy_and_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.avhdx");
    vhdx::create(&base, &base_opts(size, MIB)).unwrap();
    let mut m = Model::new(size);
    write(&base, &mut m, 0, &pattern(1, 3 * MIB as usize));
    vhdx::create_child(&base, &child).unwrap();
    write(&child, &mut m, MIB + 5, &pattern(2, 100));
    // Move the parent elsewhere (byte copy keeps its DataWriteGuid), then repoint.
    let sub = dir.path().join("moved");
    std::fs::create_dir(&sub).unwrap();
    let moved = sub.join("parent.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    let err = VhdxImage::open(&child, false).expect_err("parent is gone");
    assert!(matches!(err, DiskError::Chain { .. }), "{err}");
    assert!(err.to_string().contains("missing parent"), "{err}");
    vhdx::rebase(&child, Some(&moved)).unwrap();
    assert_reads(&child, &m);
    // Standalone is refused while blocks are inherited ...
    let err = vhdx::rebase(&child, None).expect_err("inherited blocks");
    assert!(matches!(err, DiskError::Invalid { .. }), "{err}");
    // ... and works once every block is held by the child.
    {
        let mut img = VhdxImage::open(&child, true).unwrap();
        let all = read_all(&img);
        img.write_at(&all, 0).unwrap();
        img.flush().unwrap();
    }
    vhdx::rebase(&child, None).unwrap();
    std::fs::remove_file(&moved).unwrap();
    let img = VhdxImage::open(&child, false).unwrap();
    assert!(!img.is_differencing());
    drop(img);
    assert_reads(&child, &m);
    if have_qemu() {
        let raw = dir.path().join("expected.raw");
        m.to_raw(&raw);
        qemu_check_as(&child, "vhdx");
        qemu_compare_raw(&child, &raw);
    }
}

#[test]
fn linkage_mismatch_and_loops_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let c1 = dir.path().join("c1.avhdx");
    let c2 = dir.path().join("c2.avhdx");
    vhdx::create(&base, &base_opts(4 * MIB, MIB)).unwrap();
    vhdx::create_child(&base, &c1).unwrap();
    vhdx::create_child(&c1, &c2).unwrap();
    // A parent written after the child was made gets a new DataWriteGuid.
    let copy = dir.path().join("c1.copy");
    std::fs::copy(&c1, &copy).unwrap();
    {
        let mut p = VhdxImage::open(&c1, true).unwrap();
        p.write_at(&[1, 2, 3], 0).unwrap();
    }
    let err = VhdxImage::open(&c2, false).expect_err("linkage mismatch");
    assert!(matches!(err, DiskError::Chain { .. }), "{err}");
    assert!(
        err.to_string().contains("linkage mismatch") && err.to_string().contains("c2.avhdx"),
        "{err}"
    );
    // Loop: base replaced by a copy of c2 (whose parent is c1, whose parent is "base").
    std::fs::copy(&copy, &c1).unwrap();
    std::fs::copy(&c2, &base).unwrap();
    let err = VhdxImage::open(&c2, false).expect_err("loop");
    assert!(err.to_string().contains("loop"), "{err}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write { off: u64, len: usize, seed: u64 },
        Zero { off: u64, len: u64 },
        NewChild,
        Commit,
    }

    const SIZE: u64 = 12 * MIB;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..SIZE, 1usize..(3 * MIB as usize), any::<u64>()).prop_map(|(off, len, seed)| Op::Write {
                off,
                len: len.min((SIZE - off) as usize),
                seed
            }),
            1 => (0..SIZE, 1u64..(3 * MIB)).prop_map(|(off, len)| Op::Zero { off, len: len.min(SIZE - off) }),
            1 => Just(Op::NewChild),
            1 => Just(Op::Commit),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        #[test]
        fn random_writes_children_and_commits_match_model(ops in proptest::collection::vec(op(), 1..12)) {
            let dir = tempfile::tempdir().unwrap();
            let mut layers = vec![dir.path().join("l0.vhdx")];
            vhdx::create(&layers[0], &base_opts(SIZE, MIB)).unwrap();
            let mut m = Model::new(SIZE);
            for (k, op) in ops.iter().enumerate() {
                let top = layers.last().unwrap().clone();
                match op {
                    Op::Write { off, len, seed } => write(&top, &mut m, *off, &pattern(*seed, *len)),
                    Op::Zero { off, len } => zero(&top, &mut m, *off, *len),
                    Op::NewChild => {
                        let c = dir.path().join(format!("l{k}.avhdx"));
                        vhdx::create_child(&top, &c).unwrap();
                        layers.push(c);
                    }
                    Op::Commit => {
                        if layers.len() > 1 {
                            vhdx::commit(&top).unwrap();
                            std::fs::remove_file(&top).unwrap();
                            layers.pop();
                        }
                    }
                }
                assert_reads(layers.last().unwrap(), &m);
            }
            let rev: Vec<PathBuf> = layers.iter().rev().cloned().collect();
            prop_assert!(vhdx_core_read(&rev) == m.read(0, SIZE as usize), "vhdx-core disagrees");
        }
    }
}

/// Never-written parts of an allocated block are holes in the file: the map reports them
/// as zeros, so copies skip them.
#[test]
fn layer_map_reports_holes_in_allocated_blocks_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.vhdx");
    vhdx::create(&p, &base_opts(8 * MIB, 2 * MIB)).unwrap();
    let mut m = Model::new(8 * MIB);
    write(&p, &mut m, 0, &pattern(1, MIB as usize));
    let img = VhdxImage::open(&p, false).unwrap();
    let map = img.layer_map(0, 4 * MIB).unwrap();
    assert_eq!(map.len(), 3, "{map:?}");
    assert!(
        matches!(
            map[0].state,
            ExtentState::Data {
                host_offset: Some(_)
            }
        ) && map[0].len == MIB
    );
    assert_eq!(
        (map[1].offset, map[1].len, map[1].state),
        (MIB, MIB, ExtentState::Zero)
    );
    assert_eq!(
        (map[2].offset, map[2].state),
        (2 * MIB, ExtentState::Inherited)
    );
    assert_reads(&p, &m);
}

/// 4096-byte logical sectors (one bitmap bit per 4 KiB; qemu cannot open these at all):
/// sub-sector child writes, read back and cross-checked by vhdx-core.
#[test]
fn chain_with_4k_sectors_matches_model_and_vhdx_core() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let base = dir.path().join("b4k.vhdx");
    let child = dir.path().join("c4k.avhdx");
    let o = CreateOptions {
        virtual_size: size,
        block_size: 4 << 20,
        logical_sector_size: 4096,
        physical_sector_size: 4096,
        fixed: false,
    };
    vhdx::create(&base, &o).unwrap();
    let mut m = Model::new(size);
    write(&base, &mut m, 0, &pattern(1, 9 * MIB as usize));
    vhdx::create_child(&base, &child).unwrap();
    write(&child, &mut m, 4095, &pattern(2, 3)); // straddles two sectors
    write(&child, &mut m, 5 * MIB + 100, &pattern(3, 10_000));
    zero(&child, &mut m, 8 * MIB, 4 * MIB);
    write(&child, &mut m, size - 4096, &pattern(4, 4096));
    assert_reads(&child, &m);
    let img = VhdxImage::open(&child, false).unwrap();
    assert_eq!(img.logical_sector_size(), 4096);
    let map = img.layer_map(0, 4 * MIB).unwrap();
    assert_eq!((map[0].offset, map[0].len), (0, 8192), "{map:?}");
    assert!(
        matches!(map[0].state, ExtentState::Data { .. }) && map[1].state == ExtentState::Inherited
    );
    drop(img);
    assert_eq!(vhdx_core_read(&[child, base]), m.read(0, size as usize));
}
