//! Property test: random writes, zero writes, child creation, commits and pulls against an
//! in-memory model of the guest bytes, for qcow2 and raw bases (qcow2 overlays on both)
//! and VHDX (`.avhdx` children), all through `ops`.
//! At the end every qcow2 layer must pass `qemu-img check` and the top must
//! `qemu-img compare` equal to the model.

use std::path::PathBuf;

use cosnap_disk::{Format, ops, qcow2};
use cosnap_test_support::{p, qemu_check_clean, run};
use proptest::prelude::*;

const SIZE: u64 = 8 << 20;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, byte: u8 },
    Zero { off: u64, len: u64 },
    Child,
    Commit,
    Pull,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE).prop_flat_map(|off| (Just(off), 1..=(SIZE - off).min(300_000)));
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((off, len), byte)| Op::Write { off, len, byte }),
        1 => range.prop_map(|(off, len)| Op::Zero { off, len }),
        1 => Just(Op::Child),
        1 => Just(Op::Commit),
        1 => Just(Op::Pull),
    ]
}

fn check_model(top: &std::path::Path, model: &[u8]) {
    let img = ops::open(top, false).unwrap();
    let mut buf = vec![0u8; SIZE as usize];
    img.read_at(&mut buf, 0).unwrap();
    if buf != model {
        let i = buf.iter().zip(model).position(|(a, b)| a != b).unwrap();
        panic!(
            "{}: byte {i:#x} is {:#x}, model says {:#x}",
            top.display(),
            buf[i],
            model[i]
        );
    }
}

fn run_case(base_format: Format, cluster_bits: u32, ops_list: Vec<Op>) {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join(format!("l0.{base_format}"));
    match base_format {
        Format::Qcow2 => qcow2::create(
            &base,
            &qcow2::CreateOptions {
                virtual_size: SIZE,
                cluster_bits,
                backing: None,
            },
        )
        .unwrap(),
        _ => ops::create(&base, base_format, SIZE).unwrap(),
    }
    let mut layers: Vec<PathBuf> = vec![base];
    let mut model = vec![0u8; SIZE as usize];
    let mut n = 1;
    for op in ops_list {
        let top = layers.last().unwrap().clone();
        match op {
            Op::Write { off, len, byte } => {
                ops::write_pattern(&top, off, len, byte).unwrap();
                model[off as usize..(off + len) as usize].fill(byte);
            }
            Op::Zero { off, len } => {
                let mut img = ops::open(&top, true).unwrap();
                img.write_zeroes(off, len).unwrap();
                img.flush().unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Child => {
                let ext = if base_format == Format::Vhdx {
                    "avhdx"
                } else {
                    "qcow2"
                };
                let child = d.path().join(format!("l{n}.{ext}"));
                n += 1;
                ops::create_child(&top, &child).unwrap();
                layers.push(child);
            }
            Op::Commit if layers.len() > 1 => {
                ops::commit(&top).unwrap();
                check_model(&top, &model);
                // The parent alone now shows what the child showed.
                layers.pop();
                std::fs::remove_file(&top).unwrap();
            }
            Op::Pull if layers.len() > 1 => {
                ops::pull(&top).unwrap();
                let parent = layers.remove(layers.len() - 2);
                std::fs::remove_file(&parent).unwrap();
            }
            Op::Commit | Op::Pull => {}
        }
        check_model(layers.last().unwrap(), &model);
    }
    for (i, l) in layers.iter().enumerate() {
        // qemu cannot open VHDX differencing children; it checks everything else.
        let fmt = ops::detect_format(l).unwrap();
        if fmt == Format::Qcow2 || (i == 0 && fmt == Format::Vhdx) {
            qemu_check_clean(l);
        }
    }
    let expect = d.path().join("model.raw");
    std::fs::write(&expect, &model).unwrap();
    let top = layers.last().unwrap();
    if base_format == Format::Vhdx && layers.len() > 1 {
        assert_eq!(ops::compare(top, &expect).unwrap(), None);
        // Flattened by cosnap, the result is checked by qemu.
        let flat = d.path().join("flat.vhdx");
        cosnap_disk::flatten_all(
            &[cosnap_disk::FlattenJob::whole(
                top.clone(),
                flat.clone(),
                Format::Vhdx,
            )],
            1,
            &|_, _| {},
            &ops::CancelToken::new(),
        )
        .unwrap();
        qemu_check_clean(&flat);
        let (code, out) = run("qemu-img", &["compare", "-F", "raw", p(&flat), p(&expect)]);
        assert_eq!(code, 0, "{out}");
    } else {
        let (code, out) = run("qemu-img", &["compare", "-F", "raw", p(top), p(&expect)]);
        assert_eq!(code, 0, "{out}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn qcow2_chain_matches_model(cb in prop_oneof![Just(12u32), Just(16u32)], list in proptest::collection::vec(op(), 1..14)) {
        run_case(Format::Qcow2, cb, list);
    }

    #[test]
    fn vhdx_chain_matches_model(list in proptest::collection::vec(op(), 1..14)) {
        run_case(Format::Vhdx, 16, list);
    }

    #[test]
    fn raw_base_chain_matches_model(list in proptest::collection::vec(op(), 1..14)) {
        run_case(Format::Raw, 16, list);
    }
}
