//! `cosnap export`, `cosnap export verify` and `cosnap import`, end to end through the
//! binary, with `qemu-img` as the oracle for guest bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cosnap_test_support::{Cli, SmallTmpfs, qemu_compare};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const KIB64: u64 = 64 << 10;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cosnap")
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let data = root.join("data");
        Env {
            _tmp: tmp,
            root,
            data,
        }
    }

    /// `cosnap --data-dir <data> …`.
    fn cli(&self, data: &Path) -> Cli {
        Cli::new(bin()).arg("--data-dir").arg(data)
    }

    fn run_in(&self, data: &Path, args: &[&str]) -> Output {
        self.cli(data).output(args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(&self.data, args)
    }

    /// Runs, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.cli(&self.data).ok(args)
    }

    fn json(&self, args: &[&str]) -> Value {
        self.cli(&self.data).arg("--json").ok_json(args)
    }

    fn image(&self, name: &str, format: &str, size: u64) -> PathBuf {
        let p = self.root.join(name);
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", format])
            .arg(&p)
            .arg(size.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        p
    }

    /// A collection of two VMs: one qcow2 disk, one raw disk, with data.
    fn demo(&self) -> (String, Vec<String>) {
        let a = self.image("a.qcow2", "qcow2", 64 * MIB);
        let b = self.image("b.raw", "raw", 32 * MIB);
        let va = self.ok(&[
            "vm",
            "define",
            "--name",
            "alpha",
            "--cpus",
            "2",
            "--memory-mb",
            "768",
            "--disk",
            a.to_str().unwrap(),
            "--nic",
            "00:15:5D:00:00:01,vswitch",
        ]);
        let vb = self.ok(&[
            "vm",
            "define",
            "--name",
            "beta",
            "--cpus",
            "1",
            "--memory-mb",
            "512",
            "--disk",
            b.to_str().unwrap(),
        ]);
        let (va, vb) = (va.trim().to_string(), vb.trim().to_string());
        let c = self
            .ok(&["collection", "define", "web tier"])
            .trim()
            .to_string();
        self.ok(&["collection", "add-member", &c, &va]);
        self.ok(&["collection", "add-member", &c, &vb]);
        self.write(&va, 0, 4 * MIB, 0x11);
        self.write(&va, 30 * MIB, 2 * MIB, 0x12);
        self.write(&vb, MIB, 3 * MIB, 0x21);
        (c, vec![va, vb])
    }

    fn write(&self, vm: &str, offset: u64, len: u64, pattern: u8) {
        self.ok(&[
            "vm",
            "write",
            vm,
            "--disk",
            "0",
            "--offset",
            &offset.to_string(),
            "--length",
            &len.to_string(),
            "--pattern",
            &pattern.to_string(),
        ]);
    }

    fn snapshot(&self, coll: &str) -> String {
        self.ok(&["snapshot", "create", coll, "--type", "recovery"])
            .trim()
            .to_string()
    }

    /// Frozen layer of (vm, disk 0) in a snapshot.
    fn frozen(&self, snap: &str, vm: &str) -> PathBuf {
        let s = self.json(&["snapshot", "show", snap]);
        let v = s["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm_id"] == vm)
            .unwrap();
        PathBuf::from(v["disks"][0]["path"].as_str().unwrap())
    }

    fn export(&self, snap: &str, dir: &Path, extra: &[&str]) -> (PathBuf, Value) {
        let mut a = vec!["export", snap, dir.to_str().unwrap(), "--wait"];
        a.extend_from_slice(extra);
        let v = self.json(&a);
        let path = PathBuf::from(v["path"].as_str().expect("path in --json output"));
        let meta: Value =
            serde_json::from_slice(&std::fs::read(path.join("cosnap-package.json")).unwrap())
                .unwrap();
        (path, meta)
    }
}

