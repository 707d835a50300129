//! Package tests over real images, with `qemu-img` as the oracle where it applies.
//!
//! The chain used: `l0` (base, frozen at snapshot 1) ← `l1` (frozen at snapshot 2) ← `l2`
//! (active). Snapshot 1 = `l0`, snapshot 2 = `l1`, and the changes between them are
//! exactly what `l1` holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use cosnap_cim::{CimType, Instance, Value};
use cosnap_disk::{CancelToken, ExtentState, Format};
use cosnap_export::*;
use cosnap_test_support::{SmallTmpfs, qemu_check_clean, qemu_compare};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn s(v: &str) -> Option<Value> {
    Some(Value::String(v.into()))
}

struct Chain {
    l0: PathBuf,
    l1: PathBuf,
    #[allow(dead_code)]
    l2: PathBuf,
}

/// Builds a 3-layer chain of `format` in `dir` with data written in l0 and l1.
fn chain(dir: &Path, name: &str, format: Format) -> Chain {
    let ext = format.name();
    let l0 = dir.join(format!("{name}-0.{ext}"));
    cosnap_disk::create(&l0, format, SIZE).unwrap();
    cosnap_disk::write_pattern(&l0, 0, 4 * MIB, 0x11).unwrap();
    cosnap_disk::write_pattern(&l0, 20 * MIB, 3 * MIB, 0x22).unwrap();
    let l1 = dir.join(format!(
        "{name}-1.{}",
        if format == Format::Vhdx {
            "avhdx"
        } else {
            "qcow2"
        }
    ));
    cosnap_disk::create_child(&l0, &l1).unwrap();
    // 1 MiB changed at 2 MiB (overwrites base data) and 1 MiB at 40 MiB (new).
    cosnap_disk::write_pattern(&l1, 2 * MIB, MIB, 0x33).unwrap();
    cosnap_disk::write_pattern(&l1, 40 * MIB, MIB, 0x44).unwrap();
    let l2 = dir.join(format!(
        "{name}-2.{}",
        if format == Format::Vhdx {
            "avhdx"
        } else {
            "qcow2"
        }
    ));
    cosnap_disk::create_child(&l1, &l2).unwrap();
    cosnap_disk::write_pattern(&l2, 50 * MIB, MIB, 0x55).unwrap();
    Chain { l0, l1, l2 }
}

fn vm(id: &str, name: &str, snap_vssd: &str, disks: Vec<DiskPlan>) -> VmPlan {
    VmPlan {
        system: Instance::new("Msvm_ComputerSystem")
            .with("Name", CimType::String, s(id))
            .with("ElementName", CimType::String, s(name)),
        settings: Instance::new("Msvm_VirtualSystemSettingData")
            .with("InstanceID", CimType::String, s(snap_vssd))
            .with("ElementName", CimType::String, s(name))
            .with(
                "VirtualSystemType",
                CimType::String,
                s("Microsoft:Hyper-V:Snapshot:Realized"),
            ),
        resources: vec![
            Instance::new("Msvm_ProcessorSettingData")
                .with(
                    "InstanceID",
                    CimType::String,
                    s(&format!("Microsoft:{id}\\cpu")),
                )
                .with("ResourceType", CimType::Uint16, Some(Value::Uint16(3)))
                .with("VirtualQuantity", CimType::Uint64, Some(Value::Uint64(2))),
            Instance::new("Msvm_MemorySettingData")
                .with(
                    "InstanceID",
                    CimType::String,
                    s(&format!("Microsoft:{id}\\mem")),
                )
                .with("ResourceType", CimType::Uint16, Some(Value::Uint16(4)))
                .with("AllocationUnits", CimType::String, s("byte*2^20"))
                .with("VirtualQuantity", CimType::Uint64, Some(Value::Uint64(512))),
            Instance::new("Msvm_SyntheticEthernetPortSettingData")
                .with(
                    "InstanceID",
                    CimType::String,
                    s(&format!("Microsoft:{id}\\nic0")),
                )
                .with("ResourceType", CimType::Uint16, Some(Value::Uint16(10)))
                .with("Address", CimType::String, s("00155D000001"))
                .with("ElementName", CimType::String, s("Network Adapter <&>")),
        ],
        disks,
    }
}

fn disk(id: &str, source: &Path, format: Format) -> DiskPlan {
    DiskPlan {
        id: id.into(),
        source: source.to_path_buf(),
        format,
        base_layer: None,
        base_export_file: None,
        base_export_format: None,
        layers: Vec::new(),
        resource_instance_id: Some(format!("Microsoft:{id}")),
        changed_ranges: None,
    }
}

fn plan(vms: Vec<VmPlan>, snap: &str) -> ExportPlan {
    ExportPlan {
        collection: Instance::new("Msvm_VirtualSystemCollection")
            .with(
                "CollectionID",
                CimType::String,
                s("c0ffee00-0000-4000-8000-000000000001"),
            )
            .with("ElementName", CimType::String, s("web/../../tier")),
        snapshot: Instance::new("Msvm_SnapshotCollection")
            .with("CollectionID", CimType::String, s(&format!("{snap}-id")))
            .with("ElementName", CimType::String, s(snap)),
        vms,
        differential: None,
        fallback_to_full: None,
    }
}

