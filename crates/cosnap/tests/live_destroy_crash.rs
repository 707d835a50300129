//! kill -9 of cosnap during DestroySnapshot of a running VM, through the CLI: right after the
//! release is committed (no live merge done yet) and after the first live merge (one disk
//! merged by QEMU, the other not). The next CLI call recovers the release; the VM is running,
//! the destroyed snapshot is gone, the repository's chains are the files QEMU writes (a
//! following snapshot and export work), and every chain passes `qemu-img check`,
//! `cosnap disk check` and the guest-record checker.

use std::path::{Path, PathBuf};
use std::process::Command;

use cosnap_test_support::records::{VmRecords, check_vm, file_reader, scan_disk};
use cosnap_test_support::{PidGuard, guest, qemu_img, wait_for_text};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

fn cosnap(data: &Path, env: Option<(&str, String)>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.arg("--data-dir").arg(data).args(args);
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn ok_json(data: &Path, args: &[&str]) -> Value {
    let (code, stdout, stderr) = cosnap(data, None, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn active_layers(data: &Path, vm: &str) -> Vec<PathBuf> {
    ok_json(data, &["vm", "show", vm, "--json"])["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect()
}

/// A running two-disk VM (qcow2 and VHDX bases) in collection `group`; returns its id and
/// the guard that kills its QEMU.
fn running_vm(dir: &Path, data: &Path) -> (String, PidGuard) {
    let (kernel, initrd) = guest().expect("checked by the caller");
    let a = dir.join("a.qcow2");
    let b = dir.join("b.vhdx");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "32M"]);
    qemu_img(&["create", "-q", "-f", "vhdx", b.to_str().unwrap(), "32M"]);
    let vm = ok_json(
        data,
        &[
            "vm",
            "define",
            "--name",
            "destroyvm",
            "--cpus",
            "1",
            "--memory-mb",
            "256",
            "--disk",
            a.to_str().unwrap(),
            "--disk",
            b.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 quiet panic=-1 cosnap.vm=destroyvm cosnap.disks=vda,vdb",
            "--json",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, stderr) = cosnap(data, None, &["collection", "define", "group"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = cosnap(data, None, &["collection", "add-member", "group", &vm]);
    assert_eq!(code, 0, "{stderr}");

    let (code, _, stderr) = cosnap(data, None, &["vm", "start", &vm]);
    assert_eq!(code, 0, "{stderr}");
    let run_dir = data.join("run").join(&vm);
    let guard = PidGuard::from_pidfile(&run_dir.join("qemu.pid")).expect("pid file");
    wait_for_text(&run_dir.join("serial.log"), "COSNAP-READY");
    (vm, guard)
}

fn chains_check(data: &Path, vm: &str) {
    for layer in active_layers(data, vm) {
        let (code, stdout, stderr) =
            cosnap(data, None, &["disk", "check", layer.to_str().unwrap()]);
        assert_eq!(
            code,
            0,
            "cosnap disk check {}: {stdout}{stderr}",
            layer.display()
        );
        qemu_img(&["check", layer.to_str().unwrap()]);
    }
}

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
    let env = Some(("COSNAP_CRASH_TRACE", "1".to_string()));
    let (code, _, stderr) = cosnap(data, env, &["snapshot", "destroy", &snapshot]);
    assert_eq!(code, 0, "{stderr}");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("cosnap-crash-point "))
        .find_map(|l| {
            let (n, name) = l.split_once(' ')?;
            (name == label).then(|| n.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no crash point {label}: {stderr}"))
}

/// Destroys a fresh snapshot of the running VM with cosnap killed at crash point `at`;
/// the next CLI call recovers. Returns the snapshot's id.
fn killed_destroy(data: &Path, vm: &str, at: u64) -> String {
    let snapshot = create_snapshot(data);
    let env = Some(("COSNAP_CRASH_AT", at.to_string()));
    let (code, _, stderr) = cosnap(data, env, &["snapshot", "destroy", &snapshot]);
    assert_eq!(
        code, -1,
        "cosnap should have been killed at crash point {at}: {stderr}"
    );

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
    let (vm, _guard) = running_vm(dir.path(), &data);
    create_snapshot(&data);

    let committed = destroy_crash_point_of(&data, "destroy-live.committed");
    let first_merge = destroy_crash_point_of(&data, "destroy-live.step");

    // Killed after the commit point, before QEMU merged anything: recovery runs both merges.
    killed_destroy(&data, &vm, committed);
    snapshot_and_export_work(&data, &dir.path().join("export-1"));

    // Killed after QEMU merged the first disk: recovery skips it and merges the second.
    killed_destroy(&data, &vm, first_merge);
    snapshot_and_export_work(&data, &dir.path().join("export-2"));

    let (code, _, stderr) = cosnap(&data, None, &["vm", "stop", &vm, "--force"]);
    assert_eq!(code, 0, "{stderr}");
    chains_check(&data, &vm);
    records_intact(dir.path(), &data, &vm);
}
