//! The `Hypervisor` trait: what the host needs from whatever runs its VMs. Disk layers are
//! named by their absolute paths (what the repository records); node names stay inside the
//! backend.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::model::{BlockNode, FreezeReport, FreezeRequest, StopMode, VmHandle, VmLaunch, VmState};

/// Runs VMs and changes their disk graphs while they run.
pub trait Hypervisor: Send + Sync {
    /// Starts a VM and returns once its control channel answers.
    fn start(&self, launch: &VmLaunch) -> Result<VmHandle>;

    /// Finds the VM running from `run_dir` again (after cosnap restarted).
    fn attach(&self, name: &str, run_dir: &Path) -> Result<VmHandle>;

    /// Running, paused, or off (the process is gone).
    fn state(&self, vm: &VmHandle) -> Result<VmState>;

    fn pause(&self, vm: &VmHandle) -> Result<()>;

    fn resume(&self, vm: &VmHandle) -> Result<()>;

    /// A hard reset of the guest (the VM keeps running).
    fn reset(&self, vm: &VmHandle) -> Result<()>;

    /// Stops the VM; returns once its process is gone.
    fn stop(&self, vm: &VmHandle, mode: StopMode) -> Result<()>;

    /// SIGKILL, for when nothing else works.
    fn kill(&self, vm: &VmHandle) -> Result<()>;

    /// Pauses every VM, switches each VM's listed disks onto their new overlays in one atomic
    /// transaction per VM (with the requested persistent bitmaps on the new layers), then
    /// resumes every VM — also when a step fails.
    fn group_freeze(&self, requests: &[FreezeRequest]) -> Result<FreezeReport>;

    /// Merges layer `top` of disk `disk` into the lower layer `base` while the VM runs; the
    /// merged-away node is removed. `merged` runs once `base` holds everything `top` held,
    /// before the guest can write to `base`: when `top` is the active layer the disk pivots
    /// onto `base` with the VM paused, and `merged` runs while it is still paused (then the
    /// VM resumes, on every path, unless it was paused already). An error from `merged` is
    /// returned as an `Io` error on `top`. Called again after its caller died, it finishes
    /// a job left behind, or (no job, `top`'s file gone: `merged` removed it) only removes
    /// the node.
    fn commit(
        &self,
        vm: &VmHandle,
        disk: usize,
        top: &Path,
        base: &Path,
        merged: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<()>;

    fn add_bitmap(&self, vm: &VmHandle, layer: &Path, name: &str, persistent: bool) -> Result<()>;

    fn remove_bitmap(&self, vm: &VmHandle, layer: &Path, name: &str) -> Result<()>;

    /// Merges the `sources` bitmaps (layer, name) into `target` on `layer`.
    fn merge_bitmaps(
        &self,
        vm: &VmHandle,
        layer: &Path,
        target: &str,
        sources: &[(PathBuf, String)],
    ) -> Result<()>;

    /// The VM's block graph.
    fn block_nodes(&self, vm: &VmHandle) -> Result<Vec<BlockNode>>;

    /// The Unix socket serving the VM's first serial port (the console).
    fn console_socket(&self, vm: &VmHandle) -> PathBuf;

    /// The file collecting everything the guest wrote on its first serial port.
    fn serial_log(&self, vm: &VmHandle) -> PathBuf;
}
