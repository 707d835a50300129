//! The export forms of the consistency proof: a group snapshot of running writers exported
//! in full, as a PreserveChain differential applied to its base, as a Merge, and imported
//! into a fresh repository, each read back as guest bytes through cosnap's chain reader, so
//! the record checks run on it and it is compared byte for byte with the frozen image.

use std::path::{Path, PathBuf};

use cosnap_disk::{Format, Image, LayerSpec, open_chain};
use cosnap_export::{BackupIntent, Package, read_package};
use cosnap_host::export::{ExportRequest, Roots, exported_path, start_export};
use cosnap_host::{ExportRecord, Host, Vm};
use cosnap_test_support::qemu_compare;
use cosnap_test_support::records::{
    DiskRecords, RecordError, VmRecords, check_cause, check_vm, scan_disk,
};

/// The guest's names of a VM's disks, in the order its writer writes them.
pub const GUEST_DISKS: [&str; 2] = ["vda", "vdb"];

/// Bytes compared at once.
const CHUNK: usize = 1 << 20;

/// One disk as some export form holds it: what to call it, its guest view, and the file a
/// qemu-img comparison may open on its own (`None` when qemu cannot: a VHDX differencing
/// image).
pub struct FormDisk {
    pub label: String,
    pub image: Box<dyn Image>,
    pub qemu_file: Option<PathBuf>,
}

/// Exports `sid` into a fresh directory under `dir` (differential against `base` with
/// `intent` when a base is given) and returns the export's record.
pub fn export(
    host: &Host,
    sid: &str,
    base: Option<&str>,
    intent: BackupIntent,
    dir: &Path,
) -> ExportRecord {
    std::fs::create_dir_all(dir).unwrap();
    let mut req = ExportRequest::full(sid, dir);
    req.base = base.map(str::to_string);
    req.intent = intent;
    let job = start_export(host, &req, Roots::Caller).unwrap();
    let done = host.wait_job(&job).unwrap();
    assert!(done.succeeded(), "{}: {done:?}", dir.display());

    let package_dir = exported_path(host, sid, &job).expect("export recorded");
    host.exports_of(sid)
        .unwrap()
        .into_iter()
        .find(|r| r.package_dir == package_dir)
        .unwrap()
}

/// The package at `dir`, after `cosnap_export::verify_package` found nothing wrong.
pub fn verified_package(dir: &Path) -> Package {
    let report = cosnap_export::verify_package(dir).unwrap();
    assert!(report.ok(), "{}: {:?}", dir.display(), report.problems);
    read_package(dir).unwrap()
}

/// The layers of disk `index` of VM `vm_id` in a package: its file, then (PreserveChain
/// differential) the base export's file it names, each with the format cosnap recorded (the
/// package's record; for the parent, its name, as the host's export does).
pub fn package_layers(pkg: &Package, vm_id: &str, index: usize) -> Vec<LayerSpec> {
    let vm = pkg.vms.iter().find(|v| v.record.id == vm_id).unwrap();
    let record = &vm.record.disks[index];
    let file = vm.disk_files[index]
        .clone()
        .expect("a package with storage");
    let mut layers = vec![LayerSpec::new(&file, record.format)];

    if let Some(parent) = &record.parent {
        let parent = file.parent().unwrap().join(parent);
        let format = parent
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_name)
            .unwrap();
        layers.push(LayerSpec::new(parent, format));
    }
    layers
}

/// A VM's disks in a package, each opened as the chain [`package_layers`] names.
pub fn package_disks(pkg: &Package, vm_id: &str) -> Vec<FormDisk> {
    (0..GUEST_DISKS.len())
        .map(|i| {
            let layers = package_layers(pkg, vm_id, i);
            let top = &layers[0];
            let label = top.path.display().to_string();
            let image = open_chain(&layers, false).unwrap_or_else(|e| panic!("{label}: {e}"));
            let differencing_vhdx = top.format == Format::Vhdx && layers.len() > 1;
            FormDisk {
                qemu_file: (!differencing_vhdx).then(|| top.path.clone()),
                label,
                image,
            }
        })
        .collect()
}

