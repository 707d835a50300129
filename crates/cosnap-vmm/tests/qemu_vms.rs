//! Real guests under QEMU (TCG): lifecycle, the group freeze of writing VMs, live commit.

mod common;

use std::time::Duration;

use common::{image, launch, overlay, qemu_img, record_count, start, wait_serial};
use cosnap_vmm::{
    DiskChain, DiskFreeze, DiskLayer, FreezeRequest, Hypervisor, LayerFormat, QemuHypervisor,
    StopMode, VmState,
};

fn chain(layer: &DiskLayer) -> DiskChain {
    DiskChain {
        layers: vec![layer.clone()],
    }
}

#[test]
fn a_guest_boots_pauses_resumes_reattaches_and_is_off_after_kill_9() {
    let Some(_) = common::guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "a.qcow2", LayerFormat::Qcow2);
    let hv = QemuHypervisor::new();
    let vm = start(
        &hv,
        &launch(
            "life",
            &dir.path().join("run"),
            vec![chain(&disk)],
            "cosnap.mode=idle cosnap.disks=vda",
        ),
    );

    wait_serial(&hv, &vm.handle, "COSNAP-READY vm=life");
    assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Running);
    hv.pause(&vm.handle).unwrap();
    assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Paused);
    hv.resume(&vm.handle).unwrap();
    assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Running);

    // cosnap restarted: a new hypervisor finds the VM from its run directory alone.
    let again = QemuHypervisor::new();
    let attached = again.attach("life", &dir.path().join("run")).unwrap();
    assert_eq!(attached.pid, vm.handle.pid);
    assert_eq!(again.state(&attached).unwrap(), VmState::Running);
    assert_eq!(
        hv.state(&vm.handle).unwrap(),
        VmState::Running,
        "both can talk to it in turn"
    );

    unsafe { libc::kill(vm.handle.pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Off);
    assert_eq!(again.state(&attached).unwrap(), VmState::Off);
    assert!(again.attach("life", &dir.path().join("run")).is_err());
    assert!(matches!(
        hv.pause(&vm.handle),
        Err(cosnap_vmm::VmmError::NotRunning { .. })
    ));
}

#[test]
fn a_group_freeze_of_two_writing_vms_gives_consistent_frozen_layers() {
    let Some(_) = common::guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hv = QemuHypervisor::new();
    let mut vms = Vec::new();
    let mut bases = Vec::new();
    for name in ["ga", "gb"] {
        let qcow2 = image(dir.path(), &format!("{name}-0.qcow2"), LayerFormat::Qcow2);
        let vhdx = image(dir.path(), &format!("{name}-1.vhdx"), LayerFormat::Vhdx);
        let run = dir.path().join(format!("run-{name}"));
        let disks = vec![chain(&qcow2), chain(&vhdx)];
        vms.push(start(
            &hv,
            &launch(name, &run, disks, "cosnap.mode=writer cosnap.disks=vda,vdb"),
        ));
        bases.push([qcow2, vhdx]);
    }
    for vm in &vms {
        wait_serial(&hv, &vm.handle, "COSNAP-READY");
    }
    std::thread::sleep(Duration::from_secs(2));

    let requests: Vec<FreezeRequest> = vms
        .iter()
        .zip(&bases)
        .map(|(vm, layers)| FreezeRequest {
            vm: vm.handle.clone(),
            disks: layers
                .iter()
                .enumerate()
                .map(|(index, base)| DiskFreeze {
                    disk: index,
                    overlay: overlay(&base.path.with_extension("s1.qcow2"), base),
                    bitmap: Some("s1".into()),
                })
                .collect(),
        })
        .collect();
    let report = hv.group_freeze(&requests).unwrap();
    assert!(
        report.pause_window_us > 0 && report.paused_us.len() == 2,
        "{report:?}"
    );
    for vm in &vms {
        assert_eq!(
            hv.state(&vm.handle).unwrap(),
            VmState::Running,
            "resumed after the freeze"
        );
    }

    // Each frozen base holds a gap-free prefix; a VM's two disks differ by at most one record.
    for ((vm, name), [qcow2, vhdx]) in vms.iter().zip(["ga", "gb"]).zip(&bases) {
        let first = record_count(&qcow2.path, "qcow2", name, "vda");
        let second = record_count(&vhdx.path, "vhdx", name, "vdb");
        assert!(
            first > 0 && (first == second || first == second + 1),
            "{name}: {first} / {second}"
        );
        let nodes = hv.block_nodes(&vm.handle).unwrap();
        let top = qcow2.path.with_extension("s1.qcow2");
        assert!(
            nodes
                .iter()
                .any(|n| n.file == top.to_string_lossy() && n.bitmaps == ["s1"]),
            "{nodes:?}"
        );
    }

    for vm in &vms {
        hv.stop(&vm.handle, StopMode::Force).unwrap();
        assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Off);
    }
    for [qcow2, vhdx] in &bases {
        qemu_img(&["check", "-f", "qcow2", qcow2.path.to_str().unwrap()]);
        qemu_img(&["check", "-f", "vhdx", vhdx.path.to_str().unwrap()]);
        for base in [qcow2, vhdx] {
            let top = base.path.with_extension("s1.qcow2");
            qemu_img(&["check", "-f", "qcow2", top.to_str().unwrap()]);
            let info = qemu_img(&["info", "-f", "qcow2", top.to_str().unwrap()]);
            assert!(
                info.contains("name: s1"),
                "quit stores the persistent bitmap: {info}"
            );
        }
    }
}

