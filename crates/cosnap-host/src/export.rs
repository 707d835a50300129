//! The export domain behind `Msvm_CollectionSnapshotService.ExportSnapshot` and
//! `cosnap export`: a plain [`ExportRequest`] checked with its return codes, the export
//! job, and the package written through `cosnap-export`. The method's CIM parameters are
//! decoded into an [`ExportRequest`] by the CIM face (`cim::export_request`).
//!
//! # Return codes (decided; the method's own table is only "0 / 4096 / other")
//! DMTF style like its sibling methods, plus two Msvm codes the issue asks for:
//!
//! | code | when |
//! |---|---|
//! | 4096 | parameters checked, job started (the package path is recorded with the export) |
//! | 4 Invalid Parameter | ExportDirectory empty, relative, missing or not a directory, or swapped for a symbolic link between the check and its opening; SnapshotCollection missing, malformed or not a snapshot collection; ExportSettingData malformed, of another class, BackupIntent not 1/2; DifferentialBackupBase malformed, unknown, of another VM collection, the snapshot itself, or newer than it |
//! | 5 Invalid State | without CreateVmExportSubdirectory, an entry the package would create exists already, or another export without a sub-directory is writing into the directory (nothing is touched); PreserveChain differential with storage but no recorded export of the base that holds its disks (and no fallback allowed) |
//! | 6 Invalid Type | a setting-data property of the wrong type (e.g. `CopyVmStorage` = "maybe") |
//! | 32769 Access Denied | ExportDirectory outside the allowed export roots (after resolving symlinks), or not writable |
//! | 32774 In Use | the snapshot is being destroyed/applied meanwhile (from the host) |
//!
//! Defaults when ExportSettingData is "" or a property is NULL: CopyVmStorage TRUE,
//! CreateVmExportSubdirectory FALSE, DifferentialBackupBase NULL (full), BackupIntent 1
//! (PreserveChain), AllowFullExportFallback FALSE. Unknown properties are ignored.
//!
//! Change information gone (the base's layer is no longer an ancestor of the snapshot's)
//! is found inside the job: it ends in Exception saying so, unless
//! `AllowFullExportFallback` is TRUE, in which case a full export is written and the
//! package records `fallback_to_full` with the reason.
//!
//! # Export roots
//! Method calls may only export under an allowed root: `<data-dir>/exports` (created on
//! demand), every line of `<data-dir>/export-roots`, and every export root the process
//! opened the host with ([`crate::HostOptions::export_roots`], `cosnap serve
//! --export-root`). The `cosnap export` command
//! runs as the local user with that user's own file permissions and passes
//! [`Roots::Caller`]: any directory the user can write.
//!
//! # Directory and crashes
//! The export directory is opened once, when the request is checked, and the job writes
//! through that handle (see `cosnap_export::write_package_in`). While a job writes,
//! `<data-dir>/export-jobs/<job>.json` names its export directory, export id and owner
//! process; right before the package's commit point it also holds the export record to
//! write. [`recover_interrupted`] (run by [`Host::open`]) settles exports whose process
//! died through `cosnap_export::recover_export`: before the commit point their staging,
//! journal and name reservation go (the host's own recovery marks the job Exception,
//! "interrupted"); after it the package is completed, recorded, and its job marked
//! Completed.

use std::path::{Path, PathBuf};

use cosnap_cim::Instance;
use cosnap_disk::Format;
use cosnap_export::{
    BackupIntent, BaseKind, Differential, DiskPlan, ExportError, ExportOptions, ExportPlan, VmPlan,
};
use serde::{Deserialize, Serialize};

use crate::error::dmtf;
use crate::model::{Collection, ExportedDisk, LayerRef, Snapshot, SnapshotVm, job_type};
use crate::refpoint_bitmaps::{TrackedChanges, tracked_changes};
use crate::{Host, HostError};

/// The export method's Msvm-family refusals, named in the one table in [`crate::error`].
pub use crate::error::msvm::{ACCESS_DENIED, IN_USE};

/// A refusal before the job starts: the method's return code and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: u32,
    pub message: String,
}

/// A refusal with its return code (the CIM face refuses malformed parameters with it too).
pub(crate) fn refuse(code: u32, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (return code {})", self.message, self.code)
    }
}

