//! The package's vocabulary: its layout names, `cosnap-package.json`, and what writing,
//! verifying and reading report. Writing is in [`crate::write`], the commit and recovery
//! in [`crate::commit`], verifying and reading in [`crate::read`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use cosnap_cim::{Instance, Value};
use cosnap_disk::Format;
use serde::{Deserialize, Serialize};

use crate::plan::{BackupIntent, Differential};

/// The name of the package's machine-readable description, at the package's top.
pub const PACKAGE_JSON: &str = "cosnap-package.json";
/// The `format` every package's description carries.
pub const PACKAGE_FORMAT: &str = "cosnap-export";
/// The version of the package format this crate writes and reads.
pub const PACKAGE_FORMAT_VERSION: u32 = 1;
pub(crate) const VM_CONFIG_DIR: &str = "Virtual Machines";
pub(crate) const SNAPSHOT_DIR: &str = "Snapshots";
pub(crate) const DISK_DIR: &str = "Virtual Hard Disks";

/// One disk in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The disk's id in the plan (names its file and its `ovf:/disk/` reference).
    pub id: String,
    /// `ovf:diskId` in the descriptor.
    pub ovf_disk_id: String,
    /// Package-relative path of the exported file; `None` without storage.
    pub file: Option<String>,
    /// The exported file's image format.
    pub format: Format,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// Guest bytes written as data.
    pub data_bytes: u64,
    /// PreserveChain differential: the parent's path relative to this file's directory (as
    /// the image records it).
    pub parent: Option<String>,
    /// Differential: the guest ranges `[start, end)` that changed since the base.
    pub changed_ranges: Option<Vec<[u64; 2]>>,
    /// InstanceID of the resource setting that attaches the disk, if any.
    pub resource_instance_id: Option<String>,
}

/// One VM in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's id (`Msvm_ComputerSystem.Name`).
    pub id: String,
    /// The VM's name (`ElementName`).
    pub name: String,
    /// The VM's directory, relative to the package.
    pub dir: String,
    /// `Virtual Machines/<vm-id>.xml`, relative to the package.
    pub config: String,
    /// `Snapshots/<snapshot-settings-id>.xml`, relative to the package.
    pub snapshot_config: String,
    /// The VM's disks, in the plan's order.
    pub disks: Vec<DiskRecord>,
}

/// `cosnap-package.json`: the machine-readable description of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageMeta {
    /// Always [`PACKAGE_FORMAT`].
    pub format: String,
    /// The package format version it was written with ([`PACKAGE_FORMAT_VERSION`]).
    pub format_version: u32,
    /// The export's id (its journal and staging names).
    pub export_id: String,
    /// The package's name (its directory or file-name stem).
    pub name: String,
    /// When the package was written, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The exported collection's `CollectionID`.
    pub collection_id: String,
    /// The exported collection's name.
    pub collection_name: String,
    /// The exported snapshot's `CollectionID`.
    pub snapshot_id: String,
    /// The exported snapshot's name.
    pub snapshot_name: String,
    /// `full` or `differential`.
    pub kind: String,
    /// Set for differentials.
    pub intent: Option<BackupIntent>,
    /// Set for differentials: the base the changes are against.
    pub differential: Option<Differential>,
    /// Why a requested differential was written as a full export, if it was.
    pub fallback_to_full: Option<String>,
    /// Whether the disks were written (`CopyVmStorage`).
    pub copy_storage: bool,
    /// The manifest's digest algorithm.
    pub digest_algorithm: String,
    /// The manifest's path, relative to the package.
    pub manifest: String,
    /// The OVF descriptor's path, relative to the package.
    pub descriptor: String,
    /// Holds the collection and snapshot-collection instances.
    pub collection_file: String,
    /// The package's VMs.
    pub vms: Vec<VmRecord>,
}

/// What [`crate::write_package`] produced.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// The directory that holds the package (where `cosnap-package.json` is).
    pub path: PathBuf,
    /// What was written into `cosnap-package.json`.
    pub meta: PackageMeta,
    /// Bytes of all files written (apparent sizes).
    pub bytes_written: u64,
}

/// Outcome of [`crate::verify_package`]; the package is good when `problems` is empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// How many files had their digest checked.
    pub files_checked: usize,
    /// How many disk images were opened and checked.
    pub images_checked: usize,
    /// What is wrong with the package, one line each; empty when it is good.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether the package passed every check.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A VM read back from a package.
#[derive(Debug, Clone)]
pub struct PackageVm {
    /// The VM's entry in `cosnap-package.json`.
    pub record: VmRecord,
    /// The VM's `Msvm_ComputerSystem`.
    pub system: Instance,
    /// The VM's settings at the snapshot (`Msvm_VirtualSystemSettingData`).
    pub settings: Instance,
    /// The VM's resource settings at the snapshot.
    pub resources: Vec<Instance>,
    /// Absolute paths of the exported disk files, in `record.disks` order (`None` without storage).
    pub disk_files: Vec<Option<PathBuf>>,
    /// The same files as they were opened through the package's directory handle (no
    /// symbolic link followed), held open: read them through [`PackageVm::disk_source`].
    pub disk_handles: Vec<Option<Arc<File>>>,
}

impl PackageVm {
    /// A path that reaches the `i`-th disk file as it was opened (`/proc/self/fd/<n>`),
    /// whatever has been renamed or linked in its place since.
    pub fn disk_source(&self, i: usize) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        let file = self.disk_handles.get(i)?.as_ref()?;
        Some(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
    }
}

/// A package read back for import.
#[derive(Debug, Clone)]
pub struct Package {
    /// The package directory, canonical.
    pub root: PathBuf,
    /// The package's `cosnap-package.json`.
    pub meta: PackageMeta,
    /// The exported `Msvm_VirtualSystemCollection`.
    pub collection: Instance,
    /// The exported `Msvm_SnapshotCollection`.
    pub snapshot: Instance,
    /// The package's VMs, in the order the package lists them.
    pub vms: Vec<PackageVm>,
}

pub(crate) fn id_of(inst: &Instance, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| {
            inst.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub(crate) fn name_of(inst: &Instance, fallback: &str) -> String {
    inst.get("ElementName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_string()
}
