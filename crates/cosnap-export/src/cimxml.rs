//! The CIM-XML (DSP0201) form of the instances a package keeps: a VM's system, its settings
//! and resource settings at the snapshot, the snapshot's settings, the collection.
//!
//! A package file is `<CIM><DECLARATION><DECLGROUP>` with one `<VALUE.OBJECT><INSTANCE>`
//! per instance, so any CIM-XML reader can read it. Kept inside this crate (rather than
//! using the server's codec) so a package's bytes depend only on the package format.
//! Embedded instances are stored as escaped CIM-XML text with `EmbeddedObject="instance"`;
//! references as `VALUE.REFERENCE/INSTANCENAME` with key bindings.

use std::fmt::Write as _;

use cosnap_cim::{CimType, Instance, ObjectPath, Property, Value};

/// Escapes text for XML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all are written as U+FFFD rather than
            // producing a file no parser accepts.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// One whole package file holding `instances`.
pub fn document(instances: &[&Instance]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CIM CIMVERSION=\"2.0\" DTDVERSION=\"2.4\">\n<DECLARATION>\n<DECLGROUP>\n",
    );
    for inst in instances {
        s.push_str("<VALUE.OBJECT>\n");
        s.push_str(&instance(inst));
        s.push_str("\n</VALUE.OBJECT>\n");
    }
    s.push_str("</DECLGROUP>\n</DECLARATION>\n</CIM>\n");
    s
}

/// One `<INSTANCE>` element.
pub fn instance(inst: &Instance) -> String {
    let mut s = format!("<INSTANCE CLASSNAME=\"{}\">", esc(&inst.class_name));
    for p in &inst.properties {
        property(&mut s, p);
    }
    s.push_str("</INSTANCE>");
    s
}

fn scalar_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Value::String(x) | Value::Datetime(x) => x.clone(),
        Value::Char16(c) => c.to_string(),
        Value::Uint8(x) => x.to_string(),
        Value::Sint8(x) => x.to_string(),
        Value::Uint16(x) => x.to_string(),
        Value::Sint16(x) => x.to_string(),
        Value::Uint32(x) => x.to_string(),
        Value::Sint32(x) => x.to_string(),
        Value::Uint64(x) => x.to_string(),
        Value::Sint64(x) => x.to_string(),
        Value::Real32(x) => x.to_string(),
        Value::Real64(x) => x.to_string(),
        Value::Instance(i) => instance(i),
        Value::Reference(_) | Value::Array(_) => return None,
    })
}

fn instance_name(s: &mut String, p: &ObjectPath) {
    let _ = write!(s, "<INSTANCENAME CLASSNAME=\"{}\">", esc(&p.class_name));
    for (k, v) in &p.keys {
        let (ty, text) = match v {
            Value::Boolean(_) => ("boolean", scalar_text(v).unwrap_or_default()),
            Value::String(_) | Value::Datetime(_) | Value::Char16(_) => {
                ("string", scalar_text(v).unwrap_or_default())
            }
            other => ("numeric", scalar_text(other).unwrap_or_default()),
        };
        let _ = write!(
            s,
            "<KEYBINDING NAME=\"{}\"><KEYVALUE VALUETYPE=\"{ty}\">{}</KEYVALUE></KEYBINDING>",
            esc(k),
            esc(&text)
        );
    }
    s.push_str("</INSTANCENAME>");
}

