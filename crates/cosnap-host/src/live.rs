//! Collection-snapshot steps for member VMs whose QEMU runs, through the `Hypervisor` trait:
//! which members run, their new qcow2 layers, and the group freeze that switches them all at
//! one point in time.
//!
//! A running VM's new active layer is always a qcow2 overlay (QEMU cannot run on `.avhdx`),
//! created by cosnap beforehand with the recorded parent path and format, so the repository
//! stays the source of formats and parents. Whenever the collection's changes are tracked (a
//! recovery snapshot, or any snapshot of a collection holding a recovery snapshot or a tracked
//! reference point) the new layer gets a persistent dirty bitmap named after the snapshot in
//! the same QMP transaction: the change information the next differential export reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cosnap_disk::{ExtentState, Format, Image};
use cosnap_vmm::{
    DiskFreeze, FreezeReport, FreezeRequest, Hypervisor, VmHandle, VmState, VmmError,
};
use rusqlite::{Connection, TransactionBehavior, params};

use crate::Host;
use crate::error::{HostError, Result};
use crate::journal::Plan;
use crate::model::{Vm, VmDisk};
use crate::new_layers::NewLayer;
use crate::new_layers::NewSnapshot;
use crate::refpoint_bitmaps::change_tracking_wanted;
use crate::running::vmm_error;
use crate::util::{crash_point, new_guid};

pub use crate::refpoint_bitmaps::snapshot_bitmap;

/// One disk of a running member: its active layer and the overlay that will replace it.
#[derive(Debug, Clone)]
pub struct LiveDisk {
    /// The disk's slot in the repository.
    pub index: u32,
    /// Its position in the VM's launch order (the hypervisor's disk number).
    pub position: usize,
    pub active: PathBuf,
    pub overlay: PathBuf,
}

/// A running member VM and its disks' new layers.
#[derive(Debug, Clone)]
pub struct LiveMember {
    pub vm_id: String,
    pub handle: VmHandle,
    pub disks: Vec<LiveDisk>,
}

/// The format and file name extension of a running VM's new layer, whatever its parent is.
pub fn overlay_format() -> (&'static str, Format) {
    ("qcow2", Format::Qcow2)
}

/// Switches every running member onto its overlays at one point in time (pause all, one
/// transaction per VM, resume all; the hypervisor resumes them on every path).
///
/// On a failure after some VMs switched, returns the ids of those VMs with the error: their
/// disks now write to the overlays, which the caller must record as their active layers.
pub fn freeze(
    hv: &dyn Hypervisor,
    members: &[LiveMember],
    bitmap: Option<&str>,
) -> std::result::Result<FreezeReport, FreezeFailure> {
    let requests: Vec<FreezeRequest> = members
        .iter()
        .map(|m| FreezeRequest {
            vm: m.handle.clone(),
            disks: m
                .disks
                .iter()
                .map(|d| DiskFreeze {
                    disk: d.position,
                    overlay: d.overlay.clone(),
                    bitmap: bitmap.map(str::to_owned),
                })
                .collect(),
        })
        .collect();

    hv.group_freeze(&requests).map_err(|error| {
        let switched_names = match &error {
            VmmError::Freeze { switched, .. } => switched.clone(),
            _ => Vec::new(),
        };
        let switched = members
            .iter()
            .filter(|m| switched_names.contains(&m.handle.name))
            .map(|m| m.vm_id.clone())
            .collect();
        FreezeFailure {
            switched,
            error: vmm_error(error),
        }
    })
}

/// A group freeze that failed; `switched` members' disks did switch to their overlays.
#[derive(Debug)]
pub struct FreezeFailure {
    pub switched: Vec<String>,
    pub error: HostError,
}

pub use crate::journal::LiveSwitch;

impl Host {
    /// The handles of the VMs among `vms` whose QEMU runs (running or paused), by VM id.
    pub fn running_members(&self, vms: &[Vm]) -> Result<HashMap<String, VmHandle>> {
        let mut running = HashMap::new();
        for vm in vms {
            let Some(handle) = self.running_vm(&vm.id) else {
                continue;
            };
            if self.hypervisor().state(&handle).map_err(vmm_error)? != VmState::Off {
                running.insert(vm.id.clone(), handle);
            }
        }
        Ok(running)
    }

    /// Refuses `what` with invalid state while any of `vms` runs (its files are open in QEMU).
    pub fn refuse_while_running(&self, vms: &[Vm], what: &str) -> Result<()> {
        let running = self.running_members(vms)?;
        if let Some(vm) = vms.iter().find(|vm| running.contains_key(&vm.id)) {
            return Err(HostError::state(format!(
                "{what} is refused while member VM {} ({}) runs; stop it first",
                vm.name, vm.id
            )));
        }
        Ok(())
    }