/// What to export, with the settings already decoded.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Snapshot collection id.
    pub snapshot: String,
    pub export_dir: PathBuf,
    pub copy_storage: bool,
    pub create_subdirectory: bool,
    /// Snapshot collection or reference point collection id of the differential base.
    pub base: Option<String>,
    pub intent: BackupIntent,
    pub allow_fallback_full: bool,
    /// Mode of the package's files; `None` = the host's (`HostOptions::export_file_mode`).
    pub file_mode: Option<u32>,
}

impl ExportRequest {
    pub fn full(snapshot: &str, export_dir: &Path) -> Self {
        ExportRequest {
            snapshot: snapshot.to_string(),
            export_dir: export_dir.to_path_buf(),
            copy_storage: true,
            create_subdirectory: false,
            base: None,
            intent: BackupIntent::PreserveChain,
            allow_fallback_full: false,
            file_mode: None,
        }
    }
}

/// Who decides where exports may go.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The host's configured export roots (method calls).
    Configured,
    /// The local user running the CLI: any directory they may write.
    Caller,
}

/// The configured export roots (see the module doc).
pub fn configured_roots(host: &Host) -> Vec<PathBuf> {
    let mut roots = vec![host.data_dir().join("exports")];
    let _ = crate::modes::create_private_dir(&roots[0]);
    if let Ok(text) = std::fs::read_to_string(host.data_dir().join("export-roots")) {
        roots.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(PathBuf::from),
        );
    }
    roots.extend(host.options().export_roots.iter().cloned());
    roots
        .into_iter()
        .filter(|r| r.is_absolute())
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect()
}

/// A differential still to be settled in the job: the base, per VM and disk the base
/// export's file (PreserveChain), and a fallback reason already known.
type PendingDiff = (Base, Vec<Vec<Option<PathBuf>>>, Option<String>);

/// The base of a differential: its id, kind, per (vm, disk index) boundary layer.
struct Base {
    id: String,
    kind: BaseKind,
    collection_id: String,
    created_ms: i64,
    layers: Vec<(String, u32, PathBuf)>,
}

impl Base {
    /// The base's boundary layer of one VM's disk, if the disk existed at the base.
    fn layer_of(&self, vm_id: &str, index: u32) -> Option<&PathBuf> {
        self.layers
            .iter()
            .find(|(vm, i, _)| vm == vm_id && *i == index)
            .map(|(_, _, layer)| layer)
    }
}

fn load_base(host: &Host, id: &str) -> Result<Base, Refusal> {
    if let Ok(s) = host.snapshot(id) {
        let layers = s
            .vms
            .iter()
            .flat_map(|v| {
                v.disks
                    .iter()
                    .map(|d| (v.vm_id.clone(), d.index, d.path.clone()))
            })
            .collect();
        return Ok(Base {
            id: s.id,
            kind: BaseKind::Snapshot,
            collection_id: s.collection_id,
            created_ms: s.created_ms,
            layers,
        });
    }
    match host.refpoint(id) {
        Ok(rp) => {
            let layers = rp
                .vms
                .iter()
                .flat_map(|v| {
                    v.disks
                        .iter()
                        .map(|d| (v.vm_id.clone(), d.index, d.path.clone()))
                })
                .collect();
            // An RP stands for the snapshot it was converted from; its own creation time is
            // the conversion's, so ordering is judged on the layers instead (below).
            Ok(Base {
                id: rp.id,
                kind: BaseKind::ReferencePoint,
                collection_id: rp.collection_id,
                created_ms: i64::MIN,
                layers,
            })
        }
        Err(e) => Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("DifferentialBackupBase {id}: {e}"),
        )),
    }
}

/// The CIM instances a package stores to describe what it holds (the CIM face,
/// `cim::package`, builds them for [`Host`]): the export names only this trait.
pub trait PackageInstances {
    /// The VM's Msvm_ComputerSystem, or its identity alone if the VM is gone.
    fn package_system(&self, vm_id: &str, fallback_name: &str) -> Instance;
    /// A snapshot's per-VM settings and resource settings.
    fn package_vm_settings(&self, snap: &Snapshot, vm: &SnapshotVm) -> (Instance, Vec<Instance>);
    /// The exported VM collection.
    fn package_collection(&self, collection: &Collection) -> Instance;
    /// The exported snapshot collection.
    fn package_snapshot(&self, snap: &Snapshot) -> Instance;
}

