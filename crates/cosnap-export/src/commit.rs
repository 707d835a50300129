//! How a staged package becomes visible, and how a dead export is finished or removed.
//!
//! Before anything is created, the journal `.cosnap-export-<uuid>.journal` in the export
//! directory names every staged entry and the final name it will get (single names in the
//! export directory, never paths). Everything is written under staged names
//! (`.<final>.cosnap-staging-<uuid>`). The manifest is written last as `<manifest>.part`;
//! renaming it to its staged name is the **commit point**: from then on the package is
//! complete and recovery finishes the renames instead of removing it. The renames never
//! replace an entry (`RENAME_NOREPLACE`), except the empty directory a sub-directory export
//! reserved for its name at the start, so two exports cannot overwrite each other.
//! A failing export removes only what it created itself.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dirhandle::DirHandle;
use crate::{ExportError, Result};

pub(crate) const JOURNAL_PREFIX: &str = ".cosnap-export-";
pub(crate) const JOURNAL_SUFFIX: &str = ".journal";
pub(crate) const STAGING_MARK: &str = ".cosnap-staging-";
/// The manifest while it is written, before the commit point.
pub(crate) const PART_SUFFIX: &str = ".part";
/// A journal is a few names; anything larger is not one of ours.
const MAX_JOURNAL_BYTES: u64 = 1 << 20;

/// The journal of one export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub export_id: String,
    /// `(staged, final)` names in the export directory; the manifest's entry is last.
    pub items: Vec<(String, String)>,
    /// The manifest while staged and once committed, relative to the export directory
    /// (`name` or `dir/name`).
    pub manifest_staged: String,
    pub manifest_final: String,
    /// With a sub-directory: the empty directory that reserves the package's name.
    pub reserved: Option<String>,
}

pub(crate) fn journal_name(export_id: &str) -> String {
    format!("{JOURNAL_PREFIX}{export_id}{JOURNAL_SUFFIX}")
}

pub(crate) fn staged_name(top: &str, export_id: &str) -> String {
    format!(".{top}{STAGING_MARK}{export_id}")
}

/// One name in a directory: no separator, not `.`/`..`, not empty.
fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0'])
}

/// `name` or `dir/name`, both plain.
fn is_short_rel(r: &str) -> bool {
    let parts: Vec<&str> = r.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| is_plain_name(p))
}

impl Journal {
    /// Whether a journal read back could be ours (it is not trusted to name anything else).
    fn is_sound(&self, export_id: &str) -> bool {
        self.export_id == export_id
            && self
                .items
                .iter()
                .all(|(s, f)| is_plain_name(s) && is_plain_name(f) && s.contains(export_id))
            && is_short_rel(&self.manifest_staged)
            && is_short_rel(&self.manifest_final)
            && self.reserved.as_deref().is_none_or(is_plain_name)
    }

    /// Writes the journal durably; on failure (a full file system) nothing of it remains.
    pub fn write(&self, dir: &DirHandle) -> Result<()> {
        let name = journal_name(&self.export_id);
        let bytes = serde_json::to_vec_pretty(self).expect("journal serialises");
        let written = dir.create_file(&name, 0o600).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|_| dir.sync()) {
            let _ = dir.remove_tree(&name);
            return Err(ExportError::io(dir.show(&name), e));
        }
        Ok(())
    }

    fn read(dir: &DirHandle, export_id: &str) -> Option<Journal> {
        let bytes = dir
            .read_bounded(journal_name(export_id), MAX_JOURNAL_BYTES)
            .ok()?;
        serde_json::from_slice::<Journal>(&bytes)
            .ok()
            .filter(|j| j.is_sound(export_id))
    }

    /// Past the commit point: the manifest is in place, staged or final.
    pub fn committed(&self, dir: &DirHandle) -> bool {
        [&self.manifest_staged, &self.manifest_final]
            .iter()
            .any(|m| {
                matches!(
                    dir.kind(m.as_str()),
                    Ok(Some(rustix::fs::FileType::RegularFile))
                )
            })
    }

    /// Removes the journal itself.
    pub fn remove(&self, dir: &DirHandle) {
        let _ = dir.remove_tree(&journal_name(&self.export_id));
        let _ = dir.sync();
    }
}

/// The commit point: the manifest written as `<staged manifest>.part` takes its staged name.
pub(crate) fn commit_point(dir: &DirHandle, journal: &Journal) -> Result<()> {
    let (parent, name) = match journal.manifest_staged.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, journal.manifest_staged.as_str()),
    };
    let at = match parent {
        Some(p) => dir
            .open_dir(p)
            .map_err(|e| ExportError::io(dir.show(p), e))?,
        None => dir
            .open_dir(".")
            .map_err(|e| ExportError::io(dir.shown(), e))?,
    };
    let part = format!("{name}{PART_SUFFIX}");
    at.rename_noreplace(&part, name)
        .and_then(|_| at.sync())
        .map_err(|e| ExportError::io(at.show(name), e))
}

