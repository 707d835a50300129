//! File modes of what cosnap keeps: the data directory and its `disks/` and `exports/`
//! directories 0700, the repository and secrets 0600, layers cosnap creates 0600. Set
//! explicitly after creation, so a umask of 022 (or any other) changes nothing: the disks
//! hold every VM's data and the repository says where it all is.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Result;

pub const PRIVATE_DIR: u32 = 0o700;
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `dir` (and missing parents) if needed, makes it 0700 and returns its canonical
/// path. Parents it creates are left to the umask: they are not cosnap's.
pub fn create_private_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, PRIVATE_DIR)?;
    Ok(dir.canonicalize()?)
}

/// Makes an existing file owner-only (0600).
pub fn make_private_file(path: &Path) -> Result<()> {
    set_mode(path, PRIVATE_FILE)
}

/// Makes `path` owner-only if it exists (SQLite creates `-wal` and `-shm` on demand).
pub fn make_private_if_present(path: &Path) -> Result<()> {
    match set_mode(path, PRIVATE_FILE) {
        Err(crate::HostError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    Ok(())
}
