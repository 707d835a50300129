//! Key lookups and path cursors: the instances `get_instance` finds by their key without
//! enumerating their class (settings of VMs and snapshots, reference points), and the paths
//! an enumeration hands out a batch at a time instead of building every instance first.

use cosnap_cim::{Instance, ObjectPath};
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

    /// The paths of every instance of `class` (and its subclasses) when each of its
    /// concrete classes has a key lookup; `None` otherwise (the caller builds the list).
    pub(super) fn instance_paths(&self, class: &str) -> Result<Option<Vec<ObjectPath>>, HostError> {
        let mut out = Vec::new();
        for concrete in CONCRETE.iter().filter(|c| is_a(c, class)) {
            let conn = self.db();
            match *concrete {
                "Msvm_ComputerSystem" => {
                    out.extend(
                        ids(&conn, "SELECT id FROM vms ORDER BY seq")?
                            .iter()
                            .map(|id| vm_path(id)),
                    );
                }
                "Msvm_VirtualSystemSettingData" => {
                    let vms = ids(&conn, "SELECT id FROM vms ORDER BY seq")?;
                    out.extend(vms.iter().map(|id| vssd_path(&vm_vssd_id(id))));
                    let snapshot_vssds = ids(
                        &conn,
                        "SELECT v.vssd_id FROM snapshot_vms v JOIN snapshots s ON s.id = v.snapshot_id
                         ORDER BY s.seq, v.rowid",
                    )?;
                    out.extend(snapshot_vssds.iter().map(|id| vssd_path(id)));
                }
                "Msvm_SnapshotCollection" => {
                    let snaps = ids(&conn, "SELECT id FROM snapshots ORDER BY seq")?;
                    out.extend(snaps.iter().map(|id| snapshot_collection_path(id)));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

fn ids(conn: &Connection, sql: &str) -> Result<Vec<String>, HostError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