fn verify(dir: &Path) -> bool {
    Command::new(bin())
        .args(["export", "verify"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn vm_disk_file(path: &Path, meta: &Value, vm: &str) -> PathBuf {
    let v = meta["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"].as_str().unwrap().eq_ignore_ascii_case(vm))
        .unwrap();
    path.join(v["disks"][0]["file"].as_str().unwrap())
}

fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(d: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.clone());
            if p.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut s = BTreeSet::new();
    walk(dir, &mut s);
    s
}

#[test]
fn full_export_import_round_trip() {
    let env = Env::new();
    let (coll, vms) = env.demo();
    let snap = env.snapshot(&coll);
    // Guest writes after the snapshot must not leak into the export.
    env.write(&vms[0], 0, MIB, 0x99);
    let out = env.root.join("out");
    std::fs::create_dir(&out).unwrap();
    let (path, meta) = env.export(&snap, &out, &[]);
    assert_eq!(
        path,
        std::fs::canonicalize(&out).unwrap(),
        "without --subdirectory the package is the directory itself"
    );
    assert!(verify(&path));
    for vm in &vms {
        qemu_compare(&vm_disk_file(&path, &meta, vm), &env.frozen(&snap, vm));
    }
    // The descriptor of a real collection (CPUs, memory, NICs, three disk formats) is valid
    // OVF 2.0.1 by the DMTF schema (pinned in cosnap-export's test data).
    let ovf = path.join(format!("{}.ovf", meta["name"].as_str().unwrap()));
    let xsd = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cosnap-export/tests/data/ovf-2.0.1/dsp8023_2.0.1.xsd");
    let lint = Command::new("xmllint")
        .args(["--nonet", "--noout", "--schema"])
        .arg(&xsd)
        .arg(&ovf)
        .output()
        .expect("xmllint runs");
    assert!(
        lint.status.success(),
        "{}: {}",
        ovf.display(),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Import into a new data directory.
    let data2 = env.root.join("data2");
    let out2 = env.run_in(&data2, &["--json", "import", path.to_str().unwrap()]);
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    let imp: Value = serde_json::from_slice(&out2.stdout).unwrap();
    let coll2 = imp["collection"].as_str().unwrap();
    let vms2: Vec<String> = imp["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(vms2.len(), 2);
    let show = |id: &str, data: &Path| -> Value {
        serde_json::from_slice(&env.run_in(data, &["--json", "vm", "show", id]).stdout).unwrap()
    };
    let c2: Value = serde_json::from_slice(
        &env.run_in(&data2, &["--json", "collection", "show", coll2])
            .stdout,
    )
    .unwrap();
    assert_eq!(c2["name"], "web tier");
    assert_eq!(c2["members"].as_array().unwrap().len(), 2);
    for (orig, new) in vms.iter().zip(&vms2) {
        let a = show(orig, &env.data);
        let b = show(new, &data2);
        for k in ["name", "cpus", "memory_mb", "nics"] {
            assert_eq!(a[k], b[k], "setting {k} of {orig}");
        }
        let imported = Path::new(b["disks"][0]["path"].as_str().unwrap());
        qemu_compare(imported, &env.frozen(&snap, orig));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(imported).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "imported image {}", imported.display());
    }
    // Package files are owner-only by default.
    for p in listing(&path) {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m.permissions().mode() & 0o777, want, "{}", p.display());
    }
    // The package is untouched by the import.
    assert!(verify(&path));
}

#[test]
fn blake3_manifest_is_written_and_verified() {
    let env = Env::new();
    let (coll, vms) = env.demo();
    let snap = env.snapshot(&coll);
    let out = env.root.join("out-b3");
    std::fs::create_dir(&out).unwrap();

    let (path, meta) = env.export(&snap, &out, &["--subdirectory", "--digest", "blake3"]);
    assert_eq!(meta["digest_algorithm"], "BLAKE3");
    // The commands that wrote (snapshot create, export --wait with its job threads) closed
    // the repository cleanly: SQLite folded the WAL back in, so the next open reads none.
    assert!(
        !env.data.join("cosnap.db-wal").exists(),
        "a finished command leaves no WAL behind"
    );
    let mf_name = meta["manifest"].as_str().unwrap();
    let manifest = std::fs::read_to_string(path.join(mf_name)).unwrap();
    assert!(!manifest.is_empty());
    for line in manifest.lines() {
        let (tag, rest) = line.split_once('(').unwrap();
        assert_eq!(tag, "BLAKE3", "{line}");
        let (rel, hex) = rest.rsplit_once(")= ").unwrap();
        let bytes = std::fs::read(path.join(rel)).unwrap();
        assert_eq!(hex, blake3::hash(&bytes).to_hex().as_str(), "{rel}");
    }
    let disk = vm_disk_file(&path, &meta, &vms[0]);
    qemu_compare(&env.frozen(&snap, &vms[0]), &disk);
    assert!(verify(&path), "a BLAKE3 package verifies");

    // One byte changed in a disk: verify checks the BLAKE3 digests, not only their form.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 0).unwrap();
    assert!(!verify(&path), "a changed byte fails verification");

    let bad = env.run(&["export", &snap, out.to_str().unwrap(), "--digest", "md5"]);
    assert!(!bad.status.success(), "an unknown digest is refused");
}

#[test]
fn differential_exports_against_snapshot_and_refpoint() {
    let env = Env::new();
    let (coll, vms) = env.demo();
    let s1 = env.snapshot(&coll);
    let out = env.root.join("out");
    std::fs::create_dir(&out).unwrap();
    let (full, full_meta) = env.export(&s1, &out, &["--subdirectory"]);
    // A known 1 % of the qcow2 disk's 64 KiB clusters (10 of 1024), and 3 clusters of the raw one.
    let changed_a: Vec<u64> = (0..10).map(|i| (i * 97 + 5) * KIB64).collect();
    for &o in &changed_a {
        env.write(&vms[0], o, KIB64, 0x5A);
    }
    for o in [0, 100 * KIB64, 300 * KIB64] {
        env.write(&vms[1], o, KIB64, 0x6B);
    }
    let s2 = env.snapshot(&coll);

    let check_diff = |path: &Path, meta: &Value| {
        assert!(verify(path), "verify {}", path.display());
        assert_eq!(meta["kind"], "differential");
        for vm in &vms {
            let f = vm_disk_file(path, meta, vm);
            qemu_compare(&f, &env.frozen(&s2, vm)); // base + differential = snapshot 2
        }
        let va = meta["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"].as_str().unwrap().eq_ignore_ascii_case(&vms[0]))
            .unwrap();
        let ranges: Vec<(u64, u64)> = va["disks"][0]["changed_ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
            .collect();
        let want: Vec<(u64, u64)> = changed_a.iter().map(|&o| (o, o + KIB64)).collect();
        assert_eq!(ranges, want, "changed ranges of the qcow2 disk");
        // Allocation map (qemu-img map): the differential layer holds exactly those clusters.
        let f = vm_disk_file(path, meta, &vms[0]);
        let m = Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(&f)
            .output()
            .unwrap();
        let map: Value = serde_json::from_slice(&m.stdout).unwrap();
        let mut own: Vec<(u64, u64)> = Vec::new();
        for e in map.as_array().unwrap() {
            if e["depth"] == 0 && (e["data"] == true || e["zero"] == true) {
                let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                match own.last_mut() {
                    Some(last) if last.1 == s => last.1 = s + l,
                    _ => own.push((s, s + l)),
                }
            }
        }
        assert_eq!(own, want, "allocation map of {}", f.display());
        // Small: a few clusters plus metadata, not the whole disk.
        assert!(std::fs::metadata(&f).unwrap().len() < 4 * MIB);
    };

    let (d1, m1) = env.export(&s2, &out, &["--subdirectory", "--base", &s1]);
    assert_ne!(d1, full);
    check_diff(&d1, &m1);
    assert_eq!(m1["intent"], "preserve-chain");

    // Merge: stands alone and equals snapshot 2.
    let (mg, mm) = env.export(
        &s2,
        &out,
        &["--subdirectory", "--base", &s1, "--intent", "merge"],
    );
    assert!(verify(&mg));
    for vm in &vms {
        let f = vm_disk_file(&mg, &mm, vm);
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&f)
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert!(
            info.get("backing-filename").is_none(),
            "merge output has a backing file"
        );
        qemu_compare(&f, &env.frozen(&s2, vm));
    }

    // The same differential against the reference point converted from snapshot 1.
    let rp = env.ok(&["snapshot", "to-refpoint", &s1]).trim().to_string();
    let (d2, m2) = env.export(&s2, &out, &["--subdirectory", "--base", &rp]);
    check_diff(&d2, &m2);
    assert_eq!(m2["differential"]["base_kind"], "reference-point");

    // Removing the base export breaks the PreserveChain differential, and verify says so.
    std::fs::remove_file(vm_disk_file(&full, &full_meta, &vms[0])).unwrap();
    assert!(!verify(&d1));
}

