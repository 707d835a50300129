//! The intent journal: how operations that touch disk files survive SIGKILL at any instant.
//!
//! Rules (the lead's design):
//! * Before an operation creates, merges, pulls or deletes a layer file, it records what it
//!   will do in a `journal` row, in its own transaction (or in the same transaction as the
//!   state change, when every file step comes after that change).
//! * `phase = "pending"`: the repository's state change has not committed. Recovery rolls
//!   back: it deletes the files the operation created ([`Plan::Create`], [`Plan::Apply`]).
//! * `phase = "committed"`: the state change committed in the same transaction that set this
//!   phase. Recovery rolls forward: it redoes the remaining steps, all idempotent
//!   (`cosnap_disk::commit` is re-runnable; a pull is only repeated while the child still
//!   names the layer being removed as its parent; deletes ignore missing files).
//! * The row is deleted when the last step is done.
//!
//! Recovery runs in [`crate::Host::open`] while holding the repository lock, so it never races a
//! live operation (every live operation holds that lock while its journal row exists).

use std::path::{Path, PathBuf};

use cosnap_disk::{Format, LayerSpec};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::util::crash_point;

/// What an operation will do to files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Plan {
    /// CreateSnapshot: new differencing children (deleted on roll-back), except overlays
    /// that recovery finds active in a running member's QEMU (`live`): those are recorded as
    /// active layers first (`Host::recover_live_switches`).
    Create {
        created: Vec<PathBuf>,
        #[serde(default)]
        live: Vec<LiveSwitch>,
    },
    /// ApplySnapshot: new children (roll-back deletes them); once committed, the old
    /// active layers to delete.
    Apply {
        created: Vec<PathBuf>,
        delete_after: Vec<PathBuf>,
    },
    /// Releasing frozen layers (DestroySnapshot, DestroyReferencePoint, DestroySystem):
    /// always written as committed, together with the state change.
    Release { steps: Vec<Step> },
}

/// One roll-forward step of [`Plan::Release`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Step {
    /// Merge `child` into its parent `into`, point `rebase` (child's own children) at
    /// `into`, delete `child`.
    Merge {
        child: PathBuf,
        into: PathBuf,
        rebase: Vec<PathBuf>,
        /// `child`'s recorded chain (`child`, `into`, `into`'s parents) and the recorded
        /// formats of `rebase`, as the repository held them before the release. Empty in
        /// rows written before formats were journaled: then the files are probed.
        #[serde(default)]
        chain: Vec<LayerSpec>,
        #[serde(default)]
        rebase_formats: Vec<Format>,
    },
    /// Copy `parent`'s data into each of `children` (making `parent`'s parent theirs),
    /// then delete `parent`.
    Pull {
        parent: PathBuf,
        children: Vec<PathBuf>,
        /// Each child's recorded chain (child, `parent`, `parent`'s parents); empty in rows
        /// written before formats were journaled (then the files are probed).
        #[serde(default)]
        chains: Vec<Vec<LayerSpec>>,
    },
    /// Delete a layer nothing references any more.
    Delete { path: PathBuf },
}

pub fn insert(
    conn: &Connection,
    op: &str,
    phase: &str,
    plan: &Plan,
    job_id: Option<&str>,
) -> Result<i64> {
    let text = serde_json::to_string(plan).map_err(|e| crate::HostError::Failed(e.to_string()))?;
    conn.execute(
        "INSERT INTO journal (op, phase, plan, job_id) VALUES (?1, ?2, ?3, ?4)",
        params![op, phase, text, job_id],
    )?;
    Ok(conn.last_insert_rowid())
}

pub fn set_phase(conn: &Connection, id: i64, phase: &str, plan: &Plan) -> Result<()> {
    let text = serde_json::to_string(plan).map_err(|e| crate::HostError::Failed(e.to_string()))?;
    conn.execute(
        "UPDATE journal SET phase = ?2, plan = ?3 WHERE id = ?1",
        params![id, phase, text],
    )?;
    Ok(())
}

pub fn remove(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("DELETE FROM journal WHERE id = ?1", params![id])?;
    Ok(())
}

/// Deletes a file if it exists (idempotent), then syncs its directory.
pub fn delete_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Best-effort fsync of a file's directory, so creations and deletions are durable.
pub fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The direct parent of `layer` as its file records it, or `None` for a standalone image.
fn file_parent(layer: &Path) -> Result<Option<PathBuf>> {
    let chain = cosnap_disk::chain(layer)?;
    Ok(chain.get(1).cloned())
}

