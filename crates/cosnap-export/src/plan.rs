//! What the host asks for: the export plan and its options.

use std::path::PathBuf;

use cosnap_cim::Instance;
use cosnap_disk::{Format, LayerSpec, digest::DigestAlgorithm};
use serde::{Deserialize, Serialize};

/// `BackupIntent` of `Msvm_CollectionSnapshotExportSettingData` (collection numbering:
/// 1 PreserveChain, 2 Merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BackupIntent {
    /// Each differential disk is a differencing image whose parent is the base export's
    /// disk (relative path): base + differential open as one chain.
    #[default]
    PreserveChain,
    /// Each disk is a synthetic full (base + changes) that stands alone.
    Merge,
}

impl BackupIntent {
    /// The intent for a `BackupIntent` code; `None` for codes not defined.
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(BackupIntent::PreserveChain),
            2 => Some(BackupIntent::Merge),
            _ => None,
        }
    }
    /// The `BackupIntent` code.
    pub fn code(self) -> u16 {
        match self {
            BackupIntent::PreserveChain => 1,
            BackupIntent::Merge => 2,
        }
    }
}

/// What the differential base is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaseKind {
    /// The base is a snapshot.
    Snapshot,
    /// The base is a reference point.
    ReferencePoint,
}

/// A differential export's base, as recorded in the package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Differential {
    /// The base's id (a snapshot's or reference point's `InstanceID`).
    pub base_id: String,
    /// Whether the base is a snapshot or a reference point.
    pub base_kind: BaseKind,
    /// Id of the package that exported the base (its `export_id`), when one is on record.
    pub base_export_id: Option<String>,
}

/// One disk of one VM.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    /// Stable identifier of the disk (used for file names and `ovf:/disk/<id>`).
    pub id: String,
    /// Top layer of the disk's chain frozen at the snapshot (read only).
    pub source: PathBuf,
    /// The format the disk is exported in, as the repository records the disk (normally
    /// `source`'s; a VHDX disk under a running VM's qcow2 overlays stays VHDX). `layers`
    /// gives the formats the source is read with.
    pub format: Format,
    /// The source's chain as the repository records it (top first, `source` on top), so
    /// every layer is opened with its recorded format and parent and nothing is probed.
    /// Empty = probe `source` (only for images a person named, e.g. in tests).
    pub layers: Vec<LayerSpec>,
    /// Differential only: the layer that was on top when the base was taken; only the ranges
    /// changed above it are exported. `None` = full.
    pub base_layer: Option<PathBuf>,
    /// Differential only: the changed ranges as a change tracker (persistent dirty bitmaps)
    /// reported them; when set they are exported instead of the chain's ranges above
    /// `base_layer`.
    pub changed_ranges: Option<Vec<std::ops::Range<u64>>>,
    /// PreserveChain differential only: the base export's file of this disk (absolute), the
    /// parent of the differencing image written.
    pub base_export_file: Option<PathBuf>,
    /// The recorded format of `base_export_file` (`None` = probe it).
    pub base_export_format: Option<Format>,
    /// InstanceID of the resource setting that attaches this disk, if any.
    pub resource_instance_id: Option<String>,
}

/// One VM of the collection at the snapshot.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The VM (`Msvm_ComputerSystem`; `Name` is its id, `ElementName` its name).
    pub system: Instance,
    /// The VM's settings at the snapshot (the snapshot's `Msvm_VirtualSystemSettingData`;
    /// `InstanceID` names `Snapshots/<id>.xml`).
    pub settings: Instance,
    /// Resource settings at the snapshot (processor, memory, disks, NICs, …).
    pub resources: Vec<Instance>,
    /// The VM's disks, each with its frozen layer.
    pub disks: Vec<DiskPlan>,
}

/// Everything one export writes.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// `Msvm_VirtualSystemCollection` (`CollectionID`, `ElementName`).
    pub collection: Instance,
    /// `Msvm_SnapshotCollection` (`CollectionID`, `ElementName`).
    pub snapshot: Instance,
    /// The collection's VMs at the snapshot.
    pub vms: Vec<VmPlan>,
    /// Set for a differential export.
    pub differential: Option<Differential>,
    /// Set when a differential was asked for, its change information was gone, and the
    /// caller allowed a full export instead: the reason, recorded in the package.
    pub fallback_to_full: Option<String>,
}

/// Package files are readable by their owner only unless asked otherwise.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// How to write the package.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// `CopyVmStorage`: write the disks.
    pub copy_storage: bool,
    /// `CreateVmExportSubdirectory`: one sub-directory per export.
    pub create_subdirectory: bool,
    /// PreserveChain or Merge, for differential exports.
    pub intent: BackupIntent,
    /// Disks copied at once.
    pub threads: usize,
    /// Mode of every file the package holds (disk images included); directories get the
    /// matching search bits (0600 → 0700). Owner-only by default.
    pub file_mode: u32,
    /// The export's id (journal and staging names); a fresh one when `None`. The host
    /// chooses it so that its recovery can find this export's leftovers.
    pub export_id: Option<String>,
    /// The manifest's digest algorithm: SHA-256 (OVF's) unless the caller asks for BLAKE3.
    pub digest: DigestAlgorithm,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            copy_storage: true,
            create_subdirectory: false,
            intent: BackupIntent::PreserveChain,
            threads: 2,
            file_mode: DEFAULT_FILE_MODE,
            export_id: None,
            digest: DigestAlgorithm::Sha256,
        }
    }
}
