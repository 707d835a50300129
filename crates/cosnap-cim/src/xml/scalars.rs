//! Scalars: typed CIM values from and to their CIM-XML text.

use super::*;

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

pub(super) fn parse_real(t: &str) -> Option<f64> {
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

pub(super) fn format_real(f: f64) -> String {
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

pub(super) fn is_integer(v: &Value) -> bool {
    is_integer_type(type_of(v)) && !matches!(v, Value::Array(_))
}

pub(super) fn is_integer_type(t: CimType) -> bool {
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
