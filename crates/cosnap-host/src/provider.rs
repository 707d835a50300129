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

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, CimStatus, CimType, ClassDef, Instance, MethodOutcome,
    ObjectPath, Value, schema,
};

use crate::cim::*;
use crate::error::{HostError, concrete_job, dmtf, msvm};
use crate::host::Host;
use crate::model::*;

/// Classes whose instances the host serves directly (associations included).
const CONCRETE: &[&str] = &[
    "Msvm_ComputerSystem",
    "Msvm_VirtualSystemSettingData",
    "Msvm_ProcessorSettingData",
    "Msvm_MemorySettingData",
    "Msvm_StorageAllocationSettingData",
    "Msvm_SyntheticEthernetPortSettingData",
    "Msvm_EthernetPortAllocationSettingData",
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

fn is_a(sub: &str, sup: &str) -> bool {
    sub.eq_ignore_ascii_case(sup) || schema().is_subclass(sub, sup)
}

fn assoc(class: &str, a: (&str, ObjectPath), b: (&str, ObjectPath)) -> Instance {
    let path = ObjectPath::new(class)
        .with_key(a.0, Value::Reference(a.1.clone()))
        .with_key(b.0, Value::Reference(b.1.clone()));
    Instance::new(class)
        .with(a.0, CimType::Reference, Some(Value::Reference(a.1)))
        .with(b.0, CimType::Reference, Some(Value::Reference(b.1)))
        .with_path(path)
}

fn value_text(v: &Value) -> String {
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

fn param<'a>(params: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
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

fn string_param(params: &[(String, Value)], name: &str) -> Result<Option<String>, HostError> {
    match param(params, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HostError::invalid(format!("{name} must be a string"))),
    }
}

fn uint_param(params: &[(String, Value)], name: &str) -> Result<Option<u64>, HostError> {
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

fn embedded_param(params: &[(String, Value)], name: &str) -> Result<Option<Instance>, HostError> {
    match param(params, name) {
        None => Ok(None),
        Some(v) => embedded(v, name),
    }
}

fn outcome(code: u32) -> MethodOutcome {
    MethodOutcome {
        return_value: code,
        out_params: vec![],
    }
}

fn job_started(job: &str) -> MethodOutcome {
    MethodOutcome {
        return_value: dmtf::JOB_STARTED,
        out_params: vec![("Job".into(), Value::Reference(job_path(job)))],
    }
}

impl Host {
    fn element_path(&self, class: &str, id: &str) -> Option<ObjectPath> {
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
    fn instances_of(&self, class: &str) -> Result<Vec<Instance>, HostError> {
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

    fn associations_of(&self, class: &str) -> Result<Vec<Instance>, HostError> {
        let mut out = Vec::new();
        match class {
            "Msvm_CollectedVirtualSystems" | "Msvm_CollectedCollections" => {
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
            }
            "Msvm_CollectedSnapshots"
            | "Msvm_SnapshotOfVirtualSystemCollection"
            | "Msvm_SnapshotOfVirtualSystem" => {
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
            }
            "Msvm_CollectedReferencePoints"
            | "Msvm_ReferencePointOfVirtualSystemCollection"
            | "Msvm_ReferencePointOfVirtualSystem" => {
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
            }
            "Msvm_AffectedJobElement" => {
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
            }
            "Msvm_SettingsDefineState" => {
                for vm in self.vms()? {
                    out.push(assoc(
                        class,
                        ("ManagedElement", vm_path(&vm.id)),
                        ("SettingData", vssd_path(&vm_vssd_id(&vm.id))),
                    ));
                }
            }
            "Msvm_VirtualSystemSettingDataComponent" => {
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
            }
            _ => {}
        }
        Ok(out)
    }

    fn assoc_instances(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<(Instance, String)>, CimError> {
        let mut out = Vec::new();
        for class in CONCRETE {
            let is_assoc = schema().class(class).is_some_and(|c| {
                c.qualifiers
                    .iter()
                    .any(|q| q.name.eq_ignore_ascii_case("Association"))
            });
            if !is_assoc {
                continue;
            }
            if let Some(ac) = &filter.assoc_class
                && !is_a(class, ac)
            {
                continue;
            }
            for inst in self.associations_of(class).map_err(|e| e.to_cim())? {
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
        }
        Ok(out)
    }

    fn check_class(&self, class: &str) -> Result<(), CimError> {
        if schema().class(class).is_none() {
            return Err(CimError::invalid_class(format!(
                "no class {class} in root/virtualization/v2"
            )));
        }
        Ok(())
    }

    fn run_method(
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
                return crate::export::export_snapshot(self, target, params);
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
            let id = target
                .key_str("InstanceID")
                .ok_or_else(|| CimError::invalid_parameter("job path lacks InstanceID"))?;
            let job = self.job(id).map_err(|e| e.to_cim())?;
            return match m.as_str() {
                "requeststatechange" => {
                    let state = uint_param(params, "RequestedState").map_err(|e| e.to_cim())?;
                    if let Some(Value::Datetime(t) | Value::String(t)) =
                        param(params, "TimeoutPeriod")
                        && !t.trim().is_empty()
                        && t.chars().any(|c| c.is_ascii_digit() && c != '0')
                    {
                        return Ok(outcome(concrete_job::TIMEOUT_NOT_SUPPORTED));
                    }
                    let Some(state) = state.and_then(|s| u16::try_from(s).ok()) else {
                        return Ok(outcome(concrete_job::INVALID_PARAMETER));
                    };
                    Ok(outcome(
                        self.request_job_state(&job.id, state)
                            .map_err(|e| e.to_cim())?,
                    ))
                }
                // Null (the out parameter left out) when the job did not fail (doc: "Null
                // when OperationalStatus is 2 (OK)").
                "geterror" => Ok(MethodOutcome {
                    return_value: msvm::COMPLETED,
                    out_params: self
                        .job_error_instance(&job)
                        .map(|i| ("Error".to_string(), Value::Instance(Box::new(i))))
                        .into_iter()
                        .collect(),
                }),
                "geterrorex" => Ok(MethodOutcome {
                    return_value: msvm::COMPLETED,
                    out_params: self
                        .job_error_instance(&job)
                        .map(|i| {
                            (
                                "Errors".to_string(),
                                Value::Array(vec![Value::Instance(Box::new(i))]),
                            )
                        })
                        .into_iter()
                        .collect(),
                }),
                "killjob" => Ok(outcome(concrete_job::NOT_SUPPORTED)),
                _ => Err(CimError::new(
                    CimStatus::MethodNotFound,
                    format!("Msvm_ConcreteJob has no method {method}"),
                )),
            };
        }
        Err(CimError::new(
            CimStatus::MethodNotFound,
            format!("{class} has no method {method}"),
        ))
    }

    fn member_id(&self, p: &ObjectPath) -> Result<String, HostError> {
        match self.resolve_path(p)? {
            crate::Resolved::Vm(id) | crate::Resolved::Collection(id, _) => Ok(id),
            _ => Err(HostError::invalid(format!(
                "{} cannot be a collection member",
                p.class_name
            ))),
        }
    }

    fn collection_of(&self, params: &[(String, Value)], name: &str) -> Result<String, HostError> {
        let p = ref_param(params, name)?;
        match self.resolve_path(&p)? {
            crate::Resolved::Collection(id, _) => Ok(id),
            _ => Err(HostError::invalid(format!(
                "{name} must name a Msvm_VirtualSystemCollection or Msvm_ManagementCollection"
            ))),
        }
    }

    fn collection_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "definecollection" => {
                let name = string_param(params, "Name")?
                    .ok_or_else(|| HostError::invalid("Name is required"))?;
                let id = string_param(params, "Id")?;
                let kind = uint_param(params, "Type")?.unwrap_or(0);
                let kind = u16::try_from(kind)
                    .map_err(|_| HostError::invalid(format!("Type {kind} is out of range")))?;
                let c = self.define_collection(&name, id.as_deref(), kind)?;
                Ok(MethodOutcome {
                    return_value: msvm::COMPLETED,
                    out_params: vec![(
                        "DefinedCollection".into(),
                        Value::Reference(collection_path(&c.id, c.kind)),
                    )],
                })
            }
            "destroycollection" => {
                let id = self.collection_of(params, "Collection")?;
                self.destroy_collection(&id)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "renamecollection" => {
                let id = self.collection_of(params, "Collection")?;
                let name = string_param(params, "NewName")?
                    .ok_or_else(|| HostError::invalid("NewName is required"))?;
                self.rename_collection(&id, &name)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "addmember" | "removemember" => {
                let member = self.member_id(&ref_param(params, "Member")?)?;
                let id = self.collection_of(params, "Collection")?;
                if m == "addmember" {
                    self.add_member(&id, &member)?;
                } else {
                    self.remove_member(&id, &member)?;
                }
                Ok(outcome(msvm::COMPLETED))
            }
            "removememberbyid" => {
                let member = self.member_id(&ref_param(params, "Member")?)?;
                let cid = string_param(params, "CollectionId")?
                    .ok_or_else(|| HostError::invalid("CollectionId is required"))?;
                self.remove_member_by_id(&member, &cid)?;
                Ok(outcome(msvm::COMPLETED))
            }
            "startservice" | "stopservice" => Ok(outcome(msvm::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }

    fn system_method(
        &self,
        m: &str,
        params: &[(String, Value)],
    ) -> Result<MethodOutcome, HostError> {
        match m {
            "definesystem" => {
                let vssd = embedded_param(params, "SystemSettings")?;
                let mut spec = VmSpec {
                    id: None,
                    name: String::new(),
                    cpus: 1,
                    memory_mb: 1024,
                    disks: vec![],
                    nics: vec![],
                };
                if let Some(v) = &vssd {
                    if !is_a(&v.class_name, "CIM_VirtualSystemSettingData") {
                        return Err(HostError::invalid(format!(
                            "SystemSettings is a {}, not a Msvm_VirtualSystemSettingData",
                            v.class_name
                        )));
                    }
                    spec.name = v
                        .get("ElementName")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                }
                if spec.name.is_empty() {
                    spec.name = "New Virtual Machine".into();
                }
                let rasds: Vec<Instance> = match param(params, "ResourceSettings") {
                    None => vec![],
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| embedded(v, "ResourceSettings"))
                        .collect::<Result<Vec<_>, _>>()?
                        .into_iter()
                        .flatten()
                        .collect(),
                    Some(v) => embedded(v, "ResourceSettings")?.into_iter().collect(),
                };
                let qty = |r: &Instance| -> Result<u64, HostError> {
                    r.get("VirtualQuantity")
                        .and_then(|v| {
                            v.as_u64()
                                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                        })
                        .ok_or_else(|| {
                            HostError::invalid(format!(
                                "{} needs a numeric VirtualQuantity",
                                r.class_name
                            ))
                        })
                };
                for r in &rasds {
                    let c = r.class_name.to_ascii_lowercase();
                    match c.as_str() {
                        "msvm_processorsettingdata" => {
                            spec.cpus = u32::try_from(qty(r)?)
                                .map_err(|_| HostError::invalid("processor count too large"))?
                        }
                        "msvm_memorysettingdata" => spec.memory_mb = qty(r)?,
                        "msvm_storageallocationsettingdata" => {
                            let path = match r.get("HostResource") {
                                Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
                                Some(Value::String(s)) => Some(s.clone()),
                                _ => None,
                            }
                            .ok_or_else(|| HostError::invalid("a Msvm_StorageAllocationSettingData needs HostResource[0] = image path"))?;
                            let format = match r.get("ImageFormat").and_then(Value::as_str) {
                                Some(f) => {
                                    Some(cosnap_disk::Format::from_name(f).ok_or_else(|| {
                                        HostError::invalid(format!(
                                            "ImageFormat {f:?} is not vhdx, qcow2 or raw"
                                        ))
                                    })?)
                                }
                                None => None,
                            };
                            spec.disks.push(DiskSpec {
                                path: path.into(),
                                format,
                            });
                        }
                        "msvm_syntheticethernetportsettingdata" => {
                            let mac =
                                r.get("Address").and_then(Value::as_str).ok_or_else(|| {
                                    HostError::invalid("a network adapter needs Address (its MAC)")
                                })?;
                            spec.nics.push(Nic {
                                mac: mac.to_string(),
                                switch_name: None,
                            });
                        }
                        "msvm_ethernetportallocationsettingdata" => {
                            let sw = r
                                .get("SwitchName")
                                .and_then(Value::as_str)
                                .map(str::to_string);
                            match spec.nics.last_mut() {
                                Some(n) => n.switch_name = sw,
                                None => {
                                    return Err(HostError::invalid(
                                        "an Ethernet connection must follow its network adapter",
                                    ));
                                }
                            }
                        }
                        other => {
                            return Err(HostError::invalid(format!(
                                "resource settings of class {other} are not supported"
                            )));
                        }
                    }
                }
                self.check_api_disks(&mut spec)?;
                let vm = self.define_vm(&spec)?;
                Ok(MethodOutcome {
                    return_value: msvm::COMPLETED,
                    out_params: vec![("ResultingSystem".into(), Value::Reference(vm_path(&vm.id)))],
                })
            }
            "destroysystem" => {
                let p = ref_param(params, "AffectedSystem")?;
                match self.resolve_path(&p)? {
                    crate::Resolved::Vm(id) => {
                        self.destroy_vm(&id)?;
                        Ok(outcome(msvm::COMPLETED))
                    }
                    _ => Err(HostError::invalid(
                        "AffectedSystem must name a Msvm_ComputerSystem",
                    )),
                }
            }
            "startservice" | "stopservice" => Ok(outcome(msvm::NOT_SUPPORTED)),
            _ => Err(HostError::invalid(format!("no method {m}"))),
        }
    }

    fn snapshot_ref(&self, params: &[(String, Value)], name: &str) -> Result<String, HostError> {
        let p = ref_param(params, name)?;
        match self.resolve_path(&p)? {
            crate::Resolved::SnapshotCollection(id) => Ok(id),
            _ => Err(HostError::InvalidType(format!(
                "{name} must name a Msvm_SnapshotCollection, not a {}",
                p.class_name
            ))),
        }
    }

    fn snapshot_method(
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

    fn refpoint_method(
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

    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError> {
        self.check_class(&path.class_name)?;
        let missing = || CimError::not_found(format!("no instance {}", self.path_text(path)));
        // Fast paths for the classes clients poll.
        let fast = match self.resolve_path(path) {
            Ok(crate::Resolved::Job(id)) => Some(self.job(&id).map(|j| self.job_instance(&j))),
            Ok(crate::Resolved::Vm(id)) => Some(self.vm(&id).map(|v| self.vm_instance(&v))),
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
