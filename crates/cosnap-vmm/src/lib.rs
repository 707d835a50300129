//! Runs and freezes VMs for cosnap: a Hypervisor trait and its QEMU/QMP backend.
//!
//! - [`hypervisor`]: the [`Hypervisor`] trait the host drives;
//! - [`model`]: launches, handles, states, freeze requests and reports;
//! - [`qemu`]: the backend that runs `qemu-system-x86_64` itself, one supervised process per
//!   VM, and drives it over QMP ([`qmp`]).

pub mod error;
pub mod hypervisor;
pub mod model;
pub mod qemu;
pub mod qmp;

pub use error::{Result, VmmError};
pub use hypervisor::Hypervisor;
pub use model::{
    Accelerator, BlockNode, Boot, DiskChain, DiskFreeze, DiskLayer, FreezeReport, FreezeRequest,
    LayerFormat, SerialSocket, StopMode, VmHandle, VmLaunch, VmState,
};
pub use qemu::QemuHypervisor;
