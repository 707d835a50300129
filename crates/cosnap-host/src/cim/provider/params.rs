//! Reading method parameters (REFs, strings, numbers, embedded instances) and writing
//! method outcomes.

use cosnap_cim::{Instance, MethodOutcome, ObjectPath, Value};

use crate::cim::*;
use crate::error::{HostError, dmtf};

pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) | Value::Datetime(s) => s.clone(),
        Value::Boolean(b) => b.to_string(),
        Value::Reference(p) => format!("{p:?}"),
        other => other.as_u64().map(|n| n.to_string()).unwrap_or_default(),
    }
}

/// Same object: class names and key bindings equal (names case-insensitive, order free;
/// host and namespace ignored).
pub fn same_path(a: &ObjectPath, b: &ObjectPath) -> bool {
    a.class_name.eq_ignore_ascii_case(&b.class_name)
        && a.keys.len() == b.keys.len()
        && a.keys.iter().all(|(k, v)| {
            b.key(k).is_some_and(|w| match (v, w) {
                (Value::Reference(x), Value::Reference(y)) => same_path(x, y),
                _ => value_text(v) == value_text(w),
            })
        })
}

pub(super) fn param<'a>(params: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A REF parameter: a reference, or WMI path text in a string.
pub fn ref_param(params: &[(String, Value)], name: &str) -> Result<ObjectPath, HostError> {
    match param(params, name) {
        None => Err(HostError::invalid(format!("{name} is required"))),
        Some(Value::Reference(p)) => Ok(p.clone()),
        Some(Value::String(s)) => cosnap_cim::path_text::parse(s)
            .ok()
            .ok_or_else(|| HostError::invalid(format!("{name}: {s:?} is not an object path"))),
        Some(_) => Err(HostError::invalid(format!("{name} must be an object path"))),
    }
}

pub(super) fn string_param(
    params: &[(String, Value)],
    name: &str,
) -> Result<Option<String>, HostError> {
    match param(params, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HostError::invalid(format!("{name} must be a string"))),
    }
}

pub(super) fn uint_param(params: &[(String, Value)], name: &str) -> Result<Option<u64>, HostError> {
    match param(params, name) {
        None => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| HostError::invalid(format!("{name}: {s:?} is not a number"))),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| HostError::invalid(format!("{name} must be an unsigned integer"))),
    }
}

/// An embedded-instance value: an instance, "" (none) or CIM-XML text in any producer variant.
pub fn embedded(v: &Value, name: &str) -> Result<Option<Instance>, HostError> {
    match v {
        Value::Instance(i) => Ok(Some((**i).clone())),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => cosnap_cim::embedded::decode_with_schema(s).map_err(|e| {
            HostError::invalid(format!(
                "{name} is not a well-formed embedded instance: {e}"
            ))
        }),
        _ => Err(HostError::invalid(format!(
            "{name} must be an embedded instance"
        ))),
    }
}

pub(super) fn embedded_param(
    params: &[(String, Value)],
    name: &str,
) -> Result<Option<Instance>, HostError> {
    match param(params, name) {
        None => Ok(None),
        Some(v) => embedded(v, name),
    }
}

pub(super) fn outcome(code: u32) -> MethodOutcome {
    MethodOutcome {
        return_value: code,
        out_params: vec![],
    }
}

pub(super) fn job_started(job: &str) -> MethodOutcome {
    MethodOutcome {
        return_value: dmtf::JOB_STARTED,
        out_params: vec![("Job".into(), Value::Reference(job_path(job)))],
    }
}