/// A VM's disks as a repository records them: each active layer's recorded chain.
pub fn repository_disks(host: &Host, vm_id: &str) -> Vec<FormDisk> {
    let vm = host.vm(vm_id).unwrap();
    vm.disks.iter().map(|d| layer_disk(host, &d.path)).collect()
}

/// The frozen images of `vm_id` in snapshot `sid`, in disk order.
pub fn frozen_disks(host: &Host, sid: &str, vm_id: &str) -> Vec<FormDisk> {
    let snap = host.snapshot(sid).unwrap();
    let vm = snap.vms.iter().find(|v| v.vm_id == vm_id).unwrap();
    vm.disks.iter().map(|d| layer_disk(host, &d.path)).collect()
}

/// The guest view of a repository layer: its recorded chain.
fn layer_disk(host: &Host, layer: &Path) -> FormDisk {
    let image = open_chain(&host.disk_chain(layer).unwrap(), false).unwrap();
    FormDisk {
        label: layer.display().to_string(),
        image,
        qemu_file: Some(layer.to_path_buf()),
    }
}

/// Check (a) on one disk's guest bytes.
pub fn scan(
    vm_name: &str,
    guest_disk: &str,
    image: &dyn Image,
) -> Result<DiskRecords, RecordError> {
    let mut read =
        |buf: &mut [u8], offset: u64| image.read_at(buf, offset).map_err(std::io::Error::other);
    scan_disk(vm_name, guest_disk, image.virtual_size(), &mut read)
}

/// Check (a) on every disk of one VM (panics naming the file on failure).
pub fn vm_records(vm_name: &str, disks: &[FormDisk]) -> VmRecords {
    let disks = disks
        .iter()
        .zip(GUEST_DISKS)
        .map(|(d, guest_disk)| {
            scan(vm_name, guest_disk, d.image.as_ref())
                .unwrap_or_else(|e| panic!("{}: {e}", d.label))
        })
        .collect();
    VmRecords {
        vm: vm_name.into(),
        disks,
    }
}

/// One export form of snapshot `sid` passes the proof: per VM (leader first) a gap-free
/// intact prefix on every disk (a), counts at most 1 apart (b), no follower record without
/// its cause (c), and every disk equal to the frozen image byte for byte (cosnap's readers,
/// and qemu-img where it opens the file). `open` gives a VM's disks in that form.
pub fn check_form(
    form: &str,
    host: &Host,
    sid: &str,
    (leader, follower): (&Vm, &Vm),
    open: &dyn Fn(&str) -> Vec<FormDisk>,
) {
    let mut records = Vec::new();
    for vm in [leader, follower] {
        let disks = open(&vm.id);
        let found = vm_records(&vm.name, &disks);
        check_vm(&found).unwrap_or_else(|e| panic!("{form}: {e}"));

        for (disk, frozen) in disks.iter().zip(frozen_disks(host, sid, &vm.id)) {
            assert_same_guest_bytes(form, disk, &frozen);
        }
        records.push(found);
    }

    check_cause(&records[0], &records[1]).unwrap_or_else(|e| panic!("{form}: {e}"));
    eprintln!(
        "{form}: lead {:?} foll {:?} peer max {:?}",
        records[0].disks.iter().map(|d| d.count).collect::<Vec<_>>(),
        records[1].disks.iter().map(|d| d.count).collect::<Vec<_>>(),
        records[1].max_peer()
    );
}

/// `disk` and `frozen` hold the same guest bytes (and qemu-img agrees when it can open both).
fn assert_same_guest_bytes(form: &str, disk: &FormDisk, frozen: &FormDisk) {
    let size = frozen.image.virtual_size();
    assert_eq!(disk.image.virtual_size(), size, "{form}: {}", disk.label);
    let (mut ours, mut theirs) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(CHUNK as u64) as usize;
        disk.image.read_at(&mut ours[..len], offset).unwrap();
        frozen.image.read_at(&mut theirs[..len], offset).unwrap();
        assert!(
            ours[..len] == theirs[..len],
            "{form}: {} differs from the frozen image {} in the MiB at {offset}",
            disk.label,
            frozen.label
        );
        offset += len as u64;
    }

    if let (Some(a), Some(b)) = (&disk.qemu_file, &frozen.qemu_file) {
        qemu_compare(a, b);
    }
}

