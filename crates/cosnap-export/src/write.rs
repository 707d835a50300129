//! Writing a package: staging under a directory handle, the disks through the copy
//! engine, descriptor, configurations, package JSON and manifest, then the commit
//! ([`crate::commit`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cosnap_cim::Instance;
use cosnap_disk::{CancelToken, FlattenJob, Format};

use crate::commit::{self, Journal, PART_SUFFIX, staged_name};
use crate::dirhandle::DirHandle;
use crate::names::sanitize;
use crate::ovf::{OvfDisk, OvfFile, OvfVm};
use crate::package::{
    DISK_DIR, DiskRecord, PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION, PACKAGE_JSON, PackageMeta,
    PackageReport, SNAPSHOT_DIR, VM_CONFIG_DIR, VmRecord, id_of, name_of,
};
use crate::plan::{BackupIntent, DiskPlan, ExportOptions, ExportPlan};
use crate::{ExportError, Result, cimxml, manifest, ovf};

/// What the caller does around the commit: `before_commit` runs once everything is
/// staged and durable, right before the commit point (the host records its intent there;
/// an error aborts the export), `step` names each step of the commit (the crash harness
/// kills the process there).
pub struct CommitHooks<'a> {
    /// Runs once, right before the commit point; an error aborts the export.
    pub before_commit: &'a (dyn Fn(&PackageReport) -> Result<()> + Sync),
    /// Called with the name of each commit step as it starts.
    pub step: &'a (dyn Fn(&str) + Sync),
}

impl CommitHooks<'_> {
    /// No hooks.
    pub fn none() -> CommitHooks<'static> {
        CommitHooks {
            before_commit: &|_| Ok(()),
            step: &|_| {},
        }
    }
}

/// Creates the new file `path` with `bytes` and `mode`. Not yet durable: the package's
/// files are made durable together ([`sync_files`]) before they are hashed.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<File> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ExportError::io(path, e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| ExportError::io(path, e))?;
    f.write_all(bytes).map_err(|e| ExportError::io(path, e))?;
    Ok(f)
}

/// Staged directories stay private (0700) until [`set_modes`] gives them the package's mode.
fn mkdir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| ExportError::io(path, e))
}

/// The directory mode that goes with a file mode: search where read is allowed.
pub(crate) fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2)
}

/// Gives `files` the mode `file_mode` and `dirs` the matching [`dir_mode`] (paths from
/// [`collect_tree`], which follows no symlink).
fn set_modes(files: &[PathBuf], dirs: &[PathBuf], file_mode: u32) -> Result<()> {
    let files = files.iter().map(|f| (f, file_mode));
    let dirs = dirs.iter().map(|d| (d, dir_mode(file_mode)));
    for (path, mode) in files.chain(dirs) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| ExportError::io(path, e))?;
    }
    Ok(())
}

