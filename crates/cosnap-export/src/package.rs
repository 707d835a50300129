//! The package's vocabulary: its layout names, `cosnap-package.json`, and what writing,
//! verifying and reading report. Writing is in [`crate::write`], the commit and recovery
//! in [`crate::commit`], verifying and reading in [`crate::read`].

use std::path::PathBuf;

use cosnap_cim::{Instance, Value};
use cosnap_disk::Format;
use serde::{Deserialize, Serialize};

use crate::plan::{BackupIntent, Differential};

pub const PACKAGE_JSON: &str = "cosnap-package.json";
pub const PACKAGE_FORMAT: &str = "cosnap-export";
pub const PACKAGE_FORMAT_VERSION: u32 = 1;
pub(crate) const VM_CONFIG_DIR: &str = "Virtual Machines";
pub(crate) const SNAPSHOT_DIR: &str = "Snapshots";
pub(crate) const DISK_DIR: &str = "Virtual Hard Disks";

/// One disk in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub id: String,
    /// `ovf:diskId` in the descriptor.
    pub ovf_disk_id: String,
    /// Package-relative path of the exported file; `None` without storage.
    pub file: Option<String>,
    pub format: Format,
    pub virtual_size: u64,
    /// Guest bytes written as data.
    pub data_bytes: u64,
    /// PreserveChain differential: the parent's path relative to this file's directory (as
    /// the image records it).
    pub parent: Option<String>,
    /// Differential: the guest ranges `[start, end)` that changed since the base.
    pub changed_ranges: Option<Vec<[u64; 2]>>,
    pub resource_instance_id: Option<String>,
}

/// One VM in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    /// The VM's directory, relative to the package.
    pub dir: String,
    /// `Virtual Machines/<vm-id>.xml`, relative to the package.
    pub config: String,
    /// `Snapshots/<snapshot-settings-id>.xml`, relative to the package.
    pub snapshot_config: String,
    pub disks: Vec<DiskRecord>,
}

/// `cosnap-package.json`: the machine-readable description of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageMeta {
    pub format: String,
    pub format_version: u32,
    pub export_id: String,
    pub name: String,
    pub created_unix: u64,
    pub collection_id: String,
    pub collection_name: String,
    pub snapshot_id: String,
    pub snapshot_name: String,
    /// `full` or `differential`.
    pub kind: String,
    /// Set for differentials.
    pub intent: Option<BackupIntent>,
    pub differential: Option<Differential>,
    /// Why a requested differential was written as a full export, if it was.
    pub fallback_to_full: Option<String>,
    pub copy_storage: bool,
    pub digest_algorithm: String,
    pub manifest: String,
    pub descriptor: String,
    /// Holds the collection and snapshot-collection instances.
    pub collection_file: String,
    pub vms: Vec<VmRecord>,
}

/// What [`crate::write_package`] produced.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// The directory that holds the package (where `cosnap-package.json` is).
    pub path: PathBuf,
    pub meta: PackageMeta,
    /// Bytes of all files written (apparent sizes).
    pub bytes_written: u64,
}

/// Outcome of [`crate::verify_package`]; the package is good when `problems` is empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub files_checked: usize,
    pub images_checked: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A VM read back from a package.
#[derive(Debug, Clone)]
pub struct PackageVm {
    pub record: VmRecord,
    pub system: Instance,
    pub settings: Instance,
    pub resources: Vec<Instance>,
    /// Absolute paths of the exported disk files, in `record.disks` order (`None` without storage).
    pub disk_files: Vec<Option<PathBuf>>,
}

/// A package read back for import.
#[derive(Debug, Clone)]
pub struct Package {
    pub root: PathBuf,
    pub meta: PackageMeta,
    pub collection: Instance,
    pub snapshot: Instance,
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
