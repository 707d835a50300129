//! The host's CIM face: what `root/virtualization/v2` clients see of the domain.
//!
//! * [`paths`]: object paths with Hyper-V's keys, WMI path text, and
//!   [`Host::resolve_path`](crate::Host::resolve_path) from a path back to an object.
//! * [`instances`]: the objects as CIM instances (systems, settings, collections,
//!   snapshots, reference points, jobs, services).
//! * [`provider`]: the [`cosnap_cim::CimProvider`] implementation on
//!   [`Host`](crate::Host): enumeration, associations and the services' methods, one
//!   file per service.
//! * [`export_request`]: ExportSnapshot's parameters decoded into the export's plain
//!   request, and its outcome.
//! * [`run_settings`]: COM ports (Msvm_SerialPortSettingData) and boot properties of a
//!   VSSD, shown and read back from what clients send.
//! * [`errors`]: the `CIM_ERR_*` status of a host error.
//! * `package`: the instances an export package stores, for the export's
//!   [`PackageInstances`](crate::export::PackageInstances).
//!
//! The domain modules of the crate never import this module.

pub mod errors;
pub mod export_request;
pub mod instances;
mod package;
pub mod paths;
pub mod provider;
pub mod run_settings;
pub mod vm_state;

pub use paths::*;
