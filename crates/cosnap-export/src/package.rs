//! Writing, verifying, reading and recovering packages.
//!
//! Atomicity: before anything is created, a journal `.cosnap-export-<uuid>.journal` in the
//! export directory lists every staged name and the final name it will get. Everything is
//! written under staged names (`.<final>.cosnap-staging-<uuid>`) at the same depth as the
//! final names, so relative parent links of differencing disks stay valid after the rename.
//! Files and directories are fsynced, the manifest is written last, then renamed into
//! place (with a sub-directory: one rename of the whole package), the directory fsynced and
//! the journal removed. A failure or cancellation rolls back through the journal, and
//! [`recover_export_dir`] does the same after a crash.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cosnap_cim::{Instance, Value};
use cosnap_disk::{CancelToken, FlattenJob, Format};
use serde::{Deserialize, Serialize};

use crate::names::sanitize;
use crate::ovf::{OvfDisk, OvfFile, OvfVm};
use crate::plan::{BackupIntent, Differential, DiskPlan, ExportOptions, ExportPlan};
use crate::{ExportError, Result, cimxml, manifest, ovf};

pub const PACKAGE_JSON: &str = "cosnap-package.json";
pub const PACKAGE_FORMAT: &str = "cosnap-export";
pub const PACKAGE_FORMAT_VERSION: u32 = 1;
const VM_CONFIG_DIR: &str = "Virtual Machines";
const SNAPSHOT_DIR: &str = "Snapshots";
const DISK_DIR: &str = "Virtual Hard Disks";
const JOURNAL_PREFIX: &str = ".cosnap-export-";
const JOURNAL_SUFFIX: &str = ".journal";
const STAGING_MARK: &str = ".cosnap-staging-";

/// One disk in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub id: String,
    /// `ovf:diskId` in the descriptor.
    pub ovf_disk_id: String,
    /// Package-relative path of the exported file; `None` without storage.
    pub file: Option<String>,
    pub format: Format,
    pub virtual_size: u64,
    /// Guest bytes written as data.
    pub data_bytes: u64,
    /// PreserveChain differential: the parent's path relative to this file's directory (as
    /// the image records it).
    pub parent: Option<String>,
    /// Differential: the guest ranges `[start, end)` that changed since the base.
    pub changed_ranges: Option<Vec<[u64; 2]>>,
    pub resource_instance_id: Option<String>,
}

/// One VM in `cosnap-package.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    /// The VM's directory, relative to the package.
    pub dir: String,
    /// `Virtual Machines/<vm-id>.xml`, relative to the package.
    pub config: String,
    /// `Snapshots/<snapshot-settings-id>.xml`, relative to the package.
    pub snapshot_config: String,
    pub disks: Vec<DiskRecord>,
}

/// `cosnap-package.json`: the machine-readable description of a package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageMeta {
    pub format: String,
    pub format_version: u32,
    pub export_id: String,
    pub name: String,
    pub created_unix: u64,
    pub collection_id: String,
    pub collection_name: String,
    pub snapshot_id: String,
    pub snapshot_name: String,
    /// `full` or `differential`.
    pub kind: String,
    /// Set for differentials.
    pub intent: Option<BackupIntent>,
    pub differential: Option<Differential>,
    /// Why a requested differential was written as a full export, if it was.
    pub fallback_to_full: Option<String>,
    pub copy_storage: bool,
    pub digest_algorithm: String,
    pub manifest: String,
    pub descriptor: String,
    /// Holds the collection and snapshot-collection instances.
    pub collection_file: String,
    pub vms: Vec<VmRecord>,
}

/// What [`write_package`] produced.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// The directory that holds the package (where `cosnap-package.json` is).
    pub path: PathBuf,
    pub meta: PackageMeta,
    /// Bytes of all files written (apparent sizes).
    pub bytes_written: u64,
}

/// Outcome of [`verify_package`]; the package is good when `problems` is empty.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub files_checked: usize,
    pub images_checked: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A VM read back from a package.
#[derive(Debug, Clone)]
pub struct PackageVm {
    pub record: VmRecord,
    pub system: Instance,
    pub settings: Instance,
    pub resources: Vec<Instance>,
    /// Absolute paths of the exported disk files, in `record.disks` order (`None` without storage).
    pub disk_files: Vec<Option<PathBuf>>,
}

/// A package read back for import.
#[derive(Debug, Clone)]
pub struct Package {
    pub root: PathBuf,
    pub meta: PackageMeta,
    pub collection: Instance,
    pub snapshot: Instance,
    pub vms: Vec<PackageVm>,
}

/// What [`recover_export_dir`] cleaned up.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub removed: Vec<PathBuf>,
    /// Exports whose commit had finished (only leftovers were removed).
    pub completed: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    export_id: String,
    /// `(staged, final)` absolute paths.
    items: Vec<(PathBuf, PathBuf)>,
    /// The final manifest path: it exists only once the commit is complete.
    manifest_final: PathBuf,
}

