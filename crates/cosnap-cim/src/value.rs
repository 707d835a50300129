//! Typed CIM values, properties and instances.

use crate::path::ObjectPath;

/// The CIM intrinsic data types (DSP0004), plus `Reference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CimType {
    Boolean,
    String,
    Char16,
    Uint8,
    Sint8,
    Uint16,
    Sint16,
    Uint32,
    Sint32,
    Uint64,
    Sint64,
    Real32,
    Real64,
    Datetime,
    Reference,
}

impl CimType {
    /// The CIM-XML / MOF type name (`uint16`, `string`, `reference`, …).
    pub fn name(self) -> &'static str {
        match self {
            CimType::Boolean => "boolean",
            CimType::String => "string",
            CimType::Char16 => "char16",
            CimType::Uint8 => "uint8",
            CimType::Sint8 => "sint8",
            CimType::Uint16 => "uint16",
            CimType::Sint16 => "sint16",
            CimType::Uint32 => "uint32",
            CimType::Sint32 => "sint32",
            CimType::Uint64 => "uint64",
            CimType::Sint64 => "sint64",
            CimType::Real32 => "real32",
            CimType::Real64 => "real64",
            CimType::Datetime => "datetime",
            CimType::Reference => "reference",
        }
    }

    /// Parses a type name case-insensitively; `ref` is accepted for `reference`.
    pub fn from_name(name: &str) -> Option<CimType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "boolean" => CimType::Boolean,
            "string" => CimType::String,
            "char16" => CimType::Char16,
            "uint8" => CimType::Uint8,
            "sint8" => CimType::Sint8,
            "uint16" => CimType::Uint16,
            "sint16" => CimType::Sint16,
            "uint32" => CimType::Uint32,
            "sint32" => CimType::Sint32,
            "uint64" => CimType::Uint64,
            "sint64" => CimType::Sint64,
            "real32" => CimType::Real32,
            "real64" => CimType::Real64,
            "datetime" => CimType::Datetime,
            "reference" | "ref" => CimType::Reference,
            _ => return None,
        })
    }
}

/// One CIM value. Arrays hold scalars of one type; `Instance` is an embedded instance
/// (a string property or parameter qualified `EmbeddedInstance`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Boolean(bool),
    String(String),
    Char16(char),
    Uint8(u8),
    Sint8(i8),
    Uint16(u16),
    Sint16(i16),
    Uint32(u32),
    Sint32(i32),
    Uint64(u64),
    Sint64(i64),
    Real32(f32),
    Real64(f64),
    /// DMTF datetime text (`yyyymmddHHMMSS.mmmmmmsUUU` or interval `ddddddddHHMMSS.mmmmmm:000`).
    Datetime(String),
    Reference(ObjectPath),
    Instance(Box<Instance>),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Datetime(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
    /// Any unsigned or signed integer that fits in a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint8(v) => Some(v.into()),
            Value::Uint16(v) => Some(v.into()),
            Value::Uint32(v) => Some(v.into()),
            Value::Uint64(v) => Some(v),
            Value::Sint8(v) => u64::try_from(v).ok(),
            Value::Sint16(v) => u64::try_from(v).ok(),
            Value::Sint32(v) => u64::try_from(v).ok(),
            Value::Sint64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_reference(&self) -> Option<&ObjectPath> {
        match self {
            Value::Reference(p) => Some(p),
            _ => None,
        }
    }
    pub fn as_instance(&self) -> Option<&Instance> {
        match self {
            Value::Instance(i) => Some(i),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A named, typed property. `value: None` is CIM NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub name: String,
    pub ty: CimType,
    pub is_array: bool,
    pub value: Option<Value>,
    /// Class name from an `EmbeddedInstance("…")` qualifier, when the string holds one.
    pub embedded_class: Option<String>,
}

impl Property {
    pub fn new(name: impl Into<String>, ty: CimType, value: Option<Value>) -> Self {
        let is_array = matches!(value, Some(Value::Array(_)));
        Self {
            name: name.into(),
            ty,
            is_array,
            value,
            embedded_class: None,
        }
    }
}

/// A CIM instance: its class, its properties in order, and (for instances a provider
/// serves) the object path that names it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instance {
    pub class_name: String,
    pub properties: Vec<Property>,
    pub path: Option<ObjectPath>,
}

impl Instance {
    pub fn new(class_name: impl Into<String>) -> Self {
        Self {
            class_name: class_name.into(),
            properties: Vec::new(),
            path: None,
        }
    }

    /// Property lookup by name, case-insensitively (CIM names are case-insensitive).
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The property's value, `None` when absent or NULL.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.property(name).and_then(|p| p.value.as_ref())
    }

    /// Sets (or adds) a property, keeping the first position it had.
    pub fn set(&mut self, name: &str, ty: CimType, value: Option<Value>) -> &mut Self {
        let prop = Property::new(name, ty, value);
        match self
            .properties
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
        {
            Some(p) => *p = prop,
            None => self.properties.push(prop),
        }
        self
    }

    /// Builder form of [`Instance::set`].
    pub fn with(mut self, name: &str, ty: CimType, value: Option<Value>) -> Self {
        self.set(name, ty, value);
        self
    }

    pub fn with_path(mut self, path: ObjectPath) -> Self {
        self.path = Some(path);
        self
    }
}
