//! Import of export packages: defines the VMs and the VM collection of a package again.
//!
//! Decisions:
//! * The package is verified first (every digest, image and chain link); a package that
//!   fails is refused (invalid parameter) and nothing is defined.
//! * Disks are copied out of the package (flattened through any PreserveChain parents into
//!   standalone images of the same format, `.avhdx` → `.vhdx`) under
//!   `<data-dir>/imported/<vm-id>/`, so the package is never modified by later use of the VMs.
//! * Ids are kept (VM `Name`, collection `CollectionID`) when free in this repository, and
//!   fresh GUIDs are taken otherwise; the result says which ids were used.
//! * Settings come from the resource settings at the snapshot: CPUs (ResourceType 3
//!   VirtualQuantity), memory MB (4), NICs (10: Address = MAC, Connection = switch).
//! * A package written without storage has no disks to import: it is refused.

use std::path::{Path, PathBuf};

use cosnap_cim::{Instance, Value};
use cosnap_disk::{CancelToken, FlattenJob, Format, LayerSpec};
use cosnap_export::{Package, PackageVm};
use serde::Serialize;

use crate::model::{COLLECTION_OF_VMS, DiskSpec, Nic, VmSpec};
use crate::{Host, HostError, Result};

/// What an import defined.
#[derive(Debug, Clone, Serialize)]
pub struct ImportResult {
    pub collection: String,
    pub vms: Vec<String>,
    /// Where the imported disks were written.
    pub disks: Vec<PathBuf>,
}

fn u64_prop(inst: &Instance, name: &str) -> Option<u64> {
    match inst.get(name)? {
        Value::String(s) => s.trim().parse().ok(),
        v => v.as_u64(),
    }
}

fn first_str(inst: &Instance, name: &str) -> Option<String> {
    match inst.get(name)? {
        Value::Array(a) => a.first().and_then(|v| v.as_str()).map(str::to_string),
        v => v.as_str().map(str::to_string),
    }
    .filter(|s| !s.is_empty())
}

fn by_type(resources: &[Instance], ty: u64) -> impl Iterator<Item = &Instance> {
    resources
        .iter()
        .filter(move |r| u64_prop(r, "ResourceType") == Some(ty))
}