/// The packages one group snapshot `sid` is exported to while the writers run, next to the
/// full exports of its differential base and of an older snapshot (the wrong base).
pub struct Exports {
    pub full: PathBuf,
    pub base_full: PathBuf,
    pub older_full: PathBuf,
    pub chained: PathBuf,
    pub merged: PathBuf,
}

impl Exports {
    /// Exports `sid` in full, PreserveChain and Merge against `base_sid`, and `base_sid` and
    /// `older_sid` in full (the differential's parent and a wrong one), under `dir`.
    pub fn write(host: &Host, (older_sid, base_sid, sid): (&str, &str, &str), dir: &Path) -> Self {
        let full = |s: &str, name: &str| {
            export(host, s, None, BackupIntent::PreserveChain, &dir.join(name))
        };
        let full_export = full(sid, "full");
        let base_full = full(base_sid, "base");
        let older_full = full(older_sid, "older");
        let chained = export(
            host,
            sid,
            Some(base_sid),
            BackupIntent::PreserveChain,
            &dir.join("chained"),
        );
        let merged = export(
            host,
            sid,
            Some(base_sid),
            BackupIntent::Merge,
            &dir.join("merged"),
        );
        Exports {
            full: full_export.package_dir,
            base_full: base_full.package_dir,
            older_full: older_full.package_dir,
            chained: chained.package_dir,
            merged: merged.package_dir,
        }
    }
}

/// A differential package that is what it says: differential, against `base`, with
/// `intent`, not a full written as a fallback.
pub fn assert_differential(pkg: &Package, base: &str, intent: BackupIntent) {
    let meta = &pkg.meta;
    assert_eq!(
        meta.kind,
        "differential",
        "{}: {meta:?}",
        pkg.root.display()
    );
    assert_eq!(meta.fallback_to_full, None, "{}", pkg.root.display());
    assert_eq!(meta.intent, Some(intent), "{}", pkg.root.display());
    let recorded = meta.differential.as_ref().unwrap();
    assert!(
        recorded.base_id.eq_ignore_ascii_case(base),
        "{recorded:?} vs {base}"
    );
}

/// Imports the package at `dir` into a fresh repository at `data_dir`; returns that host.
pub fn import_fresh(dir: &Path, data_dir: &Path) -> Host {
    let host = Host::open(data_dir).unwrap();
    let imported = cosnap_host::import::import_package(&host, dir, &|_, _| {})
        .unwrap_or_else(|e| panic!("import of {}: {e}", dir.display()));
    assert_eq!(imported.vms.len(), 2, "{imported:?}");
    host
}

/// Import refuses a PreserveChain differential (its parent lives in another package) and
/// defines nothing.
pub fn assert_import_refused(dir: &Path, data_dir: &Path) {
    let host = Host::open(data_dir).unwrap();
    let refused = cosnap_host::import::import_package(&host, dir, &|_, _| {}).unwrap_err();
    assert!(
        refused.to_string().contains("differencing image"),
        "{refused}"
    );
    assert!(host.vms().unwrap().is_empty(), "nothing is defined");
}

/// Records in one 64 KiB qcow2 cluster, the grain a differential copies.
const RECORDS_PER_CLUSTER: u64 = 16;

