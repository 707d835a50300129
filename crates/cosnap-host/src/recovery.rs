//! Recovery and verification: at open, the journal replayed (rolled back or forward), jobs of
//! dead processes marked interrupted, stale in-use marks cleared, expired jobs purged and
//! dead exports finished or removed; on request, the repository checked against the files.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::params;

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

    fn recover(&self) -> Result<()> {
        let _lock = self.lock()?;
        let conn = self.db();
        journal::recover(&conn)?;
        let now = now_ms();
        // Jobs whose owner process is gone.
        let orphans: Vec<(String, u32, u64)> = {
            let mut stmt =
                conn.prepare("SELECT id, owner_pid, owner_start FROM jobs WHERE state IN (2,3,4)")?;
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect::<Result<_, _>>()?
        };
        for (id, pid, start) in orphans {
            if !repo::owner_alive(pid, start) {
                conn.execute(
                    "UPDATE jobs SET state = 10, error_code = 2, error_description = 'interrupted',
                     error_summary = 'interrupted: the process running the job ended; its effects were rolled back or completed',
                     last_change_ms = ?2, finished_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
            }
        }
        let marks: Vec<(String, String, u32, i64)> = {
            let mut stmt =
                conn.prepare("SELECT object_id, job_id, owner_pid, owner_start FROM in_use")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?
        };
        for (obj, job, pid, start) in marks {
            if !repo::owner_alive(pid, start as u64) {
                conn.execute(
                    "DELETE FROM in_use WHERE object_id = ?1 AND job_id = ?2",
                    params![obj, job],
                )?;
            }
        }
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
        let layers: Vec<(String, Option<String>, bool)> = {
            let mut stmt = conn.prepare("SELECT path, parent, owned FROM layers")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))?
                .collect::<Result<_, _>>()?
        };
        let known: HashSet<String> = layers.iter().map(|l| l.0.clone()).collect();
        for (path, parent, _) in &layers {
            let p = Path::new(path);
            if !p.exists() {
                problems.push(format!("layer {path} is recorded but missing"));
                continue;
            }
            if parent.is_some() {
                // Opening the recorded chain checks that each file names its recorded parent.
                let opened = crate::chains::recorded_chain(&conn, p)
                    .and_then(|chain| Ok(cosnap_disk::open_chain(&chain, false)?));
                if let Err(e) = opened {
                    problems.push(format!(
                        "layer {path}: chain does not match the record: {e}"
                    ));
                }
            }
        }
        let disks = self.inner.data_dir.join("disks");
        if let Ok(vm_dirs) = std::fs::read_dir(&disks) {
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
        for (what, sql) in [
            ("active layer", "SELECT active_layer FROM vm_disks"),
            ("snapshot layer", "SELECT layer FROM snapshot_disks"),
            ("reference point layer", "SELECT layer FROM refpoint_disks"),
        ] {
            for p in ids(&conn, sql)? {
                if !known.contains(&p) {
                    problems.push(format!("{what} {p} is not a known layer"));
                }
            }
        }
        let pending: i64 = conn.query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))?;
        if pending > 0 {
            problems.push(format!("{pending} journal row(s) left"));
        }
        Ok(problems)
    }
}
