//! Directories held by an open handle, never re-resolved by path.
//!
//! An export directory (or a package being read) is opened once; every entry below it is
//! created, opened, renamed and removed relative to that handle with symbolic links refused
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or an `O_NOFOLLOW` walk one
//! component at a time where the kernel has no `openat2`). A directory swapped for a
//! symlink while a job runs therefore cannot redirect it.
//!
//! Code that only takes paths (the disk engine) is given [`DirHandle::proc_path`]: a
//! `/proc/self/fd/<n>/…` path, which the kernel resolves through the open handle itself.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// An open directory.
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
    /// Where it was opened, for messages (never used to reach the directory again).
    shown: PathBuf,
}

fn io_err(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// Opens `rel` below `dir` (or an absolute path when `dir` is the working directory) with
/// symlinks refused in every component.
fn open_no_symlinks(
    dir: impl AsFd,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
    beneath: bool,
) -> std::io::Result<OwnedFd> {
    let mut resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    if beneath {
        resolve |= ResolveFlags::BENEATH;
    }
    match rustix::fs::openat2(&dir, rel, flags, mode, resolve) {
        Err(Errno::NOSYS) => walk_nofollow(dir, rel, flags, mode, beneath),
        other => other.map_err(io_err),
    }
}

/// The `openat2` fallback: one component at a time, each opened with `O_NOFOLLOW`.
fn walk_nofollow(
    dir: impl AsFd,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
    beneath: bool,
) -> std::io::Result<OwnedFd> {
    let parts: Vec<Component> = rel.components().collect();
    let mut cur: OwnedFd = rustix::io::fcntl_dupfd_cloexec(&dir, 0).map_err(io_err)?;
    for (i, c) in parts.iter().enumerate() {
        let name: &Path = match c {
            Component::RootDir if !beneath && i == 0 => Path::new("/"),
            Component::Normal(n) => Path::new(n),
            Component::CurDir => continue,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} leaves its directory", rel.display()),
                ));
            }
        };
        let last = i + 1 == parts.len();
        let (f, m) = if last {
            (flags | OFlags::NOFOLLOW, mode)
        } else {
            (DIR_FLAGS, Mode::empty())
        };
        cur = rustix::fs::openat(&cur, name, f, m).map_err(io_err)?;
    }
    Ok(cur)
}

