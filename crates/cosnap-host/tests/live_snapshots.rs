//! The consistency proof on running VMs: two guests with two disks each (qcow2 and VHDX
//! bases) write numbered O_DIRECT records, the second one a follower of the first over their
//! serial link; cosnap takes group snapshots at random moments while they write. Every frozen
//! image and every export form (full, PreserveChain differential applied to its base, Merge,
//! differential against a reference point, import of a package into a fresh repository)
//! must hold a gap-free prefix of intact records per disk, one VM's counts at most 1 apart,
//! and no follower record without its cause in the leader's images. Snapshotting the VMs one
//! after another (no group pause) must be caught, and so must a differential applied to the
//! wrong base.

mod live_export_forms;
mod live_guest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cosnap_disk::qcow2::{self, ChangeInfo};
use cosnap_disk::{ExtentState, Format, merge_ranges, open_chain};
use cosnap_export::{BackupIntent, Package};
use cosnap_host::live::snapshot_bitmap;
use cosnap_host::{DiskSpec, Host, HostError, HostOptions, NoJob, SharedHypervisor, Vm, VmSpec};
use cosnap_test_support::records::{check_cause, check_vm};
use cosnap_test_support::{guest, qemu_check_clean, wait_for_text};
use cosnap_vmm::{Hypervisor, QemuHypervisor, SerialSocket, VmState};

use live_export_forms::{
    Exports, WrongBase, assert_differential, assert_import_refused, assert_wrong_base_rejected,
    check_form, export, frozen_disks, import_fresh, package_disks, repository_disks,
    verified_package, vm_records,
};
use live_guest::start_guest;

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 32 * MIB;

/// Two VMs (lead: qcow2 + VHDX base, foll: VHDX + qcow2 base) in one collection.
fn define_group(host: &Host, images: &Path) -> (String, Vm, Vm) {
    let coll = host.define_collection("writers", None, 0).unwrap().id;
    let mut vms = Vec::new();
    for (name, formats) in [
        ("lead", [Format::Qcow2, Format::Vhdx]),
        ("foll", [Format::Vhdx, Format::Qcow2]),
    ] {
        let disks = formats
            .iter()
            .enumerate()
            .map(|(i, format)| {
                let path = images.join(format!("{name}-{i}.{}", format.name()));
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
                name: name.into(),
                cpus: 1,
                memory_mb: 256,
                disks,
                nics: vec![],
            })
            .unwrap();
        host.add_member(&coll, &vm.id).unwrap();
        vms.push(vm);
    }
    let foll = vms.pop().unwrap();
    let lead = vms.pop().unwrap();
    (coll, lead, foll)
}

/// The frozen layers of `vm` in snapshot `sid`, in disk order.
fn frozen_layers(host: &Host, sid: &str, vm_id: &str) -> Vec<PathBuf> {
    let snap = host.snapshot(sid).unwrap();
    let vm = snap.vms.iter().find(|v| v.vm_id == vm_id).unwrap();
    vm.disks.iter().map(|d| d.path.clone()).collect()
}

/// A pause of 0.2–2 s, different each round (a cheap generator is enough here).
fn random_gap(round: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(200 + (nanos / 1000 + round * 7919) % 1800)
}

