//! The QEMU backend: cosnap runs `qemu-system-x86_64` itself, one process per VM with its run
//! directory, and drives it over one cached QMP session per VM.

pub mod accel;
pub mod args;
mod blockops;
mod freeze;
mod graph;
pub mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use qapi::qmp;

use crate::error::{Result, VmmError};
use crate::hypervisor::Hypervisor;
use crate::model::{
    BlockNode, Boot, FreezeReport, FreezeRequest, StopMode, VmHandle, VmLaunch, VmState,
};
use crate::qmp::QmpClient;
use args::RunPaths;

/// How long a forced stop waits for QEMU to exit after `quit` before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// One VM's QMP session slot. QEMU serves one QMP client at a time, and other cosnap processes
/// (the CLI beside the server, a restarted cosnap) need the socket too, so a connection lives
/// for one operation only; the mutex serialises this process's operations on the VM.
type Session = Arc<Mutex<Option<QmpClient>>>;

/// The QEMU/QMP [`Hypervisor`].
#[derive(Default)]
pub struct QemuHypervisor {
    sessions: Mutex<HashMap<PathBuf, Session>>,
}

impl QemuHypervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `qemu-system-x86_64` is on PATH.
    pub fn available() -> bool {
        process::qemu_available()
    }

    fn session(&self, vm: &VmHandle) -> Session {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(sessions.entry(vm.run_dir.clone()).or_default())
    }

    /// Runs `work` on a QMP connection to the VM, closed again afterwards. A VM whose process
    /// is gone is [`VmmError::NotRunning`].
    fn with_qmp<T>(
        &self,
        vm: &VmHandle,
        work: impl FnOnce(&mut QmpClient) -> Result<T>,
    ) -> Result<T> {
        let session = self.session(vm);
        let mut guard = lock(&session);
        let result = connected(vm, &mut guard).and_then(work);
        *guard = None;
        result
    }
}

fn lock(session: &Session) -> MutexGuard<'_, Option<QmpClient>> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// The session's client, connecting when there is none; checks the process first.
fn connected<'a>(vm: &VmHandle, slot: &'a mut Option<QmpClient>) -> Result<&'a mut QmpClient> {
    let run = RunPaths::new(&vm.run_dir);
    if !process::is_our_qemu(vm.pid, &run) {
        *slot = None;
        return Err(VmmError::NotRunning {
            vm: vm.name.clone(),
        });
    }
    if slot.is_none() {
        *slot = Some(QmpClient::connect(&vm.name, &run.qmp_socket())?);
    }
    Ok(slot.as_mut().expect("connected above"))
}

impl Hypervisor for QemuHypervisor {
    fn start(&self, launch: &VmLaunch) -> Result<VmHandle> {
        let run_dir = process::absolute(&launch.run_dir)?;
        let run = RunPaths::new(&run_dir);
        let kernel = match &launch.boot {
            Boot::Kernel { kernel, .. } => Some(kernel.as_path()),
            Boot::Firmware => None,
        };
        let accel = launch.accelerator.unwrap_or_else(|| accel::choose(kernel));

        let qemu_args = args::qemu_args(launch, accel, &run)?;
        let pid = process::spawn(&launch.name, &qemu_args, &run)?;
        tracing::info!(vm = %launch.name, pid, accel = accel.name(), "started QEMU");

        Ok(VmHandle {
            name: launch.name.clone(),
            run_dir,
            pid,
        })
    }

    fn attach(&self, name: &str, run_dir: &Path) -> Result<VmHandle> {
        let run_dir = process::absolute(run_dir)?;
        let run = RunPaths::new(&run_dir);
        let pid = process::read_pidfile(&run)?;
        if !process::is_our_qemu(pid, &run) {
            return Err(VmmError::NotAttached {
                run_dir,
                reason: format!("process {pid} is not this VM's QEMU (it exited)"),
            });
        }
        Ok(VmHandle {
            name: name.to_string(),
            run_dir,
            pid,
        })
    }

