//! Class definitions, as the MOF in `schema/` declares them and GetClass serves them.

use crate::value::{CimType, Value};

/// A qualifier on a class, property, method or parameter (`Key`, `In`, `Out`,
/// `EmbeddedInstance("…")`, `ValueMap{…}`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Qualifier {
    /// The qualifier's name as declared (`Key`, `EmbeddedInstance`, …).
    pub name: String,
    /// The qualifier's declared CIM type.
    pub ty: CimType,
    /// The qualifier's value on this element; `None` is a qualifier present without a value.
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
/// A property of a class: its name, CIM type, array-ness, qualifiers, origin and default.
pub struct PropertyDef {
    /// The property's name as the MOF spells it.
    pub name: String,
    /// The property's CIM type (element type for arrays).
    pub ty: CimType,
    /// Whether the property holds an array of `ty`.
    pub is_array: bool,
    /// For references: the class the reference points to.
    pub reference_class: Option<String>,
    /// The qualifiers on the property (`Key`, `Required`, `ValueMap`, …).
    pub qualifiers: Vec<Qualifier>,
    /// The class that first declared this property (for IncludeClassOrigin).
    pub class_origin: String,
    /// The MOF default value, when the class declares one.
    pub default: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
/// A parameter of an extrinsic method: its name, CIM type, direction and other qualifiers.
pub struct ParameterDef {
    /// The parameter's name as the MOF spells it.
    pub name: String,
    /// The parameter's CIM type (element type for arrays).
    pub ty: CimType,
    /// Whether the parameter takes an array of `ty`.
    pub is_array: bool,
    /// For reference parameters: the class the reference points to.
    pub reference_class: Option<String>,
    /// The parameter's qualifiers (`In`, `Out`, `EmbeddedInstance`, …).
    pub qualifiers: Vec<Qualifier>,
}

#[derive(Debug, Clone, PartialEq)]
/// An extrinsic method of a class: its return type, parameters and qualifiers.
pub struct MethodDef {
    /// The method's name as the MOF spells it.
    pub name: String,
    /// The CIM type of the method's return value (the return code).
    pub return_type: CimType,
    /// The method's parameters, in declaration order.
    pub parameters: Vec<ParameterDef>,
    /// The qualifiers on the method (`Static`, `ValueMap` of its return codes, …).
    pub qualifiers: Vec<Qualifier>,
    /// The class that first declared this method (for IncludeClassOrigin).
    pub class_origin: String,
}

/// A class with its inherited members already flattened in (LocalOnly=false view).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassDef {
    /// The class's name (`Msvm_VirtualSystemSnapshotService`, …).
    pub name: String,
    /// The class this one derives from; `None` for a root class.
    pub superclass: Option<String>,
    /// The qualifiers on the class itself (`Association`, `Abstract`, …).
    pub qualifiers: Vec<Qualifier>,
    /// Every property, inherited ones included, in declaration order.
    pub properties: Vec<PropertyDef>,
    /// Every method, inherited ones included, in declaration order.
    pub methods: Vec<MethodDef>,
}

fn find<'a, T>(items: &'a [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'a T> {
    items.iter().find(|i| key(i).eq_ignore_ascii_case(name))
}

impl ClassDef {
    /// A property by name, case-insensitively (CIM names are case-insensitive).
    pub fn property(&self, name: &str) -> Option<&PropertyDef> {
        find(&self.properties, name, |p| &p.name)
    }
    /// A method by name, case-insensitively.
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
    /// A parameter by name, case-insensitively.
    pub fn parameter(&self, name: &str) -> Option<&ParameterDef> {
        find(&self.parameters, name, |p| &p.name)
    }
}

impl ParameterDef {
    /// A qualifier on the parameter by name, case-insensitively.
    pub fn qualifier(&self, name: &str) -> Option<&Qualifier> {
        find(&self.qualifiers, name, |q| &q.name)
    }
}

/// Where a qualifier sits, for [`crate::schema::Schema::is_propagated_qualifier`].
#[derive(Debug, Clone, Copy)]
pub enum QualifiedMember<'a> {
    /// A qualifier on the class itself.
    Class,
    /// A qualifier on the named property.
    Property(&'a str),
    /// A qualifier on the named method.
    Method(&'a str),
    /// (method, parameter)
    Parameter(&'a str, &'a str),
}
