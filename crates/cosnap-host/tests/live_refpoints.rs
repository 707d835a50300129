//! Reference points of a running VM: the differential export against one copies exactly the
//! blocks the guest wrote since (the persistent bitmap's ranges), base + differential equals
//! the frozen image, and after the VM's QEMU is killed the next differential falls back to a
//! full export with notice.

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
use cosnap_vmm::{
    Accelerator, Boot, DiskChain, DiskLayer, Hypervisor, LayerFormat, QemuHypervisor, SerialSocket,
    VmHandle, VmLaunch,
};

const DISK_BYTES: u64 = 32 << 20;

/// Starts the record-writing guest for `vm` in the host's run directory, on its recorded
/// chains (both disks are qcow2).
fn start_vm(hv: &QemuHypervisor, host: &Host, vm: &Vm, com2: &Path) -> (PidGuard, VmHandle) {
    let (kernel, initrd) = guest().expect("checked by the caller");
    let disks = vm
        .disks
        .iter()
        .map(|d| {
            let mut layers: Vec<DiskLayer> = host
                .disk_chain(&d.path)
                .unwrap()
                .into_iter()
                .map(|l| DiskLayer {
                    path: l.path,
                    format: LayerFormat::Qcow2,
                })
                .collect();
            layers.reverse();
            DiskChain { layers }
        })
        .collect();
    let launch = VmLaunch {
        name: vm.id.clone(),
        run_dir: host.data_dir().join("run").join(&vm.id),
        cpus: 1,
        memory_mb: 256,
        disks,
        boot: Boot::Kernel {
            kernel,
            initrd: Some(initrd),
            cmdline: format!(
                "console=ttyS0 quiet panic=-1 cosnap.vm={} cosnap.disks=vda,vdb",
                vm.name
            ),
        },
        com2: Some(SerialSocket::Server(com2.to_path_buf())),
        user_nic: false,
        accelerator: Some(Accelerator::Tcg),
    };
    let handle = hv.start(&launch).expect("start VM");
    wait_for_text(&hv.serial_log(&handle), "COSNAP-READY");
    (PidGuard(handle.pid), handle)
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

fn define_vm(host: &Host, images: &Path) -> (String, Vm) {
    let coll = host.define_collection("tracked", None, 0).unwrap().id;
    let disks = (0..2)
        .map(|i| {
            let path = images.join(format!("solo-{i}.qcow2"));
            cosnap_disk::create(&path, Format::Qcow2, DISK_BYTES).unwrap();
            DiskSpec {
                path,
                format: Some(Format::Qcow2),
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
    let images = root.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let hv = Arc::new(QemuHypervisor::new());
    let options = HostOptions {
        hypervisor: SharedHypervisor(hv.clone()),
        ..HostOptions::default()
    };
    let host = Host::open_with(root.path().join("data"), options).unwrap();
    let (coll, vm) = define_vm(&host, &images);
    let com2 = root.path().join("com2.sock");
    let mut running = Some(start_vm(&hv, &host, &vm, &com2));
    std::thread::sleep(Duration::from_secs(1));

    // Recovery snapshot + full export (the backup's base), then the reference point.
    let first = host.create_snapshot_now(&coll, 2, None).unwrap();
    let (_, base_files) = export(&host, &first, None, &root.path().join("full"));
    let rp = host
        .convert_to_refpoint(&first, &cosnap_host::NoJob)
        .unwrap();
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
    let frozen: Vec<PathBuf> = host.snapshot(&second).unwrap().vms[0]
        .disks
        .iter()
        .map(|d| d.path.clone())
        .collect();
    for ((layer, diff), base) in frozen.iter().zip(&diff_files).zip(&base_files) {
        let ChangeInfo::Known(dirty) =
            qcow2::dirty_ranges(layer, &snapshot_bitmap(&first)).unwrap()
        else {
            panic!("{}: the tracking bitmap is lost", layer.display());
        };
        assert!(
            !dirty.is_empty(),
            "the guest wrote since the reference point"
        );
        assert_eq!(top_layer_ranges(diff), dirty, "{}", diff.display());
        eprintln!(
            "differential: {} dirty bytes in {} ranges on {}",
            dirty.iter().map(|r| r.end - r.start).sum::<u64>(),
            dirty.len(),
            layer.display()
        );
        let written = open_chain(&host.disk_chain(layer).unwrap(), false).unwrap();
        let held = written
            .layer_map(0, written.virtual_size())
            .unwrap()
            .into_iter()
            .filter(|e| e.state != ExtentState::Inherited)
            .map(|e| e.offset..e.offset + e.len)
            .collect();
        assert_eq!(
            merge_ranges(held),
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
        let ChangeInfo::Known(dirty) =
            qcow2::dirty_ranges(&disk.path, &snapshot_bitmap(&first)).unwrap()
        else {
            panic!("{}: the tracking bitmap is lost", disk.path.display());
        };
        assert_eq!(top_layer_ranges(diff), dirty, "{}", diff.display());
        qemu_img_compare(diff, &disk.path);
        eprintln!(
            "after the live merge: {} dirty bytes in {} ranges on {}",
            dirty.iter().map(|r| r.end - r.start).sum::<u64>(),
            dirty.len(),
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
