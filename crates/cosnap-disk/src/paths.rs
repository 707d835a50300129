//! Path helpers shared by the formats and the whole-image operations: canonical forms for
//! loop detection, backing names as qemu resolves them, and relative parent links.

use std::path::{Path, PathBuf};

/// Canonical form of a path for loop detection (the path itself if it does not resolve).
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where a backing file name recorded in `image` points: relative names are relative to
/// the image's directory (as qemu resolves them).
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// `target` relative to directory `from_dir` (both made absolute first).
pub fn relative_path(from_dir: &Path, target: &Path) -> PathBuf {
    let abs = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        })
    };
    let (from, to) = (abs(from_dir), abs(target));
    let fc: Vec<_> = from.components().collect();
    let tc: Vec<_> = to.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    out
}
