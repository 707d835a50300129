//! Crash harness: SIGKILL at random points during CreateSnapshot, DestroySnapshot,
//! ApplySnapshot, ConvertToReferencePoint and ExportSnapshot (≥ 30 trials each), then
//! restart and check:
//! every chain passes `qemu-img check` (qcow2 layers) and `cosnap_disk::check` (all
//! layers); every VM's and every snapshot's guest bytes equal the state before or after the
//! operation; the repository agrees with the files on disk (`Host::verify`: no orphan, no
//! missing layer, parents as recorded, no journal left). Exports: every package in the
//! export directory verifies and is recorded, nothing temporary (staging, journal, name
//! reservation) remains, and the export is recorded exactly when its package is there.
//!
//! Kill points: half of the trials set `COSNAP_CRASH_AT=n` (the process SIGKILLs itself at
//! its n-th crash point — every step boundary of the operation, cycling through all of
//! them); the other half SIGKILL the process from outside after a random delay within the
//! operation's measured duration (lands inside disk operations too).
//! `COSNAP_CRASH_TRIALS` overrides the trial count; the seed is printed for reproduction.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cosnap_disk::Format;
use cosnap_host::{DiskSpec, Host, VmSpec};

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn digest(path: &Path) -> u64 {
    let img =
        cosnap_disk::open(path, false).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = img.virtual_size();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        img.read_at(&mut buf[..n], off).unwrap();
        buf[..n].hash(&mut h);
        off += n as u64;
    }
    h.finish()
}

/// Guest-visible state: every VM's active disks, every snapshot's and reference point's
/// frozen disks (keyed by what survives the operation: creation order / source snapshot id).
fn guest_state(host: &Host) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for vm in host.vms().unwrap() {
        for d in &vm.disks {
            m.insert(format!("vm {} {}", vm.name, d.index), digest(&d.path));
        }
    }
    // Snapshots by creation order (a new snapshot's id differs from run to run).
    for (k, s) in host.snapshots(None).unwrap().iter().enumerate() {
        for v in &s.vms {
            for d in &v.disks {
                m.insert(
                    format!(
                        "snapshot #{k} type {} vm {} disk {}",
                        s.snapshot_type, v.vm_id, d.index
                    ),
                    digest(&d.path),
                );
            }
        }
    }
    for (k, s) in host.snapshots(None).unwrap().iter().enumerate() {
        let exports = host.exports_of(&s.id).unwrap();
        if !exports.is_empty() {
            m.insert(format!("snapshot #{k} exports"), exports.len() as u64);
        }
    }
    for r in host.refpoints(None).unwrap() {
        for v in &r.vms {
            for d in &v.disks {
                m.insert(
                    format!("frozen-from {} {} {}", r.from_snapshot, v.vm_id, d.index),
                    digest(&d.path),
                );
            }
        }
    }
    m
}

