//! Paths: object paths in their CIM-XML element forms.

use super::*;

/// `LOCALNAMESPACEPATH` → `root/virtualization/v2` (normalised).
pub fn parse_local_namespace_path(node: Node) -> Result<String> {
    expect(&node, &["LOCALNAMESPACEPATH"])?;
    let mut parts = Vec::new();
    for c in elements(node) {
        expect(&c, &["NAMESPACE"])?;
        if parts.len() >= 32 {
            return Err(CodecError::new(CodecErrorKind::TooMany {
                what: "namespace segments",
                max: 32,
            }));
        }
        parts.push(attr(&c, "NAME")?);
    }
    if parts.is_empty() {
        return Err(CodecError::other("<LOCALNAMESPACEPATH> has no NAMESPACE"));
    }
    Ok(crate::normalize_namespace(&parts.join("/")))
}

/// `NAMESPACEPATH` → (host, namespace).
pub fn parse_namespace_path(node: Node) -> Result<(String, String)> {
    expect(&node, &["NAMESPACEPATH"])?;
    let mut host = None;
    let mut ns = None;
    for c in elements(node) {
        match tag(&c) {
            "HOST" => host = Some(text_of(&c).trim().to_string()),
            _ => ns = Some(parse_local_namespace_path(c)?),
        }
    }
    match (host, ns) {
        (Some(h), Some(n)) => Ok((h, n)),
        _ => Err(CodecError::other(
            "<NAMESPACEPATH> needs HOST and LOCALNAMESPACEPATH",
        )),
    }
}

/// `INSTANCENAME` with `KEYBINDING`s (or the legacy single `KEYVALUE`/`VALUE.REFERENCE`).
///
/// Key values are typed from `TYPE` when present, else from `VALUETYPE`: string → String,
/// boolean → Boolean, numeric → `Sint64` when negative, `Uint64` when not, `Real64` with a
/// fraction. Type them against the class with [`type_path_keys`].
pub fn parse_instance_name(node: Node) -> Result<ObjectPath> {
    parse_instance_name_at(node, 0)
}

pub(super) fn parse_instance_name_at(node: Node, depth: usize) -> Result<ObjectPath> {
    expect(&node, &["INSTANCENAME"])?;
    let mut path = ObjectPath::new(attr(&node, "CLASSNAME")?);
    for c in elements(node) {
        if path.keys.len() >= crate::path_text::MAX_KEYS {
            return Err(CodecError::new(CodecErrorKind::TooMany {
                what: "key bindings",
                max: crate::path_text::MAX_KEYS,
            }));
        }
        match tag(&c) {
            "KEYBINDING" => {
                check_attr_count(&c)?;
                let name = attr(&c, "NAME")?;
                let v = single_child(c)?;
                let value = match tag(&v) {
                    "KEYVALUE" => parse_keyvalue(v),
                    "VALUE.REFERENCE" => {
                        parse_value_reference_at(v, depth + 1).map(Value::Reference)
                    }
                    _ => Err(CodecError::new(CodecErrorKind::UnexpectedElement {
                        expected: "KEYVALUE or VALUE.REFERENCE".into(),
                        found: tag(&v).to_string(),
                    })),
                }
                .map_err(|e| e.within(format!("key {name}")))?;
                path.keys.push((name.to_string(), value));
            }
            // Single unnamed key (DSP0201 allows it); named after nothing, kept as "".
            "KEYVALUE" => path.keys.push((String::new(), parse_keyvalue(c)?)),
            "VALUE.REFERENCE" => path.keys.push((
                String::new(),
                Value::Reference(parse_value_reference_at(c, depth + 1)?),
            )),
            _ => expect(&c, &["KEYBINDING"])?,
        }
    }
    Ok(path)
}

