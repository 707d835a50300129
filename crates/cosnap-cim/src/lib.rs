//! The CIM data model cosnap speaks: typed values, instances, object paths, class
//! definitions and the [`CimProvider`] interface that protocol front ends call.
//!
//! This crate knows nothing of disks, repositories or HTTP. Codecs for the text forms
//! (WMI object-path text, CIM-XML elements, embedded instances, CIM datetimes) and the
//! MOF of the classes cosnap serves live in the sub-modules:
//!
//! * [`path_text`] — WMI object paths and WBEM URIs, parse and print;
//! * [`datetime`] — CIM datetimes and intervals;
//! * [`xml`] — CIM-XML (DSP0201) elements: values, paths, instances, classes;
//! * [`embedded`] — embedded-instance strings in every producer variant;
//! * [`mof`] + [`schema`](mod@schema) — `schema/cosnap.mof`, parsed and resolved.

#![warn(missing_docs)]

pub mod class;
pub mod datetime;
pub mod embedded;
pub mod error;
pub mod mof;
pub mod path;
pub mod path_text;
pub mod provider;
pub mod schema;
pub mod value;
pub mod xml;

pub use class::{ClassDef, MethodDef, ParameterDef, PropertyDef, Qualifier};
pub use error::{CimError, CimStatus};
pub use path::ObjectPath;
pub use provider::{
    AssocFilter, BuiltCursor, CimProvider, InstanceCursor, MethodOutcome, PathCursor,
};
pub use schema::{Schema, schema};
pub use value::{CimType, Instance, Property, Value};
pub use xml::CodecError;

/// The namespace every cosnap class lives in, in the slash form CIM-XML uses.
pub const NAMESPACE: &str = "root/virtualization/v2";

/// Normalises a namespace as clients send it (`root\virtualization\v2`, `/root/...`,
/// any case) to the canonical slash form, so callers can compare with [`NAMESPACE`].
pub fn normalize_namespace(ns: &str) -> String {
    ns.trim_matches(|c| c == '/' || c == '\\')
        .replace('\\', "/")
        .to_ascii_lowercase()
}
