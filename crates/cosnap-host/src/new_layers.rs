//! Differencing layers an operation creates (CreateSnapshot, ApplySnapshot): where each
//! goes, creating the files, rolling them back before the commit, and making them the
//! active layers inside the commit's transaction.

use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use rusqlite::{Connection, params};

use crate::error::Result;
use crate::host::Host;
use crate::journal;
use crate::model::{Collection, Vm};
use crate::repo;
use crate::rows::p2s;
use crate::util::{crash_point, new_guid};
use crate::work::Work;

/// A differencing layer to create above `parent` for one disk of a VM; it becomes that
/// disk's active layer when the operation commits.
pub(crate) struct NewLayer {
    pub(crate) vm_id: String,
    pub(crate) disk_index: u32,
    pub(crate) parent: PathBuf,
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
}

impl NewLayer {
    /// A freshly named layer under the VM's layer directory, above `parent` (a layer in
    /// `parent_format`).
    pub(crate) fn above(
        data_dir: &Path,
        vm_id: &str,
        disk_index: u32,
        parent: &Path,
        parent_format: Format,
    ) -> NewLayer {
        let (ext, format) = child_ext(parent_format);
        let name = format!("{}.{ext}", new_guid().to_ascii_lowercase());
        NewLayer {
            vm_id: vm_id.to_string(),
            disk_index,
            parent: parent.to_path_buf(),
            path: repo::vm_disk_dir(data_dir, vm_id).join(name),
            format,
        }
    }
}

/// Extension of a differencing child of a layer in `parent_format`.
fn child_ext(parent_format: Format) -> (&'static str, Format) {
    match parent_format {
        Format::Vhdx => ("avhdx", Format::Vhdx),
        _ => ("qcow2", Format::Qcow2),
    }
}

impl Host {
    /// Creates each new layer's file: a child of its parent's recorded chain, owner-only and
    /// synced, with a cancel check before each. Progress goes up to `progress_share` percent.
    /// On error the caller rolls back ([`Host::roll_back_new_layers`]).
    pub(crate) fn create_new_layers(
        &self,
        layers: &[NewLayer],
        work: &dyn Work,
        progress_share: usize,
        crash_label: &str,
    ) -> Result<()> {
        let total = layers.len().max(1);
        for (i, layer) in layers.iter().enumerate() {
            work.check_cancel()?;
            self.create_layer_dir(&layer.path)?;
            let parent_chain = self.disk_chain(&layer.parent)?;
            // A qcow2 layer goes over any parent (a running VM's overlay above VHDX too).
            match layer.format {
                Format::Qcow2 => cosnap_disk::create_qcow2_overlay_of(&parent_chain, &layer.path)?,
                _ => {
                    cosnap_disk::create_child_of(&parent_chain, &layer.path)?;
                }
            }
            crate::modes::make_private_file(&layer.path)?;
            std::fs::File::open(&layer.path)?.sync_all()?;
            crash_point(crash_label);
            work.progress(((i + 1) * progress_share / total) as u16);
        }
        Ok(())
    }

    /// Undoes an operation that created `layers` but never committed: the files go, then
    /// its journal entry. Best effort: recovery at the next open finishes what fails here.
    pub(crate) fn roll_back_new_layers(&self, layers: &[NewLayer], journal_id: i64) {
        for layer in layers {
            let _ = journal::delete_file(&layer.path);
        }
        let _ = journal::remove(&self.db(), journal_id);
    }

    /// Creates `<data-dir>/disks/<vm>/`, the directory of a new layer `child`, owner-only.
    fn create_layer_dir(&self, child: &Path) -> Result<()> {
        crate::modes::create_private_dir(&self.inner.data_dir.join("disks"))?;
        crate::modes::create_private_dir(child.parent().unwrap_or(Path::new(".")))?;
        Ok(())
    }
}

/// Inside the commit's transaction: records each new layer (cosnap's own) and makes it its
/// disk's active layer.
pub(crate) fn activate_new_layers(tx: &Connection, layers: &[NewLayer]) -> Result<()> {
    for layer in layers {
        tx.execute(
            "INSERT INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
            params![p2s(&layer.path), layer.vm_id, layer.disk_index, p2s(&layer.parent), layer.format.name()],
        )?;
        tx.execute(
            "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
            params![layer.vm_id, layer.disk_index, p2s(&layer.path)],
        )?;
    }
    Ok(())
}

/// What `Host::record_snapshot` commits: the new snapshot of `collection`, the member
/// VMs as they are now, and the children that become their active layers.
pub(crate) struct NewSnapshot<'a> {
    pub(crate) id: &'a str,
    pub(crate) collection: &'a Collection,
    pub(crate) snapshot_type: u16,
    pub(crate) vms: &'a [Vm],
    pub(crate) children: &'a [NewLayer],
    pub(crate) journal_id: i64,
    /// For running members: how long the group stood paused, in µs.
    pub(crate) pause_window_us: Option<u64>,
}
