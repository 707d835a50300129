//! The host's CLI through the built binary: the interface forms outside checks use, JSON
//! output, and exit codes (0 ok, 2 usage/invalid parameter, 3 not found, 4 invalid state).

use std::path::Path;

use cosnap_test_support::Cli;

const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

/// `cosnap --data-dir <data> …`.
fn cosnap(data: &Path) -> Cli {
    Cli::new(BIN).arg("--data-dir").arg(data)
}

fn fails(data: &Path, args: &[&str], code: i32) {
    let o = cosnap(data).run(args);
    assert_eq!(
        o.code, code,
        "{args:?}: stdout {} stderr {}",
        o.stdout, o.stderr
    );
    assert_eq!(
        o.stderr.trim().lines().count(),
        1,
        "one-line message: {}",
        o.stderr
    );
    assert!(o.stderr.starts_with("cosnap: "), "{}", o.stderr);
}

fn image(dir: &Path, name: &str, args: &[&str]) -> String {
    let path = dir.join(name).display().to_string();
    let mut create = vec!["disk", "create", path.as_str()];
    create.extend_from_slice(args);
    Cli::new(BIN).ok(&create);
    path
}

#[test]
fn vm_collection_snapshot_refpoint_job_forms() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.as_path();
    let img0 = image(
        tmp.path(),
        "a.qcow2",
        &["--size", "8M", "--format", "qcow2"],
    );
    let img1 = image(tmp.path(), "b.vhdx", &["--size", "8M", "--format", "vhdx"]);
    let img2 = image(tmp.path(), "c.raw", &["--size", "8M", "--format", "raw"]);

    let vm = cosnap(d).ok_json(&[
        "vm",
        "define",
        "--name",
        "web",
        "--cpus",
        "2",
        "--memory-mb",
        "512",
        "--disk",
        &img0,
        "--disk",
        &img1,
        "--nic",
        "00:15:5d:01:02:03,sw0",
        "--json",
    ]);
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let shown = cosnap(d).ok_json(&["vm", "show", &vm_id, "--json"]);
    let disks = shown["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(
        disks[0]["path"].as_str().unwrap(),
        Path::new(&img0).canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(disks[0]["format"], "qcow2");
    assert_eq!(disks[1]["format"], "vhdx");
    assert_eq!(shown["nics"][0]["mac"], "00155D010203");
    let vm2 = cosnap(d).ok_json(&["vm", "define", "--name", "db", "--disk", &img2, "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    fails(
        d,
        &["vm", "define", "--name", "dup-disk", "--disk", &img2],
        4,
    );
    fails(
        d,
        &[
            "vm",
            "define",
            "--name",
            "x",
            "--disk",
            "/nonexistent/disk.raw",
        ],
        3,
    );
    fails(d, &["vm", "show", "no-such-vm"], 3);
    fails(d, &["vm", "define", "--name", "x", "--cpus", "0"], 2);

    let coll = cosnap(d).ok_json(&["collection", "define", "grp", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        cosnap(d)
            .run(&["collection", "add-member", "grp", "web"])
            .code,
        0,
        "by names"
    );
    assert_eq!(
        cosnap(d)
            .run(&["collection", "add-member", &coll, &vm2])
            .code,
        0,
        "by ids"
    );
    fails(d, &["collection", "add-member", &coll, "web"], 4);
    fails(d, &["collection", "define", "other", "--id", &coll], 4);
    fails(d, &["collection", "remove-member", &coll, "no-such-vm"], 3);
    let list = cosnap(d).ok_json(&["collection", "list", "--json"]);
    assert_eq!(list[0]["members"].as_array().unwrap().len(), 2);
    assert_eq!(
        cosnap(d)
            .run(&["collection", "rename", &coll, "group"])
            .code,
        0
    );

    assert_eq!(
        cosnap(d)
            .run(&[
                "vm",
                "write",
                &vm_id,
                "--disk",
                "0",
                "--offset",
                "0",
                "--length",
                "65536",
                "--pattern",
                "0xab"
            ])
            .code,
        0
    );
    let standard = cosnap(d)
        .ok_json(&["snapshot", "create", &coll, "--type", "standard", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let after = cosnap(d).ok_json(&["vm", "show", &vm_id, "--json"]);
    assert_ne!(
        after["disks"][0]["path"], disks[0]["path"],
        "a new active layer"
    );
    assert_eq!(
        cosnap(d)
            .run(&[
                "vm",
                "write",
                &vm_id,
                "--disk",
                "1",
                "--offset",
                "1048576",
                "--length",
                "4096",
                "--pattern",
                "7"
            ])
            .code,
        0
    );
    fails(
        d,
        &[
            "vm",
            "write",
            &vm_id,
            "--disk",
            "9",
            "--offset",
            "0",
            "--length",
            "1",
            "--pattern",
            "1",
        ],
        2,
    );
    fails(d, &["snapshot", "to-refpoint", &standard], 4);
    let recovery = cosnap(d)
        .ok_json(&["snapshot", "create", &coll, "--type", "recovery", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let snaps = cosnap(d).ok_json(&["snapshot", "list", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2);
    let rp = cosnap(d).ok_json(&["snapshot", "to-refpoint", &recovery, "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rps = cosnap(d).ok_json(&["refpoint", "list", "--json"]);
    assert_eq!(rps[0]["id"].as_str().unwrap(), rp);
    assert_eq!(cosnap(d).run(&["snapshot", "apply", &standard]).code, 0);
    fails(d, &["vm", "destroy", &vm_id], 4);
    fails(d, &["collection", "destroy", &coll], 4);
    assert_eq!(cosnap(d).run(&["snapshot", "destroy", &standard]).code, 0);
    fails(d, &["snapshot", "destroy", &standard], 3);
    assert_eq!(cosnap(d).run(&["refpoint", "destroy", &rp]).code, 0);
    let jobs = cosnap(d).ok_json(&["job", "list", "--json"]);
    assert!(jobs.as_array().unwrap().len() >= 5);
    assert!(
        jobs.as_array().unwrap().iter().all(|j| j["state"] == 7),
        "{jobs}"
    );
    let job_id = jobs[0]["id"].as_str().unwrap();
    assert_eq!(
        cosnap(d).ok_json(&["job", "show", job_id, "--json"])["job_type"],
        198
    );
    fails(d, &["job", "cancel", job_id], 4);
    assert_eq!(cosnap(d).run(&["job", "wait", job_id]).code, 0);
    assert_eq!(
        cosnap(d)
            .run(&["collection", "remove-member", &coll, &vm2])
            .code,
        0
    );
    assert_eq!(cosnap(d).run(&["collection", "destroy", &coll]).code, 0);
    assert_eq!(cosnap(d).run(&["vm", "destroy", &vm2]).code, 0);
    assert_eq!(
        cosnap(d)
            .ok_json(&["vm", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cosnap(d).run(&["snapshot", "create"]).code,
        2,
        "usage error"
    );
}

#[test]
fn import_libvirt_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let img = image(
        tmp.path(),
        "guest.qcow2",
        &["--size", "4M", "--format", "qcow2"],
    );
    let xml = format!(
        "<domain type='kvm'><name>lv</name><memory unit='KiB'>2097152</memory><vcpu>3</vcpu><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{img}'/></disk>\
         <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface>\
         </devices></domain>"
    );
    let file = tmp.path().join("dom.xml");
    std::fs::write(&file, xml).unwrap();
    let vm = cosnap(&data).ok_json(&["vm", "import-libvirt", file.to_str().unwrap(), "--json"]);
    assert_eq!(vm["name"], "lv");
    assert_eq!(vm["cpus"], 3);
    assert_eq!(vm["memory_mb"], 2048);
    assert_eq!(vm["disks"][0]["format"], "qcow2");
    assert_eq!(vm["nics"][0]["switch"], "default");
    std::fs::write(&file, "<domain><name>x</name><vcpu>many</vcpu></domain>").unwrap();
    fails(&data, &["vm", "import-libvirt", file.to_str().unwrap()], 2);
}

#[test]
fn demo_runs_in_a_fresh_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    // The offline story (the live one, with running guests, is tested in demo_cli.rs).
    let o = cosnap(&data).run(&["demo", "--offline"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("recovery snapshot 2"), "{}", o.stdout);
    // Snapshot 1 became the reference point the differential export was taken against.
    let snaps = cosnap(&data).ok_json(&["snapshot", "list", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let refpoints = cosnap(&data).ok_json(&["refpoint", "list", "--json"]);
    assert_eq!(refpoints.as_array().unwrap().len(), 1);
    assert_eq!(o.stdout.matches("  verified ").count(), 2, "{}", o.stdout);
    assert!(
        o.stdout.contains("differential export of snapshot 2"),
        "{}",
        o.stdout
    );
    // A second run does not reuse the repository.
    let o = cosnap(&data).run(&["demo", "--offline"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("fresh sub-directory"), "{}", o.stdout);
}
