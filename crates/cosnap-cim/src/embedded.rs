//! Embedded instances: the CIM-XML `<INSTANCE>` text that string parameters such as
//! `SnapshotSettings` and `ExportSettingData` carry (docs/decisions.md, "Class mappings").
//!
//! Accepted producer variants (one decoder for all):
//! * plain CIM DTD 2.0 text `<INSTANCE CLASSNAME="…">…` (System.Management `GetText(CimDtd20)`,
//!   SWbem `GetText_(1)`, pywbem);
//! * with an XML declaration (any `encoding=` label; the text is already decoded);
//! * wrapped in `<VALUE.OBJECT>`, `<VALUE.NAMEDINSTANCE>` or `<VALUE.OBJECTWITHPATH>`, or several
//!   top-level elements (a class followed by the instance): the first INSTANCE wins;
//! * WMI DTD 2.0 flavour (`GetText(2)`): extra attributes, QUALIFIER elements, `PROPAGATED`,
//!   `CLASSORIGIN`, `xml:lang`, system properties `__PATH`/`__CLASS`/… (dropped), PROPERTY
//!   without TYPE (typed from the class definition when given, else string);
//! * UTF-16LE bytes with or without BOM (PowerShell `CimSerializer` output decoded with
//!   `[Text.Encoding]::Unicode`), UTF-16BE with BOM, UTF-8 with or without BOM
//!   ([`decode_bytes`]); trailing NULs are ignored;
//! * the whole text inside a CDATA section;
//! * property names in any case; booleans in any case;
//! * the empty (or all-whitespace) string = no instance (`Ok(None)`).
//!
//! Bounds: at most [`MAX_EMBEDDED_BYTES`] of text, DTDs refused (so entity-expansion bombs
//! fail before any expansion), nesting of embedded-in-embedded at most
//! [`crate::xml::MAX_DEPTH`].

use crate::class::ClassDef;
use crate::value::Instance;
use crate::xml::{self, CodecError, CodecErrorKind};

/// Largest embedded-instance text accepted (bytes of UTF-8, or of UTF-16 input).
pub const MAX_EMBEDDED_BYTES: usize = 1 << 20;

/// Decodes embedded-instance text. `class` (when the caller knows the expected class)
/// types properties that come without TYPE and coerces values to the declared types.
pub fn decode_str(text: &str, class: Option<&ClassDef>) -> Result<Option<Instance>, CodecError> {
    decode_str_at(text, class, 0)
}

/// [`decode_str`] that looks the class up in cosnap's schema by the instance's CLASSNAME.
pub fn decode_with_schema(text: &str) -> Result<Option<Instance>, CodecError> {
    decode_inner(text, Lookup::Schema, 0)
}

pub(crate) fn decode_str_at(
    text: &str,
    class: Option<&ClassDef>,
    depth: usize,
) -> Result<Option<Instance>, CodecError> {
    decode_inner(text, class.map_or(Lookup::None, Lookup::Given), depth)
}

/// Decodes nested embedded text (a parameter or property value), typing it against
/// cosnap's schema by its CLASSNAME when the class is known.
pub(crate) fn decode_nested(text: &str, depth: usize) -> Result<Option<Instance>, CodecError> {
    decode_inner(text, Lookup::Schema, depth)
}

#[derive(Clone, Copy)]
enum Lookup<'a> {
    None,
    Given(&'a ClassDef),
    Schema,
}

