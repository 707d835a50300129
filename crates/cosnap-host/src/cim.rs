//! The host's objects as CIM instances with Hyper-V's keys, and object paths back to
//! objects ([`Host::resolve_path`]).
//!
//! Key shapes: Msvm_ComputerSystem {CreationClassName, Name = VM GUID};
//! Msvm_VirtualSystemSettingData {InstanceID = `Microsoft:<VM GUID>` for a VM's current
//! settings, `Microsoft:<GUID>` for a snapshot}; resource settings {InstanceID =
//! `<VSSD InstanceID>\<suffix>`}; collections {CollectionID}; Msvm_ReferencePointCollection
//! {CollectionID, VirtualSystemCollectionId}; Msvm_VirtualSystemReferencePoint {InstanceID,
//! VirtualSystemIdentifier}; Msvm_ConcreteJob {InstanceID}; services {CreationClassName,
//! Name, SystemCreationClassName = "Msvm_ComputerSystem", SystemName = host name}.

use cosnap_cim::{CimType, Instance, ObjectPath, Value};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::model::*;
use crate::util::{norm_id, now_ms, wmi_path_text};
use cosnap_cim::datetime::{format_interval_ms, format_unix_ms};

pub const SERVICES: &[(&str, &str)] = &[
    ("Msvm_VirtualSystemManagementService", "vmms"),
    (
        "Msvm_CollectionManagementService",
        "CollectionManagementService",
    ),
    (
        "Msvm_CollectionSnapshotService",
        "CollectionSnapshotService",
    ),
    (
        "Msvm_CollectionReferencePointService",
        "CollectionReferencePointService",
    ),
];

/// What an object path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Vm(String),
    /// A VM's current settings (VSSD `Microsoft:<vm>`).
    VmSettings(String),
    /// A snapshot's per-VM settings: (snapshot collection id, VM id).
    SnapshotSettings(String, String),
    /// A VM collection (kind 0) or collection of collections (kind 1).
    Collection(String, u16),
    SnapshotCollection(String),
    RefPointCollection(String),
    /// (reference point collection id, VM id).
    RefPoint(String, String),
    Job(String),
    Service(String),
}

fn s(v: &str) -> Option<Value> {
    Some(Value::String(v.to_string()))
}
fn u16v(v: u16) -> Option<Value> {
    Some(Value::Uint16(v))
}
fn strs(v: &[String]) -> Option<Value> {
    Some(Value::Array(
        v.iter().map(|x| Value::String(x.clone())).collect(),
    ))
}
fn key(class: &str, name: &str, value: &str) -> ObjectPath {
    ObjectPath::new(class).with_key(name, Value::String(value.to_string()))
}

pub fn vm_path(id: &str) -> ObjectPath {
    ObjectPath::new("Msvm_ComputerSystem")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_ComputerSystem".into()),
        )
        .with_key("Name", Value::String(id.to_string()))
}
pub fn vssd_path(instance_id: &str) -> ObjectPath {
    key("Msvm_VirtualSystemSettingData", "InstanceID", instance_id)
}
pub fn vm_vssd_id(vm_id: &str) -> String {
    format!("Microsoft:{vm_id}")
}
pub fn collection_path(id: &str, kind: u16) -> ObjectPath {
    let class = if kind == COLLECTION_OF_VMS {
        "Msvm_VirtualSystemCollection"
    } else {
        "Msvm_ManagementCollection"
    };
    key(class, "CollectionID", id)
}
pub fn snapshot_collection_path(id: &str) -> ObjectPath {
    key("Msvm_SnapshotCollection", "CollectionID", id)
}
pub fn refpoint_collection_path(id: &str, vs_collection: &str) -> ObjectPath {
    key("Msvm_ReferencePointCollection", "CollectionID", id).with_key(
        "VirtualSystemCollectionId",
        Value::String(vs_collection.to_string()),
    )
}
pub fn refpoint_path(instance_id: &str, vm_id: &str) -> ObjectPath {
    key(
        "Msvm_VirtualSystemReferencePoint",
        "InstanceID",
        instance_id,
    )
    .with_key("VirtualSystemIdentifier", Value::String(vm_id.to_string()))
}
pub fn job_path(id: &str) -> ObjectPath {
    key("Msvm_ConcreteJob", "InstanceID", id)
}

