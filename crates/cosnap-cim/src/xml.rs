//! CIM-XML (DMTF DSP0201) element codec: values, paths, instances and classes.
//!
//! Parsing works on `roxmltree` nodes (the caller parses the document with [`parse_document`]
//! or [`parse_document_with`], the bounded [`reader`]); writing appends to a `String`
//! with correct escaping. The writer emits exactly the attributes and children DSP0201
//! allows, because pywbem 1.9.1 rejects anything else (docs/decisions.md, "CIM-XML writer").
//!
//! Typing: wbemcli sends parameter VALUEs without `PARAMTYPE`, so values are first parsed
//! into a [`RawValue`] (text, not yet typed) and then typed against the class's
//! [`ParameterDef`] / [`PropertyDef`] with [`type_for_parameter`] / [`type_for_property`].
//! Integer parsing is range-checked: a `uint16` of 70000 is a type error.

use std::borrow::Cow;

use thiserror::Error;

use crate::class::{ClassDef, MethodDef, ParameterDef, PropertyDef, Qualifier};
use crate::path::ObjectPath;
use crate::path_text::PathError;
use crate::schema::QualifiedMember;
use crate::value::{CimType, Instance, Property, Value};

pub use reader::{
    MAX_ATTRIBUTES, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_NAMESPACES, MAX_ELEMENT_NAMESPACES, MAX_NODES,
    MAX_XML_DEPTH, XmlLimits, nesting_exceeds, parse_document_with,
};
pub use roxmltree::{Document, Node};

pub mod reader;

/// Deepest nesting of references-in-keys and embedded-instances-in-values.
pub const MAX_DEPTH: usize = 16;
/// Most array elements / properties / key bindings accepted in one element.
pub const MAX_ITEMS: usize = 100_000;

// ---------------------------------------------------------------------------------------
// Errors

/// What went wrong while decoding CIM-XML or typing a value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecErrorKind {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("input is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("more than {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("expected {expected}, found element <{found}>")]
    UnexpectedElement { expected: String, found: String },
    #[error("element <{element}> lacks attribute {attribute}")]
    MissingAttribute {
        element: String,
        attribute: &'static str,
    },
    #[error("expected {expected}, got {text:?}")]
    BadValue { expected: String, text: String },
    #[error("{0}")]
    Path(PathError),
    #[error("{0}")]
    Other(String),
}

/// A decoding error with the chain of places it happened in, outermost first, e.g.
/// `ExportSettingData: property BackupIntent: expected uint16, got "abc"`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{}{kind}", context_prefix(.context))]
pub struct CodecError {
    pub context: Vec<String>,
    pub kind: CodecErrorKind,
}

fn context_prefix(ctx: &[String]) -> String {
    ctx.iter().map(|c| format!("{c}: ")).collect()
}

impl CodecError {
    pub fn new(kind: CodecErrorKind) -> Self {
        Self {
            context: Vec::new(),
            kind,
        }
    }
    /// Adds an outer context (`"property BackupIntent"`, `"ExportSettingData"`).
    pub fn within(mut self, ctx: impl Into<String>) -> Self {
        self.context.insert(0, ctx.into());
        self
    }
    pub fn other(msg: impl Into<String>) -> Self {
        Self::new(CodecErrorKind::Other(msg.into()))
    }
    fn bad(expected: impl Into<String>, text: &str) -> Self {
        let text: String = text.chars().take(120).collect();
        Self::new(CodecErrorKind::BadValue {
            expected: expected.into(),
            text,
        })
    }
    /// The CIM status a server should answer with when this error is in a request:
    /// type problems are `CIM_ERR_TYPE_MISMATCH`-like but DSP0200 asks for
    /// `CIM_ERR_INVALID_PARAMETER` for bad parameter values, so that is used throughout.
    pub fn cim_status(&self) -> crate::CimStatus {
        crate::CimStatus::InvalidParameter
    }
}

impl From<CodecError> for crate::CimError {
    fn from(e: CodecError) -> Self {
        crate::CimError::new(e.cim_status(), e.to_string())
    }
}

