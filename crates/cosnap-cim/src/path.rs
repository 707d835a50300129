//! Object paths: the names of CIM instances and classes.
//!
//! Text codecs (WMI path text `\\HOST\root\virtualization\v2:Class.Key="v"`, WBEM URIs)
//! live in the `path_text` module.

use crate::value::Value;

/// An instance path (keys non-empty) or a class path (keys empty).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectPath {
    /// The host part (`\\HOST` or the WBEM URI authority), when given.
    pub host: Option<String>,
    /// Canonical slash form (`root/virtualization/v2`) when present.
    pub namespace: Option<String>,
    /// The name of the class of the instance, or the class itself for a class path.
    pub class_name: String,
    /// Key bindings in the order they were given or defined.
    pub keys: Vec<(String, Value)>,
}

impl ObjectPath {
    /// A class path in no namespace; add keys with [`ObjectPath::with_key`].
    pub fn new(class_name: impl Into<String>) -> Self {
        Self {
            class_name: class_name.into(),
            ..Default::default()
        }
    }

    /// Adds a key binding (builder form).
    pub fn with_key(mut self, name: impl Into<String>, value: Value) -> Self {
        self.keys.push((name.into(), value));
        self
    }

    /// Sets the namespace (builder form); pass the canonical slash form.
    pub fn with_namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// A key's value by name, case-insensitively.
    pub fn key(&self, name: &str) -> Option<&Value> {
        self.keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// A string key's value.
    pub fn key_str(&self, name: &str) -> Option<&str> {
        self.key(name).and_then(Value::as_str)
    }
}
