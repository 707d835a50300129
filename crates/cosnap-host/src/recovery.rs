//! Recovery and verification: at open, the journal replayed (rolled back or forward), jobs of
//! dead processes marked interrupted, stale in-use marks cleared, expired jobs purged and
//! dead exports finished or removed; on request, the repository checked against the files.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::host::Host;
use crate::journal;
use crate::repo;
use crate::rows::{ids, p2s};
use crate::util::now_ms;

impl Host {
    /// Everything [`Host::open`] recovers before it hands the host out: the repository's
    /// own state, then the exports a dead process left behind.
    pub(crate) fn recover_at_open(&self) -> Result<()> {
        self.recover()?;
        crate::export::recover_interrupted(self);
        Ok(())
    }

    /// The repository's own recovery, under the lock: the journal rolled back or forward,
    /// then the marks of processes that are gone, then the expired jobs.
    fn recover(&self) -> Result<()> {
        let _lock = self.lock()?;
        let conn = self.db();
        self.recover_live_creates(&conn)?;
        self.recover_live_releases(&conn)?;
        journal::recover(&conn)?;

        mark_orphan_jobs_interrupted(&conn)?;
        clear_stale_in_use_marks(&conn)?;

        crate::jobs::purge_expired(&conn)?;
        Ok(())
    }

    /// Checks that the repository agrees with the files on disk and returns every
    /// disagreement found (empty = consistent): each known layer file exists; each file
    /// under `<data-dir>/disks/` is a known layer (no orphans); each layer's recorded parent
    /// is the parent its file names; no journal row is left over.
    pub fn verify(&self) -> Result<Vec<String>> {
        let conn = self.db();
        let mut problems = Vec::new();

        let layers = recorded_layers(&conn)?;
        check_layer_files(&conn, &layers, &mut problems);

        let known: HashSet<String> = layers.iter().map(|l| l.path.clone()).collect();
        find_orphan_files(&self.inner.data_dir.join("disks"), &known, &mut problems);
        check_references_known(&conn, &known, &mut problems)?;

        let pending: i64 = conn.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
        if pending > 0 {
            problems.push(format!("{pending} journal row(s) left"));
        }
        Ok(problems)
    }
}

/// A running job's row whose owner process is gone.
struct OrphanJob {
    id: String,
    owner_pid: u32,
    owner_start: u64,
}

/// Jobs whose owner process is gone end as Exception "interrupted": recovery has rolled
/// their effects back or completed them. An export job whose package is recorded ends
/// Completed instead.
fn mark_orphan_jobs_interrupted(conn: &Connection) -> Result<()> {
    let now = now_ms();
    let orphans: Vec<OrphanJob> = {
        let mut stmt =
            conn.prepare("SELECT id, owner_pid, owner_start FROM jobs WHERE state IN (2,3,4)")?;
        stmt.query_map([], |r| {
            Ok(OrphanJob {
                id: r.get(0)?,
                owner_pid: r.get(1)?,
                owner_start: r.get::<_, i64>(2)? as u64,
            })
        })?
        .collect::<Result<_, _>>()?
    };
    for job in orphans {
        if repo::owner_alive(job.owner_pid, job.owner_start) {
            continue;
        }

        if export_recorded(conn, &job.id)? {
            crate::jobs::mark_job_completed(conn, &job.id)?;
        } else {
            conn.execute(
                "UPDATE jobs SET state = 10, error_code = 2, error_description = 'interrupted',
                 error_summary = 'interrupted: the process running the job ended; its effects were rolled back or completed',
                 last_change_ms = ?2, finished_ms = ?2 WHERE id = ?1",
                params![job.id, now],
            )?;
        }
    }
    Ok(())
}

/// Whether an export job's package is recorded: the process died after recording it
/// (and after removing its in-flight record) but before the job could read Completed.
fn export_recorded(conn: &Connection, job_id: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM exports WHERE job_id = ?1)",
        [job_id],
        |r| r.get(0),
    )?)
}

/// An in-use mark: which export job holds which object, and that job's process.
struct InUseMark {
    object_id: String,
    job_id: String,
    owner_pid: u32,
    owner_start: i64,
}

/// In-use marks whose owner process is gone are removed.
fn clear_stale_in_use_marks(conn: &Connection) -> Result<()> {
    let marks: Vec<InUseMark> = {
        let mut stmt =
            conn.prepare("SELECT object_id, job_id, owner_pid, owner_start FROM in_use")?;
        stmt.query_map([], |r| {
            Ok(InUseMark {
                object_id: r.get(0)?,
                job_id: r.get(1)?,
                owner_pid: r.get(2)?,
                owner_start: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?
    };
    for mark in marks {
        if !repo::owner_alive(mark.owner_pid, mark.owner_start as u64) {
            conn.execute(
                "DELETE FROM in_use WHERE object_id = ?1 AND job_id = ?2",
                params![mark.object_id, mark.job_id],
            )?;
        }
    }
    Ok(())
}

/// A layer row as `verify` reads it.
struct RecordedLayer {
    path: String,
    parent: Option<String>,
}

fn recorded_layers(conn: &Connection) -> Result<Vec<RecordedLayer>> {
    let mut stmt = conn.prepare("SELECT path, parent FROM layers")?;
    Ok(stmt
        .query_map([], |r| {
            Ok(RecordedLayer {
                path: r.get(0)?,
                parent: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Each recorded layer exists, and a layer with a parent opens as its recorded chain
/// (which checks that each file names its recorded parent).
fn check_layer_files(conn: &Connection, layers: &[RecordedLayer], problems: &mut Vec<String>) {
    for layer in layers {
        let path = &layer.path;
        let p = Path::new(path);
        if !p.exists() {
            problems.push(format!("layer {path} is recorded but missing"));
            continue;
        }
        if layer.parent.is_some() {
            let opened = crate::chains::recorded_chain(conn, p)
                .and_then(|chain| Ok(cosnap_disk::open_chain(&chain, false)?));
            if let Err(e) = opened {
                problems.push(format!(
                    "layer {path}: chain does not match the record: {e}"
                ));
            }
        }
    }
}

/// Every file under `<data-dir>/disks/<vm>/` is a known layer.
fn find_orphan_files(disks: &Path, known: &HashSet<String>, problems: &mut Vec<String>) {
    let Ok(vm_dirs) = std::fs::read_dir(disks) else {
        return;
    };
    for d in vm_dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            for f in files.flatten() {
                let p = p2s(&f.path());
                if !known.contains(&p) {
                    problems.push(format!("orphan layer file {p}"));
                }
            }
        }
    }
}

/// Every layer an active disk, a snapshot or a reference point names is a known layer.
fn check_references_known(
    conn: &Connection,
    known: &HashSet<String>,
    problems: &mut Vec<String>,
) -> Result<()> {
    for (what, sql) in [
        ("active layer", "SELECT active_layer FROM vm_disks"),
        ("snapshot layer", "SELECT layer FROM snapshot_disks"),
        ("reference point layer", "SELECT layer FROM refpoint_disks"),
    ] {
        for p in ids(conn, sql)? {
            if !known.contains(&p) {
                problems.push(format!("{what} {p} is not a known layer"));
            }
        }
    }
    Ok(())
}