fn disk_plan(host: &Host, l: &LayerRef) -> Result<DiskPlan, Refusal> {
    let layers = host.disk_chain(&l.path).map_err(|e| {
        refuse(
            dmtf::INVALID_STATE,
            format!("the snapshot's disk chain is not on record: {e}"),
        )
    })?;
    Ok(DiskPlan {
        id: format!("disk{}", l.index),
        source: l.path.clone(),
        format: export_format(l.format, &layers),
        layers,
        base_layer: None,
        base_export_file: None,
        base_export_format: None,
        resource_instance_id: Some(l.disk_instance_id.clone()),
        changed_ranges: None,
    })
}

/// The format a disk is exported in: a disk on a VHDX base stays VHDX (`.vhdx`, `.avhdx`
/// children) even when its frozen layer is one of the qcow2 overlays a running VM writes
/// (QEMU cannot open `.avhdx`); any other disk keeps its frozen layer's format.
fn export_format(frozen: Format, chain: &[cosnap_disk::LayerSpec]) -> Format {
    match chain.last() {
        Some(base) if base.format == Format::Vhdx => Format::Vhdx,
        _ => frozen,
    }
}

/// The format of a disk file in an earlier package: its name is cosnap's record of it
/// (`file_ext` in cosnap-export), never its content, which is guest bytes for a raw disk.
fn exported_format(file: &Path) -> Option<Format> {
    file.extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_name)
}

/// Builds the full export plan of a snapshot (differential parts are added by the job).
fn full_plan(host: &Host, snap: &Snapshot) -> Result<ExportPlan, Refusal> {
    let coll = host.collection(&snap.collection_id).map_err(|e| {
        refuse(
            dmtf::INVALID_STATE,
            format!("the snapshot's collection is gone: {e}"),
        )
    })?;
    let mut vms = Vec::new();
    for v in &snap.vms {
        let (settings, resources) = host.package_vm_settings(snap, v);
        vms.push(VmPlan {
            system: host.package_system(&v.vm_id, &v.settings.name),
            settings,
            resources,
            disks: v
                .disks
                .iter()
                .map(|l| disk_plan(host, l))
                .collect::<Result<_, _>>()?,
        });
    }
    Ok(ExportPlan {
        collection: host.package_collection(&coll),
        snapshot: host.package_snapshot(snap),
        vms,
        differential: None,
        fallback_to_full: None,
    })
}

