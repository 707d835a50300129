//! The host over real disk images: snapshot lifecycle, guest bytes through every
//! operation, repository/file agreement, and every documented refusal changing nothing.

use std::path::{Path, PathBuf};

use cosnap_cim::{CimProvider, Instance, ObjectPath, Value};
use cosnap_disk::Format;
use cosnap_host::cim::{collection_path, snapshot_collection_path, vm_path};
use cosnap_host::{DiskSpec, Host, HostError, Nic, VmSpec};

const MIB: u64 = 1 << 20;

fn guest_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let img = cosnap_disk::open(path, false).unwrap();
    let mut buf = vec![0u8; len];
    img.read_at(&mut buf, offset).unwrap();
    buf
}

fn byte_at(path: &Path, offset: u64) -> u8 {
    guest_bytes(path, offset, 1)[0]
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// The storage root (disk images named over the API lie here).
    images: PathBuf,
    host: Host,
    vms: Vec<String>,
    coll: String,
}

/// Three VMs (vhdx, qcow2, raw; 16 MiB each, byte 0x11*(i+1) in the first MiB), one collection.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let host = Host::open_with(
        &data,
        cosnap_host::HostOptions {
            storage_roots: vec![images.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    let mut vms = Vec::new();
    for (i, (file, fmt)) in [
        ("a.vhdx", Format::Vhdx),
        ("b.qcow2", Format::Qcow2),
        ("c.raw", Format::Raw),
    ]
    .iter()
    .enumerate()
    {
        let path = images.join(file);
        cosnap_disk::create(&path, *fmt, 16 * MIB).unwrap();
        cosnap_disk::write_pattern(&path, 0, MIB, 0x11 * (i as u8 + 1)).unwrap();
        let vm = host
            .define_vm(&VmSpec {
                id: None,
                name: format!("vm{i}"),
                cpus: 2,
                memory_mb: 512,
                disks: vec![DiskSpec { path, format: None }],
                nics: vec![Nic {
                    mac: format!("00:15:5d:00:00:0{i}"),
                    switch_name: Some("sw".into()),
                }],
            })
            .unwrap();
        vms.push(vm.id);
    }
    let coll = host.define_collection("group", None, 0).unwrap().id;
    for v in &vms {
        host.add_member(&coll, v).unwrap();
    }
    Fixture {
        _dir: dir,
        data,
        images,
        host,
        vms,
        coll,
    }
}

fn snapshot(h: &Host, coll: &str, ty: u16) -> String {
    let job = h.start_create_snapshot(coll, ty).unwrap();
    let job = h.wait_job(&job).unwrap();
    assert!(job.succeeded(), "{job:?}");
    job.created("Msvm_SnapshotCollection").unwrap().to_string()
}

fn run(h: &Host, job: Result<String, HostError>) {
    let job = h.wait_job(&job.unwrap()).unwrap();
    assert!(job.succeeded(), "{job:?}");
}

fn active(h: &Host, vm: &str) -> PathBuf {
    h.vm(vm).unwrap().disks[0].path.clone()
}

/// Everything observable that a refused operation must leave alone.
fn state(f: &Fixture) -> String {
    let mut files: Vec<String> = walk(&f.data.join("disks"));
    files.sort();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        f.host.vms().unwrap(),
        f.host.collections().unwrap(),
        f.host.snapshots(None).unwrap(),
        f.host.refpoints(None).unwrap(),
        files
    )
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push(format!("{} {len}", e.path().display()));
            }
        }
    }
    out
}