impl From<PathError> for CodecError {
    fn from(e: PathError) -> Self {
        Self::new(CodecErrorKind::Path(e))
    }
}

type Result<T> = std::result::Result<T, CodecError>;

// ---------------------------------------------------------------------------------------
// Document and node helpers

/// Parses CIM-XML text with the default [`XmlLimits`] (see [`reader`]).
pub fn parse_document(text: &str) -> Result<Document<'_>> {
    parse_document_with(text, &XmlLimits::default())
}

/// [`parse_document`] with a caller-chosen byte limit.
pub fn parse_document_limited(text: &str, max_bytes: usize) -> Result<Document<'_>> {
    let limits = XmlLimits {
        max_bytes,
        ..XmlLimits::default()
    };
    parse_document_with(text, &limits)
}

/// Element children of a node (text, comments and processing instructions skipped).
pub fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(Node::is_element)
}

/// The element's tag name (CIM-XML uses no XML namespaces).
pub fn tag<'a>(node: &Node<'a, '_>) -> &'a str {
    node.tag_name().name()
}

/// A required attribute.
pub fn attr<'a>(node: &Node<'a, '_>, name: &'static str) -> Result<&'a str> {
    check_attr_count(node)?;
    node.attribute(name).ok_or_else(|| {
        CodecError::new(CodecErrorKind::MissingAttribute {
            element: tag(node).to_string(),
            attribute: name,
        })
    })
}

/// An attribute looked up case-insensitively (`EmbeddedObject` / `EMBEDDEDOBJECT`).
pub fn attr_ci<'a>(node: &Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name().eq_ignore_ascii_case(name))
        .map(|a| a.value())
}

fn check_attr_count(node: &Node) -> Result<()> {
    if node.attributes().len() > MAX_ATTRIBUTES {
        return Err(CodecError::new(CodecErrorKind::TooMany {
            what: "attributes",
            max: MAX_ATTRIBUTES,
        }));
    }
    Ok(())
}

fn expect(node: &Node, names: &[&str]) -> Result<()> {
    check_attr_count(node)?;
    if names.contains(&tag(node)) {
        Ok(())
    } else {
        Err(CodecError::new(CodecErrorKind::UnexpectedElement {
            expected: names.join(" or "),
            found: tag(node).to_string(),
        }))
    }
}

/// The element's text (concatenated text and CDATA children).
pub fn text_of(node: &Node) -> String {
    let mut s = String::new();
    for c in node.children() {
        if c.is_text() {
            s.push_str(c.text().unwrap_or(""));
        }
    }
    s
}

fn single_child<'a, 'i>(node: Node<'a, 'i>) -> Result<Node<'a, 'i>> {
    let mut it = elements(node);
    let first = it
        .next()
        .ok_or_else(|| CodecError::other(format!("<{}> is empty", tag(&node))))?;
    if it.next().is_some() {
        return Err(CodecError::other(format!(
            "<{}> has more than one child element",
            tag(&node)
        )));
    }
    Ok(first)
}

// ---------------------------------------------------------------------------------------
// Scalars

