//! A small tmpfs for the disk-full tests, unmounted when its guard drops.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory; unmounted on drop.
pub struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `"2m"`) on the existing
    /// directory `at`. `None` where this process may not mount (not root): the caller says
    /// it skips.
    pub fn mount(at: &Path, size: &str) -> Option<SmallTmpfs> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallTmpfs(at.to_path_buf()))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
