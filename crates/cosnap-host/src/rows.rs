//! Repository rows to domain structs: loading a VM, collection, snapshot or reference point
//! from its rows, resolving an id or name, and the small text conversions they share.

use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{HostError, Result};
use crate::model::*;
use crate::util::{norm_id, rfc3339};

pub(crate) fn fmt_of(text: &str) -> Format {
    Format::from_name(text).unwrap_or(Format::Raw)
}

pub(crate) fn p2s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub(crate) fn ids(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?)
}

/// Ids of the snapshots or reference points (`table`, one of this module's fixed table
/// names, never caller text) in creation order: of one VM collection (id or name), or all.
pub(crate) fn ids_by_collection(
    conn: &Connection,
    table: &str,
    collection: Option<&str>,
) -> Result<Vec<String>> {
    let Some(collection) = collection else {
        return ids(conn, &format!("SELECT id FROM {table} ORDER BY seq"));
    };

    let collection_id = resolve(conn, "collections", collection, "collection")?;
    let sql = format!("SELECT id FROM {table} WHERE collection_id = ?1 ORDER BY seq");
    let mut stmt = conn.prepare_cached(&sql)?;
    Ok(stmt
        .query_map([&collection_id], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?)
}

/// Resolves an id (any case, braces optional) or a unique name in `table`.
pub(crate) fn resolve(
    conn: &Connection,
    table: &str,
    id_or_name: &str,
    what: &str,
) -> Result<String> {
    let id = norm_id(id_or_name);
    if conn
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE id = ?1"),
            [&id],
            |_| Ok(()),
        )
        .optional()?
        .is_some()
    {
        return Ok(id);
    }
    let mut stmt = conn.prepare_cached(&format!("SELECT id FROM {table} WHERE name = ?1"))?;
    let found: Vec<String> = stmt
        .query_map([id_or_name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => Err(HostError::not_found(format!(
            "no {what} with id or name '{id_or_name}'"
        ))),
        n => Err(HostError::invalid(format!(
            "{n} {what}s are named '{id_or_name}'; use the id"
        ))),
    }
}

pub(crate) fn load_vm(conn: &Connection, id: &str) -> Result<Vm> {
    let (name, cpus, memory_mb, created, parent): (String, u32, i64, String, Option<String>) = conn
        .query_row(
            "SELECT name, cpus, memory_mb, created, parent_vssd FROM vms WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no VM with id {id}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT d.idx, d.active_layer, COALESCE(l.format, d.base_format), d.base_path, d.base_format, d.disk_guid
         FROM vm_disks d LEFT JOIN layers l ON l.path = d.active_layer WHERE d.vm_id = ?1 ORDER BY d.idx",
    )?;
    let disks = stmt
        .query_map([id], |r| {
            let idx: u32 = r.get(0)?;
            let guid: String = r.get(5)?;
            Ok(VmDisk {
                index: idx,
                path: PathBuf::from(r.get::<_, String>(1)?),
                format: fmt_of(&r.get::<_, String>(2)?),
                base_path: PathBuf::from(r.get::<_, String>(3)?),
                base_format: fmt_of(&r.get::<_, String>(4)?),
                instance_id: disk_instance_id(id, &guid, idx),
                tracking_guid: guid,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt =
        conn.prepare_cached("SELECT mac, switch_name FROM vm_nics WHERE vm_id = ?1 ORDER BY idx")?;
    let nics = stmt
        .query_map([id], |r| {
            Ok(Nic {
                mac: r.get(0)?,
                switch_name: r.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT m.collection_id FROM collection_members m JOIN collections c ON c.id = m.collection_id WHERE m.member_id = ?1 ORDER BY c.seq",
    )?;
    let collections = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Vm {
        id: id.to_string(),
        name,
        cpus,
        memory_mb: memory_mb as u64,
        created,
        disks,
        nics,
        parent_snapshot: parent,
        collections,
        run: crate::vm_boot::load_run_settings(conn, id)?,
        state: None,
    })
}

/// A disk's InstanceID, shaped like Hyper-V's resource InstanceIDs
/// (`Microsoft:<VM GUID>\<disk GUID>\0\<slot>\D`).
pub fn disk_instance_id(vm_id: &str, disk_guid: &str, idx: u32) -> String {
    format!("Microsoft:{vm_id}\\{disk_guid}\\0\\{idx}\\D")
}

pub(crate) fn load_collection(conn: &Connection, id: &str) -> Result<Collection> {
    let (name, kind, created): (String, u16, String) = conn
        .query_row(
            "SELECT name, kind, created FROM collections WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no collection with id {id}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT member_id FROM collection_members WHERE collection_id = ?1 ORDER BY seq",
    )?;
    let members = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Collection {
        id: id.to_string(),
        name,
        kind,
        created,
        members,
    })
}

pub(crate) fn layer_format(conn: &Connection, path: &str) -> Result<Format> {
    Ok(conn
        .query_row("SELECT format FROM layers WHERE path = ?1", [path], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
        .map(|f| fmt_of(&f))
        .unwrap_or(Format::Raw))
}

pub(crate) fn settings_of(text: &str) -> Result<VmSettings> {
    serde_json::from_str(text)
        .map_err(|e| HostError::Failed(format!("stored settings unreadable: {e}")))
}

pub(crate) fn load_snapshot(conn: &Connection, id: &str) -> Result<Snapshot> {
    type Head = (String, String, u16, i64, Option<i64>);
    let (collection_id, name, snapshot_type, created_ms, pause_window_us): Head = conn
        .query_row(
            "SELECT collection_id, name, snapshot_type, created, pause_window_us FROM snapshots WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no snapshot collection with id {id}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT s.vm_id, s.vssd_id, s.parent_vssd, s.settings, s.created FROM snapshot_vms s
         LEFT JOIN vms v ON v.id = s.vm_id WHERE s.snapshot_id = ?1 ORDER BY v.seq",
    )?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut vms = Vec::new();
    for (vm_id, vssd_id, parent_vssd, settings, created) in rows {
        let mut stmt = conn.prepare_cached(
            "SELECT s.idx, s.layer, COALESCE(d.disk_guid, '') FROM snapshot_disks s LEFT JOIN vm_disks d ON d.vm_id = s.vm_id AND d.idx = s.idx
             WHERE s.snapshot_id = ?1 AND s.vm_id = ?2 ORDER BY s.idx",
        )?;
        let raw = stmt
            .query_map([id, &vm_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut disks = Vec::new();
        for (idx, layer, guid) in raw {
            disks.push(LayerRef {
                index: idx,
                format: layer_format(conn, &layer)?,
                path: PathBuf::from(layer),
                disk_instance_id: disk_instance_id(&vm_id, &guid, idx),
            });
        }
        vms.push(SnapshotVm {
            settings: settings_of(&settings)?,
            vm_id,
            vssd_id,
            parent_vssd,
            created: rfc3339(created),
            disks,
        });
    }
    Ok(Snapshot {
        id: id.to_string(),
        collection_id,
        name,
        snapshot_type,
        created: rfc3339(created_ms),
        created_ms,
        vms,
        pause_window_us: pause_window_us.map(|us| us as u64),
    })
}

pub(crate) fn load_refpoint(conn: &Connection, id: &str) -> Result<RefPoint> {
    let (collection_id, name, rp_type, consistency, created_ms, from_snapshot): (String, String, u16, u16, i64, String) = conn
        .query_row(
            "SELECT collection_id, name, rp_type, consistency, created, from_snapshot FROM refpoints WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?
        .ok_or_else(|| HostError::not_found(format!("no reference point collection with id {id}")))?;
    let mut stmt = conn.prepare_cached(
        "SELECT r.vm_id, r.instance_id, r.settings FROM refpoint_vms r LEFT JOIN vms v ON v.id = r.vm_id WHERE r.refpoint_id = ?1 ORDER BY v.seq",
    )?;
    let rows = stmt
        .query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut vms = Vec::new();
    for (vm_id, instance_id, settings) in rows {
        let mut stmt = conn.prepare_cached(
            "SELECT idx, layer, disk_identifier, rct_id FROM refpoint_disks WHERE refpoint_id = ?1 AND vm_id = ?2 ORDER BY idx",
        )?;
        let raw = stmt
            .query_map([id, &vm_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut disks = Vec::new();
        for (idx, layer, disk_id, rct) in raw {
            disks.push(RefPointDisk {
                index: idx,
                format: layer_format(conn, &layer)?,
                path: PathBuf::from(layer),
                disk_instance_id: disk_id,
                rct_id: rct,
            });
        }
        vms.push(RefPointVm {
            vm_id,
            instance_id,
            settings: settings_of(&settings)?,
            disks,
        });
    }
    Ok(RefPoint {
        id: id.to_string(),
        collection_id,
        name,
        rp_type,
        consistency,
        created: rfc3339(created_ms),
        created_ms,
        from_snapshot,
        vms,
    })
}

/// Removes a snapshot's rows: each member's VSSD leaves the snapshot tree (its child
/// VSSDs and its VM point to its parent instead), then the snapshot's disks, VMs and row.
pub(crate) fn delete_snapshot_rows(tx: &Connection, snap: &Snapshot) -> Result<()> {
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
    Ok(())
}
