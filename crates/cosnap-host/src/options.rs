//! What the process opening the host decides about trust, handed over at
//! [`crate::Host::open_with`] (never through the environment): which directories clients
//! of the API may name disk images in (storage roots) and write packages into (export
//! roots), and the mode exported files get.
//!
//! The CLI, run by root on the host itself, may name any path; these limits bind what
//! arrives over the API (CIM-XML, WS-Management).

use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use cosnap_vmm::{Hypervisor, QemuHypervisor};

use crate::error::{HostError, Result};

/// Package files are readable by their owner only unless the operator says otherwise.
pub const DEFAULT_EXPORT_FILE_MODE: u32 = 0o600;

/// The host's trust configuration.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Disk images named over the API must resolve (symlinks included) under one of these.
    /// None configured = no disk may be named over the API.
    pub storage_roots: Vec<PathBuf>,
    /// Extra directories API clients may export into (besides `<data-dir>/exports` and
    /// the lines of `<data-dir>/export-roots`).
    pub export_roots: Vec<PathBuf>,
    /// Mode of every exported file (directories get the matching search bits).
    pub export_file_mode: u32,
    /// Digest algorithm of export manifests: SHA-256 (OVF's) unless the operator chose
    /// BLAKE3 (`cosnap serve --export-digest`, `cosnap export --digest`). Not a Hyper-V
    /// field, so it is the host's setting, not the request's.
    pub export_digest: cosnap_export::DigestAlgorithm,
    /// What runs the VMs (QEMU by default).
    pub hypervisor: SharedHypervisor,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            storage_roots: Vec::new(),
            export_roots: Vec::new(),
            export_file_mode: DEFAULT_EXPORT_FILE_MODE,
            export_digest: cosnap_export::DigestAlgorithm::Sha256,
            hypervisor: Default::default(),
        }
    }
}

/// Parses an octal file mode such as `0640` or `640`: permission bits only (no setuid,
/// setgid or sticky bit), and the owner must be able to read it back.
pub fn parse_mode(text: &str) -> std::result::Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("'{text}' is not an octal file mode (e.g. 0600 or 0640)"))?;
    if mode > 0o777 {
        return Err(format!(
            "'{text}': only permission bits (at most 0777) may be given"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Err(format!(
            "'{text}': the owner must keep read and write access (0600 at least)"
        ));
    }
    Ok(mode)
}

/// Canonical forms of `roots` (absolute, existing directories; others are dropped with a
/// warning, since a root nobody can resolve admits nothing).
pub(crate) fn canonical_roots(roots: &[PathBuf], what: &str) -> Vec<PathBuf> {
    roots
        .iter()
        .filter_map(|r| match std::fs::canonicalize(r) {
            Ok(c) if r.is_absolute() && c.is_dir() => Some(c),
            _ => {
                tracing::warn!(root = %r.display(), "{what} root is not an absolute, existing directory; ignored");
                None
            }
        })
        .collect()
}

/// Checks a disk image path a client named over the API: absolute, no `..`, and resolving
/// (symlinks included) under a storage root and outside the data directory, which holds
/// the repository and the server's secrets. Returns the resolved path.
pub(crate) fn check_api_disk_path(
    path: &Path,
    roots: &[PathBuf],
    data_dir: &Path,
) -> Result<PathBuf> {
    let denied = |why: &str| {
        HostError::AccessDenied(format!(
            "disk image {}: {why}; disk images named over the API must lie under a storage root ({})",
            path.display(),
            describe_roots(roots)
        ))
    };
    if !path.is_absolute() {
        return Err(denied("not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(denied("'..' is not allowed"));
    }
    if !roots.iter().any(|r| path.starts_with(r)) && !under_root_lexically(path, roots) {
        return Err(denied("outside every storage root"));
    }
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| HostError::not_found(format!("disk image {}: {e}", path.display())))?;
    if !roots.iter().any(|r| resolved.starts_with(r)) {
        return Err(denied(&format!(
            "it resolves to {}, outside every storage root",
            resolved.display()
        )));
    }
    if resolved.starts_with(data_dir) {
        return Err(denied("it lies in cosnap's data directory"));
    }
    Ok(resolved)
}

/// Whether `path` lies under a root named by a path that is itself a symlink (the roots
/// are canonical; the client may use the root's configured spelling).
fn under_root_lexically(path: &Path, roots: &[PathBuf]) -> bool {
    path.parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .is_some_and(|p| roots.iter().any(|r| p.starts_with(r)))
}

fn describe_roots(roots: &[PathBuf]) -> String {
    if roots.is_empty() {
        "none is configured: start the server with --storage-root DIR".into()
    } else {
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_permission_bits_the_owner_keeps() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0o644"), Ok(0o644));
        for bad in ["", "0x600", "0888", "4755", "0400", "0200", "rw-------"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_disk_paths_resolve_under_a_root_and_outside_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("root");
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let inside = root.join("a.raw");
        let outside = base.join("secret.raw");
        std::fs::write(&inside, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        std::fs::write(data.join("cosnap.db"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link.raw")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        let roots = [root.clone()];
        let check = |p: &Path| check_api_disk_path(p, &roots, &data);

        assert_eq!(check(&inside).unwrap(), inside);
        for p in [
            outside.clone(),
            root.join("..").join("secret.raw"),
            root.join("link.raw"),
            root.join("up").join("secret.raw"),
            data.join("cosnap.db"),
            PathBuf::from("a.raw"),
        ] {
            match check(&p) {
                Err(HostError::AccessDenied(_)) => {}
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        assert!(matches!(
            check(&root.join("missing.raw")),
            Err(HostError::NotFound(_))
        ));
        // No storage root configured: nothing may be named.
        assert!(matches!(
            check_api_disk_path(&inside, &[], &data),
            Err(HostError::AccessDenied(_))
        ));
    }
}

/// The hypervisor the host runs VMs with (QEMU by default).
#[derive(Clone)]
pub struct SharedHypervisor(pub Arc<dyn Hypervisor>);

impl Default for SharedHypervisor {
    fn default() -> Self {
        SharedHypervisor(Arc::new(QemuHypervisor::new()))
    }
}

impl std::fmt::Debug for SharedHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedHypervisor")
    }
}
