//! [`CimProvider`] for [`Host`]: classes from `schema/cosnap.mof`, instances and
//! associations built from the repository, and the services' extrinsic methods with their
//! documented return-code families.
//!
//! Decisions on vague points (recorded in docs/decisions.md, "CIM model: return-code
//! families, snapshot types, reference points, class mappings"):
//! * Collection management methods, DefineSystem and DestroySystem run synchronously and
//!   return 0 (Hyper-V may return 4096; both are documented outcomes). CreateSnapshot,
//!   ApplySnapshot, DestroySnapshot, ConvertToReferencePoint, CreateReferencePoint and
//!   DestroyReferencePoint always return 4096 + Job; their results are reached through
//!   Msvm_AffectedJobElement (ElementEffects 5).
//! * DMTF-style methods have no "not found": a REF naming a missing object is 4 Invalid
//!   Parameter; a REF naming an object of the wrong class (e.g. a reference point passed to
//!   ApplySnapshot) is 6 Invalid Type; an object being exported is 5 Invalid State.
//! * Msvm-style: missing object 32779 (the collection pages' "not found" reading),
//!   malformed argument / duplicate id / member added twice 32773, in use 32774, invalid
//!   state 32775.
//! * CreateSnapshot.SnapshotSettings: "" / absent = defaults, or one embedded
//!   Msvm_VirtualSystemSnapshotSettingData (ConsistencyLevel 0..2) — any other class or
//!   malformed text is 4. CreateReferencePoint: ReferencePointType 2 (RCT based) or 0
//!   (= default RCT); 1 (Log based, Hyper-V Replica) is 1 Not Supported.
//! * DestroySnapshot does not cascade: child snapshots are re-parented (Hyper-V's
//!   behaviour for a single checkpoint delete).

mod associations;
mod classes;
mod enumerate;
mod jobs;
mod lookup;
mod management;
mod modify;
mod nearby;
mod pages;
mod params;
mod snapshots;

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, CimStatus, ClassDef, Instance, InstanceCursor,
    MethodOutcome, ObjectPath, Value, schema,
};

use crate::error::HostError;
use crate::host::Host;
use classes::*;
use params::*;
pub use params::{embedded, ref_param, same_path};

impl Host {
    pub(super) fn run_method(
        &self,
        target: &ObjectPath,
        method: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, CimError> {
        let class = target.class_name.as_str();
        let m = method.to_ascii_lowercase();
        let eq = |a: &str| class.eq_ignore_ascii_case(a);
        if eq("Msvm_CollectionManagementService") {
            let r = self.collection_method(&m, params);
            return Ok(r.unwrap_or_else(|e| {
                tracing::info!("{method} refused: {e}");
                outcome(e.msvm_code())
            }));
        }
        if eq("Msvm_VirtualSystemManagementService") {
            let r = self.system_method(&m, params);
            return Ok(r.unwrap_or_else(|e| {
                tracing::info!("{method} refused: {e}");
                outcome(e.msvm_code())
            }));
        }
        if eq("Msvm_CollectionSnapshotService") {
            if m == "exportsnapshot" {
                return crate::cim::export_request::export_snapshot(self, target, params);
            }
            let r = self.snapshot_method(&m, params);
            return Ok(r.unwrap_or_else(|e| {
                tracing::info!("{method} refused: {e}");
                outcome(e.dmtf_code())
            }));
        }
        if eq("Msvm_CollectionReferencePointService") {
            let r = self.refpoint_method(&m, params);
            return Ok(r.unwrap_or_else(|e| {
                tracing::info!("{method} refused: {e}");
                outcome(e.dmtf_code())
            }));
        }
        if eq("Msvm_ComputerSystem") && m == "requeststatechange" {
            let requested = uint_param(params, "RequestedState").map_err(|e| e.to_cim())?;
            return self.request_vm_state(target, requested);
        }
        if eq("Msvm_ConcreteJob") || eq("CIM_ConcreteJob") {
            return self.job_method(target, method, &m, params);
        }
        Err(CimError::new(
            CimStatus::MethodNotFound,
            format!("{class} has no method {method}"),
        ))
    }
}

impl CimProvider for Host {
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError> {
        schema()
            .class(class_name)
            .cloned()
            .ok_or_else(|| CimError::not_found(format!("no class {class_name}")))
    }

    fn class_names(&self) -> Vec<String> {
        schema().class_names()
    }