/// Parses one scalar of type `ty` from its CIM-XML text, range-checked.
///
/// Booleans accept `TRUE`/`FALSE` in any case; integers are decimal (surrounding
/// whitespace allowed); reals accept `INF`, `-INF` and `NaN`; datetimes are validated;
/// references are parsed as object-path text (WMI or WBEM URI form).
pub fn parse_scalar(text: &str, ty: CimType) -> Result<Value> {
    let t = text.trim();
    let bad = || CodecError::bad(ty.name(), text);
    macro_rules! int {
        ($variant:ident, $t:ty) => {
            t.strip_prefix('+')
                .unwrap_or(t)
                .parse::<$t>()
                .map(Value::$variant)
                .map_err(|_| bad())
        };
    }
    match ty {
        CimType::Boolean => {
            if t.eq_ignore_ascii_case("true") {
                Ok(Value::Boolean(true))
            } else if t.eq_ignore_ascii_case("false") {
                Ok(Value::Boolean(false))
            } else {
                Err(bad())
            }
        }
        CimType::String => Ok(Value::String(text.to_string())),
        CimType::Char16 => {
            let mut cs = text.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if (c as u32) <= 0xFFFF => Ok(Value::Char16(c)),
                _ => Err(bad()),
            }
        }
        CimType::Uint8 => int!(Uint8, u8),
        CimType::Sint8 => int!(Sint8, i8),
        CimType::Uint16 => int!(Uint16, u16),
        CimType::Sint16 => int!(Sint16, i16),
        CimType::Uint32 => int!(Uint32, u32),
        CimType::Sint32 => int!(Sint32, i32),
        CimType::Uint64 => int!(Uint64, u64),
        CimType::Sint64 => int!(Sint64, i64),
        CimType::Real32 => parse_real(t)
            .map(|f| Value::Real32(f as f32))
            .ok_or_else(bad),
        CimType::Real64 => parse_real(t).map(Value::Real64).ok_or_else(bad),
        CimType::Datetime => {
            crate::datetime::CimDateTime::parse(t)
                .map_err(|e| CodecError::bad(format!("datetime ({e})"), text))?;
            Ok(Value::Datetime(t.to_string()))
        }
        CimType::Reference => Ok(Value::Reference(crate::path_text::parse(t)?)),
    }
}

fn parse_real(t: &str) -> Option<f64> {
    match t {
        "INF" | "+INF" => Some(f64::INFINITY),
        "-INF" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if t
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+')) =>
        {
            t.parse().ok()
        }
        _ => None,
    }
}

fn format_real(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "INF".into() } else { "-INF".into() }
    } else {
        let s = format!("{f:?}");
        if s.contains(['.', 'e', 'E']) {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// The CIM type a value holds (`Instance` → string, arrays → their element type).
pub fn type_of(v: &Value) -> CimType {
    match v {
        Value::Boolean(_) => CimType::Boolean,
        Value::String(_) | Value::Instance(_) => CimType::String,
        Value::Char16(_) => CimType::Char16,
        Value::Uint8(_) => CimType::Uint8,
        Value::Sint8(_) => CimType::Sint8,
        Value::Uint16(_) => CimType::Uint16,
        Value::Sint16(_) => CimType::Sint16,
        Value::Uint32(_) => CimType::Uint32,
        Value::Sint32(_) => CimType::Sint32,
        Value::Uint64(_) => CimType::Uint64,
        Value::Sint64(_) => CimType::Sint64,
        Value::Real32(_) => CimType::Real32,
        Value::Real64(_) => CimType::Real64,
        Value::Datetime(_) => CimType::Datetime,
        Value::Reference(_) => CimType::Reference,
        Value::Array(items) => items.first().map(type_of).unwrap_or(CimType::String),
    }
}

/// The CIM-XML text of a scalar (`TRUE`, `42`, the string itself, an embedded instance's
/// CIM-XML text, a reference's WMI path text).
pub fn scalar_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::Boolean(b) => Cow::Borrowed(if *b { "TRUE" } else { "FALSE" }),
        Value::String(s) | Value::Datetime(s) => Cow::Borrowed(s),
        Value::Char16(c) => Cow::Owned(c.to_string()),
        Value::Uint8(n) => Cow::Owned(n.to_string()),
        Value::Sint8(n) => Cow::Owned(n.to_string()),
        Value::Uint16(n) => Cow::Owned(n.to_string()),
        Value::Sint16(n) => Cow::Owned(n.to_string()),
        Value::Uint32(n) => Cow::Owned(n.to_string()),
        Value::Sint32(n) => Cow::Owned(n.to_string()),
        Value::Uint64(n) => Cow::Owned(n.to_string()),
        Value::Sint64(n) => Cow::Owned(n.to_string()),
        Value::Real32(n) => Cow::Owned(format_real(f64::from(*n))),
        Value::Real64(n) => Cow::Owned(format_real(*n)),
        Value::Reference(p) => Cow::Owned(p.to_wmi_text()),
        Value::Instance(i) => Cow::Owned(crate::embedded::encode(i)),
        Value::Array(_) => Cow::Borrowed(""),
    }
}