/// Adds every regular file under `path` to `files` and every directory (`path` included)
/// to `dirs`, each directory after what it holds; symlinks are not followed.
fn collect_tree(path: &Path, files: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| ExportError::io(path, e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(|e| ExportError::io(path, e))? {
            let entry = entry.map_err(|e| ExportError::io(path, e))?;
            collect_tree(&entry.path(), files, dirs)?;
        }
        dirs.push(path.to_path_buf());
    } else if meta.is_file() {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// Makes `files`, then `dirs` (in their order), durable. The writeback of every file starts
/// before the first fsync, so a journaling file system commits them together instead of
/// once per small file (an export holds dozens of them).
fn sync_files(files: &[PathBuf], dirs: &[PathBuf]) -> Result<()> {
    let open = |p: &PathBuf| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .map_err(|e| ExportError::io(p, e))
    };
    let opened = files.iter().map(open).collect::<Result<Vec<File>>>()?;

    for f in &opened {
        // Best effort: a failed start only leaves more for the fsync below.
        let _ = cosnap_disk::sparse::start_writeback(f);
    }

    for (f, p) in opened.iter().zip(files) {
        f.sync_all().map_err(|e| ExportError::io(p, e))?;
    }
    for d in dirs {
        open(d)?.sync_all().map_err(|e| ExportError::io(d, e))?;
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
    if let Some(tracked) = &d.changed_ranges {
        return Ok(tracked.clone());
    }
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

/// The format of a PreserveChain differential's file: its disk's, unless that format
/// cannot name the base export's file as its parent (raw has no parent pointer; a VHDX
/// child needs a VHDX parent, and an earlier package may hold the disk as qcow2): then a
/// qcow2 overlay, which backs onto any format.
fn differencing_format(d: &DiskPlan) -> Format {
    let vhdx_over_other =
        d.format == Format::Vhdx && d.base_export_format.is_some_and(|f| f != Format::Vhdx);
    if d.format == Format::Raw || vhdx_over_other {
        Format::Qcow2
    } else {
        d.format
    }
}

fn file_ext(format: Format, differencing: bool) -> &'static str {
    match (format, differencing) {
        (Format::Vhdx, false) => "vhdx",
        (Format::Vhdx, true) => "avhdx",
        (Format::Qcow2, _) => "qcow2",
        (Format::Raw, _) => "raw",
    }
}

/// Where the package's files live while being written, reached through handles.
struct Staging<'d> {
    dir: &'d DirHandle,
    /// With a sub-directory: its final name and the handle of its staged directory.
    root: Option<(String, DirHandle)>,
    /// Without: the staged top-level directories (the VMs'), by final name.
    tops: BTreeMap<String, DirHandle>,
    export_id: String,
}

impl Staging<'_> {
    /// A path that reaches package-relative `rel` in the staging through a handle.
    fn loc(&self, rel: &str) -> PathBuf {
        if let Some((_, root)) = &self.root {
            return root.proc_path(rel);
        }
        let (top, rest) = rel.split_once('/').unwrap_or((rel, ""));
        match self.tops.get(top) {
            Some(h) => h.proc_path(rest),
            None => self.dir.proc_path(staged_name(top, &self.export_id)),
        }
    }

    /// Where package-relative `rel` will be once committed (for links and messages).
    fn final_path(&self, rel: &str) -> PathBuf {
        let base = match &self.root {
            Some((name, _)) => self.dir.show(name),
            None => self.dir.shown().to_path_buf(),
        };
        if rel.is_empty() { base } else { base.join(rel) }
    }

    fn sync(&self) -> Result<()> {
        let synced = match &self.root {
            Some((_, root)) => root.sync(),
            None => self.dir.sync(),
        };
        synced.map_err(|e| ExportError::io(self.dir.shown(), e))
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

/// Opens an export directory for writing: an absolute path without symlinks (callers
/// canonicalise a path a person typed), held open for the whole export.
pub fn open_export_dir(export_dir: &Path) -> Result<DirHandle> {
    if !export_dir.is_absolute() {
        return Err(ExportError::RelativeDirectory(export_dir.to_path_buf()));
    }
    DirHandle::open(export_dir).map_err(|e| {
        let through_link = fs::canonicalize(export_dir).is_ok_and(|c| c != export_dir);
        match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV) if through_link => {
                ExportError::Symlink(export_dir.to_path_buf())
            }
            Some(libc::ENOENT | libc::ENOTDIR) => {
                ExportError::NoDirectory(export_dir.to_path_buf())
            }
            _ => ExportError::io(export_dir, e),
        }
    })
}

/// The checks [`write_package`] makes before it writes anything (absolute existing
/// directory, a consistent plan, no collision without a sub-directory), so a caller can
/// refuse a request before starting a job. Writes nothing.
pub fn preflight(plan: &ExportPlan, export_dir: &Path, opts: &ExportOptions) -> Result<()> {
    preflight_in(plan, &open_export_dir(export_dir)?, opts)
}