fn property(s: &mut String, p: &Property) {
    let name = esc(&p.name);
    if p.ty == CimType::Reference {
        let _ = write!(s, "<PROPERTY.REFERENCE NAME=\"{name}\">");
        if let Some(Value::Reference(path)) = &p.value {
            s.push_str("<VALUE.REFERENCE>");
            instance_name(s, path);
            s.push_str("</VALUE.REFERENCE>");
        }
        s.push_str("</PROPERTY.REFERENCE>");
        return;
    }
    let embedded = matches!(&p.value, Some(Value::Instance(_)))
        || matches!(&p.value, Some(Value::Array(a)) if a.iter().any(|v| matches!(v, Value::Instance(_))));
    let emb = if embedded {
        " EmbeddedObject=\"instance\""
    } else {
        ""
    };
    // Embedded instances travel as strings on the wire (DSP0201 §3.2.6).
    let ty = if embedded { "string" } else { p.ty.name() };
    if p.is_array || matches!(p.value, Some(Value::Array(_))) {
        let _ = write!(s, "<PROPERTY.ARRAY NAME=\"{name}\" TYPE=\"{ty}\"{emb}>");
        if let Some(Value::Array(items)) = &p.value {
            s.push_str("<VALUE.ARRAY>");
            for item in items {
                match scalar_text(item) {
                    Some(t) => {
                        let _ = write!(s, "<VALUE>{}</VALUE>", esc(&t));
                    }
                    None => s.push_str("<VALUE.NULL/>"),
                }
            }
            s.push_str("</VALUE.ARRAY>");
        }
        s.push_str("</PROPERTY.ARRAY>");
    } else {
        let _ = write!(s, "<PROPERTY NAME=\"{name}\" TYPE=\"{ty}\"{emb}>");
        if let Some(t) = p.value.as_ref().and_then(scalar_text) {
            let _ = write!(s, "<VALUE>{}</VALUE>", esc(&t));
        }
        s.push_str("</PROPERTY>");
    }
}

/// Reads every `INSTANCE` under `VALUE.OBJECT` of a package file.
pub fn parse_document(text: &str) -> Result<Vec<Instance>, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for node in doc.descendants().filter(|n| n.has_tag_name("VALUE.OBJECT")) {
        let inst = node
            .children()
            .find(|c| c.has_tag_name("INSTANCE"))
            .ok_or_else(|| "VALUE.OBJECT without INSTANCE".to_string())?;
        out.push(parse_instance_node(inst)?);
    }
    Ok(out)
}

/// Reads one `<INSTANCE>` element's text.
pub fn parse_instance(text: &str) -> Result<Instance, String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !root.has_tag_name("INSTANCE") {
        return Err(format!(
            "expected INSTANCE, found {}",
            root.tag_name().name()
        ));
    }
    parse_instance_node(root)
}

fn parse_scalar(ty: CimType, text: &str, embedded: bool) -> Result<Value, String> {
    let bad = || format!("{text:?} is not a valid {}", ty.name());
    let t = text.trim();
    Ok(match ty {
        _ if embedded => Value::Instance(Box::new(parse_instance(text)?)),
        CimType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(bad()),
        },
        CimType::String => Value::String(text.to_string()),
        CimType::Datetime => Value::Datetime(t.to_string()),
        CimType::Char16 => Value::Char16(text.chars().next().ok_or_else(bad)?),
        CimType::Uint8 => Value::Uint8(t.parse().map_err(|_| bad())?),
        CimType::Sint8 => Value::Sint8(t.parse().map_err(|_| bad())?),
        CimType::Uint16 => Value::Uint16(t.parse().map_err(|_| bad())?),
        CimType::Sint16 => Value::Sint16(t.parse().map_err(|_| bad())?),
        CimType::Uint32 => Value::Uint32(t.parse().map_err(|_| bad())?),
        CimType::Sint32 => Value::Sint32(t.parse().map_err(|_| bad())?),
        CimType::Uint64 => Value::Uint64(t.parse().map_err(|_| bad())?),
        CimType::Sint64 => Value::Sint64(t.parse().map_err(|_| bad())?),
        CimType::Real32 => Value::Real32(t.parse().map_err(|_| bad())?),
        CimType::Real64 => Value::Real64(t.parse().map_err(|_| bad())?),
        CimType::Reference => return Err("reference in a VALUE".into()),
    })
}

