//! DestroySnapshot's merges on running VMs: a layer released into its parent while QEMU has
//! the chain open is merged by QEMU (`block-commit`; the active layer pivots onto its parent),
//! never by cosnap's offline merge, which would rewrite files QEMU holds open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cosnap_vmm::VmHandle;

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::journal::{self, Plan, Step};
use crate::model::Vm;
use crate::running::vmm_error;
use crate::util::crash_point;
use crate::work::Work;

/// The journal operation of a release with running members (recovery looks for it).
pub(crate) const LIVE_RELEASE_OP: &str = "destroy-snapshot-live";

/// Every layer file of a running VM's chains, with the VM and the disk's launch position.
pub(crate) struct RunningLayers {
    by_path: HashMap<PathBuf, (VmHandle, usize)>,
}

impl Host {
    /// The layers of the running VMs among `vms`, as the repository records their chains.
    pub(crate) fn running_layers(&self, vms: &[Vm]) -> Result<RunningLayers> {
        let conn = self.db();
        self.running_layers_with(&conn, vms)
    }

    fn running_layers_with(
        &self,
        conn: &rusqlite::Connection,
        vms: &[Vm],
    ) -> Result<RunningLayers> {
        let running = self.running_members(vms)?;
        let mut by_path = HashMap::new();
        for vm in vms {
            let Some(handle) = running.get(&vm.id) else {
                continue;
            };
            for (position, disk) in vm.disks.iter().enumerate() {
                for layer in crate::chains::recorded_chain(conn, &disk.path)? {
                    by_path.insert(layer.path, (handle.clone(), position));
                }
            }
        }
        Ok(RunningLayers { by_path })
    }

    /// Runs a committed release whose steps may touch running VMs: their merges go through
    /// the hypervisor, the rest as offline steps. No cancelling (past the commit point).
    pub(crate) fn run_live_release(
        &self,
        jid: i64,
        plan: &Plan,
        running: &RunningLayers,
        work: &dyn Work,
    ) -> Result<()> {
        work.set_cancellable(false);
        crash_point("destroy-live.committed");
        if let Plan::Release { steps } = plan {
            for step in steps {
                self.run_live_step(step, running)?;
                crash_point("destroy-live.step");
            }
        }
        journal::remove(&self.db(), jid)?;
        Ok(())
    }

    /// One release step: a merge inside a running chain by QEMU, then the merged-away file
    /// goes; anything else as offline.
    fn run_live_step(&self, step: &Step, running: &RunningLayers) -> Result<()> {
        let Step::Merge { child, into, .. } = step else {
            return journal::run_steps(std::slice::from_ref(step));
        };
        // Recovery sees the repository as committed: `child` is no longer recorded in any
        // chain, but `into` is, and a merge's `into` lies in a running chain exactly when
        // `child` does (it is `child`'s only parent, with no other child).
        let Some((handle, position)) = running
            .by_path
            .get(child)
            .or_else(|| running.by_path.get(into))
        else {
            return journal::run_steps(std::slice::from_ref(step));
        };
        // Idempotent (recovery reruns it): a child QEMU no longer has was merged already; a
        // commit job a dead cosnap left is taken up where it stands.
        let hv = self.hypervisor();
        let nodes = hv.block_nodes(handle).map_err(vmm_error)?;
        if nodes.iter().any(|n| Path::new(&n.file) == child.as_path()) {
            // QEMU rewrites the backing link of the image above `child` itself; the file it
            // writes to must not be touched by cosnap. The child goes while the guest still
            // stands paused after a pivot: should cosnap and QEMU both die before, the
            // offline re-merge of the child finds nothing newer in `into` to overwrite.
            hv.commit(handle, *position, child, into, &mut || {
                crash_point("destroy-live.pivoted");
                delete_child(child)
            })
            .map_err(vmm_error)?;
        }
        journal::delete_file(child)?;
        Ok(())
    }
}

impl Host {
    /// Recovery of releases with running members, before the journal's offline roll-forward:
    /// their steps rerun as [`Host::run_live_release`] does (merges still in a running chain
    /// by QEMU), then the row goes.
    pub(crate) fn recover_live_releases(&self, conn: &rusqlite::Connection) -> Result<()> {
        let rows: Vec<(i64, String)> = {
            let mut stmt = conn.prepare("SELECT id, plan FROM journal WHERE op = ?1")?;
            stmt.query_map([LIVE_RELEASE_OP], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(());
        }
        let vms: Vec<Vm> = crate::rows::ids(conn, "SELECT id FROM vms")?
            .iter()
            .map(|id| crate::rows::load_vm(conn, id))
            .collect::<Result<_>>()?;
        let running = self.running_layers_with(conn, &vms)?;
        for (id, text) in rows {
            let plan: Plan = serde_json::from_str(&text)
                .map_err(|e| HostError::Failed(format!("journal row {id} unreadable: {e}")))?;
            if let Plan::Release { steps } = &plan {
                for step in steps {
                    self.run_live_step(step, &running)?;
                }
                self.resume_paused(steps, &running)?;
            }
            journal::remove(conn, id)?;
        }
        Ok(())
    }

    /// Resumes the running VMs whose chains the release merges that it left paused: a pivot
    /// interrupted by cosnap's death is the only thing that pauses one while cosnap holds the
    /// repository lock.
    fn resume_paused(&self, steps: &[Step], running: &RunningLayers) -> Result<()> {
        let hv = self.hypervisor();
        let mut seen = std::collections::HashSet::new();
        for step in steps {
            let Step::Merge { child, into, .. } = step else {
                continue;
            };
            let Some((handle, _)) = running
                .by_path
                .get(child)
                .or_else(|| running.by_path.get(into))
            else {
                continue;
            };
            if !seen.insert(handle.name.clone()) {
                continue;
            }
            if hv.state(handle).map_err(vmm_error)? == cosnap_vmm::VmState::Paused {
                tracing::warn!(vm = %handle.name, "resuming a VM an interrupted live merge left paused");
                hv.resume(handle).map_err(vmm_error)?;
            }
        }
        Ok(())
    }
}

/// Deletes a merged-away layer file durably (the directory entry too).
fn delete_child(child: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(child) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    journal::sync_parent(child);
    Ok(())
}

impl RunningLayers {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Refuses a release QEMU cannot do live: copying a shared parent into several children
    /// (a pull) inside a running chain.
    pub(crate) fn check_release(&self, plan: &Plan) -> Result<()> {
        let Plan::Release { steps } = plan else {
            return Ok(());
        };
        for step in steps {
            if let Step::Pull { parent, .. } = step
                && self.by_path.contains_key(parent)
            {
                return Err(HostError::state(format!(
                    "layer {} has several children and belongs to a running VM; stop the VM to \
                     destroy this snapshot",
                    parent.display()
                )));
            }
        }
        Ok(())
    }
}