fn no_progress(_: u64, _: u64) {}

fn opts(subdir: bool) -> ExportOptions {
    ExportOptions {
        copy_storage: true,
        create_subdirectory: subdir,
        intent: BackupIntent::PreserveChain,
        threads: 2,
        ..ExportOptions::default()
    }
}

fn listing(dir: &Path) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    for e in walk(dir) {
        v.insert(e.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
    }
    v
}

/// The names directly in `dir`.
fn top_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

fn disk_file(report: &PackageReport, vm: usize, d: usize) -> PathBuf {
    report
        .path
        .join(report.meta.vms[vm].disks[d].file.as_ref().unwrap())
}

/// Makes `p` a differential against snapshot 1 exported as `full`: for each
/// `(vm, disk, base layer)`, the base layer and the full export's copy of that disk.
fn against_full(p: &mut ExportPlan, full: &PackageReport, bases: &[(usize, usize, &Path)]) {
    p.differential = Some(Differential {
        base_id: "snap1-id".into(),
        base_kind: BaseKind::Snapshot,
        base_export_id: Some(full.meta.export_id.clone()),
    });
    for &(vi, di, base) in bases {
        p.vms[vi].disks[di].base_layer = Some(base.to_path_buf());
        p.vms[vi].disks[di].base_export_file = Some(disk_file(full, vi, di));
    }
}

/// Data extents of one layer (not its parents).
fn layer_data(path: &Path) -> Vec<[u64; 2]> {
    let img = cosnap_disk::open(path, false).unwrap();
    let mut v: Vec<[u64; 2]> = Vec::new();
    for e in img.layer_map(0, img.virtual_size()).unwrap() {
        if matches!(e.state, ExtentState::Data { .. } | ExtentState::Zero) {
            match v.last_mut() {
                Some(last) if last[1] == e.offset => last[1] = e.offset + e.len,
                _ => v.push([e.offset, e.offset + e.len]),
            }
        }
    }
    v
}

#[test]
fn full_then_preserve_chain_and_merge_differentials() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let r = chain(&src, "b", Format::Raw);
    let before_l0 = std::fs::read(&q.l0).unwrap();

    // Full export of snapshot 1.
    let p1 = plan(
        vec![
            vm(
                "vm-a",
                "alpha",
                "Microsoft:snap1-a",
                vec![disk("disk0", &q.l0, Format::Qcow2)],
            ),
            vm(
                "vm-b",
                "beta/..",
                "Microsoft:snap1-b",
                vec![disk("disk0", &r.l0, Format::Raw)],
            ),
        ],
        "snap1",
    );
    let full = write_package(&p1, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    assert_eq!(full.path.parent().unwrap(), out);
    assert!(
        !full
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with('.')
    );
    let v = verify_package(&full.path).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.images_checked, 2);
    qemu_compare(&disk_file(&full, 0, 0), &q.l0);
    qemu_compare(&disk_file(&full, 1, 0), &r.l0);
    qemu_check_clean(&disk_file(&full, 0, 0));
    // Sparse: the raw export does not allocate the whole virtual size.
    let raw_alloc = cosnap_disk::info(&disk_file(&full, 1, 0))
        .unwrap()
        .allocated_bytes;
    assert!(
        raw_alloc < 16 * MIB,
        "raw export allocated {raw_alloc} bytes"
    );
    // Sources untouched.
    assert_eq!(std::fs::read(&q.l0).unwrap(), before_l0);
    // Layout: Hyper-V's folders per VM, manifest/ovf/json at the top.
    let names = listing(&full.path);
    for want in ["Virtual Machines", "Snapshots", "Virtual Hard Disks"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} missing in {names:?}"
        );
    }
    assert!(names.contains(PACKAGE_JSON));
    assert!(names.iter().any(|n| n.ends_with(".ovf")) && names.iter().any(|n| n.ends_with(".mf")));
    assert!(names.iter().all(|n| !n.contains("..")), "{names:?}");

    // Differential of snapshot 2 against snapshot 1, PreserveChain.
    let mut p2 = plan(
        vec![
            vm(
                "vm-a",
                "alpha",
                "Microsoft:snap2-a",
                vec![disk("disk0", &q.l1, Format::Qcow2)],
            ),
            vm(
                "vm-b",
                "beta/..",
                "Microsoft:snap2-b",
                vec![disk("disk0", &r.l1, Format::Qcow2)],
            ),
        ],
        "snap2",
    );
    against_full(&mut p2, &full, &[(0, 0, &q.l0), (1, 0, &r.l0)]);
    let diff = write_package(&p2, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    assert_ne!(diff.path, full.path);
    let v = verify_package(&diff.path).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    for vmi in 0..2 {
        let f = disk_file(&diff, vmi, 0);
        let rec = &diff.meta.vms[vmi].disks[0];
        // The differential holds exactly the changed blocks.
        let changed = [[2 * MIB, 3 * MIB], [40 * MIB, 41 * MIB]];
        assert_eq!(layer_data(&f), changed, "allocation map of {}", f.display());
        assert_eq!(rec.changed_ranges.as_deref(), Some(&changed[..]));
        assert!(
            rec.parent.as_deref().unwrap().starts_with("../"),
            "{:?}",
            rec.parent
        );
        // base + differential = snapshot 2.
        qemu_compare(&f, if vmi == 0 { &q.l1 } else { &r.l1 });
        qemu_check_clean(&f);
    }
    assert!(
        diff.meta.intent == Some(BackupIntent::PreserveChain) && diff.meta.kind == "differential"
    );

    // Merge: a synthetic full standing alone.
    let mut merge_opts = opts(true);
    merge_opts.intent = BackupIntent::Merge;
    let mut p3 = p2.clone();
    for d in p3.vms.iter_mut().flat_map(|v| v.disks.iter_mut()) {
        d.base_export_file = None;
    }
    p3.vms[1].disks[0].format = Format::Qcow2;
    let merged = write_package(&p3, &out, &merge_opts, &no_progress, &CancelToken::new()).unwrap();
    let v = verify_package(&merged.path).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    for vmi in 0..2 {
        let f = disk_file(&merged, vmi, 0);
        assert_eq!(
            cosnap_disk::info(&f).unwrap().chain.len(),
            1,
            "merge output must stand alone"
        );
        qemu_compare(&f, if vmi == 0 { &q.l1 } else { &r.l1 });
    }
    assert_eq!(
        merged.meta.vms[0].disks[0]
            .changed_ranges
            .as_ref()
            .unwrap()
            .len(),
        2
    );

    // Read back for import: every instance survives.
    let pkg = read_package(&full.path).unwrap();
    assert_eq!(pkg.vms.len(), 2);
    assert_eq!(pkg.vms[0].system, p1.vms[0].system);
    assert_eq!(pkg.vms[0].settings, p1.vms[0].settings);
    assert_eq!(pkg.vms[0].resources, p1.vms[0].resources);
    assert_eq!(pkg.collection, p1.collection);
    assert_eq!(pkg.snapshot, p1.snapshot);

    // The OVF is well formed for xmllint too.
    let ovf = full.path.join(&full.meta.descriptor);
    let st = Command::new("xmllint")
        .arg("--noout")
        .arg(&ovf)
        .status()
        .expect("xmllint runs");
    assert!(st.success());

    // No staging or journal left anywhere.
    assert!(
        std::fs::read_dir(&out).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.'))
    );
}

