//! kill -9 of cosnap during CreateSnapshot of a running VM, through the CLI: before the group
//! freeze (the new overlays go, the VM keeps its layers) and right after it (the VM writes to
//! its overlays, which recovery records as its active layers). Either way the VM is running
//! afterwards and the repository's chains pass `qemu-img check` and `cosnap disk check`.

use std::path::{Path, PathBuf};
use std::process::Command;

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
            "crashvm",
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
            "console=ttyS0 quiet panic=-1 cosnap.vm=crashvm cosnap.disks=vda,vdb",
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

/// The crash-point number of `label` in a `snapshot create` run (a real one, traced).
fn crash_point_of(data: &Path, label: &str) -> u64 {
    let env = Some(("COSNAP_CRASH_TRACE", "1".to_string()));
    let (code, _, stderr) = cosnap(
        data,
        env,
        &["snapshot", "create", "group", "--type", "recovery"],
    );
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

fn killed_create(data: &Path, at: u64) {
    let env = Some(("COSNAP_CRASH_AT", at.to_string()));
    let (code, _, stderr) = cosnap(
        data,
        env,
        &["snapshot", "create", "group", "--type", "recovery"],
    );
    assert_eq!(
        code, -1,
        "cosnap should have been killed at crash point {at}: {stderr}"
    );
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

#[test]
fn kill_during_a_live_create_leaves_the_vm_running_and_chains_in_agreement() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (vm, _guard) = running_vm(dir.path(), &data);

    let before_freeze = crash_point_of(&data, "create.before-freeze");
    let frozen = crash_point_of(&data, "create.frozen");
    let snapshots = |data: &Path| ok_json(data, &["snapshot", "list", "--json"]);
    assert_eq!(snapshots(&data).as_array().unwrap().len(), 2);
    assert!(snapshots(&data)[0]["pause_window_us"].as_u64().is_some());

    // Killed before the freeze: nothing switched, the new overlays are rolled back.
    let layers = active_layers(&data, &vm);
    killed_create(&data, before_freeze);
    assert_eq!(
        active_layers(&data, &vm),
        layers,
        "no switch before the freeze"
    );
    let disk_dir = data.join("disks").join(&vm);
    let files = std::fs::read_dir(&disk_dir).unwrap().count();
    assert_eq!(
        files, 4,
        "two frozen + two active layers, no leftover overlay"
    );

    // Killed right after the freeze: QEMU writes to the overlays, which become active.
    killed_create(&data, frozen);
    let now = active_layers(&data, &vm);
    assert_ne!(now, layers, "the switched overlays are the active layers");
    assert!(now.iter().all(|p| p.extension().unwrap() == "qcow2"));
    let shown = ok_json(&data, &["vm", "show", &vm, "--json"]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(
        snapshots(&data).as_array().unwrap().len(),
        2,
        "no snapshot recorded"
    );

    // The next snapshot of the running VM works on the recovered chains; once QEMU has
    // closed the images (stop --force), every chain checks clean.
    let (code, _, stderr) = cosnap(
        &data,
        None,
        &["snapshot", "create", "group", "--type", "recovery"],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = cosnap(&data, None, &["vm", "stop", &vm, "--force"]);
    assert_eq!(code, 0, "{stderr}");
    chains_check(&data, &vm);
}