/// Verifies and imports the package at `dir`, copying its disks with `threads` copies at once.
pub fn import_package(
    host: &Host,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ImportResult> {
    // Verified and read through one handle: what is imported is what was verified. The
    // package stays open while its disks are copied (they are read through its handles).
    let pkg = read_verified(dir)?;
    let vm_ids = import_ids(host, &pkg);

    // Disks: copy out of the package.
    let (jobs, specs) = copy_plan(host, &pkg, &vm_ids)?;
    let copied: Vec<PathBuf> = jobs.iter().map(|j| j.dest.clone()).collect();
    cosnap_disk::flatten_all(&jobs, 2, progress, &CancelToken::new())?;
    // Imported images hold VM data: owner only, whatever the umask.
    for p in &copied {
        crate::modes::make_private_file(p)?;
    }

    // Define the VMs, then the collection; undo both and the copies if that fails.
    let mut defined = Vec::new();
    match define_all(host, &pkg, &vm_ids, specs, &mut defined) {
        Ok(collection) => Ok(ImportResult {
            collection,
            vms: defined,
            disks: copied,
        }),
        Err(e) => {
            for id in &defined {
                let _ = host.destroy_vm(id);
            }
            for p in &copied {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// The package, verified (every digest, image and chain link) and holding storage.
fn read_verified(dir: &Path) -> Result<Package> {
    let pkg = cosnap_export::verify_and_read_package(dir)
        .map_err(|e| HostError::invalid(e.to_string()))?
        .map_err(|verify| {
            HostError::invalid(format!(
                "{} fails verification: {}",
                dir.display(),
                verify.problems.join("; ")
            ))
        })?;
    if !pkg.meta.copy_storage {
        return Err(HostError::invalid(format!(
            "{} was exported without storage: it holds no disks to import",
            dir.display()
        )));
    }
    Ok(pkg)
}

/// The VM ids to define: the package's when free here, fresh GUIDs otherwise.
fn import_ids(host: &Host, pkg: &Package) -> Vec<String> {
    pkg.vms
        .iter()
        .map(|v| {
            let keep = !v.record.id.is_empty()
                && uuid::Uuid::parse_str(v.record.id.trim_matches(['{', '}'])).is_ok()
                && host.vm(&v.record.id).is_err();
            if keep {
                crate::util::norm_id(&v.record.id)
            } else {
                crate::util::new_guid()
            }
        })
        .collect()
}

/// The copies to make (one flatten job per disk, under `<data-dir>/imported/<vm-id>/`)
/// and, per VM, the disks it will be defined with.
fn copy_plan(
    host: &Host,
    pkg: &Package,
    vm_ids: &[String],
) -> Result<(Vec<FlattenJob>, Vec<Vec<DiskSpec>>)> {
    let mut jobs = Vec::new();
    let mut specs: Vec<Vec<DiskSpec>> = Vec::new();
    for (v, vm_id) in pkg.vms.iter().zip(vm_ids) {
        let dest_dir = host.data_dir().join("imported").join(vm_id);
        crate::modes::create_private_dir(&host.data_dir().join("imported"))?;
        crate::modes::create_private_dir(&dest_dir)?;

        let mut disks = Vec::new();
        for i in 0..v.record.disks.len() {
            let (job, spec) = disk_copy(v, i, &dest_dir)?;
            jobs.push(job);
            disks.push(spec);
        }
        specs.push(disks);
    }
    Ok((jobs, specs))
}

/// The copy of one disk of a package VM into `dest_dir`, and the disk it becomes.
fn disk_copy(v: &PackageVm, i: usize, dest_dir: &Path) -> Result<(FlattenJob, DiskSpec)> {
    let d = &v.record.disks[i];
    // The file as the package reader opened it (no symlink), not its path again.
    let Some(src) = v.disk_source(i) else {
        return Err(HostError::invalid(format!(
            "disk {} of VM {} has no file in the package",
            d.id, v.record.id
        )));
    };
    if d.parent.is_some() {
        // Its parent lives in another package this one cannot vouch for.
        return Err(HostError::invalid(format!(
            "disk {} of VM {} is a differencing image of an earlier package; import a full or Merge export instead",
            d.id, v.record.id
        )));
    }

    let format = d.format;
    let ext = match format {
        Format::Vhdx => "vhdx",
        Format::Qcow2 => "qcow2",
        Format::Raw => "raw",
    };
    let dest = dest_dir.join(format!("{}.{ext}", cosnap_export::names::sanitize(&d.id)));
    if dest.exists() {
        return Err(HostError::AlreadyExists(format!(
            "{} exists",
            dest.display()
        )));
    }

    let job = FlattenJob {
        // The package records each file's format; its bytes may say otherwise.
        source_layers: vec![LayerSpec::new(src.clone(), format)],
        ..FlattenJob::whole(src, dest.clone(), format)
    };
    let spec = DiskSpec {
        path: dest,
        format: Some(format),
    };
    Ok((job, spec))
}

/// Defines the VMs (their ids pushed to `defined` as they are made), then the collection
/// with them as members; returns the collection id.
fn define_all(
    host: &Host,
    pkg: &Package,
    vm_ids: &[String],
    specs: Vec<Vec<DiskSpec>>,
    defined: &mut Vec<String>,
) -> Result<String> {
    for ((v, vm_id), disks) in pkg.vms.iter().zip(vm_ids).zip(specs) {
        let vm = host.define_vm(&vm_spec(v, vm_id, disks)?)?;
        defined.push(vm.id);
    }

    let coll_id = pkg.meta.collection_id.clone();
    let keep = uuid::Uuid::parse_str(coll_id.trim_matches(['{', '}'])).is_ok()
        && host.collection(&coll_id).is_err();
    let coll = host.define_collection(
        if pkg.meta.collection_name.trim().is_empty() {
            "imported collection"
        } else {
            &pkg.meta.collection_name
        },
        keep.then_some(coll_id.as_str()),
        COLLECTION_OF_VMS,
    )?;
    for id in defined.iter() {
        host.add_member(&coll.id, id)?;
    }
    Ok(coll.id)
}

/// A package VM's spec from its resource settings at the snapshot.
fn vm_spec(v: &PackageVm, vm_id: &str, disks: Vec<DiskSpec>) -> Result<VmSpec> {
    let cpus = by_type(&v.resources, 3)
        .find_map(|r| u64_prop(r, "VirtualQuantity"))
        .unwrap_or(1);
    let memory_mb = by_type(&v.resources, 4)
        .find_map(|r| u64_prop(r, "VirtualQuantity"))
        .unwrap_or(512);
    let nics = by_type(&v.resources, 10)
        .filter_map(|r| {
            // The switch is on the NIC (`Connection`) or on the Ethernet connection
            // setting (ResourceType 33) whose `Parent` is the NIC.
            let iid = first_str(r, "InstanceID");
            let switch_name = first_str(r, "Connection").or_else(|| {
                by_type(&v.resources, 33)
                    .find(|c| iid.is_some() && first_str(c, "Parent") == iid)
                    .and_then(|c| first_str(c, "SwitchName"))
            });
            first_str(r, "Address").map(|mac| Nic { mac, switch_name })
        })
        .collect();
    let name = if v.record.name.is_empty() {
        first_str(&v.system, "ElementName").unwrap_or_else(|| format!("imported {vm_id}"))
    } else {
        v.record.name.clone()
    };

    Ok(VmSpec {
        id: Some(vm_id.to_string()),
        name,
        cpus: u32::try_from(cpus).map_err(|_| HostError::invalid(format!("{cpus} CPUs")))?,
        memory_mb,
        disks,
        nics,
    })
}
