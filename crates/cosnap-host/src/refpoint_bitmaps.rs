//! Change tracking of reference points taken from running VMs: which persistent dirty
//! bitmap, on which layer file, carries a disk's changes since the reference point, and
//! reading those changes back offline from the frozen layers above the boundary.

use std::ops::Range;
use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use cosnap_disk::qcow2::{ChangeInfo, dirty_ranges, list_bitmaps};
use rusqlite::{Connection, OptionalExtension, params};

use crate::chains::recorded_chain;
use crate::error::Result;
use crate::model::SNAPSHOT_RECOVERY;

/// Every bitmap cosnap asks QEMU to add is named with this prefix.
const COSNAP_BITMAP_PREFIX: &str = "cosnap-";

/// The name of the persistent bitmap a snapshot that tracks changes puts on each new layer.
pub fn snapshot_bitmap(snapshot_id: &str) -> String {
    format!("{COSNAP_BITMAP_PREFIX}{}", snapshot_id.to_ascii_lowercase())
}

/// What the bitmaps say changed on one disk since a reference point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TrackedChanges {
    /// The reference point keeps no bitmap for this disk (it was off): compare the chain.
    Untracked,
    /// The changed guest byte ranges, sorted and merged.
    Known(Vec<Range<u64>>),
    /// The change information is gone (why, for the notice).
    Lost(String),
}

/// Whether a snapshot of type `snapshot_type` of collection `collection_id` puts a persistent
/// dirty bitmap on its running members' new layers: always for a recovery snapshot (it may
/// become a reference point), and for any other snapshot while the collection holds a recovery
/// snapshot or a tracked reference point — a layer without a bitmap between a reference point
/// and the exported snapshot would make the differential fall back to full. Not for every
/// snapshot: cosnap's offline writes cannot keep bitmaps up to date, so a layer carrying one
/// costs change tracking when the VM is off (see `docs/decisions.md`).
pub(crate) fn change_tracking_wanted(
    conn: &Connection,
    collection_id: &str,
    snapshot_type: u16,
) -> Result<bool> {
    if snapshot_type == SNAPSHOT_RECOVERY {
        return Ok(true);
    }
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM snapshots WHERE collection_id = ?1 AND snapshot_type = ?2)
             OR EXISTS (SELECT 1 FROM refpoints r JOIN refpoint_disks d ON d.refpoint_id = r.id
                        WHERE r.collection_id = ?1 AND d.bitmap IS NOT NULL)",
        params![collection_id, SNAPSHOT_RECOVERY],
        |r| r.get(0),
    )?)
}

/// The layer and bitmap that track disk `idx` of `vm_id` since the snapshot `snapshot_id`
/// froze `boundary`: the layer right above the boundary in the disk's recorded chain, which
/// the recovery snapshot created with the bitmap `cosnap-<snapshot id>`. `None` when the disk
/// is not tracked (the VM is off and the layer holds no such bitmap, or it is not qcow2).
pub(crate) fn tracking_bitmap(
    conn: &Connection,
    vm_id: &str,
    idx: u32,
    boundary: &Path,
    snapshot_id: &str,
    vm_running: bool,
) -> Result<Option<(PathBuf, String)>> {
    let active: Option<String> = conn
        .query_row(
            "SELECT active_layer FROM vm_disks WHERE vm_id = ?1 AND idx = ?2",
            params![vm_id, idx],
            |r| r.get(0),
        )
        .optional()?;
    let Some(active) = active else {
        return Ok(None);
    };

    let chain = recorded_chain(conn, Path::new(&active))?;
    let Some(pos) = chain.iter().position(|l| l.path == boundary) else {
        return Ok(None);
    };
    let Some(above) = pos.checked_sub(1).map(|i| &chain[i]) else {
        return Ok(None);
    };
    if above.format != Format::Qcow2 {
        return Ok(None);
    }

    // A running VM's active layer holds its new bitmaps in QEMU until the layer is frozen;
    // a VM that is off stored them in the file, if it ever had them.
    let name = snapshot_bitmap(snapshot_id);
    let stored = list_bitmaps(&above.path).is_ok_and(|list| list.iter().any(|b| b.name == name));
    Ok((vm_running || stored).then(|| (above.path.clone(), name)))
}

/// The changes of disk `idx` of `vm_id` between reference point `refpoint_id` and the frozen
/// layer `top`, from the persistent bitmaps of every layer above the boundary (read offline;
/// never a chain comparison): the recorded bitmap on its recorded layer, every `cosnap-`
/// bitmap on the others (each was added when its layer was created, or merged in later).
pub(crate) fn tracked_changes(
    conn: &Connection,
    refpoint_id: &str,
    vm_id: &str,
    idx: u32,
    top: &Path,
) -> Result<TrackedChanges> {
    let row: Option<(String, Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT layer, bitmap_layer, bitmap FROM refpoint_disks WHERE refpoint_id = ?1 AND vm_id = ?2 AND idx = ?3",
            params![refpoint_id, vm_id, idx],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((boundary, Some(bitmap_layer), Some(bitmap))) = row else {
        return Ok(TrackedChanges::Untracked);
    };

    let chain = recorded_chain(conn, top)?;
    let Some(pos) = chain.iter().position(|l| l.path == Path::new(&boundary)) else {
        return Ok(TrackedChanges::Lost(format!(
            "the reference point's layer {boundary} is not below {}",
            top.display()
        )));
    };

    // The tracking layer is only ever a merge target while the reference point lives; if it
    // left the chain (pulled into several children and deleted), the blocks it held reached
    // the children without marking their bitmaps.
    let above = &chain[..pos];
    if !above.iter().any(|l| l.path == Path::new(&bitmap_layer)) {
        return Ok(TrackedChanges::Lost(format!(
            "the change-tracking layer {bitmap_layer} is no longer in the chain of {}",
            top.display()
        )));
    }

    let mut ranges = Vec::new();
    for layer in above {
        if layer.format != Format::Qcow2 {
            return Ok(lost_on(
                &layer.path,
                "it is not qcow2, so it holds no bitmaps",
            ));
        }
        let names = if layer.path == Path::new(&bitmap_layer) {
            vec![bitmap.clone()]
        } else {
            cosnap_bitmaps(&layer.path)?
        };
        if names.is_empty() {
            return Ok(lost_on(&layer.path, "it carries no change-tracking bitmap"));
        }
        for name in names {
            match dirty_ranges(&layer.path, &name)? {
                ChangeInfo::Known(r) => ranges.extend(r),
                ChangeInfo::Lost(reason) => {
                    return Ok(lost_on(&layer.path, &format!("bitmap {name}: {reason}")));
                }
            }
        }
    }
    Ok(TrackedChanges::Known(merge_ranges(ranges)))
}

fn lost_on(layer: &Path, why: &str) -> TrackedChanges {
    TrackedChanges::Lost(format!(
        "the change tracking of layer {} is lost ({why})",
        layer.display()
    ))
}

fn cosnap_bitmaps(layer: &Path) -> Result<Vec<String>> {
    Ok(list_bitmaps(layer)?
        .into_iter()
        .map(|b| b.name)
        .filter(|n| n.starts_with(COSNAP_BITMAP_PREFIX))
        .collect())
}

/// Sorts and joins touching or overlapping ranges.
fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn merge_joins_touching_and_overlapping_ranges() {
        assert_eq!(
            merge_ranges(vec![10..20, 0..5, 5..8, 15..30, 40..41]),
            vec![0..8, 10..30, 40..41]
        );
    }
}
