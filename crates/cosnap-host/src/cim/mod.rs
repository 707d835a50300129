//! The host's CIM face: what `root/virtualization/v2` clients see of the domain.
//!
//! * [`paths`]: object paths with Hyper-V's keys, WMI path text, and
//!   [`Host::resolve_path`](crate::Host::resolve_path) from a path back to an object.
//! * [`instances`]: the objects as CIM instances (systems, settings, collections,
//!   snapshots, reference points, jobs, services).
//! * [`provider`]: the [`cosnap_cim::CimProvider`] implementation on
//!   [`Host`](crate::Host): enumeration, associations and the services' methods, one
//!   file per service.
//!
//! The domain modules of the crate never import this module.

pub mod instances;
pub mod paths;
pub mod provider;

pub use paths::*;
