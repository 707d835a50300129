//! The host's objects as plain Rust values (what the repository stores and what the CLI
//! prints as JSON). CIM instances are built from these in `cim.rs`.

use std::path::PathBuf;

use cosnap_disk::Format;
use serde::{Deserialize, Serialize};

/// Collection kinds of DefineCollection's `Type` (0 → Msvm_VirtualSystemCollection,
/// 1 → Msvm_ManagementCollection — the mapping is inferred; see docs/decisions.md,
/// "Class mappings").
pub const COLLECTION_OF_VMS: u16 = 0;
pub const COLLECTION_OF_COLLECTIONS: u16 = 1;

/// Collection SnapshotType values (the collection's own numbering: 1 Standard, 2 Recovery;
/// docs/decisions.md, "Snapshot types and consistency numbering").
pub const SNAPSHOT_STANDARD: u16 = 1;
pub const SNAPSHOT_RECOVERY: u16 = 2;

pub const VST_REALIZED: &str = "Microsoft:Hyper-V:System:Realized";
pub const VST_SNAPSHOT_REALIZED: &str = "Microsoft:Hyper-V:Snapshot:Realized";
pub const VST_SNAPSHOT_RECOVERY: &str = "Microsoft:Hyper-V:Snapshot:Recovery";

/// JobType values used (docs/decisions.md, "Class mappings"; apply/destroy/export of collections reuse the
/// per-VM 71/72/62 since no collection JobType exists).
pub mod job_type {
    pub const DEFINE_VM: u16 = 1;
    pub const DESTROY_VM: u16 = 3;
    pub const EXPORT: u16 = 62;
    pub const APPLY_SNAPSHOT: u16 = 71;
    pub const DESTROY_SNAPSHOT: u16 = 72;
    pub const DEFINE_COLLECTION: u16 = 190;
    pub const DESTROY_COLLECTION: u16 = 191;
    pub const RENAME_COLLECTION: u16 = 192;
    pub const ADD_MEMBER: u16 = 193;
    pub const REMOVE_MEMBER: u16 = 194;
    pub const SNAPSHOT_COLLECTION: u16 = 198;
    pub const CONVERT_TO_RP: u16 = 200;
    pub const CREATE_RP_ON_COLLECTION: u16 = 205;
    pub const DESTROY_RP_ON_COLLECTION: u16 = 208;
}

/// JobState values (CIM_ConcreteJob).
pub mod job_state {
    pub const NEW: u16 = 2;
    pub const STARTING: u16 = 3;
    pub const RUNNING: u16 = 4;
    pub const COMPLETED: u16 = 7;
    pub const TERMINATED: u16 = 8;
    pub const KILLED: u16 = 9;
    pub const EXCEPTION: u16 = 10;

    pub fn is_terminal(state: u16) -> bool {
        matches!(state, COMPLETED | TERMINATED | KILLED | EXCEPTION | 32768)
    }
}

/// A disk as given to DefineSystem / `vm define`: an existing image file (the VM's base).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// `None` = detect from the file.
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Nic {
    pub mac: String,
    #[serde(rename = "switch")]
    pub switch_name: Option<String>,
}

/// What defines a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmSpec {
    /// Caller-chosen id (import keeps ids); `None` = a fresh GUID.
    pub id: Option<String>,
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<Nic>,
}

impl DiskSpec {
    /// A raw image at `path` (its format given, not detected).
    pub fn raw(path: PathBuf) -> DiskSpec {
        DiskSpec {
            path,
            format: Some(Format::Raw),
        }
    }
}

impl VmSpec {
    /// The VM `name` on `disks` with a fresh id, 1 CPU, 256 MiB and no NIC.
    pub fn new(name: impl Into<String>, disks: Vec<DiskSpec>) -> VmSpec {
        VmSpec {
            id: None,
            name: name.into(),
            cpus: 1,
            memory_mb: 256,
            disks,
            nics: Vec::new(),
        }
    }
}

/// The VM settings a snapshot keeps and ApplySnapshot restores (disks are kept as layers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmSettings {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub nics: Vec<Nic>,
    /// The base disk of each slot, in definition order (path, format).
    pub base_disks: Vec<(PathBuf, Format)>,
    /// Boot and COM2 at the time (shown by a snapshot's settings; ApplySnapshot leaves the
    /// VM's own untouched). Snapshots taken before it was kept read as firmware boot, no COM2.
    #[serde(default)]
    pub run: crate::vm_boot::VmRunSettings,
}

