//! kill -9 of cosnap during CreateSnapshot of a running VM, through the CLI: before the group
//! freeze (the new overlays go, the VM keeps its layers) and right after it (the VM writes to
//! its overlays, which recovery records as its active layers). Either way the VM is running
//! afterwards and the repository's chains pass `qemu-img check` and `cosnap disk check`.

mod live_common;

use std::path::Path;

use cosnap_test_support::guest;
use live_common::{
    active_layers, chains_check, cosnap, crash_point_of, killed_at, ok_json, running_vm,
};

const CREATE: &[&str] = &["snapshot", "create", "group", "--type", "recovery"];

fn killed_create(data: &Path, at: u64) {
    killed_at(data, at, CREATE);
}

#[test]
fn kill_during_a_live_create_leaves_the_vm_running_and_chains_in_agreement() {
    if guest().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (vm, _guard) = running_vm(dir.path(), &data, "crashvm");

    let before_freeze = crash_point_of(&data, "create.before-freeze", CREATE);
    let frozen = crash_point_of(&data, "create.frozen", CREATE);
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