#[test]
fn snapshot_lifecycle_keeps_guest_bytes() {
    let f = fixture();
    let h = &f.host;
    let s1 = snapshot(h, &f.coll, 2);
    let snap = h.snapshot(&s1).unwrap();
    assert_eq!(snap.vms.len(), 3);
    for (i, vm) in f.vms.iter().enumerate() {
        let a = active(h, vm);
        assert!(
            a.starts_with(h.data_dir().join("disks").join(vm)),
            "{}",
            a.display()
        );
        let fmt = h.vm(vm).unwrap().disks[0].format;
        assert_eq!(fmt, if i == 0 { Format::Vhdx } else { Format::Qcow2 });
        assert_eq!(byte_at(&a, 0), 0x11 * (i as u8 + 1));
        h.write_guest(vm, 0, 4 * MIB, MIB, 0xE0 + i as u8).unwrap();
    }
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    let s2 = snapshot(h, &f.coll, 1);
    for (i, vm) in f.vms.iter().enumerate() {
        h.write_guest(vm, 0, 8 * MIB, MIB, 0xF0 + i as u8).unwrap();
    }
    // Snapshot 1's frozen layers do not see the later writes.
    for v in &h.snapshot(&s1).unwrap().vms {
        assert_eq!(byte_at(&v.disks[0].path, 4 * MIB), 0);
    }
    // Destroy snapshot 1 (merge into the user's base): later state unchanged.
    run(h, h.start_destroy_snapshot(&s1));
    assert!(h.snapshot(&s1).is_err());
    for (i, vm) in f.vms.iter().enumerate() {
        let a = active(h, vm);
        assert_eq!(byte_at(&a, 0), 0x11 * (i as u8 + 1));
        assert_eq!(byte_at(&a, 4 * MIB), 0xE0 + i as u8);
        assert_eq!(byte_at(&a, 8 * MIB), 0xF0 + i as u8);
    }
    let snap2 = h.snapshot(&s2).unwrap();
    for (i, v) in snap2.vms.iter().enumerate() {
        assert_eq!(
            v.parent_vssd, None,
            "re-parented to the destroyed snapshot's parent"
        );
        assert_eq!(byte_at(&v.disks[0].path, 4 * MIB), 0xE0 + i as u8);
        assert_eq!(byte_at(&v.disks[0].path, 8 * MIB), 0);
    }
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    // Apply snapshot 2: the write at 8 MiB disappears.
    run(h, h.start_apply_snapshot(&s2));
    for (i, vm) in f.vms.iter().enumerate() {
        let a = active(h, vm);
        assert_eq!(byte_at(&a, 4 * MIB), 0xE0 + i as u8);
        assert_eq!(byte_at(&a, 8 * MIB), 0);
        assert_eq!(
            h.vm(vm).unwrap().parent_snapshot.as_deref(),
            Some(snap2.vms[i].vssd_id.as_str())
        );
    }
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    // Destroy snapshot 2 (its frozen layer has one child: the new active layer).
    run(h, h.start_destroy_snapshot(&s2));
    for (i, vm) in f.vms.iter().enumerate() {
        assert_eq!(byte_at(&active(h, vm), 4 * MIB), 0xE0 + i as u8);
    }
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    assert!(h.jobs().unwrap().iter().all(|j| j.succeeded()));
}

#[test]
fn destroy_with_several_children_pulls() {
    let f = fixture();
    let h = &f.host;
    let _s0 = snapshot(h, &f.coll, 1);
    let s1 = snapshot(h, &f.coll, 1);
    let s1_frozen = h.snapshot(&s1).unwrap().vms[1].disks[0].path.clone();
    h.write_guest(&f.vms[1], 0, 2 * MIB, MIB, 0xAA).unwrap();
    let s2 = snapshot(h, &f.coll, 1);
    h.write_guest(&f.vms[1], 0, 3 * MIB, MIB, 0xBB).unwrap();
    // Apply s2: s2's frozen layer gets a second child?? No: the old active is deleted, so
    // apply s1 instead, then s2's and s1's layers branch.
    run(h, h.start_apply_snapshot(&s1));
    h.write_guest(&f.vms[1], 0, 5 * MIB, MIB, 0xCC).unwrap();
    // s1's frozen layer now has two children: s2's frozen layer and the new active layer.
    run(h, h.start_destroy_snapshot(&s1));
    assert!(
        !s1_frozen.exists(),
        "an owned layer with two children is pulled into them and deleted"
    );
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    let a = active(h, &f.vms[1]);
    assert_eq!(byte_at(&a, 0), 0x22);
    assert_eq!(byte_at(&a, 2 * MIB), 0);
    assert_eq!(byte_at(&a, 5 * MIB), 0xCC);
    let s2v = h.snapshot(&s2).unwrap();
    assert_eq!(byte_at(&s2v.vms[1].disks[0].path, 2 * MIB), 0xAA);
    assert_eq!(byte_at(&s2v.vms[1].disks[0].path, 0), 0x22);
    run(h, h.start_apply_snapshot(&s2));
    assert_eq!(byte_at(&active(h, &f.vms[1]), 2 * MIB), 0xAA);
    assert_eq!(byte_at(&active(h, &f.vms[1]), 5 * MIB), 0);
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
}

