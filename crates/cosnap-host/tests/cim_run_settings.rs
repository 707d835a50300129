//! Run settings over CIM through the provider: COM ports (Msvm_SerialPortSettingData) and
//! boot properties of the VSSD shown, set by DefineSystem / ModifyResourceSettings /
//! ModifySystemSettings under the storage-root check, refused with their documented codes
//! and nothing changed, and kept by a snapshot as they were when it was taken.

use std::path::{Path, PathBuf};

use cosnap_cim::{AssocFilter, CimProvider, CimType, Instance, ObjectPath, Value};
use cosnap_host::cim::vssd_path;
use cosnap_host::{Host, VmBoot};

struct Fixture {
    _dir: tempfile::TempDir,
    /// The storage root: kernels, initrds, disks and sockets named over the API lie here.
    images: PathBuf,
    /// Outside every root.
    outside: PathBuf,
    host: Host,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for file in ["vmlinuz", "initrd.gz", "vmlinuz-2", "disk.raw"] {
        std::fs::write(images.join(file), vec![0u8; 4096]).unwrap();
    }
    std::fs::write(outside.join("vmlinuz"), b"kernel").unwrap();
    let host = Host::open_with(
        dir.path().join("data"),
        cosnap_host::HostOptions {
            storage_roots: vec![images.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    Fixture {
        _dir: dir,
        images,
        outside,
        host,
    }
}

fn text(v: &str) -> Option<Value> {
    Some(Value::String(v.to_string()))
}

fn path_text(p: &Path) -> Option<Value> {
    text(&p.display().to_string())
}

fn vssd_with_boot(name: &str, kernel: Option<&Path>, initrd: Option<&Path>) -> Instance {
    Instance::new("Msvm_VirtualSystemSettingData")
        .with("ElementName", CimType::String, text(name))
        .with("CosnapKernel", CimType::String, kernel.and_then(path_text))
        .with("CosnapInitrd", CimType::String, initrd.and_then(path_text))
        .with(
            "CosnapKernelCommandLine",
            CimType::String,
            text("console=ttyS0"),
        )
}

fn com_port(instance_id: Option<&str>, name: &str, socket: &Path) -> Instance {
    let mut port = Instance::new("Msvm_SerialPortSettingData")
        .with("ElementName", CimType::String, text(name))
        .with(
            "Connection",
            CimType::String,
            Some(Value::Array(vec![Value::String(
                socket.display().to_string(),
            )])),
        );
    if let Some(id) = instance_id {
        port.set("InstanceID", CimType::String, text(id));
    }
    port
}

fn embedded_list(items: &[Instance]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|i| Value::String(cosnap_cim::embedded::encode(i)))
            .collect(),
    )
}

fn vsms(h: &Host) -> ObjectPath {
    h.service_path("Msvm_VirtualSystemManagementService")
}

/// DefineSystem with a kernel, initrd, one raw disk and COM 2 at `com2`: (return code, VM id).
fn define(f: &Fixture, name: &str, kernel: &Path, com2: &Path) -> (u32, Option<String>) {
    let disk = Instance::new("Msvm_StorageAllocationSettingData").with(
        "HostResource",
        CimType::String,
        Some(Value::Array(vec![Value::String(
            f.images.join("disk.raw").display().to_string(),
        )])),
    );
    let vssd = vssd_with_boot(name, Some(kernel), Some(&f.images.join("initrd.gz")));
    let out = f
        .host
        .invoke_method(
            &vsms(&f.host),
            "DefineSystem",
            vec![
                ("SystemSettings".into(), Value::Instance(Box::new(vssd))),
                (
                    "ResourceSettings".into(),
                    embedded_list(&[disk, com_port(None, "COM 2", com2)]),
                ),
            ],
        )
        .unwrap();
    let vm = out
        .out_params
        .iter()
        .find(|(n, _)| n == "ResultingSystem")
        .and_then(|(_, v)| v.as_reference())
        .and_then(|p| p.key_str("Name"))
        .map(str::to_string);
    (out.return_value, vm)
}

/// The VM "vm", booting `vmlinuz`, with COM 2 at the socket `socket` under the images root:
/// its id (the definition must succeed).
fn define_vm(f: &Fixture, socket: &str) -> String {
    let (code, vm) = define(f, "vm", &f.images.join("vmlinuz"), &f.images.join(socket));
    assert_eq!(code, 0);
    vm.unwrap()
}

fn modify_resources(h: &Host, ports: &[Instance]) -> u32 {
    h.invoke_method(
        &vsms(h),
        "ModifyResourceSettings",
        vec![("ResourceSettings".into(), embedded_list(ports))],
    )
    .unwrap()
    .return_value
}

fn modify_system(h: &Host, vssd: Instance) -> u32 {
    h.invoke_method(
        &vsms(h),
        "ModifySystemSettings",
        vec![("SystemSettings".into(), Value::Instance(Box::new(vssd)))],
    )
    .unwrap()
    .return_value
}

/// The Connection of COM `port` among the resource settings of VSSD `vssd_id`, read
/// through the VirtualSystemSettingDataComponent association.
fn com_connection(h: &Host, vssd_id: &str, port: u8) -> Vec<String> {
    let filter = AssocFilter {
        assoc_class: Some("Msvm_VirtualSystemSettingDataComponent".into()),
        result_class: Some("Msvm_SerialPortSettingData".into()),
        ..Default::default()
    };
    let ports = h.associators(&vssd_path(vssd_id), &filter).unwrap();
    assert_eq!(ports.len(), 2, "COM 1 and COM 2 of {vssd_id}");
    let port = ports
        .iter()
        .find(|p| p.get("ElementName").and_then(Value::as_str) == Some(&format!("COM {port}")))
        .unwrap();
    assert_eq!(port.get("ResourceType"), Some(&Value::Uint16(21)));
    match port.get("Connection") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect(),
        other => panic!("Connection is {other:?}"),
    }
}

