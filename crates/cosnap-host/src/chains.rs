//! The disk chains the repository records. Every layer the host opens — for a guest
//! write, a snapshot, a merge or pull, an export, a change-range query, verification or
//! recovery — is opened as recorded here (its format from `layers.format`, its parent from
//! `layers.parent`), never by probing what its bytes look like: a guest writes those bytes.

use std::path::{Path, PathBuf};

use cosnap_disk::{Format, LayerSpec, MAX_CHAIN_DEPTH};
use rusqlite::{Connection, OptionalExtension};

use crate::error::{HostError, Result};

/// The recorded chain of `top`, top first.
pub(crate) fn recorded_chain(conn: &Connection, top: &Path) -> Result<Vec<LayerSpec>> {
    let mut out = Vec::new();
    let mut cur = Some(top.to_string_lossy().into_owned());
    while let Some(path) = cur {
        if out.len() >= MAX_CHAIN_DEPTH {
            return Err(HostError::Failed(format!(
                "the recorded chain of {} is deeper than {MAX_CHAIN_DEPTH} layers (a loop?)",
                top.display()
            )));
        }
        let (parent, format): (Option<String>, String) = conn
            .query_row(
                "SELECT parent, format FROM layers WHERE path = ?1",
                [&path],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .ok_or_else(|| {
                HostError::Failed(format!("layer {path} is not recorded in the repository"))
            })?;
        out.push(LayerSpec::new(
            PathBuf::from(&path),
            recorded_format(&path, &format)?,
        ));
        cur = parent;
    }
    Ok(out)
}

/// A `layers.format` value; the repository only ever writes names it can read back.
pub(crate) fn recorded_format(path: &str, name: &str) -> Result<Format> {
    Format::from_name(name).ok_or_else(|| {
        HostError::Failed(format!(
            "layer {path} has format {name:?} on record, which is not a known format"
        ))
    })
}

/// The format a new base disk is recorded with. A stated format is checked against the
/// file (raw always fits: any bytes are a raw image); an unstated one is probed and must
/// agree with the file name's extension. Either way the disk must stand alone: a qcow2
/// base naming a backing file or a VHDX differencing base is refused (its parent is a
/// path the file chose, not one anybody recorded).
pub(crate) fn base_disk_format(path: &Path, stated: Option<Format>) -> Result<Format> {
    let probed = cosnap_disk::detect_format(path)?;
    let format = match stated {
        Some(Format::Raw) => Format::Raw,
        Some(f) if f != probed => {
            return Err(HostError::invalid(format!(
                "disk image {} is not {f}: its content looks like {probed}. {HOW_TO_STATE}",
                path.display()
            )));
        }
        Some(f) => f,
        None => match name_format(path) {
            Some(by_name) if by_name != probed => {
                return Err(HostError::invalid(format!(
                    "disk image {}: its name says {by_name} but its content looks like {probed}; cosnap will not guess. {HOW_TO_STATE}",
                    path.display()
                )));
            }
            _ => probed,
        },
    };
    check_standalone(path, format)?;
    Ok(format)
}

const HOW_TO_STATE: &str = "State the disk's format: `cosnap vm define --disk PATH --disk-format raw|qcow2|vhdx` (the n-th --disk-format goes with the n-th --disk), or the driver type in libvirt domain XML";

/// The format a file name's extension names, if any.
pub(crate) fn name_format(path: &Path) -> Option<Format> {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_name)
}

fn check_standalone(path: &Path, format: Format) -> Result<()> {
    let layer = LayerSpec::new(path, format);
    if let Some(parent) = cosnap_disk::parent_path_as(&layer)? {
        return Err(HostError::invalid(format!(
            "disk image {} is a differencing image of {}; a VM's base disk must stand alone (flatten it first: `cosnap disk convert`)",
            path.display(),
            parent.display()
        )));
    }
    cosnap_disk::open_chain(&[layer], false)?;
    Ok(())
}
