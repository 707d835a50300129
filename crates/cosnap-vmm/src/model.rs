//! The vocabulary the host and the backends share: what a VM is launched with, its state, and
//! what a group freeze is asked to do and reports.

use std::path::PathBuf;
use std::time::Duration;

/// A disk image format, as the repository records it (never probed from the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    Qcow2,
    Vhdx,
    Raw,
}

impl LayerFormat {
    /// The QEMU block driver name of the format.
    pub fn driver(self) -> &'static str {
        match self {
            LayerFormat::Qcow2 => "qcow2",
            LayerFormat::Vhdx => "vhdx",
            LayerFormat::Raw => "raw",
        }
    }
}

/// One layer of a disk chain: an absolute path and its recorded format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayer {
    pub path: PathBuf,
    pub format: LayerFormat,
}

/// One virtual disk: its chain from the base (first) to the active layer (last). Every layer
/// above the base must be qcow2, since QEMU cannot open VHDX differencing images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChain {
    pub layers: Vec<DiskLayer>,
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware boots the first disk.
    Firmware,
}

/// The second serial port (the guest's ttyS1) on a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSocket {
    /// QEMU listens at the path.
    Server(PathBuf),
    /// QEMU connects to the path, retrying while it is absent.
    Client(PathBuf),
}

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmLaunch {
    /// The VM's name, for messages and the guest-visible QEMU `-name`.
    pub name: String,
    /// Where the pid file, QMP socket, console socket and logs live (created if absent).
    pub run_dir: PathBuf,
    pub cpus: u32,
    pub memory_mb: u64,
    pub disks: Vec<DiskChain>,
    pub boot: Boot,
    pub com2: Option<SerialSocket>,
    /// A user-mode (slirp) NIC.
    pub user_nic: bool,
    /// `None`: probe (KVM only if a quick boot works), else the given one.
    pub accelerator: Option<Accelerator>,
}

/// A VM that was started (or re-attached to): its QEMU process and its run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmHandle {
    pub name: String,
    pub run_dir: PathBuf,
    pub pid: i32,
}

/// What a VM is doing, from QMP `query-status` and the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
    Off,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Off => "off",
        }
    }
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// ACPI power button, then wait for the guest to power off.
    Graceful { timeout: Duration },
    /// QMP `quit` (QEMU closes its images cleanly, storing persistent bitmaps), then SIGKILL.
    Force,
}

/// One disk to switch onto a new active layer in a group freeze.
#[derive(Debug, Clone)]
pub struct DiskFreeze {
    /// Index of the disk in the VM's launch order.
    pub disk: usize,
    /// A qcow2 file the caller created, whose header already names the current active layer as
    /// its backing file with the recorded backing format.
    pub overlay: PathBuf,
    /// A persistent dirty bitmap to create on the new layer in the same transaction.
    pub bitmap: Option<String>,
}

/// One VM of a group freeze.
#[derive(Debug, Clone)]
pub struct FreezeRequest {
    pub vm: VmHandle,
    pub disks: Vec<DiskFreeze>,
}

/// What a group freeze did.
#[derive(Debug, Clone)]
pub struct FreezeReport {
    /// From the first `stop` sent to the last `cont` answered: the time every guest stood still
    /// at most.
    pub pause_window_us: u64,
    /// Per VM (in request order): from its `stop` answered to its `cont` answered.
    pub paused_us: Vec<(String, u64)>,
}

/// A node of a VM's block graph (`query-named-block-nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNode {
    pub node_name: String,
    pub driver: String,
    pub file: String,
    pub backing_file: Option<String>,
    pub read_only: bool,
    pub bitmaps: Vec<String>,
}