#[test]
fn tampering_and_missing_parents_fail_verify() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let full = write_package(
        &plan(
            vec![vm(
                "vm-a",
                "alpha",
                "Microsoft:s1",
                vec![disk("d", &q.l0, Format::Qcow2)],
            )],
            "s1",
        ),
        &out,
        &opts(true),
        &no_progress,
        &CancelToken::new(),
    )
    .unwrap();
    let mut p2 = plan(
        vec![vm(
            "vm-a",
            "alpha",
            "Microsoft:s2",
            vec![disk("d", &q.l1, Format::Qcow2)],
        )],
        "s2",
    );
    p2.differential = Some(Differential {
        base_id: "s1-id".into(),
        base_kind: BaseKind::ReferencePoint,
        base_export_id: None,
    });
    p2.vms[0].disks[0].base_layer = Some(q.l0.clone());
    p2.vms[0].disks[0].base_export_file = Some(disk_file(&full, 0, 0));
    let diff = write_package(&p2, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    assert!(verify_package(&diff.path).unwrap().ok());

    // A flipped byte in the descriptor → digest mismatch.
    let ovf = full.path.join(&full.meta.descriptor);
    let mut text = std::fs::read(&ovf).unwrap();
    let i = text.len() - 5;
    text[i] ^= 0x20;
    std::fs::write(&ovf, &text).unwrap();
    let v = verify_package(&full.path).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("digest")),
        "{:?}",
        v.problems
    );

    // An extra file not in the manifest.
    std::fs::write(
        diff.path.join(&diff.meta.vms[0].dir).join("stray.txt"),
        b"x",
    )
    .unwrap();
    let v = verify_package(&diff.path).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("not listed")),
        "{:?}",
        v.problems
    );
    std::fs::remove_file(diff.path.join(&diff.meta.vms[0].dir).join("stray.txt")).unwrap();

    // The base export gone → the differential's parent is missing.
    std::fs::remove_file(disk_file(&full, 0, 0)).unwrap();
    let v = verify_package(&diff.path).unwrap();
    assert!(!v.ok());

    // Not a package at all.
    assert!(matches!(
        verify_package(&src),
        Err(ExportError::BadPackage { .. })
    ));
}

