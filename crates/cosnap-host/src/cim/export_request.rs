//! `Msvm_CollectionSnapshotService.ExportSnapshot` as a CIM method: decodes the
//! parameters (object paths, the embedded `Msvm_CollectionSnapshotExportSettingData`)
//! into the domain's [`ExportRequest`], starts the export through
//! [`crate::export::start_export`], and answers with the method's return code and `Job`.
//!
//! Return codes and defaults are the export's (see [`crate::export`]); this module only
//! decides which of them a malformed parameter gets.

use std::path::PathBuf;

use cosnap_cim::{CimError, Instance, MethodOutcome, ObjectPath, Value};
use cosnap_export::BackupIntent;

use crate::error::dmtf;
use crate::export::{ExportRequest, Refusal, Roots, refuse, start_export};
use crate::{Host, Resolved};

use super::paths::job_path;

/// The class ExportSettingData must hold.
pub const SETTING_DATA_CLASS: &str = "Msvm_CollectionSnapshotExportSettingData";

/// The provider's entry point: decodes the parameters, checks them, starts the job.
pub fn export_snapshot(
    host: &Host,
    target: &ObjectPath,
    params: &[(String, Value)],
) -> Result<MethodOutcome, CimError> {
    let _ = target;

    let started =
        decode_request(host, params).and_then(|req| start_export(host, &req, Roots::Configured));

    match started {
        Ok(job) => Ok(MethodOutcome {
            return_value: dmtf::JOB_STARTED,
            out_params: vec![("Job".to_string(), Value::Reference(job_path(&job)))],
        }),
        Err(r) => {
            tracing::info!(code = r.code, "ExportSnapshot refused: {}", r.message);
            Ok(MethodOutcome {
                return_value: r.code,
                out_params: vec![],
            })
        }
    }
}

/// Decodes the method's parameters into a request (no file system access yet).
pub fn decode_request(host: &Host, params: &[(String, Value)]) -> Result<ExportRequest, Refusal> {
    let snapshot = snapshot_param(host, params)?;
    let dir = export_dir_param(params)?;
    let mut req = ExportRequest::full(&snapshot, &dir);

    if let Some(settings) = settings_param(params)? {
        apply_settings(host, &settings, &mut req)?;
    }
    Ok(req)
}

fn param<'a>(params: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A REF parameter: a reference, or WMI path text in a string.
fn parse_path(v: &Value, what: &str) -> Result<ObjectPath, Refusal> {
    match v {
        Value::Reference(p) => Ok(p.clone()),
        Value::String(s) => cosnap_cim::path_text::parse(s).ok().ok_or_else(|| {
            refuse(
                dmtf::INVALID_PARAMETER,
                format!("{what}: {s:?} is not an object path"),
            )
        }),
        _ => Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("{what} must be an object path"),
        )),
    }
}

fn bool_prop(inst: &Instance, name: &str, default: bool) -> Result<bool, Refusal> {
    match inst.get(name) {
        None => Ok(default),
        Some(Value::Boolean(b)) => Ok(*b),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(refuse(
            dmtf::INVALID_TYPE,
            format!("{name} must be a boolean, not {other:?}"),
        )),
    }
}

/// SnapshotCollection: required, naming a snapshot collection.
fn snapshot_param(host: &Host, params: &[(String, Value)]) -> Result<String, Refusal> {
    let value = param(params, "SnapshotCollection")
        .ok_or_else(|| refuse(dmtf::INVALID_PARAMETER, "SnapshotCollection is required"))?;
    let path = parse_path(value, "SnapshotCollection")?;

    match host.resolve_path(&path) {
        Ok(Resolved::SnapshotCollection(id)) => Ok(id),
        Ok(_) => Err(refuse(
            dmtf::INVALID_PARAMETER,
            "SnapshotCollection does not name a snapshot collection",
        )),
        Err(e) => Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("SnapshotCollection: {e}"),
        )),
    }
}

