//! The cosnap virtualization host: virtual systems with their settings and resource
//! settings, collections, collection snapshots, reference points and jobs, kept in an
//! embedded SQLite repository, and the Hyper-V services' methods with their documented
//! return codes.
//!
//! # Two layers
//!
//! * **The domain** (every module but [`cim`]): the repository, layers and journal, jobs,
//!   export and import. It speaks plain Rust: [`export::ExportRequest`], [`HostError`],
//!   the records of [`model`]. It never imports [`cim`].
//! * **The CIM face** ([`cim`]): object paths and [`Resolved`], the objects as CIM
//!   instances, the [`cosnap_cim::CimProvider`] implementation with one file per service,
//!   ExportSnapshot's parameter decoding ([`cim::export_request`]) and the `CIM_ERR_*`
//!   status of a [`HostError`]. Front ends (`cosnap-wbem`) reach the host through it.
//!   Where the domain needs CIM instances (an export package stores them), it names a
//!   trait of its own ([`export::PackageInstances`]) that the face implements.
//!
//! # Rooms
//!
//! [`host`] holds only [`Host`] (open, lock, the database). Each resource has its own
//! `impl Host` block in a private module: VMs (`vms`), collections (`collections`),
//! snapshots (`snapshots`), reference points (`refpoints`), layers (`layers`: in use,
//! release, change base; `new_layers`: what create and apply add), recovery and verify
//! (`recovery`), export records (`export_records`) and rows ↔ structs (`rows`). Long
//! operations take `&dyn` [`Work`] ([`work`]), never the job runner ([`jobs`]); the
//! `start_*` methods and the `*_now(…, Option<&JobCtx>)` wrappers live in `job_ops`.
//!
//! # Design (decisions taken; see also each module)
//!
//! * **Repository** ([`repo`]): SQLite, WAL, `<data-dir>/cosnap.db`, versioned migrations,
//!   one transaction per state change, `busy_timeout` so a CLI and a server can share the
//!   directory. Operations that touch disk files also hold `flock(<data-dir>/lock)`.
//! * **Layers**: each VM disk slot has a chain. The user's base image stays where the user
//!   defined it; cosnap creates every new layer under `<data-dir>/disks/<vm-id>/` and only
//!   ever modifies a user's base by merging into it when the first snapshot above it is
//!   destroyed. It never deletes a file it did not create. The *active layer* is where
//!   guest writes go.
//! * **Intent journal** ([`journal`]): every operation touching files is journaled;
//!   [`Host::open`] rolls back what never committed and rolls forward what did.
//! * **Snapshots**: CreateSnapshot adds one differencing child per disk of every member VM
//!   under the lock and switches every active layer in ONE transaction (group crash
//!   consistent; cost independent of disk size). DestroySnapshot merges
//!   (`release_layers` in the `layers` room). ApplySnapshot branches from the frozen layers.
//!   ConvertToReferencePoint keeps the frozen layers as change boundaries
//!   ([`Host::change_base`]).
//! * **Return codes**: DMTF style for collection snapshot / RP methods, Msvm style for
//!   collection management and DefineSystem/DestroySystem ([`error`]).
//!
//! # API for the export / import code (in-crate `export.rs` / `import.rs`) and front ends
//!
//! (The object-path and instance methods below are defined by the CIM face.)
//!
//! * Open: [`Host::open`]`(data_dir)`.
//! * Look-ups: [`Host::vm`], [`Host::vms`], [`Host::collection`], [`Host::collections`],
//!   [`Host::snapshot`] (a [`Snapshot`]: per VM the [`VmSettings`] at the snapshot and the
//!   frozen [`LayerRef`] of each disk: path + format + disk InstanceID),
//!   [`Host::snapshot_of_vssd`], [`Host::refpoint`] (a [`RefPoint`]: per disk the boundary
//!   layer, disk InstanceID and RCT id), [`Host::snapshots`], [`Host::refpoints`].
//! * By object path: [`Host::resolve_path`] → [`Resolved`] (which object an
//!   `ObjectPath` names), [`cosnap_cim::path_text::parse`] for WMI path text
//!   (`\\HOST\root\virtualization\v2:Class.Key="v"`), [`Host::path_text`] to print one.
//! * As CIM instances: [`Host::snapshot_vm_instances`] (the per-VM snapshot VSSD and its
//!   resource settings: Msvm_ProcessorSettingData, Msvm_MemorySettingData,
//!   Msvm_StorageAllocationSettingData (HostResource = frozen layer path),
//!   Msvm_SyntheticEthernetPortSettingData, Msvm_SerialPortSettingData COM 1/COM 2; the VSSD
//!   carries the boot as CosnapKernel/CosnapInitrd/CosnapKernelCommandLine),
//!   [`Host::vm_instances`] (same for a VM now), and
//!   the [`cosnap_cim::CimProvider`] implementation on [`Host`].
//! * Differential bases: [`Host::change_base`]`(top_layer, base_layer)` → the base layer or
//!   [`HostError::ChangeInfoGone`].
//! * In use: [`Host::mark_in_use`]`(snapshot_or_rp_id, job_id)` → an [`InUseGuard`];
//!   while it lives, destroy/apply/convert of that object return in-use / invalid state.
//! * Exports: [`Host::record_export`] and [`Host::exports_of`] (a reference point also
//!   finds the exports of the snapshot it was converted from).
//! * Import: [`Host::define_vm`] (a [`VmSpec`], ids may be kept), [`Host::define_collection`],
//!   [`Host::add_member`].
//! * Domain operations with a [`Work`] context: [`Host::create_snapshot`],
//!   [`Host::destroy_snapshot`], [`Host::apply_snapshot`], [`Host::convert_to_refpoint`],
//!   [`Host::destroy_refpoint`] (pass [`NoJob`] outside a job); as jobs: the `start_*`
//!   methods, or [`Host::start_work`]`(`[`jobs::JobDescription`]`, operation)` for any other.
//! * Jobs: [`Host::start_job`]`(job_type, name, description, cancellable, work)` where
//!   `work: FnOnce(&JobCtx) -> Result<Vec<(class, id)>>` runs on a thread
//!   ([`JobCtx::progress`], [`JobCtx::check_cancel`], [`JobCtx::cancel_token`] for
//!   cosnap-disk); [`Host::job`], [`Host::jobs`], [`Host::wait_job`],
//!   [`Host::request_job_state`].
//! * Running VMs (`running.rs`): [`Host::start_vm`], [`Host::stop_vm`], [`Host::pause_vm`],
//!   [`Host::resume_vm`], [`Host::reset_vm`], [`Host::vm_state`], [`Host::vm_with_state`];
//!   for live snapshot work [`Host::running_vm`]`(vm_id)` → the [`cosnap_vmm::VmHandle`] of a
//!   running or paused VM (`None` when off) and [`Host::hypervisor`] → the
//!   [`cosnap_vmm::Hypervisor`] (group freeze, live commit, bitmaps, all by layer path).
//!   Run settings: [`Host::set_run_settings`], [`Host::check_api_run_settings`].

pub mod chains;
pub mod cim;
mod collections;
pub mod error;
pub mod export;
mod export_records;
pub mod host;
pub mod import;
mod job_ops;
pub mod jobs;
pub mod journal;
mod layers;
pub mod libvirt;
pub mod live;
mod live_merge;
pub mod model;
pub mod modes;
mod new_layers;
pub mod options;
mod recovery;
mod refpoint_bitmaps;
mod refpoints;
pub mod repo;
mod rows;
pub mod running;
mod snapshots;
pub mod util;
pub mod vm_boot;
mod vms;
pub mod work;

pub use cim::Resolved;
pub use cim::provider;
pub use error::{HostError, Result};
pub use host::Host;
pub use jobs::JobCtx;
pub use layers::InUseGuard;
pub use model::*;
pub use options::HostOptions;
pub use running::SharedHypervisor;
pub use vm_boot::{VmBoot, VmRunSettings};
pub use work::{NoJob, Work};
