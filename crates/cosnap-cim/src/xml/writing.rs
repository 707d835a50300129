//! Writing: CIM-XML elements appended to a string with correct escaping.

use super::*;

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

pub(super) fn escape(s: &str, attr: bool) -> Cow<'_, str> {
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

pub(super) fn open(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
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

pub(super) fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

pub(super) fn empty(out: &mut String, name: &str, attrs: &[(&str, &str)]) {
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

pub(super) fn is_embedded(p: &Property) -> bool {
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
pub(super) struct PropExtras<'a> {
    class_origin: Option<&'a str>,
    propagated: bool,
    reference_class: Option<&'a str>,
    /// Qualifiers with their PROPAGATED flag.
    qualifiers: Vec<(&'a Qualifier, bool)>,
}

pub(super) fn write_property_full(out: &mut String, p: &Property, x: &PropExtras) {
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
    /// LocalOnly: leave out members inherited from the superclass.
    pub local_only: bool,
    /// IncludeQualifiers: write the qualifiers of the class and its members.
    pub include_qualifiers: bool,
    /// IncludeClassOrigin: write `CLASSORIGIN` on each property and method.
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
pub(super) fn qualifier_propagated(
    class: &ClassDef,
    member: QualifiedMember<'_>,
    q: &Qualifier,
) -> bool {
    crate::schema::schema().is_propagated_qualifier(&class.name, member, &q.name)
}

pub(super) fn write_method(
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
