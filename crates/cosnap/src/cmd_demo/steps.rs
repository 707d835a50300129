//! The steps both demo stories take: the data directory, disks with recognisable data, the
//! collection, recovery snapshots, exports, verification and the hints printed at the end.

use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use cosnap_export::{BackupIntent, PackageMeta};
use cosnap_host::Host;
use cosnap_host::export::{ExportRequest, Roots};

use crate::cmd_host::wait;
use crate::exit::Failure;
use crate::exit::fail;

pub const MIB: u64 = 1 << 20;

/// Picks the data directory: the given one if it holds no repository yet, otherwise a
/// fresh `demo-<time>` sub-directory of it (said clearly).
pub fn pick_dir(dir: &Path) -> PathBuf {
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

/// Creates a disk image and writes its recognisable ranges (offset, length, byte).
pub fn make_disk(
    path: &Path,
    format: Format,
    size: u64,
    writes: &[(u64, u64, u8)],
) -> Result<(), Failure> {
    cosnap_disk::create(path, format, size).map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
    for (off, len, byte) in writes {
        cosnap_disk::write_pattern(path, *off, *len, *byte)
            .map_err(|e| Failure::from(anyhow::anyhow!(e)))?;
    }
    Ok(())
}

/// Defines collection `demo-group` holding the VMs; returns its id.
pub fn define_group(host: &Host, vm_ids: &[String]) -> Result<String, Failure> {
    let coll = host
        .define_collection("demo-group", None, 0)
        .map_err(fail)?;
    for id in vm_ids {
        host.add_member(&coll.id, id).map_err(fail)?;
    }
    println!(
        "  collection demo-group {} with {} VMs",
        coll.id,
        vm_ids.len()
    );
    Ok(coll.id)
}

/// Takes a recovery snapshot of the collection and reports how long the whole group took,
/// and, when members ran, how long they stood paused.
pub fn take_recovery_snapshot(
    host: &Host,
    collection: &str,
    label: &str,
) -> Result<String, Failure> {
    let t = std::time::Instant::now();
    let job = host.start_create_snapshot(collection, 2).map_err(fail)?;
    let job = wait(host, &job, label)?;
    let snap = job
        .created("Msvm_SnapshotCollection")
        .unwrap_or_default()
        .to_string();
    let pause = match host.snapshot(&snap).map_err(fail)?.pause_window_us {
        Some(us) => format!(
            "; running VMs paused together for {:.1} ms",
            us as f64 / 1000.0
        ),
        None => String::new(),
    };
    println!(
        "  recovery {label}: {snap} ({} ms for the whole group{pause})",
        t.elapsed().as_millis()
    );
    Ok(snap)
}

/// Converts a recovery snapshot into a reference point; returns the reference point's id.
pub fn convert_to_refpoint(host: &Host, snapshot: &str, label: &str) -> Result<String, Failure> {
    let job = host.start_convert_to_refpoint(snapshot).map_err(fail)?;
    let job = wait(host, &job, "convert to reference point")?;
    let refpoint = job
        .created("Msvm_ReferencePointCollection")
        .unwrap_or_default()
        .to_string();
    println!("  {label} converted to reference point {refpoint}");
    Ok(refpoint)
}

/// A full export of `snapshot` into a new sub-directory of `exports`.
pub fn full_export(snapshot: &str, exports: &Path) -> ExportRequest {
    let mut req = ExportRequest::full(snapshot, exports);
    req.create_subdirectory = true;
    req
}

/// A PreserveChain differential export of `snapshot` against `base`.
pub fn differential_export(snapshot: &str, exports: &Path, base: &str) -> ExportRequest {
    let mut req = full_export(snapshot, exports);
    req.base = Some(base.to_string());
    req.intent = BackupIntent::PreserveChain;
    req
}

/// Runs one export job to its end and returns the package directory.
pub fn run_export(
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

/// The package's record (`cosnap-package.json`).
pub fn package_meta(package: &Path) -> Result<PackageMeta, Failure> {
    let bytes = std::fs::read(package.join(cosnap_export::PACKAGE_JSON))
        .map_err(|e| Failure::from(anyhow::anyhow!("{}: {e}", package.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::from(anyhow::anyhow!("{}: {e}", package.display())))
}

/// Guest bytes a package's disks hold as data (what its export copied).
pub fn data_bytes(meta: &PackageMeta) -> u64 {
    meta.vms
        .iter()
        .flat_map(|vm| &vm.disks)
        .map(|d| d.data_bytes)
        .sum()
}

pub fn verify_packages(packages: &[PathBuf]) -> Result<(), Failure> {
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
pub fn print_disk_hints(host: &Host, vm_ids: &[String]) -> Result<(), Failure> {
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

/// The commands that list what the demo left, then each package's verify command.
pub fn print_inspect_hints(
    host: &Host,
    vm_ids: &[String],
    packages: &[PathBuf],
) -> Result<(), Failure> {
    let dir = host.data_dir().display();
    println!("\nInspect the result:");
    println!("  cosnap --data-dir {dir} snapshot list");
    println!("  cosnap --data-dir {dir} refpoint list");
    println!("  cosnap --data-dir {dir} vm list");
    print_disk_hints(host, vm_ids)?;
    for package in packages {
        println!("  cosnap export verify '{}'", package.display());
    }
    Ok(())
}

/// The command that shows the qcow2 VM's differential disk chained onto the full export.
pub fn print_chain_hint(differential: &Path) {
    println!(
        "  qemu-img info --backing-chain '{}'/demo-db_*/'Virtual Hard Disks'/disk0.qcow2   # differential chained onto the full export",
        differential.display()
    );
}
