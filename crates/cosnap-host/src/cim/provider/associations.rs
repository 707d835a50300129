//! The association instances (collected members, snapshots of, affected job elements,
//! settings) and which of them reference a given object.

use cosnap_cim::{AssocFilter, CimError, CimType, Instance, ObjectPath, Value, schema};

use super::enumerate::*;
use super::params::*;
use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;
use crate::model::*;

/// The association classes a call asks for (its AssocClass / ResultClass filter).
pub(super) type Wanted<'a> = &'a dyn Fn(&str) -> bool;

pub(super) fn assoc(class: &str, a: (&str, ObjectPath), b: (&str, ObjectPath)) -> Instance {
    let path = ObjectPath::new(class)
        .with_key(a.0, Value::Reference(a.1.clone()))
        .with_key(b.0, Value::Reference(b.1.clone()));
    Instance::new(class)
        .with(a.0, CimType::Reference, Some(Value::Reference(a.1)))
        .with(b.0, CimType::Reference, Some(Value::Reference(b.1)))
        .with_path(path)
}

impl Host {
    pub(super) fn associations_of(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        match class {
            "Msvm_CollectedVirtualSystems" | "Msvm_CollectedCollections" => {
                self.collected_members(class)
            }
            "Msvm_CollectedSnapshots"
            | "Msvm_SnapshotOfVirtualSystemCollection"
            | "Msvm_SnapshotOfVirtualSystem" => self.snapshot_associations(class),
            "Msvm_CollectedReferencePoints"
            | "Msvm_ReferencePointOfVirtualSystemCollection"
            | "Msvm_ReferencePointOfVirtualSystem" => self.refpoint_associations(class),
            "Msvm_AffectedJobElement" => self.affected_job_elements(class),
            "Msvm_SettingsDefineState" => self.settings_define_state(class),
            "Msvm_VirtualSystemSettingDataComponent" => self.settings_components(class),
            _ => Ok(Vec::new()),
        }
    }

    /// Msvm_CollectedVirtualSystems, Msvm_CollectedCollections: collections and their members.
    fn collected_members(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        let kind = if class == "Msvm_CollectedVirtualSystems" {
            COLLECTION_OF_VMS
        } else {
            COLLECTION_OF_COLLECTIONS
        };
        for c in self.collections()?.into_iter().filter(|c| c.kind == kind) {
            for m in &c.members {
                let member = if kind == COLLECTION_OF_VMS {
                    vm_path(m)
                } else {
                    let Ok(mc) = self.collection(m) else { continue };
                    collection_path(&mc.id, mc.kind)
                };
                out.push(assoc(
                    class,
                    ("Collection", collection_path(&c.id, c.kind)),
                    ("Member", member),
                ));
            }
        }
        Ok(out)
    }

