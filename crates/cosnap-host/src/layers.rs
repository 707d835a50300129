//! Disk layers as shared files: where a new layer goes, the in-use marks of running exports
//! and the guards that refuse to delete what they read, the release (merge, pull, delete)
//! of layers no object references any more, and the change base of a differential export.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cosnap_disk::{Format, LayerSpec};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::journal::{self, Plan, Step};
use crate::repo;
use crate::rows::p2s;
use crate::util::{crash_point, norm_id};
use crate::work::Work;

impl Host {
    /// Objects some live export is reading (in-use marks whose owner still runs).
    pub(crate) fn in_use_ids(conn: &Connection) -> Result<HashSet<String>> {
        let mut stmt = conn.prepare("SELECT object_id, owner_pid, owner_start FROM in_use")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|(_, p, s)| repo::owner_alive(*p, *s as u64))
            .map(|(o, _, _)| o)
            .collect())
    }

    pub(crate) fn check_not_in_use(conn: &Connection, id: &str, what: &str) -> Result<()> {
        if Self::in_use_ids(conn)?.contains(id) {
            return Err(HostError::InUse(format!(
                "{what} {id} is being exported; try again when the export job ends"
            )));
        }
        Ok(())
    }

    /// Every layer file the in-use objects' chains read (frozen layers and their ancestors).
    pub(crate) fn in_use_chain_files(conn: &Connection) -> Result<HashSet<String>> {
        let ids = Self::in_use_ids(conn)?;
        let mut files = HashSet::new();
        for id in ids {
            let mut stmt = conn.prepare(
                "SELECT layer FROM snapshot_disks WHERE snapshot_id = ?1 UNION SELECT layer FROM refpoint_disks WHERE refpoint_id = ?1",
            )?;
            let tops = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for top in tops {
                let mut cur = Some(top);
                while let Some(p) = cur {
                    if !files.insert(p.clone()) {
                        break;
                    }
                    cur = conn
                        .query_row("SELECT parent FROM layers WHERE path = ?1", [&p], |r| {
                            r.get(0)
                        })
                        .optional()?
                        .flatten();
                }
            }
        }
        Ok(files)
    }

    /// After the commit of a destroy: no more cancelling (a half-merged layer cannot be
    /// un-merged), then the journaled release steps, then the journal entry goes.
    pub(crate) fn run_release(
        &self,
        jid: i64,
        plan: &Plan,
        work: &dyn Work,
        crash_label: &str,
    ) -> Result<()> {
        work.set_cancellable(false);
        work.progress(10);
        crash_point(crash_label);
        if let Plan::Release { steps } = plan {
            journal::run_steps(steps)?;
        }
        journal::remove(&self.db(), jid)?;
        Ok(())
    }

    /// The base layer a differential export diffs against: `base` if it is `top` itself or
    /// one of its ancestors in the repository's chains, else [`HostError::ChangeInfoGone`]
    /// (the blocks changed since `base` can no longer be told exactly, e.g. after applying
    /// an older snapshot the current branch does not descend from `base`).
    pub fn change_base(&self, top: &Path, base: &Path) -> Result<PathBuf> {
        let conn = self.db();
        let base_s = p2s(base);
        let mut cur = Some(p2s(top));
        let mut guard = 0;
        while let Some(p) = cur {
            if p == base_s {
                return Ok(PathBuf::from(p));
            }
            guard += 1;
            if guard > 100_000 {
                break;
            }
            cur = conn
                .query_row("SELECT parent FROM layers WHERE path = ?1", [&p], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
        }
        Err(HostError::ChangeInfoGone(format!(
            "layer {} is no longer an ancestor of {}: the change information for this base is gone",
            base.display(),
            top.display()
        )))
    }

    /// Marks a snapshot or reference point collection "in use by an export" for job
    /// `job_id`: DestroySnapshot/ApplySnapshot/Convert/DestroyReferencePoint on it (and any
    /// operation that would delete a layer its chain reads) fail with in-use meanwhile. The
    /// mark goes away when the guard drops, or at the next start-up if this process dies.
    pub fn mark_in_use(&self, object_id: &str, job_id: &str) -> Result<InUseGuard> {
        let _lock = self.lock()?;
        let (pid, start) = repo::own_identity();
        let id = norm_id(object_id);
        let conn = self.db();
        let exists: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE id = ?1) + (SELECT COUNT(*) FROM refpoints WHERE id = ?1)",
            [&id],
            |r| r.get(0),
        )?;
        if exists == 0 {
            return Err(HostError::not_found(format!(
                "no snapshot or reference point collection {id}"
            )));
        }
        conn.execute(
            "INSERT OR REPLACE INTO in_use (object_id, job_id, owner_pid, owner_start) VALUES (?1, ?2, ?3, ?4)",
            params![id, job_id, pid, start as i64],
        )?;
        Ok(InUseGuard {
            host: self.clone(),
            object_id: id,
            job_id: job_id.to_string(),
        })
    }
}

/// Keeps an in-use mark alive; see [`Host::mark_in_use`].
pub struct InUseGuard {
    host: Host,
    object_id: String,
    job_id: String,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let _ = self.host.db().execute(
            "DELETE FROM in_use WHERE object_id = ?1 AND job_id = ?2",
            params![self.object_id, self.job_id],
        );
    }
}

