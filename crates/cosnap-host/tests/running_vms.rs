//! VMs running under QEMU through the host: lifecycle, EnabledState and RequestStateChange over
//! the CIM face, a dead QEMU seen as off, a restarted host re-attaching, run settings checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cosnap_cim::{CimProvider, Value};
use cosnap_host::cim::vm_path;
use cosnap_host::{DiskSpec, Host, HostError, HostOptions, VmBoot, VmRunSettings, VmSpec};
use cosnap_test_support::{PidGuard, guest, qemu_img, wait_for_text};

fn define(host: &Host, dir: &Path, kernel: &Path, initrd: &Path) -> String {
    let disk = dir.join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    let vm = host
        .define_vm(&VmSpec {
            id: None,
            name: "runner".into(),
            cpus: 1,
            memory_mb: 256,
            disks: vec![DiskSpec {
                path: disk,
                format: None,
            }],
            nics: vec![],
        })
        .unwrap();
    let settings = VmRunSettings {
        boot: VmBoot::Kernel {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            cmdline:
                "console=ttyS0 quiet panic=-1 cosnap.vm=runner cosnap.mode=idle cosnap.disks=vda"
                    .into(),
        },
        com2: Some(dir.join("com2.sock")),
    };
    host.set_run_settings(&vm.id, &settings).unwrap();
    vm.id
}

fn enabled_state(host: &Host, id: &str) -> u16 {
    let instance = host.get_instance(&vm_path(id)).unwrap();
    match instance.get("EnabledState") {
        Some(Value::Uint16(state)) => *state,
        other => panic!("EnabledState is {other:?}"),
    }
}

/// RequestStateChange over the CIM face: 4096 and a job that completes.
fn request_state(host: &Host, id: &str, state: u16) {
    let outcome = host
        .invoke_method(
            &vm_path(id),
            "RequestStateChange",
            vec![("RequestedState".into(), Value::Uint16(state))],
        )
        .unwrap();
    assert_eq!(outcome.return_value, 4096, "RequestStateChange({state})");
    let Some((_, Value::Reference(job))) =
        outcome.out_params.iter().find(|(name, _)| name == "Job")
    else {
        panic!("no Job in {:?}", outcome.out_params);
    };
    let job = host.wait_job(job.key_str("InstanceID").unwrap()).unwrap();
    assert!(job.succeeded(), "{job:?}");
}

/// Waits until the guest has reached its /init `count` times (the serial log is appended to).
fn wait_for_boots(log: &Path, count: usize) {
    let deadline = std::time::Instant::now() + cosnap_test_support::guest::BOOT_TIMEOUT;
    while std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("COSNAP-READY")
        .count()
        < count
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not boot {count} times"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn qemu_pid(data: &Path, id: &str) -> PidGuard {
    PidGuard::from_pidfile(&data.join("run").join(id).join("qemu.pid")).expect("qemu.pid")
}

#[test]
fn a_vm_runs_pauses_and_stops_through_request_state_change_and_reports_the_truth() {
    let Some((kernel, initrd)) = guest() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = Host::open(&data).unwrap();
    let id = define(&host, dir.path(), &kernel, &initrd);
    assert_eq!(enabled_state(&host, &id), 3);

    request_state(&host, &id, 2);
    let _qemu = qemu_pid(&data, &id);
    assert_eq!(
        host.vm_with_state(&id).unwrap().state.as_deref(),
        Some("running")
    );
    assert_eq!(enabled_state(&host, &id), 2);
    assert!(
        dir.path().join("com2.sock").exists(),
        "COM2 served as a Unix socket server"
    );
    wait_for_text(
        &data.join("run").join(&id).join("serial.log"),
        "COSNAP-READY vm=runner",
    );

    request_state(&host, &id, 32768);
    assert_eq!(enabled_state(&host, &id), 32768);
    let refused = host
        .invoke_method(
            &vm_path(&id),
            "RequestStateChange",
            vec![("RequestedState".into(), Value::Uint16(32768))],
        )
        .unwrap();
    assert_eq!(
        refused.return_value, 32775,
        "pausing a paused VM is an invalid state"
    );
    request_state(&host, &id, 2);
    assert_eq!(enabled_state(&host, &id), 2);
    request_state(&host, &id, 10);
    assert_eq!(
        enabled_state(&host, &id),
        2,
        "a reboot keeps the VM running"
    );
    wait_for_boots(&data.join("run").join(&id).join("serial.log"), 2);

    // A restarted host finds the running VM again from its run directory.
    drop(host);
    let host = Host::open(&data).unwrap();
    assert_eq!(enabled_state(&host, &id), 2);
    assert!(matches!(
        host.destroy_vm(&id),
        Err(HostError::InvalidState(_))
    ));

    request_state(&host, &id, 3);
    assert_eq!(enabled_state(&host, &id), 3);
    qemu_img(&["check", "-q", dir.path().join("a.qcow2").to_str().unwrap()]);
}

#[test]
fn a_killed_qemu_is_seen_as_off_and_the_vm_starts_again() {
    let Some((kernel, initrd)) = guest() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = Host::open(&data).unwrap();
    let id = define(&host, dir.path(), &kernel, &initrd);

    host.start_vm(&id).unwrap();
    drop(qemu_pid(&data, &id));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        host.vm_with_state(&id).unwrap().state.as_deref(),
        Some("off")
    );
    assert_eq!(enabled_state(&host, &id), 3);
    assert!(matches!(
        host.pause_vm(&id),
        Err(HostError::InvalidState(_))
    ));

    let vm = host.start_vm(&id).unwrap();
    let _qemu = qemu_pid(&data, &id);
    assert_eq!(vm.state.as_deref(), Some("running"));
    assert!(matches!(
        host.start_vm(&id),
        Err(HostError::InvalidState(_))
    ));
    host.stop_vm(&id, true).unwrap();
}

#[test]
fn run_settings_named_over_the_api_must_lie_under_a_storage_root() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let inside = images.join("vmlinuz");
    let outside = dir.path().join("vmlinuz");
    std::fs::write(&inside, b"k").unwrap();
    std::fs::write(&outside, b"k").unwrap();
    let options = HostOptions {
        storage_roots: vec![images.clone()],
        ..HostOptions::default()
    };
    let host = Host::open_with(dir.path().join("data"), options).unwrap();
    let settings = |kernel: PathBuf, com2: PathBuf| VmRunSettings {
        boot: VmBoot::Kernel {
            kernel,
            initrd: None,
            cmdline: String::new(),
        },
        com2: Some(com2),
    };

    let mut good = settings(inside.clone(), images.join("com2.sock"));
    host.check_api_run_settings(&mut good).unwrap();
    for mut bad in [
        settings(outside.clone(), images.join("com2.sock")),
        settings(inside.clone(), dir.path().join("com2.sock")),
        settings(images.join("../vmlinuz"), images.join("com2.sock")),
    ] {
        let refused = host.check_api_run_settings(&mut bad);
        assert!(
            matches!(refused, Err(HostError::AccessDenied(_))),
            "{bad:?}: {refused:?}"
        );
    }
}
