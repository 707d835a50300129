//! Fuzz target: `cosnap-export` reading an arbitrary package directory, as `cosnap export
//! verify` and `cosnap import` do.
//!
//! The input is split at 0xFF bytes into up to seven parts: flags, `cosnap-package.json`,
//! the manifest, the OVF descriptor, the collection file, the VM configuration (also used as
//! the snapshot configuration) and a small disk image. Unless flag bit 0 says to use the
//! fuzzer's JSON, a valid package JSON naming those files is written instead (bits 1–2
//! pick the disk's format, bit 3 a parent link), so that most inputs reach the manifest,
//! XML, descriptor and image readers.
//!
//! Oracles: no panic, no stack overflow, no hang, no huge allocation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const FORMATS: [&str; 3] = ["qcow2", "vhdx", "raw"];

fn template_json(flags: u8) -> String {
    let format = FORMATS[((flags >> 1) & 3) as usize % 3];
    let parent = if flags & 8 != 0 {
        "\"../../../base/d.qcow2\""
    } else {
        "null"
    };
    format!(
        r#"{{"format":"cosnap-export","format_version":1,"export_id":"e","name":"p",
"created_unix":0,"collection_id":"c","collection_name":"c","snapshot_id":"s",
"snapshot_name":"s","kind":"full","intent":null,"differential":null,
"fallback_to_full":null,"copy_storage":true,"digest_algorithm":"SHA256",
"manifest":"p.mf","descriptor":"p.ovf","collection_file":"p.collection.xml",
"vms":[{{"id":"v","name":"v","dir":"vm","config":"vm/Virtual Machines/c.xml",
"snapshot_config":"vm/Snapshots/s.xml","disks":[{{"id":"disk0","ovf_disk_id":"d1",
"file":"vm/Virtual Hard Disks/d.{format}","format":"{format}","virtual_size":1048576,
"data_bytes":0,"parent":{parent},"changed_ranges":null,"resource_instance_id":null}}]}}]}}"#
    )
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(p, bytes);
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(7, |b| *b == 0xFF);
    let flags = parts.next().and_then(|f| f.first().copied()).unwrap_or(0);
    let json = parts.next().unwrap_or_default();
    let [manifest, ovf, collection, config, disk] =
        std::array::from_fn(|_| parts.next().unwrap_or_default());
    // tmpfs when there is one: thousands of runs a second write these files.
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let Ok(tmp) = tempfile::tempdir_in(base) else {
        return;
    };
    let root = tmp.path().join("pkg");
    let template;
    let json = if flags & 1 != 0 {
        json
    } else {
        template = template_json(flags);
        template.as_bytes()
    };
    let format = FORMATS[((flags >> 1) & 3) as usize % 3];
    write(&root, "cosnap-package.json", json);
    write(&root, "p.mf", manifest);
    write(&root, "p.ovf", ovf);
    write(&root, "p.collection.xml", collection);
    write(&root, "vm/Virtual Machines/c.xml", config);
    write(&root, "vm/Snapshots/s.xml", config);
    write(&root, &format!("vm/Virtual Hard Disks/d.{format}"), disk);
    let _ = cosnap_export::verify_package(&root);
    let _ = cosnap_export::read_package(&root);
});