/// Inside a destroy's transaction: the release plan of `layers` ([`release_layers`]),
/// journaled as committed under `kind`. Returns the journal id and the plan to run once
/// the transaction commits ([`Host::run_release`]).
pub(crate) fn journal_release(
    tx: &Connection,
    layers: &[PathBuf],
    kind: &str,
    work: &dyn Work,
) -> Result<(i64, Plan)> {
    let plan = Plan::Release {
        steps: release_layers(tx, layers)?,
    };
    let jid = journal::insert(tx, kind, "committed", &plan, work.job_id())?;
    Ok((jid, plan))
}

/// Releases frozen layers no longer referenced by the destroyed object, inside the
/// caller's transaction, and returns the file steps to run after commit.
///
/// For each layer F:
/// * still referenced (by a VM, a snapshot or a reference point) → nothing;
/// * exactly one child C → merge C into F (`commit`), repoint everything that named C (an
///   active layer, a snapshot's frozen layer, a reference point's boundary) to F, rebase
///   C's children onto F, delete C. The merge only goes *down into* F: boundaries below F
///   stay intact, and F now shows exactly what C showed, so every reference stays exact
///   (including a reference point whose boundary was C: the blocks above F are precisely
///   those written since it);
/// * several children → if cosnap owns F: `pull` F into each child and delete F; if F is
///   the user's base disk, it is kept (cosnap never deletes a file it did not create);
/// * no child → delete F if cosnap owns it.
///
/// Refused (in use) when a file to delete is read by a running export.
pub(crate) fn release_layers(tx: &Connection, layers: &[PathBuf]) -> Result<Vec<Step>> {
    let busy = Host::in_use_chain_files(tx)?;
    let mut steps = Vec::new();
    for f in layers {
        let fs = p2s(f);
        let refs: i64 = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshot_disks WHERE layer = ?1) + (SELECT COUNT(*) FROM refpoint_disks WHERE layer = ?1)
             + (SELECT COUNT(*) FROM vm_disks WHERE active_layer = ?1)",
            [&fs],
            |r| r.get(0),
        )?;
        if refs > 0 {
            continue;
        }
        let (parent, owned): (Option<String>, bool) = tx
            .query_row(
                "SELECT parent, owned FROM layers WHERE path = ?1",
                [&fs],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?
            .unwrap_or((None, false));
        let children: Vec<String> = {
            let mut stmt = tx.prepare("SELECT path FROM layers WHERE parent = ?1 ORDER BY path")?;
            stmt.query_map([&fs], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        match children.as_slice() {
            [c] => {
                if busy.contains(c) {
                    return Err(HostError::InUse(format!(
                        "layer {c} is read by a running export"
                    )));
                }
                let grandchildren: Vec<String> = {
                    let mut stmt =
                        tx.prepare("SELECT path FROM layers WHERE parent = ?1 ORDER BY path")?;
                    stmt.query_map([c], |r| r.get(0))?
                        .collect::<Result<_, _>>()?
                };
                let (chain, rebase_formats) = recorded_for_merge(tx, c, &grandchildren)?;
                tx.execute(
                    "UPDATE vm_disks SET active_layer = ?2 WHERE active_layer = ?1",
                    [c, &fs],
                )?;
                tx.execute(
                    "UPDATE snapshot_disks SET layer = ?2 WHERE layer = ?1",
                    [c, &fs],
                )?;
                tx.execute(
                    "UPDATE refpoint_disks SET layer = ?2 WHERE layer = ?1",
                    [c, &fs],
                )?;
                tx.execute("UPDATE layers SET parent = ?2 WHERE parent = ?1", [c, &fs])?;
                // F takes C's format only in name: C's data now lives in F, F keeps its format.
                tx.execute("DELETE FROM layers WHERE path = ?1", [c])?;
                steps.push(Step::Merge {
                    child: PathBuf::from(c),
                    into: f.clone(),
                    rebase: grandchildren.into_iter().map(PathBuf::from).collect(),
                    chain,
                    rebase_formats,
                });
            }
            [] => {
                if owned {
                    if busy.contains(&fs) {
                        return Err(HostError::InUse(format!(
                            "layer {fs} is read by a running export"
                        )));
                    }
                    tx.execute("DELETE FROM layers WHERE path = ?1", [&fs])?;
                    steps.push(Step::Delete { path: f.clone() });
                }
            }
            many => {
                if owned {
                    if busy.contains(&fs) {
                        return Err(HostError::InUse(format!(
                            "layer {fs} is read by a running export"
                        )));
                    }
                    let chains = recorded_chains(tx, many)?;
                    tx.execute(
                        "UPDATE layers SET parent = ?2 WHERE parent = ?1",
                        params![fs, parent],
                    )?;
                    tx.execute("DELETE FROM layers WHERE path = ?1", [&fs])?;
                    steps.push(Step::Pull {
                        parent: f.clone(),
                        children: many.iter().map(PathBuf::from).collect(),
                        chains,
                    });
                }
            }
        }
    }
    Ok(steps)
}

/// The chain of `child` and the formats of `grandchildren` as recorded before a release
/// rewrites them: what its merge step needs after a crash (see [`journal::Step::Merge`]).
fn recorded_for_merge(
    tx: &Connection,
    child: &str,
    grandchildren: &[String],
) -> Result<(Vec<LayerSpec>, Vec<Format>)> {
    let chain = crate::chains::recorded_chain(tx, Path::new(child))?;
    let formats = recorded_chains(tx, grandchildren)?
        .into_iter()
        .map(|c| c[0].format)
        .collect();
    Ok((chain, formats))
}

/// The recorded chains of `layers`.
fn recorded_chains(tx: &Connection, layers: &[String]) -> Result<Vec<Vec<LayerSpec>>> {
    layers
        .iter()
        .map(|l| crate::chains::recorded_chain(tx, Path::new(l)))
        .collect()
}
