//! Object paths of the host's objects with Hyper-V's keys, WMI path text, and paths back
//! to objects ([`Host::resolve_path`]).
//!
//!
//! Key shapes: Msvm_ComputerSystem {CreationClassName, Name = VM GUID};
//! Msvm_VirtualSystemSettingData {InstanceID = `Microsoft:<VM GUID>` for a VM's current
//! settings, `Microsoft:<GUID>` for a snapshot}; resource settings {InstanceID =
//! `<VSSD InstanceID>\<suffix>`}; collections {CollectionID}; Msvm_ReferencePointCollection
//! {CollectionID, VirtualSystemCollectionId}; Msvm_VirtualSystemReferencePoint {InstanceID,
//! VirtualSystemIdentifier}; Msvm_ConcreteJob {InstanceID}; services {CreationClassName,
//! Name, SystemCreationClassName = "Msvm_ComputerSystem", SystemName = host name}.

use cosnap_cim::{ObjectPath, Value};
use rusqlite::OptionalExtension;

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::model::*;
use crate::util::norm_id;

pub const SERVICES: &[(&str, &str)] = &[
    ("Msvm_VirtualSystemManagementService", "vmms"),
    (
        "Msvm_CollectionManagementService",
        "CollectionManagementService",
    ),
    (
        "Msvm_CollectionSnapshotService",
        "CollectionSnapshotService",
    ),
    (
        "Msvm_CollectionReferencePointService",
        "CollectionReferencePointService",
    ),
];

/// What an object path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Vm(String),
    /// A VM's current settings (VSSD `Microsoft:<vm>`).
    VmSettings(String),
    /// A snapshot's per-VM settings: (snapshot collection id, VM id).
    SnapshotSettings(String, String),
    /// A VM collection (kind 0) or collection of collections (kind 1).
    Collection(String, u16),
    SnapshotCollection(String),
    RefPointCollection(String),
    /// (reference point collection id, VM id).
    RefPoint(String, String),
    Job(String),
    Service(String),
}

pub(super) fn key(class: &str, name: &str, value: &str) -> ObjectPath {
    ObjectPath::new(class).with_key(name, Value::String(value.to_string()))
}

pub fn vm_path(id: &str) -> ObjectPath {
    ObjectPath::new("Msvm_ComputerSystem")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_ComputerSystem".into()),
        )
        .with_key("Name", Value::String(id.to_string()))
}
pub fn vssd_path(instance_id: &str) -> ObjectPath {
    key("Msvm_VirtualSystemSettingData", "InstanceID", instance_id)
}
pub fn vm_vssd_id(vm_id: &str) -> String {
    format!("Microsoft:{vm_id}")
}
pub fn collection_path(id: &str, kind: u16) -> ObjectPath {
    let class = if kind == COLLECTION_OF_VMS {
        "Msvm_VirtualSystemCollection"
    } else {
        "Msvm_ManagementCollection"
    };
    key(class, "CollectionID", id)
}
pub fn snapshot_collection_path(id: &str) -> ObjectPath {
    key("Msvm_SnapshotCollection", "CollectionID", id)
}
pub fn refpoint_collection_path(id: &str, vs_collection: &str) -> ObjectPath {
    key("Msvm_ReferencePointCollection", "CollectionID", id).with_key(
        "VirtualSystemCollectionId",
        Value::String(vs_collection.to_string()),
    )
}
pub fn refpoint_path(instance_id: &str, vm_id: &str) -> ObjectPath {
    key(
        "Msvm_VirtualSystemReferencePoint",
        "InstanceID",
        instance_id,
    )
    .with_key("VirtualSystemIdentifier", Value::String(vm_id.to_string()))
}
pub fn job_path(id: &str) -> ObjectPath {
    key("Msvm_ConcreteJob", "InstanceID", id)
}

