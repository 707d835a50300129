//! Chains as the caller recorded them: every layer opened with the format the caller
//! states, every parent the next recorded layer. Nothing here probes content or follows a
//! path an image names: a guest writes the bytes of its disks, so a raw disk may well
//! begin with a qcow2 header naming `/etc/shadow` as its backing file.
//!
//! The references a layer's own metadata holds are checked against the record instead:
//! - a qcow2 layer with a recorded parent must name that same file (after resolving
//!   symlinks) as its backing file and record the parent's format as its backing format;
//!   a backing reference without a backing format, one naming another file, or one where
//!   the record has no parent, is refused;
//! - a VHDX differencing layer's parent locator must resolve to the recorded parent and
//!   its linkage GUID must match that parent (as [`crate::vhdx::VhdxImage::open`] checks);
//! - a raw layer has no parent.
//!
//! The probing forms in [`crate::ops`] (`open`, `commit`, `pull`, …) stay for images a
//! person names on the `cosnap disk` command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DiskError, Result};
use crate::image::{Format, Image};
use crate::paths::{canonical, resolve_backing};
use crate::qcow2::Qcow2Image;
use crate::raw::RawImage;
use crate::vhdx::VhdxImage;

/// Deepest chain cosnap opens (a guard against runaway recursion, not a format limit).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// One layer of a chain as the caller's records know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The layer's file.
    pub path: PathBuf,
    /// The format the records give it (never probed).
    pub format: Format,
}

impl LayerSpec {
    /// A layer at `path` in `format`.
    pub fn new(path: impl Into<PathBuf>, format: Format) -> Self {
        Self {
            path: path.into(),
            format,
        }
    }
}

/// Opens the chain `layers` (top first; each layer's parent is the next one), each layer
/// with its recorded format. Only the top layer is opened writable when `writable`.
pub fn open_chain(layers: &[LayerSpec], writable: bool) -> Result<Box<dyn Image>> {
    check_shape(layers)?;
    open_from(layers, writable)
}

/// Refuses an empty chain, one deeper than [`MAX_CHAIN_DEPTH`], a file listed twice, and
/// anything but regular files and block devices (a FIFO would block a reader forever).
fn check_shape(layers: &[LayerSpec]) -> Result<()> {
    let Some(top) = layers.first() else {
        return Err(DiskError::invalid("", "an empty chain was asked for"));
    };
    if layers.len() > MAX_CHAIN_DEPTH {
        return Err(DiskError::chain(
            &top.path,
            format!("chain deeper than {MAX_CHAIN_DEPTH} layers"),
        ));
    }
    let mut seen = Vec::with_capacity(layers.len());
    for l in layers {
        check_file_type(&l.path)?;
        let canon = canonical(&l.path);
        if seen.contains(&canon) {
            return Err(DiskError::chain(
                &top.path,
                format!("{} is listed twice in the chain", l.path.display()),
            ));
        }
        seen.push(canon);
    }
    Ok(())
}

fn check_file_type(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let ft = std::fs::metadata(path)
        .map_err(|e| DiskError::io(path, e))?
        .file_type();
    if ft.is_file() || ft.is_block_device() {
        Ok(())
    } else {
        Err(DiskError::invalid(
            path,
            "not a regular file or block device",
        ))
    }
}

fn open_from(layers: &[LayerSpec], writable: bool) -> Result<Box<dyn Image>> {
    let (top, below) = layers
        .split_first()
        .ok_or_else(|| DiskError::invalid("", "an empty chain was asked for"))?;
    Ok(match top.format {
        Format::Raw => {
            if let Some(parent) = below.first() {
                return Err(DiskError::chain(
                    &top.path,
                    format!(
                        "a raw image cannot have a parent, yet {} is recorded as its parent",
                        parent.path.display()
                    ),
                ));
            }
            Box::new(RawImage::open(&top.path, writable)?)
        }
        Format::Qcow2 => {
            let mut img = Qcow2Image::open_layer(&top.path, writable)?;
            check_qcow2_backing(&img, below.first())?;
            if !below.is_empty() {
                img.attach_backing(open_from(below, false)?);
            }
            Box::new(img)
        }
        Format::Vhdx => Box::new(open_vhdx(layers, writable)?),
    })
}

/// The backing reference in a qcow2 header must be exactly the recorded parent.
pub fn check_qcow2_backing(img: &Qcow2Image, parent: Option<&LayerSpec>) -> Result<()> {
    let path = &img.path().to_path_buf();
    let hdr = img.header();
    match (&hdr.backing_file, parent) {
        (None, None) => Ok(()),
        (None, Some(p)) => Err(DiskError::chain(
            path,
            format!(
                "has no backing file, yet {} is recorded as its parent",
                p.path.display()
            ),
        )),
        (Some(name), None) => Err(DiskError::chain(
            path,
            format!(
                "names backing file {name:?}, which is not a recorded parent of this layer; refusing to follow it"
            ),
        )),
        (Some(name), Some(p)) => {
            let Some(fmt) = hdr.backing_format.as_deref() else {
                return Err(DiskError::chain(
                    path,
                    format!(
                        "names backing file {name:?} without a backing format; refusing to guess one"
                    ),
                ));
            };
            let named = resolve_backing(path, name);
            if canonical(&named) != canonical(&p.path) {
                return Err(DiskError::chain(
                    path,
                    format!(
                        "names backing file {}, but its recorded parent is {}; refusing to follow it",
                        named.display(),
                        p.path.display()
                    ),
                ));
            }
            if Format::from_name(fmt) != Some(p.format) {
                return Err(DiskError::chain(
                    path,
                    format!(
                        "records backing format {fmt:?}, but its recorded parent {} is {}",
                        p.path.display(),
                        p.format
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// A VHDX chain: every layer VHDX, each locator resolving to the recorded parent.
fn open_vhdx(layers: &[LayerSpec], writable: bool) -> Result<VhdxImage> {
    let (top, below) = layers
        .split_first()
        .ok_or_else(|| DiskError::invalid("", "an empty chain was asked for"))?;
    if top.format != Format::Vhdx {
        return Err(DiskError::chain(
            &top.path,
            format!(
                "recorded as {} below a VHDX layer; a VHDX parent must be VHDX",
                top.format
            ),
        ));
    }
    let mut img = VhdxImage::open_layer(&top.path, writable)?;
    match (img.is_differencing(), below.first()) {
        (false, None) => {}
        (false, Some(p)) => {
            return Err(DiskError::chain(
                &top.path,
                format!(
                    "is not a differencing image, yet {} is recorded as its parent",
                    p.path.display()
                ),
            ));
        }
        (true, None) => {
            return Err(DiskError::chain(
                &top.path,
                "is a differencing image, but no parent is recorded for it; refusing to follow its parent locator",
            ));
        }
        (true, Some(p)) => {
            let named = img.resolve_parent()?;
            if canonical(&named) != canonical(&p.path) {
                return Err(DiskError::chain(
                    &top.path,
                    format!(
                        "parent locator names {}, but its recorded parent is {}; refusing to follow it",
                        named.display(),
                        p.path.display()
                    ),
                ));
            }
            let parent = open_vhdx(below, false)?;
            img.check_link(&parent)?;
            img.parent = Some(Box::new(parent));
        }
    }
    Ok(img)
}
