//! Reading a package back: [`verify_package`] (digests, descriptor, configurations,
//! images) and [`read_package`] (for import).
//!
//! A package may come from anywhere. Its directory is opened once and every file below
//! it is opened through that handle with symbolic links refused; every file is read
//! with a size bound, every count is bounded, and the CIM-XML configurations and the OVF
//! descriptor go through `cosnap-cim`'s bounded reader (no DTD, bounded depth, size and
//! node count), so a hostile package gets a clear error, never a stack overflow.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use cosnap_cim::Instance;
use cosnap_disk::{Format, LayerSpec};

use crate::dirhandle::DirHandle;
use crate::package::{
    DiskRecord, PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION, PACKAGE_JSON, Package, PackageMeta,
    PackageVm, VerifyReport,
};
use crate::{ExportError, Result, manifest, ovf};

/// Largest `cosnap-package.json` read.
pub const MAX_PACKAGE_JSON_BYTES: u64 = 16 << 20;
/// Largest manifest, descriptor or configuration file read.
pub const MAX_TEXT_BYTES: u64 = cosnap_cim::xml::MAX_DOCUMENT_BYTES as u64;
/// Most VMs in one package, and disks in one VM.
pub const MAX_VMS: usize = 4096;
/// Most disks in one VM of a package.
pub const MAX_DISKS_PER_VM: usize = 1024;
/// Most files in one package, and the deepest directory nesting walked.
pub const MAX_FILES: usize = 100_000;
/// The deepest directory nesting walked in a package.
pub const MAX_WALK_DEPTH: usize = 16;

/// Opens a package directory a person or client named: resolved once (symlinks in the
/// path they typed are theirs), then held open.
fn open_package(root: &Path) -> Result<(PathBuf, DirHandle)> {
    let canon = fs::canonicalize(root).map_err(|e| ExportError::io(root, e))?;
    let dir = DirHandle::open(&canon).map_err(|e| ExportError::io(&canon, e))?;
    Ok((canon, dir))
}

/// A text file of the package, bounded, symlinks refused.
fn read_text(dir: &DirHandle, rel: &str, max: u64) -> std::result::Result<String, String> {
    let bytes = dir.read_bounded(rel, max).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// A package-relative path: relative, no `.`/`..`/empty components.
fn is_inside(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel
            .split('/')
            .any(|c| c.is_empty() || c == ".." || c == ".")
}

fn read_meta(dir: &DirHandle) -> Result<PackageMeta> {
    let p = dir.show(PACKAGE_JSON);
    let bytes = dir
        .read_bounded(PACKAGE_JSON, MAX_PACKAGE_JSON_BYTES)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ExportError::bad_package(dir.shown(), format!("no {PACKAGE_JSON}"))
            }
            _ => ExportError::bad_package(&p, e.to_string()),
        })?;
    let meta: PackageMeta = serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::bad_package(&p, format!("unreadable: {e}")))?;
    if meta.format != PACKAGE_FORMAT || meta.format_version != PACKAGE_FORMAT_VERSION {
        return Err(ExportError::bad_package(
            &p,
            format!(
                "format {} version {} is not {PACKAGE_FORMAT} version {PACKAGE_FORMAT_VERSION}",
                meta.format, meta.format_version
            ),
        ));
    }
    check_counts(&meta).map_err(|what| ExportError::bad_package(&p, what))?;
    let rels = std::iter::once(&meta.manifest)
        .chain([&meta.descriptor, &meta.collection_file])
        .chain(
            meta.vms
                .iter()
                .flat_map(|v| [&v.dir, &v.config, &v.snapshot_config]),
        )
        .chain(
            meta.vms
                .iter()
                .flat_map(|v| v.disks.iter().filter_map(|d| d.file.as_ref())),
        );
    for rel in rels {
        if !is_inside(rel) {
            return Err(ExportError::bad_package(
                &p,
                format!("path {rel:?} leaves the package"),
            ));
        }
    }
    Ok(meta)
}

/// The `export_id` of the package at `root`, if a readable package is there.
pub fn package_export_id(root: &Path) -> Option<String> {
    let (_, dir) = open_package(root).ok()?;
    read_meta(&dir).ok().map(|m| m.export_id)
}

fn check_counts(meta: &PackageMeta) -> std::result::Result<(), String> {
    if meta.vms.len() > MAX_VMS {
        return Err(format!(
            "{} VMs; at most {MAX_VMS} are accepted",
            meta.vms.len()
        ));
    }
    if let Some(v) = meta.vms.iter().find(|v| v.disks.len() > MAX_DISKS_PER_VM) {
        return Err(format!(
            "VM {} has {} disks; at most {MAX_DISKS_PER_VM} are accepted",
            v.id,
            v.disks.len()
        ));
    }
    Ok(())
}

