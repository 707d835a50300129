//! Export packages: the on-disk layout, the OVF descriptor, the manifest, full and
//! differential exports of a snapshot collection, verification and import.
//!
//! The host hands this crate an [`ExportPlan`] (the collection, the snapshot, each VM's
//! system, settings and resource settings at the snapshot as CIM instances, and each disk's
//! frozen layer) and gets back a package written atomically under an export directory
//! ([`write_package`]). [`verify_package`] checks every digest, every image and every chain
//! link of a package; [`read_package`] reads one back for import; [`recover_export_dir`]
//! removes what an interrupted export left behind. Nothing here knows the repository.
//!
//! The layout is documented in the README section "Export package layout".
//!
//! # Example
//!
//! Export one VM with one raw disk, then verify the package:
//!
//! ```
//! use cosnap_cim::{CimType, Instance, Value};
//! use cosnap_disk::{CancelToken, Format};
//! use cosnap_export::{DiskPlan, ExportOptions, ExportPlan, VmPlan, verify_package, write_package};
//!
//! let work = tempfile::tempdir()?;
//! let disk = work.path().join("disk.raw");
//! std::fs::File::create(&disk)?.set_len(1 << 20)?;
//! let out = work.path().join("exports");
//! std::fs::create_dir(&out)?;
//!
//! let text = |s: &str| Some(Value::String(s.into()));
//! let vm = VmPlan {
//!     system: Instance::new("Msvm_ComputerSystem").with("Name", CimType::String, text("vm-1")),
//!     settings: Instance::new("Msvm_VirtualSystemSettingData")
//!         .with("InstanceID", CimType::String, text("snap-vssd-1")),
//!     resources: vec![
//!         Instance::new("Msvm_ProcessorSettingData")
//!             .with("ResourceType", CimType::Uint16, Some(Value::Uint16(3)))
//!             .with("VirtualQuantity", CimType::Uint64, Some(Value::Uint64(1))),
//!         Instance::new("Msvm_MemorySettingData")
//!             .with("ResourceType", CimType::Uint16, Some(Value::Uint16(4)))
//!             .with("VirtualQuantity", CimType::Uint64, Some(Value::Uint64(256))),
//!     ],
//!     disks: vec![DiskPlan {
//!         id: "disk-1".into(),
//!         source: disk,
//!         format: Format::Raw,
//!         layers: Vec::new(),
//!         base_layer: None,
//!         changed_ranges: None,
//!         base_export_file: None,
//!         base_export_format: None,
//!         resource_instance_id: None,
//!     }],
//! };
//! let plan = ExportPlan {
//!     collection: Instance::new("Msvm_VirtualSystemCollection")
//!         .with("CollectionID", CimType::String, text("collection-1")),
//!     snapshot: Instance::new("Msvm_SnapshotCollection")
//!         .with("CollectionID", CimType::String, text("snapshot-1")),
//!     vms: vec![vm],
//!     differential: None,
//!     fallback_to_full: None,
//! };
//!
//! let opts = ExportOptions { create_subdirectory: true, ..Default::default() };
//! let report = write_package(&plan, &out, &opts, &|_done, _total| {}, &CancelToken::new())?;
//! assert!(verify_package(&report.path)?.ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod cimxml;
mod commit;
pub mod dirhandle;
pub mod manifest;
pub mod names;
pub mod ovf;
mod package;
mod plan;
pub mod read;
mod write;

use std::path::PathBuf;

pub use commit::{Recovered, RecoveryReport, recover_export, recover_export_dir};
pub use cosnap_disk::digest::DigestAlgorithm;
pub use dirhandle::DirHandle;
pub use package::{
    DiskRecord, PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION, PACKAGE_JSON, Package, PackageMeta,
    PackageReport, PackageVm, VerifyReport, VmRecord,
};
pub use plan::{
    BackupIntent, BaseKind, DEFAULT_FILE_MODE, Differential, DiskPlan, ExportOptions, ExportPlan,
    VmPlan,
};
pub use read::{read_package, verify_and_read_package, verify_package};
pub use write::{
    CommitHooks, open_export_dir, preflight, preflight_in, write_package, write_package_in,
};

/// The result of every fallible call of this crate.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// Why an export, a verification or an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The export directory was given as a relative path.
    #[error("export directory {0} is not an absolute path")]
    RelativeDirectory(PathBuf),
    /// The export directory is missing or not a directory.
    #[error("export directory {0} does not exist or is not a directory")]
    NoDirectory(PathBuf),
    /// Without a sub-directory, an entry the package would create already exists.
    #[error(
        "{0} already exists; the export would overwrite it (choose an empty directory or ask for a sub-directory)"
    )]
    Collision(PathBuf),
    /// A component of the export directory's path is a symbolic link.
    #[error("export directory {0} has a symbolic link in its path; name the real directory")]
    Symlink(PathBuf),
    /// Another export without a sub-directory is writing into the directory.
    #[error(
        "another export is writing into {0}; wait for it, or ask for a sub-directory (CreateVmExportSubdirectory)"
    )]
    Busy(PathBuf),
    /// The plan cannot be written as asked (no VM, a disk id twice, a differential without its base).
    #[error("invalid export plan: {0}")]
    Plan(String),
    /// The target file system is full (ENOSPC/EDQUOT/EFBIG).
    #[error("no space left on the export target while writing {path}: {source}")]
    NoSpace {
        /// The file being written when space ran out.
        path: PathBuf,
        /// The error the file system gave.
        source: std::io::Error,
    },
    /// Reading or writing a file failed for another reason.
    #[error("{path}: {source}")]
    Io {
        /// The file the error is about.
        path: PathBuf,
        /// The error the file system gave.
        source: std::io::Error,
    },
    /// Reading or copying a disk image failed.
    #[error(transparent)]
    Disk(cosnap_disk::DiskError),
    /// The caller's cancel token was set before the export finished.
    #[error("export cancelled")]
    Cancelled,
    /// A package being verified or read is malformed or incomplete.
    #[error("{path}: not a valid cosnap export package: {what}")]
    BadPackage {
        /// The package (or the file in it) at fault.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

impl ExportError {
    /// An I/O error on `path`, as [`ExportError::NoSpace`] when the file system is full.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_no_space(&source) {
            ExportError::NoSpace { path, source }
        } else {
            ExportError::Io { path, source }
        }
    }
    /// A [`ExportError::BadPackage`] for `path`.
    pub fn bad_package(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        ExportError::BadPackage {
            path: path.into(),
            what: what.into(),
        }
    }
}

impl From<cosnap_disk::DiskError> for ExportError {
    fn from(e: cosnap_disk::DiskError) -> Self {
        match e {
            cosnap_disk::DiskError::Cancelled => ExportError::Cancelled,
            cosnap_disk::DiskError::Io { path, source } if is_no_space(&source) => {
                ExportError::NoSpace { path, source }
            }
            other => ExportError::Disk(other),
        }
    }
}
