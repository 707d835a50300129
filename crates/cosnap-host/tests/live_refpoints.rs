//! Reference points of a running VM: the differential export against one copies exactly the
//! blocks the guest wrote since (the persistent bitmap's ranges), base + differential equals
//! the frozen image, and after the VM's QEMU is killed the next differential falls back to a
//! full export with notice.

mod live_guest;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cosnap_disk::qcow2::{self, ChangeInfo};
use cosnap_disk::{ExtentState, Format, merge_ranges, open_chain};
use cosnap_host::export::{ExportRequest, Roots, start_export};
use cosnap_host::live::snapshot_bitmap;
use cosnap_host::{DiskSpec, Host, HostOptions, SharedHypervisor, Vm, VmSpec};
use cosnap_test_support::{PidGuard, guest, wait_for_text};
use cosnap_vmm::{Hypervisor, QemuHypervisor, SerialSocket, VmHandle};
use live_guest::start_guest;

const DISK_BYTES: u64 = 32 << 20;

/// Starts the record-writing guest for `vm` (COM2 served at `com2`) and waits until it
/// writes.
fn start_vm(hv: &QemuHypervisor, host: &Host, vm: &Vm, com2: &Path) -> (PidGuard, VmHandle) {
    let (guard, handle) = start_guest(hv, host, vm, "", SerialSocket::Server(com2.to_path_buf()));
    wait_for_text(&hv.serial_log(&handle), "COSNAP-READY");
    (guard, handle)
}

/// Exports `sid` (differential against `base` when given, PreserveChain, fallback allowed)
/// and returns the package manifest and the exported disk files in disk order.
fn export(
    host: &Host,
    sid: &str,
    base: Option<&str>,
    dir: &Path,
) -> (serde_json::Value, Vec<PathBuf>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut req = ExportRequest::full(sid, dir);
    req.base = base.map(str::to_string);
    req.allow_fallback_full = true;
    let job = start_export(host, &req, Roots::Caller).unwrap();
    let done = host.wait_job(&job).unwrap();
    assert!(done.succeeded(), "{done:?}");

    let record = host.exports_of(sid).unwrap().pop().unwrap();
    let manifest = std::fs::read(record.package_dir.join("cosnap-package.json")).unwrap();
    let mut disks: Vec<_> = record
        .disks
        .iter()
        .map(|d| (d.disk_index, d.path.clone()))
        .collect();
    disks.sort();
    (
        serde_json::from_slice(&manifest).unwrap(),
        disks.into_iter().map(|(_, p)| p).collect(),
    )
}

/// Guest byte ranges the image's own top layer holds (its allocation map).
fn top_layer_ranges(image_path: &Path) -> Vec<std::ops::Range<u64>> {
    let image = cosnap_disk::open(image_path, false).unwrap();
    let held = image
        .layer_map(0, image.virtual_size())
        .unwrap()
        .into_iter()
        .filter(|e| e.state != ExtentState::Inherited)
        .map(|e| e.offset..e.offset + e.len)
        .collect();
    merge_ranges(held)
}