    /// Group-freezes the running members onto their overlays. On a failure the VMs that
    /// did switch get their overlays recorded as active layers (no snapshot): repository and
    /// QEMU keep agreeing, and nothing a guest wrote is deleted.
    ///
    /// The error comes with the overlays so recorded: the caller must not delete them.
    pub(crate) fn freeze_running(
        &self,
        members: &[LiveMember],
        bitmap: Option<&str>,
    ) -> std::result::Result<Option<FreezeReport>, (HostError, Vec<PathBuf>)> {
        if members.is_empty() {
            return Ok(None);
        }
        match freeze(self.hypervisor(), members, bitmap) {
            Ok(report) => Ok(Some(report)),
            Err(failure) => {
                let switched: Vec<&LiveMember> = members
                    .iter()
                    .filter(|m| failure.switched.contains(&m.vm_id))
                    .collect();
                match self.record_switched_overlays(&switched) {
                    Ok(kept) => Err((failure.error, kept)),
                    Err(e) => Err((e, overlays_of(&switched))),
                }
            }
        }
    }

    /// After a freeze that switched every member, when the snapshot could not be recorded:
    /// the overlays become the active layers all the same. Returns them.
    pub(crate) fn keep_switched_overlays(&self, members: &[LiveMember]) -> Result<Vec<PathBuf>> {
        self.record_switched_overlays(&members.iter().collect::<Vec<_>>())
    }

    /// Makes each member's overlays its disks' active layers in the repository.
    fn record_switched_overlays(&self, members: &[&LiveMember]) -> Result<Vec<PathBuf>> {
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for member in members {
            for disk in &member.disks {
                record_active_overlay(&tx, &member.vm_id, disk.index, &disk.active, &disk.overlay)?;
            }
        }
        tx.commit()?;
        Ok(overlays_of(members))
    }

    /// Before the journal's roll-back: the overlays of interrupted live CreateSnapshots that
    /// became active layers are recorded and taken out of the files to delete.
    pub(crate) fn recover_live_creates(&self, conn: &Connection) -> Result<()> {
        let rows: Vec<(i64, String)> = {
            let mut stmt =
                conn.prepare("SELECT id, plan FROM journal WHERE op = 'create-snapshot'")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?
        };
        for (id, text) in rows {
            let Ok(Plan::Create { created, live }) = serde_json::from_str::<Plan>(&text) else {
                continue;
            };
            if live.is_empty() {
                continue;
            }
            let kept = self.recover_live_switches(conn, &live)?;
            let plan = Plan::Create {
                created: created.into_iter().filter(|f| !kept.contains(f)).collect(),
                live: vec![],
            };
            let text =
                serde_json::to_string(&plan).map_err(|e| HostError::Failed(e.to_string()))?;
            conn.execute(
                "UPDATE journal SET plan = ?2 WHERE id = ?1",
                params![id, text],
            )?;
        }
        Ok(())
    }

    /// Recovery of an interrupted live CreateSnapshot: every VM it froze is resumed, and each
    /// overlay that became a VM's active layer (QEMU says so, or the VM is off and the overlay
    /// holds data) is recorded as such. Returns the overlays recorded: they must not be
    /// deleted by the roll-back.
    pub(crate) fn recover_live_switches(
        &self,
        conn: &Connection,
        switches: &[LiveSwitch],
    ) -> Result<Vec<PathBuf>> {
        let mut kept = Vec::new();
        for switch in switches {
            let active = self.active_overlays(switch)?;
            for (index, parent, overlay) in &switch.disks {
                if active.contains(overlay) {
                    record_active_overlay(conn, &switch.vm_id, *index, parent, overlay)?;
                    kept.push(overlay.clone());
                }
            }
        }
        Ok(kept)
    }

    /// Which of the switch's overlays are the VM's active layers now; resumes a VM left paused.
    fn active_overlays(&self, switch: &LiveSwitch) -> Result<Vec<PathBuf>> {
        let hv = self.hypervisor();
        let Some(handle) = self.running_vm(&switch.vm_id) else {
            return Ok(overlays_with_data(switch));
        };

        if hv.state(&handle).map_err(vmm_error)? == VmState::Paused {
            tracing::warn!(vm = %switch.vm_name, "resuming a VM an interrupted snapshot left paused");
            hv.resume(&handle).map_err(vmm_error)?;
        }
        let nodes = hv.block_nodes(&handle).map_err(vmm_error)?;
        Ok(switch
            .disks
            .iter()
            .filter(|(_, _, overlay)| {
                nodes
                    .iter()
                    .any(|n| Path::new(&n.file) == overlay.as_path() && n.backing_file.is_some())
            })
            .map(|(_, _, overlay)| overlay.clone())
            .collect())
    }
}

/// With the VM gone, an overlay that holds data was switched to (and written); an empty one
/// loses nothing when deleted.
fn overlays_with_data(switch: &LiveSwitch) -> Vec<PathBuf> {
    switch
        .disks
        .iter()
        .filter(|(_, _, overlay)| {
            cosnap_disk::qcow2::open_standalone(overlay)
                .and_then(|image| {
                    let size = image.virtual_size();
                    image.layer_map(0, size)
                })
                .map(|map| map.iter().any(|e| e.state != ExtentState::Inherited))
                .unwrap_or(false)
        })
        .map(|(_, _, overlay)| overlay.clone())
        .collect()
}

