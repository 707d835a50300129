//! kill -9 of cosnap during DestroySnapshot of a running VM, through the CLI: right after the
//! release is committed (no live merge done yet) and after the first live merge (one disk
//! merged by QEMU, the other not), and right after a pivot (the guest paused) — also with
//! QEMU killed then. The next CLI call recovers the release; the VM is running (or off),
//! the destroyed snapshot is gone, the repository's chains are the files QEMU writes (a
//! following snapshot and export work), and every chain passes `qemu-img check`,
//! `cosnap disk check` and the guest-record checker.

mod live_common;

use std::path::Path;

use cosnap_test_support::records::{VmRecords, check_vm, file_reader, scan_disk};
use cosnap_test_support::{PidGuard, guest, qemu_img};

use live_common::*;

fn create_snapshot(data: &Path) -> String {
    let created = ok_json(
        data,
        &[
            "snapshot", "create", "group", "--type", "recovery", "--json",
        ],
    );
    created["id"].as_str().unwrap().to_string()
}

fn snapshot_ids(data: &Path) -> Vec<String> {
    ok_json(data, &["snapshot", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The crash-point number of `label` in a `snapshot destroy` of a fresh snapshot (a real
/// destroy, traced).
fn destroy_crash_point_of(data: &Path, label: &str) -> u64 {
    let snapshot = create_snapshot(data);
    crash_point_of(data, label, &["snapshot", "destroy", &snapshot])
}

/// Destroys a fresh snapshot of the running VM with cosnap killed at crash point `at`;
/// the next CLI call recovers. Returns the snapshot's id.
fn killed_destroy(data: &Path, vm: &str, at: u64) -> String {
    let snapshot = create_snapshot(data);
    killed_at(data, at, &["snapshot", "destroy", &snapshot]);

    let shown = ok_json(data, &["vm", "show", vm, "--json"]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(
        !snapshot_ids(data).contains(&snapshot),
        "the committed destroy is rolled forward"
    );
    snapshot
}

/// The repository's chains are the ones QEMU writes: a snapshot of the running VM and a
/// full export of it work on them.
fn snapshot_and_export_work(data: &Path, out: &Path) {
    let snapshot = create_snapshot(data);
    std::fs::create_dir_all(out).unwrap();
    let (code, stdout, stderr) = cosnap(
        data,
        None,
        &[
            "export",
            &snapshot,
            out.to_str().unwrap(),
            "--wait",
            "--json",
        ],
    );
    assert_eq!(code, 0, "export: {stdout}{stderr}");
}

/// Guest records on each active layer (read through qemu-img as raw): a gap-free prefix,
/// the VM's disks at most 1 apart.
fn records_intact(dir: &Path, data: &Path, vm: &str) {
    let disks = ["vda", "vdb"];
    let mut records = Vec::new();
    for (layer, disk) in active_layers(data, vm).iter().zip(disks) {
        let raw = dir.join(format!("{disk}.raw"));
        qemu_img(&[
            "convert",
            "-O",
            "raw",
            layer.to_str().unwrap(),
            raw.to_str().unwrap(),
        ]);
        let file = std::fs::File::open(&raw).unwrap();
        let size = file.metadata().unwrap().len();
        let mut read = file_reader(&file);
        let found = scan_disk("destroyvm", disk, size, &mut read)
            .unwrap_or_else(|e| panic!("{}: {e}", layer.display()));
        records.push(found);
    }
    let vm_records = VmRecords {
        vm: "destroyvm".into(),
        disks: records,
    };
    check_vm(&vm_records).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        vm_records.min_count() > 0,
        "the guest wrote: {vm_records:?}"
    );
}

#[test]
fn kill_during_a_live_destroy_leaves_the_vm_running_and_chains_in_agreement() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (vm, guard) = running_vm(dir.path(), &data, "destroyvm");
    create_snapshot(&data);

    let committed = destroy_crash_point_of(&data, "destroy-live.committed");
    let first_merge = destroy_crash_point_of(&data, "destroy-live.step");

    // Killed after the commit point, before QEMU merged anything: recovery runs both merges.
    killed_destroy(&data, &vm, committed);
    snapshot_and_export_work(&data, &dir.path().join("export-1"));

    // Killed after QEMU merged the first disk: recovery skips it and merges the second.
    killed_destroy(&data, &vm, first_merge);
    snapshot_and_export_work(&data, &dir.path().join("export-2"));

    // Killed right after the first pivot, the guest paused, the job not dismissed: recovery
    // finishes that job, merges the second disk, and resumes the VM.
    let pivoted = destroy_crash_point_of(&data, "destroy-live.pivoted");
    killed_destroy(&data, &vm, pivoted);
    snapshot_and_export_work(&data, &dir.path().join("export-3"));

    both_die_after_a_pivot(dir.path(), &data, &vm, pivoted, guard);
    chains_check(&data, &vm);
    records_intact(dir.path(), &data, &vm);
}

/// cosnap killed right after the first disk pivoted, then QEMU killed too: recovery finds the
/// VM off and merges that disk's child again offline. The guest stood paused from before the
/// pivot, so nothing newer in the merge target is overwritten: its guest view is unchanged.
fn both_die_after_a_pivot(dir: &Path, data: &Path, vm: &str, pivoted: u64, qemu: PidGuard) {
    let targets = active_layers(data, vm);
    let snapshot = create_snapshot(data);
    killed_at(data, pivoted, &["snapshot", "destroy", &snapshot]);
    let status = std::process::Command::new("kill")
        .args(["-9", &qemu.0.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(qemu);
    let proc_dir = format!("/proc/{}/cmdline", qemu_pid(data, vm));
    for _ in 0..100 {
        if !Path::new(&proc_dir).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let before = dir.join("pivoted-before.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-O",
        "raw",
        targets[0].to_str().unwrap(),
        before.to_str().unwrap(),
    ]);
    assert!(
        !snapshot_ids(data).contains(&snapshot),
        "the committed destroy is rolled forward"
    );
    assert_eq!(active_layers(data, vm), targets);
    let shown = ok_json(data, &["vm", "show", vm, "--json"]);
    assert_eq!(shown["state"], "off", "{shown}");
    qemu_img(&[
        "compare",
        before.to_str().unwrap(),
        targets[0].to_str().unwrap(),
    ]);
}

/// The pid the VM's QEMU wrote (it may be gone).
fn qemu_pid(data: &Path, vm: &str) -> i32 {
    std::fs::read_to_string(data.join("run").join(vm).join("qemu.pid"))
        .map(|t| t.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}
