//! The association instances that touch one object, found through the repository's
//! indexes (the snapshots holding a VM, the collections holding a member, the jobs that
//! touched an element, …) instead of building every association of the host and keeping
//! those that name the object: an Associators or References call costs what it returns,
//! not what the host holds. Every object the host resolves has a route; a resource setting
//! is routed through the VSSD that owns it (see `assoc_instances`).

use cosnap_cim::Instance;

use super::associations::{Wanted, affected, assoc, settings_components, settings_define_state};
use crate::Resolved;
use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;
use crate::model::*;

type Found = Result<Vec<Instance>, HostError>;

impl Host {
    /// The association instances `wanted` accepts that may refer to the object `resolved`
    /// names.
    pub(super) fn associations_near(&self, resolved: &Resolved, wanted: Wanted) -> Found {
        let found = match resolved {
            Resolved::Vm(id) => self.near_vm(id, wanted)?,
            Resolved::VmSettings(vm) => self.near_vm_settings(vm, wanted)?,
            Resolved::SnapshotSettings(snap, vm) => {
                self.near_snapshot_settings(snap, vm, wanted)?
            }
            Resolved::Collection(id, kind) => self.near_collection(id, *kind, wanted)?,
            Resolved::SnapshotCollection(id) => self.near_snapshot_collection(id, wanted)?,
            Resolved::RefPointCollection(id) => self.near_refpoint_collection(id, wanted)?,
            Resolved::RefPoint(rp, vm) => self.near_refpoint(rp, vm, wanted)?,
            Resolved::Job(id) => self.near_job(id, wanted)?,
            // No association class the host serves refers to a service.
            Resolved::Service(_) => Vec::new(),
        };
        Ok(found)
    }

    fn near_vm(&self, id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        if wanted("Msvm_SettingsDefineState") {
            out.push(settings_define_state(id));
        }
        let class = "Msvm_SnapshotOfVirtualSystem";
        if wanted(class) {
            for snap in self.snapshots_holding(id)? {
                for v in snap.vms.iter().filter(|v| v.vm_id == id) {
                    out.push(assoc(
                        class,
                        ("Antecedent", vm_path(id)),
                        ("Dependent", vssd_path(&v.vssd_id)),
                    ));
                }
            }
        }
        let class = "Msvm_CollectedVirtualSystems";
        if wanted(class) {
            for c in self.collections_holding(id)? {
                if c.kind == COLLECTION_OF_VMS {
                    out.push(assoc(
                        class,
                        ("Collection", collection_path(&c.id, c.kind)),
                        ("Member", vm_path(id)),
                    ));
                }
            }
        }
        let class = "Msvm_ReferencePointOfVirtualSystem";
        if wanted(class) {
            for rp in self.refpoints_holding(id)? {
                for v in rp.vms.iter().filter(|v| v.vm_id == id) {
                    out.push(assoc(
                        class,
                        ("Antecedent", vm_path(id)),
                        ("Dependent", refpoint_path(&v.instance_id, &v.vm_id)),
                    ));
                }
            }
        }
        out.extend(self.jobs_touching("Msvm_ComputerSystem", id, wanted)?);
        Ok(out)
    }

    fn near_vm_settings(&self, vm_id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        if wanted("Msvm_SettingsDefineState") {
            out.push(settings_define_state(vm_id));
        }
        if wanted("Msvm_VirtualSystemSettingDataComponent") {
            let vm = self.vm(vm_id)?;
            let (vssd, rasds) = self.vm_instances(&vm);
            out.extend(settings_components(vssd, rasds));
        }
        Ok(out)
    }

    fn near_snapshot_settings(&self, snap_id: &str, vm_id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let snap = self.snapshot(snap_id)?;
        for v in snap.vms.iter().filter(|v| v.vm_id == vm_id) {
            let class = "Msvm_SnapshotOfVirtualSystem";
            if wanted(class) {
                out.push(assoc(
                    class,
                    ("Antecedent", vm_path(vm_id)),
                    ("Dependent", vssd_path(&v.vssd_id)),
                ));
            }
            let class = "Msvm_CollectedSnapshots";
            if wanted(class) {
                out.push(assoc(
                    class,
                    ("Collection", snapshot_collection_path(&snap.id)),
                    ("Member", vssd_path(&v.vssd_id)),
                ));
            }
            if wanted("Msvm_VirtualSystemSettingDataComponent") {
                let (vssd, rasds) = self.snapshot_vm_instances(&snap, v);
                out.extend(settings_components(vssd, rasds));
            }
        }
        Ok(out)
    }