pub(super) fn parse_keyvalue(node: Node) -> Result<Value> {
    check_attr_count(&node)?;
    let text = text_of(&node);
    if let Some(ty) = node.attribute("TYPE").filter(|t| !t.is_empty()) {
        let ty = CimType::from_name(ty).ok_or_else(|| CodecError::bad("a CIM type name", ty))?;
        return parse_scalar(&text, ty);
    }
    match node.attribute("VALUETYPE").unwrap_or("string") {
        "string" => Ok(Value::String(text)),
        "boolean" => parse_scalar(&text, CimType::Boolean),
        "numeric" => {
            let t = text.trim();
            if t.starts_with('-') {
                parse_scalar(t, CimType::Sint64).or_else(|_| parse_scalar(t, CimType::Real64))
            } else {
                parse_scalar(t, CimType::Uint64).or_else(|_| parse_scalar(t, CimType::Real64))
            }
        }
        other => Err(CodecError::bad(
            "VALUETYPE string, boolean or numeric",
            other,
        )),
    }
}

/// The path inside a `VALUE.REFERENCE`: INSTANCEPATH (host ignored), LOCALINSTANCEPATH,
/// INSTANCENAME, CLASSPATH, LOCALCLASSPATH or CLASSNAME.
pub fn parse_value_reference(node: Node) -> Result<ObjectPath> {
    parse_value_reference_at(node, 0)
}

pub(super) fn parse_value_reference_at(node: Node, depth: usize) -> Result<ObjectPath> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new(CodecErrorKind::TooDeep { max: MAX_DEPTH }));
    }
    expect(&node, &["VALUE.REFERENCE"])?;
    parse_path_element_at(single_child(node)?, depth)
}

/// Any of the six path elements (see [`parse_value_reference`]). The HOST of
/// INSTANCEPATH/CLASSPATH is dropped: cosnap serves one host and clients disagree on it.
pub fn parse_path_element(node: Node) -> Result<ObjectPath> {
    parse_path_element_at(node, 0)
}

pub(super) fn parse_path_element_at(node: Node, depth: usize) -> Result<ObjectPath> {
    expect(
        &node,
        &[
            "INSTANCEPATH",
            "LOCALINSTANCEPATH",
            "INSTANCENAME",
            "CLASSPATH",
            "LOCALCLASSPATH",
            "CLASSNAME",
        ],
    )?;
    match tag(&node) {
        "INSTANCENAME" => parse_instance_name_at(node, depth),
        "CLASSNAME" => Ok(ObjectPath::new(attr(&node, "NAME")?)),
        t => {
            let mut ns = None;
            let mut path = None;
            for c in elements(node) {
                match tag(&c) {
                    "NAMESPACEPATH" => ns = Some(parse_namespace_path(c)?.1),
                    "LOCALNAMESPACEPATH" => ns = Some(parse_local_namespace_path(c)?),
                    "INSTANCENAME" if t.ends_with("INSTANCEPATH") => {
                        path = Some(parse_instance_name_at(c, depth)?)
                    }
                    "CLASSNAME" if t.ends_with("CLASSPATH") => {
                        path = Some(ObjectPath::new(attr(&c, "NAME")?))
                    }
                    other => {
                        return Err(CodecError::new(CodecErrorKind::UnexpectedElement {
                            expected: format!("the parts of {t}"),
                            found: other.to_string(),
                        }));
                    }
                }
            }
            match (ns, path) {
                (Some(ns), Some(mut p)) => {
                    p.namespace = Some(ns);
                    Ok(p)
                }
                _ => Err(CodecError::other(format!("<{t}> is incomplete"))),
            }
        }
    }
}

/// Types a path's key values against the class (e.g. a `Uint64` key to `Uint16`, a
/// string key holding path text to a reference). Keys the class lacks are an error.
pub fn type_path_keys(path: &mut ObjectPath, class: &ClassDef) -> Result<()> {
    for (name, value) in &mut path.keys {
        let def = class
            .property(name)
            .ok_or_else(|| CodecError::other(format!("class {} has no key {name}", class.name)))?;
        *name = def.name.clone();
        let v = std::mem::replace(value, Value::Boolean(false));
        *value = coerce_value(v, def.ty).map_err(|e| e.within(format!("key {}", def.name)))?;
    }
    Ok(())
}
