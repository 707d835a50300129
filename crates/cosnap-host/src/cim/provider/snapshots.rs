//! Msvm_CollectionSnapshotService and Msvm_CollectionReferencePointService methods
//! (DMTF-style return codes; ExportSnapshot is decoded in [`crate::cim::export_request`]).

use cosnap_cim::{MethodOutcome, Value};

use super::params::*;
use crate::error::{HostError, dmtf};
use crate::host::Host;
use crate::model::*;

impl Host {
    pub(super) fn snapshot_ref(
        &self,
        params: &[(String, Value)],
        name: &str,
    ) -> Result<String, HostError> {
        let p = ref_param(params, name)?;
        match self.resolve_path(&p)? {
            crate::Resolved::SnapshotCollection(id) => Ok(id),
            _ => Err(HostError::InvalidType(format!(
                "{name} must name a Msvm_SnapshotCollection, not a {}",
                p.class_name
            ))),
        }
    }

    pub(super) fn snapshot_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "createsnapshot" => {
                let p = ref_param(params, "Collection")?;
                let cid = match self.resolve_path(&p)? {
                    crate::Resolved::Collection(id, _) => id,
                    _ => {
                        return Err(HostError::InvalidType(format!(
                            "Collection must name a Msvm_VirtualSystemCollection, not a {}",
                            p.class_name
                        )));
                    }
                };
                if let Some(s) = embedded_param(params, "SnapshotSettings")? {
                    if !s
                        .class_name
                        .eq_ignore_ascii_case("Msvm_VirtualSystemSnapshotSettingData")
                    {
                        return Err(HostError::invalid(format!(
                            "SnapshotSettings is a {}, not a Msvm_VirtualSystemSnapshotSettingData",
                            s.class_name
                        )));
                    }
                    if let Some(v) = s.get("ConsistencyLevel")
                        && v.as_u64()
                            .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
                            .is_none_or(|c| c > 2)
                    {
                        return Err(HostError::invalid(
                            "SnapshotSettings.ConsistencyLevel must be 0, 1 or 2",
                        ));
                    }
                }
                let ty = uint_param(params, "SnapshotType")?
                    .ok_or_else(|| HostError::invalid("SnapshotType is required"))?;
                let ty = u16::try_from(ty)
                    .map_err(|_| HostError::invalid("SnapshotType out of range"))?;
                Ok(job_started(&self.start_create_snapshot(&cid, ty)?))
            }
            "applysnapshot" => Ok(job_started(
                &self.start_apply_snapshot(&self.snapshot_ref(params, "SnapshotCollection")?)?,
            )),
            "destroysnapshot" => Ok(job_started(&self.start_destroy_snapshot(
                &self.snapshot_ref(params, "AffectedSnapshotCollection")?,
            )?)),
            "converttoreferencepoint" => Ok(job_started(&self.start_convert_to_refpoint(
                &self.snapshot_ref(params, "AffectedSnapshotCollection")?,
            )?)),
            "startservice" | "stopservice" => Ok(outcome(dmtf::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }

    pub(super) fn refpoint_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "destroyreferencepoint" => {
                let p = ref_param(params, "AffectedReferencePointCollection")?;
                match self.resolve_path(&p)? {
                    crate::Resolved::RefPointCollection(id) => {
                        Ok(job_started(&self.start_destroy_refpoint(&id)?))
                    }
                    _ => Err(HostError::InvalidType(format!(
                        "{} is not a Msvm_ReferencePointCollection",
                        p.class_name
                    ))),
                }
            }
            "createreferencepoint" => {
                let p = ref_param(params, "Collection")?;
                let cid = match self.resolve_path(&p)? {
                    crate::Resolved::Collection(id, COLLECTION_OF_VMS) => id,
                    _ => {
                        return Err(HostError::InvalidType(format!(
                            "Collection must name a Msvm_VirtualSystemCollection, not a {}",
                            p.class_name
                        )));
                    }
                };
                if let Some(s) = embedded_param(params, "ReferencePointSettings")?
                    && !s
                        .class_name
                        .eq_ignore_ascii_case("Msvm_CollectionReferencePointSettingData")
                {
                    return Err(HostError::invalid(format!(
                        "ReferencePointSettings is a {}",
                        s.class_name
                    )));
                }
                match uint_param(params, "ReferencePointType")?.unwrap_or(2) {
                    0 | 2 => {}
                    1 => return Ok(outcome(dmtf::NOT_SUPPORTED)),
                    t => {
                        return Err(HostError::invalid(format!(
                            "ReferencePointType {t} is not 1 or 2"
                        )));
                    }
                }
                self.check_create_snapshot(&cid, SNAPSHOT_RECOVERY)?;
                let job = self.start_job(
                    job_type::CREATE_RP_ON_COLLECTION,
                    "Create reference point on collection",
                    &format!("Creating a reference point of collection {cid}"),
                    true,
                    move |ctx| {
                        let sid =
                            ctx.host()
                                .create_snapshot_now(&cid, SNAPSHOT_RECOVERY, Some(ctx))?;
                        let rp = ctx.host().convert_to_refpoint_now(&sid, None)?;
                        Ok(vec![("Msvm_ReferencePointCollection".to_string(), rp)])
                    },
                )?;
                Ok(job_started(&job))
            }
            "startservice" | "stopservice" => Ok(outcome(dmtf::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }
}
