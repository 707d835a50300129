//! Instances: INSTANCE elements read and typed.

use super::*;

/// Parses an `<INSTANCE>`. With `class`, properties that lack `TYPE` take the class's
/// type, names take the class's spelling (matched case-insensitively) and values are
/// coerced to the class's type (range-checked). Without it, a missing `TYPE` means
/// string. `QUALIFIER` children and unknown extra attributes are ignored (WMI flavour);
/// WMI system properties (`__PATH`, `__CLASS`, …) are dropped.
pub fn parse_instance(node: Node, class: Option<&ClassDef>) -> Result<Instance> {
    parse_instance_at(node, class, 0)
}

pub(crate) fn parse_instance_at(
    node: Node,
    class: Option<&ClassDef>,
    depth: usize,
) -> Result<Instance> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new(CodecErrorKind::TooDeep { max: MAX_DEPTH }));
    }
    expect(&node, &["INSTANCE"])?;
    let class_name = attr(&node, "CLASSNAME")?;
    let mut inst = Instance::new(class_name);
    for c in elements(node) {
        if inst.properties.len() >= MAX_ITEMS {
            return Err(CodecError::new(CodecErrorKind::TooMany {
                what: "properties",
                max: MAX_ITEMS,
            }));
        }
        let kind = tag(&c);
        if !matches!(kind, "PROPERTY" | "PROPERTY.ARRAY" | "PROPERTY.REFERENCE") {
            // QUALIFIER and WMI extension elements (PROPERTY.OBJECT, METHOD, …) carry nothing we use.
            continue;
        }
        check_attr_count(&c)?;
        let name = attr(&c, "NAME")?;
        if name.starts_with("__") {
            continue;
        }
        let prop =
            parse_property_at(c, class, depth).map_err(|e| e.within(format!("property {name}")))?;
        match inst
            .properties
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(&prop.name))
        {
            Some(p) => *p = prop,
            None => inst.properties.push(prop),
        }
    }
    Ok(inst)
}

pub(super) fn parse_property_at(
    node: Node,
    class: Option<&ClassDef>,
    depth: usize,
) -> Result<Property> {
    let kind = tag(&node);
    let name = attr(&node, "NAME")?;
    let def = class.and_then(|c| c.property(name));
    let is_array =
        kind == "PROPERTY.ARRAY" || (kind == "PROPERTY" && def.is_some_and(|d| d.is_array));
    let wire_ty = match (kind, node.attribute("TYPE")) {
        ("PROPERTY.REFERENCE", _) => Some(CimType::Reference),
        (_, Some(t)) if !t.is_empty() => {
            Some(CimType::from_name(t).ok_or_else(|| CodecError::bad("a CIM type name", t))?)
        }
        _ => None,
    };
    let ty = wire_ty.or(def.map(|d| d.ty)).unwrap_or(CimType::String);
    let embedded_attr = attr_ci(&node, "EmbeddedObject").is_some_and(|v| !v.is_empty());
    let embedded_def = def.is_some_and(|d| has_qualifier(&d.qualifiers, "EmbeddedInstance"));
    let mut raw = RawValue::Null;
    for c in elements(node) {
        match tag(&c) {
            "QUALIFIER" => {}
            _ => raw = parse_raw_value_at(c, depth)?,
        }
    }
    let embedded = ty == CimType::String && embedded_attr;
    let mut value = type_value_at(raw, ty, is_array, embedded, depth)?;
    let mut out_ty = ty;
    if let Some(d) = def
        && (d.ty != ty || embedded_def)
    {
        value = match value {
            // An embedded-instance string in a class that says so: decode it.
            Some(Value::String(s)) if embedded_def && d.ty == CimType::String => {
                crate::embedded::decode_nested(&s, depth + 1)?.map(|i| Value::Instance(Box::new(i)))
            }
            Some(v) => Some(coerce_value(v, d.ty)?),
            None => None,
        };
        out_ty = d.ty;
    }
    let mut prop = Property::new(def.map(|d| d.name.as_str()).unwrap_or(name), out_ty, value);
    prop.is_array = def.map(|d| d.is_array).unwrap_or(is_array);
    if embedded || embedded_def {
        prop.embedded_class = def
            .and_then(|d| {
                d.qualifiers
                    .iter()
                    .find(|q| q.name.eq_ignore_ascii_case("EmbeddedInstance"))
            })
            .and_then(|q| q.value.as_ref())
            .and_then(|v| v.as_str().map(str::to_string))
            .or_else(|| match &prop.value {
                Some(Value::Instance(i)) => Some(i.class_name.clone()),
                _ => None,
            });
    }
    Ok(prop)
}

/// One `PARAMVALUE` of a METHODCALL, untyped.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamValue {
    /// The parameter's name (`NAME` attribute).
    pub name: String,
    /// `PARAMTYPE` when the client sent one (`reference` → [`CimType::Reference`]).
    pub param_type: Option<CimType>,
    /// `EmbeddedObject`/`EMBEDDEDOBJECT` was `instance` or `object`.
    pub embedded: bool,
    /// The parameter's value, not yet typed against the method definition.
    pub value: RawValue,
}

impl ParamValue {
    /// Types the value: against the method's parameter when known, else by `PARAMTYPE`,
    /// else as a string.
    pub fn typed(self, def: Option<&ParameterDef>) -> Result<Option<Value>> {
        match def {
            Some(d) => type_for_parameter(self.value, d, self.embedded),
            None => {
                let ty = self.param_type.unwrap_or(match self.value {
                    RawValue::Reference(_) | RawValue::RefArray(_) => CimType::Reference,
                    _ => CimType::String,
                });
                let is_array = matches!(self.value, RawValue::Array(_) | RawValue::RefArray(_));
                type_value(
                    self.value,
                    ty,
                    is_array,
                    self.embedded && ty == CimType::String,
                )
                .map_err(|e| e.within(self.name.clone()))
            }
        }
    }
}

/// Parses a `PARAMVALUE` (or `IPARAMVALUE`): NAME, optional PARAMTYPE and EmbeddedObject,
/// and one of VALUE, VALUE.ARRAY, VALUE.REFERENCE, VALUE.REFARRAY, VALUE.NULL, INSTANCE,
/// INSTANCENAME, CLASSNAME (or nothing = NULL).
pub fn parse_paramvalue(node: Node) -> Result<ParamValue> {
    expect(&node, &["PARAMVALUE", "IPARAMVALUE"])?;
    let name = attr(&node, "NAME")?.to_string();
    let param_type = match node.attribute("PARAMTYPE") {
        Some(t) => Some(
            CimType::from_name(t)
                .ok_or_else(|| CodecError::bad("a PARAMTYPE", t).within(name.clone()))?,
        ),
        None => None,
    };
    let embedded = attr_ci(&node, "EmbeddedObject")
        .is_some_and(|v| v.eq_ignore_ascii_case("instance") || v.eq_ignore_ascii_case("object"));
    let mut value = RawValue::Null;
    if let Some(c) = elements(node).next() {
        value = match tag(&c) {
            "INSTANCE" => parse_instance(c, None).map(RawValue::Instance),
            "INSTANCENAME" => parse_instance_name(c).map(RawValue::Reference),
            "CLASSNAME" => attr(&c, "NAME").map(|n| RawValue::Reference(ObjectPath::new(n))),
            _ => parse_raw_value(c),
        }
        .map_err(|e| e.within(name.clone()))?;
    }
    Ok(ParamValue {
        name,
        param_type,
        embedded,
        value,
    })
}
