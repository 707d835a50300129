//! Which classes the host serves and their instances, class by class.

use cosnap_cim::{CimError, Instance, ObjectPath, schema};

use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;
use crate::model::*;

/// Classes whose instances the host serves directly (associations included).
pub(super) const CONCRETE: &[&str] = &[
    "Msvm_ComputerSystem",
    "Msvm_VirtualSystemSettingData",
    "Msvm_ProcessorSettingData",
    "Msvm_MemorySettingData",
    "Msvm_StorageAllocationSettingData",
    "Msvm_SyntheticEthernetPortSettingData",
    "Msvm_EthernetPortAllocationSettingData",
    "Msvm_SerialPortSettingData",
    "Msvm_VirtualSystemReferencePoint",
    "Msvm_VirtualSystemCollection",
    "Msvm_ManagementCollection",
    "Msvm_SnapshotCollection",
    "Msvm_ReferencePointCollection",
    "Msvm_ConcreteJob",
    "Msvm_CollectionManagementService",
    "Msvm_CollectionSnapshotService",
    "Msvm_CollectionReferencePointService",
    "Msvm_VirtualSystemManagementService",
    "Msvm_CollectedVirtualSystems",
    "Msvm_CollectedCollections",
    "Msvm_CollectedSnapshots",
    "Msvm_CollectedReferencePoints",
    "Msvm_SnapshotOfVirtualSystemCollection",
    "Msvm_ReferencePointOfVirtualSystemCollection",
    "Msvm_SnapshotOfVirtualSystem",
    "Msvm_ReferencePointOfVirtualSystem",
    "Msvm_AffectedJobElement",
    "Msvm_SettingsDefineState",
    "Msvm_VirtualSystemSettingDataComponent",
];

pub(super) fn is_a(sub: &str, sup: &str) -> bool {
    sub.eq_ignore_ascii_case(sup) || schema().is_subclass(sub, sup)
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

    /// Instances of exactly `class` (no subclasses).
    pub(super) fn instances_of(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        match class {
            "Msvm_ComputerSystem" => out.extend(self.vms()?.iter().map(|v| self.vm_instance(v))),
            "Msvm_VirtualSystemSettingData" => {
                for vm in self.vms()? {
                    out.push(self.vm_instances(&vm).0);
                }
                for snap in self.snapshots(None)? {
                    for v in &snap.vms {
                        out.push(self.snapshot_vm_instances(&snap, v).0);
                    }
                }
            }
            c if c.ends_with("SettingData") => {
                for vm in self.vms()? {
                    out.extend(
                        self.vm_instances(&vm)
                            .1
                            .into_iter()
                            .filter(|i| i.class_name == c),
                    );
                }
                for snap in self.snapshots(None)? {
                    for v in &snap.vms {
                        out.extend(
                            self.snapshot_vm_instances(&snap, v)
                                .1
                                .into_iter()
                                .filter(|i| i.class_name == c),
                        );
                    }
                }
            }
            "Msvm_VirtualSystemReferencePoint" => {
                for rp in self.refpoints(None)? {
                    out.extend(rp.vms.iter().map(|v| self.refpoint_instance(&rp, v)));
                }
            }
            "Msvm_VirtualSystemCollection" | "Msvm_ManagementCollection" => {
                let kind = if class == "Msvm_VirtualSystemCollection" {
                    COLLECTION_OF_VMS
                } else {
                    COLLECTION_OF_COLLECTIONS
                };
                out.extend(
                    self.collections()?
                        .iter()
                        .filter(|c| c.kind == kind)
                        .map(|c| self.collection_instance(c)),
                );
            }
            "Msvm_SnapshotCollection" => out.extend(
                self.snapshots(None)?
                    .iter()
                    .map(|s| self.snapshot_collection_instance(s)),
            ),
            "Msvm_ReferencePointCollection" => out.extend(
                self.refpoints(None)?
                    .iter()
                    .map(|r| self.refpoint_collection_instance(r)),
            ),
            "Msvm_ConcreteJob" => out.extend(self.jobs()?.iter().map(|j| self.job_instance(j))),
            c if SERVICES.iter().any(|(s, _)| *s == c) => out.push(self.service_instance(c)),
            c => out.extend(self.associations_of(c)?),
        }
        Ok(out)
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