#[test]
fn collisions_bad_inputs_and_change_info_gone() {
    let env = Env::new();
    let (coll, vms) = env.demo();
    let s1 = env.snapshot(&coll);
    let out = env.root.join("out");
    std::fs::create_dir(&out).unwrap();
    env.export(&s1, &out, &["--no-storage"]);
    let before = listing(&out);
    // Same flat export again: collision, exit 4, nothing touched.
    let r = env.run(&[
        "export",
        &s1,
        out.to_str().unwrap(),
        "--wait",
        "--no-storage",
    ]);
    assert_eq!(
        r.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));
    assert_eq!(listing(&out), before);
    // Two exports with --subdirectory land in two sub-directories.
    let (a, _) = env.export(&s1, &out, &["--subdirectory", "--no-storage"]);
    let (b, _) = env.export(&s1, &out, &["--subdirectory", "--no-storage"]);
    assert_ne!(a, b);
    assert_eq!(a.parent(), b.parent());
    // Missing snapshot → 3, nothing written.
    let before = listing(&out);
    let r = env.run(&[
        "export",
        "00000000-0000-0000-0000-000000000000",
        out.to_str().unwrap(),
        "--wait",
    ]);
    assert_eq!(r.status.code(), Some(3));
    // Base newer than the snapshot → 2 (invalid parameter).
    let s2 = env.snapshot(&coll);
    let r = env.run(&[
        "export",
        &s1,
        out.to_str().unwrap(),
        "--wait",
        "--subdirectory",
        "--base",
        &s2,
    ]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Base from another collection → 2.
    let c2 = env
        .ok(&["collection", "define", "other"])
        .trim()
        .to_string();
    let img = env.image("c.qcow2", "qcow2", 8 * MIB);
    let vc = env
        .ok(&[
            "vm",
            "define",
            "--name",
            "gamma",
            "--disk",
            img.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    env.ok(&["collection", "add-member", &c2, &vc]);
    let so = env.snapshot(&c2);
    let r = env.run(&[
        "export",
        &s2,
        out.to_str().unwrap(),
        "--wait",
        "--subdirectory",
        "--base",
        &so,
    ]);
    assert_eq!(
        r.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(listing(&out), before, "refused exports write nothing");

    // Change information gone: apply s1 (the branch leaves s2), snapshot s3; s2 is not an
    // ancestor of s3. Without fallback the job fails saying so; with it, a recorded full.
    env.ok(&["snapshot", "apply", &s1]);
    env.write(&vms[0], 0, KIB64, 0x77);
    let s3 = env.snapshot(&coll);
    let r = env.run(&[
        "export",
        &s3,
        out.to_str().unwrap(),
        "--wait",
        "--subdirectory",
        "--base",
        &s2,
        "--intent",
        "merge",
    ]);
    assert_eq!(
        r.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("change information"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(listing(&out), before, "a failed job leaves nothing");
    let (p, m) = env.export(
        &s3,
        &out,
        &[
            "--subdirectory",
            "--base",
            &s2,
            "--intent",
            "merge",
            "--fallback-full",
        ],
    );
    assert!(verify(&p));
    assert_eq!(m["kind"], "full");
    assert!(
        m["fallback_to_full"]
            .as_str()
            .unwrap()
            .contains("change information")
    );
    qemu_compare(&vm_disk_file(&p, &m, &vms[0]), &env.frozen(&s3, &vms[0]));
}

/// SIGKILL during export at random points: no directory outside staging fails verify,
/// the sources stay intact, and after a restart the job reads Exception and staging is gone.
#[test]
fn sigkill_during_export_leaves_no_half_package() {
    let env = Env::new();
    let (coll, vms) = env.demo();
    let snap = env.snapshot(&coll);
    let frozen: Vec<PathBuf> = vms.iter().map(|v| env.frozen(&snap, v)).collect();
    let sums: Vec<Vec<u8>> = frozen.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let out = env.root.join("out");
    std::fs::create_dir(&out).unwrap();
    // Time a normal export to spread the kill points over it.
    let t = std::time::Instant::now();
    env.export(&snap, &out, &["--subdirectory"]);
    let full = t.elapsed().as_micros() as u64 + 20_000;
    let mut seed: u64 = 0x9E3779B97F4A7C15;
    let mut killed_mid = 0;
    for trial in 0..30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = seed % full;
        let mut child = Command::new(bin())
            .arg("--data-dir")
            .arg(&env.data)
            .args([
                "export",
                &snap,
                out.to_str().unwrap(),
                "--wait",
                "--subdirectory",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid += 1;
        }
        // Restart: any command opens the host and recovers.
        let jobs = env.json(&["job", "list"]);
        for j in jobs.as_array().unwrap() {
            let st = j["state"].as_u64().unwrap();
            assert!(
                matches!(st, 7 | 10),
                "trial {trial}: job {} left in state {st}",
                j["id"]
            );
        }
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.'),
                "trial {trial} (kill after {delay} µs): staging {name} left after restart"
            );
            assert!(verify(&e.path()), "trial {trial}: {name} fails verify");
        }
    }
    assert!(killed_mid > 0, "no trial interrupted an export");
    let exceptions = env
        .json(&["job", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == 10)
        .count();
    assert!(exceptions > 0, "interrupted jobs must read Exception");
    for (f, sum) in frozen.iter().zip(&sums) {
        assert_eq!(
            &std::fs::read(f).unwrap(),
            sum,
            "source {} changed",
            f.display()
        );
    }
}

/// A full target: the job ends in Exception with a message that says so, staging removed —
/// through the page cache and through the `O_DIRECT` copy (its writer thread fails, the
/// copy stops instead of waiting for it).
#[test]
fn disk_full_ends_in_exception() {
    for direct_io in ["0", "1"] {
        let env = Env::new();
        let (coll, _) = env.demo();
        let snap = env.snapshot(&coll);
        let small = env.root.join("small");
        std::fs::create_dir(&small).unwrap();
        let Some(_mounted) = SmallTmpfs::mount(&small, "2m") else {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (not root); the library test covers ENOSPC mapping"
            );
            return;
        };

        let r = env
            .cli(&env.data)
            .env("COSNAP_DIRECT_IO", direct_io)
            .output(&[
                "export",
                &snap,
                small.to_str().unwrap(),
                "--wait",
                "--subdirectory",
            ]);

        assert_eq!(r.status.code(), Some(1), "COSNAP_DIRECT_IO={direct_io}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.contains("no space left"),
            "COSNAP_DIRECT_IO={direct_io}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&small).unwrap().count(),
            0,
            "staging must be removed (COSNAP_DIRECT_IO={direct_io})"
        );
        let jobs = env.json(&["job", "list"]);
        assert!(jobs.as_array().unwrap().iter().any(|j| {
            j["state"] == 10
                && j["error_description"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no space")
        }));
    }
}

/// A hostile package whose VM configuration nests 200,000 elements deep: `cosnap import`
/// and `cosnap export verify` answer with a clear error (they used to overflow the stack).
#[test]
fn a_deeply_nested_package_is_refused_with_a_clear_error() {
    let env = Env::new();
    let (coll, _) = env.demo();
    let snap = env.snapshot(&coll);
    let out = env.root.join("out");
    std::fs::create_dir(&out).unwrap();
    let (path, meta) = env.export(&snap, &out, &[]);
    let config = path.join(meta["vms"][0]["config"].as_str().unwrap());
    let deep = format!(
        "<?xml version=\"1.0\"?><CIM>{}{}</CIM>",
        "<VALUE.OBJECT>".repeat(200_000),
        "</VALUE.OBJECT>".repeat(200_000)
    );
    std::fs::write(&config, deep).unwrap();
    for args in [
        vec!["export", "verify", path.to_str().unwrap()],
        vec!["import", path.to_str().unwrap()],
    ] {
        let data2 = env.root.join("data-import");
        let r = env.run_in(&data2, &args);
        let err =
            String::from_utf8_lossy(&r.stderr).into_owned() + &String::from_utf8_lossy(&r.stdout);
        assert!(
            matches!(r.status.code(), Some(c) if c != 0),
            "cosnap {args:?} must fail with a return code, not a signal: {:?} {err}",
            r.status
        );
        assert!(err.contains("nested deeper than"), "cosnap {args:?}: {err}");
    }
}