fn qemu_img_compare(a: &Path, b: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} vs {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A collection holding the VM "solo" with two new base disks of these formats.
fn define_vm_on(host: &Host, images: &Path, formats: [Format; 2]) -> (String, Vm) {
    let coll = host.define_collection("tracked", None, 0).unwrap().id;
    let disks = formats
        .iter()
        .enumerate()
        .map(|(i, format)| {
            let path = images.join(format!("solo-{i}.{}", format.name()));
            cosnap_disk::create(&path, *format, DISK_BYTES).unwrap();
            DiskSpec {
                path,
                format: Some(*format),
            }
        })
        .collect();
    let vm = host
        .define_vm(&VmSpec {
            id: None,
            name: "solo".into(),
            cpus: 1,
            memory_mb: 256,
            disks,
            nics: vec![],
        })
        .unwrap();
    host.add_member(&coll, &vm.id).unwrap();
    (coll, vm)
}

#[test]
fn differential_against_a_live_reference_point_copies_the_bitmap_and_falls_back_after_a_kill() {
    let Some(_) = guest() else { return };
    let root = tempfile::tempdir().unwrap();
    let hv = Arc::new(QemuHypervisor::new());
    let (host, coll, vm) = tracked_host(root.path(), &hv);
    let com2 = root.path().join("com2.sock");
    let mut running = Some(start_vm(&hv, &host, &vm, &com2));
    std::thread::sleep(Duration::from_secs(1));

    // Recovery snapshot + full export (the backup's base), then the reference point.
    let (first, base_files, rp) = full_backup_then_refpoint(&host, &coll, root.path());
    assert_eq!(
        host.refpoint_tracked_disks(&rp).unwrap(),
        (2, 2),
        "both disks of the running VM are tracked by a bitmap"
    );

    // The guest keeps writing; the next snapshot freezes what it wrote.
    std::thread::sleep(Duration::from_secs(2));
    let second = host.create_snapshot_now(&coll, 2, None).unwrap();
    let (manifest, diff_files) = export(&host, &second, Some(&rp), &root.path().join("diff"));
    assert_eq!(manifest["kind"], "differential", "{manifest}");
    let frozen = frozen_layers(&host, &second);
    for (((layer, diff), base), boundary) in frozen
        .iter()
        .zip(&diff_files)
        .zip(&base_files)
        .zip(boundaries(&host, &rp))
    {
        let dirty = written_since(layer, &first);
        assert!(
            !dirty.is_empty(),
            "the guest wrote since the reference point"
        );
        assert_eq!(top_layer_ranges(diff), dirty, "{}", diff.display());
        eprintln!("differential: {} on {}", summary(&dirty), layer.display());
        assert_eq!(
            written_above(&host, layer, &boundary),
            dirty,
            "the bitmap marks what the guest wrote"
        );
        assert!(diff.starts_with(root.path().join("diff")));
        assert!(base.is_file());
        qemu_img_compare(diff, layer);
    }

    // Destroying the second snapshot merges the active layer into the tracking layer (QEMU's
    // block-commit with pivot); the tracking bitmap goes on recording, commit included.
    host.destroy_snapshot(&second, &cosnap_host::NoJob).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let merged = host.create_snapshot_now(&coll, 2, None).unwrap();
    let (manifest, diff_files) = export(&host, &merged, Some(&rp), &root.path().join("merged"));
    assert_eq!(manifest["kind"], "differential", "{manifest}");
    for (disk, diff) in host.snapshot(&merged).unwrap().vms[0]
        .disks
        .iter()
        .zip(&diff_files)
    {
        assert_eq!(frozen.iter().find(|f| **f == disk.path), Some(&disk.path));
        let dirty = written_since(&disk.path, &first);
        assert_eq!(top_layer_ranges(diff), dirty, "{}", diff.display());
        qemu_img_compare(diff, &disk.path);
        eprintln!(
            "after the live merge: {} on {}",
            summary(&dirty),
            disk.path.display()
        );
    }

    // kill -9 of QEMU: the active layers' bitmaps were never stored; restarted, the VM runs on
    // layers without change tracking, and the next differential is a full with notice.
    let (guard, handle) = running.take().unwrap();
    hv.kill(&handle).unwrap();
    drop(guard);
    let vm_now = host.vm(&vm.id).unwrap();
    running = Some(start_vm(&hv, &host, &vm_now, &com2));
    std::thread::sleep(Duration::from_secs(1));
    let third = host.create_snapshot_now(&coll, 2, None).unwrap();
    let (manifest, full_files) = export(&host, &third, Some(&rp), &root.path().join("after-kill"));
    assert_eq!(manifest["kind"], "full", "{manifest}");
    let notice = manifest["fallback_to_full"].as_str().unwrap_or_default();
    assert!(notice.contains("change tracking"), "{manifest}");
    eprintln!("after kill -9: {notice}");
    for (file, disk) in full_files
        .iter()
        .zip(&host.snapshot(&third).unwrap().vms[0].disks)
    {
        qemu_img_compare(file, &disk.path);
    }

    let (_guard, handle) = running.take().unwrap();
    hv.kill(&handle).unwrap();
}

/// A recovery snapshot of `coll`, its full export under `root/full` (the backup's base),
/// and the reference point converted from it: (snapshot, exported disks, reference point).
fn full_backup_then_refpoint(
    host: &Host,
    coll: &str,
    root: &Path,
) -> (String, Vec<PathBuf>, String) {
    let first = host.create_snapshot_now(coll, 2, None).unwrap();
    let (_, base_files) = export(host, &first, None, &root.join("full"));
    let rp = host
        .convert_to_refpoint(&first, &cosnap_host::NoJob)
        .unwrap();
    (first, base_files, rp)
}

/// A host whose hypervisor is `hv`, with one collection holding the two-disk VM "solo".
fn tracked_host(root: &Path, hv: &Arc<QemuHypervisor>) -> (Host, String, Vm) {
    tracked_host_on(root, hv, [Format::Qcow2, Format::Qcow2])
}

/// [`tracked_host`] whose VM's base disks have these formats.
fn tracked_host_on(
    root: &Path,
    hv: &Arc<QemuHypervisor>,
    formats: [Format; 2],
) -> (Host, String, Vm) {
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let options = HostOptions {
        hypervisor: SharedHypervisor(hv.clone()),
        ..HostOptions::default()
    };
    let host = Host::open_with(root.join("data"), options).unwrap();
    let (coll, vm) = define_vm_on(&host, &images, formats);
    (host, coll, vm)
}

/// The guest byte ranges held by the layers of `top`'s recorded chain strictly above
/// `boundary`: everything written since the boundary was frozen.
fn written_above(host: &Host, top: &Path, boundary: &Path) -> Vec<std::ops::Range<u64>> {
    let chain = host.disk_chain(top).unwrap();
    let pos = chain
        .iter()
        .position(|l| l.path == boundary)
        .expect("the boundary lies below the frozen layer");
    let mut held = Vec::new();
    for i in 0..pos {
        let layer = open_chain(&chain[i..], false).unwrap();
        held.extend(
            layer
                .layer_map(0, layer.virtual_size())
                .unwrap()
                .into_iter()
                .filter(|e| e.state != ExtentState::Inherited)
                .map(|e| e.offset..e.offset + e.len),
        );
    }
    merge_ranges(held)
}

/// The reference point's boundary layer of each disk, in disk order.
fn boundaries(host: &Host, rp: &str) -> Vec<PathBuf> {
    host.refpoint(rp).unwrap().vms[0]
        .disks
        .iter()
        .map(|d| d.path.clone())
        .collect()
}

/// The guest byte ranges the tracking bitmap of reference point `first` marks on `layer`
/// (written since it was taken); fails the test if the bitmap is lost.
fn written_since(layer: &Path, first: &str) -> Vec<std::ops::Range<u64>> {
    let ChangeInfo::Known(dirty) = qcow2::dirty_ranges(layer, &snapshot_bitmap(first)).unwrap()
    else {
        panic!("{}: the tracking bitmap is lost", layer.display());
    };
    dirty
}

/// "N bytes in M ranges", for the test's log.
fn summary(ranges: &[std::ops::Range<u64>]) -> String {
    let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    format!("{bytes} bytes in {} ranges", ranges.len())
}

fn frozen_layers(host: &Host, sid: &str) -> Vec<PathBuf> {
    host.snapshot(sid).unwrap().vms[0]
        .disks
        .iter()
        .map(|d| d.path.clone())
        .collect()
}

/// Reference point → writes → a *standard* snapshot → writes → recovery snapshot: the
/// standard snapshot's layer carries its own bitmap, so the differential is still exactly
/// the blocks written since the reference point (on both layers above the boundary), and
/// base + differential equals the frozen image.
#[test]
fn a_standard_snapshot_after_a_live_reference_point_keeps_the_differential_exact() {
    let Some(_) = guest() else { return };
    let root = tempfile::tempdir().unwrap();
    let hv = Arc::new(QemuHypervisor::new());
    let (host, coll, vm) = tracked_host(root.path(), &hv);
    let (_guard, handle) = start_vm(&hv, &host, &vm, &root.path().join("com2.sock"));
    std::thread::sleep(Duration::from_secs(1));

    let (_, base_files, rp) = full_backup_then_refpoint(&host, &coll, root.path());
    std::thread::sleep(Duration::from_millis(1500));
    let standard = host.create_snapshot_now(&coll, 1, None).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let second = host.create_snapshot_now(&coll, 2, None).unwrap();

    let (manifest, diff_files) = export(&host, &second, Some(&rp), &root.path().join("diff"));
    assert_eq!(manifest["kind"], "differential", "{manifest}");
    assert!(manifest["fallback_to_full"].is_null(), "{manifest}");
    let frozen = frozen_layers(&host, &second);
    for (((layer, diff), base), boundary) in frozen
        .iter()
        .zip(&diff_files)
        .zip(&base_files)
        .zip(boundaries(&host, &rp))
    {
        let bitmaps = qcow2::list_bitmaps(layer).unwrap();
        assert!(
            bitmaps.iter().any(|b| b.name == snapshot_bitmap(&standard)),
            "the standard snapshot's layer tracks changes: {bitmaps:?}"
        );
        assert!(host.disk_chain(layer).unwrap().len() >= 3);

        let written = written_above(&host, layer, &boundary);
        assert!(
            !written.is_empty(),
            "the guest wrote since the reference point"
        );
        assert_eq!(top_layer_ranges(diff), written, "{}", diff.display());
        assert!(
            top_layer_ranges(base) != written,
            "the base holds what was written before the reference point"
        );
        qemu_img_compare(diff, layer);
        eprintln!("through a standard snapshot: {}", summary(&written));
    }
    hv.kill(&handle).unwrap();
}

/// The reference point's tracking layer released into two children (ApplySnapshot while
/// off, with a snapshot holding the other branch): its blocks are copied into both
/// children, which no bitmap records, so the next differentials fall back to full with
/// notice — and the release itself works although the children carried bitmaps.
#[test]
fn a_tracking_layer_pulled_into_two_branches_falls_back_to_full_with_notice() {
    let Some(_) = guest() else { return };
    let root = tempfile::tempdir().unwrap();
    let hv = Arc::new(QemuHypervisor::new());
    let (host, coll, vm) = tracked_host(root.path(), &hv);
    let (_guard, _handle) = start_vm(&hv, &host, &vm, &root.path().join("com2.sock"));
    std::thread::sleep(Duration::from_secs(1));

    let (_, _, rp) = full_backup_then_refpoint(&host, &coll, root.path());
    std::thread::sleep(Duration::from_secs(1));
    let second = host.create_snapshot_now(&coll, 1, None).unwrap();
    let tracking = frozen_layers(&host, &second);
    std::thread::sleep(Duration::from_secs(1));
    let third = host.create_snapshot_now(&coll, 1, None).unwrap();
    let other_branch = frozen_layers(&host, &third);
    host.stop_vm(&vm.id, true).unwrap();

    host.apply_snapshot_now(&second, None).unwrap();
    host.destroy_snapshot(&second, &cosnap_host::NoJob).unwrap();
    for (gone, child) in tracking.iter().zip(&other_branch) {
        assert!(!gone.exists(), "the tracking layer was pulled and deleted");
        assert!(qcow2::list_bitmaps(child).unwrap().is_empty());
        let out = Command::new("qemu-img")
            .arg("check")
            .arg(child)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    let fourth = host.create_snapshot_now(&coll, 2, None).unwrap();
    for (sid, dir) in [(&third, "third"), (&fourth, "fourth")] {
        let (manifest, files) = export(&host, sid, Some(&rp), &root.path().join(dir));
        assert_eq!(manifest["kind"], "full", "{manifest}");
        let notice = manifest["fallback_to_full"].as_str().unwrap_or_default();
        assert!(notice.contains("change-tracking layer"), "{manifest}");
        eprintln!("{dir}: {notice}");
        for (file, layer) in files.iter().zip(frozen_layers(&host, sid)) {
            qemu_img_compare(file, &layer);
        }
    }
}

/// The guest-visible bytes of `image` (its chain opened by cosnap-disk's reader, following
/// the parents it names) written to a new raw file `raw`, for qemu-img to compare.
fn to_raw(image: &Path, raw: &Path) {
    let chain = cosnap_disk::open(image, false).unwrap();
    let file = std::fs::File::create(raw).unwrap();
    let size = chain.virtual_size();
    file.set_len(size).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < size {
        let n = buf.len().min((size - offset) as usize);
        chain.read_at(&mut buf[..n], offset).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            std::os::unix::fs::FileExt::write_all_at(&file, &buf[..n], offset).unwrap();
        }
        offset += n as u64;
    }
}

/// A running VM on a VHDX base (and a qcow2 one): its differential against a live reference
/// point is a `.avhdx` over the exported `.vhdx`, holding exactly the blocks the guest wrote
/// since; base + differential, read by cosnap-disk's chain reader into a raw file, equals the
/// frozen image (qcow2 overlay over the VHDX base, read by qemu).
#[test]
fn a_differential_on_a_vhdx_base_is_an_avhdx_of_exactly_the_written_blocks() {
    let Some(_) = guest() else { return };
    let root = tempfile::tempdir().unwrap();
    let hv = Arc::new(QemuHypervisor::new());
    let (host, coll, vm) = tracked_host_on(root.path(), &hv, [Format::Vhdx, Format::Qcow2]);
    let (_guard, handle) = start_vm(&hv, &host, &vm, &root.path().join("com2.sock"));
    std::thread::sleep(Duration::from_secs(1));

    let (first, base_files, rp) = full_backup_then_refpoint(&host, &coll, root.path());
    std::thread::sleep(Duration::from_secs(2));
    let second = host.create_snapshot_now(&coll, 2, None).unwrap();
    let (manifest, diff_files) = export(&host, &second, Some(&rp), &root.path().join("diff"));
    assert_eq!(manifest["kind"], "differential", "{manifest}");

    let frozen = frozen_layers(&host, &second);
    let exts = ["avhdx", "qcow2"];
    let boundaries = boundaries(&host, &rp);
    for (i, ((layer, diff), base)) in frozen.iter().zip(&diff_files).zip(&base_files).enumerate() {
        assert_eq!(diff.extension().unwrap(), exts[i], "{}", diff.display());
        assert_eq!(base.extension().unwrap(), ["vhdx", "qcow2"][i]);
        let dirty = written_since(layer, &first);
        assert!(
            !dirty.is_empty(),
            "the guest wrote since the reference point"
        );
        assert_eq!(top_layer_ranges(diff), dirty, "{}", diff.display());
        assert_eq!(written_above(&host, layer, &boundaries[i]), dirty);

        let raw = root.path().join(format!("disk{i}.raw"));
        to_raw(diff, &raw);
        qemu_img_compare(&raw, layer);
        let base_raw = root.path().join(format!("base{i}.raw"));
        to_raw(base, &base_raw);
        qemu_img_compare(&base_raw, &boundaries[i]);
        eprintln!("{}: {}", diff.display(), summary(&dirty));
    }
    hv.kill(&handle).unwrap();
}
