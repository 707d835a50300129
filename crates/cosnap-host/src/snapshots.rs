//! Snapshot collections: look up, create (one point in time for the whole group), destroy
//! (release of the frozen layers) and apply (branch from the frozen layers).

use std::path::PathBuf;

use cosnap_disk::Format;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::journal::{self, Plan};
use crate::layers::{child_ext, journal_release};
use crate::model::*;
use crate::repo;
use crate::rows::{ids, load_snapshot, load_vm, p2s, resolve};
use crate::util::{crash_point, new_guid, norm_id, now_ms, rfc3339};
use crate::work::Work;

impl Host {
    pub fn snapshot(&self, id: &str) -> Result<Snapshot> {
        let conn = self.db();
        load_snapshot(&conn, &norm_id(id))
    }

    /// Snapshot collections, oldest first; `collection` filters by VM collection.
    pub fn snapshots(&self, collection: Option<&str>) -> Result<Vec<Snapshot>> {
        let conn = self.db();
        let ids = match collection {
            Some(c) => {
                let cid = resolve(&conn, "collections", c, "collection")?;
                let mut stmt =
                    conn.prepare("SELECT id FROM snapshots WHERE collection_id = ?1 ORDER BY seq")?;
                stmt.query_map([&cid], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => ids(&conn, "SELECT id FROM snapshots ORDER BY seq")?,
        };
        ids.iter().map(|id| load_snapshot(&conn, id)).collect()
    }

    /// The snapshot whose VSSD has this InstanceID.
    pub fn snapshot_of_vssd(&self, vssd_id: &str) -> Result<Snapshot> {
        let conn = self.db();
        let sid: String = conn
            .query_row(
                "SELECT snapshot_id FROM snapshot_vms WHERE vssd_id = ?1 COLLATE NOCASE",
                [vssd_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                HostError::not_found(format!("no snapshot settings with InstanceID {vssd_id}"))
            })?;
        load_snapshot(&conn, &sid)
    }

    /// Checks CreateSnapshot's arguments without changing anything.
    pub fn check_create_snapshot(
        &self,
        collection: &str,
        snapshot_type: u16,
    ) -> Result<Collection> {
        if snapshot_type != SNAPSHOT_STANDARD && snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::invalid(format!(
                "SnapshotType {snapshot_type} is not supported (1 Standard, 2 Recovery)"
            )));
        }
        let coll = self.collection(collection)?;
        if coll.kind != COLLECTION_OF_VMS {
            return Err(HostError::InvalidType(format!(
                "{} is a collection of collections; snapshots are taken of VM collections",
                coll.id
            )));
        }
        if coll.members.is_empty() {
            return Err(HostError::state(format!(
                "collection {} has no member VMs",
                coll.id
            )));
        }
        Ok(coll)
    }

