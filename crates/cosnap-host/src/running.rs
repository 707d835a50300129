//! The VM room: VMs run through the [`Hypervisor`] the host was opened with
//! ([`crate::options::HostOptions::hypervisor`]); start, stop, pause, resume, reset, state, and
//! the handle of a running VM. A VM's run directory is `<data-dir>/run/<vm-id>`; its state is
//! read from there each time, so a restarted cosnap finds its running VMs again.

use std::path::PathBuf;
use std::time::Duration;

use cosnap_disk::Format;
use cosnap_vmm::{
    Accelerator, Boot, DiskChain, DiskLayer, Hypervisor, LayerFormat, StopMode, VmHandle, VmLaunch,
    VmState, VmmError,
};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::model::Vm;
use crate::vm_boot::{VmBoot, load_run_settings};

/// How long `vm stop` (without force) waits for the guest to power off.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(60);

pub use crate::options::SharedHypervisor;

impl Host {
    pub fn hypervisor(&self) -> &dyn Hypervisor {
        self.inner.options.hypervisor.0.as_ref()
    }

    fn run_dir(&self, vm_id: &str) -> PathBuf {
        self.inner.data_dir.join("run").join(vm_id)
    }

    /// The handle of the VM's QEMU while it runs or is paused; `None` when it is off (never
    /// started, stopped, or its process died).
    pub fn running_vm(&self, vm_id: &str) -> Option<VmHandle> {
        let run_dir = self.run_dir(vm_id);
        if !run_dir.is_dir() {
            return None;
        }
        self.hypervisor().attach(vm_id, &run_dir).ok()
    }

    /// Running, paused or off.
    pub fn vm_state(&self, vm_id: &str) -> Result<VmState> {
        match self.running_vm(vm_id) {
            Some(handle) => self.hypervisor().state(&handle).map_err(vmm_error),
            None => Ok(VmState::Off),
        }
    }

    /// A VM with its current state (`running`, `paused`, `off`) filled in. Plain [`Host::vm`]
    /// leaves it out: asking the hypervisor costs a QMP round trip per VM.
    pub fn vm_with_state(&self, id_or_name: &str) -> Result<Vm> {
        let mut vm = self.vm(id_or_name)?;
        vm.state = Some(self.vm_state(&vm.id)?.as_str().to_string());
        Ok(vm)
    }

    /// Every VM with its current state.
    pub fn vms_with_state(&self) -> Result<Vec<Vm>> {
        let mut vms = self.vms()?;
        for vm in &mut vms {
            vm.state = Some(self.vm_state(&vm.id)?.as_str().to_string());
        }
        Ok(vms)
    }

    /// Starts a VM that is off, on its disks' active layers as recorded.
    pub fn start_vm(&self, id_or_name: &str) -> Result<Vm> {
        let _lock = self.lock()?;
        let vm = self.vm(id_or_name)?;
        let state = self.vm_state(&vm.id)?;
        if state != VmState::Off {
            return Err(HostError::InvalidState(format!(
                "VM {} is {} already",
                vm.name,
                state.as_str()
            )));
        }
        let launch = self.launch_of(&vm)?;
        self.hypervisor().start(&launch).map_err(vmm_error)?;
        self.vm_with_state(&vm.id)
    }

    /// Stops a running or paused VM: the guest powers off (`force`: QEMU quits at once).
    pub fn stop_vm(&self, id_or_name: &str, force: bool) -> Result<Vm> {
        let handle = self.handle_of(id_or_name)?;
        let mode = match force {
            true => StopMode::Force,
            false => StopMode::Graceful {
                timeout: GRACEFUL_STOP,
            },
        };
        self.hypervisor().stop(&handle, mode).map_err(vmm_error)?;
        self.vm_with_state(&handle.name)
    }

    pub fn pause_vm(&self, id_or_name: &str) -> Result<Vm> {
        let handle = self.handle_of(id_or_name)?;
        self.hypervisor().pause(&handle).map_err(vmm_error)?;
        self.vm_with_state(&handle.name)
    }

    pub fn resume_vm(&self, id_or_name: &str) -> Result<Vm> {
        let handle = self.handle_of(id_or_name)?;
        self.hypervisor().resume(&handle).map_err(vmm_error)?;
        self.vm_with_state(&handle.name)
    }