#[test]
fn flat_export_collides_and_touches_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let p = plan(
        vec![vm(
            "vm-a",
            "alpha",
            "Microsoft:s1",
            vec![disk("d", &q.l0, Format::Qcow2)],
        )],
        "s1",
    );
    let first = write_package(&p, &out, &opts(false), &no_progress, &CancelToken::new()).unwrap();
    assert_eq!(first.path, out);
    assert!(verify_package(&out).unwrap().ok());
    let before = listing(&out);
    let err = write_package(&p, &out, &opts(false), &no_progress, &CancelToken::new()).unwrap_err();
    assert!(matches!(err, ExportError::Collision(_)), "{err}");
    assert_eq!(listing(&out), before);
    // With sub-directories, two exports into one directory land side by side.
    let a = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let b = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    assert_ne!(a.path, b.path);
    assert!(verify_package(&a.path).unwrap().ok() && verify_package(&b.path).unwrap().ok());
    // Relative export directory is refused before anything happens.
    assert!(matches!(
        write_package(
            &p,
            Path::new("rel/dir"),
            &opts(true),
            &no_progress,
            &CancelToken::new()
        ),
        Err(ExportError::RelativeDirectory(_))
    ));
}

#[test]
fn cancel_and_no_storage() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let p = plan(
        vec![vm(
            "vm-a",
            "alpha",
            "Microsoft:s1",
            vec![disk("d", &q.l0, Format::Qcow2)],
        )],
        "s1",
    );
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = write_package(&p, &out, &opts(true), &no_progress, &cancel).unwrap_err();
    assert!(matches!(err, ExportError::Cancelled), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "cancel must leave nothing"
    );

    let mut o = opts(true);
    o.copy_storage = false;
    let rep = write_package(&p, &out, &o, &no_progress, &CancelToken::new()).unwrap();
    assert!(verify_package(&rep.path).unwrap().ok());
    assert!(rep.meta.vms[0].disks[0].file.is_none());
    assert_eq!(rep.meta.vms[0].disks[0].virtual_size, SIZE);
    assert!(
        !listing(&rep.path)
            .iter()
            .any(|n| n.contains("Virtual Hard Disks"))
    );
}

#[test]
fn a_full_file_system_leaves_no_journal() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let (p, _) = one_vm_plan(t.path());
    let out = t.path().join("full");
    std::fs::create_dir_all(&out).unwrap();
    let Some(_guard) = SmallTmpfs::mount(&out, "1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    // Fill it to the last byte: even the journal cannot be written.
    let mut filler = std::fs::File::create(out.join("filler")).unwrap();
    while filler.write_all(&[0xa5; 4096]).is_ok() {}
    while filler.write_all(&[0xa5]).is_ok() {}
    drop(filler);
    for subdir in [false, true] {
        let err =
            write_package(&p, &out, &opts(subdir), &no_progress, &CancelToken::new()).unwrap_err();
        assert!(matches!(err, ExportError::NoSpace { .. }), "{err}");
        assert_eq!(top_names(&out), BTreeSet::from(["filler".to_string()]));
    }
}

#[test]
fn disk_full_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("small");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let Some(_mounted) = SmallTmpfs::mount(&out, "3m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); disk-full covered by the CLI test instead"
        );
        return;
    };
    let q = chain(&src, "a", Format::Qcow2);
    let p = plan(
        vec![vm(
            "vm-a",
            "alpha",
            "Microsoft:s1",
            vec![disk("d", &q.l0, Format::Qcow2)],
        )],
        "s1",
    );
    let err = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap_err();
    assert!(matches!(err, ExportError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "staging must be removed"
    );
}

/// One VM with one qcow2 disk, in `t/src`; the export directory `t/exports`.
fn one_vm_plan(t: &Path) -> (ExportPlan, PathBuf) {
    let src = t.join("src");
    let out = t.join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let p = plan(
        vec![vm(
            "vm-a",
            "alpha",
            "Microsoft:s1",
            vec![disk("d", &q.l0, Format::Qcow2)],
        )],
        "s1",
    );
    (p, out)
}

/// Entries an export may leave only while it runs.
fn temporaries(out: &Path) -> Vec<String> {
    top_names(out)
        .into_iter()
        .filter(|n| n.contains(".cosnap-staging-") || n.contains(".cosnap-export-"))
        .collect()
}

/// Opens `out` and writes `p` into it with the given commit hooks.
fn write_with_hooks(
    p: &ExportPlan,
    out: &Path,
    subdir: bool,
    hooks: &CommitHooks<'_>,
) -> Result<PackageReport, ExportError> {
    let dir = open_export_dir(out).unwrap();
    write_package_in(
        p,
        &dir,
        &opts(subdir),
        &no_progress,
        &CancelToken::new(),
        hooks,
    )
}

/// Runs an export that dies (a panic skips its rollback, as SIGKILL would) the `nth` time
/// its commit reaches `step`, then recovers the directory.
fn die_at_then_recover(
    subdir: bool,
    step: &'static str,
    nth: usize,
) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let die = |s: &str| {
        if s == step && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth {
            panic!("simulated kill at {s} #{nth}");
        }
    };
    let hooks = CommitHooks {
        before_commit: &|_| Ok(()),
        step: &die,
    };
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_with_hooks(&p, &out, subdir, &hooks)
    }));
    assert!(died.is_err(), "{step} #{nth} was never reached");
    assert!(
        !temporaries(&out).is_empty(),
        "a dead export leaves its journal"
    );
    recover_export_dir(&out).unwrap();
    (t, out)
}

