//! ModifySystemSettings (a VM's boot) and ModifyResourceSettings (its COM ports) of
//! Msvm_VirtualSystemManagementService: every request is checked before anything changes.

use cosnap_cim::{Instance, MethodOutcome, Value};
use cosnap_vmm::VmState;

use super::classes::is_a;
use super::management::resource_settings;
use super::params::*;
use crate::cim::run_settings::*;
use crate::error::{HostError, msvm};
use crate::host::Host;
use crate::model::Vm;
use crate::vm_boot::{VmBoot, VmRunSettings};

impl Host {
    /// ModifySystemSettings: the boot properties of a VM's current settings; every other
    /// property must be left as GetInstance showed it (nothing else is settable here).
    pub(super) fn modify_system_settings(
        &self,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        let vssd = embedded_param(params, "SystemSettings")?
            .ok_or_else(|| HostError::invalid("SystemSettings is required"))?;
        if !is_a(&vssd.class_name, "CIM_VirtualSystemSettingData") {
            return Err(HostError::invalid(format!(
                "SystemSettings is a {}, not a Msvm_VirtualSystemSettingData",
                vssd.class_name
            )));
        }
        let vm = self.vm_of_settings(instance_id(&vssd)?)?;
        refuse_rename(&vm, &vssd)?;

        let Some(boot) = requested_boot(&vssd)? else {
            return Ok(outcome(msvm::COMPLETED));
        };
        if boot == vm.run.boot {
            return Ok(outcome(msvm::COMPLETED));
        }

        self.require_off(&vm, "its boot settings")?;
        let mut checked = VmRunSettings { boot, com2: None };
        self.check_api_run_settings(&mut checked)?;
        let settings = VmRunSettings {
            boot: checked.boot,
            com2: vm.run.com2.clone(),
        };
        self.set_run_settings(&vm.id, &settings)?;
        Ok(outcome(msvm::COMPLETED))
    }

    /// ModifyResourceSettings: COM 2's Connection of VMs' current settings. All requests are
    /// checked first, so one refused port leaves every VM as it was.
    pub(super) fn modify_resource_settings(
        &self,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        let requested = resource_settings(params)?;
        if requested.is_empty() {
            return Err(HostError::invalid("ResourceSettings is required"));
        }

        let mut changes: Vec<(Vm, VmRunSettings, Value)> = Vec::new();
        for r in &requested {
            let (vm, socket) = self.checked_serial_port(r)?;
            let port_path = serial_port_instance(&crate::cim::vm_vssd_id(&vm.id), 2, None)
                .path
                .map(Value::Reference)
                .ok_or_else(|| HostError::Failed("a COM port has no path".into()))?;
            let mut run = match changes.iter().position(|(v, _, _)| v.id == vm.id) {
                Some(i) => changes.remove(i).1,
                None => vm.run.clone(),
            };
            run.com2 = socket;
            changes.push((vm, run, port_path));
        }

        for (vm, run, _) in &changes {
            self.set_run_settings(&vm.id, run)?;
        }
        let resulting = changes.into_iter().map(|(_, _, path)| path).collect();
        Ok(MethodOutcome {
            return_value: msvm::COMPLETED,
            out_params: vec![("ResultingResourceSettings".into(), Value::Array(resulting))],
        })
    }

    /// One requested COM port checked: its VM (off), and COM 2's socket resolved under a
    /// storage root; COM 1 (the console) only when it asks for no change.
    fn checked_serial_port(
        &self,
        r: &Instance,
    ) -> Result<(Vm, Option<std::path::PathBuf>), HostError> {
        if !is_a(&r.class_name, SERIAL_PORT_CLASS) {
            return Err(HostError::NotSupported(format!(
                "ModifyResourceSettings changes COM ports ({SERIAL_PORT_CLASS}) only; {} is set by DefineSystem",
                r.class_name
            )));
        }
        let id = instance_id(r)?;
        let vssd_id = id.rsplit_once("\\Com\\").map_or(id, |(vssd, _)| vssd);
        let vm = self.vm_of_settings(vssd_id)?;
        let port = requested_serial_port(r)?;
        if port.port != SETTABLE_PORT {
            return Err(HostError::NotSupported(format!(
                "COM {} is cosnap's console (cosnap vm console); only COM {SETTABLE_PORT}'s Connection can be set",
                port.port
            )));
        }
        if port.socket == vm.run.com2 {
            return Ok((vm, port.socket));
        }

        self.require_off(&vm, "its COM ports")?;
        let mut checked = VmRunSettings {
            boot: VmBoot::Firmware,
            com2: port.socket,
        };
        self.check_api_run_settings(&mut checked)?;
        Ok((vm, checked.com2))
    }

    /// The VM whose current settings have this VSSD InstanceID (`Microsoft:<VM id>`); a
    /// snapshot's settings are history and cannot be modified.
    fn vm_of_settings(&self, vssd_id: &str) -> Result<Vm, HostError> {
        let vm_id = vssd_id.strip_prefix("Microsoft:").unwrap_or(vssd_id);
        self.vm(vm_id).map_err(|_| {
            HostError::not_found(format!(
                "{vssd_id} names no VM's current settings (a snapshot's settings cannot be modified)"
            ))
        })
    }

    /// QEMU reads boot and serial settings when it starts: they change while the VM is off.
    fn require_off(&self, vm: &Vm, what: &str) -> Result<(), HostError> {
        match self.vm_state(&vm.id)? {
            VmState::Off => Ok(()),
            _ => Err(HostError::state(format!(
                "VM {} is not off: stop it before changing {what}",
                vm.name
            ))),
        }
    }
}

fn instance_id(r: &Instance) -> Result<&str, HostError> {
    r.get("InstanceID").and_then(Value::as_str).ok_or_else(|| {
        HostError::invalid(format!(
            "the {} needs its InstanceID (as GetInstance shows it)",
            r.class_name
        ))
    })
}

/// ElementName is the VM's name; renaming is not something cosnap does over CIM.
fn refuse_rename(vm: &Vm, vssd: &Instance) -> Result<(), HostError> {
    match vssd.get("ElementName").and_then(Value::as_str) {
        Some(name) if name != vm.name => Err(HostError::NotSupported(format!(
            "renaming VM {} to {name:?} is not supported; ModifySystemSettings sets the boot properties only",
            vm.name
        ))),
        _ => Ok(()),
    }
}
