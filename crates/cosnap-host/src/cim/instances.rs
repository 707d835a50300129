//! The host's objects as CIM instances: systems, settings and resource settings,
//! collections, snapshots, reference points, jobs and their errors, services.

use cosnap_cim::{CimType, Instance, Value};

use super::paths::*;
use super::run_settings::{SERIAL_PORTS, serial_port_instance, with_boot_properties};
use crate::host::Host;
use crate::model::*;
use crate::util::now_ms;
use cosnap_cim::datetime::{format_interval_ms, format_unix_ms};

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

impl Host {
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
    fn settings_instances(
        &self,
        vssd: &VssdFacts,
        settings: &VmSettings,
        disks: &[DiskSetting],
    ) -> (Instance, Vec<Instance>) {
        let vssd_instance = self.vssd_instance(vssd, settings);
        let rasd = ResourceIds(vssd.instance_id);

        let mut rasds = vec![
            rasd.processor(settings.cpus),
            rasd.memory(settings.memory_mb),
        ];
        rasds.extend(disks.iter().map(|d| rasd.disk(d)));
        for (i, nic) in settings.nics.iter().enumerate() {
            rasds.extend(rasd.nic(i, nic));
        }
        rasds.extend(SERIAL_PORTS.iter().map(|&port| {
            let socket = match port {
                1 => vssd.console.as_deref(),
                _ => settings.run.com2.as_deref(),
            };
            serial_port_instance(vssd.instance_id, port, socket)
        }));
        (vssd_instance, rasds)
    }

    /// The Msvm_VirtualSystemSettingData itself.
    fn vssd_instance(&self, vssd: &VssdFacts, settings: &VmSettings) -> Instance {
        let parent_text = vssd.parent.map(|p| self.path_text(&vssd_path(p)));
        let instance = Instance::new("Msvm_VirtualSystemSettingData")
            .with("InstanceID", CimType::String, s(vssd.instance_id))
            .with(
                "Caption",
                CimType::String,
                s(if vssd.system_type == VST_REALIZED {
                    "Virtual Machine Settings"
                } else {
                    "Snapshot"
                }),
            )
            .with("ElementName", CimType::String, s(&settings.name))
            .with("VirtualSystemIdentifier", CimType::String, s(vssd.vm_id))
            .with("VirtualSystemType", CimType::String, s(vssd.system_type))
            .with(
                "VirtualSystemSubType",
                CimType::String,
                s("Microsoft:Hyper-V:SubType:2"),
            )
            .with("Version", CimType::String, s("9.0"))
            .with("ConfigurationID", CimType::String, s(vssd.vm_id))
            .with(
                "CreationTime",
                CimType::Datetime,
                vssd.created.clone().map(Value::Datetime),
            )
            .with("Parent", CimType::String, parent_text.map(Value::String))
            .with("IsSaved", CimType::Boolean, Some(Value::Boolean(false)))
            .with(
                "IncrementalBackupEnabled",
                CimType::Boolean,
                Some(Value::Boolean(true)),
            )
            .with_path(vssd_path(vssd.instance_id));
        with_boot_properties(instance, &settings.run.boot)
    }

    /// A VM's current settings (VSSD + resource settings; disks at their active layers).
    pub fn vm_instances(&self, vm: &Vm) -> (Instance, Vec<Instance>) {
        let disks: Vec<_> = vm
            .disks
            .iter()
            .map(|d| DiskSetting {
                index: d.index,
                path: d.path.clone(),
                format: d.format,
                tracking_guid: d.tracking_guid.clone(),
            })
            .collect();
        let iid = vm_vssd_id(&vm.id);
        let mut facts = vm_facts(vm, &iid);
        facts.console = self
            .running_vm(&vm.id)
            .map(|handle| self.hypervisor().console_socket(&handle));
        self.settings_instances(&facts, &vm.settings(), &disks)
    }

    /// A VM's current VSSD alone (an enumeration of VSSDs need not build the resource
    /// settings).
    pub fn vm_vssd_instance(&self, vm: &Vm) -> Instance {
        let iid = vm_vssd_id(&vm.id);
        self.vssd_instance(&vm_facts(vm, &iid), &vm.settings())
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
            .map(|d| DiskSetting {
                index: d.index,
                path: d.path.clone(),
                format: d.format,
                tracking_guid: guids.get(d.index as usize).cloned().unwrap_or_default(),
            })
            .collect();
        self.settings_instances(&snapshot_facts(snap, vm), &vm.settings, &disks)
    }