fn property(h: &Host, vssd_id: &str, name: &str) -> Option<String> {
    h.get_instance(&vssd_path(vssd_id))
        .unwrap()
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[test]
fn define_system_sets_boot_and_com2_and_cim_shows_them() {
    let f = fixture();
    let h = &f.host;
    let socket = f.images.join("com2.sock");

    let (code, vm) = define(&f, "booted", &f.images.join("vmlinuz"), &socket);
    assert_eq!(code, 0);
    let vm = h.vm(&vm.unwrap()).unwrap();
    let vssd = format!("Microsoft:{}", vm.id);

    let kernel = f.images.join("vmlinuz").canonicalize().unwrap();
    assert_eq!(
        property(h, &vssd, "CosnapKernel"),
        Some(kernel.display().to_string())
    );
    assert_eq!(
        property(h, &vssd, "CosnapKernelCommandLine").as_deref(),
        Some("console=ttyS0")
    );
    let stored_com2 = vm.run.com2.clone().unwrap();
    assert_eq!(stored_com2.file_name(), socket.file_name());
    assert_eq!(
        com_connection(h, &vssd, 2),
        vec![stored_com2.display().to_string()]
    );
    assert!(
        com_connection(h, &vssd, 1).is_empty(),
        "an off VM's console has no socket"
    );

    let all = h
        .enumerate_instances("CIM_ResourceAllocationSettingData")
        .unwrap();
    let com2 = all
        .iter()
        .find(|r| {
            r.class_name == "Msvm_SerialPortSettingData" && r.get("Address") == text("2").as_ref()
        })
        .unwrap();
    let fetched = h.get_instance(com2.path.as_ref().unwrap()).unwrap();
    assert_eq!(fetched.get("Connection"), com2.get("Connection"));
}

#[test]
fn define_system_refuses_run_settings_outside_the_roots_and_defines_nothing() {
    let f = fixture();
    let h = &f.host;

    let (code, vm) = define(
        &f,
        "bad-com2",
        &f.images.join("vmlinuz"),
        &f.outside.join("com2.sock"),
    );
    assert_eq!(
        code, 32769,
        "a socket outside the storage roots is access denied"
    );
    assert!(vm.is_none());
    let (code, _) = define(
        &f,
        "bad-kernel",
        &f.outside.join("vmlinuz"),
        &f.images.join("com2.sock"),
    );
    assert_eq!(
        code, 32769,
        "a kernel outside the storage roots is access denied"
    );

    assert!(
        h.vms().unwrap().is_empty(),
        "a refused DefineSystem defines nothing"
    );
}

#[test]
fn modify_resource_settings_moves_com2_and_refuses_what_it_cannot_do() {
    let f = fixture();
    let h = &f.host;
    let vm = define_vm(&f, "a.sock");
    let vssd = format!("Microsoft:{vm}");
    let com2_id = format!("{vssd}\\Com\\2");
    let before = h.vm(&vm).unwrap().run;

    let refused = [
        (
            com_port(Some(&com2_id), "COM 2", &f.outside.join("b.sock")),
            32769,
        ),
        (
            com_port(
                Some(&format!("{vssd}\\Com\\1")),
                "COM 1",
                &f.images.join("c.sock"),
            ),
            32770,
        ),
        (
            com_port(
                Some("Microsoft:no-such-vm\\Com\\2"),
                "COM 2",
                &f.images.join("c.sock"),
            ),
            32779,
        ),
        (
            Instance::new("Msvm_MemorySettingData").with(
                "InstanceID",
                CimType::String,
                text(&format!("{vssd}\\Memory")),
            ),
            32770,
        ),
    ];
    for (request, code) in refused {
        assert_eq!(
            modify_resources(h, std::slice::from_ref(&request)),
            code,
            "{request:?}"
        );
        assert_eq!(
            h.vm(&vm).unwrap().run,
            before,
            "a refused request changes nothing"
        );
    }
    let good = com_port(Some(&com2_id), "COM 2", &f.images.join("b.sock"));
    let bad = com_port(Some(&com2_id), "COM 2", &f.outside.join("b.sock"));
    assert_eq!(modify_resources(h, &[good.clone(), bad]), 32769);
    assert_eq!(
        h.vm(&vm).unwrap().run,
        before,
        "one refused port refuses them all"
    );

    assert_eq!(modify_resources(h, &[good]), 0);
    let com2 = h.vm(&vm).unwrap().run.com2.unwrap();
    assert!(com2.ends_with("b.sock"), "{com2:?}");
    assert_eq!(
        com_connection(h, &vssd, 2),
        vec![com2.display().to_string()]
    );
}

#[test]
fn modify_system_settings_sets_boot_under_the_roots_only() {
    let f = fixture();
    let h = &f.host;
    let vm = define_vm(&f, "a.sock");
    let vssd_id = format!("Microsoft:{vm}");
    let shown = h.get_instance(&vssd_path(&vssd_id)).unwrap();
    let before = h.vm(&vm).unwrap().run;

    assert_eq!(
        modify_system(h, shown.clone()),
        0,
        "sending back what GetInstance showed"
    );
    assert_eq!(h.vm(&vm).unwrap().run, before);

    let mut outside = shown.clone();
    outside.set(
        "CosnapKernel",
        CimType::String,
        path_text(&f.outside.join("vmlinuz")),
    );
    assert_eq!(modify_system(h, outside), 32769);
    let mut renamed = shown.clone();
    renamed.set("ElementName", CimType::String, text("other"));
    assert_eq!(modify_system(h, renamed), 32770);
    let mut initrd_alone = shown.clone();
    initrd_alone.set("CosnapKernel", CimType::String, None);
    assert_eq!(
        modify_system(h, initrd_alone),
        32773,
        "an initrd without a kernel"
    );
    assert_eq!(h.vm(&vm).unwrap().run, before, "refusals change nothing");

    let mut new_kernel = shown.clone();
    new_kernel.set(
        "CosnapKernel",
        CimType::String,
        path_text(&f.images.join("vmlinuz-2")),
    );
    assert_eq!(modify_system(h, new_kernel), 0);
    let run = h.vm(&vm).unwrap().run;
    assert!(matches!(&run.boot, VmBoot::Kernel { kernel, .. } if kernel.ends_with("vmlinuz-2")));
    assert_eq!(run.com2, before.com2, "COM 2 stays");

    let firmware =
        vssd_with_boot("vm", None, None).with("InstanceID", CimType::String, text(&vssd_id));
    let mut firmware = firmware;
    firmware.set("CosnapKernelCommandLine", CimType::String, None);
    assert_eq!(modify_system(h, firmware), 0);
    assert_eq!(h.vm(&vm).unwrap().run.boot, VmBoot::Firmware);
    assert_eq!(property(h, &vssd_id, "CosnapKernel"), None);
}

#[test]
fn a_snapshot_shows_the_run_settings_of_its_time() {
    let f = fixture();
    let h = &f.host;
    let vm = define_vm(&f, "old.sock");
    let coll = h.define_collection("group", None, 0).unwrap().id;
    h.add_member(&coll, &vm).unwrap();
    let job = h.start_create_snapshot(&coll, 1).unwrap();
    let job = h.wait_job(&job).unwrap();
    assert!(job.succeeded(), "{job:?}");
    let snap = h
        .snapshot(job.created("Msvm_SnapshotCollection").unwrap())
        .unwrap();
    let snap_vssd = snap.vms[0].vssd_id.clone();
    let old = h.vm(&vm).unwrap().run.com2.unwrap();

    let com2_id = format!("Microsoft:{vm}\\Com\\2");
    let moved = com_port(Some(&com2_id), "COM 2", &f.images.join("new.sock"));
    assert_eq!(modify_resources(h, &[moved]), 0);

    assert_eq!(
        com_connection(h, &snap_vssd, 2),
        vec![old.display().to_string()]
    );
    assert!(
        property(h, &snap_vssd, "CosnapKernel")
            .unwrap()
            .ends_with("vmlinuz")
    );
    let snap_port = com_port(
        Some(&format!("{snap_vssd}\\Com\\2")),
        "COM 2",
        &f.images.join("x.sock"),
    );
    assert_eq!(
        modify_resources(h, &[snap_port]),
        32779,
        "a snapshot's settings are history"
    );
}