#[test]
fn a_kill_before_the_commit_point_leaves_nothing_after_recovery() {
    for subdir in [false, true] {
        let (_t, out) = die_at_then_recover(subdir, "export-commit", 1);
        assert!(
            top_names(&out).is_empty(),
            "subdir {subdir}: {:?}",
            top_names(&out)
        );
    }
}

#[test]
fn a_kill_after_the_commit_point_is_finished_by_recovery() {
    // Without a sub-directory: the VM directory, descriptor, collection, JSON, manifest.
    let flat = [("export-committed", 1)]
        .into_iter()
        .chain((1..=5).map(|n| ("export-rename", n)))
        .chain([("export-renamed", 1)]);
    for (step, nth) in flat {
        let (_t, out) = die_at_then_recover(false, step, nth);
        assert!(
            temporaries(&out).is_empty(),
            "{step} #{nth}: {:?}",
            top_names(&out)
        );
        let v = verify_package(&out).unwrap();
        assert!(v.ok(), "{step} #{nth}: {:?}", v.problems);
    }
    for (step, nth) in [
        ("export-committed", 1),
        ("export-rename", 1),
        ("export-renamed", 1),
    ] {
        let (_t, out) = die_at_then_recover(true, step, nth);
        assert!(
            temporaries(&out).is_empty(),
            "{step} #{nth}: {:?}",
            top_names(&out)
        );
        let names = top_names(&out);
        assert_eq!(names.len(), 1, "{names:?}");
        let v = verify_package(&out.join(names.first().unwrap())).unwrap();
        assert!(v.ok(), "{step} #{nth}: {:?}", v.problems);
    }
}

#[test]
fn recovery_removes_an_unreadable_journal_and_its_staging() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path();
    // What a full file system leaves: a 0-byte journal; beside it, staging of that export
    // and of an export no journal names.
    std::fs::write(out.join(".cosnap-export-abc.journal"), b"").unwrap();
    std::fs::create_dir(out.join(".vm.cosnap-staging-abc")).unwrap();
    std::fs::create_dir(out.join(".orphan.cosnap-staging-def")).unwrap();
    std::fs::write(out.join("x.ovf"), b"someone else's").unwrap();
    let dir = DirHandle::open(out).unwrap();
    let r = recover_export(&dir, "abc").unwrap();
    assert!(!r.committed);
    assert_eq!(
        top_names(out),
        BTreeSet::from([
            ".orphan.cosnap-staging-def".to_string(),
            "x.ovf".to_string()
        ])
    );
    recover_export_dir(out).unwrap();
    assert_eq!(top_names(out), BTreeSet::from(["x.ovf".to_string()]));
}

#[test]
fn two_exports_into_one_directory_keep_both_or_refuse_the_second() {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    // With sub-directories: the second export runs entirely inside the first's commit
    // window (after both chose their names); both succeed under distinct names.
    let second: std::sync::Mutex<Option<PackageReport>> = Default::default();
    let run_second = |_: &PackageReport| {
        let r = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new())?;
        *second.lock().unwrap() = Some(r);
        Ok(())
    };
    let hooks = CommitHooks {
        before_commit: &run_second,
        step: &|_| {},
    };
    let first = write_with_hooks(&p, &out, true, &hooks).unwrap();
    let second = second.into_inner().unwrap().unwrap();
    assert_ne!(first.path, second.path);
    assert!(verify_package(&first.path).unwrap().ok());
    assert!(verify_package(&second.path).unwrap().ok());
    assert!(temporaries(&out).is_empty());

    // Without: the second is refused before it writes, the first finishes.
    let flat_out = t.path().join("flat");
    std::fs::create_dir(&flat_out).unwrap();
    let refused: std::sync::Mutex<Option<String>> = Default::default();
    let run_second = |_: &PackageReport| {
        let before = top_names(&flat_out);
        let e = write_package(
            &p,
            &flat_out,
            &opts(false),
            &no_progress,
            &CancelToken::new(),
        )
        .unwrap_err();
        assert_eq!(
            top_names(&flat_out),
            before,
            "the refused export wrote something"
        );
        *refused.lock().unwrap() = Some(e.to_string());
        Ok(())
    };
    let hooks = CommitHooks {
        before_commit: &run_second,
        step: &|_| {},
    };
    let first = write_with_hooks(&p, &flat_out, false, &hooks).unwrap();
    let msg = refused.into_inner().unwrap().unwrap();
    assert!(msg.contains("another export is writing"), "{msg}");
    assert!(verify_package(&first.path).unwrap().ok());
}

#[test]
fn package_files_are_owner_only_by_default_and_follow_the_mode_option() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let check = |root: &Path, file_mode: u32, dir_mode: u32| {
        for e in walk(root) {
            let m = std::fs::symlink_metadata(&e).unwrap();
            let want = if m.is_dir() { dir_mode } else { file_mode };
            assert_eq!(m.permissions().mode() & 0o7777, want, "{}", e.display());
        }
        let m = std::fs::metadata(root).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, dir_mode, "{}", root.display());
    };
    let r = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    check(&r.path, 0o600, 0o700);
    let mut o = opts(true);
    o.file_mode = 0o640;
    let r = write_package(&p, &out, &o, &no_progress, &CancelToken::new()).unwrap();
    check(&r.path, 0o640, 0o750);
    assert!(verify_package(&r.path).unwrap().ok());
    // Without a sub-directory: every entry the package put into the directory.
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    let r = write_package(&p, &flat, &opts(false), &no_progress, &CancelToken::new()).unwrap();
    for e in std::fs::read_dir(&r.path).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            check(&e, 0o600, 0o700);
        } else {
            let m = std::fs::metadata(&e).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, 0o600, "{}", e.display());
        }
    }
}