#[test]
fn group_snapshots_of_running_writers_are_consistent_and_sequential_ones_are_caught() {
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
    let (coll, lead, foll) = define_group(&host, &images);

    let link = root.path().join("link.sock");
    let lead_vm = start_guest(
        &hv,
        &host,
        &lead,
        "cosnap.peer=ttyS1",
        SerialSocket::Server(link.clone()),
    );
    let foll_vm = start_guest(
        &hv,
        &host,
        &foll,
        "cosnap.mode=follower cosnap.peer=ttyS1",
        SerialSocket::Client(link),
    );
    wait_for_text(&hv.serial_log(&lead_vm.1), "COSNAP-READY");
    wait_for_text(&hv.serial_log(&foll_vm.1), "COSNAP-READY");
    std::thread::sleep(Duration::from_secs(2));

    // Five group snapshots at random moments while both write flat out.
    let mut snapshots = Vec::new();
    for round in 0..5 {
        std::thread::sleep(random_gap(round));
        let sid = host.create_snapshot_now(&coll, 2, None).unwrap();
        let snap = host.snapshot(&sid).unwrap();
        assert!(
            snap.pause_window_us.is_some(),
            "a live snapshot keeps its pause window"
        );
        snapshots.push(sid);
    }

    // Every export form of the last snapshot while the VMs keep running: full, and
    // PreserveChain and Merge against the one before; the oldest one in full is the wrong
    // base of the negative control.
    let last = snapshots[snapshots.len() - 1].clone();
    let before_last = snapshots[snapshots.len() - 2].clone();
    let oldest = snapshots[0].clone();
    let exporting = Instant::now();
    let exports = Exports::write(
        &host,
        (&oldest, &before_last, &last),
        &root.path().join("exports"),
    );
    eprintln!("five exports while the VMs run: {:?}", exporting.elapsed());

    // ApplySnapshot is refused while a member runs.
    let refused = host.check_apply_snapshot(&snapshots[0]).unwrap_err();
    assert!(matches!(refused, HostError::InvalidState(_)), "{refused}");

    let caught_after = negative_control(&host, &lead, &foll);
    eprintln!(
        "sequential snapshots caught with the follower frozen {caught_after:?} after the leader"
    );

    // DestroySnapshot while they run: the oldest snapshot's layers merge down inside the
    // running chains (QEMU's block-commit), then a fresh snapshot is destroyed at once, which
    // merges each active layer into its parent with a pivot.
    host.destroy_snapshot(&snapshots.remove(0), &NoJob).unwrap();
    let fresh = host.create_snapshot(&coll, 1, &NoJob).unwrap();
    let before: Vec<PathBuf> = frozen_layers(&host, &fresh, &lead.id);
    host.destroy_snapshot(&fresh, &NoJob).unwrap();
    let lead_now = host.vm(&lead.id).unwrap();
    let active: Vec<PathBuf> = lead_now.disks.iter().map(|d| d.path.clone()).collect();
    assert_eq!(
        active, before,
        "the active layers pivoted onto their parents"
    );
    for vm in [&lead, &foll] {
        assert_eq!(
            host.vm_state(&vm.id).unwrap(),
            VmState::Running,
            "{} keeps running",
            vm.name
        );
    }
    std::thread::sleep(Duration::from_secs(1));

    // QEMU closes the images cleanly (quit): chains on disk and in the repository agree.
    host.stop_vm(&foll.id, true).unwrap();
    host.stop_vm(&lead.id, true).unwrap();
    drop(foll_vm);
    drop(lead_vm);
    assert_eq!(host.verify().unwrap(), Vec::<String>::new());
    for vm in [&lead, &foll] {
        for disk in host.vm(&vm.id).unwrap().disks {
            qemu_check_clean(&disk.path);
        }
    }

    let mut last_lead_count = 0;
    for sid in &snapshots {
        let leader = vm_records("lead", &frozen_disks(&host, sid, &lead.id));
        let follower = vm_records("foll", &frozen_disks(&host, sid, &foll.id));
        check_vm(&leader).unwrap();
        check_vm(&follower).unwrap();
        check_cause(&leader, &follower).unwrap();
        assert!(
            leader.min_count() > last_lead_count,
            "the writers advanced between snapshots"
        );
        last_lead_count = leader.min_count();
        eprintln!(
            "snapshot {sid}: lead {:?} foll {:?} peer max {:?}",
            leader.disks.iter().map(|d| d.count).collect::<Vec<_>>(),
            follower.disks.iter().map(|d| d.count).collect::<Vec<_>>(),
            follower.max_peer()
        );
    }

    // Each recovery snapshot put a persistent bitmap on the layers it created; once the
    // next snapshot froze those layers, QEMU stored the bitmaps, and they mark exactly the
    // clusters the guest wrote into the layer.
    for pair in snapshots.windows(2) {
        for vm in [&lead, &foll] {
            for layer in frozen_layers(&host, &pair[1], &vm.id) {
                assert_bitmap_matches_layer(&host, &layer, &snapshot_bitmap(&pair[0]));
            }
        }
    }

    let checking = Instant::now();
    check_export_forms(&host, &exports, (&lead, &foll), root.path());

    // PreserveChain (applied to the same base export) and Merge against a reference point,
    // converted now, offline, from the snapshot before the last: QEMU stored its tracking
    // bitmaps when the last snapshot froze the layer.
    let rp = host.convert_to_refpoint(&before_last, &NoJob).unwrap();
    for (intent, form, dir) in [
        (
            BackupIntent::PreserveChain,
            "differential against a reference point, applied to its base",
            "refpoint-chained",
        ),
        (
            BackupIntent::Merge,
            "Merge against a reference point",
            "refpoint-merged",
        ),
    ] {
        let against_rp = export(
            &host,
            &last,
            Some(&rp),
            intent,
            &root.path().join("exports").join(dir),
        );
        let package = verified_package(&against_rp.package_dir);
        assert_differential(&package, &rp, intent);
        check_form(form, &host, &last, (&lead, &foll), &|vm_id| {
            package_disks(&package, vm_id)
        });
    }
    eprintln!("export forms checked in {:?}", checking.elapsed());
}