#[test]
fn reference_points_keep_change_boundaries() {
    let f = fixture();
    let h = &f.host;
    let s1 = snapshot(h, &f.coll, 2);
    let job = h
        .wait_job(&h.start_convert_to_refpoint(&s1).unwrap())
        .unwrap();
    assert!(job.succeeded(), "{job:?}");
    let rp_id = job
        .created("Msvm_ReferencePointCollection")
        .unwrap()
        .to_string();
    assert!(h.snapshot(&s1).is_err(), "the snapshot goes away");
    let rp = h.refpoint(&rp_id).unwrap();
    assert_eq!((rp.rp_type, rp.consistency), (2, 1));
    let disks = rp.vms.iter().map(|v| v.disks.len()).sum::<usize>();
    assert_eq!(
        h.refpoint_tracked_disks(&rp_id).unwrap(),
        (0, disks),
        "VMs that were off keep no bitmaps"
    );
    for v in &rp.vms {
        let rct = &v.disks[0].rct_id;
        assert!(rct.starts_with("rctX:") && rct.len() == 5 + 36 + 9, "{rct}");
    }
    h.write_guest(&f.vms[0], 0, 6 * MIB, MIB, 0x66).unwrap();
    let s2 = snapshot(h, &f.coll, 2);
    let snap2 = h.snapshot(&s2).unwrap();
    for (v, rv) in snap2.vms.iter().zip(&rp.vms) {
        let base = h.change_base(&v.disks[0].path, &rv.disks[0].path).unwrap();
        let ranges = cosnap_disk::changed_ranges(&v.disks[0].path, &base).unwrap();
        if v.vm_id == f.vms[0] {
            assert!(
                ranges
                    .iter()
                    .any(|r| r.start <= 6 * MIB && r.end >= 7 * MIB),
                "{ranges:?}"
            );
            let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            assert!(total < 2 * MIB, "{ranges:?}");
        } else {
            assert!(ranges.is_empty(), "{ranges:?}");
        }
    }
    // Destroying s2 merges above the boundary; the boundary stays exact.
    run(h, h.start_destroy_snapshot(&s2));
    let rv = &h.refpoint(&rp_id).unwrap().vms[0];
    let top = active(h, &f.vms[0]);
    let base = h.change_base(&top, &rv.disks[0].path).unwrap();
    let ranges = cosnap_disk::changed_ranges(&top, &base).unwrap();
    assert!(
        ranges
            .iter()
            .any(|r| r.start <= 6 * MIB && r.end >= 7 * MIB),
        "{ranges:?}"
    );
    // A converted standard snapshot is refused; an unrelated layer is "change info gone".
    let s3 = snapshot(h, &f.coll, 1);
    assert!(matches!(
        h.start_convert_to_refpoint(&s3),
        Err(HostError::InvalidState(_))
    ));
    assert!(matches!(
        h.change_base(&rv.disks[0].path, &top),
        Err(HostError::ChangeInfoGone(_))
    ));
    run(h, h.start_destroy_refpoint(&rp_id));
    assert!(h.refpoint(&rp_id).is_err());
    assert_eq!(byte_at(&active(h, &f.vms[0]), 6 * MIB), 0x66);
    assert_eq!(byte_at(&active(h, &f.vms[0]), 0), 0x11);
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
}