#[test]
fn live_commit_merges_the_active_and_an_inner_layer_while_the_guest_writes() {
    let Some(_) = common::guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hv = QemuHypervisor::new();
    let base = image(dir.path(), "c.qcow2", LayerFormat::Qcow2);
    let vm = start(
        &hv,
        &launch(
            "cm",
            &dir.path().join("run"),
            vec![chain(&base)],
            "cosnap.mode=writer cosnap.disks=vda",
        ),
    );
    wait_serial(&hv, &vm.handle, "COSNAP-READY");

    let freeze = |name: &str, backing: &DiskLayer| {
        let path = overlay(&dir.path().join(name), backing);
        let request = FreezeRequest {
            vm: vm.handle.clone(),
            disks: vec![DiskFreeze {
                disk: 0,
                overlay: path.clone(),
                bitmap: None,
            }],
        };
        hv.group_freeze(&[request]).unwrap();
        DiskLayer {
            path,
            format: LayerFormat::Qcow2,
        }
    };
    let first = freeze("c.s1.qcow2", &base);
    std::thread::sleep(Duration::from_secs(1));
    let second = freeze("c.s2.qcow2", &first);
    std::thread::sleep(Duration::from_secs(1));

    // Inner layer s1 into the base, then the active layer s2 with the pivot.
    hv.commit(&vm.handle, 0, &first.path, &base.path, &mut || Ok(()))
        .unwrap();
    assert_eq!(
        node_files(&hv, &vm),
        [base.path.clone(), second.path.clone()]
    );
    // Between the pivot and the end of `merged` the guest stands still: the base file (which
    // the writing guest would change within this time) stays as it is.
    let mut still = None;
    hv.commit(&vm.handle, 0, &second.path, &base.path, &mut || {
        let before = std::fs::read(&base.path)?;
        std::thread::sleep(Duration::from_millis(700));
        still = Some(before == std::fs::read(&base.path)?);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        still,
        Some(true),
        "the guest wrote to the base before `merged` ended"
    );
    assert_eq!(node_files(&hv, &vm), std::slice::from_ref(&base.path));
    assert_eq!(hv.state(&vm.handle).unwrap(), VmState::Running);

    // The guest goes on writing into the base; the next freeze works on the pivoted graph.
    let after = freeze("c.s3.qcow2", &base);
    hv.stop(&vm.handle, StopMode::Force).unwrap();
    qemu_img(&["check", "-f", "qcow2", base.path.to_str().unwrap()]);
    qemu_img(&["check", "-f", "qcow2", after.path.to_str().unwrap()]);
    assert!(record_count(&base.path, "qcow2", "cm", "vda") > 0);
}

/// The image files of the VM's format nodes, in the order of the graph's layers.
fn node_files(hv: &QemuHypervisor, vm: &common::VmGuard) -> Vec<std::path::PathBuf> {
    let mut nodes: Vec<_> = hv
        .block_nodes(&vm.handle)
        .unwrap()
        .into_iter()
        .filter(|n| n.driver != "file")
        .collect();
    nodes.sort_by_key(|n| n.node_name.clone());
    nodes.into_iter().map(|n| n.file.into()).collect()
}

#[test]
fn a_failed_transaction_resumes_every_vm_and_names_the_vms_that_switched() {
    let Some(_) = common::guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hv = QemuHypervisor::new();
    let mut vms = Vec::new();
    let mut bases = Vec::new();
    for name in ["fa", "fb"] {
        let base = image(dir.path(), &format!("{name}.qcow2"), LayerFormat::Qcow2);
        let run = dir.path().join(format!("run-{name}"));
        vms.push(start(
            &hv,
            &launch(
                name,
                &run,
                vec![chain(&base)],
                "cosnap.mode=idle cosnap.disks=vda",
            ),
        ));
        bases.push(base);
    }
    for vm in &vms {
        wait_serial(&hv, &vm.handle, "COSNAP-READY");
    }

    // VM fb asks for its one disk twice: QEMU refuses the second snapshot of the same node and
    // rolls that VM's whole transaction back.
    let freeze = |vm: &common::VmGuard, base: &DiskLayer, overlays: &[&str]| FreezeRequest {
        vm: vm.handle.clone(),
        disks: overlays
            .iter()
            .map(|name| DiskFreeze {
                disk: 0,
                overlay: overlay(&dir.path().join(name), base),
                bitmap: None,
            })
            .collect(),
    };
    let requests = [
        freeze(&vms[0], &bases[0], &["fa.s1.qcow2"]),
        freeze(&vms[1], &bases[1], &["fb.s1.qcow2", "fb.s2.qcow2"]),
    ];
    let error = hv.group_freeze(&requests).unwrap_err();

    let cosnap_vmm::VmmError::Freeze { vm, switched, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(
        (vm.as_str(), switched.as_slice()),
        ("fb", &["fa".to_string()][..]),
        "{error}"
    );
    for vm in &vms {
        assert_eq!(
            hv.state(&vm.handle).unwrap(),
            VmState::Running,
            "resumed after the failure"
        );
    }
    let fb_files: Vec<_> = hv
        .block_nodes(&vms[1].handle)
        .unwrap()
        .into_iter()
        .map(|n| n.file)
        .collect();
    assert!(
        fb_files.iter().all(|f| !f.contains("fb.s")),
        "fb's unused overlays are gone: {fb_files:?}"
    );
    let fa_files: Vec<_> = hv
        .block_nodes(&vms[0].handle)
        .unwrap()
        .into_iter()
        .map(|n| n.file)
        .collect();
    assert!(
        fa_files.iter().any(|f| f.ends_with("fa.s1.qcow2")),
        "fa switched: {fa_files:?}"
    );
}
