//! Export trust boundaries through the host API: a directory swapped for a symlink while a
//! job runs, two exports of one snapshot into one directory.

use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use cosnap_host::export::{ExportRequest, Roots, exported_path, start_export};
use cosnap_host::{DiskSpec, Host, VmSpec};

const MIB: u64 = 1 << 20;

/// A host with one collection of two VMs (qcow2, raw; 32 MiB, data written) and one
/// snapshot of it.
fn snapshot_fixture(root: &Path) -> (Host, String) {
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let host = Host::open(root.join("data")).unwrap();
    let coll = host.define_collection("group", None, 0).unwrap().id;
    for (i, (file, fmt)) in [("a.qcow2", Format::Qcow2), ("b.raw", Format::Raw)]
        .iter()
        .enumerate()
    {
        let path = images.join(file);
        cosnap_disk::create(&path, *fmt, 32 * MIB).unwrap();
        cosnap_disk::write_pattern(&path, 0, 16 * MIB, 0x30 + i as u8).unwrap();
        let vm = host
            .define_vm(&VmSpec {
                id: None,
                name: format!("vm{i}"),
                cpus: 1,
                memory_mb: 256,
                disks: vec![DiskSpec { path, format: None }],
                nics: vec![],
            })
            .unwrap();
        host.add_member(&coll, &vm.id).unwrap();
    }
    let job = host.start_create_snapshot(&coll, 2).unwrap();
    let job = host.wait_job(&job).unwrap();
    assert!(job.succeeded(), "{job:?}");
    let snap = job.created("Msvm_SnapshotCollection").unwrap().to_string();
    (host, snap)
}

fn request(snap: &str, dir: &Path, subdirectory: bool) -> ExportRequest {
    ExportRequest {
        create_subdirectory: subdirectory,
        ..ExportRequest::full(snap, dir)
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn verifies(package: &Path) -> bool {
    cosnap_export::verify_package(package).is_ok_and(|r| r.ok())
}

#[test]
fn an_export_directory_swapped_for_a_symlink_after_the_job_started_writes_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let (host, snap) = snapshot_fixture(t.path());
    let exports = t.path().join("exports");
    let outside = t.path().join("outside");
    let moved = t.path().join("exports-moved");
    std::fs::create_dir(&exports).unwrap();
    std::fs::create_dir(&outside).unwrap();
    for subdirectory in [true, false] {
        let job = start_export(
            &host,
            &request(&snap, &exports, subdirectory),
            Roots::Caller,
        )
        .unwrap();
        // ExportSnapshot has returned 4096: swap the directory for a link elsewhere.
        std::fs::rename(&exports, &moved).unwrap();
        std::os::unix::fs::symlink(&outside, &exports).unwrap();
        let j = host.wait_job(&job).unwrap();
        assert!(
            names(&outside).is_empty(),
            "written outside: {:?}",
            names(&outside)
        );
        assert!(j.succeeded(), "{j:?}");
        assert!(verifies(&moved.join(names(&moved).last().unwrap())) || verifies(&moved));
        std::fs::remove_file(&exports).unwrap();
        std::fs::rename(&moved, &exports).unwrap();
    }
}

#[test]
fn two_exports_of_one_snapshot_into_one_directory_never_lose_the_first() {
    let t = tempfile::tempdir().unwrap();
    let (host, snap) = snapshot_fixture(t.path());
    // With sub-directories both succeed, under distinct names.
    let sub = t.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let a = start_export(&host, &request(&snap, &sub, true), Roots::Caller).unwrap();
    let b = start_export(&host, &request(&snap, &sub, true), Roots::Caller).unwrap();
    for j in [&a, &b] {
        let job = host.wait_job(j).unwrap();
        assert!(job.succeeded(), "{job:?}");
    }
    let pa = exported_path(&host, &snap, &a).unwrap();
    let pb = exported_path(&host, &snap, &b).unwrap();
    assert_ne!(pa, pb);
    assert!(verifies(&pa) && verifies(&pb));
    assert_eq!(names(&sub).len(), 2, "{:?}", names(&sub));

    // Without: the second is refused (or fails) and the first survives.
    let flat = t.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    let a = start_export(&host, &request(&snap, &flat, false), Roots::Caller).unwrap();
    let b: Option<String> = start_export(&host, &request(&snap, &flat, false), Roots::Caller).ok();
    let ja = host.wait_job(&a).unwrap();
    assert!(ja.succeeded(), "{ja:?}");
    if let Some(b) = b {
        assert!(!host.wait_job(&b).unwrap().succeeded());
    }
    let pa: PathBuf = exported_path(&host, &snap, &a).unwrap();
    assert!(verifies(&pa), "the first package must survive");
    assert!(
        names(&flat).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        names(&flat)
    );
}