    /// A hard reset of a running VM's guest.
    pub fn reset_vm(&self, id_or_name: &str) -> Result<Vm> {
        let handle = self.handle_of(id_or_name)?;
        self.hypervisor().reset(&handle).map_err(vmm_error)?;
        self.vm_with_state(&handle.name)
    }

    /// The Unix socket serving a running VM's first serial port.
    pub fn console_socket(&self, id_or_name: &str) -> Result<PathBuf> {
        let handle = self.handle_of(id_or_name)?;
        Ok(self.hypervisor().console_socket(&handle))
    }

    /// The file holding everything a running VM's guest wrote on its first serial port.
    pub fn serial_log(&self, id_or_name: &str) -> Result<PathBuf> {
        let handle = self.handle_of(id_or_name)?;
        Ok(self.hypervisor().serial_log(&handle))
    }

    /// The running VM's handle (named by the VM's id), or invalid state when it is off.
    fn handle_of(&self, id_or_name: &str) -> Result<VmHandle> {
        let vm = self.vm(id_or_name)?;
        self.running_vm(&vm.id)
            .ok_or_else(|| HostError::InvalidState(format!("VM {} is off", vm.name)))
    }

    fn launch_of(&self, vm: &Vm) -> Result<VmLaunch> {
        let conn = self.db();
        let settings = load_run_settings(&conn, &vm.id)?;
        let mut disks = Vec::with_capacity(vm.disks.len());
        for disk in &vm.disks {
            let mut layers: Vec<DiskLayer> = crate::chains::recorded_chain(&conn, &disk.path)?
                .into_iter()
                .map(|spec| DiskLayer {
                    path: spec.path,
                    format: layer_format(spec.format),
                })
                .collect();
            layers.reverse();
            disks.push(DiskChain { layers });
        }
        drop(conn);

        let boot = match settings.boot {
            VmBoot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            },
            VmBoot::Firmware => Boot::Firmware,
        };
        Ok(VmLaunch {
            name: vm.id.clone(),
            run_dir: self.run_dir(&vm.id),
            cpus: vm.cpus,
            memory_mb: vm.memory_mb,
            accelerator: self.accelerator(&boot),
            disks,
            boot,
            com2: settings.com2.map(cosnap_vmm::SerialSocket::Server),
            user_nic: !vm.nics.is_empty(),
        })
    }

    /// The accelerator for this data directory: `COSNAP_ACCEL` wins (the backend reads it);
    /// else the KVM probe's verdict, cached in `<data-dir>/run/accelerator` because each
    /// CLI call is a new process and a failing probe costs seconds.
    fn accelerator(&self, boot: &Boot) -> Option<Accelerator> {
        if std::env::var_os(cosnap_vmm::qemu::accel::ACCEL_ENV).is_some() {
            return None;
        }
        let cache = self.inner.data_dir.join("run").join("accelerator");
        match std::fs::read_to_string(&cache).as_deref().map(str::trim) {
            Ok("kvm") => return Some(Accelerator::Kvm),
            Ok("tcg") => return Some(Accelerator::Tcg),
            _ => {}
        }
        let Boot::Kernel { kernel, .. } = boot else {
            return Some(Accelerator::Tcg);
        };
        let chosen = cosnap_vmm::qemu::accel::probe(kernel);
        let _ = std::fs::create_dir_all(self.inner.data_dir.join("run"));
        let _ = std::fs::write(&cache, chosen.name());
        Some(chosen)
    }
}

fn layer_format(format: Format) -> LayerFormat {
    match format {
        Format::Qcow2 => LayerFormat::Qcow2,
        Format::Vhdx => LayerFormat::Vhdx,
        Format::Raw => LayerFormat::Raw,
    }
}

/// The hypervisor's errors in the host's terms (and so its return codes).
pub(crate) fn vmm_error(error: VmmError) -> HostError {
    match error {
        VmmError::NotRunning { .. } | VmmError::NotAttached { .. } => {
            HostError::InvalidState(error.to_string())
        }
        VmmError::InvalidLaunch(_) => HostError::InvalidState(error.to_string()),
        other => HostError::Failed(other.to_string()),
    }
}