#[test]
fn an_export_directory_swapped_for_a_symlink_cannot_redirect_the_export() {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let moved = t.path().join("moved");
    // The directory is opened, then swapped while the export runs.
    let swap = |_: &PackageReport| {
        std::fs::rename(&out, &moved).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &out).unwrap();
        Ok(())
    };
    let hooks = CommitHooks {
        before_commit: &swap,
        step: &|_| {},
    };
    write_with_hooks(&p, &out, true, &hooks).unwrap();
    assert!(
        top_names(&elsewhere).is_empty(),
        "{:?}",
        top_names(&elsewhere)
    );
    assert_eq!(top_names(&moved).len(), 1);
    // And a symlinked export directory is refused when opened.
    let err = open_export_dir(&out).unwrap_err();
    assert!(matches!(err, ExportError::Symlink(_)), "{err}");
}

#[test]
fn a_parent_link_out_of_the_export_directory_fails_verify() {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let r = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let secret = t.path().join("secret.raw");
    std::fs::write(&secret, vec![0x5a; 1 << 20]).unwrap();
    // The package's disk becomes an overlay of a host file outside the export directory.
    let img = r.path.join(r.meta.vms[0].disks[0].file.as_ref().unwrap());
    std::fs::remove_file(&img).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let v = verify_package(&r.path).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("lies outside")),
        "{:?}",
        v.problems
    );
}

#[test]
fn a_deeply_nested_configuration_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let r = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let rec = &r.meta.vms[0];
    let deep = format!(
        "<CIM>{}{}</CIM>",
        "<VALUE.OBJECT>".repeat(200_000),
        "</VALUE.OBJECT>".repeat(200_000)
    );
    let config = r.path.join(&rec.config);
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, deep).unwrap();
    let e = read_package(&r.path).unwrap_err().to_string();
    assert!(e.contains("nested deeper than"), "{e}");
    let v = verify_package(&r.path).unwrap();
    assert!(
        v.problems.iter().any(|p| p.contains("nested deeper than")),
        "{:?}",
        v.problems
    );
}

/// A raw file of `SIZE` with `(offset, len, byte)` writes: the expected guest bytes.
fn raw_model(path: &Path, writes: &[(u64, u64, u8)]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    for &(off, len, byte) in writes {
        f.write_all_at(&vec![byte; len as usize], off).unwrap();
    }
    path.to_path_buf()
}