    fn enumerate_instances(&self, class_name: &str) -> Result<Vec<Instance>, CimError> {
        self.check_class(class_name)?;
        let mut out = Vec::new();
        for c in CONCRETE {
            if is_a(c, class_name) {
                out.extend(self.instances_of(c).map_err(|e| e.to_cim())?);
            }
        }
        Ok(out)
    }

    /// Every class is read a page of repository rows at a time (`pages::PagedCursor`): an
    /// open enumeration holds one page, not the class's list.
    fn enumerate_cursor(&self, class_name: &str) -> Result<Box<dyn InstanceCursor>, CimError> {
        self.check_class(class_name)?;
        let cursor = pages::PagedCursor::new(self, class_name).map_err(|e| e.to_cim())?;
        Ok(Box::new(cursor))
    }

    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError> {
        self.check_class(&path.class_name)?;
        let missing = || CimError::not_found(format!("no instance {}", self.path_text(path)));
        if let Some(found) = self.resource_setting_instance(path) {
            return found.map_err(|_| missing());
        }
        // Fast paths for the classes clients poll.
        let fast = match self.resolve_path(path) {
            Ok(crate::Resolved::Job(id)) => Some(self.job(&id).map(|j| self.job_instance(&j))),
            Ok(crate::Resolved::Vm(id)) => Some(self.vm(&id).map(|v| self.vm_instance(&v))),
            Ok(crate::Resolved::VmSettings(id)) => {
                Some(self.vm(&id).map(|v| self.vm_instances(&v).0))
            }
            Ok(crate::Resolved::SnapshotSettings(snap, vm)) => {
                Some(self.snapshot_settings_instance(&snap, &vm))
            }
            Ok(crate::Resolved::RefPoint(rp, vm)) => Some(self.refpoint_member_instance(&rp, &vm)),
            Ok(crate::Resolved::SnapshotCollection(id)) => Some(
                self.snapshot(&id)
                    .map(|s| self.snapshot_collection_instance(&s)),
            ),
            Ok(crate::Resolved::Collection(id, _)) => {
                Some(self.collection(&id).map(|c| self.collection_instance(&c)))
            }
            Ok(crate::Resolved::RefPointCollection(id)) => Some(
                self.refpoint(&id)
                    .map(|r| self.refpoint_collection_instance(&r)),
            ),
            Err(HostError::NotFound(_)) => return Err(missing()),
            _ => None,
        };
        if let Some(found) = fast {
            let inst = found.map_err(|_| missing())?;
            return if inst.path.as_ref().is_some_and(|p| same_path(p, path)) {
                Ok(inst)
            } else {
                Err(missing())
            };
        }
        self.enumerate_instances(&path.class_name)?
            .into_iter()
            .find(|i| i.path.as_ref().is_some_and(|p| same_path(p, path)))
            .ok_or_else(missing)
    }

    fn associators(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<Instance>, CimError> {
        let mut out: Vec<Instance> = Vec::new();
        for (assoc, role) in self.assoc_instances(path, filter)? {
            for p in &assoc.properties {
                if p.name.eq_ignore_ascii_case(&role) {
                    continue;
                }
                if let Some(rr) = &filter.result_role
                    && !rr.eq_ignore_ascii_case(&p.name)
                {
                    continue;
                }
                let Some(Value::Reference(other)) = &p.value else {
                    continue;
                };
                if let Some(rc) = &filter.result_class
                    && !is_a(&other.class_name, rc)
                {
                    continue;
                }
                if out
                    .iter()
                    .any(|i| i.path.as_ref().is_some_and(|q| same_path(q, other)))
                {
                    continue;
                }
                if let Ok(inst) = self.get_instance(other) {
                    out.push(inst);
                }
            }
        }
        Ok(out)
    }

    fn references(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<Instance>, CimError> {
        let mut f = filter.clone();
        f.result_role = None;
        let mut out = Vec::new();
        for (assoc, _) in self.assoc_instances(path, &f)? {
            if let Some(rc) = &filter.result_class
                && !is_a(&assoc.class_name, rc)
            {
                continue;
            }
            out.push(assoc);
        }
        Ok(out)
    }

    fn invoke_method(
        &self,
        target: &ObjectPath,
        method: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError> {
        self.check_class(&target.class_name)?;
        self.run_method(target, method, &params)
    }
}
