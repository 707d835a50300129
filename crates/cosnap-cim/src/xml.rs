//! CIM-XML (DMTF DSP0201) element codec: values, paths, instances and classes.
//!
//! Parsing works on `roxmltree` nodes (the caller parses the document with [`parse_document`]
//! or [`parse_document_with`], the bounded [`reader`]); writing appends to a `String`
//! with correct escaping. The writer emits exactly the attributes and children DSP0201
//! allows, because pywbem 1.9.1 rejects anything else (docs/decisions.md, "CIM-XML writer").
//!
//! Typing: wbemcli sends parameter VALUEs without `PARAMTYPE`, so values are first parsed
//! into a [`RawValue`] (text, not yet typed) and then typed against the class's
//! [`ParameterDef`] / [`PropertyDef`] with [`type_for_parameter`] / [`type_for_property`].
//! Integer parsing is range-checked: a `uint16` of 70000 is a type error.

use std::borrow::Cow;

use thiserror::Error;

use crate::class::{ClassDef, MethodDef, ParameterDef, PropertyDef, QualifiedMember, Qualifier};
use crate::error::PathError;
use crate::path::ObjectPath;
use crate::value::{CimType, Instance, Property, Value};

pub use reader::{
    MAX_ATTRIBUTES, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_NAMESPACES, MAX_ELEMENT_NAMESPACES, MAX_NODES,
    MAX_XML_DEPTH, XmlLimits, nesting_exceeds, parse_document_with,
};
pub use roxmltree::{Document, Node};

pub mod reader;

/// Deepest nesting of references-in-keys and embedded-instances-in-values.
pub const MAX_DEPTH: usize = 16;
/// Most array elements / properties / key bindings accepted in one element.
pub const MAX_ITEMS: usize = 100_000;

mod document;
mod errors;
mod instances;
mod paths;
mod scalars;
mod untyped;
mod writing;

pub use self::document::*;
pub use self::errors::*;
pub use self::instances::*;
pub use self::paths::*;
pub use self::scalars::*;
pub use self::untyped::*;
pub use self::writing::*;

#[cfg(test)]
mod tests;
