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
use cosnap_disk::{CancelToken, FlattenJob, Format};
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
    let verify =
        cosnap_export::verify_package(dir).map_err(|e| HostError::invalid(e.to_string()))?;
    if !verify.ok() {
        return Err(HostError::invalid(format!(
            "{} fails verification: {}",
            dir.display(),
            verify.problems.join("; ")
        )));
    }
    let pkg = cosnap_export::read_package(dir).map_err(|e| HostError::invalid(e.to_string()))?;
    if !pkg.meta.copy_storage {
        return Err(HostError::invalid(format!(
            "{} was exported without storage: it holds no disks to import",
            dir.display()
        )));
    }
    // Ids: keep when free.
    let mut vm_ids = Vec::new();
    for v in &pkg.vms {
        let keep = !v.record.id.is_empty()
            && uuid::Uuid::parse_str(v.record.id.trim_matches(['{', '}'])).is_ok()
            && host.vm(&v.record.id).is_err();
        vm_ids.push(if keep {
            crate::util::norm_id(&v.record.id)
        } else {
            crate::util::new_guid()
        });
    }
    // Disks: copy out of the package.
    let mut jobs = Vec::new();
    let mut specs: Vec<Vec<DiskSpec>> = Vec::new();
    for (v, vm_id) in pkg.vms.iter().zip(&vm_ids) {
        let dest_dir = host.data_dir().join("imported").join(vm_id);
        std::fs::create_dir_all(&dest_dir)?;
        let mut disks = Vec::new();
        for (d, file) in v.record.disks.iter().zip(&v.disk_files) {
            let Some(src) = file else {
                return Err(HostError::invalid(format!(
                    "disk {} of VM {} has no file in the package",
                    d.id, v.record.id
                )));
            };
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
            jobs.push(FlattenJob {
                source: src.clone(),
                base: None,
                dest: dest.clone(),
                dest_format: format,
                dest_parent: None,
            });
            disks.push(DiskSpec {
                path: dest,
                format: Some(format),
            });
        }
        specs.push(disks);
    }
    let copied: Vec<PathBuf> = jobs.iter().map(|j| j.dest.clone()).collect();
    cosnap_disk::flatten_all(&jobs, 2, progress, &CancelToken::new())?;
    // Imported images hold VM data: owner only, whatever the umask.
    for p in &copied {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    let cleanup = || {
        for p in &copied {
            let _ = std::fs::remove_file(p);
        }
    };
    // Define the VMs, then the collection.
    let mut defined = Vec::new();
    let result = (|| -> Result<String> {
        for ((v, vm_id), disks) in pkg.vms.iter().zip(&vm_ids).zip(specs) {
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
            let spec = VmSpec {
                id: Some(vm_id.clone()),
                name,
                cpus: u32::try_from(cpus)
                    .map_err(|_| HostError::invalid(format!("{cpus} CPUs")))?,
                memory_mb,
                disks,
                nics,
            };
            let vm = host.define_vm(&spec)?;
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
        for id in &defined {
            host.add_member(&coll.id, id)?;
        }
        Ok(coll.id)
    })();
    match result {
        Ok(collection) => Ok(ImportResult {
            collection,
            vms: defined,
            disks: copied,
        }),
        Err(e) => {
            for id in &defined {
                let _ = host.destroy_vm(id);
            }
            cleanup();
            Err(e)
        }
    }
}