    fn state(&self, vm: &VmHandle) -> Result<VmState> {
        let status = match self.with_qmp(vm, |q| q.execute(&qmp::query_status {})) {
            Err(VmmError::NotRunning { .. }) => return Ok(VmState::Off),
            Err(e) if !process::is_our_qemu(vm.pid, &RunPaths::new(&vm.run_dir)) => {
                tracing::debug!(vm = %vm.name, "QEMU exited during query-status: {e}");
                return Ok(VmState::Off);
            }
            other => other?,
        };
        Ok(match status.status {
            qmp::RunState::running => VmState::Running,
            qmp::RunState::shutdown => VmState::Off,
            // Every other state still holds the disks open, so it is never reported as off.
            _ => VmState::Paused,
        })
    }

    fn pause(&self, vm: &VmHandle) -> Result<()> {
        self.with_qmp(vm, |q| q.execute(&qmp::stop {}).map(drop))
    }

    fn resume(&self, vm: &VmHandle) -> Result<()> {
        self.with_qmp(vm, |q| q.execute(&qmp::cont {}).map(drop))
    }

    fn reset(&self, vm: &VmHandle) -> Result<()> {
        self.with_qmp(vm, |q| q.execute(&qmp::system_reset {}).map(drop))
    }

    fn stop(&self, vm: &VmHandle, mode: StopMode) -> Result<()> {
        let run = RunPaths::new(&vm.run_dir);
        match mode {
            StopMode::Graceful { timeout } => {
                self.with_qmp(vm, |q| q.execute(&qmp::system_powerdown {}).map(drop))?;
                if process::wait_gone(vm.pid, &run, timeout) {
                    return Ok(());
                }
                Err(VmmError::Timeout {
                    vm: vm.name.clone(),
                    what: "guest shutdown (the guest ignored the power button; stop it by force)"
                        .into(),
                    seconds: timeout.as_secs(),
                })
            }
            StopMode::Force => {
                // quit closes the images cleanly (persistent bitmaps are stored on close); the
                // connection may break as QEMU exits, which is the expected outcome.
                match self.with_qmp(vm, |q| q.execute(&qmp::quit {}).map(drop)) {
                    Ok(()) | Err(VmmError::NotRunning { .. } | VmmError::QmpIo { .. }) => {}
                    Err(e) => tracing::warn!(vm = %vm.name, "quit failed, killing: {e}"),
                }
                if process::wait_gone(vm.pid, &run, QUIT_GRACE) {
                    return Ok(());
                }
                self.kill(vm)
            }
        }
    }

    fn kill(&self, vm: &VmHandle) -> Result<()> {
        let run = RunPaths::new(&vm.run_dir);
        if process::kill_and_wait(vm.pid, &run, QUIT_GRACE) {
            return Ok(());
        }
        Err(VmmError::Timeout {
            vm: vm.name.clone(),
            what: "SIGKILL".into(),
            seconds: QUIT_GRACE.as_secs(),
        })
    }

    fn group_freeze(&self, requests: &[FreezeRequest]) -> Result<FreezeReport> {
        freeze::group_freeze(self, requests)
    }

    fn commit(
        &self,
        vm: &VmHandle,
        disk: usize,
        top: &Path,
        base: &Path,
        merged: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<()> {
        self.with_qmp(vm, |q| blockops::commit(q, disk, top, base, merged))
    }

    fn add_bitmap(&self, vm: &VmHandle, layer: &Path, name: &str, persistent: bool) -> Result<()> {
        self.with_qmp(vm, |q| blockops::add_bitmap(q, layer, name, persistent))
    }

    fn remove_bitmap(&self, vm: &VmHandle, layer: &Path, name: &str) -> Result<()> {
        self.with_qmp(vm, |q| blockops::remove_bitmap(q, layer, name))
    }

    fn merge_bitmaps(
        &self,
        vm: &VmHandle,
        layer: &Path,
        target: &str,
        sources: &[(PathBuf, String)],
    ) -> Result<()> {
        self.with_qmp(vm, |q| blockops::merge_bitmaps(q, layer, target, sources))
    }

    fn block_nodes(&self, vm: &VmHandle) -> Result<Vec<BlockNode>> {
        self.with_qmp(vm, graph::block_nodes)
    }

    fn console_socket(&self, vm: &VmHandle) -> PathBuf {
        RunPaths::new(&vm.run_dir).console_socket()
    }

    fn serial_log(&self, vm: &VmHandle) -> PathBuf {
        RunPaths::new(&vm.run_dir).serial_log()
    }
}