/// Converts a value to `ty` (element-wise for arrays): integers between integer types
/// (range-checked), integers to reals, text to anything [`parse_scalar`] parses,
/// references to their WMI text when a string is wanted. Embedded instances stay as they
/// are when a string is wanted.
pub fn coerce_value(v: Value, ty: CimType) -> Result<Value> {
    if let Value::Array(items) = v {
        return items
            .into_iter()
            .map(|i| coerce_value(i, ty))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array);
    }
    if type_of(&v) == ty && !matches!(v, Value::Instance(_))
        || (ty == CimType::String && matches!(v, Value::Instance(_)))
    {
        return Ok(v);
    }
    match (&v, ty) {
        (Value::String(s), _) => parse_scalar(s, ty),
        (Value::Reference(p), CimType::String) => Ok(Value::String(p.to_wmi_text())),
        (Value::Datetime(s), CimType::String) => Ok(Value::String(s.clone())),
        (Value::Char16(c), CimType::String) => Ok(Value::String(c.to_string())),
        (_, CimType::Real32 | CimType::Real64) if is_integer(&v) => {
            parse_scalar(&scalar_text(&v), ty)
        }
        _ if is_integer(&v) && is_integer_type(ty) => parse_scalar(&scalar_text(&v), ty),
        _ => Err(CodecError::bad(
            ty.name(),
            &format!("{} value {}", type_of(&v).name(), scalar_text(&v)),
        )),
    }
}

fn is_integer(v: &Value) -> bool {
    is_integer_type(type_of(v)) && !matches!(v, Value::Array(_))
}

fn is_integer_type(t: CimType) -> bool {
    matches!(
        t,
        CimType::Uint8
            | CimType::Sint8
            | CimType::Uint16
            | CimType::Sint16
            | CimType::Uint32
            | CimType::Sint32
            | CimType::Uint64
            | CimType::Sint64
    )
}

// ---------------------------------------------------------------------------------------
// Untyped values

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

