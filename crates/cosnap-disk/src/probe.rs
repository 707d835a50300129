//! The probing forms' one format-detection policy: images a person names on the `cosnap disk`
//! command line are opened by their magic bytes, and so are the backing files a probed
//! image names. Recorded chains ([`mod@crate::chain`]) never come here.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::chain::MAX_CHAIN_DEPTH;
use crate::error::{DiskError, Result};
use crate::image::{Format, Image};
use crate::paths::{canonical, resolve_backing};
use crate::qcow2::{self, Qcow2Image};
use crate::raw::RawImage;
use crate::vhdx;

/// Detects the format of an existing image from its magic bytes (raw when none matches).
pub fn detect_format(path: &Path) -> Result<Format> {
    let mut f = File::open(path).map_err(|e| DiskError::io(path, e))?;
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DiskError::io(path, e)),
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(&qcow2::MAGIC) {
        Format::Qcow2
    } else if vhdx::is_vhdx(head) {
        Format::Vhdx
    } else {
        Format::Raw
    })
}

fn open_format(
    path: &Path,
    format: Format,
    writable: bool,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn Image>> {
    Ok(match format {
        Format::Qcow2 => Box::new(Qcow2Image::open_in_chain(path, writable, seen)?),
        Format::Raw => Box::new(RawImage::open(path, writable)?),
        Format::Vhdx => Box::new(vhdx::VhdxImage::open(path, writable)?),
    })
}

/// Opens an image and its whole parent chain (parents read-only), the format of each
/// layer probed from its magic bytes: for paths a person named. Layers the repository
/// records open with [`crate::open_chain`] instead.
///
/// # Examples
///
/// ```
/// use cosnap_disk::{Format, Image, ops};
///
/// let dir = tempfile::tempdir()?;
/// let base = dir.path().join("base.qcow2");
/// let top = dir.path().join("top.qcow2");
/// ops::create(&base, Format::Qcow2, 64 << 20)?;
/// ops::write_pattern(&base, 0, 4096, 0xab)?;
/// ops::create_child(&base, &top)?;
///
/// // Reads of the child fall through to what its parent holds.
/// let image = ops::open(&top, false)?;
/// let mut first = [0u8; 4];
/// image.read_at(&mut first, 0)?;
/// assert_eq!(image.format(), Format::Qcow2);
/// assert_eq!(first, [0xab; 4]);
/// assert!(image.parent().is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn open(path: &Path, writable: bool) -> Result<Box<dyn Image>> {
    let format = detect_format(path)?;
    open_format(path, format, writable, &mut Vec::new())
}

/// Opens the backing file `backing` named by `child` (read-only), checking for loops
/// (`seen` holds the canonical paths of the layers above) and missing files.
pub fn open_backing(
    child: &Path,
    backing: &Path,
    format: Option<Format>,
    seen: &mut Vec<PathBuf>,
) -> Result<Box<dyn Image>> {
    if !backing.exists() {
        return Err(DiskError::chain(
            child,
            format!("backing file {} does not exist", backing.display()),
        ));
    }
    // Only regular files and block devices: a FIFO or a character device named as a
    // backing file would block or stream forever.
    let ft = std::fs::metadata(backing)
        .map_err(|e| DiskError::io(backing, e))?
        .file_type();
    {
        use std::os::unix::fs::FileTypeExt;
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(DiskError::chain(
                child,
                format!(
                    "backing file {} is not a regular file or block device",
                    backing.display()
                ),
            ));
        }
    }
    let canon = canonical(backing);
    if seen.contains(&canon) {
        return Err(DiskError::chain(
            child,
            format!(
                "backing loop: {} is already in the chain",
                backing.display()
            ),
        ));
    }
    if seen.len() >= MAX_CHAIN_DEPTH {
        return Err(DiskError::chain(
            child,
            format!("chain deeper than {MAX_CHAIN_DEPTH} layers"),
        ));
    }
    let format = match format {
        Some(f) => f,
        None => detect_format(backing)?,
    };
    open_format(backing, format, false, seen)
}

/// The probing opens of a qcow2 image live here, beside the policy they follow, so the
/// qcow2 module never reaches back up to the format dispatch.
impl Qcow2Image {
    /// Opens `path` and its backing chain (read-only).
    pub fn open(path: &Path, writable: bool) -> Result<Qcow2Image> {
        Self::open_in_chain(path, writable, &mut Vec::new())
    }

    /// Opens `path`; `seen` holds the layers above it (canonical paths) to detect loops.
    /// Follows the backing file the header names (probing its format when the header
    /// records none): only for images a person named, never for repository layers (see
    /// [`crate::chain`](mod@crate::chain)).
    pub fn open_in_chain(
        path: &Path,
        writable: bool,
        seen: &mut Vec<PathBuf>,
    ) -> Result<Qcow2Image> {
        let mut img = Self::open_layer(path, writable)?;
        if let Some(name) = img.header().backing_file.clone() {
            let backing_path = resolve_backing(path, &name);
            let fmt = match img.header().backing_format.as_deref() {
                None => None,
                Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                    DiskError::unsupported(path, format!("backing file format {f:?}"))
                })?),
            };
            seen.push(canonical(path));
            let opened = open_backing(path, &backing_path, fmt, seen);
            seen.pop();
            img.attach_backing(opened?);
        }
        Ok(img)
    }
}