/// Runs the roll-forward steps of a committed release. Idempotent: safe to run again
/// after a crash at any point.
pub fn run_steps(steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::Merge {
                child,
                into,
                rebase,
                chain,
                rebase_formats,
            } => {
                if child.exists() {
                    merge(child, into, rebase, chain, rebase_formats)?;
                    delete_file(child)?;
                    crash_point("release.deleted-child");
                }
            }
            Step::Pull {
                parent,
                children,
                chains,
            } => {
                if parent.exists() {
                    for (i, child) in children.iter().enumerate() {
                        if child.exists() {
                            pull(child, parent, chains.get(i))?;
                        }
                    }
                    delete_file(parent)?;
                    crash_point("release.deleted-parent");
                }
            }
            Step::Delete { path } => {
                delete_file(path)?;
                crash_point("release.deleted");
            }
        }
    }
    Ok(())
}

/// Merges `child` into `into` and points `rebase` at `into`, with the recorded formats
/// when the journal holds them.
fn merge(
    child: &Path,
    into: &Path,
    rebase: &[PathBuf],
    chain: &[LayerSpec],
    rebase_formats: &[Format],
) -> Result<()> {
    let recorded = !chain.is_empty() && rebase_formats.len() == rebase.len();
    if recorded {
        if let Some(target) = chain.get(1) {
            forget_change_tracking(target)?;
        }
        cosnap_disk::commit_chain(chain)?;
    } else {
        cosnap_disk::commit(child)?;
    }
    crash_point("release.merged");
    for (i, grandchild) in rebase.iter().enumerate() {
        if !grandchild.exists() {
            continue;
        }
        if recorded {
            cosnap_disk::rebase_as(
                &LayerSpec::new(grandchild, rebase_formats[i]),
                Some(&chain[1]),
            )?;
        } else {
            cosnap_disk::rebase(grandchild, Some(into))?;
        }
        crash_point("release.rebased");
    }
    Ok(())
}

/// Removes the persistent bitmaps of a layer cosnap is about to write offline (a merge
/// target, a pull's child, a stopped guest's active layer): cosnap does not update bitmaps,
/// so they would miss these writes. A reference point tracked through the layer then
/// finds its bitmap missing, and its next differential falls back to full with notice.
pub(crate) fn forget_change_tracking(layer: &LayerSpec) -> Result<()> {
    let removed = cosnap_disk::forget_bitmaps_as(layer)?;
    if removed > 0 {
        tracing::info!(
            layer = %layer.path.display(),
            removed,
            "persistent bitmaps removed before an offline write; change tracking through this layer is lost"
        );
    }
    Ok(())
}

/// Pulls `parent` into `child` unless a run before a crash already did.
fn pull(child: &Path, parent: &Path, chain: Option<&Vec<LayerSpec>>) -> Result<()> {
    let (named, spec) = match chain {
        Some(chain) => (cosnap_disk::parent_path_as(&chain[0])?, Some(chain)),
        None => (file_parent(child)?, None),
    };
    if named.is_some_and(|p| same_file(&p, parent)) {
        match spec {
            Some(chain) => {
                forget_change_tracking(&chain[0])?;
                cosnap_disk::pull_chain(chain)?
            }
            None => cosnap_disk::pull(child)?,
        }
        crash_point("release.pulled");
    } else {
        // Pulled before a crash that may have hit the pull's final flush: its last
        // update can still sit in a VHDX log.
        match spec {
            Some(chain) => cosnap_disk::settle_as(&chain[0])?,
            None => cosnap_disk::settle(child)?,
        };
    }
    Ok(())
}

/// Finishes or rolls back every journal row. Called with the repository lock held.
pub fn recover(conn: &Connection) -> Result<usize> {
    let rows: Vec<(i64, String, String)> = {
        let mut stmt = conn.prepare("SELECT id, phase, plan FROM journal ORDER BY id")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?
    };
    let count = rows.len();
    for (id, phase, text) in rows {
        let plan: Plan = serde_json::from_str(&text)
            .map_err(|e| crate::HostError::Failed(format!("journal row {id} unreadable: {e}")))?;
        match (&plan, phase.as_str()) {
            (Plan::Create { created, .. }, _) | (Plan::Apply { created, .. }, "pending") => {
                for f in created {
                    delete_file(f)?;
                }
            }
            (Plan::Apply { delete_after, .. }, _) => {
                for f in delete_after {
                    delete_file(f)?;
                }
            }
            (Plan::Release { steps }, _) => run_steps(steps)?,
        }
        remove(conn, id)?;
        tracing::info!(journal = id, phase, "recovered interrupted operation");
    }
    Ok(count)
}

/// One running VM of an interrupted CreateSnapshot, as its journal row keeps it: recovery asks
/// the hypervisor which overlays became active before it deletes any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSwitch {
    pub vm_id: String,
    pub vm_name: String,
    /// (disk slot, old active layer, overlay).
    pub disks: Vec<(u32, PathBuf, PathBuf)>,
}