/// Every export form of `exports` passes the proof against the frozen images; the
/// differential applied to the wrong base is refused; import of a differential is refused.
fn check_export_forms(host: &Host, exports: &Exports, vms: (&Vm, &Vm), root: &Path) {
    let snapshot_of = |package: &Package| package.meta.snapshot_id.clone();

    for (form, dir) in [
        ("full export", &exports.full),
        ("full export of the base", &exports.base_full),
    ] {
        let package = verified_package(dir);
        check_form(form, host, &snapshot_of(&package), vms, &|vm_id| {
            package_disks(&package, vm_id)
        });
    }

    let base = verified_package(&exports.base_full).meta.snapshot_id;
    let chained = verified_package(&exports.chained);
    assert_differential(&chained, &base, BackupIntent::PreserveChain);
    check_form(
        "PreserveChain differential applied to its base",
        host,
        &snapshot_of(&chained),
        vms,
        &|vm_id| package_disks(&chained, vm_id),
    );
    let merged = verified_package(&exports.merged);
    assert_differential(&merged, &base, BackupIntent::Merge);
    check_form("Merge export", host, &snapshot_of(&merged), vms, &|vm_id| {
        package_disks(&merged, vm_id)
    });

    for (form, dir, data) in [
        ("full export imported", &exports.full, "import-full"),
        ("Merge export imported", &exports.merged, "import-merge"),
    ] {
        let imported = import_fresh(dir, &root.join(data));
        check_form(form, host, &snapshot_of(&chained), vms, &|vm_id| {
            repository_disks(&imported, vm_id)
        });
    }
    assert_import_refused(&exports.chained, &root.join("import-chained"));

    let older = verified_package(&exports.older_full);
    let blank = root.join("blank");
    for (name, wrong) in [
        ("the oldest snapshot's export", WrongBase::Older(&older)),
        ("blank disks", WrongBase::Blank(&blank)),
    ] {
        for outcome in assert_wrong_base_rejected(&chained, wrong, &[vms.0, vms.1]) {
            eprintln!("differential over {name}: {outcome}");
        }
    }
}

/// The bitmap `name` on `layer` (read by cosnap's reader) covers exactly the layer's own
/// allocated clusters (the overlay's clusters are the bitmap's 64 KiB granules).
fn assert_bitmap_matches_layer(host: &Host, layer: &Path, name: &str) {
    let listed = qcow2::list_bitmaps(layer).unwrap();
    let bitmap = listed.iter().find(|b| b.name == name);
    assert!(
        bitmap.is_some_and(|b| !b.in_use),
        "{}: {listed:?}",
        layer.display()
    );

    let ChangeInfo::Known(dirty) = qcow2::dirty_ranges(layer, name).unwrap() else {
        panic!("{}: change information lost", layer.display());
    };
    let image = open_chain(&host.disk_chain(layer).unwrap(), false).unwrap();
    let written: Vec<_> = image
        .layer_map(0, image.virtual_size())
        .unwrap()
        .into_iter()
        .filter(|e| e.state != ExtentState::Inherited)
        .map(|e| e.offset..e.offset + e.len)
        .collect();
    assert!(
        !dirty.is_empty(),
        "{}: the guest wrote into it",
        layer.display()
    );
    assert_eq!(dirty, merge_ranges(written), "{}", layer.display());
}

/// Negative control: each VM snapshotted on its own (no group pause), the leader first, then
/// the follower once a second. The follower lags its leader by a number of steps (its serial
/// input queues), so the cut breaks once the follower has consumed past the leader's frozen
/// count: the check must say so within 60 s. Returns how long after the leader it did.
fn negative_control(host: &Host, lead: &Vm, foll: &Vm) -> Duration {
    let lead_only = host.define_collection("lead-only", None, 0).unwrap().id;
    host.add_member(&lead_only, &lead.id).unwrap();
    let foll_only = host.define_collection("foll-only", None, 0).unwrap().id;
    host.add_member(&foll_only, &foll.id).unwrap();

    let early = host.create_snapshot_now(&lead_only, 2, None).unwrap();
    let frozen_at = Instant::now();
    let leader = vm_records("lead", &frozen_disks(host, &early, &lead.id));
    check_vm(&leader).unwrap();
    while frozen_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(1));
        let late = host.create_snapshot_now(&foll_only, 2, None).unwrap();
        let follower = vm_records("foll", &frozen_disks(host, &late, &foll.id));
        check_vm(&follower).unwrap();
        if check_cause(&leader, &follower).is_err() {
            return frozen_at.elapsed();
        }
    }
    panic!("sequential snapshots a minute apart were never caught: the check has no teeth");
}