#[test]
fn refusals_change_nothing() {
    let f = fixture();
    let h = &f.host;
    let s1 = snapshot(h, &f.coll, 1);
    let before = state(&f);
    // Host API.
    assert!(matches!(
        h.define_collection("x", Some(&f.coll), 0),
        Err(HostError::AlreadyExists(_))
    ));
    assert!(matches!(
        h.add_member(&f.coll, &f.vms[0]),
        Err(HostError::AlreadyExists(_))
    ));
    let other = tempfile::tempdir().unwrap();
    let _ = other;
    assert!(matches!(
        h.remove_member(&f.coll, "00000000-0000-0000-0000-000000000000"),
        Err(HostError::NotFound(_))
    ));
    assert!(matches!(
        h.start_convert_to_refpoint(&s1),
        Err(HostError::InvalidState(_))
    ));
    assert!(matches!(
        h.start_create_snapshot(&f.coll, 7),
        Err(HostError::InvalidParameter(_))
    ));
    assert!(matches!(
        h.start_destroy_snapshot("nope"),
        Err(HostError::NotFound(_))
    ));
    assert!(matches!(h.destroy_vm(&f.vms[0]), Err(HostError::InUse(_))));
    assert!(matches!(
        h.destroy_collection(&f.coll),
        Err(HostError::InvalidState(_))
    ));
    h.remove_member_by_id(&f.vms[0], "11111111-2222-3333-4444-555555555555")
        .unwrap();
    // In use by an export.
    {
        let _guard = h.mark_in_use(&s1, "test-job").unwrap();
        assert!(matches!(
            h.start_apply_snapshot(&s1),
            Err(HostError::InUse(_))
        ));
        assert!(matches!(
            h.start_destroy_snapshot(&s1),
            Err(HostError::InUse(_))
        ));
    }
    assert_eq!(before, state(&f));

    // Through the CIM provider: codes and no change.
    let svc = |c: &str| h.service_path(c);
    let call = |c: &str, m: &str, p: Vec<(&str, Value)>| {
        h.invoke_method(
            &svc(c),
            m,
            p.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        )
        .unwrap()
        .return_value
    };
    let coll_ref = Value::Reference(collection_path(&f.coll, 0));
    let snap_ref = Value::Reference(snapshot_collection_path(&s1));
    let missing_snap = Value::Reference(snapshot_collection_path(
        "00000000-0000-0000-0000-000000000000",
    ));
    let cs = "Msvm_CollectionSnapshotService";
    let cm = "Msvm_CollectionManagementService";
    assert_eq!(
        call(
            cs,
            "ConvertToReferencePoint",
            vec![("AffectedSnapshotCollection", snap_ref.clone())]
        ),
        5
    );
    assert_eq!(
        call(
            cs,
            "DestroySnapshot",
            vec![("AffectedSnapshotCollection", missing_snap.clone())]
        ),
        4
    );
    assert_eq!(
        call(
            cs,
            "ApplySnapshot",
            vec![("SnapshotCollection", Value::String("garbage path".into()))]
        ),
        4
    );
    assert_eq!(
        call(
            cs,
            "ApplySnapshot",
            vec![("SnapshotCollection", coll_ref.clone())]
        ),
        6
    );
    assert_eq!(
        call(
            cs,
            "CreateSnapshot",
            vec![
                ("Collection", coll_ref.clone()),
                ("SnapshotType", Value::Uint16(2)),
                (
                    "SnapshotSettings",
                    Value::String("<INSTANCE CLASSNAME=".into())
                )
            ]
        ),
        4
    );
    assert_eq!(
        call(
            cs,
            "CreateSnapshot",
            vec![
                ("Collection", coll_ref.clone()),
                ("SnapshotType", Value::Uint16(2)),
                (
                    "SnapshotSettings",
                    Value::Instance(Box::new(Instance::new("Msvm_Bogus")))
                )
            ]
        ),
        4
    );
    assert_eq!(
        call(
            cs,
            "CreateSnapshot",
            vec![
                ("Collection", coll_ref.clone()),
                ("SnapshotType", Value::Uint16(9))
            ]
        ),
        4
    );
    assert_eq!(
        call(
            cm,
            "DefineCollection",
            vec![
                ("Name", Value::String("dup".into())),
                ("Id", Value::String(f.coll.clone())),
                ("Type", Value::Uint16(0))
            ]
        ),
        32773
    );
    assert_eq!(
        call(
            cm,
            "AddMember",
            vec![
                ("Member", Value::Reference(vm_path(&f.vms[0]))),
                ("Collection", coll_ref.clone())
            ]
        ),
        32773
    );
    assert_eq!(
        call(
            cm,
            "RemoveMember",
            vec![
                (
                    "Member",
                    Value::Reference(vm_path("00000000-0000-0000-0000-000000000001"))
                ),
                ("Collection", coll_ref.clone())
            ]
        ),
        32779
    );
    assert_eq!(call(cm, "RenameCollection", vec![("Collection", Value::String("\\\\H\\root\\virtualization\\v2:Msvm_VirtualSystemCollection.CollectionID=\"00000000-0000-0000-0000-000000000009\"".into())), ("NewName", Value::String("n".into()))]), 32779);
    assert_eq!(
        call(
            cm,
            "DestroyCollection",
            vec![("Collection", Value::String("not a path".into()))]
        ),
        32773
    );
    assert_eq!(
        call(
            cm,
            "RemoveMemberById",
            vec![
                ("Member", Value::Reference(vm_path(&f.vms[0]))),
                (
                    "CollectionId",
                    Value::String("99999999-2222-3333-4444-555555555555".into())
                )
            ]
        ),
        0
    );
    {
        let _guard = h.mark_in_use(&s1, "test-job-2").unwrap();
        assert_eq!(
            call(
                cs,
                "ApplySnapshot",
                vec![("SnapshotCollection", snap_ref.clone())]
            ),
            5
        );
    }
    assert_eq!(before, state(&f));
}

