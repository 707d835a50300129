//! Untyped values: VALUE text read before its type is known, then typed against the class.

use super::*;

/// A value as it came off the wire, before typing.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// No value element, or `VALUE.NULL`.
    Null,
    /// `<VALUE>` text.
    Scalar(String),
    /// `<VALUE.ARRAY>`; `None` = `VALUE.NULL` element.
    Array(Vec<Option<String>>),
    /// `<VALUE.REFERENCE>` (or a bare CLASSNAME / INSTANCENAME in a PARAMVALUE).
    Reference(ObjectPath),
    /// `<VALUE.REFARRAY>`.
    RefArray(Vec<Option<ObjectPath>>),
    /// An `<INSTANCE>` element given directly (DSP0230-style embedded parameter).
    Instance(Instance),
}

/// Parses a value element: VALUE, VALUE.ARRAY, VALUE.REFERENCE, VALUE.REFARRAY, VALUE.NULL.
pub fn parse_raw_value(node: Node) -> Result<RawValue> {
    parse_raw_value_at(node, 0)
}

pub(super) fn parse_raw_value_at(node: Node, depth: usize) -> Result<RawValue> {
    expect(
        &node,
        &[
            "VALUE",
            "VALUE.ARRAY",
            "VALUE.REFERENCE",
            "VALUE.REFARRAY",
            "VALUE.NULL",
        ],
    )?;
    Ok(match tag(&node) {
        "VALUE" => RawValue::Scalar(text_of(&node)),
        "VALUE.NULL" => RawValue::Null,
        "VALUE.ARRAY" => {
            let mut items = Vec::new();
            for c in elements(node) {
                if items.len() >= MAX_ITEMS {
                    return Err(CodecError::new(CodecErrorKind::TooMany {
                        what: "array elements",
                        max: MAX_ITEMS,
                    }));
                }
                expect(&c, &["VALUE", "VALUE.NULL"])?;
                items.push((tag(&c) == "VALUE").then(|| text_of(&c)));
            }
            RawValue::Array(items)
        }
        "VALUE.REFERENCE" => RawValue::Reference(parse_value_reference_at(node, depth)?),
        _ => {
            let mut items = Vec::new();
            for c in elements(node) {
                if items.len() >= MAX_ITEMS {
                    return Err(CodecError::new(CodecErrorKind::TooMany {
                        what: "array elements",
                        max: MAX_ITEMS,
                    }));
                }
                expect(&c, &["VALUE.REFERENCE", "VALUE.NULL"])?;
                items.push(if tag(&c) == "VALUE.NULL" {
                    None
                } else {
                    Some(parse_value_reference_at(c, depth)?)
                });
            }
            RawValue::RefArray(items)
        }
    })
}

/// Types a raw value. `embedded` = the wire or the definition says the string holds an
/// embedded instance: it is decoded (every producer variant, see [`crate::embedded`];
/// "" means none) and typed against cosnap's schema by its CLASSNAME when the schema
/// has that class, so e.g. an untyped `BackupIntent` arrives as `Uint16`.
///
/// Decision: `VALUE.NULL` elements inside arrays are dropped (a `Value::Array` cannot hold
/// NULL); a scalar where an array is expected is taken as a one-element array (wbemcli
/// sends a single value that way).
pub fn type_value(
    raw: RawValue,
    ty: CimType,
    is_array: bool,
    embedded: bool,
) -> Result<Option<Value>> {
    type_value_at(raw, ty, is_array, embedded, 0)
}

pub(super) fn type_value_at(
    raw: RawValue,
    ty: CimType,
    is_array: bool,
    embedded: bool,
    depth: usize,
) -> Result<Option<Value>> {
    let scalar =
        |s: String| -> Result<Option<Value>> {
            if embedded {
                Ok(crate::embedded::decode_nested(&s, depth + 1)?
                    .map(|i| Value::Instance(Box::new(i))))
            } else {
                parse_scalar(&s, ty).map(Some)
            }
        };
    Ok(match raw {
        RawValue::Null => None,
        RawValue::Scalar(s) if is_array => {
            if s.is_empty() && ty != CimType::String {
                Some(Value::Array(Vec::new()))
            } else {
                Some(Value::Array(scalar(s)?.into_iter().collect()))
            }
        }
        RawValue::Scalar(s) => scalar(s)?,
        RawValue::Array(items) => {
            if !is_array {
                return Err(CodecError::bad(
                    format!("a single {}", ty.name()),
                    "an array",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, s) in items.into_iter().enumerate() {
                if let Some(s) = s
                    && let Some(v) = scalar(s).map_err(|e| e.within(format!("element {i}")))?
                {
                    out.push(v);
                }
            }
            Some(Value::Array(out))
        }
        RawValue::Reference(p) => match (ty, is_array) {
            (CimType::Reference, false) => Some(Value::Reference(p)),
            (CimType::Reference, true) => Some(Value::Array(vec![Value::Reference(p)])),
            (CimType::String, false) => Some(Value::String(p.to_wmi_text())),
            _ => {
                return Err(CodecError::bad(
                    ty.name(),
                    &format!("reference {}", p.to_wmi_text()),
                ));
            }
        },
        RawValue::RefArray(items) => {
            if ty != CimType::Reference || !is_array {
                return Err(CodecError::bad(ty.name(), "an array of references"));
            }
            Some(Value::Array(
                items.into_iter().flatten().map(Value::Reference).collect(),
            ))
        }
        RawValue::Instance(i) => {
            if ty != CimType::String {
                return Err(CodecError::bad(
                    ty.name(),
                    &format!("an instance of {}", i.class_name),
                ));
            }
            let v = Value::Instance(Box::new(i));
            Some(if is_array { Value::Array(vec![v]) } else { v })
        }
    })
}

pub(super) fn has_qualifier(q: &[Qualifier], name: &str) -> bool {
    q.iter().any(|q| q.name.eq_ignore_ascii_case(name))
}

/// Types a parameter value against the method's definition. `wire_embedded` is true when
/// the PARAMVALUE carried `EmbeddedObject="instance"|"object"`; a definition qualified
/// `EmbeddedInstance` also decodes the string as an embedded instance.
pub fn type_for_parameter(
    raw: RawValue,
    def: &ParameterDef,
    wire_embedded: bool,
) -> Result<Option<Value>> {
    let embedded = def.ty == CimType::String
        && (wire_embedded || has_qualifier(&def.qualifiers, "EmbeddedInstance"));
    type_value(raw, def.ty, def.is_array, embedded).map_err(|e| e.within(def.name.clone()))
}

/// Types a property value against the class's definition (see [`type_for_parameter`]).
pub fn type_for_property(
    raw: RawValue,
    def: &PropertyDef,
    wire_embedded: bool,
) -> Result<Option<Value>> {
    let embedded = def.ty == CimType::String
        && (wire_embedded || has_qualifier(&def.qualifiers, "EmbeddedInstance"));
    type_value(raw, def.ty, def.is_array, embedded)
        .map_err(|e| e.within(format!("property {}", def.name)))
}
