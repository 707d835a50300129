//! Object paths as text: WMI object paths (`\\HOST\root\virtualization\v2:Class.Key="v"`),
//! WBEM URIs as pywbem and pywbemcli print them (`//host/root/virtualization/v2:Class.Key="v"`)
//! and wbemcli's form (`host/root/virtualization/v2:Class.Key="v"`).
//!
//! Grammar accepted by [`parse`]:
//!
//! ```text
//! path      = [scheme "://"] [prefix ":"] class ["." keys]
//! prefix    = ("\\" | "//") host [("\" | "/") namespace]   -- host-qualified
//!           | ("\" | "/") namespace                       -- namespace only
//!           | [host "/"] namespace                        -- see "wbemcli form" below
//! keys      = key *("," key)
//! key       = name "=" (quoted | unquoted)
//! quoted    = '"' *(char | '\\' | '\"') '"'           -- WMI/pywbem escaping
//! unquoted  = TRUE | FALSE | integer | real | "'" char "'"
//! ```
//!
//! Decisions on vague points:
//! * **wbemcli form**: without leading slashes, the first segment is a host only when the
//!   prefix has at least two segments and the first one is not `root` (every cosnap and
//!   Hyper-V namespace starts with `root`); `interop` alone is a namespace.
//! * The class separator is the *last* `:` before the first `=`, so host ports
//!   (`host:5988/root/…`) and IPv6 hosts work.
//! * Unquoted keys: `TRUE`/`FALSE` (any case) are booleans, negative integers are `Sint64`,
//!   other integers `Uint64`, numbers with `.`/`e` are `Real64`. The host types them
//!   against the class (see [`crate::xml::coerce_value`]).
//! * A backslash in a quoted value escapes only `\` and `"`; before any other character it
//!   is kept literally (lenient for hand-written paths).
//! * Namespaces are normalised with [`crate::normalize_namespace`] (slash form, lower case).
//!
//! Printing is exact and round-trips: [`to_wmi_text`] / [`to_wbem_uri`].

use std::fmt;

pub use crate::error::PathError;
use crate::path::ObjectPath;
use crate::value::Value;

/// Longest path text accepted (references nest paths inside key values, so keep room).
pub const MAX_PATH_LEN: usize = 32 * 1024;
/// Most key bindings accepted in one path.
pub const MAX_KEYS: usize = 64;
/// Deepest nesting of reference keys printed/parsed recursively.
pub const MAX_NESTING: usize = 8;

fn syntax(path: &str, reason: impl Into<String>) -> PathError {
    let shown: String = path.chars().take(200).collect();
    PathError::Syntax {
        path: shown,
        reason: reason.into(),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Checks a CIM identifier (class or property name).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_name_char) && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Parses any of the accepted path forms (see the module documentation).
pub fn parse(text: &str) -> Result<ObjectPath, PathError> {
    if text.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong {
            len: text.len(),
            max: MAX_PATH_LEN,
        });
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(PathError::Empty);
    }
    let mut rest = trimmed;
    for scheme in ["https://", "http://"] {
        if rest
            .get(..scheme.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(scheme))
        {
            // Keep the two slashes: what follows is a host.
            rest = &rest[scheme.len() - 2..];
        }
    }
    let head_end = rest.find('=').unwrap_or(rest.len());
    let (prefix, class_and_keys) = match rest[..head_end].rfind(':') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut path = ObjectPath::default();
    if let Some(prefix) = prefix {
        let (host, ns) = split_prefix(trimmed, prefix)?;
        path.host = host;
        path.namespace = ns;
    }
    let (class, keys) = match class_and_keys.find('.') {
        Some(i) => (&class_and_keys[..i], Some(&class_and_keys[i + 1..])),
        None => (class_and_keys, None),
    };
    if !valid_name(class) {
        return Err(syntax(trimmed, format!("{class:?} is not a class name")));
    }
    path.class_name = class.to_string();
    if let Some(keys) = keys {
        path.keys = parse_keys(trimmed, keys)?;
    }
    Ok(path)
}

