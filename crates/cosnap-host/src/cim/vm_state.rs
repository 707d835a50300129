//! The CIM face of running VMs (the VM room is `running.rs`): `Msvm_ComputerSystem.EnabledState` from the hypervisor, and
//! `Msvm_ComputerSystem.RequestStateChange` run as a job (Hyper-V returns 4096 with a job).

use cosnap_cim::{CimError, MethodOutcome, ObjectPath, Value};
use cosnap_vmm::VmState;

use crate::error::{HostError, Result, msvm};
use crate::host::Host;

/// EnabledState values of a VM (CIM_EnabledLogicalElement; 32768 is Hyper-V's Paused).
pub mod enabled_state {
    pub const UNKNOWN: u16 = 0;
    pub const ENABLED: u16 = 2;
    pub const DISABLED: u16 = 3;
    pub const PAUSED: u16 = 32768;
}

/// RequestedState values Hyper-V documents for a VM.
pub mod requested_state {
    pub const START: u16 = 2;
    pub const TURN_OFF: u16 = 3;
    pub const SHUT_DOWN: u16 = 4;
    pub const REBOOT: u16 = 10;
    pub const PAUSE: u16 = 32768;
    pub const SAVE: u16 = 32769;
}

/// JobType of a state-change job (Hyper-V's "change VM state"; docs/decisions.md).
pub const JOB_TYPE_STATE_CHANGE: u16 = 2;

impl Host {
    /// The VM's EnabledState: 2 running, 32768 paused, 3 off; 0 when the hypervisor could
    /// not be asked.
    pub fn enabled_state(&self, vm_id: &str) -> u16 {
        match self.vm_state(vm_id) {
            Ok(VmState::Running) => enabled_state::ENABLED,
            Ok(VmState::Paused) => enabled_state::PAUSED,
            Ok(VmState::Off) => enabled_state::DISABLED,
            Err(error) => {
                tracing::warn!(vm = vm_id, "state unknown: {error}");
                enabled_state::UNKNOWN
            }
        }
    }

    /// `Msvm_ComputerSystem.RequestStateChange`: refused at once (invalid state) when the VM
    /// is not in a state the change applies to; else a job does it.
    pub(crate) fn request_vm_state(
        &self,
        target: &ObjectPath,
        requested: Option<u64>,
    ) -> std::result::Result<MethodOutcome, CimError> {
        let outcome = |code| MethodOutcome {
            return_value: code,
            out_params: vec![],
        };
        let Some(id) = target.key_str("Name") else {
            return Ok(outcome(msvm::INVALID_PARAMETER));
        };
        let Some(requested) = requested.and_then(|r| u16::try_from(r).ok()) else {
            return Ok(outcome(msvm::INVALID_PARAMETER));
        };
        if requested == requested_state::SAVE {
            // Saving memory state (32769) is Hyper-V's; cosnap does not implement it.
            return Ok(outcome(msvm::NOT_SUPPORTED));
        }
        match self.start_state_change(id, requested) {
            Ok(job) => Ok(MethodOutcome {
                return_value: msvm::JOB_STARTED,
                out_params: vec![("Job".into(), Value::Reference(crate::cim::job_path(&job)))],
            }),
            Err(error) => {
                tracing::info!("RequestStateChange({requested}) of VM {id} refused: {error}");
                Ok(outcome(error.msvm_code()))
            }
        }
    }

    fn start_state_change(&self, id_or_name: &str, requested: u16) -> Result<String> {
        use requested_state::*;
        let vm = self.vm(id_or_name)?;
        let state = self.vm_state(&vm.id)?;
        let allowed = match requested {
            START => state != VmState::Running,
            TURN_OFF | SHUT_DOWN => state != VmState::Off,
            PAUSE | REBOOT => state == VmState::Running,
            other => {
                return Err(HostError::invalid(format!(
                    "RequestedState {other} is not one of 2, 3, 4, 10, 32768"
                )));
            }
        };
        if !allowed {
            return Err(HostError::InvalidState(format!(
                "VM {} is {}; RequestedState {requested} does not apply",
                vm.name,
                state.as_str()
            )));
        }

        let host = self.clone();
        let id = vm.id.clone();
        let description = format!("Changing the state of VM {} to {requested}", vm.name);
        self.start_job(
            JOB_TYPE_STATE_CHANGE,
            "Change VM state",
            &description,
            false,
            move |_| {
                match (requested, state) {
                    (START, VmState::Paused) => host.resume_vm(&id),
                    (START, _) => host.start_vm(&id),
                    (TURN_OFF, _) => host.stop_vm(&id, true),
                    (SHUT_DOWN, _) => host.stop_vm(&id, false),
                    (PAUSE, _) => host.pause_vm(&id),
                    _ => host.reset_vm(&id),
                }?;
                Ok(vec![("Msvm_ComputerSystem".to_string(), id)])
            },
        )
    }
}
