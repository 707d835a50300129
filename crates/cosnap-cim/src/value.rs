//! Typed CIM values, properties and instances.

use crate::path::ObjectPath;

/// The CIM intrinsic data types (DSP0004), plus `Reference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CimType {
    /// `boolean`.
    Boolean,
    /// `string`.
    String,
    /// `char16`: one UCS-2 character.
    Char16,
    /// `uint8`.
    Uint8,
    /// `sint8`.
    Sint8,
    /// `uint16`.
    Uint16,
    /// `sint16`.
    Sint16,
    /// `uint32`.
    Uint32,
    /// `sint32`.
    Sint32,
    /// `uint64`.
    Uint64,
    /// `sint64`.
    Sint64,
    /// `real32`: an IEEE 754 single.
    Real32,
    /// `real64`: an IEEE 754 double.
    Real64,
    /// `datetime`: a timestamp or an interval in DMTF text form.
    Datetime,
    /// `reference`: an object path naming another instance.
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
    /// A `boolean` value.
    Boolean(bool),
    /// A `string` value.
    String(String),
    /// A `char16` value.
    Char16(char),
    /// A `uint8` value.
    Uint8(u8),
    /// A `sint8` value.
    Sint8(i8),
    /// A `uint16` value.
    Uint16(u16),
    /// A `sint16` value.
    Sint16(i16),
    /// A `uint32` value.
    Uint32(u32),
    /// A `sint32` value.
    Sint32(i32),
    /// A `uint64` value.
    Uint64(u64),
    /// A `sint64` value.
    Sint64(i64),
    /// A `real32` value.
    Real32(f32),
    /// A `real64` value.
    Real64(f64),
    /// DMTF datetime text (`yyyymmddHHMMSS.mmmmmmsUUU` or interval `ddddddddHHMMSS.mmmmmm:000`).
    Datetime(String),
    /// A reference: the path of another instance.
    Reference(ObjectPath),
    /// An embedded instance, carried in a string qualified `EmbeddedInstance`.
    Instance(Box<Instance>),
    /// An array of scalars of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The text of a string or datetime value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Datetime(s) => Some(s),
            _ => None,
        }
    }
    /// The value of a boolean.
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
    /// The path a reference value holds.
    pub fn as_reference(&self) -> Option<&ObjectPath> {
        match self {
            Value::Reference(p) => Some(p),
            _ => None,
        }
    }
    /// The instance an embedded-instance value holds.
    pub fn as_instance(&self) -> Option<&Instance> {
        match self {
            Value::Instance(i) => Some(i),
            _ => None,
        }
    }
    /// The elements of an array value.
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
    /// The property's name as its class declares it.
    pub name: String,
    /// The property's CIM type (element type for arrays).
    pub ty: CimType,
    /// Whether the property holds an array of `ty`.
    pub is_array: bool,
    /// The property's value; `None` is CIM NULL.
    pub value: Option<Value>,
    /// Class name from an `EmbeddedInstance("…")` qualifier, when the string holds one.
    pub embedded_class: Option<String>,
}

impl Property {
    /// A property with no embedded class; `is_array` follows the value given.
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
    /// The name of the instance's class.
    pub class_name: String,
    /// The instance's properties, in the order they were set.
    pub properties: Vec<Property>,
    /// The object path naming the instance, when it has one.
    pub path: Option<ObjectPath>,
}

impl Instance {
    /// An instance of the class with no properties and no path.
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

    /// Sets the object path naming the instance (builder form).
    pub fn with_path(mut self, path: ObjectPath) -> Self {
        self.path = Some(path);
        self
    }
}
