//! Measures the group-freeze pause window: N writing test guests with 2 disks each (qcow2 and
//! VHDX bases), R group freezes, then prints each window and the median and maximum in ms.
//! Usage: pause_window GUEST_DIR WORK_DIR VMS ROUNDS   (run by benches/vmm/pause_window.sh)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cosnap_vmm::{
    Accelerator, Boot, DiskChain, DiskFreeze, DiskLayer, FreezeRequest, Hypervisor, LayerFormat,
    QemuHypervisor, StopMode, VmHandle, VmLaunch,
};

/// Kills the benchmark's VMs by pid whatever happens.
struct Guard(Vec<VmHandle>);

impl Drop for Guard {
    fn drop(&mut self) {
        for vm in &self.0 {
            // SAFETY: kill(2) by the pid this program started.
            unsafe { libc::kill(vm.pid, libc::SIGKILL) };
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, guest, work, vms, rounds] = args.as_slice() else {
        panic!("usage: pause_window GUEST_DIR WORK_DIR VMS ROUNDS");
    };
    let (guest, work) = (PathBuf::from(guest), PathBuf::from(work));
    let vms: usize = vms.parse().expect("VMS");
    let rounds: usize = rounds.parse().expect("ROUNDS");

    let hv = QemuHypervisor::new();
    let mut guard = Guard(Vec::new());
    let mut tops: Vec<[DiskLayer; 2]> = Vec::new();
    for index in 0..vms {
        let name = format!("pw{index}");
        let layers = [
            image(&work, &format!("{name}-0.qcow2"), LayerFormat::Qcow2),
            image(&work, &format!("{name}-1.vhdx"), LayerFormat::Vhdx),
        ];
        let launch = launch(&guest, &work, &name, &layers);
        guard.0.push(hv.start(&launch).expect("start"));
        tops.push(layers);
    }
    for vm in &guard.0 {
        wait_ready(&hv, vm);
    }

    let mut windows = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let requests = next_layers(&guard.0, &mut tops, round);
        let report = hv.group_freeze(&requests).expect("group freeze");
        println!(
            "round {round}: pause window {:.1} ms",
            report.pause_window_us as f64 / 1000.0
        );
        windows.push(report.pause_window_us);
        std::thread::sleep(Duration::from_millis(300));
    }

    for vm in &guard.0 {
        hv.stop(vm, StopMode::Force).expect("stop");
    }
    windows.sort_unstable();
    println!(
        "VMS={vms} disks=2 rounds={rounds} median_ms={:.1} max_ms={:.1}",
        windows[windows.len() / 2] as f64 / 1000.0,
        windows[windows.len() - 1] as f64 / 1000.0
    );
}

fn image(dir: &Path, name: &str, format: LayerFormat) -> DiskLayer {
    let path = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        format.driver(),
        path.to_str().unwrap(),
        "64M",
    ]);
    DiskLayer { path, format }
}

fn qemu_img(args: &[&str]) {
    let status = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img {args:?}");
}

fn launch(guest: &Path, work: &Path, name: &str, layers: &[DiskLayer; 2]) -> VmLaunch {
    VmLaunch {
        name: name.into(),
        run_dir: work.join(format!("run-{name}")),
        cpus: 1,
        memory_mb: 256,
        disks: layers
            .iter()
            .map(|l| DiskChain {
                layers: vec![l.clone()],
            })
            .collect(),
        boot: Boot::Kernel {
            kernel: guest.join("vmlinuz"),
            initrd: Some(guest.join("initrd.gz")),
            cmdline: format!("console=ttyS0 quiet panic=-1 cosnap.vm={name} cosnap.disks=vda,vdb"),
        },
        com2: None,
        user_nic: false,
        accelerator: Some(Accelerator::Tcg),
    }
}

fn wait_ready(hv: &QemuHypervisor, vm: &VmHandle) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(hv.serial_log(vm))
        .unwrap_or_default()
        .contains("COSNAP-READY")
    {
        assert!(Instant::now() < deadline, "{} did not boot", vm.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One new qcow2 overlay per disk over its current top layer, with a bitmap as a recovery
/// snapshot would add.
fn next_layers(vms: &[VmHandle], tops: &mut [[DiskLayer; 2]], round: usize) -> Vec<FreezeRequest> {
    vms.iter()
        .zip(tops.iter_mut())
        .map(|(vm, layers)| FreezeRequest {
            vm: vm.clone(),
            disks: layers
                .iter_mut()
                .enumerate()
                .map(|(disk, top)| {
                    let path = top.path.with_extension(format!("r{round}.qcow2"));
                    qemu_img(&[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-u",
                        "-b",
                        top.path.to_str().unwrap(),
                        "-F",
                        top.format.driver(),
                        path.to_str().unwrap(),
                        "64M",
                    ]);
                    *top = DiskLayer {
                        path: path.clone(),
                        format: LayerFormat::Qcow2,
                    };
                    DiskFreeze {
                        disk,
                        overlay: path,
                        bitmap: Some(format!("r{round}")),
                    }
                })
                .collect(),
        })
        .collect()
}