#[test]
fn provider_serves_the_model() {
    let f = fixture();
    let h = &f.host;
    let svc = h.service_path("Msvm_CollectionSnapshotService");
    let out = h
        .invoke_method(
            &svc,
            "CreateSnapshot",
            vec![
                (
                    "Collection".into(),
                    Value::String(h.path_text(&collection_path(&f.coll, 0))),
                ),
                ("SnapshotSettings".into(), Value::String(String::new())),
                ("SnapshotType".into(), Value::Uint16(2)),
            ],
        )
        .unwrap();
    assert_eq!(out.return_value, 4096);
    let job_path = out
        .out_params
        .iter()
        .find(|(n, _)| n == "Job")
        .and_then(|(_, v)| v.as_reference())
        .unwrap()
        .clone();
    let job_id = job_path.key_str("InstanceID").unwrap().to_string();
    h.wait_job(&job_id).unwrap();
    let job = h.get_instance(&job_path).unwrap();
    assert_eq!(job.get("JobState"), Some(&Value::Uint16(7)));
    assert_eq!(job.get("JobType"), Some(&Value::Uint16(198)));
    assert_eq!(
        job.get("TimeBeforeRemoval").and_then(Value::as_str),
        Some("00000000000500.000000:000")
    );
    let snaps = h
        .associators(
            &job_path,
            &cosnap_cim::AssocFilter {
                result_class: Some("Msvm_SnapshotCollection".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(snaps.len(), 1);
    let sc = snaps[0].path.clone().unwrap();
    let members = h
        .associators(
            &sc,
            &cosnap_cim::AssocFilter {
                assoc_class: Some("Msvm_CollectedSnapshots".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(members.len(), 3);
    for m in &members {
        assert_eq!(
            m.get("VirtualSystemType").and_then(Value::as_str),
            Some("Microsoft:Hyper-V:Snapshot:Recovery")
        );
        assert!(m.get("CreationTime").is_some());
    }
    let vms = h.enumerate_instances("CIM_ComputerSystem").unwrap();
    assert_eq!(vms.len(), 3);
    assert!(
        vms.iter()
            .any(|v| v.get("Name").and_then(Value::as_str) == Some(f.vms[0].as_str()))
    );
    for c in [
        "Msvm_CollectionManagementService",
        "Msvm_CollectionSnapshotService",
        "Msvm_CollectionReferencePointService",
        "Msvm_VirtualSystemManagementService",
    ] {
        let all = h.enumerate_instances(c).unwrap();
        assert_eq!(all.len(), 1, "{c}");
        assert_eq!(
            all[0]
                .get("SystemCreationClassName")
                .and_then(Value::as_str),
            Some("Msvm_ComputerSystem")
        );
        h.get_instance(all[0].path.as_ref().unwrap()).unwrap();
    }
    let rasds = h
        .enumerate_instances("CIM_ResourceAllocationSettingData")
        .unwrap();
    assert!(
        rasds
            .iter()
            .any(|r| r.class_name == "Msvm_StorageAllocationSettingData")
    );
    // Convert through the provider, then find the RP from the job.
    let out = h
        .invoke_method(
            &svc,
            "ConvertToReferencePoint",
            vec![(
                "AffectedSnapshotCollection".into(),
                Value::Reference(sc.clone()),
            )],
        )
        .unwrap();
    assert_eq!(out.return_value, 4096);
    let jp = out.out_params[0].1.as_reference().unwrap().clone();
    h.wait_job(jp.key_str("InstanceID").unwrap()).unwrap();
    let rpc = h
        .associators(&jp, &cosnap_cim::AssocFilter::default())
        .unwrap();
    assert_eq!(rpc[0].class_name, "Msvm_ReferencePointCollection");
    let rps = h
        .associators(
            rpc[0].path.as_ref().unwrap(),
            &cosnap_cim::AssocFilter {
                result_class: Some("Msvm_VirtualSystemReferencePoint".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(rps.len(), 3);
    // DefineSystem through the provider.
    let vsms = h.service_path("Msvm_VirtualSystemManagementService");
    let img = f.images.join("new.raw");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let vssd = Instance::new("Msvm_VirtualSystemSettingData").with(
        "ElementName",
        cosnap_cim::CimType::String,
        Some(Value::String("api-vm".into())),
    );
    let disk = Instance::new("Msvm_StorageAllocationSettingData").with(
        "HostResource",
        cosnap_cim::CimType::String,
        Some(Value::Array(vec![Value::String(img.display().to_string())])),
    );
    let out = h
        .invoke_method(
            &vsms,
            "DefineSystem",
            vec![
                ("SystemSettings".into(), Value::Instance(Box::new(vssd))),
                (
                    "ResourceSettings".into(),
                    Value::Array(vec![Value::String(cosnap_cim::embedded::encode(&disk))]),
                ),
            ],
        )
        .unwrap();
    assert_eq!(out.return_value, 0);
    let vm: ObjectPath = out.out_params[0].1.as_reference().unwrap().clone();
    assert_eq!(
        h.get_instance(&vm)
            .unwrap()
            .get("ElementName")
            .and_then(Value::as_str),
        Some("api-vm")
    );
    let out = h
        .invoke_method(
            &vsms,
            "DestroySystem",
            vec![("AffectedSystem".into(), Value::Reference(vm))],
        )
        .unwrap();
    assert_eq!(out.return_value, 0);
}

#[test]
fn cancelled_job_rolls_back() {
    let f = fixture();
    let h = &f.host;
    let before = state(&f);
    // Hold the repository lock so the job waits, cancel it, then release.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(h.data_dir().join("lock"))
        .unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc_flock(lock.as_raw_fd(), 2) }, 0);
    let job = h.start_create_snapshot(&f.coll, 1).unwrap();
    assert_eq!(h.request_job_state(&job, 4).unwrap(), 4096);
    drop(lock);
    let j = h.wait_job(&job).unwrap();
    assert_eq!(j.state, 8, "{j:?}");
    assert_eq!(before, state(&f));
    assert!(h.verify().unwrap().is_empty());
}

unsafe extern "C" {
    #[link_name = "flock"]
    fn libc_flock(fd: i32, op: i32) -> i32;
}

#[test]
fn failed_job_reports_msvm_error() {
    let f = fixture();
    let h = &f.host;
    let s1 = snapshot(h, &f.coll, 1);
    // Remove a frozen layer behind the host's back: the apply job must fail with Exception.
    let frozen = h.snapshot(&s1).unwrap().vms[1].disks[0].path.clone();
    let saved = f.data.join("saved");
    std::fs::rename(&frozen, &saved).unwrap();
    let job = h.start_apply_snapshot(&s1).unwrap();
    let j = h.wait_job(&job).unwrap();
    assert_eq!(j.state, 10, "{j:?}");
    assert!(
        j.error_description
            .as_deref()
            .unwrap_or("")
            .contains("disk"),
        "{j:?}"
    );
    let jp = cosnap_host::cim::job_path(&job);
    let out = h.invoke_method(&jp, "GetError", vec![]).unwrap();
    assert_eq!(out.return_value, 0);
    let err = out.out_params[0].1.as_instance().unwrap();
    assert_eq!(err.class_name, "Msvm_Error");
    assert!(err.get("Message").and_then(Value::as_str).is_some());
    let text = cosnap_cim::embedded::encode(err);
    assert!(text.contains("Msvm_Error"));
    let out = h.invoke_method(&jp, "GetErrorEx", vec![]).unwrap();
    assert_eq!(out.out_params[0].1.as_array().unwrap().len(), 1);
    // Rolled back: nothing changed, the repository still agrees with the files.
    std::fs::rename(&saved, &frozen).unwrap();
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    // A successful job has no error.
    let ok = h.start_create_snapshot(&f.coll, 1).unwrap();
    h.wait_job(&ok).unwrap();
    let out = h
        .invoke_method(&cosnap_host::cim::job_path(&ok), "GetError", vec![])
        .unwrap();
    assert!(out.out_params.is_empty());
    assert_eq!(
        h.invoke_method(
            &cosnap_host::cim::job_path(&ok),
            "RequestStateChange",
            vec![("RequestedState".into(), Value::Uint16(4))]
        )
        .unwrap()
        .return_value,
        4097
    );
}

#[test]
fn interrupted_job_is_exception_after_restart() {
    let f = fixture();
    let data = f.data.clone();
    // A job row owned by a process that no longer exists.
    let host = &f.host;
    let job = host
        .start_job(62, "Export", "test", true, |_| Ok(vec![]))
        .unwrap();
    host.wait_job(&job).unwrap();
    drop(f.host);
    let conn = rusqlite_free_update(&data, &job);
    assert!(conn);
    let host = Host::open(&data).unwrap();
    let j = host.job(&job).unwrap();
    assert_eq!(j.state, 10);
    assert_eq!(j.error_description.as_deref(), Some("interrupted"));
}

/// Marks a job Running under an owner process that does not exist.
fn rusqlite_free_update(data: &Path, job: &str) -> bool {
    let conn = rusqlite::Connection::open(data.join("cosnap.db")).unwrap();
    conn.execute(
        "UPDATE jobs SET state = 4, finished_ms = NULL, owner_pid = 999999999 WHERE id = ?1",
        [job],
    )
    .unwrap()
        == 1
}

/// Every service method's success path through the provider.
#[test]
fn every_method_succeeds_through_the_provider() {
    let f = fixture();
    let h = &f.host;
    let call = |class: &str, m: &str, p: Vec<(&str, Value)>| {
        h.invoke_method(
            &h.service_path(class),
            m,
            p.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        )
        .unwrap()
    };
    let wait_created = |out: &cosnap_cim::MethodOutcome, class: &str| -> Option<String> {
        assert_eq!(out.return_value, 4096, "{out:?}");
        let jp = out
            .out_params
            .iter()
            .find(|(n, _)| n == "Job")
            .unwrap()
            .1
            .as_reference()
            .unwrap()
            .clone();
        let j = h.wait_job(jp.key_str("InstanceID").unwrap()).unwrap();
        assert!(j.succeeded(), "{j:?}");
        j.created(class).map(str::to_string)
    };
    let cm = "Msvm_CollectionManagementService";
    let out = call(
        cm,
        "DefineCollection",
        vec![
            ("Name", Value::String("second".into())),
            ("Id", Value::String("".into())),
            ("Type", Value::Uint16(0)),
        ],
    );
    assert_eq!(out.return_value, 0);
    let c2 = out.out_params[0].1.as_reference().unwrap().clone();
    assert_eq!(
        call(
            cm,
            "RenameCollection",
            vec![
                ("Collection", Value::Reference(c2.clone())),
                ("NewName", Value::String("renamed".into()))
            ]
        )
        .return_value,
        0
    );
    assert_eq!(
        h.get_instance(&c2)
            .unwrap()
            .get("ElementName")
            .and_then(Value::as_str),
        Some("renamed")
    );
    let vm0 = Value::Reference(vm_path(&f.vms[0]));
    assert_eq!(
        call(
            cm,
            "AddMember",
            vec![
                ("Member", vm0.clone()),
                ("Collection", Value::Reference(c2.clone()))
            ]
        )
        .return_value,
        0
    );
    assert_eq!(
        h.associators(&c2, &cosnap_cim::AssocFilter::default())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(
            cm,
            "RemoveMember",
            vec![
                ("Member", vm0.clone()),
                ("Collection", Value::Reference(c2.clone()))
            ]
        )
        .return_value,
        0
    );
    assert_eq!(
        call(
            cm,
            "AddMember",
            vec![
                ("Member", vm0.clone()),
                ("Collection", Value::Reference(c2.clone()))
            ]
        )
        .return_value,
        0
    );
    let c2_id = c2.key_str("CollectionID").unwrap().to_string();
    assert_eq!(
        call(
            cm,
            "RemoveMemberById",
            vec![
                ("Member", vm0.clone()),
                ("CollectionId", Value::String(c2_id.clone()))
            ]
        )
        .return_value,
        0
    );
    assert!(h.collection(&c2_id).unwrap().members.is_empty());
    let mgmt = call(
        cm,
        "DefineCollection",
        vec![
            ("Name", Value::String("mgmt".into())),
            ("Type", Value::Uint16(1)),
        ],
    );
    let mgmt = mgmt.out_params[0].1.as_reference().unwrap().clone();
    assert_eq!(mgmt.class_name, "Msvm_ManagementCollection");
    assert_eq!(
        call(
            cm,
            "AddMember",
            vec![
                ("Member", Value::Reference(c2.clone())),
                ("Collection", Value::Reference(mgmt.clone()))
            ]
        )
        .return_value,
        0
    );
    assert_eq!(
        h.enumerate_instances("Msvm_CollectedCollections")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(
            cm,
            "DestroyCollection",
            vec![("Collection", Value::Reference(mgmt))]
        )
        .return_value,
        0
    );
    assert_eq!(
        call(
            cm,
            "DestroyCollection",
            vec![("Collection", Value::Reference(c2))]
        )
        .return_value,
        0
    );

    let cs = "Msvm_CollectionSnapshotService";
    let group = Value::Reference(collection_path(&f.coll, 0));
    let settings = Instance::new("Msvm_VirtualSystemSnapshotSettingData").with(
        "ConsistencyLevel",
        cosnap_cim::CimType::Uint8,
        Some(Value::Uint8(2)),
    );
    let out = call(
        cs,
        "CreateSnapshot",
        vec![
            ("Collection", group.clone()),
            (
                "SnapshotSettings",
                Value::String(cosnap_cim::embedded::encode(&settings)),
            ),
            ("SnapshotType", Value::Uint16(1)),
        ],
    );
    let s1 = wait_created(&out, "Msvm_SnapshotCollection").unwrap();
    let out = call(
        cs,
        "CreateSnapshot",
        vec![
            ("Collection", group.clone()),
            ("SnapshotType", Value::Uint16(2)),
        ],
    );
    let s2 = wait_created(&out, "Msvm_SnapshotCollection").unwrap();
    // Parent of snapshot 2's VSSDs = snapshot 1's VSSDs, as WMI path text.
    let snap2 = h.snapshot(&s2).unwrap();
    let snap1 = h.snapshot(&s1).unwrap();
    assert_eq!(
        snap2.vms[0].parent_vssd.as_deref(),
        Some(snap1.vms[0].vssd_id.as_str())
    );
    let (vssd, _) = h.snapshot_vm_instances(&snap2, &snap2.vms[0]);
    let parent = vssd.get("Parent").and_then(Value::as_str).unwrap();
    assert!(
        parent.starts_with("\\\\")
            && parent.contains(":Msvm_VirtualSystemSettingData.InstanceID=\"Microsoft:"),
        "{parent}"
    );
    wait_created(
        &call(
            cs,
            "ApplySnapshot",
            vec![(
                "SnapshotCollection",
                Value::Reference(snapshot_collection_path(&s1)),
            )],
        ),
        "x",
    );
    wait_created(
        &call(
            cs,
            "DestroySnapshot",
            vec![(
                "AffectedSnapshotCollection",
                Value::Reference(snapshot_collection_path(&s1)),
            )],
        ),
        "x",
    );
    let rp = wait_created(
        &call(
            cs,
            "ConvertToReferencePoint",
            vec![(
                "AffectedSnapshotCollection",
                Value::Reference(snapshot_collection_path(&s2)),
            )],
        ),
        "Msvm_ReferencePointCollection",
    )
    .unwrap();
    let rps = "Msvm_CollectionReferencePointService";
    let rp2 = wait_created(
        &call(
            rps,
            "CreateReferencePoint",
            vec![
                ("Collection", group.clone()),
                ("ReferencePointType", Value::Uint16(2)),
            ],
        ),
        "Msvm_ReferencePointCollection",
    )
    .unwrap();
    assert_eq!(h.refpoints(None).unwrap().len(), 2);
    assert_eq!(
        call(
            rps,
            "CreateReferencePoint",
            vec![
                ("Collection", group.clone()),
                ("ReferencePointType", Value::Uint16(1))
            ]
        )
        .return_value,
        1
    );
    for id in [rp, rp2] {
        let r = h.refpoint(&id).unwrap();
        let p = cosnap_host::cim::refpoint_collection_path(&r.id, &r.collection_id);
        wait_created(
            &call(
                rps,
                "DestroyReferencePoint",
                vec![("AffectedReferencePointCollection", Value::Reference(p))],
            ),
            "x",
        );
    }
    assert!(h.refpoints(None).unwrap().is_empty());
    assert!(h.snapshots(None).unwrap().is_empty());
    assert!(h.verify().unwrap().is_empty(), "{:?}", h.verify());
    for (i, vm) in f.vms.iter().enumerate() {
        assert_eq!(byte_at(&active(h, vm), 0), 0x11 * (i as u8 + 1));
    }
}

/// An enumeration's cursor keeps ids: VMs destroyed while it is open are skipped, and a
/// batch whose first ids are all gone reads on rather than ending the enumeration early.
#[test]
fn enumeration_cursor_skips_vms_destroyed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let h = Host::open(dir.path().join("data")).unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let disk = dir.path().join(format!("vm{i}.raw"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let spec = VmSpec::new(format!("cursor-vm-{i}"), vec![DiskSpec::raw(disk)]);
        ids.push(h.define_vm(&spec).unwrap().id);
    }
    let name = |i: &Instance| match i.get("Name") {
        Some(Value::String(s)) => s.clone(),
        other => panic!("Name is {other:?}"),
    };

    let mut cursor = h.enumerate_cursor("Msvm_ComputerSystem").unwrap();
    let first: Vec<String> = cursor.next_batch(&h, 2).unwrap().iter().map(name).collect();
    assert_eq!(first, ids[..2]);
    for gone in &ids[2..5] {
        h.destroy_vm(gone).unwrap();
    }
    let rest: Vec<String> = cursor.next_batch(&h, 2).unwrap().iter().map(name).collect();
    assert_eq!(rest, ids[5..]);
    assert!(cursor.is_exhausted());
}