/// One disk slot of a VM with its current (active) layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmDisk {
    pub index: u32,
    /// The active layer: where guest writes go.
    pub path: PathBuf,
    pub format: Format,
    pub base_path: PathBuf,
    pub base_format: Format,
    /// The disk's InstanceID (Msvm_StorageAllocationSettingData), stable for the VM's life.
    pub instance_id: String,
    /// GUID of the disk's change tracking (the GUID part of RCT ids).
    pub tracking_guid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub created: String,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<Nic>,
    /// VSSD InstanceID of the snapshot this VM's state descends from.
    pub parent_snapshot: Option<String>,
    /// Ids of the collections it belongs to.
    pub collections: Vec<String>,
    /// How it boots and its second serial port.
    #[serde(default)]
    pub run: crate::vm_boot::VmRunSettings,
    /// `running`, `paused` or `off`, when asked for ([`Host::vm_with_state`](crate::Host::vm_with_state)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl Vm {
    pub fn settings(&self) -> VmSettings {
        VmSettings {
            name: self.name.clone(),
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            nics: self.nics.clone(),
            base_disks: self
                .disks
                .iter()
                .map(|d| (d.base_path.clone(), d.base_format))
                .collect(),
            run: self.run.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Collection {
    pub id: String,
    pub name: String,
    /// 0 VM collection, 1 collection of collections.
    pub kind: u16,
    pub created: String,
    /// Member ids (VM ids or collection ids), in the order added.
    pub members: Vec<String>,
}

/// A frozen layer of one disk slot, as a snapshot or reference point keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRef {
    pub index: u32,
    pub path: PathBuf,
    pub format: Format,
    /// The disk's InstanceID (same as [`VmDisk::instance_id`]).
    pub disk_instance_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotVm {
    pub vm_id: String,
    /// InstanceID of the snapshot VSSD (`Microsoft:<GUID>`).
    pub vssd_id: String,
    /// InstanceID of the parent snapshot VSSD, if any.
    pub parent_vssd: Option<String>,
    pub settings: VmSettings,
    pub created: String,
    pub disks: Vec<LayerRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub collection_id: String,
    pub name: String,
    /// 1 Standard, 2 Recovery.
    pub snapshot_type: u16,
    pub created: String,
    pub created_ms: i64,
    pub vms: Vec<SnapshotVm>,
    /// For a snapshot of running VMs: from the first pause to the last resume, in µs.
    #[serde(default)]
    pub pause_window_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefPointDisk {
    pub index: u32,
    /// The change boundary: blocks changed since the RP = ranges above this layer.
    pub path: PathBuf,
    pub format: Format,
    pub disk_instance_id: String,
    /// `rctX:<guid with ':'>:<8 hex seq>`.
    pub rct_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefPointVm {
    pub vm_id: String,
    /// InstanceID of the Msvm_VirtualSystemReferencePoint.
    pub instance_id: String,
    pub settings: VmSettings,
    pub disks: Vec<RefPointDisk>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefPoint {
    pub id: String,
    pub collection_id: String,
    pub name: String,
    /// 2 = RCT based (the boundary layers play the role of RCT).
    pub rp_type: u16,
    /// 1 = Crash Consistent in Msvm_ReferencePointCollection's own numbering (docs/decisions.md,
    /// "Snapshot types and consistency numbering").
    pub consistency: u16,
    pub created: String,
    pub created_ms: i64,
    /// The snapshot collection it was converted from.
    pub from_snapshot: String,
    pub vms: Vec<RefPointVm>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub job_type: u16,
    pub name: String,
    pub description: String,
    pub state: u16,
    pub percent: u16,
    pub submitted_ms: i64,
    pub start_ms: Option<i64>,
    pub last_change_ms: i64,
    pub finished_ms: Option<i64>,
    pub error_code: u32,
    pub error_description: Option<String>,
    pub error_summary: Option<String>,
    pub cancellable: bool,
    pub delete_on_completion: bool,
    /// (class name, id) of what the job created (ElementEffects 5).
    pub affected: Vec<(String, String)>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        job_state::is_terminal(self.state)
    }
    pub fn succeeded(&self) -> bool {
        matches!(self.state, job_state::COMPLETED | 32768)
    }
    /// The first created element of a class, e.g. the new Msvm_SnapshotCollection's id.
    pub fn created(&self, class_name: &str) -> Option<&str> {
        self.affected
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(class_name))
            .map(|(_, id)| id.as_str())
    }
}

/// One disk file an export wrote (see [`crate::Host::record_export`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportedDisk {
    pub vm_id: String,
    pub disk_index: u32,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportRecord {
    pub id: String,
    /// The snapshot collection or reference point collection id that was exported.
    pub source_id: String,
    pub job_id: Option<String>,
    pub package_dir: PathBuf,
    pub created: String,
    pub disks: Vec<ExportedDisk>,
}