impl Host {
    pub fn service_path(&self, class: &str) -> ObjectPath {
        let name = SERVICES
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(class))
            .map(|(_, n)| *n)
            .unwrap_or("");
        let class = SERVICES
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(class))
            .map(|(c, _)| *c)
            .unwrap_or(class);
        ObjectPath::new(class)
            .with_key(
                "SystemCreationClassName",
                Value::String("Msvm_ComputerSystem".into()),
            )
            .with_key("SystemName", Value::String(self.host_name().to_string()))
            .with_key("CreationClassName", Value::String(class.to_string()))
            .with_key("Name", Value::String(name.to_string()))
    }

    /// WMI path text of a path on this host (`\\HOST\root\virtualization\v2:Class.Key="v"`).
    pub fn path_text(&self, path: &ObjectPath) -> String {
        wmi_path_text(self.host_name(), path)
    }

    /// Which object a path names. Wrong class or missing keys → invalid parameter;
    /// well-formed but absent → not found.
    pub fn resolve_path(&self, path: &ObjectPath) -> Result<Resolved> {
        let class = path.class_name.as_str();
        let need = |k: &str| -> Result<String> {
            path.key_str(k).map(str::to_string).ok_or_else(|| {
                HostError::invalid(format!("object path of {class} lacks its key {k}"))
            })
        };
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if eq(class, "Msvm_ComputerSystem") {
            let id = need("Name")?;
            return Ok(Resolved::Vm(
                self.vm(&norm_id(&id))
                    .map_err(|_| HostError::not_found(format!("no VM named {id}")))?
                    .id,
            ));
        }
        if eq(class, "Msvm_VirtualSystemSettingData") {
            let iid = need("InstanceID")?;
            let tail = iid.strip_prefix("Microsoft:").unwrap_or(&iid);
            if let Ok(vm) = self.vm(&norm_id(tail)) {
                return Ok(Resolved::VmSettings(vm.id));
            }
            let snap = self.snapshot_of_vssd(&iid)?;
            let vm = snap
                .vms
                .iter()
                .find(|v| v.vssd_id.eq_ignore_ascii_case(&iid))
                .map(|v| v.vm_id.clone())
                .unwrap_or_default();
            return Ok(Resolved::SnapshotSettings(snap.id, vm));
        }
        if eq(class, "Msvm_VirtualSystemCollection")
            || eq(class, "Msvm_ManagementCollection")
            || eq(class, "CIM_CollectionOfMSEs")
        {
            let id = need("CollectionID")?;
            let c = self
                .collection(&norm_id(&id))
                .map_err(|_| HostError::not_found(format!("no collection {id}")))?;
            let want = if eq(class, "Msvm_VirtualSystemCollection") {
                Some(COLLECTION_OF_VMS)
            } else if eq(class, "Msvm_ManagementCollection") {
                Some(COLLECTION_OF_COLLECTIONS)
            } else {
                None
            };
            if want.is_some_and(|k| k != c.kind) {
                return Err(HostError::not_found(format!(
                    "collection {id} is not a {class}"
                )));
            }
            return Ok(Resolved::Collection(c.id, c.kind));
        }
        if eq(class, "Msvm_SnapshotCollection") {
            let id = need("CollectionID")?;
            return Ok(Resolved::SnapshotCollection(self.snapshot(&id)?.id));
        }
        if eq(class, "Msvm_ReferencePointCollection") {
            let id = need("CollectionID")?;
            let rp = self.refpoint(&id)?;
            if let Some(vsc) = path.key_str("VirtualSystemCollectionId")
                && norm_id(vsc) != rp.collection_id
            {
                return Err(HostError::not_found(format!(
                    "reference point collection {id} does not belong to collection {vsc}"
                )));
            }
            return Ok(Resolved::RefPointCollection(rp.id));
        }
        if eq(class, "CIM_Collection") {
            let id = need("CollectionID")?;
            if let Ok(s) = self.snapshot(&id) {
                return Ok(Resolved::SnapshotCollection(s.id));
            }
            if let Ok(r) = self.refpoint(&id) {
                return Ok(Resolved::RefPointCollection(r.id));
            }
            return Err(HostError::not_found(format!(
                "no snapshot or reference point collection {id}"
            )));
        }
        if eq(class, "Msvm_VirtualSystemReferencePoint") {
            let iid = need("InstanceID")?;
            for rp in self.refpoints(None)? {
                if let Some(v) = rp
                    .vms
                    .iter()
                    .find(|v| v.instance_id.eq_ignore_ascii_case(&iid))
                {
                    return Ok(Resolved::RefPoint(rp.id.clone(), v.vm_id.clone()));
                }
            }
            return Err(HostError::not_found(format!("no reference point {iid}")));
        }
        if eq(class, "Msvm_ConcreteJob") || eq(class, "CIM_ConcreteJob") {
            let id = need("InstanceID")?;
            return Ok(Resolved::Job(self.job(&id)?.id));
        }
        if let Some((c, _)) = SERVICES.iter().find(|(c, _)| eq(c, class)) {
            return Ok(Resolved::Service(c.to_string()));
        }
        Err(HostError::invalid(format!(
            "{class} is not a class whose instances cosnap serves here"
        )))
    }

    pub fn vm_instance(&self, vm: &Vm) -> Instance {
        Instance::new("Msvm_ComputerSystem")
            .with("Caption", CimType::String, s("Virtual Machine"))
            .with(
                "CreationClassName",
                CimType::String,
                s("Msvm_ComputerSystem"),
            )
            .with(
                "Description",
                CimType::String,
                s("Microsoft Virtual Machine"),
            )
            .with("ElementName", CimType::String, s(&vm.name))
            .with(
                "EnabledState",
                CimType::Uint16,
                u16v(self.enabled_state(&vm.id)),
            )
            .with("HealthState", CimType::Uint16, u16v(5))
            .with("Name", CimType::String, s(&vm.id))
            .with("NumberOfNumaNodes", CimType::Uint16, u16v(1))
            .with(
                "OperationalStatus",
                CimType::Uint16,
                Some(Value::Array(vec![Value::Uint16(2)])),
            )
            .with_path(vm_path(&vm.id))
    }

    /// A VSSD (current settings of a VM, or a snapshot's) and its resource settings.
    #[allow(clippy::too_many_arguments)]
    fn settings_instances(
        &self,
        instance_id: &str,
        vm_id: &str,
        settings: &VmSettings,
        system_type: &str,
        created: Option<String>,
        parent: Option<&str>,
        disks: &[(u32, std::path::PathBuf, cosnap_disk::Format, String)],
    ) -> (Instance, Vec<Instance>) {
        let parent_text = parent.map(|p| self.path_text(&vssd_path(p)));
        let vssd = Instance::new("Msvm_VirtualSystemSettingData")
            .with("InstanceID", CimType::String, s(instance_id))
            .with(
                "Caption",
                CimType::String,
                s(if system_type == VST_REALIZED {
                    "Virtual Machine Settings"
                } else {
                    "Snapshot"
                }),
            )
            .with("ElementName", CimType::String, s(&settings.name))
            .with("VirtualSystemIdentifier", CimType::String, s(vm_id))
            .with("VirtualSystemType", CimType::String, s(system_type))
            .with(
                "VirtualSystemSubType",
                CimType::String,
                s("Microsoft:Hyper-V:SubType:2"),
            )
            .with("Version", CimType::String, s("9.0"))
            .with("ConfigurationID", CimType::String, s(vm_id))
            .with(
                "CreationTime",
                CimType::Datetime,
                created.map(Value::Datetime),
            )
            .with("Parent", CimType::String, parent_text.map(Value::String))
            .with("IsSaved", CimType::Boolean, Some(Value::Boolean(false)))
            .with(
                "IncrementalBackupEnabled",
                CimType::Boolean,
                Some(Value::Boolean(true)),
            )
            .with_path(vssd_path(instance_id));
        let mut rasds = Vec::new();
        let rid = |suffix: &str| format!("{instance_id}\\{suffix}");
        let mk = |class: &str, id: String| {
            Instance::new(class)
                .with("InstanceID", CimType::String, s(&id))
                .with_path(key(class, "InstanceID", &id))
        };
        rasds.push(
            mk("Msvm_ProcessorSettingData", rid("Processor"))
                .with("ElementName", CimType::String, s("Processor"))
                .with("ResourceType", CimType::Uint16, u16v(3))
                .with(
                    "ResourceSubType",
                    CimType::String,
                    s("Microsoft:Hyper-V:Processor"),
                )
                .with(
                    "VirtualQuantity",
                    CimType::Uint64,
                    Some(Value::Uint64(settings.cpus.into())),
                )
                .with("AllocationUnits", CimType::String, s("count")),
        );
        rasds.push(
            mk("Msvm_MemorySettingData", rid("Memory"))
                .with("ElementName", CimType::String, s("Memory"))
                .with("ResourceType", CimType::Uint16, u16v(4))
                .with(
                    "ResourceSubType",
                    CimType::String,
                    s("Microsoft:Hyper-V:Memory"),
                )
                .with(
                    "VirtualQuantity",
                    CimType::Uint64,
                    Some(Value::Uint64(settings.memory_mb)),
                )
                .with("AllocationUnits", CimType::String, s("byte * 2^20")),
        );
        for (idx, path, format, guid) in disks {
            rasds.push(
                mk(
                    "Msvm_StorageAllocationSettingData",
                    rid(&format!("{guid}\\0\\{idx}\\D")),
                )
                .with(
                    "ElementName",
                    CimType::String,
                    s(&format!("Hard Disk Image {idx}")),
                )
                .with("ResourceType", CimType::Uint16, u16v(31))
                .with(
                    "ResourceSubType",
                    CimType::String,
                    s("Microsoft:Hyper-V:Virtual Hard Disk"),
                )
                .with(
                    "HostResource",
                    CimType::String,
                    strs(&[path.to_string_lossy().into_owned()]),
                )
                .with("Address", CimType::String, s(&idx.to_string()))
                .with("AddressOnParent", CimType::String, s(&idx.to_string()))
                .with("ImageFormat", CimType::String, s(format.name())),
            );
        }
        for (i, nic) in settings.nics.iter().enumerate() {
            rasds.push(
                mk(
                    "Msvm_SyntheticEthernetPortSettingData",
                    rid(&format!("Nic\\{i}")),
                )
                .with("ElementName", CimType::String, s("Network Adapter"))
                .with("ResourceType", CimType::Uint16, u16v(10))
                .with(
                    "ResourceSubType",
                    CimType::String,
                    s("Microsoft:Hyper-V:Synthetic Ethernet Port"),
                )
                .with("Address", CimType::String, s(&nic.mac))
                .with(
                    "StaticMacAddress",
                    CimType::Boolean,
                    Some(Value::Boolean(true)),
                ),
            );
            if let Some(switch) = &nic.switch_name {
                rasds.push(
                    mk(
                        "Msvm_EthernetPortAllocationSettingData",
                        rid(&format!("Nic\\{i}\\Connection")),
                    )
                    .with("ElementName", CimType::String, s("Ethernet Connection"))
                    .with("ResourceType", CimType::Uint16, u16v(33))
                    .with(
                        "ResourceSubType",
                        CimType::String,
                        s("Microsoft:Hyper-V:Ethernet Connection"),
                    )
                    .with("Parent", CimType::String, s(&rid(&format!("Nic\\{i}"))))
                    .with("SwitchName", CimType::String, s(switch)),
                );
            }
        }
        (vssd, rasds)
    }

    /// A VM's current settings (VSSD + resource settings; disks at their active layers).
    pub fn vm_instances(&self, vm: &Vm) -> (Instance, Vec<Instance>) {
        let disks: Vec<_> = vm
            .disks
            .iter()
            .map(|d| (d.index, d.path.clone(), d.format, d.tracking_guid.clone()))
            .collect();
        self.settings_instances(
            &vm_vssd_id(&vm.id),
            &vm.id,
            &vm.settings(),
            VST_REALIZED,
            None,
            vm.parent_snapshot.as_deref(),
            &disks,
        )
    }

    /// A snapshot's per-VM settings (VSSD with VirtualSystemType Snapshot:Realized or
    /// Snapshot:Recovery, Parent, CreationTime) and resource settings (disks at the frozen
    /// layers).
    pub fn snapshot_vm_instances(
        &self,
        snap: &Snapshot,
        vm: &SnapshotVm,
    ) -> (Instance, Vec<Instance>) {
        let guids: Vec<String> = self
            .vm(&vm.vm_id)
            .map(|v| v.disks.iter().map(|d| d.tracking_guid.clone()).collect())
            .unwrap_or_default();
        let disks: Vec<_> = vm
            .disks
            .iter()
            .map(|d| {
                (
                    d.index,
                    d.path.clone(),
                    d.format,
                    guids.get(d.index as usize).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let ty = if snap.snapshot_type == SNAPSHOT_RECOVERY {
            VST_SNAPSHOT_RECOVERY
        } else {
            VST_SNAPSHOT_REALIZED
        };
        self.settings_instances(
            &vm.vssd_id,
            &vm.vm_id,
            &vm.settings,
            ty,
            Some(format_unix_ms(snap.created_ms)),
            vm.parent_vssd.as_deref(),
            &disks,
        )
    }

    pub fn collection_instance(&self, c: &Collection) -> Instance {
        let class = if c.kind == COLLECTION_OF_VMS {
            "Msvm_VirtualSystemCollection"
        } else {
            "Msvm_ManagementCollection"
        };
        Instance::new(class)
            .with("CollectionID", CimType::String, s(&c.id))
            .with("ElementName", CimType::String, s(&c.name))
            .with(
                "Caption",
                CimType::String,
                s(if c.kind == 0 {
                    "Virtual System Collection"
                } else {
                    "Management Collection"
                }),
            )
            .with_path(collection_path(&c.id, c.kind))
    }

    pub fn snapshot_collection_instance(&self, snap: &Snapshot) -> Instance {
        Instance::new("Msvm_SnapshotCollection")
            .with("CollectionID", CimType::String, s(&snap.id))
            .with("ElementName", CimType::String, s(&snap.name))
            .with_path(snapshot_collection_path(&snap.id))
    }

    pub fn refpoint_collection_instance(&self, rp: &RefPoint) -> Instance {
        Instance::new("Msvm_ReferencePointCollection")
            .with("CollectionID", CimType::String, s(&rp.id))
            .with(
                "VirtualSystemCollectionId",
                CimType::String,
                s(&rp.collection_id),
            )
            .with("ElementName", CimType::String, s(&rp.name))
            .with("ReferencePointType", CimType::Uint16, u16v(rp.rp_type))
            .with("ConsistencyLevel", CimType::Uint16, u16v(rp.consistency))
            .with(
                "HasAssociatedLog",
                CimType::Boolean,
                Some(Value::Boolean(false)),
            )
            .with_path(refpoint_collection_path(&rp.id, &rp.collection_id))
    }

    /// Msvm_VirtualSystemReferencePoint. ConsistencyLevel 2 = Crash Consistent in this
    /// class's numbering (the reverse of the collection's; docs/decisions.md,
    /// "Snapshot types and consistency numbering").
    pub fn refpoint_instance(&self, rp: &RefPoint, v: &RefPointVm) -> Instance {
        Instance::new("Msvm_VirtualSystemReferencePoint")
            .with("InstanceID", CimType::String, s(&v.instance_id))
            .with("VirtualSystemIdentifier", CimType::String, s(&v.vm_id))
            .with(
                "ElementName",
                CimType::String,
                s(&format!("{} - {}", v.settings.name, rp.name)),
            )
            .with("ReferencePointType", CimType::Uint16, u16v(rp.rp_type))
            .with("ConsistencyLevel", CimType::Uint16, u16v(2))
            .with(
                "HasAssociatedData",
                CimType::Boolean,
                Some(Value::Boolean(false)),
            )
            .with(
                "VirtualDiskIdentifiers",
                CimType::String,
                strs(
                    &v.disks
                        .iter()
                        .map(|d| d.disk_instance_id.clone())
                        .collect::<Vec<_>>(),
                ),
            )
            .with(
                "ResilientChangeTrackingIdentifiers",
                CimType::String,
                strs(&v.disks.iter().map(|d| d.rct_id.clone()).collect::<Vec<_>>()),
            )
            .with_path(refpoint_path(&v.instance_id, &v.vm_id))
    }

    pub fn job_instance(&self, job: &Job) -> Instance {
        let now = now_ms();
        let elapsed = job
            .start_ms
            .map(|st| job.finished_ms.unwrap_or(now) - st)
            .unwrap_or(0);
        let ts = |ms: Option<i64>| ms.map(|m| Value::Datetime(format_unix_ms(m)));
        let (op_status, status_desc) = match job.state {
            job_state::EXCEPTION => (6u16, "Error"),
            job_state::TERMINATED | job_state::KILLED => (10u16, "Stopped"),
            _ => (2u16, "OK"),
        };
        Instance::new("Msvm_ConcreteJob")
            .with("InstanceID", CimType::String, s(&job.id))
            .with("Name", CimType::String, s(&job.name))
            .with("Caption", CimType::String, s(&job.name))
            .with("Description", CimType::String, s(&job.description))
            .with("ElementName", CimType::String, s(&job.name))
            .with("JobType", CimType::Uint16, u16v(job.job_type))
            .with("JobState", CimType::Uint16, u16v(job.state))
            .with("JobStatus", CimType::String, s(job_status_text(job.state)))
            .with("PercentComplete", CimType::Uint16, u16v(job.percent))
            .with(
                "TimeSubmitted",
                CimType::Datetime,
                ts(Some(job.submitted_ms)),
            )
            .with(
                "ScheduledStartTime",
                CimType::Datetime,
                ts(Some(job.submitted_ms)),
            )
            .with("StartTime", CimType::Datetime, ts(job.start_ms))
            .with(
                "TimeOfLastStateChange",
                CimType::Datetime,
                ts(Some(job.last_change_ms)),
            )
            .with(
                "ElapsedTime",
                CimType::Datetime,
                Some(Value::Datetime(format_interval_ms(elapsed))),
            )
            .with(
                "TimeBeforeRemoval",
                CimType::Datetime,
                Some(Value::Datetime(format_interval_ms(
                    crate::jobs::KEEP_FINISHED_MS,
                ))),
            )
            .with(
                "DeleteOnCompletion",
                CimType::Boolean,
                Some(Value::Boolean(job.delete_on_completion)),
            )
            .with(
                "Cancellable",
                CimType::Boolean,
                Some(Value::Boolean(job.cancellable)),
            )
            .with(
                "ErrorCode",
                CimType::Uint16,
                u16v(job.error_code.min(u16::MAX as u32) as u16),
            )
            .with(
                "ErrorDescription",
                CimType::String,
                job.error_description.clone().map(Value::String),
            )
            .with(
                "ErrorSummaryDescription",
                CimType::String,
                job.error_summary.clone().map(Value::String),
            )
            .with(
                "OperationalStatus",
                CimType::Uint16,
                Some(Value::Array(vec![Value::Uint16(op_status)])),
            )
            .with(
                "StatusDescriptions",
                CimType::String,
                strs(&[status_desc.to_string()]),
            )
            .with("HealthState", CimType::Uint16, u16v(5))
            .with("Priority", CimType::Uint32, Some(Value::Uint32(0)))
            .with("RecoveryAction", CimType::Uint16, u16v(2))
            .with("LocalOrUtcTime", CimType::Uint16, u16v(2))
            .with_path(job_path(&job.id))
    }

    /// The embedded Msvm_Error of a failed job (GetError), `None` when the job did not fail.
    pub fn job_error_instance(&self, job: &Job) -> Option<Instance> {
        if job.state != job_state::EXCEPTION
            && job.state != job_state::TERMINATED
            && job.state != job_state::KILLED
        {
            return None;
        }
        let message = job
            .error_description
            .clone()
            .unwrap_or_else(|| "the job failed".into());
        let (cim_status, cim_desc) = if job.state == job_state::EXCEPTION {
            (1u32, "CIM_ERR_FAILED")
        } else {
            (1u32, "CIM_ERR_FAILED: cancelled")
        };
        Some(
            Instance::new("Msvm_Error")
                .with("ErrorType", CimType::Uint16, u16v(4))
                .with("OwningEntity", CimType::String, s("cosnap"))
                .with(
                    "MessageID",
                    CimType::String,
                    s(&format!("COSNAP{}", job.error_code)),
                )
                .with("Message", CimType::String, s(&message))
                .with("MessageArguments", CimType::String, strs(&[]))
                .with(
                    "PerceivedSeverity",
                    CimType::Uint16,
                    u16v(if job.state == job_state::EXCEPTION {
                        4
                    } else {
                        2
                    }),
                )
                .with("ProbableCause", CimType::Uint16, u16v(47))
                .with(
                    "ProbableCauseDescription",
                    CimType::String,
                    s("Software Error"),
                )
                .with(
                    "ErrorSource",
                    CimType::String,
                    s(&self.path_text(&job_path(&job.id))),
                )
                .with("ErrorSourceFormat", CimType::Uint16, u16v(0))
                .with(
                    "CIMStatusCode",
                    CimType::Uint32,
                    Some(Value::Uint32(cim_status)),
                )
                .with("CIMStatusCodeDescription", CimType::String, s(cim_desc)),
        )
    }

    pub fn service_instance(&self, class: &str) -> Instance {
        let path = self.service_path(class);
        let mut inst = Instance::new(path.class_name.clone());
        for (k, v) in &path.keys {
            inst.set(k, CimType::String, Some(v.clone()));
        }
        inst.with("ElementName", CimType::String, s(&path.class_name))
            .with("Caption", CimType::String, s(&path.class_name))
            .with("EnabledState", CimType::Uint16, u16v(2))
            .with("RequestedState", CimType::Uint16, u16v(12))
            .with("HealthState", CimType::Uint16, u16v(5))
            .with("Started", CimType::Boolean, Some(Value::Boolean(true)))
            .with(
                "OperationalStatus",
                CimType::Uint16,
                Some(Value::Array(vec![Value::Uint16(2)])),
            )
            .with_path(path)
    }
}

fn job_status_text(state: u16) -> &'static str {
    match state {
        job_state::NEW => "Job is new",
        job_state::STARTING => "Job is starting",
        job_state::RUNNING => "Job is running",
        job_state::COMPLETED => "Job completed successfully",
        job_state::TERMINATED => "Job was terminated",
        job_state::KILLED => "Job was killed",
        job_state::EXCEPTION => "Job failed",
        _ => "Unknown",
    }
}
