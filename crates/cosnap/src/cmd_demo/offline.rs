//! The offline story: three VMs switched off with real disks (one VHDX, one qcow2, one raw)
//! holding recognisable data, a collection, a recovery snapshot, guest writes made by cosnap,
//! a second snapshot, a full export of the first, its conversion to a reference point, a
//! differential export of the second against it and the verification of both packages.

use std::path::Path;

use cosnap_disk::Format;
use cosnap_host::{DiskSpec, Host, Nic, VmSpec};

use super::steps::{self, MIB};
use crate::exit::fail;
use crate::exit::{CmdResult, Failure};

/// The demo's VMs: (VM name, disk file, format, virtual size, writes as (offset, length, byte)).
type DemoVm = (
    &'static str,
    &'static str,
    Format,
    u64,
    &'static [(u64, u64, u8)],
);

const VMS: &[DemoVm] = &[
    (
        "demo-web",
        "web.vhdx",
        Format::Vhdx,
        512 * MIB,
        &[(0, 4 * MIB, 0xA1), (100 * MIB, 2 * MIB, 0xA2)],
    ),
    (
        "demo-db",
        "db.qcow2",
        Format::Qcow2,
        1024 * MIB,
        &[(0, 8 * MIB, 0xB1), (700 * MIB, 3 * MIB, 0xB2)],
    ),
    (
        "demo-cache",
        "cache.raw",
        Format::Raw,
        256 * MIB,
        &[(0, 2 * MIB, 0xC1), (200 * MIB, MIB, 0xC2)],
    ),
];

pub fn run(host: &Host) -> CmdResult {
    let dir = host.data_dir().to_path_buf();
    println!("cosnap demo (VMs switched off) in {}", dir.display());
    let vm_ids = define_demo_vms(host, &dir.join("images"))?;
    let coll = steps::define_group(host, &vm_ids)?;

    let snap1 = steps::take_recovery_snapshot(host, &coll, "snapshot 1")?;

    // More guest writes, on the active layers (1 MiB each, a new byte value per VM).
    for (i, id) in vm_ids.iter().enumerate() {
        host.write_guest(id, 0, (i as u64 + 1) * 16 * MIB, MIB, 0xD0 + i as u8)
            .map_err(fail)?;
    }
    println!(
        "  guest writes after snapshot 1: 1 MiB per VM at 16/32/48 MiB (bytes 0xD0/0xD1/0xD2)"
    );

    let snap2 = steps::take_recovery_snapshot(host, &coll, "snapshot 2")?;
    // Taken now: snapshot 1 becomes a reference point next.
    let compare_hint = compare_hint(host, &snap1, &vm_ids[1]);

    // The backup workflow: full export of snapshot 1, snapshot 1 becomes a reference point,
    // differential export of snapshot 2 against it, both packages verified.
    let exports = dir.join("exports");
    cosnap_host::modes::create_private_dir(&exports).map_err(fail)?;
    let full = steps::full_export(&snap1, &exports);
    let full = steps::run_export(host, &full, &snap1, "full export of snapshot 1")?;

    let refpoint = steps::convert_to_refpoint(host, &snap1, "snapshot 1")?;
    let diff = steps::differential_export(&snap2, &exports, &refpoint);
    let what = "differential export of snapshot 2 (base: the reference point)";
    let diff = steps::run_export(host, &diff, &snap2, what)?;
    let packages = [full, diff];
    steps::verify_packages(&packages)?;

    steps::print_inspect_hints(host, &vm_ids, &packages)?;
    if let Some(hint) = &compare_hint {
        println!("{hint}");
    }
    steps::print_chain_hint(&packages[1]);
    Ok(0)
}

/// The qcow2 VM's frozen layer of snapshot 1 against its active layer.
fn compare_hint(host: &Host, snapshot: &str, vm_id: &str) -> Option<String> {
    let s1 = host.snapshot(snapshot).ok()?;
    let frozen = s1
        .vms
        .iter()
        .find(|v| v.vm_id == vm_id)?
        .disks
        .first()?
        .path
        .clone();
    let active = host.vm(vm_id).ok()?.disks.first()?.path.clone();
    Some(format!(
        "  qemu-img compare {} {}   # differs at 32 MiB: the write after snapshot 1",
        frozen.display(),
        active.display()
    ))
}

/// Creates each demo VM's disk, writes its patterns and defines the VM; returns their ids.
fn define_demo_vms(host: &Host, images: &Path) -> Result<Vec<String>, Failure> {
    let mut vm_ids = Vec::new();
    for (i, (name, file, format, size, writes)) in VMS.iter().enumerate() {
        let path = images.join(file);
        steps::make_disk(&path, *format, *size, writes)?;
        let vm = host
            .define_vm(&VmSpec {
                id: None,
                name: name.to_string(),
                cpus: 2 + i as u32,
                memory_mb: 1024 * (i as u64 + 1),
                disks: vec![DiskSpec {
                    path: path.clone(),
                    format: Some(*format),
                }],
                nics: vec![Nic {
                    mac: format!("00:15:5D:00:00:0{}", i + 1),
                    switch_name: Some("demo-switch".into()),
                }],
            })
            .map_err(fail)?;
        println!(
            "  VM {:<11} {}  disk {} ({}, {} MiB virtual; {} pattern range(s) written)",
            name,
            vm.id,
            path.display(),
            format,
            size / MIB,
            writes.len()
        );
        vm_ids.push(vm.id);
    }
    Ok(vm_ids)
}
