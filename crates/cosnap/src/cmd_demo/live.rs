//! The live story: two VMs running the test guest under QEMU (one on a VHDX base, one on a
//! qcow2 base), each writing numbered records to its disk, and a raw-disk VM left off (a mixed
//! group); a recovery snapshot of the running group with its pause window, a full export, the
//! conversion to a reference point, more writes while the guests keep running, a second
//! snapshot, a differential export from the persistent dirty bitmaps, the verification of both
//! packages, and the VMs stopped again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cosnap_disk::Format;
use cosnap_host::{DiskSpec, Host, Nic, VmBoot, VmRunSettings, VmSpec};

use super::guest::Guest;
use super::started::StartedVms;
use super::steps::{self, MIB};
use crate::exit::fail;
use crate::exit::{CmdResult, Failure};

/// One VM of the live story.
struct LiveVm {
    name: &'static str,
    file: &'static str,
    format: Format,
    /// Recognisable data written before the first boot, far above the guest's records
    /// (which start at offset 0): (offset, length, byte).
    writes: &'static [(u64, u64, u8)],
    runs: bool,
}

const DISK_SIZE: u64 = 64 * MIB;

const VMS: &[LiveVm] = &[
    LiveVm {
        name: "demo-web",
        file: "web.vhdx",
        format: Format::Vhdx,
        writes: &[(40 * MIB, 8 * MIB, 0xA1)],
        runs: true,
    },
    LiveVm {
        name: "demo-db",
        file: "db.qcow2",
        format: Format::Qcow2,
        writes: &[(40 * MIB, 16 * MIB, 0xB1)],
        runs: true,
    },
    LiveVm {
        name: "demo-cache",
        file: "cache.raw",
        format: Format::Raw,
        writes: &[(0, 2 * MIB, 0xC1), (40 * MIB, MIB, 0xC2)],
        runs: false,
    },
];

/// Under TCG on two loaded cores the guest needs 2–25 s to reach its /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the guests write before the first snapshot, and between the two.
const WRITE_TIME: Duration = Duration::from_secs(3);

pub fn run(host: &Host, guest: &Guest) -> CmdResult {
    let dir = host.data_dir().to_path_buf();
    println!("cosnap demo with running guests in {}", dir.display());
    println!(
        "  guest: {} + {}",
        guest.kernel.display(),
        guest.initrd.display()
    );
    let vm_ids = define_vms(host, &dir.join("images"), guest)?;
    let coll = steps::define_group(host, &vm_ids)?;

    let started = StartedVms::new(host)?;
    start_guests(host, &started, &vm_ids)?;
    let packages = back_up_while_running(host, &coll, &dir.join("exports"))?;
    steps::verify_packages(&packages)?;

    started.stop_all();
    print_states(host, &vm_ids)?;
    steps::print_inspect_hints(host, &vm_ids, &packages)?;
    steps::print_chain_hint(&packages[1]);
    for (vm, id) in VMS.iter().zip(&vm_ids).filter(|(vm, _)| vm.runs) {
        println!(
            "  less {}/run/{id}/serial.log   # what {}'s guest printed (its records went to its disk)",
            dir.display(),
            vm.name
        );
    }
    Ok(0)
}

/// Creates each VM's disk with its recognisable data and defines the VM, booting the test
/// guest's kernel for the VMs that run; returns their ids.
fn define_vms(host: &Host, images: &Path, guest: &Guest) -> Result<Vec<String>, Failure> {
    let mut vm_ids = Vec::new();
    for (i, vm) in VMS.iter().enumerate() {
        let path = images.join(vm.file);
        steps::make_disk(&path, vm.format, DISK_SIZE, vm.writes)?;
        let defined = host
            .define_vm(&VmSpec {
                id: None,
                name: vm.name.to_string(),
                cpus: 1,
                memory_mb: 256,
                disks: vec![DiskSpec {
                    path: path.clone(),
                    format: Some(vm.format),
                }],
                nics: vec![Nic {
                    mac: format!("00:15:5D:00:00:0{}", i + 1),
                    switch_name: Some("demo-switch".into()),
                }],
            })
            .map_err(fail)?;
        if vm.runs {
            host.set_run_settings(&defined.id, &boot_settings(guest, vm.name))
                .map_err(fail)?;
        }
        println!(
            "  VM {:<11} {}  disk {} ({}, {} MiB virtual){}",
            vm.name,
            defined.id,
            path.display(),
            vm.format,
            DISK_SIZE / MIB,
            if vm.runs { "" } else { "; stays off" }
        );
        vm_ids.push(defined.id);
    }
    Ok(vm_ids)
}