/// ExportDirectory: a non-empty string (checked against the roots by the export).
fn export_dir_param(params: &[(String, Value)]) -> Result<PathBuf, Refusal> {
    match param(params, "ExportDirectory") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(PathBuf::from(s)),
        Some(Value::String(_)) | None => Err(refuse(
            dmtf::INVALID_PARAMETER,
            "ExportDirectory is required",
        )),
        Some(_) => Err(refuse(
            dmtf::INVALID_TYPE,
            "ExportDirectory must be a string",
        )),
    }
}

/// ExportSettingData: absent, an instance, or CIM-XML text of one.
fn settings_param(params: &[(String, Value)]) -> Result<Option<Instance>, Refusal> {
    match param(params, "ExportSettingData") {
        None => Ok(None),
        Some(Value::Instance(i)) => Ok(Some((**i).clone())),
        Some(Value::String(s)) => cosnap_cim::embedded::decode_str(s, None).map_err(|e| {
            refuse(
                dmtf::INVALID_PARAMETER,
                format!("ExportSettingData is not an embedded instance: {e}"),
            )
        }),
        Some(_) => Err(refuse(
            dmtf::INVALID_TYPE,
            "ExportSettingData must be a string",
        )),
    }
}

/// The setting data's properties onto the request (NULL keeps the default).
fn apply_settings(host: &Host, sd: &Instance, req: &mut ExportRequest) -> Result<(), Refusal> {
    if !sd.class_name.eq_ignore_ascii_case(SETTING_DATA_CLASS) {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!(
                "ExportSettingData must be a {SETTING_DATA_CLASS}, not {}",
                sd.class_name
            ),
        ));
    }

    req.copy_storage = bool_prop(sd, "CopyVmStorage", true)?;
    req.create_subdirectory = bool_prop(sd, "CreateVmExportSubdirectory", false)?;
    req.allow_fallback_full = bool_prop(sd, "AllowFullExportFallback", false)?;
    req.intent = backup_intent(sd)?;
    req.base = differential_base(host, sd)?;
    Ok(())
}

/// BackupIntent: 1 (PreserveChain, the default) or 2 (Merge), as a number or its text.
fn backup_intent(sd: &Instance) -> Result<BackupIntent, Refusal> {
    let Some(v) = sd.get("BackupIntent") else {
        return Ok(BackupIntent::PreserveChain);
    };

    let n = match v {
        Value::String(s) => s.trim().parse::<u64>().map_err(|_| {
            refuse(
                dmtf::INVALID_TYPE,
                format!("BackupIntent must be an integer, not {s:?}"),
            )
        })?,
        other => other.as_u64().ok_or_else(|| {
            refuse(
                dmtf::INVALID_TYPE,
                format!("BackupIntent must be an integer, not {other:?}"),
            )
        })?,
    };

    BackupIntent::from_code(n).ok_or_else(|| {
        refuse(
            dmtf::INVALID_PARAMETER,
            format!("BackupIntent {n} is neither 1 (PreserveChain) nor 2 (Merge)"),
        )
    })
}

/// DifferentialBackupBase: NULL or "" (a full export), or a path naming a snapshot
/// collection or reference point collection.
fn differential_base(host: &Host, sd: &Instance) -> Result<Option<String>, Refusal> {
    let v = match sd.get("DifferentialBackupBase") {
        None => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(v @ (Value::String(_) | Value::Reference(_))) => v,
        Some(other) => {
            return Err(refuse(
                dmtf::INVALID_TYPE,
                format!("DifferentialBackupBase must be a string, not {other:?}"),
            ));
        }
    };

    let path = parse_path(v, "DifferentialBackupBase")?;
    match host.resolve_path(&path) {
        Ok(Resolved::SnapshotCollection(id)) | Ok(Resolved::RefPointCollection(id)) => Ok(Some(id)),
        Ok(_) => Err(refuse(
            dmtf::INVALID_PARAMETER,
            "DifferentialBackupBase must name a Msvm_SnapshotCollection or Msvm_ReferencePointCollection",
        )),
        Err(e) => Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("DifferentialBackupBase: {e}"),
        )),
    }
}