/// WMI object-path text of `path` on `host` in cosnap's namespace:
/// `\\HOST\root\virtualization\v2:Class.Key="v"` (printed by [`cosnap_cim::path_text`]).
pub fn wmi_path_text(host: &str, path: &ObjectPath) -> String {
    let mut qualified = path.clone();
    qualified.host = Some(host.to_string());
    qualified.namespace = Some(cosnap_cim::NAMESPACE.to_string());
    qualified.to_wmi_text()
}

impl Host {
    pub fn service_path(&self, class: &str) -> ObjectPath {
        let name = SERVICES
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(class))
            .map(|(_, n)| *n)
            .unwrap_or("");
        let class = SERVICES
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(class))
            .map(|(c, _)| *c)
            .unwrap_or(class);
        ObjectPath::new(class)
            .with_key(
                "SystemCreationClassName",
                Value::String("Msvm_ComputerSystem".into()),
            )
            .with_key("SystemName", Value::String(self.host_name().to_string()))
            .with_key("CreationClassName", Value::String(class.to_string()))
            .with_key("Name", Value::String(name.to_string()))
    }

    /// WMI path text of a path on this host (`\\HOST\root\virtualization\v2:Class.Key="v"`).
    pub fn path_text(&self, path: &ObjectPath) -> String {
        wmi_path_text(self.host_name(), path)
    }

    /// Which object a path names. Wrong class or missing keys → invalid parameter;
    /// well-formed but absent → not found.
    pub fn resolve_path(&self, path: &ObjectPath) -> Result<Resolved> {
        let class = path.class_name.as_str();
        let need = |k: &str| -> Result<String> {
            path.key_str(k).map(str::to_string).ok_or_else(|| {
                HostError::invalid(format!("object path of {class} lacks its key {k}"))
            })
        };
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if eq(class, "Msvm_ComputerSystem") {
            let id = need("Name")?;
            // The id only: loading the whole VM here doubled the cost of every lookup.
            return Ok(Resolved::Vm(
                self.vm_id(&id)
                    .map_err(|_| HostError::not_found(format!("no VM named {id}")))?,
            ));
        }
        if eq(class, "Msvm_VirtualSystemSettingData") {
            return self.resolve_settings(&need("InstanceID")?);
        }
        if eq(class, "Msvm_VirtualSystemCollection")
            || eq(class, "Msvm_ManagementCollection")
            || eq(class, "CIM_CollectionOfMSEs")
        {
            return self.resolve_collection(class, &need("CollectionID")?);
        }
        if eq(class, "Msvm_SnapshotCollection") {
            let id = need("CollectionID")?;
            return Ok(Resolved::SnapshotCollection(self.snapshot(&id)?.id));
        }
        if eq(class, "Msvm_ReferencePointCollection") {
            let id = need("CollectionID")?;
            let rp = self.refpoint(&id)?;
            if let Some(vsc) = path.key_str("VirtualSystemCollectionId")
                && norm_id(vsc) != rp.collection_id
            {
                return Err(HostError::not_found(format!(
                    "reference point collection {id} does not belong to collection {vsc}"
                )));
            }
            return Ok(Resolved::RefPointCollection(rp.id));
        }
        if eq(class, "CIM_Collection") {
            let id = need("CollectionID")?;
            if let Ok(s) = self.snapshot(&id) {
                return Ok(Resolved::SnapshotCollection(s.id));
            }
            if let Ok(r) = self.refpoint(&id) {
                return Ok(Resolved::RefPointCollection(r.id));
            }
            return Err(HostError::not_found(format!(
                "no snapshot or reference point collection {id}"
            )));
        }
        if eq(class, "Msvm_VirtualSystemReferencePoint") {
            return self.resolve_refpoint(&need("InstanceID")?);
        }
        if eq(class, "Msvm_ConcreteJob") || eq(class, "CIM_ConcreteJob") {
            let id = need("InstanceID")?;
            return Ok(Resolved::Job(self.job(&id)?.id));
        }
        if let Some((c, _)) = SERVICES.iter().find(|(c, _)| eq(c, class)) {
            return Ok(Resolved::Service(c.to_string()));
        }
        Err(HostError::invalid(format!(
            "{class} is not a class whose instances cosnap serves here"
        )))
    }

    /// A VSSD: a VM's current settings (`Microsoft:<vm>`) or a snapshot's.
    /// The id of the VM `id_or_name` names, without loading the VM.
    fn vm_id(&self, id_or_name: &str) -> Result<String> {
        crate::rows::resolve(&self.db(), "vms", &norm_id(id_or_name), "VM")
    }

    fn resolve_settings(&self, iid: &str) -> Result<Resolved> {
        let tail = iid.strip_prefix("Microsoft:").unwrap_or(iid);
        if let Ok(vm) = self.vm_id(tail) {
            return Ok(Resolved::VmSettings(vm));
        }
        let snap = self.snapshot_of_vssd(iid)?;
        let vm = snap
            .vms
            .iter()
            .find(|v| v.vssd_id.eq_ignore_ascii_case(iid))
            .map(|v| v.vm_id.clone())
            .unwrap_or_default();
        Ok(Resolved::SnapshotSettings(snap.id, vm))
    }

    /// A VM collection or collection of collections, of the kind the class names.
    fn resolve_collection(&self, class: &str, id: &str) -> Result<Resolved> {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let c = self
            .collection(&norm_id(id))
            .map_err(|_| HostError::not_found(format!("no collection {id}")))?;
        let want = if eq(class, "Msvm_VirtualSystemCollection") {
            Some(COLLECTION_OF_VMS)
        } else if eq(class, "Msvm_ManagementCollection") {
            Some(COLLECTION_OF_COLLECTIONS)
        } else {
            None
        };
        if want.is_some_and(|k| k != c.kind) {
            return Err(HostError::not_found(format!(
                "collection {id} is not a {class}"
            )));
        }
        Ok(Resolved::Collection(c.id, c.kind))
    }

    /// A per-VM reference point, by its InstanceID (index `refpoint_vms_instance_nocase`).
    fn resolve_refpoint(&self, iid: &str) -> Result<Resolved> {
        let conn = self.db();
        let mut stmt = conn.prepare_cached(
            "SELECT refpoint_id, vm_id FROM refpoint_vms WHERE instance_id = ?1 COLLATE NOCASE",
        )?;
        let found = stmt
            .query_row([iid], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        let (rp, vm) =
            found.ok_or_else(|| HostError::not_found(format!("no reference point {iid}")))?;
        Ok(Resolved::RefPoint(rp, vm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_text_round_trip() {
        let p = ObjectPath::new("Msvm_VirtualSystemSettingData")
            .with_key("InstanceID", Value::String("Microsoft:A\\B\"c".into()));
        let text = wmi_path_text("HOST", &p);
        assert_eq!(
            text,
            "\\\\HOST\\root\\virtualization\\v2:Msvm_VirtualSystemSettingData.InstanceID=\"Microsoft:A\\\\B\\\"c\""
        );
        let back = cosnap_cim::path_text::parse(&text).unwrap();
        assert_eq!(back.class_name, p.class_name);
        assert_eq!(back.keys, p.keys);
        assert_eq!(back.host.as_deref(), Some("HOST"));
        assert_eq!(back.namespace.as_deref(), Some("root/virtualization/v2"));
    }

    /// Instance paths only: at least one key.
    fn parse_instance_path(text: &str) -> Option<ObjectPath> {
        cosnap_cim::path_text::parse(text)
            .ok()
            .filter(|p| !p.keys.is_empty())
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for bad in [
            "",
            "Msvm_X",
            "Msvm_X.",
            "Msvm_X.Id=\"unterminated",
            "Bad Class.Id=\"x\"",
            "Msvm_X.Id=\"a\"junk",
        ] {
            assert!(parse_instance_path(bad).is_none(), "{bad}");
        }
        let two = parse_instance_path(
            "Msvm_ReferencePointCollection.CollectionID=\"a\",VirtualSystemCollectionId=\"b\"",
        )
        .unwrap();
        assert_eq!(two.keys.len(), 2);
    }
}