fn check_consistent(
    work: &Path,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    what: &str,
) {
    // Restart: opening the repository runs recovery (through the CLI, like a user would).
    let out = Command::new(BIN)
        .args(["--data-dir"])
        .arg(work.join("data"))
        .args(["vm", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = Host::open(work.join("data")).unwrap();
    let problems = host.verify().unwrap();
    assert!(
        problems.is_empty(),
        "{what}: repository disagrees with files: {problems:?}"
    );
    for vm in host.vms().unwrap() {
        for d in &vm.disks {
            for layer in cosnap_disk::chain(&d.path).unwrap() {
                let rep = cosnap_disk::check(&layer).unwrap();
                assert!(
                    rep.corruptions.is_empty(),
                    "{what}: {}: {:?}",
                    layer.display(),
                    rep.corruptions
                );
                if cosnap_disk::detect_format(&layer).unwrap() == Format::Qcow2 {
                    let st = Command::new("qemu-img")
                        .arg("check")
                        .arg("-q")
                        .arg(&layer)
                        .status()
                        .unwrap();
                    assert!(
                        st.success(),
                        "{what}: qemu-img check {} failed",
                        layer.display()
                    );
                }
            }
        }
    }
    check_exports(&host, &work.join("exports"), what);
    let now = guest_state(&host);
    assert!(
        &now == before || &now == after,
        "{what}: guest state is neither before nor after\nnow    {now:?}\nbefore {before:?}\nafter  {after:?}"
    );
}

/// Every entry of the export directory is a complete, recorded package; nothing an
/// export writes only while it runs is left.
fn check_exports(host: &Host, exports: &Path, what: &str) {
    let Ok(entries) = std::fs::read_dir(exports) else {
        return;
    };
    let records: Vec<_> = host
        .snapshots(None)
        .unwrap()
        .iter()
        .flat_map(|s| host.exports_of(&s.id).unwrap())
        .collect();
    // "Interrupted" never hides a recorded package: its job reads Completed.
    for r in &records {
        let job = host.job(r.job_id.as_deref().unwrap()).unwrap();
        assert!(job.succeeded(), "{what}: package recorded, job {job:?}");
    }
    let recorded: Vec<std::path::PathBuf> = records.into_iter().map(|r| r.package_dir).collect();
    let names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        assert!(
            !n.starts_with('.'),
            "{what}: {n} left in the export directory"
        );
    }
    if names.is_empty() {
        assert!(
            recorded.is_empty(),
            "{what}: recorded {recorded:?}, no package"
        );
        return;
    }
    // A flat export makes the directory the package; otherwise each entry is one.
    let canon = std::fs::canonicalize(exports).unwrap();
    let packages: Vec<std::path::PathBuf> = if canon.join("cosnap-package.json").exists() {
        vec![canon]
    } else {
        names.iter().map(|n| canon.join(n)).collect()
    };
    for p in &packages {
        let rep = cosnap_export::verify_package(p).unwrap();
        assert!(rep.ok(), "{what}: {}: {:?}", p.display(), rep.problems);
    }
    assert_eq!(
        recorded, packages,
        "{what}: packages on disk and records differ"
    );
}

fn restore(template: &Path, work: &Path) {
    let _ = std::fs::remove_dir_all(work);
    let st = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(template)
        .arg(work)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Builds the starting state at `work` and returns the CLI arguments of the operation.
fn build(work: &Path, op: &str) -> Vec<String> {
    let images = work.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let host = Host::open(work.join("data")).unwrap();
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
        cosnap_disk::create(&path, *fmt, 8 * MIB).unwrap();
        cosnap_disk::write_pattern(&path, 0, 2 * MIB, 0x10 + i as u8).unwrap();
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
        vms.push(vm.id);
    }
    let coll = host.define_collection("g", None, 0).unwrap().id;
    for v in &vms {
        host.add_member(&coll, v).unwrap();
    }
    let snap = |ty| {
        let j = host.start_create_snapshot(&coll, ty).unwrap();
        let j = host.wait_job(&j).unwrap();
        j.created("Msvm_SnapshotCollection").unwrap().to_string()
    };
    let write = |off: u64, b: u8| {
        for v in &vms {
            host.write_guest(v, 0, off, MIB, b).unwrap();
        }
    };
    let args: Vec<String> = match op {
        "create" => {
            snap(2);
            write(MIB, 0x21);
            vec![
                "snapshot".into(),
                "create".into(),
                coll.clone(),
                "--type".into(),
                "recovery".into(),
            ]
        }
        "destroy" => {
            snap(1);
            write(MIB, 0x22);
            let s2 = snap(1);
            write(3 * MIB, 0x23);
            snap(1);
            write(5 * MIB, 0x24);
            // s2's frozen layer has one child (snapshot 3's frozen layer): a real merge.
            vec!["snapshot".into(), "destroy".into(), s2]
        }
        "destroy-pull" => {
            snap(1);
            write(MIB, 0x29);
            let s1 = snap(1);
            write(2 * MIB, 0x2a);
            snap(1);
            write(3 * MIB, 0x2b);
            // Applying s1 gives its frozen layer a second child: destroying s1 pulls.
            let j = host.start_apply_snapshot(&s1).unwrap();
            assert!(host.wait_job(&j).unwrap().succeeded());
            write(4 * MIB, 0x2c);
            vec!["snapshot".into(), "destroy".into(), s1]
        }
        "apply" => {
            let s1 = snap(1);
            write(MIB, 0x25);
            snap(1);
            write(4 * MIB, 0x26);
            vec!["snapshot".into(), "apply".into(), s1]
        }
        "export" | "export-subdir" => {
            let s = snap(2);
            std::fs::create_dir_all(work.join("exports")).unwrap();
            let dir = work.join("exports").to_string_lossy().into_owned();
            let mut args = vec!["export".into(), s, dir, "--wait".into()];
            if op == "export-subdir" {
                args.push("--subdirectory".into());
            }
            args
        }
        "convert" => {
            snap(2);
            write(MIB, 0x27);
            let s2 = snap(2);
            write(6 * MIB, 0x28);
            vec!["snapshot".into(), "to-refpoint".into(), s2]
        }
        _ => unreachable!(),
    };
    args
}

fn run_op(work: &Path, args: &[String], env: Option<(&str, String)>) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir")
        .arg(work.join("data"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn harness(op: &str) {
    let trials: usize = std::env::var("COSNAP_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let template = root.path().join("template");
    let args = build(&work, op);
    Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&work)
        .arg(&template)
        .status()
        .unwrap();
    let before = guest_state(&Host::open(work.join("data")).unwrap());
    // A traced, uninterrupted run: the crash points it passes and its duration.
    let t = Instant::now();
    let out = run_op(&work, &args, Some(("COSNAP_CRASH_TRACE", "1".into())))
        .wait_with_output()
        .unwrap();
    let duration = t.elapsed();
    assert!(
        out.status.success(),
        "{op}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("cosnap-crash-point"))
        .count() as u64;
    assert!(points > 0, "{op}: no crash points traced");
    let after = guest_state(&Host::open(work.join("data")).unwrap());
    assert_ne!(
        before, after,
        "{op}: the operation must change something observable"
    );
    check_consistent(&work, &after, &after, &format!("{op} uninterrupted"));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("{op}: {points} crash points, {duration:?} per run, seed {seed}");
    let mut rng = Rng(seed);
    let mut killed = 0;
    for trial in 0..trials {
        restore(&template, &work);
        let what;
        if trial % 2 == 0 {
            let n = (trial as u64 / 2) % points + 1;
            what = format!("{op} trial {trial} COSNAP_CRASH_AT={n}");
            let st = run_op(&work, &args, Some(("COSNAP_CRASH_AT", n.to_string())))
                .wait()
                .unwrap();
            assert!(!st.success(), "{what}: expected the process to die");
            killed += 1;
        } else {
            let max = (duration.as_micros() as u64).max(2000);
            let delay = rng.next() % max;
            what = format!("{op} trial {trial} external SIGKILL after {delay}us (seed {seed})");
            let mut child = run_op(&work, &args, None);
            std::thread::sleep(Duration::from_micros(delay));
            let _ = child.kill();
            let st = child.wait().unwrap();
            if !st.success() {
                killed += 1;
            }
        }
        check_consistent(&work, &before, &after, &what);
    }
    eprintln!("{op}: {trials} trials, {killed} killed mid-operation, all consistent");
}

#[test]
fn crash_during_create_snapshot() {
    harness("create");
}

#[test]
fn crash_during_destroy_snapshot() {
    harness("destroy");
}

#[test]
fn crash_during_destroy_snapshot_with_several_children() {
    harness("destroy-pull");
}

#[test]
fn crash_during_apply_snapshot() {
    harness("apply");
}

#[test]
fn crash_during_convert_to_reference_point() {
    harness("convert");
}

#[test]
fn crash_during_export_and_its_commit() {
    harness("export");
}

#[test]
fn crash_during_export_into_a_subdirectory() {
    harness("export-subdir");
}