fn check_dir(dir: &Path, roots: &Roots, host: &Host) -> Result<PathBuf, Refusal> {
    if !dir.is_absolute() {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("ExportDirectory {} is not an absolute path", dir.display()),
        ));
    }
    let canon = std::fs::canonicalize(dir).map_err(|e| {
        refuse(
            dmtf::INVALID_PARAMETER,
            format!("ExportDirectory {} cannot be used: {e}", dir.display()),
        )
    })?;
    if !canon.is_dir() {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!("ExportDirectory {} is not a directory", dir.display()),
        ));
    }
    if let Roots::Configured = roots {
        let allowed = configured_roots(host);
        if !allowed.iter().any(|r| canon.starts_with(r)) {
            return Err(refuse(
                ACCESS_DENIED,
                format!(
                    "ExportDirectory {} is outside the allowed export roots ({})",
                    canon.display(),
                    allowed
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let c = std::ffi::CString::new(canon.as_os_str().as_encoded_bytes()).map_err(|_| {
        refuse(
            dmtf::INVALID_PARAMETER,
            "ExportDirectory contains a NUL byte",
        )
    })?;
    // SAFETY: a valid NUL-terminated path; access() reads it only.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(refuse(
            ACCESS_DENIED,
            format!("ExportDirectory {} is not writable", canon.display()),
        ));
    }
    Ok(canon)
}

/// Checks a request, then starts the export job. Returns the job id (the method's 4096).
pub fn start_export(host: &Host, req: &ExportRequest, roots: Roots) -> Result<String, Refusal> {
    let snap = host.snapshot(&req.snapshot).map_err(|e| {
        refuse(
            dmtf::INVALID_PARAMETER,
            format!("SnapshotCollection {}: {e}", req.snapshot),
        )
    })?;
    let export_dir = check_dir(&req.export_dir, &roots, host)?;

    // Opened once, now: the job writes through this handle whatever the path becomes.
    let dir = open_dir(&export_dir, req.create_subdirectory)?;
    let mut plan = full_plan(host, &snap)?;
    let opts = export_options(host, req, &plan);

    // Differential: ids, ordering, and (for PreserveChain) the base export's files.
    let pending_diff = match &req.base {
        Some(base_id) => Some(check_differential(host, req, &snap, base_id)?),
        None => None,
    };

    // Collisions are refused now, before anything is written.
    if !req.create_subdirectory {
        cosnap_export::preflight_in(&plan, &dir, &opts).map_err(|e| match e {
            ExportError::Collision(_) => refuse(dmtf::INVALID_STATE, e.to_string()),
            other => refuse(dmtf::INVALID_PARAMETER, other.to_string()),
        })?;
    }

    let snap_id = snap.id.clone();
    let name = format!("Export snapshot {}", snap.name);
    let description = format!(
        "Exporting snapshot collection {} to {}",
        snap.id,
        req.export_dir.display()
    );
    let allow_fallback = req.allow_fallback_full;
    let record_dir = host.data_dir().join("export-jobs");
    let work = move |ctx: &crate::JobCtx| -> crate::Result<Vec<(String, String)>> {
        let host = ctx.host();
        let _guard = host.mark_in_use(&snap_id, ctx.job_id())?;
        if let Some(pending) = pending_diff {
            settle_differential(host, &mut plan, &snap, pending, allow_fallback)?;
        }

        let run = ExportRun {
            plan: &plan,
            dir: &dir,
            opts: &opts,
            snap: &snap,
            record: record_dir.join(format!("{}.json", ctx.job_id())),
        };
        run.write_and_record(ctx)?;
        Ok(vec![])
    };
    host.start_job(job_type::EXPORT, &name, &description, true, work)
        .map_err(|e| refuse(dmtf::FAILED, format!("could not start the export job: {e}")))
}

/// The package writer's options for a request.
fn export_options(host: &Host, req: &ExportRequest, plan: &ExportPlan) -> ExportOptions {
    ExportOptions {
        copy_storage: req.copy_storage,
        create_subdirectory: req.create_subdirectory,
        intent: req.intent,
        // Every disk at once, up to 4: copies are disk-bound, not CPU-bound, and each
        // output gets its own writeback (2 at a time made the third disk a second wave).
        threads: plan
            .vms
            .iter()
            .map(|v| v.disks.len())
            .sum::<usize>()
            .clamp(1, 4),
        file_mode: req.file_mode.unwrap_or(host.options().export_file_mode),
        export_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        digest: host.options().export_digest,
    }
}

/// Checks a differential's base before the job starts: same VM collection, not the
/// snapshot itself, not newer; for PreserveChain with storage, the base export's files.
fn check_differential(
    host: &Host,
    req: &ExportRequest,
    snap: &Snapshot,
    base_id: &str,
) -> Result<PendingDiff, Refusal> {
    let base = load_base(host, base_id)?;
    if base.collection_id != snap.collection_id {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!(
                "DifferentialBackupBase {} belongs to another VM collection ({})",
                base.id, base.collection_id
            ),
        ));
    }
    if base.id == snap.id {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            "DifferentialBackupBase is the exported snapshot itself",
        ));
    }
    if base.created_ms > snap.created_ms || base_newer_on_layers(host, &base, snap) {
        return Err(refuse(
            dmtf::INVALID_PARAMETER,
            format!(
                "DifferentialBackupBase {} is newer than the snapshot",
                base.id
            ),
        ));
    }

    let (files, missing) = base_export_files(host, &base, snap);
    let mut fallback = None;
    if req.copy_storage
        && req.intent == BackupIntent::PreserveChain
        && let Some(m) = missing
    {
        let msg = format!(
            "PreserveChain needs the base's exported disks, and no recorded export of {} holds {m} (export the base with storage first, or use Merge)",
            base.id
        );
        if !req.allow_fallback_full {
            return Err(refuse(dmtf::INVALID_STATE, msg));
        }
        fallback = Some(msg);
    }
    Ok((base, files, fallback))
}