/// Records `overlay` (qcow2, owned) above `parent` as the active layer of disk `index`.
fn record_active_overlay(
    conn: &Connection,
    vm_id: &str,
    index: u32,
    parent: &Path,
    overlay: &Path,
) -> Result<()> {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    conn.execute(
        "INSERT OR IGNORE INTO layers (path, vm_id, disk_idx, parent, format, owned) VALUES (?1, ?2, ?3, ?4, 'qcow2', 1)",
        params![text(overlay), vm_id, index, text(parent)],
    )?;
    conn.execute(
        "UPDATE vm_disks SET active_layer = ?3 WHERE vm_id = ?1 AND idx = ?2",
        params![vm_id, index, text(overlay)],
    )?;
    Ok(())
}

fn overlays_of(members: &[&LiveMember]) -> Vec<PathBuf> {
    members
        .iter()
        .flat_map(|m| m.disks.iter().map(|d| d.overlay.clone()))
        .collect()
}

/// The new layer of one disk: for a running VM a qcow2 overlay whatever the parent's format,
/// else the usual differencing child.
pub(crate) fn new_layer(data_dir: &Path, vm: &Vm, disk: &VmDisk, running: bool) -> NewLayer {
    if !running {
        return NewLayer::above(data_dir, &vm.id, disk.index, &disk.path, disk.format);
    }
    let (ext, format) = overlay_format();
    NewLayer {
        vm_id: vm.id.clone(),
        disk_index: disk.index,
        parent: disk.path.clone(),
        path: crate::repo::vm_disk_dir(data_dir, &vm.id)
            .join(format!("{}.{ext}", new_guid().to_ascii_lowercase())),
        format,
    }
}

/// The running members among `vms` with their disks' new layers.
pub(crate) fn members(
    vms: &[Vm],
    running: &HashMap<String, VmHandle>,
    children: &[NewLayer],
) -> Vec<LiveMember> {
    vms.iter()
        .filter_map(|vm| {
            let handle = running.get(&vm.id)?;
            let disks = vm
                .disks
                .iter()
                .enumerate()
                .filter_map(|(position, disk)| {
                    let child = children
                        .iter()
                        .find(|c| c.vm_id == vm.id && c.disk_index == disk.index)?;
                    Some(LiveDisk {
                        index: disk.index,
                        position,
                        active: child.parent.clone(),
                        overlay: child.path.clone(),
                    })
                })
                .collect();
            Some(LiveMember {
                vm_id: vm.id.clone(),
                handle: handle.clone(),
                disks,
            })
        })
        .collect()
}

/// What the journal keeps of the running members, for recovery.
pub(crate) fn switches(members: &[LiveMember]) -> Vec<LiveSwitch> {
    members
        .iter()
        .map(|m| LiveSwitch {
            vm_id: m.vm_id.clone(),
            vm_name: m.handle.name.clone(),
            disks: m
                .disks
                .iter()
                .map(|d| (d.index, d.active.clone(), d.overlay.clone()))
                .collect(),
        })
        .collect()
}

impl Host {
    /// CreateSnapshot's commit for a group with running members: the group freeze (with a
    /// persistent bitmap on each new layer when changes are tracked), then the one
    /// transaction that records the snapshot with its pause window. On an error comes the
    /// list of overlays running VMs write to by now (recorded as their active layers): the
    /// caller deletes the other new layers only.
    pub(crate) fn freeze_and_record(
        &self,
        mut snapshot: NewSnapshot,
        members: &[LiveMember],
    ) -> std::result::Result<(), (HostError, Vec<PathBuf>)> {
        let tracked = {
            let conn = self.db();
            change_tracking_wanted(&conn, &snapshot.collection.id, snapshot.snapshot_type)
        }
        .map_err(|e| (e, vec![]))?;
        let bitmap = tracked.then(|| snapshot_bitmap(snapshot.id));
        crash_point("create.before-freeze");
        let report = self.freeze_running(members, bitmap.as_deref())?;
        crash_point("create.frozen");

        snapshot.pause_window_us = report.as_ref().map(|r| r.pause_window_us);
        match self.record_snapshot(&snapshot) {
            Ok(()) => Ok(()),
            Err(e) if report.is_none() => Err((e, vec![])),
            Err(e) => {
                let all: Vec<&LiveMember> = members.iter().collect();
                let kept = self
                    .keep_switched_overlays(members)
                    .unwrap_or_else(|_| overlays_of(&all));
                Err((e, kept))
            }
        }
    }
}

impl Host {
    /// The VMs a snapshot holds that still exist.
    pub fn snapshot_members(&self, snapshot: &crate::model::Snapshot) -> Result<Vec<Vm>> {
        Ok(snapshot
            .vms
            .iter()
            .filter_map(|v| self.vm(&v.vm_id).ok())
            .collect())
    }
}
