//! Class definitions, as the MOF in `schema/` declares them and GetClass serves them.

use crate::value::{CimType, Value};

/// A qualifier on a class, property, method or parameter (`Key`, `In`, `Out`,
/// `EmbeddedInstance("…")`, `ValueMap{…}`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Qualifier {
    pub name: String,
    pub ty: CimType,
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropertyDef {
    pub name: String,
    pub ty: CimType,
    pub is_array: bool,
    /// For references: the class the reference points to.
    pub reference_class: Option<String>,
    pub qualifiers: Vec<Qualifier>,
    /// The class that first declared this property (for IncludeClassOrigin).
    pub class_origin: String,
    pub default: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParameterDef {
    pub name: String,
    pub ty: CimType,
    pub is_array: bool,
    pub reference_class: Option<String>,
    pub qualifiers: Vec<Qualifier>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodDef {
    pub name: String,
    pub return_type: CimType,
    pub parameters: Vec<ParameterDef>,
    pub qualifiers: Vec<Qualifier>,
    pub class_origin: String,
}

/// A class with its inherited members already flattened in (LocalOnly=false view).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassDef {
    pub name: String,
    pub superclass: Option<String>,
    pub qualifiers: Vec<Qualifier>,
    pub properties: Vec<PropertyDef>,
    pub methods: Vec<MethodDef>,
}

fn find<'a, T>(items: &'a [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'a T> {
    items.iter().find(|i| key(i).eq_ignore_ascii_case(name))
}

impl ClassDef {
    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        find(&self.properties, name, |p| &p.name)
    }
    pub fn method(&self, name: &str) -> Option<&MethodDef> {
        find(&self.methods, name, |m| &m.name)
    }
    /// Names of the key properties, in declaration order.
    pub fn keys(&self) -> impl Iterator<Item = &PropertyDef> {
        self.properties
            .iter()
            .filter(|p| find(&p.qualifiers, "Key", |q| &q.name).is_some())
    }
}

impl MethodDef {
    pub fn parameter(&self, name: &str) -> Option<&ParameterDef> {
        find(&self.parameters, name, |p| &p.name)
    }
}

impl ParameterDef {
    pub fn qualifier(&self, name: &str) -> Option<&Qualifier> {
        find(&self.qualifiers, name, |q| &q.name)
    }
}