/// Newer on the layers: the snapshot's layer is a strict ancestor of the base's.
fn base_newer_on_layers(host: &Host, base: &Base, snap: &Snapshot) -> bool {
    snap.vms.iter().any(|v| {
        v.disks.iter().any(|d| {
            base.layer_of(&v.vm_id, d.index)
                .is_some_and(|bl| bl != &d.path && host.change_base(bl, &d.path).is_ok())
        })
    })
}

/// Per VM and disk, the base's exported file (from its recorded exports), and the first
/// disk no recorded export holds.
fn base_export_files(
    host: &Host,
    base: &Base,
    snap: &Snapshot,
) -> (Vec<Vec<Option<PathBuf>>>, Option<String>) {
    let mut files = Vec::new();
    let mut missing: Option<String> = None;
    let records = host.exports_of(&base.id).unwrap_or_default();
    for v in &snap.vms {
        let mut per_vm = Vec::new();
        for d in &v.disks {
            let f = records.iter().find_map(|r| {
                r.disks
                    .iter()
                    .find(|x| x.vm_id == v.vm_id && x.disk_index == d.index && x.path.is_file())
                    .map(|x| x.path.clone())
            });
            if f.is_none() && missing.is_none() {
                missing = Some(format!("VM {} disk {}", v.vm_id, d.index));
            }
            per_vm.push(f);
        }
        files.push(per_vm);
    }
    (files, missing)
}

/// In the job: finds each disk's base layer (or why the change information is gone) and
/// turns the plan into the differential, the full fallback, or a refusal.
fn settle_differential(
    host: &Host,
    plan: &mut ExportPlan,
    snap: &Snapshot,
    (base, files, fallback): PendingDiff,
    allow_fallback: bool,
) -> crate::Result<()> {
    let gone = match fallback {
        Some(reason) => Some(reason),
        None => differential_layers(host, plan, snap, &base, &files)?,
    };

    match gone {
        Some(reason) if allow_fallback => {
            for d in plan.vms.iter_mut().flat_map(|v| v.disks.iter_mut()) {
                d.base_layer = None;
                d.base_export_file = None;
                d.changed_ranges = None;
            }
            plan.fallback_to_full = Some(reason);
        }
        Some(reason) => {
            return Err(HostError::ChangeInfoGone(format!(
                "{reason}; a differential export against {} is impossible (ask for a full export, or allow the fallback with AllowFullExportFallback / --fallback-full)",
                base.id
            )));
        }
        None => {
            plan.differential = Some(Differential {
                base_id: base.id.clone(),
                base_kind: base.kind,
                base_export_id: None,
            });
        }
    }
    Ok(())
}