fn parse_instance_node(node: roxmltree::Node<'_, '_>) -> Result<Instance, String> {
    let class = node
        .attribute("CLASSNAME")
        .ok_or("INSTANCE without CLASSNAME")?;
    let mut inst = Instance::new(class);
    for p in node.children().filter(|c| c.is_element()) {
        let name = p
            .attribute("NAME")
            .ok_or("PROPERTY without NAME")?
            .to_string();
        let embedded =
            p.attribute("EmbeddedObject").is_some() || p.attribute("EMBEDDEDOBJECT").is_some();
        match p.tag_name().name() {
            "PROPERTY.REFERENCE" => {
                let value = match p.descendants().find(|c| c.has_tag_name("INSTANCENAME")) {
                    Some(iname) => {
                        let mut path =
                            ObjectPath::new(iname.attribute("CLASSNAME").unwrap_or_default());
                        for kb in iname.children().filter(|c| c.has_tag_name("KEYBINDING")) {
                            let k = kb.attribute("NAME").unwrap_or_default().to_string();
                            let kv = kb.children().find(|c| c.has_tag_name("KEYVALUE"));
                            let text = kv.and_then(|n| n.text()).unwrap_or_default();
                            let v = match kv.and_then(|n| n.attribute("VALUETYPE")) {
                                Some("boolean") => {
                                    Value::Boolean(text.eq_ignore_ascii_case("true"))
                                }
                                Some("numeric") => match text.parse::<u64>() {
                                    Ok(n) => Value::Uint64(n),
                                    Err(_) => Value::Sint64(
                                        text.parse()
                                            .map_err(|_| format!("bad numeric key {text:?}"))?,
                                    ),
                                },
                                _ => Value::String(text.to_string()),
                            };
                            path.keys.push((k, v));
                        }
                        Some(Value::Reference(path))
                    }
                    None => None,
                };
                let mut prop = Property::new(name, CimType::Reference, value);
                prop.is_array = false;
                inst.properties.push(prop);
            }
            "PROPERTY" | "PROPERTY.ARRAY" => {
                let ty_name = p
                    .attribute("TYPE")
                    .ok_or_else(|| format!("property {name} without TYPE"))?;
                let ty = CimType::from_name(ty_name)
                    .ok_or_else(|| format!("unknown CIM type {ty_name}"))?;
                let is_array = p.has_tag_name("PROPERTY.ARRAY");
                let value = if is_array {
                    match p.children().find(|c| c.has_tag_name("VALUE.ARRAY")) {
                        Some(arr) => {
                            let mut items = Vec::new();
                            for v in arr.children().filter(|c| c.is_element()) {
                                if v.has_tag_name("VALUE") {
                                    items.push(parse_scalar(
                                        ty,
                                        v.text().unwrap_or_default(),
                                        embedded,
                                    )?);
                                }
                            }
                            Some(Value::Array(items))
                        }
                        None => None,
                    }
                } else {
                    match p.children().find(|c| c.has_tag_name("VALUE")) {
                        Some(v) => Some(parse_scalar(ty, v.text().unwrap_or_default(), embedded)?),
                        None => None,
                    }
                };
                let mut prop = Property::new(name, ty, value);
                prop.is_array = is_array;
                inst.properties.push(prop);
            }
            _ => {}
        }
    }
    Ok(inst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let inner = Instance::new("Msvm_Inner").with("X", CimType::Uint16, Some(Value::Uint16(7)));
        let mut inst = Instance::new("Msvm_VirtualSystemSettingData")
            .with(
                "InstanceID",
                CimType::String,
                Some(Value::String("Microsoft:<a&b>\"'".into())),
            )
            .with(
                "Notes",
                CimType::String,
                Some(Value::Array(vec![
                    Value::String("one".into()),
                    Value::String("".into()),
                ])),
            )
            .with(
                "VirtualQuantity",
                CimType::Uint64,
                Some(Value::Uint64(u64::MAX)),
            )
            .with("Weight", CimType::Sint32, Some(Value::Sint32(-5)))
            .with("On", CimType::Boolean, Some(Value::Boolean(true)))
            .with(
                "Created",
                CimType::Datetime,
                Some(Value::Datetime("20260101000000.000000+000".into())),
            )
            .with("Null", CimType::String, None)
            .with(
                "Emb",
                CimType::String,
                Some(Value::Instance(Box::new(inner))),
            )
            .with(
                "Ref",
                CimType::Reference,
                Some(Value::Reference(
                    ObjectPath::new("Msvm_ComputerSystem")
                        .with_key("Name", Value::String("vm-1".into())),
                )),
            );
        inst.properties
            .iter_mut()
            .find(|p| p.name == "Notes")
            .unwrap()
            .is_array = true;
        let text = document(&[&inst]);
        let back = parse_document(&text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], inst);
    }
}
