//! The CIM-XML (DSP0201) form of the instances a package keeps: a VM's system, its settings
//! and resource settings at the snapshot, the snapshot's settings, the collection.
//!
//! A package file is `<CIM><DECLARATION><DECLGROUP>` with one `<VALUE.OBJECT><INSTANCE>`
//! per instance, so any CIM-XML reader can read it. Only the writer is here, so a
//! package's bytes depend only on the package format; packages are read back with
//! `cosnap-cim`'s bounded reader ([`crate::read::parse_instances`]).
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
        // The reader names the embedded instance's class, as the server's does.
        inst.properties
            .iter_mut()
            .find(|p| p.name == "Emb")
            .unwrap()
            .embedded_class = Some("Msvm_Inner".into());
        let text = document(&[&inst]);
        let back = crate::read::parse_instances(&text).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], inst);
    }
}