/// Every regular file under `dir` (relative, `/`-separated), bounded in depth and count;
/// symlinks and other special entries are reported as problems, never followed.
fn walk_files(
    dir: &DirHandle,
    prefix: &str,
    depth: usize,
    out: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> std::io::Result<()> {
    use rustix::fs::FileType;
    if depth > MAX_WALK_DEPTH {
        problems.push(format!(
            "{prefix}: nested deeper than {MAX_WALK_DEPTH} directories"
        ));
        return Ok(());
    }
    for name in dir.names()? {
        if out.len() >= MAX_FILES {
            problems.push(format!("more than {MAX_FILES} files"));
            return Ok(());
        }
        let rel = format!("{prefix}/{name}");
        match dir.kind(&name)? {
            Some(FileType::Directory) => {
                walk_files(&dir.open_dir(&name)?, &rel, depth + 1, out, problems)?
            }
            Some(FileType::RegularFile) => out.push(rel),
            Some(_) => problems.push(format!("{rel}: not a regular file or directory")),
            None => {}
        }
    }
    Ok(())
}

/// Every `INSTANCE` under `VALUE.OBJECT` of a package file, through `cosnap-cim`'s
/// bounded reader.
pub fn parse_instances(text: &str) -> std::result::Result<Vec<Instance>, String> {
    use cosnap_cim::xml;
    let doc = xml::parse_document(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for node in doc.descendants().filter(|n| n.has_tag_name("VALUE.OBJECT")) {
        let inst = xml::elements(node)
            .find(|c| c.has_tag_name("INSTANCE"))
            .ok_or_else(|| "VALUE.OBJECT without INSTANCE".to_string())?;
        out.push(xml::parse_instance(inst, None).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The manifest's entries, or a problem.
fn read_manifest(
    dir: &DirHandle,
    meta: &PackageMeta,
) -> std::result::Result<Vec<(String, String, String)>, String> {
    let text = read_text(dir, &meta.manifest, MAX_TEXT_BYTES)
        .map_err(|e| format!("manifest {}: {e}", meta.manifest))?;
    let entries = manifest::parse(&text)?;
    if entries.len() > MAX_FILES {
        return Err(format!("manifest lists more than {MAX_FILES} files"));
    }
    if let Some((_, p, _)) = entries.iter().find(|(_, p, _)| !is_inside(p)) {
        return Err(format!("manifest path {p:?} leaves the package"));
    }
    Ok(entries)
}

/// Files that belong to the package: the top-level ones present, everything under the
/// VM directories.
fn present_files(
    dir: &DirHandle,
    meta: &PackageMeta,
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let mut present: BTreeSet<String> = [
        meta.descriptor.clone(),
        meta.collection_file.clone(),
        PACKAGE_JSON.to_string(),
    ]
    .into_iter()
    .filter(|r| dir.open_file(r).is_ok())
    .collect();
    for vm in &meta.vms {
        let mut files = Vec::new();
        let walked = dir
            .open_dir(&vm.dir)
            .and_then(|d| walk_files(&d, &vm.dir, 0, &mut files, problems));
        if let Err(e) = walked {
            problems.push(format!("VM directory {}: {e}", vm.dir));
        }
        present.extend(files);
    }
    present
}

/// Checks a package: every file's digest against the manifest, no file left out of it, the
/// descriptor's structure, every configuration file readable, every image's structure
/// (`check`), size, and — for differencing images — that the parent is present and the
/// chain opens through it.
pub fn verify_package(root: &Path) -> Result<VerifyReport> {
    let (canon, dir) = open_package(root)?;
    let meta = read_meta(&dir)?;
    verify_in(&canon, &dir, &meta)
}

/// [`verify_package`] then, if it found no problem, [`read_package`], both through one
/// handle on the package directory: what is read is what was verified, even if the
/// directory is renamed or replaced meanwhile. `Ok(Err(report))` = the problems found.
pub fn verify_and_read_package(root: &Path) -> Result<std::result::Result<Package, VerifyReport>> {
    let (canon, dir) = open_package(root)?;
    let meta = read_meta(&dir)?;
    let report = verify_in(&canon, &dir, &meta)?;
    if !report.ok() {
        return Ok(Err(report));
    }
    read_in(canon, &dir, meta).map(Ok)
}

fn verify_in(canon: &Path, dir: &DirHandle, meta: &PackageMeta) -> Result<VerifyReport> {
    // Parent images (PreserveChain) may live beside the package, never elsewhere.
    let outer = canon.parent().and_then(|p| DirHandle::open(p).ok());
    let mut rep = VerifyReport::default();
    let entries = read_manifest(dir, meta).unwrap_or_else(|e| {
        rep.problems.push(e);
        Vec::new()
    });
    let present = present_files(dir, meta, &mut rep.problems);
    check_listing(meta, &entries, &present, &mut rep.problems);
    check_digests(dir, &entries, &mut rep);
    check_descriptor(dir, meta, &mut rep.problems);
    check_configurations(dir, meta, &mut rep.problems);
    for vm in &meta.vms {
        for d in &vm.disks {
            let Some(rel) = &d.file else { continue };
            rep.images_checked += 1;
            if let Err(e) = dir.open_file(rel) {
                rep.problems.push(format!("{rel}: {e}"));
                continue;
            }
            verify_image(
                &dir.proc_path(rel),
                rel,
                d,
                outer.as_ref(),
                &mut rep.problems,
            );
        }
    }
    Ok(rep)
}

fn check_listing(
    meta: &PackageMeta,
    entries: &[(String, String, String)],
    present: &BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    let listed: BTreeSet<&str> = entries.iter().map(|(_, p, _)| p.as_str()).collect();
    for f in present.iter().filter(|f| !listed.contains(f.as_str())) {
        problems.push(format!("{f}: not listed in the manifest"));
    }
    for must in [
        meta.descriptor.as_str(),
        meta.collection_file.as_str(),
        PACKAGE_JSON,
    ] {
        if !listed.contains(must) && !problems.iter().any(|p| p.starts_with(must)) {
            problems.push(format!("{must}: not listed in the manifest"));
        }
    }
}

fn check_digests(dir: &DirHandle, entries: &[(String, String, String)], rep: &mut VerifyReport) {
    for (_, rel, digest) in entries {
        rep.files_checked += 1;
        let got = dir
            .open_file(rel)
            .map_err(|e| e.to_string())
            .and_then(|f| manifest::sha256_open(&f, &dir.show(rel)).map_err(|e| e.to_string()));
        match got {
            Ok(d) if &d == digest => {}
            Ok(d) => rep.problems.push(format!(
                "{rel}: digest {d} does not match the manifest's {digest}"
            )),
            Err(e) => rep.problems.push(format!("{rel}: {e}")),
        }
    }
}

fn check_descriptor(dir: &DirHandle, meta: &PackageMeta, problems: &mut Vec<String>) {
    let size_of = |rel: &str| -> std::result::Result<u64, String> {
        dir.open_file(rel)
            .and_then(|f| f.metadata())
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    };
    let checked = read_text(dir, &meta.descriptor, MAX_TEXT_BYTES)
        .and_then(|text| ovf::check_structure(&text, &size_of));
    if let Err(e) = checked {
        problems.push(format!("{}: {e}", meta.descriptor));
    }
}

fn check_configurations(dir: &DirHandle, meta: &PackageMeta, problems: &mut Vec<String>) {
    let rels = std::iter::once(&meta.collection_file).chain(
        meta.vms
            .iter()
            .flat_map(|v| [&v.config, &v.snapshot_config]),
    );
    for rel in rels {
        match read_text(dir, rel, MAX_TEXT_BYTES).and_then(|t| parse_instances(&t)) {
            Ok(insts) if !insts.is_empty() => {}
            Ok(_) => problems.push(format!("{rel}: holds no instance")),
            Err(e) => problems.push(format!("{rel}: {e}")),
        }
    }
}

/// The chain of a package image as cosnap recorded it, nothing probed: the top layer has
/// the format the package records, and each layer below is a file of an earlier package,
/// whose format is the one its name records (cosnap names every exported image by its
/// format). Every layer below must be a regular file reached without a symbolic link
/// inside the directory that holds the package (where the base export of a PreserveChain
/// differential is): a package cannot make a reader follow a parent link to an
/// arbitrary host file. The top's parent must be the one the package records.
fn recorded_chain(
    path: &Path,
    d: &DiskRecord,
    outer: Option<&DirHandle>,
) -> std::result::Result<Vec<LayerSpec>, String> {
    let mut layers = vec![LayerSpec::new(path, d.format)];
    let named = cosnap_disk::parent_path_as(&layers[0]).map_err(|e| e.to_string())?;
    check_recorded_parent(path, d, named.as_deref(), outer)?;
    let mut next = named;
    while let Some(parent) = next {
        if layers.len() >= cosnap_disk::MAX_CHAIN_DEPTH {
            return Err(format!(
                "chain deeper than {} layers",
                cosnap_disk::MAX_CHAIN_DEPTH
            ));
        }
        let layer = parent_layer(&parent, outer)?;
        next = cosnap_disk::parent_path_as(&layer).map_err(|e| e.to_string())?;
        layers.push(layer);
    }
    Ok(layers)
}

/// The parent the top layer names must lie beside the package and be the recorded one.
fn check_recorded_parent(
    path: &Path,
    d: &DiskRecord,
    named: Option<&Path>,
    outer: Option<&DirHandle>,
) -> std::result::Result<(), String> {
    if let Some(p) = named {
        check_beside(p, outer)?;
    }
    match (&d.parent, named) {
        (None, None) => Ok(()),
        (None, Some(p)) => Err(format!(
            "has parent {} the package does not record",
            p.display()
        )),
        (Some(want), None) => Err(format!("the chain does not reach its parent {want}")),
        (Some(want), Some(got)) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let want_abs = fs::canonicalize(dir.join(want))
                .map_err(|e| format!("parent {want} is missing: {e}"))?;
            match fs::canonicalize(got) {
                Ok(g) if g == want_abs => Ok(()),
                _ => Err(format!("chain goes to {} instead of {want}", got.display())),
            }
        }
    }
}

/// A layer below the package image: beside the package, its format from its name.
fn parent_layer(
    parent: &Path,
    outer: Option<&DirHandle>,
) -> std::result::Result<LayerSpec, String> {
    check_beside(parent, outer)?;
    let format = parent
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_name)
        .ok_or_else(|| {
            format!(
                "parent image {} has no image format in its name (.vhdx, .avhdx, .qcow2, .raw)",
                parent.display()
            )
        })?;
    Ok(LayerSpec::new(parent, format))
}

fn check_beside(layer: &Path, outer: Option<&DirHandle>) -> std::result::Result<(), String> {
    let Some(outer) = outer else {
        return Err("has parent images and no directory around the package".into());
    };
    let inside = fs::canonicalize(layer)
        .ok()
        .and_then(|c| c.strip_prefix(outer.shown()).ok().map(Path::to_path_buf))
        .filter(|r| outer.open_file(r).is_ok());
    match inside {
        Some(_) => Ok(()),
        None => Err(format!(
            "parent image {} lies outside {} (or is reached through a symbolic link)",
            layer.display(),
            outer.shown().display()
        )),
    }
}

fn verify_image(
    path: &Path,
    rel: &str,
    d: &DiskRecord,
    outer: Option<&DirHandle>,
    problems: &mut Vec<String>,
) {
    let layers = match recorded_chain(path, d, outer) {
        Ok(layers) => layers,
        Err(p) => {
            problems.push(format!("{rel}: {p}"));
            return;
        }
    };
    match cosnap_disk::check_as(&layers[0]) {
        Ok(c) if c.corruptions.is_empty() => {}
        Ok(c) => problems.push(format!("{rel}: image check: {}", c.corruptions.join("; "))),
        Err(e) => {
            problems.push(format!("{rel}: {e}"));
            return;
        }
    }
    match cosnap_disk::info_of(&layers) {
        Ok(info) if info.virtual_size != d.virtual_size => problems.push(format!(
            "{rel}: virtual size {} but the package says {}",
            info.virtual_size, d.virtual_size
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("{rel}: {e}")),
    }
}

fn read_instances(dir: &DirHandle, rel: &str) -> Result<Vec<Instance>> {
    read_text(dir, rel, MAX_TEXT_BYTES)
        .and_then(|t| parse_instances(&t))
        .map_err(|e| ExportError::bad_package(dir.show(rel), e))
}

/// Reads a package for import (after [`verify_package`], if the caller wants the digests checked).
pub fn read_package(root: &Path) -> Result<Package> {
    let (root, dir) = open_package(root)?;
    let meta = read_meta(&dir)?;
    read_in(root, &dir, meta)
}

fn read_in(root: PathBuf, dir: &DirHandle, meta: PackageMeta) -> Result<Package> {
    let mut coll = read_instances(dir, &meta.collection_file)?.into_iter();
    let (collection, snapshot) = match (coll.next(), coll.next()) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(ExportError::bad_package(
                dir.show(&meta.collection_file),
                "needs the collection and the snapshot",
            ));
        }
    };
    let mut vms = Vec::new();
    for rec in &meta.vms {
        let mut insts = read_instances(dir, &rec.config)?.into_iter();
        let (system, settings) = match (insts.next(), insts.next()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(ExportError::bad_package(
                    dir.show(&rec.config),
                    "needs the system and its settings",
                ));
            }
        };
        let resources: Vec<Instance> = insts.collect();
        let mut disk_files = Vec::new();
        let mut disk_handles = Vec::new();
        for d in &rec.disks {
            let (file, handle) = match &d.file {
                Some(f) => {
                    let opened = dir
                        .open_file(f)
                        .map_err(|e| ExportError::bad_package(dir.show(f), e.to_string()))?;
                    (Some(root.join(f)), Some(std::sync::Arc::new(opened)))
                }
                None => (None, None),
            };
            disk_files.push(file);
            disk_handles.push(handle);
        }
        vms.push(PackageVm {
            record: rec.clone(),
            system,
            settings,
            resources,
            disk_files,
            disk_handles,
        });
    }
    Ok(Package {
        root,
        meta,
        collection,
        snapshot,
        vms,
    })
}