fn parse_raw_value_at(node: Node, depth: usize) -> Result<RawValue> {
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

fn type_value_at(
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

fn has_qualifier(q: &[Qualifier], name: &str) -> bool {
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

// ---------------------------------------------------------------------------------------
// Paths

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

fn parse_instance_name_at(node: Node, depth: usize) -> Result<ObjectPath> {
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

fn parse_keyvalue(node: Node) -> Result<Value> {
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

fn parse_value_reference_at(node: Node, depth: usize) -> Result<ObjectPath> {
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

fn parse_path_element_at(node: Node, depth: usize) -> Result<ObjectPath> {
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

// ---------------------------------------------------------------------------------------
// Instances

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

fn parse_property_at(node: Node, class: Option<&ClassDef>, depth: usize) -> Result<Property> {
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
    pub name: String,
    /// `PARAMTYPE` when the client sent one (`reference` → [`CimType::Reference`]).
    pub param_type: Option<CimType>,
    /// `EmbeddedObject`/`EMBEDDEDOBJECT` was `instance` or `object`.
    pub embedded: bool,
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

// ---------------------------------------------------------------------------------------
// Writing

/// Escapes text content (`&`, `<`, `>`; `\r` as a character reference so it survives).
/// Characters XML 1.0 cannot carry (control characters other than tab/newline/CR) are
/// replaced by U+FFFD: the alternative would be output no client can parse.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Escapes an attribute value (as [`escape_text`], plus `"`, `'`, tab and newline).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, attr: bool) -> Cow<'_, str> {
    let needs = |c: char| {
        matches!(c, '&' | '<' | '>' | '\r')
            || (attr && matches!(c, '"' | '\'' | '\t' | '\n'))
            || (c < ' ' && !matches!(c, '\t' | '\n'))
            || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attr => out.push_str("&quot;"),
            '\'' if attr => out.push_str("&apos;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            c if (c < ' ' && !matches!(c, '\t' | '\n')) || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn open(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    out.push('<');
    out.push_str(name);
    for (k, v) in attrs {
        out.push(' ');
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(&escape_attr(v));
        out.push('"');
    }
    out.push('>');
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn empty(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
    open(out, name, attrs);
    out.pop();
    out.push_str("/>");
}

/// `<VALUE>text</VALUE>` for a scalar.
pub fn write_scalar_value(out: &mut String, v: &Value) {
    out.push_str("<VALUE>");
    out.push_str(&escape_text(&scalar_text(v)));
    out.push_str("</VALUE>");
}

/// A value as its CIM-XML value element: VALUE, VALUE.ARRAY, VALUE.REFERENCE or
/// VALUE.REFARRAY. Embedded instances become escaped CIM-XML text inside VALUE.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Reference(p) => write_value_reference(out, p),
        Value::Array(items) if items.iter().any(|i| matches!(i, Value::Reference(_))) => {
            out.push_str("<VALUE.REFARRAY>");
            for i in items {
                match i {
                    Value::Reference(p) => write_value_reference(out, p),
                    _ => out.push_str("<VALUE.NULL/>"),
                }
            }
            out.push_str("</VALUE.REFARRAY>");
        }
        Value::Array(items) => {
            out.push_str("<VALUE.ARRAY>");
            for i in items {
                write_scalar_value(out, i);
            }
            out.push_str("</VALUE.ARRAY>");
        }
        _ => write_scalar_value(out, v),
    }
}

/// `<LOCALNAMESPACEPATH>` with one NAMESPACE per segment.
pub fn write_local_namespace_path(out: &mut String, ns: &str) {
    out.push_str("<LOCALNAMESPACEPATH>");
    for seg in ns.split(['/', '\\']).filter(|s| !s.is_empty()) {
        empty(out, "NAMESPACE", &[("NAME", seg)]);
    }
    out.push_str("</LOCALNAMESPACEPATH>");
}

/// `<NAMESPACEPATH><HOST>…</HOST><LOCALNAMESPACEPATH>…`.
pub fn write_namespace_path(out: &mut String, host: &str, ns: &str) {
    out.push_str("<NAMESPACEPATH><HOST>");
    out.push_str(&escape_text(host));
    out.push_str("</HOST>");
    write_local_namespace_path(out, ns);
    out.push_str("</NAMESPACEPATH>");
}

/// `<INSTANCENAME CLASSNAME>` with a KEYBINDING per key (KEYVALUE with VALUETYPE and TYPE,
/// or VALUE.REFERENCE for reference keys).
pub fn write_instance_name(out: &mut String, p: &ObjectPath) {
    open(out, "INSTANCENAME", &[("CLASSNAME", &p.class_name)]);
    for (k, v) in &p.keys {
        open(out, "KEYBINDING", &[("NAME", k)]);
        match v {
            Value::Reference(r) => write_value_reference(out, r),
            _ => {
                let ty = type_of(v);
                let valuetype = match ty {
                    CimType::Boolean => "boolean",
                    CimType::String | CimType::Char16 | CimType::Datetime | CimType::Reference => {
                        "string"
                    }
                    _ => "numeric",
                };
                open(
                    out,
                    "KEYVALUE",
                    &[("VALUETYPE", valuetype), ("TYPE", ty.name())],
                );
                out.push_str(&escape_text(&scalar_text(v)));
                close(out, "KEYVALUE");
            }
        }
        close(out, "KEYBINDING");
    }
    close(out, "INSTANCENAME");
}

/// `<INSTANCEPATH>` (host and namespace given explicitly, e.g. the server's own).
pub fn write_instance_path(out: &mut String, p: &ObjectPath, host: &str, ns: &str) {
    out.push_str("<INSTANCEPATH>");
    write_namespace_path(out, host, ns);
    write_instance_name(out, p);
    out.push_str("</INSTANCEPATH>");
}

/// `<LOCALINSTANCEPATH>`.
pub fn write_local_instance_path(out: &mut String, p: &ObjectPath, ns: &str) {
    out.push_str("<LOCALINSTANCEPATH>");
    write_local_namespace_path(out, ns);
    write_instance_name(out, p);
    out.push_str("</LOCALINSTANCEPATH>");
}

/// The most qualified path element the path allows: INSTANCEPATH (host and namespace),
/// LOCALINSTANCEPATH (namespace), INSTANCENAME; for class paths (no keys) CLASSPATH,
/// LOCALCLASSPATH or CLASSNAME.
pub fn write_path_element(out: &mut String, p: &ObjectPath) {
    let class = p.keys.is_empty();
    match (&p.host, &p.namespace) {
        (Some(h), Some(ns)) if class => {
            out.push_str("<CLASSPATH>");
            write_namespace_path(out, h, ns);
            empty(out, "CLASSNAME", &[("NAME", &p.class_name)]);
            out.push_str("</CLASSPATH>");
        }
        (_, Some(ns)) if class => {
            out.push_str("<LOCALCLASSPATH>");
            write_local_namespace_path(out, ns);
            empty(out, "CLASSNAME", &[("NAME", &p.class_name)]);
            out.push_str("</LOCALCLASSPATH>");
        }
        _ if class => empty(out, "CLASSNAME", &[("NAME", &p.class_name)]),
        (Some(h), Some(ns)) => write_instance_path(out, p, h, ns),
        (_, Some(ns)) => write_local_instance_path(out, p, ns),
        _ => write_instance_name(out, p),
    }
}

/// `<VALUE.REFERENCE>` around [`write_path_element`].
pub fn write_value_reference(out: &mut String, p: &ObjectPath) {
    out.push_str("<VALUE.REFERENCE>");
    write_path_element(out, p);
    out.push_str("</VALUE.REFERENCE>");
}

fn is_embedded(p: &Property) -> bool {
    p.embedded_class.is_some()
        || matches!(&p.value, Some(Value::Instance(_)))
        || matches!(&p.value, Some(Value::Array(items)) if items.iter().any(|i| matches!(i, Value::Instance(_))))
}

/// One instance property: PROPERTY, PROPERTY.ARRAY or PROPERTY.REFERENCE, with TYPE, and
/// `EmbeddedObject="instance"` when the value is (or is declared as) an embedded instance.
pub fn write_property(out: &mut String, p: &Property) {
    write_property_full(out, p, &PropExtras::default());
}

#[derive(Default)]
struct PropExtras<'a> {
    class_origin: Option<&'a str>,
    propagated: bool,
    reference_class: Option<&'a str>,
    /// Qualifiers with their PROPAGATED flag.
    qualifiers: Vec<(&'a Qualifier, bool)>,
}

fn write_property_full(out: &mut String, p: &Property, x: &PropExtras) {
    let embedded = is_embedded(p);
    let mut attrs: Vec<(&str, &str)> = vec![("NAME", &p.name)];
    let is_ref = p.ty == CimType::Reference && !p.is_array;
    let elem = if is_ref {
        if let Some(rc) = x.reference_class {
            attrs.push(("REFERENCECLASS", rc));
        }
        "PROPERTY.REFERENCE"
    } else {
        attrs.push(("TYPE", if embedded { "string" } else { p.ty.name() }));
        if p.is_array {
            "PROPERTY.ARRAY"
        } else {
            "PROPERTY"
        }
    };
    if let Some(co) = x.class_origin {
        attrs.push(("CLASSORIGIN", co));
    }
    if x.propagated {
        attrs.push(("PROPAGATED", "true"));
    }
    if embedded && !is_ref {
        attrs.push(("EmbeddedObject", "instance"));
    }
    open(out, elem, &attrs);
    for (q, propagated) in &x.qualifiers {
        write_qualifier(out, q, *propagated);
    }
    match (&p.value, is_ref, p.is_array) {
        (None, _, _) => {}
        (Some(Value::Reference(r)), true, _) => write_value_reference(out, r),
        (Some(_), true, _) => {}
        (Some(Value::Array(items)), _, true) => {
            out.push_str("<VALUE.ARRAY>");
            for i in items {
                write_scalar_value(out, i);
            }
            out.push_str("</VALUE.ARRAY>");
        }
        (Some(v), _, true) => {
            out.push_str("<VALUE.ARRAY>");
            write_scalar_value(out, v);
            out.push_str("</VALUE.ARRAY>");
        }
        (Some(v), _, false) => write_scalar_value(out, v),
    }
    close(out, elem);
}

/// `<INSTANCE CLASSNAME>` with its properties (no path; see [`write_named_instance`]).
pub fn write_instance(out: &mut String, inst: &Instance) {
    open(out, "INSTANCE", &[("CLASSNAME", &inst.class_name)]);
    for p in &inst.properties {
        write_property(out, p);
    }
    close(out, "INSTANCE");
}

/// `<VALUE.NAMEDINSTANCE>` = INSTANCENAME + INSTANCE (EnumerateInstances).
/// Falls back to a path with no keys when the instance carries none.
pub fn write_named_instance(out: &mut String, inst: &Instance) {
    out.push_str("<VALUE.NAMEDINSTANCE>");
    let fallback = ObjectPath::new(inst.class_name.clone());
    let path = inst.path.as_ref().unwrap_or(&fallback);
    let local = ObjectPath {
        host: None,
        namespace: None,
        ..path.clone()
    };
    write_instance_name(out, &local);
    write_instance(out, inst);
    out.push_str("</VALUE.NAMEDINSTANCE>");
}

/// `<VALUE.OBJECTWITHPATH>` = INSTANCEPATH + INSTANCE (Associators, References).
pub fn write_object_with_path(out: &mut String, inst: &Instance, host: &str, ns: &str) {
    out.push_str("<VALUE.OBJECTWITHPATH>");
    let fallback = ObjectPath::new(inst.class_name.clone());
    let path = inst.path.as_ref().unwrap_or(&fallback);
    write_instance_path(
        out,
        path,
        path.host.as_deref().unwrap_or(host),
        path.namespace.as_deref().unwrap_or(ns),
    );
    write_instance(out, inst);
    out.push_str("</VALUE.OBJECTWITHPATH>");
}

/// `<QUALIFIER NAME TYPE [PROPAGATED] [flavors]>` + VALUE / VALUE.ARRAY. Flavor
/// attributes are written when the schema's declaration differs from the DSP0201 defaults
/// (OVERRIDABLE=true, TOSUBCLASS=true, TOINSTANCE=false, TRANSLATABLE=false).
pub fn write_qualifier(out: &mut String, q: &Qualifier, propagated: bool) {
    let mut attrs: Vec<(&str, &str)> = vec![("NAME", &q.name), ("TYPE", q.ty.name())];
    if propagated {
        attrs.push(("PROPAGATED", "true"));
    }
    let flavor = crate::schema::schema().qualifier_flavor(&q.name);
    if !flavor.overridable {
        attrs.push(("OVERRIDABLE", "false"));
    }
    if !flavor.tosubclass {
        attrs.push(("TOSUBCLASS", "false"));
    }
    if flavor.translatable {
        attrs.push(("TRANSLATABLE", "true"));
    }
    open(out, "QUALIFIER", &attrs);
    if let Some(v) = &q.value {
        write_value(out, v);
    }
    close(out, "QUALIFIER");
}

/// The GetClass flags (DSP0200 defaults: LocalOnly true, IncludeQualifiers true,
/// IncludeClassOrigin false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassFlags {
    pub local_only: bool,
    pub include_qualifiers: bool,
    pub include_class_origin: bool,
}

impl Default for ClassFlags {
    fn default() -> Self {
        Self {
            local_only: true,
            include_qualifiers: true,
            include_class_origin: false,
        }
    }
}

/// `<CLASS NAME SUPERCLASS>` with QUALIFIER*, PROPERTY*, METHOD* as the flags ask.
/// Members inherited from a superclass carry `PROPAGATED="true"`; with `local_only` they
/// are left out.
pub fn write_class(out: &mut String, class: &ClassDef, flags: ClassFlags) {
    let mut attrs: Vec<(&str, &str)> = vec![("NAME", &class.name)];
    if let Some(s) = &class.superclass {
        attrs.push(("SUPERCLASS", s));
    }
    open(out, "CLASS", &attrs);
    if flags.include_qualifiers {
        for q in &class.qualifiers {
            write_qualifier(out, q, false);
        }
    }
    for p in &class.properties {
        let propagated = !p.class_origin.eq_ignore_ascii_case(&class.name);
        if flags.local_only && propagated {
            continue;
        }
        let prop = Property {
            name: p.name.clone(),
            ty: p.ty,
            is_array: p.is_array,
            value: p.default.clone(),
            embedded_class: None,
        };
        let x = PropExtras {
            class_origin: flags
                .include_class_origin
                .then_some(p.class_origin.as_str()),
            propagated,
            reference_class: p.reference_class.as_deref(),
            qualifiers: if flags.include_qualifiers {
                p.qualifiers
                    .iter()
                    .map(|q| {
                        (
                            q,
                            qualifier_propagated(class, QualifiedMember::Property(&p.name), q),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        };
        write_property_full(out, &prop, &x);
    }
    for m in &class.methods {
        let propagated = !m.class_origin.eq_ignore_ascii_case(&class.name);
        if flags.local_only && propagated {
            continue;
        }
        write_method(out, class, m, flags, propagated);
    }
    close(out, "CLASS");
}

/// Whether a qualifier of a flattened class came from a superclass, per cosnap's schema
/// (classes outside it have no inherited qualifiers as far as the writer knows).
fn qualifier_propagated(class: &ClassDef, member: QualifiedMember<'_>, q: &Qualifier) -> bool {
    crate::schema::schema().is_propagated_qualifier(&class.name, member, &q.name)
}

fn write_method(
    out: &mut String,
    class: &ClassDef,
    m: &MethodDef,
    flags: ClassFlags,
    propagated: bool,
) {
    let mut attrs: Vec<(&str, &str)> = vec![("NAME", &m.name), ("TYPE", m.return_type.name())];
    if flags.include_class_origin {
        attrs.push(("CLASSORIGIN", &m.class_origin));
    }
    if propagated {
        attrs.push(("PROPAGATED", "true"));
    }
    open(out, "METHOD", &attrs);
    if flags.include_qualifiers {
        for q in &m.qualifiers {
            write_qualifier(
                out,
                q,
                qualifier_propagated(class, QualifiedMember::Method(&m.name), q),
            );
        }
    }
    for p in &m.parameters {
        let (elem, mut attrs): (&str, Vec<(&str, &str)>) = match (p.ty, p.is_array) {
            (CimType::Reference, false) => ("PARAMETER.REFERENCE", vec![("NAME", &p.name)]),
            (CimType::Reference, true) => ("PARAMETER.REFARRAY", vec![("NAME", &p.name)]),
            (_, false) => ("PARAMETER", vec![("NAME", &p.name), ("TYPE", p.ty.name())]),
            (_, true) => (
                "PARAMETER.ARRAY",
                vec![("NAME", &p.name), ("TYPE", p.ty.name())],
            ),
        };
        if p.ty == CimType::Reference
            && let Some(rc) = &p.reference_class
        {
            attrs.push(("REFERENCECLASS", rc));
        }
        open(out, elem, &attrs);
        if flags.include_qualifiers {
            for q in &p.qualifiers {
                let member = QualifiedMember::Parameter(&m.name, &p.name);
                write_qualifier(out, q, qualifier_propagated(class, member, q));
            }
        }
        close(out, elem);
    }
    close(out, "METHOD");
}

#[cfg(test)]
mod tests;
