//! ExportSnapshot (owned by the export engineer): argument checks, the job, and writing the
//! package through cosnap-export. Placeholder until that work lands: the provider's method
//! dispatch calls [`export_snapshot`] with the method's target and parameters.

use cosnap_cim::{CimError, MethodOutcome, ObjectPath, Value};

use crate::Host;

/// `Msvm_CollectionSnapshotService.ExportSnapshot(SnapshotCollection, ExportDirectory,
/// ExportSettingData) → Job`. Parameters as the provider received them.
pub fn export_snapshot(
    host: &Host,
    target: &ObjectPath,
    params: &[(String, Value)],
) -> Result<MethodOutcome, CimError> {
    let _ = (host, target, params);
    Ok(MethodOutcome {
        return_value: crate::error::dmtf::NOT_SUPPORTED,
        out_params: vec![],
    })
}
