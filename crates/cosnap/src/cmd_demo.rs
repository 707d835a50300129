//! `cosnap demo`: builds a small but real collection in a fresh data directory — three VMs
//! with real disks (one VHDX, one qcow2, one raw) holding recognisable data, a collection,
//! a recovery snapshot, more guest writes, a second snapshot, a full export of the first,
//! its conversion to a reference point, a differential export of the second against it and
//! the verification of both packages — and prints what it did and the commands to inspect
//! the result.

use std::path::{Path, PathBuf};

use clap::Args;
use cosnap_disk::Format;
use cosnap_export::BackupIntent;
use cosnap_host::export::{ExportRequest, Roots};
use cosnap_host::{DiskSpec, Host, Nic, VmSpec};

use crate::cmd_host::wait;
use crate::exit::fail;
use crate::exit::{CmdResult, Context, Failure};

#[derive(Args, Debug)]
pub struct DemoArgs {}

const MIB: u64 = 1 << 20;

/// The demo's VMs: name, disk file, format, virtual size, and the data written before the
/// first snapshot (offset, length, byte).
/// (VM name, disk file, format, virtual size, writes as (offset, length, byte)).
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

/// Picks the data directory: the given one if it holds no repository yet, otherwise a
/// fresh `demo-<time>` sub-directory of it (said clearly).
fn pick_dir(dir: &Path) -> PathBuf {
    if !dir.join("cosnap.db").exists() {
        return dir.to_path_buf();
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sub = dir.join(format!("demo-{stamp}"));
    println!(
        "note: {} already holds a cosnap repository; the demo uses a fresh sub-directory {}",
        dir.display(),
        sub.display()
    );
    sub
}

pub fn run_demo(ctx: &Context, _args: DemoArgs) -> CmdResult {
    let dir = pick_dir(&ctx.data_dir);
    let images = dir.join("images");
    cosnap_host::modes::create_private_dir(&images).map_err(fail)?;
    let host = Host::open(&dir).map_err(fail)?;
    let dir = host.data_dir().to_path_buf();
    let images = dir.join("images");
    println!("cosnap demo in {}", dir.display());

    let vm_ids = define_demo_vms(&host, &images)?;

    let coll = host
        .define_collection("demo-group", None, 0)
        .map_err(fail)?;
    for id in &vm_ids {
        host.add_member(&coll.id, id).map_err(fail)?;
    }
    println!(
        "  collection demo-group {} with {} VMs",
        coll.id,
        vm_ids.len()
    );

    let snap1 = take_recovery_snapshot(&host, &coll.id, "snapshot 1")?;

    // More guest writes, on the active layers (1 MiB each, a new byte value per VM).
    for (i, id) in vm_ids.iter().enumerate() {
        host.write_guest(id, 0, (i as u64 + 1) * 16 * MIB, MIB, 0xD0 + i as u8)
            .map_err(fail)?;
    }
    println!(
        "  guest writes after snapshot 1: 1 MiB per VM at 16/32/48 MiB (bytes 0xD0/0xD1/0xD2)"
    );

    let snap2 = take_recovery_snapshot(&host, &coll.id, "snapshot 2")?;

    // The qcow2 VM's frozen layer of snapshot 1 against its active layer, for the hint below
    // (taken now: snapshot 1 becomes a reference point next).
    let s1 = host.snapshot(&snap1).map_err(fail)?;
    let compare_hint = match (s1.vms.get(1), host.vm(&vm_ids[1])) {
        (Some(v), Ok(vm)) => match (v.disks.first(), vm.disks.first()) {
            (Some(frozen), Some(active)) => Some(format!(
                "  qemu-img compare {} {}   # differs at 32 MiB: the write after snapshot 1",
                frozen.path.display(),
                active.path.display()
            )),
            _ => None,
        },
        _ => None,
    };

    // The backup workflow: full export of snapshot 1, snapshot 1 becomes a reference point,
    // differential export of snapshot 2 against it, both packages verified.
    let exports = dir.join("exports");
    cosnap_host::modes::create_private_dir(&exports).map_err(fail)?;
    let mut packages = Vec::new();
    let mut full = ExportRequest::full(&snap1, &exports);
    full.create_subdirectory = true;
    packages.push(run_export(
        &host,
        &full,
        &snap1,
        "full export of snapshot 1",
    )?);

    let job = host.start_convert_to_refpoint(&snap1).map_err(fail)?;
    let job = wait(&host, &job, "convert to reference point")?;
    let refpoint = job
        .created("Msvm_ReferencePointCollection")
        .unwrap_or_default()
        .to_string();
    println!("  snapshot 1 converted to reference point {refpoint}");

    let mut diff = ExportRequest::full(&snap2, &exports);
    diff.create_subdirectory = true;
    diff.base = Some(refpoint);
    diff.intent = BackupIntent::PreserveChain;
    packages.push(run_export(
        &host,
        &diff,
        &snap2,
        "differential export of snapshot 2 (base: the reference point)",
    )?);
    verify_packages(&packages)?;

    println!("\nInspect the result:");
    println!("  cosnap --data-dir {} snapshot list", dir.display());
    println!("  cosnap --data-dir {} vm list", dir.display());
    print_disk_hints(&host, &vm_ids)?;
    if let Some(hint) = &compare_hint {
        println!("{hint}");
    }
    for package in &packages {
        println!("  cosnap export verify '{}'", package.display());
    }
    if let Some(diff) = packages.get(1) {
        println!(
            "  qemu-img info --backing-chain '{}'/demo-db_*/'Virtual Hard Disks'/disk0.qcow2   # differential chained onto the full export",
            diff.display()
        );
    }
    Ok(0)
}

/// Creates each demo VM's disk, writes its patterns and defines the VM; returns their ids.
fn define_demo_vms(host: &Host, images: &Path) -> Result<Vec<String>, Failure> {
    let mut vm_ids = Vec::new();
    for (i, (name, file, format, size, writes)) in VMS.iter().enumerate() {
        let path = images.join(file);
        cosnap_disk::create(&path, *format, *size)
            .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
        for (off, len, byte) in writes.iter() {
            cosnap_disk::write_pattern(&path, *off, *len, *byte)
                .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
        }
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

/// Takes a recovery snapshot of the collection and reports how long the whole group took.
fn take_recovery_snapshot(host: &Host, collection: &str, label: &str) -> Result<String, Failure> {
    let t = std::time::Instant::now();
    let job = host.start_create_snapshot(collection, 2).map_err(fail)?;
    let job = wait(host, &job, label)?;
    let snap = job
        .created("Msvm_SnapshotCollection")
        .unwrap_or_default()
        .to_string();
    println!(
        "  recovery {label}: {snap} ({} ms for the whole group)",
        t.elapsed().as_millis()
    );
    Ok(snap)
}

fn verify_packages(packages: &[PathBuf]) -> Result<(), Failure> {
    for package in packages {
        let report = cosnap_export::verify_package(package)
            .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
        if !report.ok() {
            return Err(Failure::from(anyhow::anyhow!(
                "export verify found problems in {}: {}",
                package.display(),
                report.problems.join("; ")
            )));
        }
        println!(
            "  verified {} ({} files, {} images)",
            package.display(),
            report.files_checked,
            report.images_checked
        );
    }
    Ok(())
}

/// The qemu-img (or, for VHDX chains, cosnap) commands that inspect each VM's disks.
fn print_disk_hints(host: &Host, vm_ids: &[String]) -> Result<(), Failure> {
    for id in vm_ids {
        let vm = host.vm(id).map_err(fail)?;
        for d in &vm.disks {
            match d.format {
                Format::Vhdx => {
                    println!(
                        "  cosnap disk info {}   # VHDX chain (.avhdx children; qemu-img does not open differencing VHDX)",
                        d.path.display()
                    );
                    println!("  cosnap disk check {}", d.path.display());
                }
                _ => {
                    println!("  qemu-img info --backing-chain {}", d.path.display());
                    println!("  qemu-img check {}", d.path.display());
                }
            }
        }
    }
    Ok(())
}

/// Runs one export job to its end and returns the package directory.
fn run_export(
    host: &Host,
    req: &ExportRequest,
    snapshot: &str,
    what: &str,
) -> Result<PathBuf, Failure> {
    let t = std::time::Instant::now();
    let job = cosnap_host::export::start_export(host, req, Roots::Caller)
        .map_err(|r| Failure::from(anyhow::anyhow!("{what}: {r}")))?;
    wait(host, &job, what)?;
    let path = cosnap_host::export::exported_path(host, snapshot, &job)
        .ok_or_else(|| Failure::from(anyhow::anyhow!("{what}: the job recorded no package")))?;
    println!(
        "  {what}: {} ({} ms)",
        path.display(),
        t.elapsed().as_millis()
    );
    Ok(path)
}