/// [`preflight`] in a directory already opened.
pub fn preflight_in(plan: &ExportPlan, dir: &DirHandle, opts: &ExportOptions) -> Result<()> {
    validate_plan(plan, opts)?;
    if !opts.create_subdirectory {
        let n = names(plan);
        for t in flat_tops(&n.base_name, &n.vm_dirs) {
            if dir.exists(&t) {
                return Err(ExportError::Collision(dir.show(&t)));
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
    let dir = open_export_dir(export_dir)?;
    write_package_in(plan, &dir, opts, progress, cancel, &CommitHooks::none())
}

/// [`write_package`] into a directory opened once by the caller ([`open_export_dir`]):
/// every entry is created and renamed relative to that handle, so the directory being
/// swapped for a symlink meanwhile cannot redirect the export. Without a sub-directory
/// the export holds an exclusive lock on the directory; a second one is refused
/// ([`ExportError::Busy`]) before it writes.
pub fn write_package_in(
    plan: &ExportPlan,
    dir: &DirHandle,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    cancel: &CancelToken,
    hooks: &CommitHooks<'_>,
) -> Result<PackageReport> {
    validate_plan(plan, opts)?;
    let export_id = opts
        .export_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let names = names(plan);
    let journal = if opts.create_subdirectory {
        reserve_subdirectory(dir, &names.base_name, &export_id)?
    } else {
        claim_flat(dir, &names, &export_id)?
    };

    let written = stage(plan, dir, opts, &names, &journal, progress, cancel)
        .and_then(|report| commit_staged(dir, &journal, report, hooks));
    match written {
        Ok(report) => Ok(report),
        Err((e, renamed)) => {
            commit::rollback(dir, &journal, &renamed);
            Err(e)
        }
    }
}

/// With a sub-directory: a free name, reserved by creating it empty after the journal
/// names it (so a crash in between leaves nothing recovery does not know).
fn reserve_subdirectory(dir: &DirHandle, base: &str, export_id: &str) -> Result<Journal> {
    for n in 1..=10_000 {
        let name = if n == 1 {
            base.to_string()
        } else {
            sanitize(&format!("{base}-{n}"))
        };
        if dir.exists(&name) {
            continue;
        }
        let staged = staged_name(&name, export_id);
        let journal = Journal {
            export_id: export_id.to_string(),
            items: vec![(staged.clone(), name.clone())],
            manifest_staged: format!("{staged}/{name}.mf"),
            manifest_final: format!("{name}/{name}.mf"),
            reserved: Some(name.clone()),
        };
        journal.write(dir)?;
        match dir.mkdir(&name, 0o700) {
            Ok(_) => return Ok(journal),
            // Another export took the name meanwhile: try the next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => journal.remove(dir),
            Err(e) => {
                journal.remove(dir);
                return Err(ExportError::io(dir.show(&name), e));
            }
        }
    }
    Err(ExportError::Collision(dir.show(base)))
}

/// Without a sub-directory: the directory's export lock, no entry the package would
/// create already there, the journal.
fn claim_flat(dir: &DirHandle, names: &Names, export_id: &str) -> Result<Journal> {
    if !dir
        .try_lock()
        .map_err(|e| ExportError::io(dir.shown(), e))?
    {
        return Err(ExportError::Busy(dir.shown().to_path_buf()));
    }
    let tops = flat_tops(&names.base_name, &names.vm_dirs);
    if let Some(t) = tops.iter().find(|t| dir.exists(t)) {
        return Err(ExportError::Collision(dir.show(t)));
    }
    let mf = format!("{}.mf", names.base_name);
    let journal = Journal {
        export_id: export_id.to_string(),
        items: tops
            .iter()
            .map(|t| (staged_name(t, export_id), t.clone()))
            .collect(),
        manifest_staged: staged_name(&mf, export_id),
        manifest_final: mf,
        reserved: None,
    };
    journal.write(dir)?;
    Ok(journal)
}

type Staged<T> = std::result::Result<T, (ExportError, Vec<String>)>;

/// Writes everything under staging names, up to the manifest's `.part`.
fn stage(
    plan: &ExportPlan,
    dir: &DirHandle,
    opts: &ExportOptions,
    names: &Names,
    journal: &Journal,
    progress: &(dyn Fn(u64, u64) + Sync),
    cancel: &CancelToken,
) -> Staged<PackageReport> {
    let fail = |e: ExportError| (e, Vec::new());
    let export_id = journal.export_id.as_str();
    let mut staging = Staging {
        dir,
        root: None,
        tops: BTreeMap::new(),
        export_id: export_id.to_string(),
    };
    let mkdir_at = |d: &DirHandle, name: &str| {
        d.mkdir(name, 0o700)
            .map_err(|e| fail(ExportError::io(d.show(name), e)))
    };
    let name = match &journal.reserved {
        Some(name) => {
            let root = mkdir_at(dir, &staged_name(name, export_id))?;
            for v in &names.vm_dirs {
                mkdir_at(&root, v)?;
            }
            staging.root = Some((name.clone(), root));
            name.clone()
        }
        None => {
            for v in &names.vm_dirs {
                let h = mkdir_at(dir, &staged_name(v, export_id))?;
                staging.tops.insert(v.clone(), h);
            }
            names.base_name.clone()
        }
    };
    let ctx = WriteCtx {
        plan,
        opts,
        staging: &staging,
        name: &name,
        vm_dirs: &names.vm_dirs,
        progress,
        cancel,
    };
    let (meta, bytes_written) = ctx.write(export_id, names).map_err(fail)?;
    if let Some((_, root)) = &staging.root {
        root.set_mode(dir_mode(opts.file_mode))
            .and_then(|_| root.sync())
            .map_err(|e| fail(ExportError::io(dir.show(&name), e)))?;
    }
    Ok(PackageReport {
        path: staging.final_path(""),
        meta,
        bytes_written,
    })
}

/// The caller's hook, the commit point, the renames, the journal removed.
fn commit_staged(
    dir: &DirHandle,
    journal: &Journal,
    report: PackageReport,
    hooks: &CommitHooks<'_>,
) -> Staged<PackageReport> {
    let fail = |e: ExportError| (e, Vec::new());
    (hooks.before_commit)(&report).map_err(fail)?;
    (hooks.step)("export-commit");
    commit::commit_point(dir, journal).map_err(fail)?;
    (hooks.step)("export-committed");
    let mut renamed = Vec::new();
    if let Err(e) = commit::rename_all(dir, journal, &mut renamed, hooks.step) {
        return Err((e, renamed));
    }
    (hooks.step)("export-renamed");
    journal.remove(dir);
    Ok(report)
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

/// A disk to copy: its flatten job and the record (VM, disk index) it fills.
struct DiskJob {
    job: FlattenJob,
    vm: usize,
    disk: usize,
}

/// The package-relative names of the package's top-level files.
struct PackageFiles {
    descriptor: String,
    collection_file: String,
    manifest: String,
}

/// The package-relative path of a disk's file: `<vm dir>/<disk dir>/<id>.<ext>`, with a
/// `-2`, `-3`… suffix if another disk of the VM took that name (`used`).
fn disk_file_name(
    vm_dir: &str,
    d: &DiskPlan,
    format: Format,
    chained: bool,
    used: &mut BTreeSet<String>,
) -> String {
    let stem = sanitize(&d.id);
    let ext = file_ext(format, chained);
    let mut file_name = format!("{stem}.{ext}");
    let mut n = 2;
    while !used.insert(file_name.clone()) {
        file_name = format!("{stem}-{n}.{ext}");
        n += 1;
    }
    format!("{vm_dir}/{DISK_DIR}/{file_name}")
}

struct WriteCtx<'a> {
    plan: &'a ExportPlan,
    opts: &'a ExportOptions,
    staging: &'a Staging<'a>,
    name: &'a str,
    vm_dirs: &'a [String],
    progress: &'a (dyn Fn(u64, u64) + Sync),
    cancel: &'a CancelToken,
}

/// Progress scale: flatten reports into [0, FLATTEN_SHARE], hashing the rest.
const PROGRESS_TOTAL: u64 = 10_000;
const FLATTEN_SHARE: u64 = 9_000;

impl WriteCtx<'_> {
    /// Writes the new package file `rel` with the package's file mode.
    fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        write_file(&self.staging.loc(rel), bytes, self.opts.file_mode).map(drop)
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(ExportError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Writes the whole staged package — configurations, disks, descriptor, collection
    /// file, package JSON, manifest under its `.part` name — and returns its metadata and
    /// the bytes its files hold.
    fn write(&self, uuid: &str, names: &Names) -> Result<(PackageMeta, u64)> {
        let (mut vm_records, jobs) = self.stage_vms()?;
        self.check_cancel()?;

        let digests = self.copy_disks(&jobs, &mut vm_records)?;
        (self.progress)(FLATTEN_SHARE, PROGRESS_TOTAL);
        self.check_cancel()?;

        let files = self.write_descriptors(names, &vm_records)?;
        let meta = self.package_meta(uuid, names, &files, vm_records);
        self.write_file(
            PACKAGE_JSON,
            &serde_json::to_vec_pretty(&meta).expect("meta serialises"),
        )?;

        let rels = self.sync_package_files(&files)?;
        self.check_cancel()?;
        let entries = self.hash_all(&rels, digests)?;
        let bytes_written: u64 = rels
            .iter()
            .filter_map(|r| fs::metadata(self.staging.loc(r)).ok())
            .map(|m| m.len())
            .sum();

        self.write_manifest(&files.manifest, &entries)?;
        (self.progress)(PROGRESS_TOTAL, PROGRESS_TOTAL);
        Ok((meta, bytes_written))
    }

    /// Every VM's directories and configuration files, its disk records, and the flatten
    /// jobs of the disks to copy (with the record each fills).
    fn stage_vms(&self) -> Result<(Vec<VmRecord>, Vec<DiskJob>)> {
        let mut vm_records = Vec::new();
        let mut jobs = Vec::new();
        for (vi, vm) in self.plan.vms.iter().enumerate() {
            let dir = &self.vm_dirs[vi];
            let (config, snapshot_config) = self.write_vm_configs(dir, vm)?;
            if self.opts.copy_storage {
                mkdir(&self.staging.loc(&format!("{dir}/{DISK_DIR}")))?;
            }

            let mut disks = Vec::new();
            let mut used = BTreeSet::new();
            for (di, d) in vm.disks.iter().enumerate() {
                let (rec, job) = self.stage_disk(vi, di, d, &mut used)?;
                if let Some(job) = job {
                    jobs.push(DiskJob {
                        job,
                        vm: vi,
                        disk: di,
                    });
                }
                disks.push(rec);
            }

            vm_records.push(VmRecord {
                id: id_of(&vm.system, &["Name", "InstanceID"]),
                name: name_of(&vm.system, ""),
                dir: dir.clone(),
                config,
                snapshot_config,
                disks,
            });
        }
        Ok((vm_records, jobs))
    }

    /// Writes a VM's configuration (system, settings, resources) and its snapshot's
    /// configuration under `dir`; returns their package-relative paths.
    fn write_vm_configs(&self, dir: &str, vm: &crate::plan::VmPlan) -> Result<(String, String)> {
        let st = self.staging;
        mkdir(&st.loc(&format!("{dir}/{VM_CONFIG_DIR}")))?;
        mkdir(&st.loc(&format!("{dir}/{SNAPSHOT_DIR}")))?;

        let vm_id = id_of(&vm.system, &["Name", "InstanceID"]);
        let config = format!("{dir}/{VM_CONFIG_DIR}/{}.xml", sanitize(&vm_id));
        let mut config_insts: Vec<&Instance> = vec![&vm.system, &vm.settings];
        config_insts.extend(vm.resources.iter());
        self.write_file(&config, cimxml::document(&config_insts).as_bytes())?;

        let snap_settings_id = id_of(&vm.settings, &["InstanceID"]);
        let snapshot_config = format!("{dir}/{SNAPSHOT_DIR}/{}.xml", sanitize(&snap_settings_id));
        let mut snap_insts: Vec<&Instance> = vec![&vm.settings];
        snap_insts.extend(vm.resources.iter());
        self.write_file(&snapshot_config, cimxml::document(&snap_insts).as_bytes())?;
        Ok((config, snapshot_config))
    }

    /// The record of disk `di` of VM `vi` and, when storage is copied, the flatten job
    /// that writes its file (named uniquely within the VM through `used`).
    fn stage_disk(
        &self,
        vi: usize,
        di: usize,
        d: &DiskPlan,
        used: &mut BTreeSet<String>,
    ) -> Result<(DiskRecord, Option<FlattenJob>)> {
        let (opts, differential) = (self.opts, self.plan.differential.is_some());
        let chained = differential && opts.intent == BackupIntent::PreserveChain;
        let dest_format = if chained {
            differencing_format(d)
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

        let mut job = None;
        if opts.copy_storage {
            let rel = disk_file_name(&self.vm_dirs[vi], d, dest_format, chained, used);
            job = Some(FlattenJob {
                source: d.source.clone(),
                base: if chained { d.base_layer.clone() } else { None },
                dest: self.staging.loc(&rel),
                dest_format,
                dest_parent: if chained {
                    d.base_export_file.clone()
                } else {
                    None
                },
                source_layers: d.layers.clone(),
                dest_parent_format: if chained { d.base_export_format } else { None },
                changed: if chained {
                    d.changed_ranges.clone()
                } else {
                    None
                },
            });
            rec.file = Some(rel);
        } else {
            rec.virtual_size = source_info(d)?.virtual_size;
        }

        if differential && !chained {
            // Merge (or no storage): record what changed; the file is a synthetic full.
            if let Some(base) = &d.base_layer {
                let ranges = source_changed_ranges(d, base)?;
                rec.changed_ranges = Some(ranges.iter().map(|r| [r.start, r.end]).collect());
            }
        }
        Ok((rec, job))
    }

    /// Copies the disks, in parallel, through the disk engine (digesting each as it is
    /// written), fills their records, and returns package-relative path → digest.
    fn copy_disks(
        &self,
        jobs: &[DiskJob],
        vm_records: &mut [VmRecord],
    ) -> Result<BTreeMap<String, String>> {
        let mut digests = BTreeMap::new();
        if jobs.is_empty() {
            return Ok(digests);
        }
        let flatten_progress = |done: u64, total: u64| {
            let frac = if total == 0 {
                0
            } else {
                (done.min(total) as u128 * FLATTEN_SHARE as u128 / total as u128) as u64
            };
            (self.progress)(frac, PROGRESS_TOTAL);
        };
        let flatten_jobs: Vec<FlattenJob> = jobs.iter().map(|j| j.job.clone()).collect();
        let reports = cosnap_disk::flatten_all_digested_with(
            &flatten_jobs,
            self.opts.threads.max(1),
            self.opts.digest,
            &flatten_progress,
            self.cancel,
        )?;

        for (dj, rep) in jobs.iter().zip(reports) {
            let rec = &mut vm_records[dj.vm].disks[dj.disk];
            if let (Some(rel), Some(digest)) = (&rec.file, &rep.digest) {
                digests.insert(rel.clone(), digest.hex.clone());
            }
            rec.virtual_size = rep.virtual_size;
            rec.data_bytes = rep.data_bytes;
            rec.format = rep.format;
            if dj.job.dest_parent.is_some() {
                rec.changed_ranges = Some(rep.ranges.iter().map(|r| [r.start, r.end]).collect());
                // The link as the package will hold it, from the disk's final directory
                // (`job.dest` reaches it through a directory handle).
                let disk_dir = self
                    .staging
                    .final_path(&format!("{}/{DISK_DIR}", self.vm_dirs[dj.vm]));
                rec.parent = dj
                    .job
                    .dest_parent
                    .as_ref()
                    .map(|p| relative_to(p, &disk_dir));
            }
        }
        Ok(digests)
    }

    /// Writes the OVF descriptor and the collection file; names them and the manifest.
    fn write_descriptors(&self, names: &Names, vm_records: &[VmRecord]) -> Result<PackageFiles> {
        let mut ovf_vms = Vec::new();
        for (vm, rec) in self.plan.vms.iter().zip(vm_records) {
            let disks = rec
                .disks
                .iter()
                .map(|d| self.ovf_disk(d))
                .collect::<Result<Vec<_>>>()?;
            ovf_vms.push(OvfVm {
                id: rec.id.clone(),
                name: rec.name.clone(),
                resources: vm.resources.clone(),
                disks,
            });
        }

        let descriptor = format!("{}.ovf", self.name);
        let ovf_text = ovf::descriptor(
            &names.collection_id,
            &names.collection_name,
            &names.snapshot_name,
            &ovf_vms,
        );
        self.write_file(&descriptor, ovf_text.as_bytes())?;

        let collection_file = format!("{}.collection.xml", self.name);
        self.write_file(
            &collection_file,
            cimxml::document(&[&self.plan.collection, &self.plan.snapshot]).as_bytes(),
        )?;
        Ok(PackageFiles {
            descriptor,
            collection_file,
            manifest: format!("{}.mf", self.name),
        })
    }

    /// The OVF view of one disk record (its file's size read from the staged file).
    fn ovf_disk(&self, d: &DiskRecord) -> Result<OvfDisk> {
        let file = match &d.file {
            Some(rel) => {
                let path = self.staging.loc(rel);
                let size = fs::metadata(&path)
                    .map_err(|e| ExportError::io(&path, e))?
                    .len();
                Some(OvfFile {
                    file_id: format!("file-{}", d.ovf_disk_id),
                    rel_path: rel.clone(),
                    size,
                })
            }
            None => None,
        };
        Ok(OvfDisk {
            disk_id: d.ovf_disk_id.clone(),
            file,
            capacity: d.virtual_size,
            format: d.format,
            element_name: format!("Disk {}", d.id),
        })
    }

    /// The package JSON's content.
    fn package_meta(
        &self,
        uuid: &str,
        names: &Names,
        files: &PackageFiles,
        vms: Vec<VmRecord>,
    ) -> PackageMeta {
        let (plan, differential) = (self.plan, self.plan.differential.is_some());
        PackageMeta {
            format: PACKAGE_FORMAT.into(),
            format_version: PACKAGE_FORMAT_VERSION,
            export_id: uuid.to_string(),
            name: self.name.to_string(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            collection_id: names.collection_id.clone(),
            collection_name: names.collection_name.clone(),
            snapshot_id: names.snapshot_id.clone(),
            snapshot_name: names.snapshot_name.clone(),
            kind: if differential { "differential" } else { "full" }.into(),
            intent: differential.then_some(self.opts.intent),
            differential: plan.differential.clone(),
            fallback_to_full: plan.fallback_to_full.clone(),
            copy_storage: self.opts.copy_storage,
            digest_algorithm: self.opts.digest.tag().into(),
            manifest: files.manifest.clone(),
            descriptor: files.descriptor.clone(),
            collection_file: files.collection_file.clone(),
            vms,
        }
    }

    /// Makes everything staged durable (with the package's modes) before it is hashed, so
    /// the digests describe what is on disk; returns every file's package-relative path.
    fn sync_package_files(&self, files: &PackageFiles) -> Result<Vec<String>> {
        let st = self.staging;
        let mut rels: Vec<String> = vec![
            files.descriptor.clone(),
            files.collection_file.clone(),
            PACKAGE_JSON.to_string(),
        ];
        let mut to_sync: Vec<PathBuf> = rels.iter().map(|r| st.loc(r)).collect();
        let mut dirs = Vec::new();
        for d in self.vm_dirs {
            let top = st.loc(d);
            let (first, first_dir) = (to_sync.len(), dirs.len());
            collect_tree(&top, &mut to_sync, &mut dirs)?;
            set_modes(&to_sync[first..], &dirs[first_dir..], self.opts.file_mode)?;
            rels.extend(to_sync[first..].iter().map(|f| {
                let rel = f.strip_prefix(&top).unwrap_or(f);
                format!("{d}/{}", rel.to_string_lossy())
            }));
        }
        sync_files(&to_sync, &dirs)?;
        st.sync()?;
        Ok(rels)
    }

    /// Writes the manifest under its `.part` name (taking the manifest's name is the
    /// commit point) and makes it durable.
    fn write_manifest(&self, manifest_name: &str, entries: &[(String, String)]) -> Result<()> {
        let mut part = self.staging.loc(manifest_name).into_os_string();
        part.push(PART_SUFFIX);
        let part = Path::new(&part);
        write_file(
            part,
            manifest::render_with(entries, self.opts.digest).as_bytes(),
            self.opts.file_mode,
        )?
        .sync_all()
        .map_err(|e| ExportError::io(part, e))?;
        self.staging.sync()
    }

    /// Digest (the export's algorithm) of every file in `rels` not already in `known`, a
    /// few at a time; all of them sorted by path.
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
                        let path = st.loc(rels[i]);
                        match manifest::digest_file(&path, self.opts.digest, &tick) {
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

    #[test]
    fn directory_modes_follow_file_modes() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
    }
}