fn split_prefix(whole: &str, prefix: &str) -> Result<(Option<String>, Option<String>), PathError> {
    let is_sep = |c: char| c == '/' || c == '\\';
    let host_and_ns = prefix
        .strip_prefix("\\\\")
        .or_else(|| prefix.strip_prefix("//"));
    let (host, ns): (Option<&str>, &str) = if let Some(rest) = host_and_ns {
        match rest.find(is_sep) {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (Some(rest), ""),
        }
    } else if let Some(rest) = prefix.strip_prefix(is_sep) {
        (None, rest)
    } else {
        let mut segs = prefix.splitn(2, is_sep);
        let first = segs.next().unwrap_or("");
        match segs.next() {
            Some(rest) if !first.eq_ignore_ascii_case("root") => (Some(first), rest),
            _ => (None, prefix),
        }
    };
    let host = match host {
        Some("") => None,
        Some(h) => {
            if h.chars()
                .any(|c| c.is_whitespace() || c == '"' || is_sep(c))
            {
                return Err(syntax(whole, format!("{h:?} is not a host name")));
            }
            Some(h.to_string())
        }
        None => None,
    };
    let ns = if ns.trim_matches(is_sep).is_empty() {
        None
    } else {
        let n = crate::normalize_namespace(ns);
        if n.split('/').any(|seg| !valid_name(seg)) {
            return Err(syntax(whole, format!("{ns:?} is not a namespace")));
        }
        Some(n)
    };
    Ok((host, ns))
}

fn parse_keys(whole: &str, text: &str) -> Result<Vec<(String, Value)>, PathError> {
    let mut keys = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        if keys.len() >= MAX_KEYS {
            return Err(PathError::TooManyKeys { max: MAX_KEYS });
        }
        // Key name up to '='.
        let start = chars.peek().map(|&(i, _)| i).unwrap_or(text.len());
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let name = text[start..end].trim();
        if !valid_name(name) {
            return Err(syntax(whole, format!("{name:?} is not a key name")));
        }
        if chars.next().is_none() {
            return Err(syntax(whole, format!("key {name} has no '=' and value")));
        }
        let value = match chars.peek() {
            Some(&(_, '"')) => {
                chars.next();
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.peek() {
                            Some(&(_, n @ ('\\' | '"'))) => {
                                s.push(n);
                                chars.next();
                            }
                            _ => s.push('\\'),
                        },
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(syntax(
                        whole,
                        format!("value of key {name} has no closing quote"),
                    ));
                }
                Value::String(s)
            }
            _ => {
                let vstart = chars.peek().map(|&(i, _)| i).unwrap_or(text.len());
                let mut vend = vstart;
                while let Some(&(i, c)) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    vend = i + c.len_utf8();
                    chars.next();
                }
                parse_unquoted(whole, name, text[vstart..vend].trim())?
            }
        };
        keys.push((name.to_string(), value));
        match chars.next() {
            None => break,
            Some((_, ',')) => continue,
            Some((_, c)) => {
                return Err(syntax(
                    whole,
                    format!("unexpected {c:?} after the value of key {name}"),
                ));
            }
        }
    }
    Ok(keys)
}

fn parse_unquoted(whole: &str, name: &str, v: &str) -> Result<Value, PathError> {
    if v.eq_ignore_ascii_case("true") {
        return Ok(Value::Boolean(true));
    }
    if v.eq_ignore_ascii_case("false") {
        return Ok(Value::Boolean(false));
    }
    if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        let mut cs = inner.chars();
        if let (Some(c), None) = (cs.next(), cs.next()) {
            return Ok(Value::Char16(c));
        }
    }
    let bad = || {
        syntax(
            whole,
            format!("value {v:?} of key {name} is neither quoted nor a number or boolean"),
        )
    };
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if v.starts_with('-') {
            return v.parse::<i64>().map(Value::Sint64).map_err(|_| bad());
        }
        return digits.parse::<u64>().map(Value::Uint64).map_err(|_| bad());
    }
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        let n = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
        return Ok(if v.starts_with('-') {
            Value::Sint64(0i64.checked_sub_unsigned(n).ok_or_else(bad)?)
        } else {
            Value::Uint64(n)
        });
    }
    if !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && let Ok(f) = v.parse::<f64>()
        && f.is_finite()
    {
        return Ok(Value::Real64(f));
    }
    Err(bad())
}