fn id_of(inst: &Instance, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| {
            inst.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn name_of(inst: &Instance, fallback: &str) -> String {
    inst.get("ElementName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_string()
}

fn fsync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ExportError::io(path, e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ExportError::io(path, e))?;
    f.write_all(bytes).map_err(|e| ExportError::io(path, e))?;
    f.sync_all().map_err(|e| ExportError::io(path, e))
}

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir(path).map_err(|e| ExportError::io(path, e))
}

fn remove_any(path: &Path) -> std::io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map(|_| true),
        Ok(_) => fs::remove_file(path).map(|_| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Fsyncs every file and directory under `path` (and `path` itself).
fn fsync_tree(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| ExportError::io(path, e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| ExportError::io(path, e))? {
            let entry = entry.map_err(|e| ExportError::io(path, e))?;
            fsync_tree(&entry.path())?;
        }
    }
    if meta.is_dir() || meta.is_file() {
        fsync_path(path)
    } else {
        Ok(())
    }
}

/// Every regular file under `dir`, as paths relative to `base` with `/` separators.
fn walk_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let p = entry.path();
        if ty.is_dir() {
            walk_files(base, &p, out)?;
        } else {
            let rel = p.strip_prefix(base).unwrap_or(&p);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Facts about a disk's source chain, opened as recorded when the plan records it.
fn source_info(d: &DiskPlan) -> Result<cosnap_disk::ImageInfo> {
    Ok(if d.layers.is_empty() {
        cosnap_disk::info(&d.source)?
    } else {
        cosnap_disk::info_of(&d.layers)?
    })
}

/// The ranges changed above `base` in a disk's source chain (opened as recorded).
fn source_changed_ranges(d: &DiskPlan, base: &Path) -> Result<Vec<std::ops::Range<u64>>> {
    if d.layers.is_empty() {
        return Ok(cosnap_disk::changed_ranges(&d.source, base)?);
    }
    let depth = d
        .layers
        .iter()
        .position(|l| l.path == base)
        .ok_or_else(|| {
            cosnap_disk::DiskError::invalid(
                &d.source,
                format!("{} is not in this disk's recorded chain", base.display()),
            )
        })?;
    Ok(cosnap_disk::changed_ranges_of(&d.layers, depth)?)
}

fn file_ext(format: Format, differencing: bool) -> &'static str {
    match (format, differencing) {
        (Format::Vhdx, false) => "vhdx",
        (Format::Vhdx, true) => "avhdx",
        (Format::Qcow2, _) => "qcow2",
        (Format::Raw, _) => "raw",
    }
}

/// Where the package's files live while being written: package-relative path → path now.
struct Staging {
    export_dir: PathBuf,
    uuid: String,
    /// Some(staged root) with a sub-directory; None = items staged one by one in export_dir.
    root: Option<PathBuf>,
}

impl Staging {
    fn staged_top(&self, top: &str) -> PathBuf {
        self.export_dir
            .join(format!(".{top}{STAGING_MARK}{}", self.uuid))
    }
    fn loc(&self, rel: &str) -> PathBuf {
        match &self.root {
            Some(root) => root.join(rel),
            None => {
                let (top, rest) = rel.split_once('/').unwrap_or((rel, ""));
                let p = self.staged_top(top);
                if rest.is_empty() { p } else { p.join(rest) }
            }
        }
    }
}

fn rollback(journal_path: &Path, journal: &Journal) {
    for (staged, fin) in &journal.items {
        let _ = remove_any(staged);
        let _ = remove_any(fin);
    }
    let _ = fs::remove_file(journal_path);
    if let Some(dir) = journal_path.parent() {
        let _ = fsync_path(dir);
    }
}

/// Names derived from the plan: ids, display names, the package name, the VM directories.
struct Names {
    collection_id: String,
    snapshot_id: String,
    collection_name: String,
    snapshot_name: String,
    base_name: String,
    vm_dirs: Vec<String>,
}

fn names(plan: &ExportPlan) -> Names {
    let collection_id = id_of(&plan.collection, &["CollectionID", "InstanceID", "Name"]);
    let snapshot_id = id_of(&plan.snapshot, &["CollectionID", "InstanceID"]);
    let collection_name = name_of(&plan.collection, &collection_id);
    let snapshot_name = name_of(&plan.snapshot, &snapshot_id);
    // Snapshots are named "<collection> - (<time>)" by default: no need to say it twice.
    let default_named = snapshot_name
        .strip_prefix(collection_name.as_str())
        .is_some_and(|rest| rest.starts_with(" - "));
    let base_name = if default_named {
        sanitize(&snapshot_name)
    } else {
        sanitize(&format!("{collection_name}_{snapshot_name}"))
    };
    let mut vm_dirs: Vec<String> = Vec::new();
    for vm in &plan.vms {
        let vm_id = id_of(&vm.system, &["Name", "InstanceID"]);
        let mut d = sanitize(&format!("{}_{}", name_of(&vm.system, &vm_id), vm_id));
        let mut n = 2;
        while vm_dirs.contains(&d) {
            d = sanitize(&format!("{}_{}_{n}", name_of(&vm.system, &vm_id), vm_id));
            n += 1;
        }
        vm_dirs.push(d);
    }
    Names {
        collection_id,
        snapshot_id,
        collection_name,
        snapshot_name,
        base_name,
        vm_dirs,
    }
}

/// The top-level entries a flat (no sub-directory) export creates, the manifest last
/// (it is committed last).
fn flat_tops(name: &str, vm_dirs: &[String]) -> Vec<String> {
    let mut tops: Vec<String> = vm_dirs.to_vec();
    tops.extend([
        format!("{name}.ovf"),
        format!("{name}.collection.xml"),
        PACKAGE_JSON.to_string(),
    ]);
    tops.push(format!("{name}.mf"));
    tops
}

/// The checks [`write_package`] makes before it writes anything (absolute existing
/// directory, a consistent plan, no collision without a sub-directory), so a caller can
/// refuse a request before starting a job. Writes nothing.
pub fn preflight(plan: &ExportPlan, export_dir: &Path, opts: &ExportOptions) -> Result<()> {
    if !export_dir.is_absolute() {
        return Err(ExportError::RelativeDirectory(export_dir.to_path_buf()));
    }
    if !export_dir.is_dir() {
        return Err(ExportError::NoDirectory(export_dir.to_path_buf()));
    }
    validate_plan(plan, opts)?;
    if !opts.create_subdirectory {
        let n = names(plan);
        for t in flat_tops(&n.base_name, &n.vm_dirs) {
            let fin = export_dir.join(t);
            if fs::symlink_metadata(&fin).is_ok() {
                return Err(ExportError::Collision(fin));
            }
        }
    }
    Ok(())
}

/// Writes the package for `plan` under `export_dir` and returns where it is.
///
/// `progress(done, total)` reports the fraction complete (flatten then hashing).
/// Errors leave nothing behind: staging and journal are removed.
pub fn write_package(
    plan: &ExportPlan,
    export_dir: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    cancel: &CancelToken,
) -> Result<PackageReport> {
    if !export_dir.is_absolute() {
        return Err(ExportError::RelativeDirectory(export_dir.to_path_buf()));
    }
    if !export_dir.is_dir() {
        return Err(ExportError::NoDirectory(export_dir.to_path_buf()));
    }
    validate_plan(plan, opts)?;
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let Names {
        collection_id,
        snapshot_id,
        collection_name,
        snapshot_name,
        base_name,
        vm_dirs,
    } = names(plan);

    let (name, staging, items, package_dir, manifest_final) = if opts.create_subdirectory {
        let mut name = base_name.clone();
        let mut n = 2;
        while fs::symlink_metadata(export_dir.join(&name)).is_ok() {
            name = sanitize(&format!("{base_name}-{n}"));
            n += 1;
        }
        let root = export_dir.join(format!(".{name}{STAGING_MARK}{uuid}"));
        let fin = export_dir.join(&name);
        let manifest_final = fin.join(format!("{name}.mf"));
        let staging = Staging {
            export_dir: export_dir.to_path_buf(),
            uuid: uuid.clone(),
            root: Some(root.clone()),
        };
        (
            name,
            staging,
            vec![(root, fin.clone())],
            fin,
            manifest_final,
        )
    } else {
        let name = base_name.clone();
        let staging = Staging {
            export_dir: export_dir.to_path_buf(),
            uuid: uuid.clone(),
            root: None,
        };
        let tops = flat_tops(&name, &vm_dirs);
        let mut items = Vec::new();
        for t in &tops {
            let fin = export_dir.join(t);
            if fs::symlink_metadata(&fin).is_ok() {
                return Err(ExportError::Collision(fin));
            }
            items.push((staging.staged_top(t), fin));
        }
        let manifest_final = export_dir.join(format!("{name}.mf"));
        (
            name,
            staging,
            items,
            export_dir.to_path_buf(),
            manifest_final,
        )
    };

    let journal = Journal {
        export_id: uuid.clone(),
        items,
        manifest_final,
    };
    let journal_path = export_dir.join(format!("{JOURNAL_PREFIX}{uuid}{JOURNAL_SUFFIX}"));
    write_file(
        &journal_path,
        &serde_json::to_vec_pretty(&journal).expect("journal serialises"),
    )?;
    fsync_path(export_dir)?;

    let ctx = WriteCtx {
        plan,
        opts,
        staging: &staging,
        name: &name,
        vm_dirs: &vm_dirs,
        progress,
        cancel,
    };
    match ctx.write(
        &uuid,
        &collection_id,
        &collection_name,
        &snapshot_id,
        &snapshot_name,
    ) {
        Ok((meta, bytes_written)) => {
            // Commit: every item but the manifest, then the manifest (last in `items`).
            for (staged, fin) in &journal.items {
                if let Err(e) = fs::rename(staged, fin) {
                    rollback(&journal_path, &journal);
                    return Err(ExportError::io(fin, e));
                }
            }
            let synced = fsync_path(export_dir);
            let _ = fs::remove_file(&journal_path);
            synced?;
            fsync_path(export_dir)?;
            Ok(PackageReport {
                path: package_dir,
                meta,
                bytes_written,
            })
        }
        Err(e) => {
            rollback(&journal_path, &journal);
            Err(e)
        }
    }
}

fn validate_plan(plan: &ExportPlan, opts: &ExportOptions) -> Result<()> {
    if plan.vms.is_empty() {
        return Err(ExportError::Plan(
            "the snapshot holds no virtual machine".into(),
        ));
    }
    for vm in &plan.vms {
        let mut ids = BTreeSet::new();
        for d in &vm.disks {
            if !ids.insert(&d.id) {
                return Err(ExportError::Plan(format!(
                    "disk id {} appears twice in one VM",
                    d.id
                )));
            }
            if d.base_layer.is_some() != plan.differential.is_some() {
                return Err(ExportError::Plan(format!(
                    "disk {}: a differential export needs a base layer for every disk, a full export none",
                    d.id
                )));
            }
            if opts.copy_storage
                && d.base_layer.is_some()
                && opts.intent == BackupIntent::PreserveChain
                && d.base_export_file.is_none()
            {
                return Err(ExportError::Plan(format!(
                    "disk {}: PreserveChain needs the base export's copy of this disk, and no export of the base holding it is on record (export the base with storage, or use Merge)",
                    d.id
                )));
            }
            if let Some(p) = &d.base_export_file
                && opts.copy_storage
                && d.base_layer.is_some()
                && !p.is_file()
            {
                return Err(ExportError::Plan(format!(
                    "disk {}: the base export's file {} is gone",
                    d.id,
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

struct WriteCtx<'a> {
    plan: &'a ExportPlan,
    opts: &'a ExportOptions,
    staging: &'a Staging,
    name: &'a str,
    vm_dirs: &'a [String],
    progress: &'a (dyn Fn(u64, u64) + Sync),
    cancel: &'a CancelToken,
}

/// Progress scale: flatten reports into [0, FLATTEN_SHARE], hashing the rest.
const PROGRESS_TOTAL: u64 = 10_000;
const FLATTEN_SHARE: u64 = 9_000;

impl WriteCtx<'_> {
    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(ExportError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn write(
        &self,
        uuid: &str,
        collection_id: &str,
        collection_name: &str,
        snapshot_id: &str,
        snapshot_name: &str,
    ) -> Result<(PackageMeta, u64)> {
        let (plan, opts, st) = (self.plan, self.opts, self.staging);
        if let Some(root) = &st.root {
            mkdir(root)?;
        }
        let differential = plan.differential.is_some();
        let mut vm_records = Vec::new();
        let mut jobs: Vec<FlattenJob> = Vec::new();
        let mut job_slots: Vec<(usize, usize)> = Vec::new();
        // Package-relative path → SHA-256, for the disks (digested as they are written).
        let mut digests: std::collections::BTreeMap<String, String> = Default::default();
        for (vi, vm) in plan.vms.iter().enumerate() {
            let dir = &self.vm_dirs[vi];
            let vm_id = id_of(&vm.system, &["Name", "InstanceID"]);
            mkdir(&st.loc(dir))?;
            mkdir(&st.loc(&format!("{dir}/{VM_CONFIG_DIR}")))?;
            mkdir(&st.loc(&format!("{dir}/{SNAPSHOT_DIR}")))?;
            let config = format!("{dir}/{VM_CONFIG_DIR}/{}.xml", sanitize(&vm_id));
            let mut config_insts: Vec<&Instance> = vec![&vm.system, &vm.settings];
            config_insts.extend(vm.resources.iter());
            write_file(&st.loc(&config), cimxml::document(&config_insts).as_bytes())?;
            let snap_settings_id = id_of(&vm.settings, &["InstanceID"]);
            let snapshot_config =
                format!("{dir}/{SNAPSHOT_DIR}/{}.xml", sanitize(&snap_settings_id));
            let mut snap_insts: Vec<&Instance> = vec![&vm.settings];
            snap_insts.extend(vm.resources.iter());
            write_file(
                &st.loc(&snapshot_config),
                cimxml::document(&snap_insts).as_bytes(),
            )?;
            if opts.copy_storage {
                mkdir(&st.loc(&format!("{dir}/{DISK_DIR}")))?;
            }
            let mut disks = Vec::new();
            let mut used = BTreeSet::new();
            for (di, d) in vm.disks.iter().enumerate() {
                let chained = differential && opts.intent == BackupIntent::PreserveChain;
                // A raw base gets a qcow2 overlay (raw has no parent pointer).
                let dest_format = if chained && d.format == Format::Raw {
                    Format::Qcow2
                } else {
                    d.format
                };
                let mut rec = DiskRecord {
                    id: d.id.clone(),
                    ovf_disk_id: format!("vm{}-disk{}", vi + 1, di + 1),
                    file: None,
                    format: dest_format,
                    virtual_size: 0,
                    data_bytes: 0,
                    parent: None,
                    changed_ranges: None,
                    resource_instance_id: d.resource_instance_id.clone(),
                };
                if opts.copy_storage {
                    let stem = sanitize(&d.id);
                    let ext = file_ext(dest_format, chained);
                    let mut file_name = format!("{stem}.{ext}");
                    let mut n = 2;
                    while !used.insert(file_name.clone()) {
                        file_name = format!("{stem}-{n}.{ext}");
                        n += 1;
                    }
                    let rel = format!("{dir}/{DISK_DIR}/{file_name}");
                    jobs.push(FlattenJob {
                        source: d.source.clone(),
                        base: if chained { d.base_layer.clone() } else { None },
                        dest: st.loc(&rel),
                        dest_format,
                        dest_parent: if chained {
                            d.base_export_file.clone()
                        } else {
                            None
                        },
                        source_layers: d.layers.clone(),
                        dest_parent_format: if chained { d.base_export_format } else { None },
                    });
                    job_slots.push((vi, di));
                    rec.file = Some(rel);
                } else {
                    rec.virtual_size = source_info(d)?.virtual_size;
                }
                if differential && !chained {
                    // Merge (or no storage): record what changed; the file is a synthetic full.
                    if let Some(base) = &d.base_layer {
                        let ranges = source_changed_ranges(d, base)?;
                        rec.changed_ranges =
                            Some(ranges.iter().map(|r| [r.start, r.end]).collect());
                    }
                }
                disks.push(rec);
            }
            vm_records.push(VmRecord {
                id: vm_id,
                name: name_of(&vm.system, ""),
                dir: dir.clone(),
                config,
                snapshot_config,
                disks,
            });
        }
        self.check_cancel()?;

        // The disks, in parallel, through the disk engine.
        if !jobs.is_empty() {
            let flatten_progress = |done: u64, total: u64| {
                let frac = if total == 0 {
                    0
                } else {
                    (done.min(total) as u128 * FLATTEN_SHARE as u128 / total as u128) as u64
                };
                (self.progress)(frac, PROGRESS_TOTAL);
            };
            let reports = cosnap_disk::flatten_all_digested(
                &jobs,
                opts.threads.max(1),
                &flatten_progress,
                self.cancel,
            )?;
            for ((vi, di), (job, rep)) in job_slots.iter().zip(jobs.iter().zip(reports)) {
                let rec = &mut vm_records[*vi].disks[*di];
                if let (Some(rel), Some(sha)) = (&rec.file, rep.sha256.clone()) {
                    digests.insert(rel.clone(), sha);
                }
                rec.virtual_size = rep.virtual_size;
                rec.data_bytes = rep.data_bytes;
                rec.format = rep.format;
                if job.dest_parent.is_some() {
                    rec.changed_ranges =
                        Some(rep.ranges.iter().map(|r| [r.start, r.end]).collect());
                    rec.parent = job
                        .dest_parent
                        .as_ref()
                        .map(|p| relative_to(p, job.dest.parent().unwrap_or(Path::new("/"))));
                }
            }
        }
        (self.progress)(FLATTEN_SHARE, PROGRESS_TOTAL);
        self.check_cancel()?;

        // Descriptor, collection file, package JSON.
        let mut ovf_vms = Vec::new();
        for (vi, vm) in plan.vms.iter().enumerate() {
            let rec = &vm_records[vi];
            let mut disks = Vec::new();
            for d in &rec.disks {
                let file = match &d.file {
                    Some(rel) => {
                        let size = fs::metadata(st.loc(rel))
                            .map_err(|e| ExportError::io(st.loc(rel), e))?
                            .len();
                        Some(OvfFile {
                            file_id: format!("file-{}", d.ovf_disk_id),
                            rel_path: rel.clone(),
                            size,
                        })
                    }
                    None => None,
                };
                disks.push(OvfDisk {
                    disk_id: d.ovf_disk_id.clone(),
                    file,
                    capacity: d.virtual_size,
                    format: d.format,
                    element_name: format!("Disk {}", d.id),
                });
            }
            ovf_vms.push(OvfVm {
                id: rec.id.clone(),
                name: rec.name.clone(),
                resources: vm.resources.clone(),
                disks,
            });
        }
        let descriptor = format!("{}.ovf", self.name);
        write_file(
            &st.loc(&descriptor),
            ovf::descriptor(collection_id, collection_name, snapshot_name, &ovf_vms).as_bytes(),
        )?;
        let collection_file = format!("{}.collection.xml", self.name);
        write_file(
            &st.loc(&collection_file),
            cimxml::document(&[&plan.collection, &plan.snapshot]).as_bytes(),
        )?;
        let manifest_name = format!("{}.mf", self.name);
        let meta = PackageMeta {
            format: PACKAGE_FORMAT.into(),
            format_version: PACKAGE_FORMAT_VERSION,
            export_id: uuid.to_string(),
            name: self.name.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            collection_id: collection_id.into(),
            collection_name: collection_name.into(),
            snapshot_id: snapshot_id.into(),
            snapshot_name: snapshot_name.into(),
            kind: if differential { "differential" } else { "full" }.into(),
            intent: if differential {
                Some(opts.intent)
            } else {
                None
            },
            differential: plan.differential.clone(),
            fallback_to_full: plan.fallback_to_full.clone(),
            copy_storage: opts.copy_storage,
            digest_algorithm: manifest::ALGORITHM.into(),
            manifest: manifest_name.clone(),
            descriptor: descriptor.clone(),
            collection_file: collection_file.clone(),
            vms: vm_records,
        };
        write_file(
            &st.loc(PACKAGE_JSON),
            &serde_json::to_vec_pretty(&meta).expect("meta serialises"),
        )?;

        // Everything durable before hashing, so the digests describe what is on disk.
        let mut rels: Vec<String> = vec![descriptor, collection_file, PACKAGE_JSON.to_string()];
        for d in self.vm_dirs {
            let top = st.loc(d);
            fsync_tree(&top)?;
            let mut files = Vec::new();
            walk_files(&top, &top, &mut files).map_err(|e| ExportError::io(&top, e))?;
            rels.extend(files.into_iter().map(|f| format!("{d}/{f}")));
        }
        match &st.root {
            Some(root) => fsync_path(root)?,
            None => fsync_path(&st.export_dir)?,
        }
        self.check_cancel()?;
        let entries = self.hash_all(&rels, digests)?;
        let bytes_written: u64 = rels
            .iter()
            .filter_map(|r| fs::metadata(st.loc(r)).ok())
            .map(|m| m.len())
            .sum();
        let manifest_path = st.loc(&manifest_name);
        write_file(&manifest_path, manifest::render(&entries).as_bytes())?;
        match &st.root {
            Some(root) => fsync_path(root)?,
            None => fsync_path(&st.export_dir)?,
        }
        (self.progress)(PROGRESS_TOTAL, PROGRESS_TOTAL);
        Ok((meta, bytes_written))
    }

    /// SHA-256 of every file in `rels` not already in `known`, a few at a time; all of
    /// them sorted by path.
    fn hash_all(
        &self,
        rels: &[String],
        known: std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>> {
        let st = self.staging;
        let rels: Vec<&String> = rels.iter().filter(|r| !known.contains_key(*r)).collect();
        let total: u64 = rels
            .iter()
            .filter_map(|r| fs::metadata(st.loc(r)).ok())
            .map(|m| m.len())
            .sum::<u64>()
            .max(1);
        let done = AtomicU64::new(0);
        let next = AtomicU64::new(0);
        let results: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        let first_err: Mutex<Option<ExportError>> = Mutex::new(None);
        let tick = |n: u64| {
            let d = done.fetch_add(n, Ordering::Relaxed) + n;
            (self.progress)(
                FLATTEN_SHARE
                    + (d.min(total) as u128 * (PROGRESS_TOTAL - FLATTEN_SHARE) as u128
                        / total as u128) as u64,
                PROGRESS_TOTAL,
            );
        };
        std::thread::scope(|s| {
            for _ in 0..self.opts.threads.clamp(1, 4) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= rels.len() || first_err.lock().unwrap().is_some() {
                            break;
                        }
                        if self.cancel.is_cancelled() {
                            first_err
                                .lock()
                                .unwrap()
                                .get_or_insert(ExportError::Cancelled);
                            break;
                        }
                        match manifest::sha256_file(&st.loc(rels[i]), &tick) {
                            Ok(d) => results.lock().unwrap().push((rels[i].clone(), d)),
                            Err(e) => {
                                first_err.lock().unwrap().get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().unwrap() {
            return Err(e);
        }
        let mut v = results.into_inner().unwrap();
        v.extend(known);
        v.sort();
        Ok(v)
    }
}

/// `target` relative to directory `from` (both absolute), with `..` steps as needed.
fn relative_to(target: &Path, from: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_string(), f.len() - common).collect();
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

fn read_meta(root: &Path) -> Result<PackageMeta> {
    let p = root.join(PACKAGE_JSON);
    let bytes = fs::read(&p).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ExportError::bad_package(root, format!("no {PACKAGE_JSON}"))
        }
        _ => ExportError::io(&p, e),
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
    for rel in std::iter::once(&meta.manifest)
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
        )
    {
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == ".." || c == ".") {
            return Err(ExportError::bad_package(
                &p,
                format!("path {rel:?} leaves the package"),
            ));
        }
    }
    Ok(meta)
}

/// Checks a package: every file's digest against the manifest, no file left out of it, the
/// descriptor's structure, every configuration file readable, every image's structure
/// (`check`), size, and — for differencing images — that the parent is present and the
/// chain opens through it.
pub fn verify_package(root: &Path) -> Result<VerifyReport> {
    let meta = read_meta(root)?;
    let mut rep = VerifyReport::default();
    let mf_path = root.join(&meta.manifest);
    let entries = match fs::read_to_string(&mf_path) {
        Ok(text) => match manifest::parse(&text) {
            Ok(e) => e,
            Err(e) => {
                rep.problems.push(e);
                Vec::new()
            }
        },
        Err(e) => {
            rep.problems
                .push(format!("manifest {}: {e}", meta.manifest));
            Vec::new()
        }
    };
    // Files that belong to the package.
    let mut present: BTreeSet<String> = [
        meta.descriptor.clone(),
        meta.collection_file.clone(),
        PACKAGE_JSON.to_string(),
    ]
    .into_iter()
    .filter(|r| root.join(r).is_file())
    .collect();
    for vm in &meta.vms {
        let mut files = Vec::new();
        let dir = root.join(&vm.dir);
        if let Err(e) = walk_files(&dir, &dir, &mut files) {
            rep.problems.push(format!("VM directory {}: {e}", vm.dir));
        }
        present.extend(files.into_iter().map(|f| format!("{}/{f}", vm.dir)));
    }
    let listed: BTreeSet<String> = entries.iter().map(|(_, p, _)| p.clone()).collect();
    for f in present.difference(&listed) {
        rep.problems
            .push(format!("{f}: not listed in the manifest"));
    }
    for must in [
        &meta.descriptor,
        &meta.collection_file,
        &PACKAGE_JSON.to_string(),
    ] {
        if !listed.contains(must.as_str())
            && !rep.problems.iter().any(|p| p.starts_with(must.as_str()))
        {
            rep.problems
                .push(format!("{must}: not listed in the manifest"));
        }
    }
    for (_, rel, digest) in &entries {
        let p = root.join(rel);
        match manifest::sha256_file(&p, &|_| {}) {
            Ok(d) if &d == digest => {}
            Ok(d) => rep.problems.push(format!(
                "{rel}: digest {d} does not match the manifest's {digest}"
            )),
            Err(e) => rep.problems.push(format!("{rel}: {e}")),
        }
        rep.files_checked += 1;
    }
    match fs::read_to_string(root.join(&meta.descriptor)) {
        Ok(text) => {
            if let Err(e) = ovf::check_structure(&text, root) {
                rep.problems.push(format!("{}: {e}", meta.descriptor));
            }
        }
        Err(e) => rep.problems.push(format!("{}: {e}", meta.descriptor)),
    }
    for rel in std::iter::once(&meta.collection_file).chain(
        meta.vms
            .iter()
            .flat_map(|v| [&v.config, &v.snapshot_config]),
    ) {
        match fs::read_to_string(root.join(rel))
            .map_err(|e| e.to_string())
            .and_then(|t| cimxml::parse_document(&t))
        {
            Ok(insts) if !insts.is_empty() => {}
            Ok(_) => rep.problems.push(format!("{rel}: holds no instance")),
            Err(e) => rep.problems.push(format!("{rel}: {e}")),
        }
    }
    for vm in &meta.vms {
        for d in &vm.disks {
            let Some(rel) = &d.file else { continue };
            let path = root.join(rel);
            rep.images_checked += 1;
            verify_image(&path, rel, d, &mut rep.problems);
        }
    }
    Ok(rep)
}

fn verify_image(path: &Path, rel: &str, d: &DiskRecord, problems: &mut Vec<String>) {
    match cosnap_disk::check(path) {
        Ok(c) if c.corruptions.is_empty() => {}
        Ok(c) => problems.push(format!("{rel}: image check: {}", c.corruptions.join("; "))),
        Err(e) => {
            problems.push(format!("{rel}: {e}"));
            return;
        }
    }
    match cosnap_disk::info(path) {
        Ok(info) => {
            if info.virtual_size != d.virtual_size {
                problems.push(format!(
                    "{rel}: virtual size {} but the package says {}",
                    info.virtual_size, d.virtual_size
                ));
            }
            match (&d.parent, info.chain.get(1)) {
                (None, None) => {}
                (None, Some(p)) => problems.push(format!(
                    "{rel}: has parent {} the package does not record",
                    p.display()
                )),
                (Some(want), got) => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    let want_abs = dir.join(want);
                    match (fs::canonicalize(&want_abs), got.map(fs::canonicalize)) {
                        (Err(e), _) => {
                            problems.push(format!("{rel}: parent {want} is missing: {e}"))
                        }
                        (Ok(w), Some(Ok(g))) if w == g => {}
                        (Ok(_), Some(Ok(g))) => problems.push(format!(
                            "{rel}: chain goes to {} instead of {want}",
                            g.display()
                        )),
                        (Ok(_), _) => problems
                            .push(format!("{rel}: the chain does not reach its parent {want}")),
                    }
                }
            }
        }
        Err(e) => problems.push(format!("{rel}: {e}")),
    }
}

fn read_instances(root: &Path, rel: &str) -> Result<Vec<Instance>> {
    let p = root.join(rel);
    let text = fs::read_to_string(&p).map_err(|e| ExportError::io(&p, e))?;
    cimxml::parse_document(&text).map_err(|e| ExportError::bad_package(&p, e))
}

/// Reads a package for import (after [`verify_package`], if the caller wants the digests checked).
pub fn read_package(root: &Path) -> Result<Package> {
    let root = fs::canonicalize(root).map_err(|e| ExportError::io(root, e))?;
    let meta = read_meta(&root)?;
    let mut coll = read_instances(&root, &meta.collection_file)?.into_iter();
    let (collection, snapshot) = match (coll.next(), coll.next()) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(ExportError::bad_package(
                root.join(&meta.collection_file),
                "needs the collection and the snapshot",
            ));
        }
    };
    let mut vms = Vec::new();
    for rec in &meta.vms {
        let mut insts = read_instances(&root, &rec.config)?.into_iter();
        let (system, settings) = match (insts.next(), insts.next()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(ExportError::bad_package(
                    root.join(&rec.config),
                    "needs the system and its settings",
                ));
            }
        };
        let resources: Vec<Instance> = insts.collect();
        let disk_files = rec
            .disks
            .iter()
            .map(|d| d.file.as_ref().map(|f| root.join(f)))
            .collect();
        vms.push(PackageVm {
            record: rec.clone(),
            system,
            settings,
            resources,
            disk_files,
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

/// Removes what interrupted exports left in `export_dir`: for each journal, the staged
/// entries, and — when the commit had not finished — the entries already renamed into
/// place; then staging entries without a journal. Safe to run at any time no export into
/// `export_dir` is running.
pub fn recover_export_dir(export_dir: &Path) -> Result<RecoveryReport> {
    let mut rep = RecoveryReport::default();
    let rd = match fs::read_dir(export_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rep),
        Err(e) => return Err(ExportError::io(export_dir, e)),
    };
    let names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for n in names
        .iter()
        .filter(|n| n.starts_with(JOURNAL_PREFIX) && n.ends_with(JOURNAL_SUFFIX))
    {
        let jp = export_dir.join(n);
        let journal: Option<Journal> = fs::read(&jp)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(j) = journal {
            // Only touch entries directly inside export_dir (a journal is not trusted to
            // name anything else).
            let inside = |p: &Path| p.parent() == Some(export_dir);
            let committed = j.manifest_final.exists();
            for (staged, fin) in &j.items {
                if inside(staged) && remove_any(staged).unwrap_or(false) {
                    rep.removed.push(staged.clone());
                }
                if !committed && inside(fin) && remove_any(fin).unwrap_or(false) {
                    rep.removed.push(fin.clone());
                }
            }
            if committed {
                rep.completed.push(j.export_id.clone());
            }
        }
        let _ = fs::remove_file(&jp);
        rep.removed.push(jp);
    }
    for n in &names {
        if n.starts_with('.') && n.contains(STAGING_MARK) {
            let p = export_dir.join(n);
            if remove_any(&p).unwrap_or(false) {
                rep.removed.push(p);
            }
        }
    }
    fsync_path(export_dir)?;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/e/a/vm/VHD/x.qcow2"), Path::new("/e/b/vm/VHD")),
            "../../../a/vm/VHD/x.qcow2"
        );
        assert_eq!(relative_to(Path::new("/e/x"), Path::new("/e")), "x");
    }
}
