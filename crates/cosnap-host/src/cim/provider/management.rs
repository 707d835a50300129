//! Msvm_CollectionManagementService and Msvm_VirtualSystemManagementService methods
//! (Msvm-style return codes).

use cosnap_cim::{Instance, MethodOutcome, ObjectPath, Value};

use super::classes::is_a;
use super::params::*;
use crate::cim::run_settings::{
    SERIAL_PORT_CLASS, SETTABLE_PORT, requested_boot, requested_serial_port,
};
use crate::cim::*;
use crate::error::{HostError, msvm};
use crate::host::Host;
use crate::model::*;

impl Host {
    pub(super) fn member_id(&self, p: &ObjectPath) -> Result<String, HostError> {
        match self.resolve_path(p)? {
            crate::Resolved::Vm(id) | crate::Resolved::Collection(id, _) => Ok(id),
            _ => Err(HostError::invalid(format!(
                "{} cannot be a collection member",
                p.class_name
            ))),
        }
    }

    pub(super) fn collection_of(
        &self,
        params: &[(String, Value)],
        name: &str,
    ) -> Result<String, HostError> {
        let p = ref_param(params, name)?;
        match self.resolve_path(&p)? {
            crate::Resolved::Collection(id, _) => Ok(id),
            _ => Err(HostError::invalid(format!(
                "{name} must name a Msvm_VirtualSystemCollection or Msvm_ManagementCollection"
            ))),
        }
    }