    fn near_collection(&self, id: &str, kind: u16, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let me = collection_path(id, kind);
        let collection = self.collection(id)?;
        let class = if kind == COLLECTION_OF_VMS {
            "Msvm_CollectedVirtualSystems"
        } else {
            "Msvm_CollectedCollections"
        };
        if wanted(class) {
            for m in &collection.members {
                let member = if kind == COLLECTION_OF_VMS {
                    vm_path(m)
                } else {
                    let Ok(mc) = self.collection(m) else { continue };
                    collection_path(&mc.id, mc.kind)
                };
                out.push(assoc(class, ("Collection", me.clone()), ("Member", member)));
            }
        }
        let class = "Msvm_CollectedCollections";
        if wanted(class) {
            for c in self.collections_holding(id)? {
                if c.kind == COLLECTION_OF_COLLECTIONS {
                    let holder = collection_path(&c.id, c.kind);
                    out.push(assoc(class, ("Collection", holder), ("Member", me.clone())));
                }
            }
        }
        out.extend(self.collection_histories(id, &me, wanted)?);
        let element = if kind == COLLECTION_OF_VMS {
            "Msvm_VirtualSystemCollection"
        } else {
            "Msvm_ManagementCollection"
        };
        out.extend(self.jobs_touching(element, id, wanted)?);
        Ok(out)
    }

    /// The snapshots and reference points of a collection.
    fn collection_histories(&self, id: &str, me: &cosnap_cim::ObjectPath, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let class = "Msvm_SnapshotOfVirtualSystemCollection";
        if wanted(class) {
            for s in self.snapshots(Some(id))? {
                let dependent = snapshot_collection_path(&s.id);
                out.push(assoc(
                    class,
                    ("Antecedent", me.clone()),
                    ("Dependent", dependent),
                ));
            }
        }
        let class = "Msvm_ReferencePointOfVirtualSystemCollection";
        if wanted(class) {
            for r in self.refpoints(Some(id))? {
                let dependent = refpoint_collection_path(&r.id, &r.collection_id);
                out.push(assoc(
                    class,
                    ("Antecedent", me.clone()),
                    ("Dependent", dependent),
                ));
            }
        }
        Ok(out)
    }

    fn near_snapshot_collection(&self, id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let snap = self.snapshot(id)?;
        let me = snapshot_collection_path(&snap.id);
        let class = "Msvm_CollectedSnapshots";
        if wanted(class) {
            for v in &snap.vms {
                out.push(assoc(
                    class,
                    ("Collection", me.clone()),
                    ("Member", vssd_path(&v.vssd_id)),
                ));
            }
        }
        let class = "Msvm_SnapshotOfVirtualSystemCollection";
        if wanted(class) {
            let antecedent = collection_path(&snap.collection_id, COLLECTION_OF_VMS);
            out.push(assoc(class, ("Antecedent", antecedent), ("Dependent", me)));
        }
        out.extend(self.jobs_touching("Msvm_SnapshotCollection", id, wanted)?);
        Ok(out)
    }

    fn near_refpoint_collection(&self, id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let rp = self.refpoint(id)?;
        let me = refpoint_collection_path(&rp.id, &rp.collection_id);
        let class = "Msvm_CollectedReferencePoints";
        if wanted(class) {
            for v in &rp.vms {
                let member = refpoint_path(&v.instance_id, &v.vm_id);
                out.push(assoc(class, ("Collection", me.clone()), ("Member", member)));
            }
        }
        let class = "Msvm_ReferencePointOfVirtualSystemCollection";
        if wanted(class) {
            let antecedent = collection_path(&rp.collection_id, COLLECTION_OF_VMS);
            out.push(assoc(class, ("Antecedent", antecedent), ("Dependent", me)));
        }
        out.extend(self.jobs_touching("Msvm_ReferencePointCollection", id, wanted)?);
        Ok(out)
    }