    /// A snapshot's per-VM VSSD alone: no resource settings, so the VM's disks (their
    /// tracking GUIDs) are not loaded.
    pub fn snapshot_vssd_instance(&self, snap: &Snapshot, vm: &SnapshotVm) -> Instance {
        self.vssd_instance(&snapshot_facts(snap, vm), &vm.settings)
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

fn vm_facts<'a>(vm: &'a Vm, instance_id: &'a str) -> VssdFacts<'a> {
    VssdFacts {
        instance_id,
        vm_id: &vm.id,
        system_type: VST_REALIZED,
        created: None,
        parent: vm.parent_snapshot.as_deref(),
        console: None,
    }
}

fn snapshot_facts<'a>(snap: &Snapshot, vm: &'a SnapshotVm) -> VssdFacts<'a> {
    let system_type = if snap.snapshot_type == SNAPSHOT_RECOVERY {
        VST_SNAPSHOT_RECOVERY
    } else {
        VST_SNAPSHOT_REALIZED
    };
    VssdFacts {
        instance_id: &vm.vssd_id,
        vm_id: &vm.vm_id,
        system_type,
        created: Some(format_unix_ms(snap.created_ms)),
        parent: vm.parent_vssd.as_deref(),
        console: None,
    }
}

/// What a VSSD says about its system beyond the settings themselves.
struct VssdFacts<'a> {
    instance_id: &'a str,
    vm_id: &'a str,
    /// `Microsoft:Hyper-V:System:Realized` or a snapshot type.
    system_type: &'a str,
    /// CIM datetime of a snapshot's creation.
    created: Option<String>,
    /// The parent snapshot's VSSD InstanceID.
    parent: Option<&'a str>,
    /// The socket of COM 1 (cosnap's console) while the VM runs; a snapshot has none (nor
    /// a VSSD built alone: only the serial port's resource setting shows it).
    console: Option<std::path::PathBuf>,
}

/// A disk as its Msvm_StorageAllocationSettingData shows it.
struct DiskSetting {
    index: u32,
    /// The layer the settings point at (active, or frozen for a snapshot).
    path: std::path::PathBuf,
    format: cosnap_disk::Format,
    /// The disk's tracking GUID (part of the InstanceID).
    tracking_guid: String,
}

/// Builds the resource settings of one VSSD: InstanceID = `<VSSD InstanceID>\<suffix>`.
struct ResourceIds<'a>(&'a str);

impl ResourceIds<'_> {
    fn instance(&self, class: &str, suffix: &str) -> Instance {
        let id = format!("{}\\{suffix}", self.0);
        Instance::new(class)
            .with("InstanceID", CimType::String, s(&id))
            .with_path(key(class, "InstanceID", &id))
    }

    fn processor(&self, cpus: u32) -> Instance {
        self.instance("Msvm_ProcessorSettingData", "Processor")
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
                Some(Value::Uint64(cpus.into())),
            )
            .with("AllocationUnits", CimType::String, s("count"))
    }

    fn memory(&self, memory_mb: u64) -> Instance {
        self.instance("Msvm_MemorySettingData", "Memory")
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
                Some(Value::Uint64(memory_mb)),
            )
            .with("AllocationUnits", CimType::String, s("byte * 2^20"))
    }

    fn disk(&self, d: &DiskSetting) -> Instance {
        let idx = d.index;
        self.instance(
            "Msvm_StorageAllocationSettingData",
            &format!("{}\\0\\{idx}\\D", d.tracking_guid),
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
            strs(&[d.path.to_string_lossy().into_owned()]),
        )
        .with("Address", CimType::String, s(&idx.to_string()))
        .with("AddressOnParent", CimType::String, s(&idx.to_string()))
        .with("ImageFormat", CimType::String, s(d.format.name()))
    }

    /// The NIC's port settings and, when it is connected, its Ethernet connection.
    fn nic(&self, i: usize, nic: &Nic) -> Vec<Instance> {
        let port = self
            .instance(
                "Msvm_SyntheticEthernetPortSettingData",
                &format!("Nic\\{i}"),
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
            );
        let Some(switch) = &nic.switch_name else {
            return vec![port];
        };

        let connection = self
            .instance(
                "Msvm_EthernetPortAllocationSettingData",
                &format!("Nic\\{i}\\Connection"),
            )
            .with("ElementName", CimType::String, s("Ethernet Connection"))
            .with("ResourceType", CimType::Uint16, u16v(33))
            .with(
                "ResourceSubType",
                CimType::String,
                s("Microsoft:Hyper-V:Ethernet Connection"),
            )
            .with(
                "Parent",
                CimType::String,
                s(&format!("{}\\Nic\\{i}", self.0)),
            )
            .with("SwitchName", CimType::String, s(switch));
        vec![port, connection]
    }
}
