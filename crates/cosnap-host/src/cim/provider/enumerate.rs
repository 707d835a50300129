//! The instances of the served classes: what one owner row (a VM, snapshot, reference
//! point, collection, job, or the host) contributes to each class, and the list forms.

use cosnap_cim::{CimError, Instance, ObjectPath, schema};

use super::associations::*;
use super::classes::*;
use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;
use crate::model::*;

/// The resource settings of class `class` among one VSSD's.
fn resource_settings(class: &str, rasds: Vec<Instance>) -> Vec<Instance> {
    rasds
        .into_iter()
        .filter(|i| i.class_name == class)
        .collect()
}

impl Host {
    pub(super) fn element_path(&self, class: &str, id: &str) -> Option<ObjectPath> {
        Some(match class {
            "Msvm_SnapshotCollection" => snapshot_collection_path(id),
            "Msvm_ReferencePointCollection" => {
                let rp = self.refpoint(id).ok()?;
                refpoint_collection_path(&rp.id, &rp.collection_id)
            }
            "Msvm_ComputerSystem" => vm_path(id),
            "Msvm_VirtualSystemCollection" => collection_path(id, COLLECTION_OF_VMS),
            "Msvm_ManagementCollection" => collection_path(id, COLLECTION_OF_COLLECTIONS),
            _ => return None,
        })
    }

    /// Instances of exactly `class` (no subclasses), owner row by owner row.
    pub(super) fn instances_of(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for table in owners_of(class) {
            for id in self.all_owners(*table)? {
                out.extend(self.instances_from(class, *table, &id)?);
            }
        }
        Ok(out)
    }

    /// The instances of exactly `class` that the row `id` of `table` owns; none when the
    /// row went away since it was listed (an enumeration skips it, as a client walking
    /// paths would find it gone).
    pub(super) fn instances_from(
        &self,
        class: &str,
        table: Owners,
        id: &str,
    ) -> Result<Vec<Instance>, HostError> {
        let found = match table {
            Owners::Vms => self.vm(id).map(|vm| self.vm_owned(class, &vm)),
            Owners::Snapshots => self.snapshot(id).map(|s| self.snapshot_owned(class, &s)),
            Owners::RefPoints => self.refpoint(id).map(|r| self.refpoint_owned(class, &r)),
            Owners::Collections => self
                .collection(id)
                .map(|c| self.collection_owned(class, &c)),
            Owners::Jobs => self.job(id).map(|j| self.job_owned(class, &j)),
            Owners::Host => Ok(vec![self.service_instance(class)]),
        };
        match found {
            Err(HostError::NotFound(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    fn vm_owned(&self, class: &str, vm: &Vm) -> Vec<Instance> {
        match class {
            "Msvm_ComputerSystem" => vec![self.vm_instance(vm)],
            "Msvm_VirtualSystemSettingData" => vec![self.vm_vssd_instance(vm)],
            "Msvm_SettingsDefineState" => vec![settings_define_state(&vm.id)],
            "Msvm_VirtualSystemSettingDataComponent" => {
                let (vssd, rasds) = self.vm_instances(vm);
                settings_components(vssd, rasds)
            }
            c => resource_settings(c, self.vm_instances(vm).1),
        }
    }

    fn snapshot_owned(&self, class: &str, snap: &Snapshot) -> Vec<Instance> {
        let mut out = Vec::new();
        match class {
            "Msvm_SnapshotCollection" => out.push(self.snapshot_collection_instance(snap)),
            "Msvm_VirtualSystemSettingData" => out.extend(
                snap.vms
                    .iter()
                    .map(|v| self.snapshot_vssd_instance(snap, v)),
            ),
            "Msvm_VirtualSystemSettingDataComponent" => {
                for v in &snap.vms {
                    let (vssd, rasds) = self.snapshot_vm_instances(snap, v);
                    out.extend(settings_components(vssd, rasds));
                }
            }
            c if c.ends_with("SettingData") => {
                for v in &snap.vms {
                    out.extend(resource_settings(c, self.snapshot_vm_instances(snap, v).1));
                }
            }
            c => out.extend(snapshot_associations(c, snap)),
        }
        out
    }

    fn refpoint_owned(&self, class: &str, rp: &RefPoint) -> Vec<Instance> {
        match class {
            "Msvm_ReferencePointCollection" => vec![self.refpoint_collection_instance(rp)],
            "Msvm_VirtualSystemReferencePoint" => rp
                .vms
                .iter()
                .map(|v| self.refpoint_instance(rp, v))
                .collect(),
            c => refpoint_associations(c, rp),
        }
    }

    fn collection_owned(&self, class: &str, c: &Collection) -> Vec<Instance> {
        let kind = match class {
            "Msvm_VirtualSystemCollection" | "Msvm_CollectedVirtualSystems" => COLLECTION_OF_VMS,
            _ => COLLECTION_OF_COLLECTIONS,
        };
        if c.kind != kind {
            return Vec::new();
        }
        match class {
            "Msvm_VirtualSystemCollection" | "Msvm_ManagementCollection" => {
                vec![self.collection_instance(c)]
            }
            _ => self.collected_members(class, c),
        }
    }

    fn job_owned(&self, class: &str, job: &Job) -> Vec<Instance> {
        match class {
            "Msvm_ConcreteJob" => vec![self.job_instance(job)],
            _ => self.affected_job_elements(job),
        }
    }

    pub(super) fn check_class(&self, class: &str) -> Result<(), CimError> {
        if schema().class(class).is_none() {
            return Err(CimError::invalid_class(format!(
                "no class {class} in root/virtualization/v2"
            )));
        }
        Ok(())
    }
}
