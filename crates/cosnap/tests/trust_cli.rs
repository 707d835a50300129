//! Trust boundaries through the binary (issue 9, findings 1 and 7): `vm define` records a
//! disk's format only when the file agrees with what was stated or with its name, and
//! everything cosnap keeps is owner-only whatever the umask.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cosnap_test_support::{Cli, qcow2_overlay};

const MIB: u64 = 1 << 20;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cosnap")
}

/// `cosnap --data-dir <data> …` under umask 022 (what most services start with).
fn cosnap(data: &Path) -> Cli {
    Cli::new(bin()).umask(0o022).arg("--data-dir").arg(data)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A raw disk whose first bytes are a qcow2 header naming `backing`.
fn lured_raw(dir: &Path, backing: &Path) -> PathBuf {
    let lure = dir.join("lure.qcow2");
    qcow2_overlay(&lure, backing, "raw", "16M");
    let disk = dir.join("guest.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(16 * MIB).unwrap();
    f.write_all_at(&std::fs::read(&lure).unwrap(), 0).unwrap();
    disk
}

#[test]
fn define_refuses_a_format_the_file_disagrees_with_and_says_how_to_state_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let secret = tmp.path().join("secret.bin");
    std::fs::write(&secret, vec![0x5a; MIB as usize]).unwrap();
    let raw = tmp.path().join("plain.raw");
    cosnap(&data).ok(&[
        "disk",
        "create",
        raw.to_str().unwrap(),
        "--format",
        "raw",
        "--size",
        "8M",
    ]);

    // Stated qcow2, but the file is raw.
    let out = cosnap(&data).output(&[
        "vm",
        "define",
        "--name",
        "a",
        "--disk",
        raw.to_str().unwrap(),
        "--disk-format",
        "qcow2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not qcow2"), "{err}");
    assert!(
        err.contains("--disk-format raw|qcow2|vhdx"),
        "says how: {err}"
    );

    // Named .raw, looks like qcow2 (a guest wrote the header): not guessed.
    let lured = lured_raw(tmp.path(), &secret);
    let out = cosnap(&data).output(&[
        "vm",
        "define",
        "--name",
        "b",
        "--disk",
        lured.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("its name says raw but its content looks like qcow2"),
        "{err}"
    );
    assert!(err.contains("--disk-format"), "says how: {err}");
    assert_eq!(
        cosnap(&data)
            .arg("--json")
            .ok_json(&["vm", "list"])
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    // Stated raw: recorded as raw, and the VM's disk reads as its own bytes.
    let vm = cosnap(&data).arg("--json").ok_json(&[
        "vm",
        "define",
        "--name",
        "c",
        "--disk",
        lured.to_str().unwrap(),
        "--disk-format",
        "raw",
    ]);
    assert_eq!(vm["disks"][0]["format"], "raw", "{vm}");

    // A qcow2 base with a backing file is refused: its parent is a path the file chose.
    let child = tmp.path().join("child.qcow2");
    // Sized like the secret, as qemu-img would size it from its backing file.
    qcow2_overlay(&child, &secret, "raw", "1M");
    let out = cosnap(&data).output(&[
        "vm",
        "define",
        "--name",
        "d",
        "--disk",
        child.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("must stand alone"), "{err}");

    // More formats than disks is a usage error.
    let out = cosnap(&data).output(&["vm", "define", "--name", "e", "--disk-format", "raw"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn everything_cosnap_keeps_is_owner_only_under_umask_022() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let img = tmp.path().join("a.qcow2");
    cosnap(&data).ok(&[
        "disk",
        "create",
        img.to_str().unwrap(),
        "--format",
        "qcow2",
        "--size",
        "8M",
    ]);
    let vm = cosnap(&data).arg("--json").ok_json(&[
        "vm",
        "define",
        "--name",
        "m",
        "--disk",
        img.to_str().unwrap(),
    ]);
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let coll = cosnap(&data)
        .arg("--json")
        .ok_json(&["collection", "define", "g"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    cosnap(&data).ok(&["collection", "add-member", &coll, &vm_id]);
    let snap = cosnap(&data)
        .arg("--json")
        .ok_json(&["snapshot", "create", &coll, "--type", "recovery"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut user = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(bin())
        .arg("--data-dir")
        .arg(&data)
        .args(["user", "add", "admin", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        user.stdin
            .take()
            .unwrap()
            .write_all(b"a long password\n")
            .unwrap();
    }
    assert!(user.wait().unwrap().success());

    assert_eq!(mode(&data), 0o700, "the data directory");
    for f in [
        "cosnap.db",
        "cosnap.db-wal",
        "cosnap.db-shm",
        "users.json",
        "lock",
    ] {
        let p = data.join(f);
        if p.exists() || f != "cosnap.db-wal" && f != "cosnap.db-shm" {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    let disks = data.join("disks");
    assert_eq!(mode(&disks), 0o700, "disks/");
    let vm_dir = disks.join(&vm_id);
    assert_eq!(mode(&vm_dir), 0o700, "disks/<vm>/");
    let layers: Vec<PathBuf> = std::fs::read_dir(&vm_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!layers.is_empty());
    for l in &layers {
        assert_eq!(mode(l), 0o600, "layer {}", l.display());
    }

    // Exported packages: owner-only by default, what --export-mode says otherwise.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (extra, file_mode) in [(None, 0o600), (Some("0640"), 0o640)] {
        let mut args = vec![
            "export",
            &snap,
            out.to_str().unwrap(),
            "--wait",
            "--subdirectory",
        ];
        if let Some(m) = extra {
            args.extend(["--export-mode", m]);
        }
        let path = PathBuf::from(
            cosnap(&data).arg("--json").ok_json(&args)["path"]
                .as_str()
                .unwrap(),
        );
        assert_eq!(
            mode(&path),
            file_mode | (file_mode & 0o444) >> 2,
            "package directory"
        );
        let disk_dir = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir())
            .unwrap()
            .join("Virtual Hard Disks");
        for f in std::fs::read_dir(&disk_dir).unwrap() {
            let f = f.unwrap().path();
            assert_eq!(mode(&f), file_mode, "{}", f.display());
        }
        assert_eq!(mode(&path.join("cosnap-package.json")), file_mode);
    }
}
