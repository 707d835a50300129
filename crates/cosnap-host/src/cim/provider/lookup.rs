//! Key lookups and id cursors: the instances `get_instance` finds by their key without
//! enumerating their class (settings of VMs and snapshots, reference points), and the ids
//! whose paths an enumeration hands out a batch at a time instead of building every
//! instance first.

use std::collections::VecDeque;

use cosnap_cim::{CimError, CimProvider, Instance, InstanceCursor, ObjectPath, PathCursor};
use rusqlite::Connection;

use super::enumerate::{CONCRETE, is_a};
use crate::cim::*;
use crate::error::HostError;
use crate::host::Host;

impl Host {
    /// A snapshot's settings of one VM (Msvm_VirtualSystemSettingData).
    pub(super) fn snapshot_settings_instance(
        &self,
        snap_id: &str,
        vm_id: &str,
    ) -> Result<Instance, HostError> {
        let snap = self.snapshot(snap_id)?;
        let v = snap.vms.iter().find(|v| v.vm_id == vm_id).ok_or_else(|| {
            HostError::not_found(format!("snapshot {snap_id} does not hold VM {vm_id}"))
        })?;
        Ok(self.snapshot_vm_instances(&snap, v).0)
    }

    /// One VM's reference point (Msvm_VirtualSystemReferencePoint).
    pub(super) fn refpoint_member_instance(
        &self,
        rp_id: &str,
        vm_id: &str,
    ) -> Result<Instance, HostError> {
        let rp = self.refpoint(rp_id)?;
        let v = rp.vms.iter().find(|v| v.vm_id == vm_id).ok_or_else(|| {
            HostError::not_found(format!("reference point {rp_id} does not hold VM {vm_id}"))
        })?;
        Ok(self.refpoint_instance(&rp, v))
    }

    /// A cursor over every instance of `class` (and its subclasses) when each of its
    /// concrete classes has a key lookup; `None` otherwise (the caller builds the list).
    pub(super) fn instance_cursor(&self, class: &str) -> Result<Option<IdCursor>, HostError> {
        let mut out: Vec<(PathOf, String)> = Vec::new();
        for concrete in CONCRETE.iter().filter(|c| is_a(c, class)) {
            let conn = self.db();
            match *concrete {
                "Msvm_ComputerSystem" => {
                    let vms = ids(&conn, "SELECT id FROM vms ORDER BY seq")?;
                    out.extend(vms.into_iter().map(|id| (vm_path as PathOf, id)));
                }
                "Msvm_VirtualSystemSettingData" => {
                    let vms = ids(&conn, "SELECT id FROM vms ORDER BY seq")?;
                    let of_vm: PathOf = |id| vssd_path(&vm_vssd_id(id));
                    out.extend(vms.into_iter().map(|id| (of_vm, id)));
                    let snapshot_vssds = ids(
                        &conn,
                        "SELECT v.vssd_id FROM snapshot_vms v JOIN snapshots s ON s.id = v.snapshot_id
                         ORDER BY s.seq, v.rowid",
                    )?;
                    out.extend(
                        snapshot_vssds
                            .into_iter()
                            .map(|id| (vssd_path as PathOf, id)),
                    );
                }
                "Msvm_SnapshotCollection" => {
                    let snaps = ids(&conn, "SELECT id FROM snapshots ORDER BY seq")?;
                    let of_snapshot: PathOf = snapshot_collection_path;
                    out.extend(snaps.into_iter().map(|id| (of_snapshot, id)));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(IdCursor(out.into())))
    }
}

/// How an enumeration makes an instance's path from the id it keeps.
type PathOf = fn(&str) -> ObjectPath;

/// The paths still to deliver, kept as the ids they are made from: an open enumeration
/// holds every one of them, and a whole path costs about ten times its id. Each batch
/// makes its paths and reads them as [`PathCursor`] does (instances gone are skipped).
pub(super) struct IdCursor(VecDeque<(PathOf, String)>);

impl InstanceCursor for IdCursor {
    fn next_batch(
        &mut self,
        provider: &dyn CimProvider,
        max: usize,
    ) -> Result<Vec<Instance>, CimError> {
        let max = max.max(1);
        let mut out = Vec::new();
        // Instances deleted meanwhile are skipped, so read on until the batch is full or
        // the ids run out: an empty batch would mean the end.
        while out.len() < max && !self.0.is_empty() {
            let n = (max - out.len()).min(self.0.len());
            let paths = self
                .0
                .drain(..n)
                .map(|(path_of, id)| path_of(&id))
                .collect();
            out.extend(PathCursor::new(paths).next_batch(provider, n)?);
        }
        Ok(out)
    }

    fn is_exhausted(&self) -> bool {
        self.0.is_empty()
    }
}

fn ids(conn: &Connection, sql: &str) -> Result<Vec<String>, HostError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
