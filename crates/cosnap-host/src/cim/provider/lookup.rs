//! Key lookups: the instances `get_instance` finds by their key without enumerating their
//! class (settings of VMs and snapshots, their resource settings, reference points).

use cosnap_cim::{Instance, ObjectPath};

use super::params::same_path;
use crate::Resolved;
use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;

impl Host {
    /// A snapshot's settings of one VM (Msvm_VirtualSystemSettingData).
    pub(super) fn snapshot_settings_instance(
        &self,
        snap_id: &str,
        vm_id: &str,
    ) -> Result<Instance, HostError> {
        let snap = self.snapshot(snap_id)?;
        let v = snap.vms.iter().find(|v| v.vm_id == vm_id).ok_or_else(|| {
            HostError::not_found(format!("snapshot {snap_id} does not hold VM {vm_id}"))
        })?;
        Ok(self.snapshot_vssd_instance(&snap, v))
    }

    /// One VM's reference point (Msvm_VirtualSystemReferencePoint).
    pub(super) fn refpoint_member_instance(
        &self,
        rp_id: &str,
        vm_id: &str,
    ) -> Result<Instance, HostError> {
        let rp = self.refpoint(rp_id)?;
        let v = rp.vms.iter().find(|v| v.vm_id == vm_id).ok_or_else(|| {
            HostError::not_found(format!("reference point {rp_id} does not hold VM {vm_id}"))
        })?;
        Ok(self.refpoint_instance(&rp, v))
    }

    /// The VSSD owning the resource setting `path` names (its InstanceID is
    /// `<VSSD InstanceID>\<suffix>`); `None` when `path` is not a resource setting's.
    pub(super) fn resource_setting_owner(
        &self,
        path: &ObjectPath,
    ) -> Option<Result<Resolved, HostError>> {
        let class = path.class_name.as_str();
        let is_resource_setting = class.ends_with("SettingData")
            && !class.eq_ignore_ascii_case("Msvm_VirtualSystemSettingData")
            && super::classes::CONCRETE
                .iter()
                .any(|c| c.eq_ignore_ascii_case(class));
        if !is_resource_setting {
            return None;
        }

        let Some(iid) = path.key_str("InstanceID") else {
            return Some(Err(HostError::invalid(format!(
                "object path of {class} lacks its key InstanceID"
            ))));
        };
        let (vssd, _) = iid.split_once('\\')?;
        Some(self.resolve_path(&vssd_path(vssd)))
    }

    /// The resource setting `path` names, built from its VSSD alone; `None` when `path` is
    /// not a resource setting's.
    pub(super) fn resource_setting_instance(
        &self,
        path: &ObjectPath,
    ) -> Option<Result<Instance, HostError>> {
        let owner = self.resource_setting_owner(path)?;
        let rasds = owner.and_then(|owner| match owner {
            Resolved::VmSettings(vm) => Ok(self.vm_instances(&self.vm(&vm)?).1),
            Resolved::SnapshotSettings(snap_id, vm_id) => {
                let snap = self.snapshot(&snap_id)?;
                let v = snap.vms.iter().find(|v| v.vm_id == vm_id);
                Ok(v.map(|v| self.snapshot_vm_instances(&snap, v).1)
                    .unwrap_or_default())
            }
            _ => Ok(Vec::new()),
        });
        Some(rasds.and_then(|rasds| {
            rasds
                .into_iter()
                .find(|r| r.path.as_ref().is_some_and(|p| same_path(p, path)))
                .ok_or_else(|| HostError::not_found("no such resource setting"))
        }))
    }
}
