//! Reference point collections: look up, convert a recovery snapshot into one (the frozen
//! layers become change boundaries), destroy (release of the boundary layers).

use std::path::PathBuf;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::layers::journal_release;
use crate::model::*;
use crate::refpoint_bitmaps::tracking_bitmap;
use crate::rows::{delete_snapshot_rows, ids_by_collection, load_refpoint, load_snapshot, p2s};
use crate::util::{crash_point, new_guid, norm_id, now_ms, rfc3339};
use crate::work::Work;

impl Host {
    pub fn refpoint(&self, id: &str) -> Result<RefPoint> {
        let conn = self.db();
        load_refpoint(&conn, &norm_id(id))
    }

    pub fn refpoints(&self, collection: Option<&str>) -> Result<Vec<RefPoint>> {
        let conn = self.db();
        let ids = ids_by_collection(&conn, "refpoints", collection)?;
        ids.iter().map(|id| load_refpoint(&conn, id)).collect()
    }

    /// How many of the reference point's disks keep a persistent dirty bitmap (their VM ran
    /// when the snapshot was taken), out of how many disks: a differential export against it
    /// reads those disks' changes from the bitmaps instead of comparing chains.
    pub fn refpoint_tracked_disks(&self, id: &str) -> Result<(usize, usize)> {
        let conn = self.db();
        let rp = load_refpoint(&conn, &norm_id(id))?;
        let (tracked, total): (i64, i64) = conn.query_row(
            "SELECT COUNT(bitmap), COUNT(*) FROM refpoint_disks WHERE refpoint_id = ?1",
            params![rp.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((tracked as usize, total as usize))
    }

    pub fn check_convert(&self, id: &str) -> Result<Snapshot> {
        let snap = self.snapshot(id)?;
        if snap.snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::state(format!(
                "snapshot collection {} is a standard snapshot; only recovery snapshots (type 2) convert to reference points",
                snap.id
            )));
        }
        Self::check_not_in_use(&self.db(), &snap.id, "snapshot collection")?;
        Ok(snap)
    }

    /// ConvertToReferencePoint, synchronously: the snapshot collection and its VSSDs go
    /// away; a reference point collection (ReferencePointType 2 "RCT based": the kept frozen
    /// layers are our change tracking; ConsistencyLevel 1 Crash Consistent in that class's
    /// numbering) keeps each disk's frozen layer as its change boundary, and for a disk of a
    /// running VM the layer and persistent bitmap that track its changes since. No file
    /// changes: one transaction, no journal.
    pub fn convert_to_refpoint(&self, id: &str, work: &dyn Work) -> Result<String> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let snap = load_snapshot(&conn, &norm_id(id))?;
        if snap.snapshot_type != SNAPSHOT_RECOVERY {
            return Err(HostError::state(format!(
                "snapshot collection {} is not a recovery snapshot",
                snap.id
            )));
        }
        Self::check_not_in_use(&conn, &snap.id, "snapshot collection")?;
        work.check_cancel()?;
        let rp = new_guid();
        let now = now_ms();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM refpoints", [], |r| {
                r.get(0)
            })?;
        let coll_name: String = tx
            .query_row(
                "SELECT name FROM collections WHERE id = ?1",
                [&snap.collection_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO refpoints (id, collection_id, name, rp_type, consistency, created, from_snapshot, seq) VALUES (?1, ?2, ?3, 2, 1, ?4, ?5, ?6)",
            params![rp, snap.collection_id, format!("{coll_name} - reference point ({})", rfc3339(now)), now, snap.id, seq],
        )?;
        for v in &snap.vms {
            let vm_running = self.running_vm(&v.vm_id).is_some();
            let settings =
                serde_json::to_string(&v.settings).map_err(|e| HostError::Failed(e.to_string()))?;
            tx.execute(
                "INSERT INTO refpoint_vms (refpoint_id, vm_id, instance_id, settings) VALUES (?1, ?2, ?3, ?4)",
                params![rp, v.vm_id, format!("Microsoft:{}", new_guid()), settings],
            )?;
            for d in &v.disks {
                let guid: String = tx
                    .query_row(
                        "SELECT disk_guid FROM vm_disks WHERE vm_id = ?1 AND idx = ?2",
                        params![v.vm_id, d.index],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or_else(new_guid);
                let n: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM refpoint_disks WHERE vm_id = ?1 AND idx = ?2",
                    params![v.vm_id, d.index],
                    |r| r.get(0),
                )?;
                let rct = format!(
                    "rctX:{}:{:08x}",
                    guid.to_ascii_lowercase().replace('-', ":"),
                    n + 1
                );
                let tracking =
                    tracking_bitmap(&tx, &v.vm_id, d.index, &d.path, &snap.id, vm_running)?;
                let (bitmap_layer, bitmap) = tracking.map(|(l, b)| (p2s(&l), b)).unzip();
                tx.execute(
                    "INSERT INTO refpoint_disks (refpoint_id, vm_id, idx, layer, disk_identifier, rct_id, bitmap_layer, bitmap) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![rp, v.vm_id, d.index, p2s(&d.path), d.disk_instance_id, rct, bitmap_layer, bitmap],
                )?;
            }
        }
        delete_snapshot_rows(&tx, &snap)?;
        tx.commit()?;
        crash_point("convert.committed");
        Ok(rp)
    }

    pub fn check_destroy_refpoint(&self, id: &str) -> Result<RefPoint> {
        let rp = self.refpoint(id)?;
        Self::check_not_in_use(&self.db(), &rp.id, "reference point collection")?;
        Ok(rp)
    }

    /// DestroyReferencePoint: merges each boundary layer away exactly like a snapshot
    /// destroy. Nothing cascades (later reference points keep their own boundaries).
    pub fn destroy_refpoint(&self, id: &str, work: &dyn Work) -> Result<()> {
        let _lock = self.lock()?;
        let mut conn = self.db();
        let rp = load_refpoint(&conn, &norm_id(id))?;
        Self::check_not_in_use(&conn, &rp.id, "reference point collection")?;
        work.check_cancel()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let layers: Vec<PathBuf> = rp
            .vms
            .iter()
            .flat_map(|v| v.disks.iter().map(|d| d.path.clone()))
            .collect();
        tx.execute(
            "DELETE FROM refpoint_disks WHERE refpoint_id = ?1",
            [&rp.id],
        )?;
        tx.execute("DELETE FROM refpoint_vms WHERE refpoint_id = ?1", [&rp.id])?;
        tx.execute("DELETE FROM refpoints WHERE id = ?1", [&rp.id])?;
        let (jid, plan) = journal_release(&tx, &layers, "destroy-refpoint", work)?;
        tx.commit()?;
        drop(conn);
        self.run_release(jid, &plan, work, "destroy-rp.committed")
    }
}