fn decode_inner(text: &str, lookup: Lookup, depth: usize) -> Result<Option<Instance>, CodecError> {
    if depth > xml::MAX_DEPTH {
        return Err(CodecError::new(CodecErrorKind::TooDeep {
            max: xml::MAX_DEPTH,
        }));
    }
    if text.len() > MAX_EMBEDDED_BYTES {
        return Err(CodecError::new(CodecErrorKind::TooLarge {
            len: text.len(),
            max: MAX_EMBEDDED_BYTES,
        }));
    }
    let mut t = text.trim_matches(|c: char| c.is_whitespace() || c == '\0' || c == '\u{FEFF}');
    if t.is_empty() {
        return Ok(None);
    }
    if let Some(inner) = t
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
    {
        t = inner.trim();
    }
    // Drop an XML declaration: its encoding label describes bytes we no longer have.
    if t.starts_with("<?xml") {
        let end = t.find("?>").ok_or_else(|| {
            CodecError::new(CodecErrorKind::Xml("unterminated XML declaration".into()))
        })?;
        t = t[end + 2..].trim_start();
    }
    // A synthetic root lets several top-level elements through (class + instance).
    // A DOCTYPE ends up inside it and is refused by the parser, as it should be.
    let wrapped = format!("<cosnap-embedded>{t}</cosnap-embedded>");
    let doc = xml::parse_document_limited(&wrapped, MAX_EMBEDDED_BYTES + 64)?;
    let node = find_instance(doc.root_element(), 0)
        .ok_or_else(|| CodecError::other("the embedded text holds no <INSTANCE> element"))?;
    let class_name = xml::attr(&node, "CLASSNAME")?;
    let schema_class;
    let class = match lookup {
        Lookup::None => None,
        Lookup::Given(c) => Some(c),
        Lookup::Schema => {
            schema_class = crate::schema::schema().class(class_name);
            schema_class
        }
    };
    xml::parse_instance_at(node, class, depth).map(Some)
}

fn find_instance<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    level: usize,
) -> Option<roxmltree::Node<'a, 'i>> {
    if level > 4 {
        return None;
    }
    for c in xml::elements(node) {
        match xml::tag(&c) {
            "INSTANCE" => return Some(c),
            "VALUE.OBJECT"
            | "VALUE.NAMEDINSTANCE"
            | "VALUE.OBJECTWITHPATH"
            | "VALUE.OBJECTWITHLOCALPATH"
            | "VALUE"
            | "CIM"
            | "DECLARATION"
            | "DECLGROUP"
            | "DECLGROUP.WITHNAME"
            | "DECLGROUP.WITHPATH" => {
                if let Some(i) = find_instance(c, level + 1) {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Decodes embedded-instance bytes: UTF-8 (BOM optional), UTF-16LE (BOM optional: detected
/// by NUL high bytes, as PowerShell's `[Text.Encoding]::Unicode` produces) or UTF-16BE with BOM.
pub fn decode_bytes(
    bytes: &[u8],
    class: Option<&ClassDef>,
) -> Result<Option<Instance>, CodecError> {
    let text = bytes_to_text(bytes)?;
    decode_str(&text, class)
}

/// The text of embedded-instance bytes (see [`decode_bytes`]).
pub fn bytes_to_text(bytes: &[u8]) -> Result<String, CodecError> {
    if bytes.len() > 2 * MAX_EMBEDDED_BYTES {
        return Err(CodecError::new(CodecErrorKind::TooLarge {
            len: bytes.len(),
            max: 2 * MAX_EMBEDDED_BYTES,
        }));
    }
    let utf16 = |b: &[u8], le: bool| -> Result<String, CodecError> {
        let units = b.chunks(2).map(|c| {
            let pair = [c[0], *c.get(1).unwrap_or(&0)];
            if le {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        });
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|e| CodecError::new(CodecErrorKind::Xml(format!("invalid UTF-16 text: {e}"))))
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, true);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, false);
    }
    let rest = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    // UTF-16LE without BOM: ASCII markup leaves every odd byte zero ('<' 0x3C, 0x00).
    let looks_le = rest.len() >= 2 && rest[1] == 0 && rest[0] != 0;
    let looks_be = rest.len() >= 2 && rest[0] == 0 && rest[1] != 0;
    if looks_le {
        return utf16(rest, true);
    }
    if looks_be {
        return utf16(rest, false);
    }
    String::from_utf8(rest.to_vec())
        .map_err(|e| CodecError::new(CodecErrorKind::Xml(format!("invalid UTF-8 text: {e}"))))
}

/// Encodes an instance as CIM-XML text (no XML declaration, no path), the form pywbem
/// sends and Hyper-V accepts.
pub fn encode(inst: &Instance) -> String {
    let mut out = String::new();
    xml::write_instance(&mut out, inst);
    out
}

/// Encodes an instance as UTF-16LE bytes with BOM (what a PowerShell producer would send).
pub fn encode_utf16le(inst: &Instance) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    for u in encode(inst).encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