/// Sets each disk's base layer and base export file in the plan; `Some(reason)` when the
/// change information of a disk is gone.
fn differential_layers(
    host: &Host,
    plan: &mut ExportPlan,
    snap: &Snapshot,
    base: &Base,
    files: &[Vec<Option<PathBuf>>],
) -> crate::Result<Option<String>> {
    for (vi, v) in snap.vms.iter().enumerate() {
        for (di, d) in v.disks.iter().enumerate() {
            let Some(bl) = base.layer_of(&v.vm_id, d.index) else {
                return Ok(Some(format!(
                    "VM {} disk {} did not exist at the base {}: the change information for it is gone",
                    v.vm_id, d.index, base.id
                )));
            };

            match host.change_base(&d.path, bl) {
                Ok(layer) => {
                    let changed = match tracked_changes_of(host, base, &v.vm_id, d.index, &d.path)?
                    {
                        TrackedChanges::Untracked => None,
                        TrackedChanges::Known(ranges) => Some(ranges),
                        TrackedChanges::Lost(reason) => return Ok(Some(reason)),
                    };
                    let dp = &mut plan.vms[vi].disks[di];
                    dp.changed_ranges = changed;
                    dp.base_layer = Some(layer);
                    dp.base_export_file = files[vi][di].clone();
                    dp.base_export_format =
                        dp.base_export_file.as_deref().and_then(exported_format);
                }
                Err(HostError::ChangeInfoGone(m)) => return Ok(Some(m)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(None)
}

/// What the reference point's persistent bitmaps say changed on a disk up to the frozen
/// layer `top`; a snapshot base keeps no bitmaps (its chain is compared).
fn tracked_changes_of(
    host: &Host,
    base: &Base,
    vm_id: &str,
    index: u32,
    top: &Path,
) -> crate::Result<TrackedChanges> {
    if base.kind != BaseKind::ReferencePoint {
        return Ok(TrackedChanges::Untracked);
    }
    tracked_changes(&host.db(), &base.id, vm_id, index, top)
}

/// The package directory an export job wrote (after the job completed).
pub fn exported_path(host: &Host, snapshot: &str, job_id: &str) -> Option<PathBuf> {
    host.exports_of(snapshot)
        .ok()?
        .into_iter()
        .find(|r| {
            r.job_id
                .as_deref()
                .is_some_and(|j| j.eq_ignore_ascii_case(job_id))
        })
        .map(|r| r.package_dir)
}

/// Opens the export directory for the job (symlinks refused); without a sub-directory,
/// takes its export lock so a second export into it is refused before it writes.
fn open_dir(
    export_dir: &Path,
    create_subdirectory: bool,
) -> Result<cosnap_export::DirHandle, Refusal> {
    let dir = cosnap_export::open_export_dir(export_dir).map_err(|e| {
        refuse(
            dmtf::INVALID_PARAMETER,
            format!("ExportDirectory {}: {e}", export_dir.display()),
        )
    })?;
    if !create_subdirectory && !dir.try_lock().unwrap_or(false) {
        return Err(refuse(
            dmtf::INVALID_STATE,
            cosnap_export::ExportError::Busy(export_dir.to_path_buf()).to_string(),
        ));
    }
    Ok(dir)
}

/// One export job's writing: the package through the directory handle, the in-flight
/// record that lets recovery finish it, the export record.
struct ExportRun<'a> {
    plan: &'a ExportPlan,
    dir: &'a cosnap_export::DirHandle,
    opts: &'a ExportOptions,
    snap: &'a Snapshot,
    /// `<data-dir>/export-jobs/<job>.json`.
    record: PathBuf,
}

impl ExportRun<'_> {
    fn write_and_record(&self, ctx: &crate::JobCtx) -> crate::Result<()> {
        let host = ctx.host();
        let (pid, start) = crate::repo::own_identity();
        let inflight = InFlight {
            export_dir: self.dir.shown().to_path_buf(),
            pid,
            start,
            export_id: self.opts.export_id.clone(),
            snapshot: Some(self.snap.id.clone()),
            job_id: Some(ctx.job_id().to_string()),
            commit: None,
        };
        inflight.save(&self.record)?;

        let progress = |done: u64, total: u64| {
            if let Some(p) = (done.min(total) * 100).checked_div(total) {
                ctx.progress(p as u16);
            }
        };
        // Right before the commit point: what recovery must record if the process dies
        // after it (the package is then complete and recovery finishes it).
        let before_commit = |report: &cosnap_export::PackageReport| {
            let committing = InFlight {
                commit: Some(Committed {
                    package_dir: report.path.clone(),
                    disks: exported_disks(self.snap, report),
                }),
                ..inflight.clone()
            };
            committing
                .save(&self.record)
                .map_err(|e| ExportError::io(&self.record, std::io::Error::other(e.to_string())))
        };
        let hooks = cosnap_export::CommitHooks {
            before_commit: &before_commit,
            step: &crate::util::crash_point,
        };
        let result = cosnap_export::write_package_in(
            self.plan,
            self.dir,
            self.opts,
            &progress,
            &ctx.cancel_token(),
            &hooks,
        );
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&self.record);
                return Err(match e {
                    ExportError::Cancelled => HostError::Cancelled,
                    ExportError::Collision(_) | ExportError::Busy(_) => {
                        HostError::InvalidState(e.to_string())
                    }
                    other => HostError::Failed(format!("export failed: {other}")),
                });
            }
        };
        let disks = exported_disks(self.snap, &report);
        host.record_export(&self.snap.id, Some(ctx.job_id()), &report.path, &disks)?;
        crate::util::crash_point("export-recorded");
        let _ = std::fs::remove_file(&self.record);
        Ok(())
    }
}

