//! Formats and parents come from the repository, never from guest-writable content
//! (issue 9, finding 1). A guest controls every byte of a raw disk, so it can make the disk
//! look like a qcow2 image naming a host file as its backing file; and a "guest" (or
//! anyone who can write a layer) can rewrite a qcow2 layer's backing reference. Neither may
//! make cosnap read that host file. `qemu-img` is the oracle for guest bytes.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cosnap_disk::Format;
use cosnap_host::export::{ExportRequest, Roots};
use cosnap_host::{DiskSpec, Host, VmSpec};
use cosnap_test_support::{qcow2_overlay, qcow2_rebase_unsafe, qemu_img};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;
const SECRET_BYTE: u8 = 0x5a;

/// A host file nobody may read through cosnap: 4 MiB of 0x5a.
fn secret(dir: &Path) -> PathBuf {
    let p = dir.join("secret.bin");
    std::fs::write(&p, vec![SECRET_BYTE; 4 * MIB as usize]).unwrap();
    p
}

/// The guest bytes of `image` read by qemu-img as `format`.
fn guest_bytes(image: &Path, format: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("guest-bytes.raw");
    let _ = std::fs::remove_file(&out);
    qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::read(&out).unwrap()
}

fn define(h: &Host, name: &str, disk: &Path, format: Option<Format>) -> String {
    let vm = h
        .define_vm(&VmSpec {
            id: None,
            name: name.into(),
            cpus: 1,
            memory_mb: 256,
            disks: vec![DiskSpec {
                path: disk.to_path_buf(),
                format,
            }],
            nics: vec![],
        })
        .unwrap();
    let coll = h
        .define_collection(&format!("{name}-group"), None, 0)
        .unwrap();
    h.add_member(&coll.id, &vm.id).unwrap();
    coll.id
}

fn snapshot(h: &Host, coll: &str) -> String {
    let job = h
        .wait_job(&h.start_create_snapshot(coll, 2).unwrap())
        .unwrap();
    assert!(job.succeeded(), "{job:?}");
    job.created("Msvm_SnapshotCollection").unwrap().to_string()
}

/// Every file under `dir` (recursively) whose name ends with `.ext`.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_ext(&p, ext));
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_raw_disk_that_looks_like_qcow2_is_snapshotted_and_exported_as_its_own_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret(tmp.path());
    // The guest wrote a qcow2 header naming the host file into the first bytes of its disk.
    let lure = tmp.path().join("lure.qcow2");
    qcow2_overlay(&lure, &secret, "raw", &SIZE.to_string());
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let disk = images.join("guest.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(&std::fs::read(&lure).unwrap(), 0).unwrap();
    f.write_all_at(&[0x77; 4096], 8 * MIB).unwrap();
    drop(f);
    let own = std::fs::read(&disk).unwrap();

    let h = Host::open(tmp.path().join("data")).unwrap();
    let coll = define(&h, "lured", &disk, Some(Format::Raw));
    let snap = snapshot(&h, &coll);

    // The active layer (a qcow2 child of the raw disk) reads the raw disk as raw.
    let vm = h.vms().unwrap().remove(0);
    assert_eq!(
        guest_bytes(&vm.disks[0].path, "qcow2", tmp.path()),
        own,
        "the snapshot's child reads its parent as the recorded format"
    );

    // A full export writes the disk's own bytes.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let job =
        cosnap_host::export::start_export(&h, &ExportRequest::full(&snap, &out), Roots::Caller)
            .unwrap();
    let job = h.wait_job(&job).unwrap();
    assert!(job.succeeded(), "{job:?}");
    let exported = files_with_ext(&out, "raw");
    assert_eq!(exported.len(), 1, "{exported:?}");
    let bytes = std::fs::read(&exported[0]).unwrap();
    assert_eq!(bytes.len(), own.len());
    assert!(
        bytes == own,
        "the export holds other bytes than the disk (the secret's 0x5a: {})",
        bytes[..4 * MIB as usize].iter().all(|b| *b == SECRET_BYTE)
    );
    assert!(h.verify().unwrap().is_empty());

    // The package records the disk as raw: verify and import read it as raw, not as the
    // qcow2 its bytes look like (which names a host file outside the export directory).
    let package = files_with_ext(&out, "json")
        .into_iter()
        .find(|p| p.ends_with("cosnap-package.json"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap();
    let report = cosnap_export::verify_package(&package).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let h2 = Host::open(tmp.path().join("data2")).unwrap();
    let imported = cosnap_host::import::import_package(&h2, &package, &|_, _| {}).unwrap();
    assert_eq!(imported.disks.len(), 1);
    assert!(
        std::fs::read(&imported.disks[0]).unwrap() == own,
        "the imported disk holds other bytes than the exported one"
    );
}

#[test]
fn a_qcow2_layer_whose_backing_file_was_rewritten_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret(tmp.path());
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let base = images.join("base.qcow2");
    cosnap_disk::create(&base, Format::Qcow2, SIZE).unwrap();
    cosnap_disk::write_pattern(&base, 0, MIB, 0x11).unwrap();

    let h = Host::open(tmp.path().join("data")).unwrap();
    let coll = define(&h, "victim", &base, None);
    snapshot(&h, &coll);
    let vm = h.vms().unwrap().remove(0);
    h.write_guest(&vm.id, 0, 2 * MIB, MIB, 0x22).unwrap();
    let snap = snapshot(&h, &coll);
    let frozen = h.snapshot(&snap).unwrap().vms[0].disks[0].path.clone();
    assert_ne!(
        frozen, base,
        "the second snapshot freezes the first one's child"
    );

    // Something that can write the layer points it at a host file.
    qcow2_rebase_unsafe(&frozen, &secret, "raw");

    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let started =
        cosnap_host::export::start_export(&h, &ExportRequest::full(&snap, &out), Roots::Caller);
    let refused = match started {
        Err(r) => r.to_string(),
        Ok(job) => {
            let job = h.wait_job(&job).unwrap();
            assert!(
                !job.succeeded(),
                "the export followed the rewritten backing file: {job:?}"
            );
            job.error_description.unwrap_or_default()
        }
    };
    assert!(
        refused.contains("refusing to follow"),
        "the refusal names the cause: {refused}"
    );
    for ext in ["qcow2", "raw"] {
        assert!(files_with_ext(&out, ext).is_empty(), "no disk was exported");
    }
    // Guest writes through the chain are refused too, and verify names the layer.
    assert!(h.write_guest(&vm.id, 0, 0, 4096, 0x33).is_err());
    let problems = h.verify().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&frozen.display().to_string())),
        "{problems:?}"
    );
}