/// Which text form to print.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Wmi,
    WbemUri,
}

fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn push_key_value(out: &mut String, v: &Value, style: Style, depth: usize) {
    match v {
        Value::Boolean(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
        Value::Uint8(n) => out.push_str(&n.to_string()),
        Value::Uint16(n) => out.push_str(&n.to_string()),
        Value::Uint32(n) => out.push_str(&n.to_string()),
        Value::Uint64(n) => out.push_str(&n.to_string()),
        Value::Sint8(n) => out.push_str(&n.to_string()),
        Value::Sint16(n) => out.push_str(&n.to_string()),
        Value::Sint32(n) => out.push_str(&n.to_string()),
        Value::Sint64(n) => out.push_str(&n.to_string()),
        Value::Real32(n) => out.push_str(&format_real(f64::from(*n))),
        Value::Real64(n) => out.push_str(&format_real(*n)),
        Value::Char16(c) if *c != '\'' => {
            out.push('\'');
            out.push(*c);
            out.push('\'');
        }
        Value::Char16(c) => push_quoted(out, &c.to_string()),
        Value::String(s) | Value::Datetime(s) => push_quoted(out, s),
        Value::Reference(p) => {
            let mut inner = String::new();
            if depth < MAX_NESTING {
                write_path(&mut inner, p, style, depth + 1);
            } else {
                inner.push_str(&p.class_name);
            }
            push_quoted(out, &inner);
        }
        Value::Instance(i) => push_quoted(out, &crate::embedded::encode(i)),
        Value::Array(_) => push_quoted(out, ""),
    }
}

/// Reals print so that they parse back as reals (always with a `.` or exponent).
fn format_real(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_path(out: &mut String, p: &ObjectPath, style: Style, depth: usize) {
    match style {
        Style::Wmi => {
            if let Some(h) = &p.host {
                out.push_str("\\\\");
                out.push_str(h);
                if p.namespace.is_some() {
                    out.push('\\');
                }
            }
            if let Some(ns) = &p.namespace {
                out.push_str(&ns.replace('/', "\\"));
            }
            if p.host.is_some() || p.namespace.is_some() {
                out.push(':');
            }
        }
        Style::WbemUri => {
            if let Some(h) = &p.host {
                out.push_str("//");
                out.push_str(h);
            }
            out.push('/');
            if let Some(ns) = &p.namespace {
                out.push_str(ns);
            }
            out.push(':');
        }
    }
    out.push_str(&p.class_name);
    for (i, (k, v)) in p.keys.iter().enumerate() {
        out.push(if i == 0 { '.' } else { ',' });
        out.push_str(k);
        out.push('=');
        push_key_value(out, v, style, depth);
    }
}

/// WMI object-path text: `\\HOST\root\virtualization\v2:Class.K1="v",K2=5`; without a
/// host `root\virtualization\v2:Class…`; without either `Class…`.
pub fn to_wmi_text(p: &ObjectPath) -> String {
    let mut s = String::new();
    write_path(&mut s, p, Style::Wmi, 0);
    s
}

/// WBEM URI as pywbem's `to_wbem_uri()` prints it: `//host/root/virtualization/v2:Class.K="v"`,
/// `/root/virtualization/v2:Class…` without a host, `/:Class…` without either.
pub fn to_wbem_uri(p: &ObjectPath) -> String {
    let mut s = String::new();
    write_path(&mut s, p, Style::WbemUri, 0);
    s
}

impl ObjectPath {
    /// Parses WMI path text or a WBEM URI (see [`parse`]).
    pub fn parse(text: &str) -> Result<ObjectPath, PathError> {
        parse(text)
    }
    /// WMI object-path text (see [`to_wmi_text`]).
    pub fn to_wmi_text(&self) -> String {
        to_wmi_text(self)
    }
    /// WBEM URI (see [`to_wbem_uri`]).
    pub fn to_wbem_uri(&self) -> String {
        to_wbem_uri(self)
    }
    /// True when the path names a class (no keys).
    pub fn is_class_path(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Displays the WMI object-path text.
impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_wmi_text(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(id: &str) -> ObjectPath {
        ObjectPath::new("Msvm_SnapshotCollection")
            .with_key("CollectionID", Value::String(id.into()))
    }

    #[test]
    fn wmi_host_form() {
        let p =
            parse(r#"\\HOST\root\virtualization\v2:Msvm_SnapshotCollection.CollectionID="abc""#)
                .unwrap();
        assert_eq!(p.host.as_deref(), Some("HOST"));
        assert_eq!(p.namespace.as_deref(), Some("root/virtualization/v2"));
        assert_eq!(
            p,
            ObjectPath {
                host: Some("HOST".into()),
                ..snap("abc").with_namespace("root/virtualization/v2")
            }
        );
        assert_eq!(
            p.to_wmi_text(),
            r#"\\HOST\root\virtualization\v2:Msvm_SnapshotCollection.CollectionID="abc""#
        );
        assert_eq!(
            p.to_wbem_uri(),
            r#"//HOST/root/virtualization/v2:Msvm_SnapshotCollection.CollectionID="abc""#
        );
    }

    #[test]
    fn namespace_and_host_optional() {
        assert_eq!(
            parse(r#"Msvm_SnapshotCollection.CollectionID="abc""#).unwrap(),
            snap("abc")
        );
        let want = snap("abc").with_namespace("root/virtualization/v2");
        for t in [
            r#"root/virtualization/v2:Msvm_SnapshotCollection.CollectionID="abc""#,
            r#"root\virtualization\v2:Msvm_SnapshotCollection.CollectionID="abc""#,
            r#"/root/virtualization/v2:Msvm_SnapshotCollection.CollectionID="abc""#,
            r#"ROOT\Virtualization\V2:Msvm_SnapshotCollection.CollectionID="abc""#,
        ] {
            assert_eq!(parse(t).unwrap(), want, "{t}");
        }
        assert_eq!(
            parse(r#"/:Msvm_SnapshotCollection.CollectionID="abc""#).unwrap(),
            snap("abc")
        );
        assert_eq!(
            want.to_wmi_text(),
            r#"root\virtualization\v2:Msvm_SnapshotCollection.CollectionID="abc""#
        );
        assert_eq!(
            snap("abc").to_wbem_uri(),
            r#"/:Msvm_SnapshotCollection.CollectionID="abc""#
        );
    }

    #[test]
    fn wbem_uri_and_wbemcli_forms() {
        let want = ObjectPath {
            host: Some("127.0.0.1:5988".into()),
            ..ObjectPath::new("Msvm_ConcreteJob")
                .with_namespace("root/virtualization/v2")
                .with_key("InstanceID", Value::String("J-1".into()))
        };
        assert_eq!(
            parse(r#"//127.0.0.1:5988/root/virtualization/v2:Msvm_ConcreteJob.InstanceID="J-1""#)
                .unwrap(),
            want
        );
        assert_eq!(
            parse(
                r#"https://127.0.0.1:5988/root/virtualization/v2:Msvm_ConcreteJob.InstanceID="J-1""#
            )
            .unwrap(),
            want
        );
        assert_eq!(
            parse(r#"127.0.0.1:5988/root/virtualization/v2:Msvm_ConcreteJob.InstanceID="J-1""#)
                .unwrap(),
            want
        );
        let local =
            parse(r#"localhost/root/virtualization/v2:Msvm_ConcreteJob.InstanceID="J-1""#).unwrap();
        assert_eq!(local.host.as_deref(), Some("localhost"));
        assert_eq!(local.namespace.as_deref(), Some("root/virtualization/v2"));
        let interop = parse(r#"interop:CIM_Namespace.Name="x""#).unwrap();
        assert_eq!(
            (interop.host, interop.namespace.as_deref()),
            (None, Some("interop"))
        );
    }

    #[test]
    fn multiple_and_unquoted_keys() {
        let p = parse(r#"Class.K1="v",K2=5,K3=-7,K4=true,K5=FALSE,K6=1.5"#).unwrap();
        assert_eq!(
            p.keys,
            vec![
                ("K1".into(), Value::String("v".into())),
                ("K2".into(), Value::Uint64(5)),
                ("K3".into(), Value::Sint64(-7)),
                ("K4".into(), Value::Boolean(true)),
                ("K5".into(), Value::Boolean(false)),
                ("K6".into(), Value::Real64(1.5)),
            ]
        );
        assert_eq!(
            p.to_wmi_text(),
            r#"Class.K1="v",K2=5,K3=-7,K4=TRUE,K5=FALSE,K6=1.5"#
        );
        assert_eq!(parse(&p.to_wmi_text()).unwrap(), p);
    }

    #[test]
    fn escapes_in_values() {
        let inner = r#"\\HOST\root\virtualization\v2:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="a,b""#;
        let text = r#"Msvm_SnapshotOfVirtualSystem.Antecedent="\\\\HOST\\root\\virtualization\\v2:Msvm_ComputerSystem.CreationClassName=\"Msvm_ComputerSystem\",Name=\"a,b\"",Dependent="x""#;
        let p = parse(text).unwrap();
        assert_eq!(p.key_str("Antecedent"), Some(inner));
        assert_eq!(p.key_str("dependent"), Some("x"));
        assert_eq!(p.to_wmi_text(), text);
        let nested = parse(p.key_str("Antecedent").unwrap()).unwrap();
        assert_eq!(nested.key_str("Name"), Some("a,b"));
        // A reference value prints as an escaped nested path.
        let r = ObjectPath::new("A").with_key("R", Value::Reference(nested.clone()));
        assert_eq!(
            r.to_wmi_text(),
            format!(
                "A.R=\"{}\"",
                inner.replace('\\', "\\\\").replace('"', "\\\"")
            )
        );
    }

    #[test]
    fn class_paths() {
        let p = parse(r#"\\.\root\virtualization\v2:Msvm_ComputerSystem"#).unwrap();
        assert!(p.is_class_path());
        assert_eq!(p.host.as_deref(), Some("."));
        assert_eq!(
            p.to_wmi_text(),
            r#"\\.\root\virtualization\v2:Msvm_ComputerSystem"#
        );
    }

    #[test]
    fn rejects_garbage_with_typed_errors() {
        assert_eq!(parse("  "), Err(PathError::Empty));
        assert!(matches!(
            parse(&"a".repeat(MAX_PATH_LEN + 1)),
            Err(PathError::TooLong { .. })
        ));
        let many: Vec<String> = (0..MAX_KEYS + 1).map(|i| format!("K{i}=1")).collect();
        assert_eq!(
            parse(&format!("C.{}", many.join(","))),
            Err(PathError::TooManyKeys { max: MAX_KEYS })
        );
        for bad in [
            r#"C.K="unterminated"#,
            r#"C.K=abc"#,
            r#"C.K"#,
            r#"C.="x""#,
            r#"C.K="x"junk"#,
            r#"1C.K="x""#,
            r#"C D.K="x""#,
            r#"root/vir tual:C.K="x""#,
            r#"C.K=99999999999999999999999"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, PathError::Syntax { .. }), "{bad}: {e}");
            assert!(!e.to_string().is_empty());
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::String),
            any::<bool>().prop_map(Value::Boolean),
            any::<u64>().prop_map(Value::Uint64),
            (i64::MIN..0i64).prop_map(Value::Sint64),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            host in proptest::option::of("[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?"),
            ns in proptest::option::of("root(/[a-z][a-z0-9_]{0,8}){0,3}"),
            class in "[A-Za-z_][A-Za-z0-9_]{0,30}",
            keys in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,12}", arb_value()), 0..5),
        ) {
            let p = ObjectPath { host, namespace: ns, class_name: class, keys };
            prop_assert_eq!(parse(&p.to_wmi_text()).unwrap(), p.clone());
            prop_assert_eq!(parse(&p.to_wbem_uri()).unwrap(), p);
        }

        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }
    }
}