    pub(super) fn collection_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "definecollection" => {
                let name = string_param(params, "Name")?
                    .ok_or_else(|| HostError::invalid("Name is required"))?;
                let id = string_param(params, "Id")?;
                let kind = uint_param(params, "Type")?.unwrap_or(0);
                let kind = u16::try_from(kind)
                    .map_err(|_| HostError::invalid(format!("Type {kind} is out of range")))?;
                let c = self.define_collection(&name, id.as_deref(), kind)?;
                Ok(MethodOutcome {
                    return_value: msvm::COMPLETED,
                    out_params: vec![(
                        "DefinedCollection".into(),
                        Value::Reference(collection_path(&c.id, c.kind)),
                    )],
                })
            }
            "destroycollection" => {
                let id = self.collection_of(params, "Collection")?;
                self.destroy_collection(&id)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "renamecollection" => {
                let id = self.collection_of(params, "Collection")?;
                let name = string_param(params, "NewName")?
                    .ok_or_else(|| HostError::invalid("NewName is required"))?;
                self.rename_collection(&id, &name)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "addmember" | "removemember" => {
                let member = self.member_id(&ref_param(params, "Member")?)?;
                let id = self.collection_of(params, "Collection")?;
                if m == "addmember" {
                    self.add_member(&id, &member)?;
                } else {
                    self.remove_member(&id, &member)?;
                }
                Ok(outcome(msvm::COMPLETED))
            }
            "removememberbyid" => {
                let member = self.member_id(&ref_param(params, "Member")?)?;
                let cid = string_param(params, "CollectionId")?
                    .ok_or_else(|| HostError::invalid("CollectionId is required"))?;
                self.remove_member_by_id(&member, &cid)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "startservice" | "stopservice" => Ok(outcome(msvm::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }

    pub(super) fn system_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "definesystem" => self.define_system(params),
            "modifysystemsettings" => self.modify_system_settings(params),
            "modifyresourcesettings" => self.modify_resource_settings(params),
            "destroysystem" => {
                let p = ref_param(params, "AffectedSystem")?;
                match self.resolve_path(&p)? {
                    crate::Resolved::Vm(id) => {
                        self.destroy_vm(&id)?;
                        Ok(outcome(msvm::COMPLETED))
                    }
                    _ => Err(HostError::invalid(
                        "AffectedSystem must name a Msvm_ComputerSystem",
                    )),
                }
            }
            "startservice" | "stopservice" => Ok(outcome(msvm::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }

    /// DefineSystem: a VM from the embedded VSSD (its name and boot) and resource settings
    /// (COM ports among them); run settings refused after the VM is made undo it.
    fn define_system(&self, params: &[(String, Value)]) -> Result<MethodOutcome, HostError> {
        let vssd = embedded_param(params, "SystemSettings")?;
        let mut spec = VmSpec {
            id: None,
            name: String::new(),
            cpus: 1,
            memory_mb: 1024,
            disks: vec![],
            nics: vec![],
        };
        let mut run = crate::vm_boot::VmRunSettings::default();
        if let Some(v) = &vssd {
            if !is_a(&v.class_name, "CIM_VirtualSystemSettingData") {
                return Err(HostError::invalid(format!(
                    "SystemSettings is a {}, not a Msvm_VirtualSystemSettingData",
                    v.class_name
                )));
            }
            spec.name = v
                .get("ElementName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(boot) = requested_boot(v)? {
                run.boot = boot;
            }
        }
        if spec.name.is_empty() {
            spec.name = "New Virtual Machine".into();
        }

        for r in &resource_settings(params)? {
            if is_a(&r.class_name, SERIAL_PORT_CLASS) {
                apply_serial_port(&mut run, r)?;
            } else {
                apply_resource_setting(&mut spec, r)?;
            }
        }

        self.check_api_disks(&mut spec)?;
        self.check_api_run_settings(&mut run)?;
        let vm = self.define_vm(&spec)?;
        if run != crate::vm_boot::VmRunSettings::default()
            && let Err(error) = self.set_run_settings(&vm.id, &run)
        {
            let _ = self.destroy_vm(&vm.id);
            return Err(error);
        }
        Ok(MethodOutcome {
            return_value: msvm::COMPLETED,
            out_params: vec![("ResultingSystem".into(), Value::Reference(vm_path(&vm.id)))],
        })
    }
}

/// A COM port of DefineSystem: COM 2's Connection is the socket; COM 1 (cosnap's console)
/// cannot be pointed anywhere.
fn apply_serial_port(
    run: &mut crate::vm_boot::VmRunSettings,
    r: &Instance,
) -> Result<(), HostError> {
    let port = requested_serial_port(r)?;
    if port.port == SETTABLE_PORT {
        run.com2 = port.socket;
    } else if port.socket.is_some() {
        return Err(HostError::NotSupported(format!(
            "COM {} is cosnap's console; only COM {SETTABLE_PORT}'s Connection can be set",
            port.port
        )));
    }
    Ok(())
}

/// ResourceSettings of DefineSystem or ModifyResourceSettings: an array of embedded
/// instances, or one.
pub(super) fn resource_settings(params: &[(String, Value)]) -> Result<Vec<Instance>, HostError> {
    Ok(match param(params, "ResourceSettings") {
        None => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| embedded(v, "ResourceSettings"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
        Some(v) => embedded(v, "ResourceSettings")?.into_iter().collect(),
    })
}

/// A resource setting's VirtualQuantity as a number (or its text).
fn virtual_quantity(r: &Instance) -> Result<u64, HostError> {
    r.get("VirtualQuantity")
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| {
            HostError::invalid(format!("{} needs a numeric VirtualQuantity", r.class_name))
        })
}

/// One resource setting onto the VM spec: CPUs, memory, a disk, a NIC or its connection.
fn apply_resource_setting(spec: &mut VmSpec, r: &Instance) -> Result<(), HostError> {
    let c = r.class_name.to_ascii_lowercase();
    match c.as_str() {
        "msvm_processorsettingdata" => {
            spec.cpus = u32::try_from(virtual_quantity(r)?)
                .map_err(|_| HostError::invalid("processor count too large"))?
        }
        "msvm_memorysettingdata" => spec.memory_mb = virtual_quantity(r)?,
        "msvm_storageallocationsettingdata" => {
            let path = match r.get("HostResource") {
                Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            }
            .ok_or_else(|| {
                HostError::invalid(
                    "a Msvm_StorageAllocationSettingData needs HostResource[0] = image path",
                )
            })?;
            let format = match r.get("ImageFormat").and_then(Value::as_str) {
                Some(f) => Some(cosnap_disk::Format::from_name(f).ok_or_else(|| {
                    HostError::invalid(format!("ImageFormat {f:?} is not vhdx, qcow2 or raw"))
                })?),
                None => None,
            };
            spec.disks.push(DiskSpec {
                path: path.into(),
                format,
            });
        }
        "msvm_syntheticethernetportsettingdata" => {
            let mac = r
                .get("Address")
                .and_then(Value::as_str)
                .ok_or_else(|| HostError::invalid("a network adapter needs Address (its MAC)"))?;
            spec.nics.push(Nic {
                mac: mac.to_string(),
                switch_name: None,
            });
        }
        "msvm_ethernetportallocationsettingdata" => {
            let sw = r
                .get("SwitchName")
                .and_then(Value::as_str)
                .map(str::to_string);
            match spec.nics.last_mut() {
                Some(n) => n.switch_name = sw,
                None => {
                    return Err(HostError::invalid(
                        "an Ethernet connection must follow its network adapter",
                    ));
                }
            }
        }
        other => {
            return Err(HostError::invalid(format!(
                "resource settings of class {other} are not supported"
            )));
        }
    }
    Ok(())
}
