//! Snapshot collections: look up, create (one point in time for the whole group), destroy
//! (release of the frozen layers) and apply (branch from the frozen layers).

use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::journal::{self, Plan};
use crate::layers::journal_release;
use crate::model::*;
use crate::new_layers::{NewLayer, NewSnapshot, activate_new_layers};
use crate::repo;
use crate::rows::{delete_snapshot_rows, ids_by_collection, load_snapshot, load_vm, p2s};
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
        let ids = ids_by_collection(&conn, "snapshots", collection)?;
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

        let running = self.running_members(&vms)?;
        let children: Vec<NewLayer> = vms
            .iter()
            .flat_map(|vm| {
                let live = running.contains_key(&vm.id);
                vm.disks
                    .iter()
                    .map(move |d| crate::live::new_layer(&self.inner.data_dir, vm, d, live))
            })
            .collect();
        let members = crate::live::members(&vms, &running, &children);
        let plan = Plan::Create {
            created: children.iter().map(|c| c.path.clone()).collect(),
            live: crate::live::switches(&members),
        };
        let jid = journal::insert(
            &self.db(),
            "create-snapshot",
            "pending",
            &plan,
            work.job_id(),
        )?;
        crash_point("create.journaled");

        let created = self
            .create_new_layers(&children, work, 90, "create.child")
            .and_then(|()| {
                for vm in &vms {
                    journal::sync_parent(
                        &repo::vm_disk_dir(&self.inner.data_dir, &vm.id).join("x"),
                    );
                }
                work.check_cancel()
            });

        let sid = new_guid();
        let snapshot = NewSnapshot {
            id: &sid,
            collection: &coll,
            snapshot_type,
            vms: &vms,
            children: &children,
            journal_id: jid,
            pause_window_us: None,
        };
        let recorded = match created {
            Ok(()) => self.freeze_and_record(snapshot, &members),
            Err(e) => Err((e, vec![])),
        };
        if let Err((e, switched)) = recorded {
            // Overlays a running VM writes to now stay (recorded as its active layers).
            let (_, unused): (Vec<NewLayer>, Vec<NewLayer>) = children
                .into_iter()
                .partition(|c| switched.contains(&c.path));
            self.roll_back_new_layers(&unused, jid);
            return Err(e);
        }
        crash_point("create.committed");
        Ok(sid)
    }

    /// The commit point of a CreateSnapshot: one transaction records the snapshot, each
    /// member VM's settings and frozen layers, switches every active layer to its new child
    /// and drops the journal entry.
    pub(crate) fn record_snapshot(&self, snap: &NewSnapshot) -> Result<()> {
        let now = now_ms();
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM snapshots", [], |r| {
                r.get(0)
            })?;
        let name = format!("{} - ({})", snap.collection.name, rfc3339(now));
        tx.execute(
            "INSERT INTO snapshots (id, collection_id, name, snapshot_type, created, seq, pause_window_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![snap.id, snap.collection.id, name, snap.snapshot_type, now, seq, snap.pause_window_us.map(|us| us as i64)],
        )?;

        for vm in snap.vms {
            record_snapshot_vm(&tx, snap.id, vm, now)?;
        }
        activate_new_layers(&tx, snap.children)?;

        journal::remove(&tx, snap.journal_id)?;
        tx.commit()?;
        Ok(())
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
        let members = self.snapshot_members(&self.snapshot(id)?)?;
        let running = self.running_layers(&members)?;
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
        delete_snapshot_rows(&tx, &snap)?;
        tx.execute("DELETE FROM exports WHERE source_id = ?1", [&snap.id])?;
        let kind = match running.is_empty() {
            true => "destroy-snapshot",
            false => crate::live_merge::LIVE_RELEASE_OP,
        };
        let (jid, plan) = journal_release(&tx, &layers, kind, work)?;
        running.check_release(&plan)?;
        tx.commit()?;
        drop(conn);
        match running.is_empty() {
            true => self.run_release(jid, &plan, work, "destroy.committed"),
            false => self.run_live_release(jid, &plan, &running, work),
        }
    }

    pub fn check_apply_snapshot(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        self.refuse_while_running(&self.snapshot_members(&snap)?, "ApplySnapshot")?;
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
        self.refuse_while_running(&vms, "ApplySnapshot")?;

        let children: Vec<NewLayer> = snap
            .vms
            .iter()
            .flat_map(|sv| {
                sv.disks.iter().map(|d| {
                    NewLayer::above(&self.inner.data_dir, &sv.vm_id, d.index, &d.path, d.format)
                })
            })
            .collect();
        let mut plan = Plan::Apply {
            created: children.iter().map(|c| c.path.clone()).collect(),
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

        let committed = self
            .create_new_layers(&children, work, 80, "apply.child")
            .and_then(|()| work.check_cancel())
            .and_then(|()| self.commit_apply(&snap, &vms, &children, &mut plan, jid));
        let delete_after = match committed {
            Ok(d) => d,
            Err(e) => {
                self.roll_back_new_layers(&children, jid);
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

    /// The commit point of an ApplySnapshot: one transaction drops the VMs' old active
    /// layers nothing else references, activates the new children, restores the settings
    /// and marks the journal entry committed with the files to delete. Returns those files.
    fn commit_apply(
        &self,
        snap: &Snapshot,
        vms: &[Vm],
        children: &[NewLayer],
        plan: &mut Plan,
        jid: i64,
    ) -> Result<Vec<PathBuf>> {
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let delete_after = forget_unreferenced_active_layers(&tx, vms)?;
        activate_new_layers(&tx, children)?;
        for sv in &snap.vms {
            restore_settings(&tx, sv)?;
        }

        if let Plan::Apply {
            delete_after: d, ..
        } = plan
        {
            *d = delete_after.clone();
        }
        journal::set_phase(&tx, jid, "committed", plan)?;
        tx.commit()?;
        Ok(delete_after)
    }
}

/// Records one member VM in a new snapshot: its VSSD with the settings of now, the VM's
/// parent snapshot pointer moved to that VSSD, and its active layers as frozen layers.
fn record_snapshot_vm(tx: &Connection, sid: &str, vm: &Vm, now: i64) -> Result<()> {
    let vssd = format!("Microsoft:{}", new_guid());
    let settings =
        serde_json::to_string(&vm.settings()).map_err(|e| HostError::Failed(e.to_string()))?;
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
    Ok(())
}

/// Inside an apply's transaction: forgets each VM's active layer that nothing else
/// references (no snapshot, reference point or child, and cosnap's own file) and returns
/// those files, to delete once the transaction commits.
fn forget_unreferenced_active_layers(tx: &Connection, vms: &[Vm]) -> Result<Vec<PathBuf>> {
    let mut delete_after = Vec::new();
    for vm in vms {
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
    Ok(delete_after)
}

/// Inside an apply's transaction: a VM's name, processors, memory and NICs back to what
/// the snapshot recorded, and its parent snapshot pointer to the applied VSSD.
fn restore_settings(tx: &Connection, sv: &SnapshotVm) -> Result<()> {
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
    Ok(())
}