/// The disk files of a package, by VM and disk index.
fn exported_disks(snap: &Snapshot, report: &cosnap_export::PackageReport) -> Vec<ExportedDisk> {
    let mut disks = Vec::new();
    for (v, rec) in snap.vms.iter().zip(&report.meta.vms) {
        for (d, drec) in v.disks.iter().zip(&rec.disks) {
            if let Some(f) = &drec.file {
                disks.push(ExportedDisk {
                    vm_id: v.vm_id.clone(),
                    disk_index: d.index,
                    path: report.path.join(f),
                });
            }
        }
    }
    disks
}

/// `<data-dir>/export-jobs/<job>.json`: an export job in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InFlight {
    export_dir: PathBuf,
    pid: u32,
    start: u64,
    /// The export's id (its journal and staging names); absent in records of older versions.
    #[serde(default)]
    export_id: Option<String>,
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
    /// Set right before the commit point.
    #[serde(default)]
    commit: Option<Committed>,
}

/// What the export record will say, known before the commit point.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Committed {
    package_dir: PathBuf,
    disks: Vec<ExportedDisk>,
}

const TMP_SUFFIX: &str = ".tmp";

impl InFlight {
    /// Replaces the record atomically (a temporary file renamed over it).
    fn save(&self, path: &Path) -> crate::Result<()> {
        use std::io::Write;
        if let Some(dir) = path.parent() {
            crate::modes::create_private_dir(dir)?;
        }
        let bytes = serde_json::to_vec(self).map_err(|e| HostError::Failed(e.to_string()))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}{TMP_SUFFIX}", self.pid));
        let tmp = PathBuf::from(tmp);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }
}

/// Finishes or removes what export jobs of dead processes left (see the module doc):
/// the export's staging and journal go; a package past its commit point is completed,
/// recorded and its job marked Completed. Errors are logged, not returned: recovery must
/// never keep the host from opening.
pub fn recover_interrupted(host: &Host) {
    let dir = host.data_dir().join("export-jobs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if is_live_temporary(&p) {
            continue;
        }
        let Some(rec) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<InFlight>(&b).ok())
        else {
            let _ = std::fs::remove_file(&p);
            continue;
        };
        if crate::repo::owner_alive(rec.pid, rec.start) {
            continue;
        }
        match recover_one(host, &rec) {
            Ok(()) => {
                let _ = std::fs::remove_file(&p);
            }
            Err(err) => {
                tracing::warn!(dir = %rec.export_dir.display(), "could not settle an interrupted export: {err}")
            }
        }
    }
}

/// A record being written by a live process (`<job>.json.<pid>.tmp`).
fn is_live_temporary(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stem) = name.strip_suffix(TMP_SUFFIX) else {
        return false;
    };
    stem.rsplit_once('.')
        .and_then(|(_, pid)| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists() && pid != 0)
}

fn recover_one(host: &Host, rec: &InFlight) -> Result<(), String> {
    let dir = match cosnap_export::open_export_dir(&rec.export_dir) {
        Ok(d) => d,
        // Gone (or swapped for a link): nothing of the export is reachable to settle.
        Err(e) => {
            tracing::warn!(dir = %rec.export_dir.display(), "interrupted export's directory: {e}");
            return Ok(());
        }
    };
    let Some(export_id) = &rec.export_id else {
        // A record of an older version: its journals, whatever they name.
        return cosnap_export::recover_export_dir(&rec.export_dir)
            .map(|_| ())
            .map_err(|e| e.to_string());
    };
    let r = cosnap_export::recover_export(&dir, export_id).map_err(|e| e.to_string())?;
    tracing::info!(dir = %rec.export_dir.display(), removed = r.removed.len(), committed = r.committed, "settled an interrupted export");
    let (Some(commit), Some(snapshot), Some(job)) = (&rec.commit, &rec.snapshot, &rec.job_id)
    else {
        return Ok(());
    };
    // Complete means: the package in place is this export's (its renames finished above,
    // or already done before the kill).
    if cosnap_export::read::package_export_id(&commit.package_dir).as_deref() != Some(export_id) {
        return Ok(());
    }
    let recorded = host
        .exports_of(snapshot)
        .map_err(|e| e.to_string())?
        .iter()
        .any(|x| x.job_id.as_deref() == Some(job.as_str()));
    if !recorded {
        host.record_export(snapshot, Some(job), &commit.package_dir, &commit.disks)
            .map_err(|e| e.to_string())?;
    }
    host.complete_recovered_job(job).map_err(|e| e.to_string())
}