    fn near_refpoint(&self, rp_id: &str, vm_id: &str, wanted: Wanted) -> Found {
        let mut out = Vec::new();
        let rp = self.refpoint(rp_id)?;
        let rpc = refpoint_collection_path(&rp.id, &rp.collection_id);
        for v in rp.vms.iter().filter(|v| v.vm_id == vm_id) {
            let me = refpoint_path(&v.instance_id, &v.vm_id);
            let class = "Msvm_CollectedReferencePoints";
            if wanted(class) {
                out.push(assoc(
                    class,
                    ("Collection", rpc.clone()),
                    ("Member", me.clone()),
                ));
            }
            let class = "Msvm_ReferencePointOfVirtualSystem";
            if wanted(class) {
                out.push(assoc(
                    class,
                    ("Antecedent", vm_path(vm_id)),
                    ("Dependent", me),
                ));
            }
        }
        Ok(out)
    }

    fn near_job(&self, id: &str, wanted: Wanted) -> Found {
        let class = "Msvm_AffectedJobElement";
        if !wanted(class) {
            return Ok(Vec::new());
        }
        let job = self.job(id)?;
        let mut out = Vec::new();
        for (c, element) in &job.affected {
            if let Some(p) = self.element_path(c, element) {
                out.push(affected(p, id));
            }
        }
        Ok(out)
    }

    /// Msvm_AffectedJobElement instances naming the element `class`/`id`.
    fn jobs_touching(&self, class: &str, id: &str, wanted: Wanted) -> Found {
        if !wanted("Msvm_AffectedJobElement") {
            return Ok(Vec::new());
        }
        let jobs = self.query_ids(
            "SELECT DISTINCT job_id FROM job_elements WHERE element_id = ?1 AND class_name = ?2",
            &[id, class],
        )?;
        let mut out = Vec::new();
        for job in jobs {
            let Ok(job) = self.job(&job) else { continue };
            for (c, element) in &job.affected {
                if c == class
                    && element == id
                    && let Some(p) = self.element_path(c, element)
                {
                    out.push(affected(p, &job.id));
                }
            }
        }
        Ok(out)
    }

    /// The snapshots holding VM `vm_id` (index `snapshot_vms_vm`).
    fn snapshots_holding(&self, vm_id: &str) -> Result<Vec<Snapshot>, HostError> {
        let ids = self.query_ids(
            "SELECT v.snapshot_id FROM snapshot_vms v JOIN snapshots s ON s.id = v.snapshot_id
             WHERE v.vm_id = ?1 ORDER BY s.seq",
            &[vm_id],
        )?;
        ids.iter().map(|id| self.snapshot(id)).collect()
    }

    /// The collections holding member `id` (index `collection_members_member`).
    fn collections_holding(&self, id: &str) -> Result<Vec<Collection>, HostError> {
        let ids = self.query_ids(
            "SELECT m.collection_id FROM collection_members m JOIN collections c ON c.id = m.collection_id
             WHERE m.member_id = ?1 ORDER BY c.seq",
            &[id],
        )?;
        ids.iter().map(|id| self.collection(id)).collect()
    }

    /// The reference points holding VM `vm_id` (index `refpoint_vms_vm`).
    fn refpoints_holding(&self, vm_id: &str) -> Result<Vec<RefPoint>, HostError> {
        let ids = self.query_ids(
            "SELECT v.refpoint_id FROM refpoint_vms v JOIN refpoints r ON r.id = v.refpoint_id
             WHERE v.vm_id = ?1 ORDER BY r.seq",
            &[vm_id],
        )?;
        ids.iter().map(|id| self.refpoint(id)).collect()
    }
}