    /// The snapshot associations: collected VSSDs, the snapshot of a collection, of a VM.
    fn snapshot_associations(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for s in self.snapshots(None)? {
            match class {
                "Msvm_CollectedSnapshots" => {
                    for v in &s.vms {
                        out.push(assoc(
                            class,
                            ("Collection", snapshot_collection_path(&s.id)),
                            ("Member", vssd_path(&v.vssd_id)),
                        ));
                    }
                }
                "Msvm_SnapshotOfVirtualSystemCollection" => out.push(assoc(
                    class,
                    (
                        "Antecedent",
                        collection_path(&s.collection_id, COLLECTION_OF_VMS),
                    ),
                    ("Dependent", snapshot_collection_path(&s.id)),
                )),
                _ => {
                    for v in &s.vms {
                        out.push(assoc(
                            class,
                            ("Antecedent", vm_path(&v.vm_id)),
                            ("Dependent", vssd_path(&v.vssd_id)),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The reference point associations: collected, of a collection, of a VM.
    fn refpoint_associations(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for r in self.refpoints(None)? {
            let rpc = refpoint_collection_path(&r.id, &r.collection_id);
            match class {
                "Msvm_CollectedReferencePoints" => {
                    for v in &r.vms {
                        out.push(assoc(
                            class,
                            ("Collection", rpc.clone()),
                            ("Member", refpoint_path(&v.instance_id, &v.vm_id)),
                        ));
                    }
                }
                "Msvm_ReferencePointOfVirtualSystemCollection" => out.push(assoc(
                    class,
                    (
                        "Antecedent",
                        collection_path(&r.collection_id, COLLECTION_OF_VMS),
                    ),
                    ("Dependent", rpc),
                )),
                _ => {
                    for v in &r.vms {
                        out.push(assoc(
                            class,
                            ("Antecedent", vm_path(&v.vm_id)),
                            ("Dependent", refpoint_path(&v.instance_id, &v.vm_id)),
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Msvm_AffectedJobElement: each job and the objects it made or changed (ElementEffects 5).
    fn affected_job_elements(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for j in self.jobs()? {
            for (c, id) in &j.affected {
                let Some(p) = self.element_path(c, id) else {
                    continue;
                };
                let mut a = assoc(
                    class,
                    ("AffectedElement", p),
                    ("AffectingElement", job_path(&j.id)),
                );
                a.set(
                    "ElementEffects",
                    CimType::Uint16,
                    Some(Value::Array(vec![Value::Uint16(5)])),
                );
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Msvm_SettingsDefineState: each VM and its current settings.
    fn settings_define_state(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for vm in self.vms()? {
            out.push(assoc(
                class,
                ("ManagedElement", vm_path(&vm.id)),
                ("SettingData", vssd_path(&vm_vssd_id(&vm.id))),
            ));
        }
        Ok(out)
    }

    /// Msvm_VirtualSystemSettingDataComponent: each VSSD (current or snapshot) and its resource settings.
    fn settings_components(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        let mut add = |vssd: Instance, rasds: Vec<Instance>| {
            let Some(vp) = vssd.path.clone() else { return };
            for r in rasds {
                if let Some(rp) = r.path {
                    out.push(assoc(
                        class,
                        ("GroupComponent", vp.clone()),
                        ("PartComponent", rp),
                    ));
                }
            }
        };
        for vm in self.vms()? {
            let (v, r) = self.vm_instances(&vm);
            add(v, r);
        }
        for snap in self.snapshots(None)? {
            for sv in &snap.vms {
                let (v, r) = self.snapshot_vm_instances(&snap, sv);
                add(v, r);
            }
        }
        Ok(out)
    }

    /// The association instances (of the classes `filter` asks for) that refer to `path`,
    /// each with the name of the role that does. Found through the repository's indexes
    /// when the object has an indexed route ([`Host::associations_near`]), else by a scan.
    pub(super) fn assoc_instances(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<(Instance, String)>, CimError> {
        let wanted = |class: &str| filter.assoc_class.as_ref().is_none_or(|ac| is_a(class, ac));
        let near = match self.resolve_path(path) {
            Ok(resolved) => self
                .associations_near(&resolved, &wanted)
                .map_err(|e| e.to_cim())?,
            Err(HostError::NotFound(_)) => Some(Vec::new()),
            Err(_) => None,
        };
        let candidates = match near {
            Some(found) => found,
            None => self.every_association(&wanted).map_err(|e| e.to_cim())?,
        };
        let mut out = Vec::new();
        for inst in candidates {
            let role = inst.properties.iter().find(|p| {
                matches!(&p.value, Some(Value::Reference(r)) if same_path(r, path))
                    && filter
                        .role
                        .as_ref()
                        .is_none_or(|r| r.eq_ignore_ascii_case(&p.name))
            });
            if let Some(role) = role {
                let name = role.name.clone();
                out.push((inst, name));
            }
        }
        Ok(out)
    }

    /// Every association instance of the classes `wanted` accepts.
    pub(super) fn every_association(&self, wanted: Wanted) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        for class in CONCRETE {
            let is_assoc = schema().class(class).is_some_and(|c| {
                c.qualifiers
                    .iter()
                    .any(|q| q.name.eq_ignore_ascii_case("Association"))
            });
            if is_assoc && wanted(class) {
                out.extend(self.associations_of(class)?);
            }
        }
        Ok(out)
    }
}
