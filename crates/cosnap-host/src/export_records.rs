//! The repository's record of finished exports, which a differential PreserveChain export
//! reads to find its base export's disk files.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::model::*;
use crate::rows::p2s;
use crate::util::{new_guid, norm_id, now_ms, rfc3339};

impl Host {
    /// Records a finished export so a later differential PreserveChain export can find the
    /// base export's disk files. Returns the record id.
    pub fn record_export(
        &self,
        source_id: &str,
        job_id: Option<&str>,
        package_dir: &Path,
        disks: &[ExportedDisk],
    ) -> Result<String> {
        let id = new_guid();
        let conn = self.db();
        let seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM exports", [], |r| {
                r.get(0)
            })?;
        let disks = serde_json::to_string(disks).map_err(|e| HostError::Failed(e.to_string()))?;
        conn.execute(
            "INSERT INTO exports (id, source_id, job_id, package_dir, created, disks, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, norm_id(source_id), job_id, p2s(package_dir), rfc3339(now_ms()), disks, seq],
        )?;
        Ok(id)
    }

    /// Exports recorded for a snapshot collection or reference point collection, newest
    /// first. For a reference point, exports of the snapshot it was converted from count.
    pub fn exports_of(&self, source_id: &str) -> Result<Vec<ExportRecord>> {
        let conn = self.db();
        let id = norm_id(source_id);
        let from: Option<String> = conn
            .query_row(
                "SELECT from_snapshot FROM refpoints WHERE id = ?1",
                [&id],
                |r| r.get(0),
            )
            .optional()?;
        let mut stmt = conn.prepare(
            "SELECT id, source_id, job_id, package_dir, created, disks FROM exports WHERE source_id = ?1 OR source_id = ?2 ORDER BY seq DESC",
        )?;
        let rows = stmt
            .query_map(params![id, from.unwrap_or_default()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, source_id, job_id, dir, created, disks)| {
                Ok(ExportRecord {
                    id,
                    source_id,
                    job_id,
                    package_dir: PathBuf::from(dir),
                    created,
                    disks: serde_json::from_str(&disks)
                        .map_err(|e| HostError::Failed(e.to_string()))?,
                })
            })
            .collect()
    }
}