impl DirHandle {
    /// Opens an absolute directory path in which no component may be a symbolic link
    /// (callers canonicalise a path a person typed first).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let fd = open_no_symlinks(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty(), false)?;
        Ok(Self {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// The path it was opened at (for messages).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// `shown()/rel`, for messages.
    pub fn show(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.shown.join(rel)
    }

    /// A path that reaches `rel` through this handle (`/proc/self/fd/<n>/rel`; for an
    /// empty `rel`, `/proc/self/fd/<n>/.`, the directory itself rather than the magic link,
    /// so that `symlink_metadata` sees a directory).
    pub fn proc_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        use std::os::fd::AsRawFd;
        let base = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let rel = rel.as_ref();
        if rel.as_os_str().is_empty() {
            base.join(".")
        } else {
            base.join(rel)
        }
    }

    /// Creates directory `name` (mode `mode`, whatever the umask) and opens it.
    pub fn mkdir(&self, name: &str, mode: u32) -> std::io::Result<DirHandle> {
        rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)).map_err(io_err)?;
        let sub = self.open_dir(name)?;
        rustix::fs::fchmod(&sub.fd, Mode::from_raw_mode(mode)).map_err(io_err)?;
        Ok(sub)
    }

    /// Opens the directory `rel` below this one, symlinks refused.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> std::io::Result<DirHandle> {
        let rel = rel.as_ref();
        let fd = open_no_symlinks(&self.fd, rel, DIR_FLAGS, Mode::empty(), true)?;
        Ok(DirHandle {
            fd,
            shown: self.shown.join(rel),
        })
    }

    /// Creates the new file `name` for writing with mode `mode` (exclusive, no symlink).
    pub fn create_file(&self, name: &str, mode: u32) -> std::io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode)).map_err(io_err)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(io_err)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `rel` below this one for reading, symlinks refused.
    pub fn open_file(&self, rel: impl AsRef<Path>) -> std::io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = open_no_symlinks(&self.fd, rel.as_ref(), flags, Mode::empty(), true)?;
        let st = rustix::fs::fstat(&fd).map_err(io_err)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(File::from(fd))
    }

    /// Reads the regular file `rel`, refusing files larger than `max` bytes.
    pub fn read_bounded(&self, rel: impl AsRef<Path>, max: u64) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let f = self.open_file(rel)?;
        let len = f.metadata()?.len();
        if len > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes; at most {max} are accepted"),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("grew past {max} bytes while read"),
            ));
        }
        Ok(out)
    }

    /// What `name` is, without following a symlink (`None` when absent).
    pub fn kind(&self, name: impl AsRef<Path>) -> std::io::Result<Option<rustix::fs::FileType>> {
        match rustix::fs::statat(&self.fd, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(rustix::fs::FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Whether an entry `name` exists (symlinks count as entries).
    pub fn exists(&self, name: impl AsRef<Path>) -> bool {
        !matches!(self.kind(name), Ok(None))
    }

    /// Renames `from` to `to`, both in this directory; fails if `to` exists.
    pub fn rename_noreplace(&self, from: &str, to: &str) -> std::io::Result<()> {
        rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE)
            .map_err(io_err)
    }

    /// Renames directory `from` onto the empty directory `to` (a reserved name).
    pub fn rename_onto_empty_dir(&self, from: &str, to: &str) -> std::io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(io_err)
    }

    /// Removes the empty directory `name` (fails if something is in it).
    pub fn rmdir(&self, name: &str) -> std::io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR).map_err(io_err)
    }

    /// Removes `name`: a file or symlink is unlinked, a directory emptied through handles
    /// (never following a symlink) and removed. Returns whether something was there.
    pub fn remove_tree(&self, name: &str) -> std::io::Result<bool> {
        match self.kind(name)? {
            None => Ok(false),
            Some(rustix::fs::FileType::Directory) => {
                let sub = self.open_dir(name)?;
                for child in sub.names()? {
                    sub.remove_tree(&child)?;
                }
                self.rmdir(name)?;
                Ok(true)
            }
            Some(_) => {
                rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(io_err)?;
                Ok(true)
            }
        }
    }

    /// The names in this directory (not `.` and `..`).
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(io_err)?;
        let mut dir = rustix::fs::Dir::new(dup).map_err(io_err)?;
        dir.rewind();
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io_err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// fsync of the directory itself.
    pub fn sync(&self) -> std::io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io_err)
    }

    /// Sets the mode of the directory itself.
    pub fn set_mode(&self, mode: u32) -> std::io::Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(io_err)
    }

    /// Takes an exclusive `flock` on the directory without waiting; `Ok(false)` when another
    /// holder has it. Released when the handle closes.
    pub fn try_lock(&self) -> std::io::Result<bool> {
        match rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_refused_everywhere() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        assert!(DirHandle::open(&t.path().join("link")).is_err());
        let root = DirHandle::open(t.path()).unwrap();
        assert!(root.open_dir("link").is_err());
        assert!(root.open_file("link/f").is_err());
        assert!(root.open_file("real/../real/f").is_ok());
        assert!(
            root.open_dir("real")
                .unwrap()
                .open_file("../real/f")
                .is_err()
        );
        assert!(root.open_file("/etc/passwd").is_err());
        assert_eq!(root.read_bounded("real/f", 1).unwrap(), b"x");
        // The handle's own path is the directory, not a link to it.
        assert!(
            std::fs::symlink_metadata(root.proc_path(""))
                .unwrap()
                .is_dir()
        );
        assert!(root.read_bounded("real/f", 0).is_err());
        // Removing a tree never follows a link inside it.
        let d = root.mkdir("d", 0o700).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("d/l")).unwrap();
        drop(d);
        assert!(root.remove_tree("d").unwrap());
        assert!(real.join("f").exists());
    }

    #[test]
    fn walk_fallback_refuses_symlinks_and_dotdot() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        std::os::unix::fs::symlink(t.path().join("a"), t.path().join("l")).unwrap();
        let root = DirHandle::open(t.path()).unwrap();
        let open =
            |rel: &str| walk_nofollow(&root.fd, Path::new(rel), DIR_FLAGS, Mode::empty(), true);
        assert!(open("a").is_ok());
        assert!(open("l").is_err());
        assert!(open("a/../a").is_err());
        assert!(open("/a").is_err());
    }
}