impl Host {
    /// The ids `sql` selects; the database lock is released before the caller loads them.
    fn query_ids(&self, sql: &str, params: &[&str]) -> Result<Vec<String>, HostError> {
        let conn = self.db();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
            r.get::<_, String>(0)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use cosnap_cim::{AssocFilter, CimProvider, ObjectPath, Value};

    use super::super::classes::CONCRETE;
    use super::super::pages::PagedCursor;
    use super::*;
    use crate::cim::provider::same_path;

    /// Three VMs (one with a connected NIC), a VM collection of two inside a collection of
    /// collections, two recovery snapshots of the group and a reference point converted
    /// from a third: every class the host serves has instances.
    fn host_with_history(dir: &std::path::Path) -> Host {
        let host = Host::open(dir.join("data")).unwrap();
        let mut vms = Vec::new();
        for i in 0..3 {
            let disk = dir.join(format!("d{i}.raw"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            let nics = if i == 0 {
                vec![Nic {
                    mac: "00:15:5d:00:00:01".into(),
                    switch_name: Some("sw".into()),
                }]
            } else {
                Vec::new()
            };
            let spec = VmSpec {
                nics,
                ..VmSpec::new(format!("vm{i}"), vec![DiskSpec::raw(disk)])
            };
            vms.push(host.define_vm(&spec).unwrap().id);
        }
        let group = host
            .define_collection("g", None, COLLECTION_OF_VMS)
            .unwrap();
        let outer = host
            .define_collection("o", None, COLLECTION_OF_COLLECTIONS)
            .unwrap();
        host.add_member(&outer.id, &group.id).unwrap();
        for vm in &vms[..2] {
            host.add_member(&group.id, vm).unwrap();
        }
        for _ in 0..3 {
            let job = host.start_create_snapshot(&group.id, 2).unwrap();
            assert!(host.wait_job(&job).unwrap().succeeded());
        }
        let newest = host.snapshots(None).unwrap().pop().unwrap();
        let job = host.start_convert_to_refpoint(&newest.id).unwrap();
        assert!(host.wait_job(&job).unwrap().succeeded());
        host
    }

    /// The associations among `all` that name `object`, as sorted path texts.
    fn touching(all: &[Instance], object: &ObjectPath) -> Vec<String> {
        let mut out: Vec<String> = all
            .iter()
            .filter(|a| {
                a.properties
                    .iter()
                    .any(|p| matches!(&p.value, Some(Value::Reference(r)) if same_path(r, object)))
            })
            .map(|a| format!("{:?}", a.path))
            .collect();
        out.sort();
        out
    }

    /// The path of every instance of every class the host serves.
    fn every_object(host: &Host) -> Vec<ObjectPath> {
        let mut out = Vec::new();
        for class in CONCRETE {
            let found = host.enumerate_instances(class).unwrap();
            assert!(!found.is_empty(), "no instance of {class}");
            out.extend(found.into_iter().filter_map(|i| i.path));
        }
        out
    }

    #[test]
    fn indexed_routes_find_exactly_what_the_scan_finds() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with_history(dir.path());
        let all = host.every_association(&|_| true).unwrap();
        let objects = every_object(&host);
        for object in &objects {
            // Every object has a route: none for an association instance (nothing refers
            // to one), its VSSD's for a resource setting, else its own path.
            if !super::super::associations::is_association(&object.class_name) {
                let resolved = match host.resource_setting_owner(object) {
                    Some(owner) => owner.unwrap(),
                    None => host.resolve_path(object).unwrap(),
                };
                let near = host.associations_near(&resolved, &|_| true).unwrap();
                assert_eq!(
                    touching(&near, object),
                    touching(&all, object),
                    "{object:?}"
                );
            }
            let answered: Vec<Instance> = host
                .assoc_instances(object, &AssocFilter::default())
                .unwrap()
                .into_iter()
                .map(|(a, _)| a)
                .collect();
            assert_eq!(
                touching(&answered, object),
                touching(&all, object),
                "{object:?}"
            );
        }
        assert!(objects.len() > 60, "only {} objects", objects.len());
    }

    #[test]
    fn key_lookups_and_paged_cursors_give_what_the_list_gives() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with_history(dir.path());
        let mut classes: Vec<&str> = CONCRETE.to_vec();
        classes.extend([
            "CIM_ResourceAllocationSettingData",
            "CIM_Collection",
            "CIM_Component",
        ]);
        for class in classes {
            let listed = host.enumerate_instances(class).unwrap();
            let mut cursor = PagedCursor::new(&host, class).unwrap();
            let mut paged = Vec::new();
            loop {
                let batch = cosnap_cim::InstanceCursor::next_batch(&mut cursor, &host, 2).unwrap();
                if batch.is_empty() {
                    break;
                }
                paged.extend(batch);
            }
            assert_eq!(paged, listed, "{class}");
            for inst in &listed {
                let path = inst.path.as_ref().unwrap();
                assert_eq!(&host.get_instance(path).unwrap(), inst, "{path:?}");
            }
        }
    }
}