/// Direct kernel boot of the test guest, whose /init writes 4 KiB records numbered 0, 1, 2…
/// from the start of vda, each with O_DIRECT, until the disk is full.
fn boot_settings(guest: &Guest, name: &str) -> VmRunSettings {
    VmRunSettings {
        boot: VmBoot::Kernel {
            kernel: guest.kernel.clone(),
            initrd: Some(guest.initrd.clone()),
            cmdline: format!("console=ttyS0 quiet panic=-1 cosnap.vm={name} cosnap.disks=vda"),
        },
        com2: None,
    }
}

/// Starts the VMs that run and waits until every guest is writing.
fn start_guests(host: &Host, started: &StartedVms, vm_ids: &[String]) -> Result<(), Failure> {
    let t = Instant::now();
    let running: Vec<_> = VMS.iter().zip(vm_ids).filter(|(vm, _)| vm.runs).collect();
    for (vm, id) in &running {
        started.start(id, vm.name)?;
    }

    for (vm, id) in &running {
        wait_for_guest(host, id, vm.name)?;
    }
    println!(
        "  started {} VMs; their guests write records ({} ms to boot)",
        running.len(),
        t.elapsed().as_millis()
    );
    Ok(())
}

/// Waits until the guest's serial log shows its /init ready to write; fails at once when
/// its QEMU ends meanwhile.
fn wait_for_guest(host: &Host, id: &str, name: &str) -> Result<(), Failure> {
    let serial_log = host
        .serial_log(id)
        .map_err(|_| stopped_while_booting(host, id, name))?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let ready = format!("COSNAP-READY vm={name} ");
    loop {
        let text = std::fs::read_to_string(&serial_log).unwrap_or_default();
        if text.contains(&ready) {
            return Ok(());
        }
        if host.running_vm(id).is_none() {
            return Err(stopped_while_booting(host, id, name));
        }
        if Instant::now() > deadline {
            return Err(Failure::from(anyhow::anyhow!(
                "the guest of VM {name} did not start writing within {} s (see {})",
                BOOT_TIMEOUT.as_secs(),
                serial_log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stopped_while_booting(host: &Host, id: &str, name: &str) -> Failure {
    let run_dir = host.data_dir().join("run").join(id);
    Failure::from(anyhow::anyhow!(
        "VM {name} stopped while its guest booted (see serial.log and qemu.err in {})",
        run_dir.display()
    ))
}

/// The backup workflow while the guests write: snapshot 1 exported in full and converted to
/// a reference point, snapshot 2 exported as a differential against it. Returns both
/// packages.
fn back_up_while_running(host: &Host, coll: &str, exports: &Path) -> Result<[PathBuf; 2], Failure> {
    cosnap_host::modes::create_private_dir(exports).map_err(fail)?;
    std::thread::sleep(WRITE_TIME);
    let snap1 = steps::take_recovery_snapshot(host, coll, "snapshot 1")?;
    let full = steps::full_export(&snap1, exports);
    let full = steps::run_export(host, &full, &snap1, "full export of snapshot 1")?;

    let refpoint = steps::convert_to_refpoint(host, &snap1, "snapshot 1")?;
    let (tracked, disks) = host.refpoint_tracked_disks(&refpoint).map_err(fail)?;
    println!(
        "  the reference point tracks {tracked} of its {disks} disks with a persistent dirty bitmap (the running ones)"
    );

    println!("  the guests keep writing for {} s", WRITE_TIME.as_secs());
    std::thread::sleep(WRITE_TIME);
    let snap2 = steps::take_recovery_snapshot(host, coll, "snapshot 2")?;
    let mut diff = steps::differential_export(&snap2, exports, &refpoint);
    diff.allow_fallback_full = true;
    let what = "differential export of snapshot 2 (base: the reference point)";
    let diff = steps::run_export(host, &diff, &snap2, what)?;

    report_differential(&full, &diff, tracked)?;
    Ok([full, diff])
}

/// Says what the differential copied against the full export, and where its change
/// information came from (or why it fell back to a full export).
fn report_differential(full: &Path, diff: &Path, tracked: usize) -> Result<(), Failure> {
    let full_bytes = steps::data_bytes(&steps::package_meta(full)?);
    let diff_meta = steps::package_meta(diff)?;
    let diff_bytes = steps::data_bytes(&diff_meta);
    let kib = |b: u64| b.div_ceil(1024);
    if let Some(reason) = &diff_meta.fallback_to_full {
        println!("  note: wrote a FULL export instead of a differential: {reason}");
    } else {
        println!(
            "  the differential copied {} KiB of guest data against {} KiB for the full export: \
             the writes of the running guests since the reference point, read from {tracked} \
             persistent dirty bitmap(s) (the offline disk's chain was compared)",
            kib(diff_bytes),
            kib(full_bytes)
        );
    }
    Ok(())
}

fn print_states(host: &Host, vm_ids: &[String]) -> Result<(), Failure> {
    for id in vm_ids {
        let vm = host.vm_with_state(id).map_err(fail)?;
        let state = vm.state.unwrap_or_default();
        println!("  VM {:<11} is {state}", vm.name);
    }
    Ok(())
}