    /// CreateSnapshot, synchronously (what the job runs). Returns the snapshot id.
    ///
    /// One point in time for the whole group: under the repository lock (no guest write or
    /// other change interleaves) every disk of every member VM gets a new differencing child
    /// of its active layer; then ONE transaction records the snapshot (frozen layer = the old
    /// active layer) and switches every active layer to its child. Cost is independent of
    /// disk size: a child is a header and an empty table.
    pub fn create_snapshot(
        &self,
        collection: &str,
        snapshot_type: u16,
        work: &dyn Work,
    ) -> Result<String> {
        let _lock = self.lock()?;
        let coll = self.check_create_snapshot(collection, snapshot_type)?;
        let vms: Vec<Vm> = {
            let conn = self.db();
            coll.members
                .iter()
                .map(|m| load_vm(&conn, m))
                .collect::<Result<_>>()?
        };
        let mut children: Vec<(String, u32, PathBuf, PathBuf, Format)> = Vec::new(); // vm, idx, parent, child, fmt
        for vm in &vms {
            let dir = repo::vm_disk_dir(&self.inner.data_dir, &vm.id);
            for d in &vm.disks {
                let (ext, fmt) = child_ext(d.format);
                let child = dir.join(format!("{}.{ext}", new_guid().to_ascii_lowercase()));
                children.push((vm.id.clone(), d.index, d.path.clone(), child, fmt));
            }
        }
        let plan = Plan::Create {
            created: children.iter().map(|c| c.3.clone()).collect(),
        };
        let jid = {
            let conn = self.db();
            journal::insert(&conn, "create-snapshot", "pending", &plan, work.job_id())?
        };
        crash_point("create.journaled");
        let rollback = |host: &Host| {
            for c in &children {
                let _ = journal::delete_file(&c.3);
            }
            let _ = journal::remove(&host.db(), jid);
        };
        let total = children.len().max(1);
        for (i, (_, _, parent, child, _)) in children.iter().enumerate() {
            let step = (|| -> Result<()> {
                work.check_cancel()?;
                self.create_layer_dir(child)?;
                cosnap_disk::create_child_of(&self.disk_chain(parent)?, child)?;
                crate::modes::make_private_file(child)?;
                if let Ok(f) = std::fs::File::open(child) {
                    f.sync_all()?;
                }
                Ok(())
            })();
            if let Err(e) = step {
                rollback(self);
                return Err(e);
            }
            crash_point("create.child");
            work.progress(((i + 1) * 90 / total) as u16);
        }
        for vm in &vms {
            journal::sync_parent(&repo::vm_disk_dir(&self.inner.data_dir, &vm.id).join("x"));
        }
        if let Err(e) = work.check_cancel() {
            rollback(self);
            return Err(e);
        }
        let sid = new_guid();
        let now = now_ms();
        let result = (|| -> Result<()> {
            let mut conn = self.db();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM snapshots", [], |r| {
                    r.get(0)
                })?;
            let name = format!("{} - ({})", coll.name, rfc3339(now));
            tx.execute(
                "INSERT INTO snapshots (id, collection_id, name, snapshot_type, created, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![sid, coll.id, name, snapshot_type, now, seq],
            )?;
            for vm in &vms {
                let vssd = format!("Microsoft:{}", new_guid());
                let settings = serde_json::to_string(&vm.settings())
                    .map_err(|e| HostError::Failed(e.to_string()))?;
                tx.execute(
                    "INSERT INTO snapshot_vms (snapshot_id, vm_id, vssd_id, parent_vssd, settings, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![sid, vm.id, vssd, vm.parent_snapshot, settings, now],
                )?;
                tx.execute(
                    "UPDATE vms SET parent_vssd = ?2 WHERE id = ?1",
                    params![vm.id, vssd],
                )?;
                for d in &vm.disks {
                    tx.execute(
                        "INSERT INTO snapshot_disks (snapshot_id, vm_id, idx, layer) VALUES (?1, ?2, ?3, ?4)",
                        params![sid, vm.id, d.index, p2s(&d.path)],
                    )?;
                }
            }
            for (vm_id, idx, parent, child, fmt) in &children {
                tx.execute(
                    "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    params![p2s(child), vm_id, idx, p2s(parent), fmt.name()],
                )?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
                    params![vm_id, idx, p2s(child)],
                )?;
            }
            journal::remove(&tx, jid)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = result {
            rollback(self);
            return Err(e);
        }
        crash_point("create.committed");
        Ok(sid)
    }

    pub fn check_destroy_snapshot(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        Ok(snap)
    }

    /// DestroySnapshot, synchronously. Dependants: child snapshots are re-parented to the
    /// destroyed snapshot's parent (Hyper-V's behaviour); nothing cascades. Each frozen layer
    /// is released per `release_layers`. Cancellable until the single commit point;
    /// after it the merge always runs to the end (a half-merged layer cannot be un-merged).
    pub fn destroy_snapshot(&self, id: &str, work: &dyn Work) -> Result<()> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let snap = load_snapshot(&conn, &norm_id(id))?;
        Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
        work.check_cancel()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let layers: Vec<PathBuf> = snap
            .vms
            .iter()
            .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
            .collect();
        for v in &snap.vms {
            tx.execute(
                "UPDATE snapshot_vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
            tx.execute(
                "UPDATE vms SET parent_vssd = ?2 WHERE parent_vssd = ?1",
                params![v.vssd_id, v.parent_vssd],
            )?;
        }
        tx.execute(
            "DELETE FROM snapshot_disks WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute(
            "DELETE FROM snapshot_vms WHERE snapshot_id = ?1",
            [&snap.id],
        )?;
        tx.execute("DELETE FROM snapshots WHERE id = ?1", [&snap.id])?;
        tx.execute("DELETE FROM exports WHERE source_id = ?1", [&snap.id])?;
        let (jid, plan) = journal_release(&tx, &layers, "destroy-snapshot", work)?;
        tx.commit()?;
        drop(conn);
        self.run_release(jid, &plan, work, "destroy.committed")
    }

    pub fn check_apply_snapshot(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        Ok(snap)
    }

    /// ApplySnapshot, synchronously: every member VM of the snapshot gets a fresh child of
    /// its frozen layer as active layer, its settings back to the snapshot's, and its old
    /// active layer deleted (a leaf nothing else references). One transaction; journal.
    pub fn apply_snapshot(&self, id: &str, work: &dyn Work) -> Result<()> {
        let _lock = self.lock()?;
        let (snap, vms) = {
            let conn = self.db();
            let snap = load_snapshot(&conn, &norm_id(id))?;
            Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
            let vms = snap
                .vms
                .iter()
                .map(|v| load_vm(&conn, &v.vm_id))
                .collect::<Result<Vec<_>>>()?;
            (snap, vms)
        };
        let mut created = Vec::new(); // (vm, idx, frozen, child, fmt)
        for sv in &snap.vms {
            let dir = repo::vm_disk_dir(&self.inner.data_dir, &sv.vm_id);
            for d in &sv.disks {
                let (ext, fmt) = child_ext(d.format);
                let child = dir.join(format!("{}.{ext}", new_guid().to_ascii_lowercase()));
                created.push((sv.vm_id.clone(), d.index, d.path.clone(), child, fmt));
            }
        }
        let mut plan = Plan::Apply {
            created: created.iter().map(|c| c.3.clone()).collect(),
            delete_after: vec![],
        };
        let jid = journal::insert(
            &self.db(),
            "apply-snapshot",
            "pending",
            &plan,
            work.job_id(),
        )?;
        crash_point("apply.journaled");
        let rollback = |host: &Host| {
            for c in &created {
                let _ = journal::delete_file(&c.3);
            }
            let _ = journal::remove(&host.db(), jid);
        };
        let total = created.len().max(1);
        for (i, (_, _, frozen, child, _)) in created.iter().enumerate() {
            let step = (|| -> Result<()> {
                work.check_cancel()?;
                self.create_layer_dir(child)?;
                cosnap_disk::create_child_of(&self.disk_chain(frozen)?, child)?;
                crate::modes::make_private_file(child)?;
                std::fs::File::open(child)?.sync_all()?;
                Ok(())
            })();
            if let Err(e) = step {
                rollback(self);
                return Err(e);
            }
            crash_point("apply.child");
            work.progress(((i + 1) * 80 / total) as u16);
        }
        if let Err(e) = work.check_cancel() {
            rollback(self);
            return Err(e);
        }
        let result = (|| -> Result<Vec<PathBuf>> {
            let mut conn = self.db();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut delete_after = Vec::new();
            for vm in &vms {
                for d in &vm.disks {
                    let referenced: i64 = tx.query_row(
                        "SELECT (SELECT COUNT(*) FROM snapshot_disks WHERE layer = ?1) + (SELECT COUNT(*) FROM refpoint_disks WHERE layer = ?1)
                         + (SELECT COUNT(*) FROM layers WHERE parent = ?1) + (SELECT COUNT(*) FROM layers WHERE path = ?1 AND owned = 0)",
                        [p2s(&d.path)],
                        |r| r.get(0),
                    )?;
                    if referenced == 0 {
                        tx.execute("DELETE FROM layers WHERE path = ?1", [p2s(&d.path)])?;
                        delete_after.push(d.path.clone());
                    }
                }
            }
            for (vm_id, idx, frozen, child, fmt) in &created {
                tx.execute(
                    "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    params![p2s(child), vm_id, idx, p2s(frozen), fmt.name()],
                )?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
                    params![vm_id, idx, p2s(child)],
                )?;
            }
            for sv in &snap.vms {
                let s = &sv.settings;
                tx.execute(
                    "UPDATE vms SET name = ?2, cpus = ?3, memory_mb = ?4, parent_vssd = ?5 WHERE id = ?1",
                    params![sv.vm_id, s.name, s.cpus, s.memory_mb as i64, sv.vssd_id],
                )?;
                tx.execute("DELETE FROM vm_nics WHERE vm_id = ?1", [&sv.vm_id])?;
                for (i, nic) in s.nics.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO vm_nics (vm_id, idx, mac, switch_name) VALUES (?1, ?2, ?3, ?4)",
                        params![sv.vm_id, i as i64, nic.mac, nic.switch_name],
                    )?;
                }
            }
            if let Plan::Apply {
                delete_after: d, ..
            } = &mut plan
            {
                *d = delete_after.clone();
            }
            journal::set_phase(&tx, jid, "committed", &plan)?;
            tx.commit()?;
            Ok(delete_after)
        })();
        let delete_after = match result {
            Ok(d) => d,
            Err(e) => {
                rollback(self);
                return Err(e);
            }
        };
        work.set_cancellable(false);
        crash_point("apply.committed");
        for f in &delete_after {
            journal::delete_file(f)?;
            crash_point("apply.deleted");
        }
        journal::remove(&self.db(), jid)?;
        Ok(())
    }
}