#[test]
fn vhdx_full_preserve_chain_and_merge() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let v = chain(&src, "v", Format::Vhdx);
    let before_l0 = std::fs::read(&v.l0).unwrap();
    let before_l1 = std::fs::read(&v.l1).unwrap();
    let snap1 = raw_model(
        &t.path().join("snap1.raw"),
        &[(0, 4 * MIB, 0x11), (20 * MIB, 3 * MIB, 0x22)],
    );
    let snap2 = raw_model(
        &t.path().join("snap2.raw"),
        &[
            (0, 4 * MIB, 0x11),
            (20 * MIB, 3 * MIB, 0x22),
            (2 * MIB, MIB, 0x33),
            (40 * MIB, MIB, 0x44),
        ],
    );

    let p1 = plan(
        vec![vm(
            "vm-v",
            "hyperv",
            "Microsoft:snap1-v",
            vec![disk("disk0", &v.l0, Format::Vhdx)],
        )],
        "snap1",
    );
    let full = write_package(&p1, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let rep = verify_package(&full.path).unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    let full_disk = disk_file(&full, 0, 0);
    assert!(full_disk.to_string_lossy().ends_with(".vhdx"));
    // qemu reads a standalone VHDX: the guest bytes of snapshot 1.
    qemu_compare(&full_disk, &snap1);

    // PreserveChain: an .avhdx whose parent is the full export's .vhdx.
    let mut p2 = plan(
        vec![vm(
            "vm-v",
            "hyperv",
            "Microsoft:snap2-v",
            vec![disk("disk0", &v.l1, Format::Vhdx)],
        )],
        "snap2",
    );
    against_full(&mut p2, &full, &[(0, 0, &v.l0)]);
    let diff = write_package(&p2, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let rep = verify_package(&diff.path).unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    let diff_disk = disk_file(&diff, 0, 0);
    assert!(diff_disk.to_string_lossy().ends_with(".avhdx"));
    let changed = [[2 * MIB, 3 * MIB], [40 * MIB, 41 * MIB]];
    assert_eq!(layer_data(&diff_disk), changed);
    let chain_files = cosnap_disk::info(&diff_disk).unwrap().chain;
    assert_eq!(chain_files.len(), 2, "{chain_files:?}");
    // qemu cannot open .avhdx: flatten base + differential with cosnap and let qemu compare
    // the result with the expected bytes of snapshot 2.
    let flat = t.path().join("diff-flat.raw");
    cosnap_disk::flatten_all(
        &[cosnap_disk::FlattenJob::whole(
            diff_disk.clone(),
            flat.clone(),
            Format::Raw,
        )],
        1,
        &no_progress,
        &CancelToken::new(),
    )
    .unwrap();
    qemu_compare(&flat, &snap2);

    // Merge: a standalone VHDX with snapshot 2's bytes.
    let mut merge_opts = opts(true);
    merge_opts.intent = BackupIntent::Merge;
    let mut p3 = p2.clone();
    p3.vms[0].disks[0].base_export_file = None;
    let merged = write_package(&p3, &out, &merge_opts, &no_progress, &CancelToken::new()).unwrap();
    let rep = verify_package(&merged.path).unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    let merged_disk = disk_file(&merged, 0, 0);
    assert_eq!(cosnap_disk::info(&merged_disk).unwrap().chain.len(), 1);
    qemu_compare(&merged_disk, &snap2);

    // Sources only read.
    assert_eq!(std::fs::read(&v.l0).unwrap(), before_l0);
    assert_eq!(std::fs::read(&v.l1).unwrap(), before_l1);
}

/// A VHDX base under the qcow2 overlays a running VM writes (`l0.vhdx` ← `l1.qcow2` ←
/// `l2.qcow2`), exported as the disk's format, VHDX: the full export of `l1` is a `.vhdx`, the
/// PreserveChain differential of `l2` over it an `.avhdx`; over a base export held as qcow2
/// (a package of an earlier version) the differential is a qcow2 overlay, as a VHDX child
/// needs a VHDX parent.
#[test]
fn a_vhdx_disk_under_qcow2_overlays_is_exported_as_vhdx() {
    let t = tempfile::tempdir().unwrap();
    let (src, out) = (t.path().join("src"), t.path().join("exports"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let l0 = src.join("l0.vhdx");
    cosnap_disk::create(&l0, Format::Vhdx, SIZE).unwrap();
    cosnap_disk::write_pattern(&l0, 0, 4 * MIB, 0x11).unwrap();
    let (l1, l2) = (src.join("l1.qcow2"), src.join("l2.qcow2"));
    cosnap_disk::create_qcow2_overlay(&l0, &l1).unwrap();
    cosnap_disk::write_pattern(&l1, 2 * MIB, MIB, 0x33).unwrap();
    cosnap_disk::create_qcow2_overlay(&l1, &l2).unwrap();
    cosnap_disk::write_pattern(&l2, 50 * MIB, MIB, 0x55).unwrap();
    let snap1 = raw_model(
        &t.path().join("snap1.raw"),
        &[(0, 4 * MIB, 0x11), (2 * MIB, MIB, 0x33)],
    );
    let snap2 = raw_model(
        &t.path().join("snap2.raw"),
        &[
            (0, 4 * MIB, 0x11),
            (2 * MIB, MIB, 0x33),
            (50 * MIB, MIB, 0x55),
        ],
    );
    let spec = |p: &Path, f: Format| cosnap_disk::LayerSpec::new(p, f);
    let overlaid = |top: &Path, exported_as: Format, layers: Vec<cosnap_disk::LayerSpec>| {
        let mut d = disk("disk0", top, exported_as);
        d.layers = layers;
        plan(
            vec![vm("vm-v", "live", "Microsoft:snap-v", vec![d])],
            "snap1",
        )
    };
    let write = |p: &ExportPlan| {
        let report =
            write_package(p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
        let rep = verify_package(&report.path).unwrap();
        assert!(rep.ok(), "{:?}", rep.problems);
        report
    };

    let layers1 = vec![spec(&l1, Format::Qcow2), spec(&l0, Format::Vhdx)];
    let full = write(&overlaid(&l1, Format::Vhdx, layers1.clone()));
    let full_disk = disk_file(&full, 0, 0);
    assert!(
        full_disk.to_string_lossy().ends_with(".vhdx"),
        "{}",
        full_disk.display()
    );
    qemu_compare(&full_disk, &snap1);
    let full_as_qcow2 = write(&overlaid(&l1, Format::Qcow2, layers1));

    let layers2 = vec![
        spec(&l2, Format::Qcow2),
        spec(&l1, Format::Qcow2),
        spec(&l0, Format::Vhdx),
    ];
    for (base, base_format, ext) in [
        (&full, Format::Vhdx, ".avhdx"),
        (&full_as_qcow2, Format::Qcow2, ".qcow2"),
    ] {
        let mut p = overlaid(&l2, Format::Vhdx, layers2.clone());
        against_full(&mut p, base, &[(0, 0, &l1)]);
        p.vms[0].disks[0].base_export_format = Some(base_format);
        let diff = write(&p);
        let diff_disk = disk_file(&diff, 0, 0);
        assert!(
            diff_disk.to_string_lossy().ends_with(ext),
            "{}",
            diff_disk.display()
        );
        assert_eq!(layer_data(&diff_disk), [[50 * MIB, 51 * MIB]]);
        let image = cosnap_disk::open(&diff_disk, false).unwrap();
        let mut guest = vec![0u8; SIZE as usize];
        image.read_at(&mut guest, 0).unwrap();
        assert!(
            guest == std::fs::read(&snap2).unwrap(),
            "{}",
            diff_disk.display()
        );
    }
}

/// `xmllint --nonet --schema` against the pinned DMTF OVF 2.0.1 XSDs: (valid, messages).
fn ovf_schema_check(ovf: &Path) -> (bool, String) {
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ovf-2.0.1/dsp8023_2.0.1.xsd");
    let out = Command::new("xmllint")
        .args(["--nonet", "--noout", "--schema"])
        .arg(&xsd)
        .arg(ovf)
        .output()
        .expect("xmllint runs (libxml2-utils)");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success() && text.contains(" validates"), text)
}

#[test]
fn ovf_descriptor_validates_against_dmtf_ovf_2_0_1() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let out = t.path().join("exports");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let q = chain(&src, "a", Format::Qcow2);
    let v = chain(&src, "v", Format::Vhdx);
    // Two VMs (CPU, memory, a NIC with markup in its name, disks of two formats).
    let p1 = plan(
        vec![
            vm(
                "vm-a",
                "alpha <&> \"one\"",
                "Microsoft:snap1-a",
                vec![disk("disk0", &q.l0, Format::Qcow2)],
            ),
            vm(
                "vm-v",
                "vee",
                "Microsoft:snap1-v",
                vec![
                    disk("disk0", &v.l0, Format::Vhdx),
                    disk("disk1", &q.l0, Format::Qcow2),
                ],
            ),
        ],
        "snap1",
    );
    let full = write_package(&p1, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let ovf = full.path.join(&full.meta.descriptor);
    let (ok, msg) = ovf_schema_check(&ovf);
    assert!(ok, "{}: {msg}", ovf.display());

    // Without storage: disks without files.
    let mut no_storage = opts(true);
    no_storage.copy_storage = false;
    let bare = write_package(&p1, &out, &no_storage, &no_progress, &CancelToken::new()).unwrap();
    let (ok, msg) = ovf_schema_check(&bare.path.join(&bare.meta.descriptor));
    assert!(ok, "no-storage descriptor: {msg}");

    // A differential's descriptor (PreserveChain: .qcow2 / .avhdx children).
    let mut p2 = plan(
        vec![
            vm(
                "vm-a",
                "alpha <&> \"one\"",
                "Microsoft:snap2-a",
                vec![disk("disk0", &q.l1, Format::Qcow2)],
            ),
            vm(
                "vm-v",
                "vee",
                "Microsoft:snap2-v",
                vec![
                    disk("disk0", &v.l1, Format::Vhdx),
                    disk("disk1", &q.l1, Format::Qcow2),
                ],
            ),
        ],
        "snap2",
    );
    against_full(
        &mut p2,
        &full,
        &[(0, 0, &q.l0), (1, 0, &v.l0), (1, 1, &q.l0)],
    );
    let diff = write_package(&p2, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let (ok, msg) = ovf_schema_check(&diff.path.join(&diff.meta.descriptor));
    assert!(ok, "differential descriptor: {msg}");

    // The check can fail: a VirtualSystem without its required ovf:id, and sections out of
    // the order the schema fixes, are both rejected.
    let text = std::fs::read_to_string(&ovf).unwrap();
    let broken = [
        text.replacen("<VirtualSystem ovf:id=", "<VirtualSystem ovf:idx=", 1),
        {
            let refs_start = text.find("<References>").unwrap();
            let refs_end = text.find("</References>").unwrap() + "</References>".len();
            let refs = &text[refs_start..refs_end];
            let rest = text.replacen(refs, "", 1);
            rest.replacen("</DiskSection>", &format!("</DiskSection>{refs}"), 1)
        },
    ];
    for (i, b) in broken.iter().enumerate() {
        assert_ne!(b, &text);
        let p = t.path().join(format!("broken-{i}.ovf"));
        std::fs::write(&p, b).unwrap();
        let (ok, msg) = ovf_schema_check(&p);
        assert!(!ok, "broken descriptor {i} passed: {msg}");
    }
}

#[test]
fn a_package_disk_swapped_for_a_symlink_after_reading_is_still_read_as_opened() {
    let t = tempfile::tempdir().unwrap();
    let (p, out) = one_vm_plan(t.path());
    let r = write_package(&p, &out, &opts(true), &no_progress, &CancelToken::new()).unwrap();
    let pkg = read_package(&r.path).unwrap();
    let img = pkg.vms[0].disk_files[0].clone().unwrap();
    let exported = std::fs::read(&img).unwrap();
    // After the package was read, its disk becomes a link to a host file.
    let secret = t.path().join("secret.qcow2");
    std::fs::write(&secret, vec![0x5a; 1 << 16]).unwrap();
    std::fs::rename(&img, t.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&secret, &img).unwrap();
    let source = pkg.vms[0].disk_source(0).unwrap();
    assert!(
        std::fs::read(&source).unwrap() == exported,
        "{} reads the link's target, not the file the package reader opened",
        source.display()
    );
}
