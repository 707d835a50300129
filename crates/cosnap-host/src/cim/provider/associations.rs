//! The association instances (collected members, snapshots of, affected job elements,
//! settings) and which of them reference a given object.

use cosnap_cim::{AssocFilter, CimError, CimType, Instance, ObjectPath, Value, schema};

use super::classes::*;
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

/// The snapshot associations one snapshot owns: its collected VSSDs, the snapshot of its
/// collection, of each VM.
pub(super) fn snapshot_associations(class: &str, s: &Snapshot) -> Vec<Instance> {
    match class {
        "Msvm_CollectedSnapshots" => s
            .vms
            .iter()
            .map(|v| {
                assoc(
                    class,
                    ("Collection", snapshot_collection_path(&s.id)),
                    ("Member", vssd_path(&v.vssd_id)),
                )
            })
            .collect(),
        "Msvm_SnapshotOfVirtualSystemCollection" => vec![assoc(
            class,
            (
                "Antecedent",
                collection_path(&s.collection_id, COLLECTION_OF_VMS),
            ),
            ("Dependent", snapshot_collection_path(&s.id)),
        )],
        "Msvm_SnapshotOfVirtualSystem" => s
            .vms
            .iter()
            .map(|v| {
                assoc(
                    class,
                    ("Antecedent", vm_path(&v.vm_id)),
                    ("Dependent", vssd_path(&v.vssd_id)),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The reference point associations one reference point owns: collected, of its
/// collection, of each VM.
pub(super) fn refpoint_associations(class: &str, r: &RefPoint) -> Vec<Instance> {
    let rpc = refpoint_collection_path(&r.id, &r.collection_id);
    match class {
        "Msvm_CollectedReferencePoints" => r
            .vms
            .iter()
            .map(|v| {
                assoc(
                    class,
                    ("Collection", rpc.clone()),
                    ("Member", refpoint_path(&v.instance_id, &v.vm_id)),
                )
            })
            .collect(),
        "Msvm_ReferencePointOfVirtualSystemCollection" => vec![assoc(
            class,
            (
                "Antecedent",
                collection_path(&r.collection_id, COLLECTION_OF_VMS),
            ),
            ("Dependent", rpc),
        )],
        "Msvm_ReferencePointOfVirtualSystem" => r
            .vms
            .iter()
            .map(|v| {
                assoc(
                    class,
                    ("Antecedent", vm_path(&v.vm_id)),
                    ("Dependent", refpoint_path(&v.instance_id, &v.vm_id)),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Msvm_SettingsDefineState: a VM and its current settings.
pub(super) fn settings_define_state(vm_id: &str) -> Instance {
    assoc(
        "Msvm_SettingsDefineState",
        ("ManagedElement", vm_path(vm_id)),
        ("SettingData", vssd_path(&vm_vssd_id(vm_id))),
    )
}

/// Msvm_VirtualSystemSettingDataComponent: a VSSD and each of its resource settings.
pub(super) fn settings_components(vssd: Instance, rasds: Vec<Instance>) -> Vec<Instance> {
    let class = "Msvm_VirtualSystemSettingDataComponent";
    let Some(vp) = vssd.path else {
        return Vec::new();
    };
    rasds
        .into_iter()
        .filter_map(|r| r.path)
        .map(|rp| assoc(class, ("GroupComponent", vp.clone()), ("PartComponent", rp)))
        .collect()
}

/// Msvm_AffectedJobElement: a job's effect on one element (ElementEffects 5).
pub(super) fn affected(element: ObjectPath, job_id: &str) -> Instance {
    let mut a = assoc(
        "Msvm_AffectedJobElement",
        ("AffectedElement", element),
        ("AffectingElement", job_path(job_id)),
    );
    a.set(
        "ElementEffects",
        CimType::Uint16,
        Some(Value::Array(vec![Value::Uint16(5)])),
    );
    a
}

/// Whether `class` is an association class of the schema.
pub(super) fn is_association(class: &str) -> bool {
    schema().class(class).is_some_and(|c| {
        c.qualifiers
            .iter()
            .any(|q| q.name.eq_ignore_ascii_case("Association"))
    })
}

impl Host {
    /// Msvm_CollectedVirtualSystems or Msvm_CollectedCollections: one collection and its
    /// members.
    pub(super) fn collected_members(&self, class: &str, c: &Collection) -> Vec<Instance> {
        let mut out = Vec::new();
        for m in &c.members {
            let member = if c.kind == COLLECTION_OF_VMS {
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
        out
    }

    /// Msvm_AffectedJobElement: the objects one job made or changed.
    pub(super) fn affected_job_elements(&self, j: &Job) -> Vec<Instance> {
        j.affected
            .iter()
            .filter_map(|(c, id)| self.element_path(c, id))
            .map(|p| affected(p, &j.id))
            .collect()
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
        let resolved = match self.resource_setting_owner(path) {
            Some(owner) => owner,
            None => self.resolve_path(path),
        };
        let near = match resolved {
            // No association class the host serves refers to an association instance.
            _ if is_association(&path.class_name) => Some(Vec::new()),
            Ok(resolved) => Some(
                self.associations_near(&resolved, &wanted)
                    .map_err(|e| e.to_cim())?,
            ),
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
            if is_association(class) && wanted(class) {
                out.extend(self.instances_of(class)?);
            }
        }
        Ok(out)
    }
}