/// Renames every staged item to its final name (`step` is called before each rename, for
/// the crash harness). On failure returns the error and the final names renamed so far.
pub(crate) fn rename_all(
    dir: &DirHandle,
    journal: &Journal,
    renamed: &mut Vec<String>,
    step: &dyn Fn(&str),
) -> Result<()> {
    for (staged, fin) in &journal.items {
        step("export-rename");
        let done = if journal.reserved.as_deref() == Some(fin.as_str()) {
            dir.rename_onto_empty_dir(staged, fin)
        } else {
            dir.rename_noreplace(staged, fin)
        };
        done.map_err(|e| ExportError::io(dir.show(fin), e))?;
        renamed.push(fin.clone());
    }
    dir.sync().map_err(|e| ExportError::io(dir.shown(), e))
}

/// Undoes a failed export: its staged entries, the finals it renamed itself, its name
/// reservation (only while still empty), its journal. Never anything else.
pub(crate) fn rollback(dir: &DirHandle, journal: &Journal, renamed: &[String]) {
    for (staged, fin) in &journal.items {
        let _ = dir.remove_tree(staged);
        if renamed.contains(fin) && journal.reserved.as_deref() != Some(fin.as_str()) {
            let _ = dir.remove_tree(fin);
        }
    }
    if let Some(r) = &journal.reserved {
        if renamed.contains(r) {
            let _ = dir.remove_tree(r);
        } else {
            let _ = dir.rmdir(r);
        }
    }
    remove_leftovers(dir, &journal.export_id, &mut Vec::new());
    journal.remove(dir);
}

/// Removes every entry of export `export_id` still under a staging name.
fn remove_leftovers(dir: &DirHandle, export_id: &str, removed: &mut Vec<PathBuf>) {
    let mark = format!("{STAGING_MARK}{export_id}");
    for n in dir.names().unwrap_or_default() {
        if n.starts_with('.') && n.contains(&mark) && dir.remove_tree(&n).unwrap_or(false) {
            removed.push(dir.show(&n));
        }
    }
}

/// What recovering one export did.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The package is complete and in place (it was, or its renames were finished now).
    pub committed: bool,
    /// Entries removed (staging, journal, an unused name reservation).
    pub removed: Vec<PathBuf>,
}

/// Finishes or removes what the dead export `export_id` left in `dir`: past the commit
/// point its renames are finished; before it, its staging and name reservation are
/// removed (never a final entry). A journal that cannot be read (e.g. 0 bytes after a
/// full file system) is removed with the export's staging. Only for exports whose
/// process is gone.
pub fn recover_export(dir: &DirHandle, export_id: &str) -> Result<Recovered> {
    let mut out = Recovered::default();
    if !is_plain_name(export_id) {
        return Ok(out);
    }
    if let Some(j) = Journal::read(dir, export_id) {
        if j.committed(dir) {
            let mut renamed = Vec::new();
            let finished =
                rename_all(dir, &j, &mut renamed, &|_| {}).or_else(|_| finish_remaining(dir, &j));
            out.committed = finished.is_ok() && j.committed(dir);
        } else if let Some(r) = &j.reserved
            && dir.rmdir(r).is_ok()
        {
            out.removed.push(dir.show(r));
        }
    }
    remove_leftovers(dir, export_id, &mut out.removed);
    let jn = journal_name(export_id);
    if dir.remove_tree(&jn).unwrap_or(false) {
        out.removed.push(dir.show(&jn));
    }
    dir.sync().map_err(|e| ExportError::io(dir.shown(), e))?;
    Ok(out)
}

/// Rolls the renames forward one by one, skipping those already done.
fn finish_remaining(dir: &DirHandle, j: &Journal) -> Result<()> {
    for (staged, fin) in &j.items {
        if !dir.exists(staged) {
            continue;
        }
        let done = if j.reserved.as_deref() == Some(fin.as_str()) {
            dir.rename_onto_empty_dir(staged, fin)
        } else {
            dir.rename_noreplace(staged, fin)
        };
        done.map_err(|e| ExportError::io(dir.show(fin), e))?;
    }
    Ok(())
}

/// What [`recover_export_dir`] cleaned up.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Entries removed (staging directories, journals, unused name reservations).
    pub removed: Vec<PathBuf>,
    /// Exports whose commit had passed its commit point (their packages are in place).
    pub completed: Vec<String>,
}

/// [`recover_export`] for every journal in `export_dir`, then staging entries no journal
/// names. Only when no export into `export_dir` is running.
pub fn recover_export_dir(export_dir: &std::path::Path) -> Result<RecoveryReport> {
    let mut rep = RecoveryReport::default();
    let dir = match DirHandle::open(export_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rep),
        Err(e) => return Err(ExportError::io(export_dir, e)),
    };
    let names = dir.names().map_err(|e| ExportError::io(export_dir, e))?;
    for n in &names {
        let Some(id) = n
            .strip_prefix(JOURNAL_PREFIX)
            .and_then(|r| r.strip_suffix(JOURNAL_SUFFIX))
        else {
            continue;
        };
        let r = recover_export(&dir, id)?;
        if r.committed {
            rep.completed.push(id.to_string());
        }
        rep.removed.extend(r.removed);
    }
    for n in dir.names().map_err(|e| ExportError::io(export_dir, e))? {
        if n.starts_with('.') && n.contains(STAGING_MARK) && dir.remove_tree(&n).unwrap_or(false) {
            rep.removed.push(dir.show(&n));
        }
    }
    dir.sync().map_err(|e| ExportError::io(export_dir, e))?;
    Ok(rep)
}