/// A wrong base for the negative control: an older package's disks, or blank disks made in
/// a scratch directory (the VMs' disks before their writers started).
pub enum WrongBase<'a> {
    Older(&'a Package),
    Blank(&'a Path),
}

/// Negative control: the differential `chained` applied to `wrong` in place of its base (the
/// base file renamed aside, the wrong one hard-linked under its name, then put back). A VHDX
/// child must be refused by the chain reader (its parent's linkage); a qcow2 backing file is
/// only a name, so the record checks must refuse it wherever content can tell the bases
/// apart: where the base holds at least one cluster of records more than the wrong one (the
/// records in between are then zeros with the differential's data after them). Blank disks
/// always can. Returns what happened to each disk.
pub fn assert_wrong_base_rejected(chained: &Package, wrong: WrongBase, vms: &[&Vm]) -> Vec<String> {
    let mut outcomes = Vec::new();
    for vm in vms {
        for (i, guest_disk) in GUEST_DISKS.iter().enumerate() {
            let layers = package_layers(chained, &vm.id, i);
            let wrong_file = wrong_base_file(&wrong, &vm.id, i, &layers[1]);
            let counts = [&layers[1], &LayerSpec::new(&wrong_file, layers[1].format)]
                .map(|l| records_alone(&vm.name, guest_disk, l));
            let distinguishable = counts[0] >= counts[1] + RECORDS_PER_CLUSTER;
            if matches!(wrong, WrongBase::Blank(_)) {
                assert!(
                    distinguishable,
                    "{}/{guest_disk}: base counts {counts:?}",
                    vm.name
                );
            }

            let outcome = with_base_swapped(&layers[1].path, &wrong_file, || {
                applied_records(&vm.name, guest_disk, &layers)
            });
            let what = match outcome {
                Err(refusal) if layers[0].format == Format::Qcow2 && distinguishable => {
                    assert!(refusal.starts_with("records"), "{refusal}");
                    refusal
                }
                Err(refusal) => refusal,
                Ok(count) if layers[0].format == Format::Qcow2 && !distinguishable => format!(
                    "passed with {count} records: the wrong base holds {} of the base's {}, the same bytes below the changed clusters",
                    counts[1], counts[0]
                ),
                Ok(count) => panic!(
                    "{} over the wrong base {} passed with {count} records (base counts {counts:?}): the check has no teeth",
                    layers[0].path.display(),
                    wrong_file.display()
                ),
            };
            outcomes.push(format!("{}/{guest_disk}: {what}", vm.name));
        }
    }
    outcomes
}

/// The file that stands in for the base `base` of disk `index` of VM `vm_id`.
fn wrong_base_file(wrong: &WrongBase, vm_id: &str, index: usize, base: &LayerSpec) -> PathBuf {
    match wrong {
        WrongBase::Older(package) => {
            let vm = package.vms.iter().find(|v| v.record.id == vm_id).unwrap();
            vm.disk_files[index].clone().unwrap()
        }
        WrongBase::Blank(dir) => {
            let size = open_chain(std::slice::from_ref(base), false)
                .unwrap()
                .virtual_size();
            let path = dir.join(format!("{vm_id}-{index}.{}", base.format.name()));
            std::fs::create_dir_all(dir).unwrap();
            cosnap_disk::create(&path, base.format, size).unwrap();
            path
        }
    }
}

/// The record count of a standalone image (a full export's disk).
fn records_alone(vm_name: &str, guest_disk: &str, layer: &LayerSpec) -> u64 {
    let image = open_chain(std::slice::from_ref(layer), false).unwrap();
    scan(vm_name, guest_disk, image.as_ref()).unwrap().count
}

/// Runs `read` with `wrong` hard-linked in place of `base`, then puts `base` back.
fn with_base_swapped<T>(base: &Path, wrong: &Path, read: impl FnOnce() -> T) -> T {
    let aside = base.with_extension("aside");
    std::fs::rename(base, &aside).unwrap();
    std::fs::hard_link(wrong, base).unwrap();
    let outcome = read();
    std::fs::remove_file(base).unwrap();
    std::fs::rename(&aside, base).unwrap();
    outcome
}

/// The records check (a) finds through the chain `layers`, or how the chain was refused:
/// by the reader or by the records.
fn applied_records(vm_name: &str, guest_disk: &str, layers: &[LayerSpec]) -> Result<u64, String> {
    let image = open_chain(layers, false).map_err(|e| format!("reader: {e}"))?;
    scan(vm_name, guest_disk, image.as_ref())
        .map(|found| found.count)
        .map_err(|e| format!("records: {e}"))
}
