//! `cosnap demo`: the live story checked against what it claims (both packages verify, the
//! differential is smaller than the full export and holds the guests' later writes, its disks
//! pass `qemu-img check`, no QEMU is left, the VMs end off), its Ctrl-C path, and the offline
//! story with the install hint when no guest is found.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use cosnap_test_support::records::{file_reader, scan_disk};
use cosnap_test_support::{Cli, guest, qemu_check_clean, qemu_img};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

/// Booting two TCG guests on two loaded cores, then the whole story.
const DEMO_TIMEOUT: Duration = Duration::from_secs(400);

/// The guests' records lie below the recognisable data the demo writes at 40 MiB.
const RECORDS_AREA: u64 = 40 << 20;

fn cosnap(data: &Path) -> Cli {
    Cli::new(BIN).arg("--data-dir").arg(data)
}

/// A `cosnap demo` run in the background, its stdout read line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Demo {
    fn spawn(data: &Path, guest_dir: &Path) -> Demo {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["demo", "--guest-dir"])
            .arg(guest_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            // Stops reading (closing the pipe) once the test stops listening.
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Demo {
            child,
            lines,
            stdout: String::new(),
            stderr,
        }
    }

    /// Reads stdout until a line contains `needle` (panics at the end or after the timeout).
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + DEMO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                    if line.contains(needle) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {needle:?} in time:\n{}", self.stdout),
                Err(RecvTimeoutError::Disconnected) => panic!("no {needle:?}:\n{}", self.stdout),
            }
        }
    }

    /// Stops listening: the demo's stdout is closed at its next line.
    fn close_stdout(&mut self) {
        self.lines = channel().1;
    }

    /// Waits for the end; returns the exit code (-1 for a signal), stdout and stderr.
    fn finish(mut self) -> (i32, String, String) {
        let status = self.child.wait().unwrap();
        self.stdout.extend(self.lines.iter().map(|l| l + "\n"));
        let stderr = self.stderr.join().unwrap_or_default();
        (status.code().unwrap_or(-1), self.stdout, stderr)
    }
}

/// The QEMU processes of a data directory (from their pid files, read while they run). Drop
/// SIGKILLs any of them still running, so a failing test leaves no VM behind.
struct Qemus {
    data: PathBuf,
    pids: Vec<i32>,
}

impl Qemus {
    fn of(data: &Path) -> Qemus {
        let pids = std::fs::read_dir(data.join("run"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("qemu.pid")).ok())
            .filter_map(|text| text.trim().parse().ok())
            .collect();
        Qemus {
            data: data.to_path_buf(),
            pids,
        }
    }

    /// The pids still running a QEMU of this data directory (a recycled pid is not one).
    fn alive(&self) -> Vec<i32> {
        let data = self.data.to_string_lossy().into_owned();
        self.pids
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&data))
            })
            .collect()
    }
}

impl Drop for Qemus {
    fn drop(&mut self) {
        for pid in self.alive() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn assert_vms_off(data: &Path) {
    let vms = cosnap(data).ok_json(&["vm", "list", "--json"]);
    for vm in vms.as_array().unwrap() {
        assert_eq!(vm["state"], "off", "{vm}");
    }
}

fn package_meta(package: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(package.join("cosnap-package.json")).unwrap()).unwrap()
}

fn data_bytes(meta: &Value) -> u64 {
    meta["vms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|vm| vm["disks"].as_array().unwrap())
        .map(|d| d["data_bytes"].as_u64().unwrap())
        .sum()
}

/// The package disk file of VM `name`.
fn disk_of(package: &Path, meta: &Value, name: &str) -> PathBuf {
    let vm = meta["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {meta}"));
    package.join(vm["disks"][0]["file"].as_str().unwrap())
}

/// How many intact records the guest of VM `name` left in `image` (a gap-free prefix). A
/// VHDX differencing image is read through cosnap's reader (qemu-img cannot open one).
fn records_in(image: &Path, name: &str, scratch: &Path) -> u64 {
    if is_avhdx(image) {
        let chain = cosnap_disk::open(image, false).unwrap();
        let mut read =
            |buf: &mut [u8], offset: u64| chain.read_at(buf, offset).map_err(std::io::Error::other);
        return scan_disk(name, "vda", RECORDS_AREA, &mut read)
            .unwrap_or_else(|e| panic!("{}: {e}", image.display()))
            .count;
    }
    let raw = scratch.join(format!("{name}.raw"));
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let file = std::fs::File::open(&raw).unwrap();
    let records = scan_disk(name, "vda", RECORDS_AREA, &mut file_reader(&file))
        .unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    records.count
}

#[test]
fn the_live_demo_backs_up_running_guests_and_stops_them() {
    let Some((kernel, _)) = guest() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut demo = Demo::spawn(&data, kernel.parent().unwrap());
    demo.wait_for("started 2 VMs");
    let qemus = Qemus::of(&data);
    assert_eq!(qemus.pids.len(), 2, "two VMs run");

    let (code, stdout, stderr) = demo.finish();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(qemus.alive(), Vec::<i32>::new(), "QEMU left running");
    assert_vms_off(&data);
    assert!(stdout.contains("paused together for"), "{stdout}");
    assert!(
        stdout.contains("tracks 2 of its 3 disks with a persistent dirty bitmap"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read from 2 persistent dirty bitmap(s)"),
        "{stdout}"
    );

    let packages: Vec<PathBuf> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  verified "))
        .filter_map(|l| l.rsplit_once(" (").map(|(path, _)| PathBuf::from(path)))
        .collect();
    assert_eq!(packages.len(), 2, "{stdout}");
    for package in &packages {
        cosnap(&data).ok(&["export", "verify", package.to_str().unwrap()]);
    }
    check_differential(&packages[0], &packages[1], tmp.path());
}

fn is_avhdx(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "avhdx")
}

/// The differential is a real differential, smaller than the full export, its disks pass
/// `qemu-img check`, and it holds the records the guests wrote after the full export's.
fn check_differential(full: &Path, diff: &Path, scratch: &Path) {
    let full_meta = package_meta(full);
    let diff_meta = package_meta(diff);
    assert_eq!(diff_meta["kind"], "differential", "{diff_meta}");
    assert!(diff_meta["fallback_to_full"].is_null(), "{diff_meta}");
    let (full_bytes, diff_bytes) = (data_bytes(&full_meta), data_bytes(&diff_meta));
    assert!(
        0 < diff_bytes && diff_bytes < full_bytes,
        "differential {diff_bytes} bytes, full {full_bytes}"
    );

    for vm in diff_meta["vms"].as_array().unwrap() {
        let file = diff.join(vm["disks"][0]["file"].as_str().unwrap());
        if is_avhdx(&file) {
            // The VHDX VM's differential is an .avhdx over the full export's .vhdx.
            let report = cosnap_disk::check(&file).unwrap();
            assert!(
                report.corruptions.is_empty() && report.leaks.is_empty(),
                "{}: {report:?}",
                file.display()
            );
        } else {
            qemu_check_clean(&file);
        }
    }
    for name in ["demo-web", "demo-db"] {
        let before = records_in(&disk_of(full, &full_meta, name), name, scratch);
        let after = records_in(&disk_of(diff, &diff_meta, name), name, scratch);
        assert!(
            0 < before && before < after,
            "{name}: {before} records in the full export, {after} in the differential"
        );
    }
}

#[test]
fn ctrl_c_during_the_live_demo_stops_the_vms_it_started() {
    let Some((kernel, _)) = guest() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut demo = Demo::spawn(&data, kernel.parent().unwrap());
    demo.wait_for("started 2 VMs");
    let qemus = Qemus::of(&data);
    assert_eq!(qemus.pids.len(), 2, "two VMs run");

    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (code, stdout, stderr) = demo.finish();
    assert_eq!(code, 130, "{stdout}{stderr}");
    assert!(stderr.contains("demo interrupted"), "{stderr}");
    assert_eq!(qemus.alive(), Vec::<i32>::new(), "QEMU left running");
    assert_vms_off(&data);
}

#[test]
fn a_demo_that_loses_its_stdout_still_stops_the_vms_it_started() {
    let Some((kernel, _)) = guest() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut demo = Demo::spawn(&data, kernel.parent().unwrap());
    demo.wait_for("started 2 VMs");
    let qemus = Qemus::of(&data);
    assert_eq!(qemus.pids.len(), 2, "two VMs run");

    // Like `cosnap demo | head`: printing fails, the demo panics and unwinds.
    demo.close_stdout();
    let (code, stdout, stderr) = demo.finish();
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        qemus.alive(),
        Vec::<i32>::new(),
        "QEMU left running: {stderr}"
    );
    assert_vms_off(&data);
}

#[test]
fn without_a_guest_the_demo_runs_offline_and_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let missing = tmp.path().join("no-guest");
    let out = cosnap(&data).run(&["demo", "--guest-dir", missing.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let build = format!("bash scripts/guest/build.sh {}", missing.display());
    assert!(out.stdout.contains(&build), "{}", out.stdout);
    assert!(out.stdout.contains("VMs switched off"), "{}", out.stdout);
    assert_eq!(
        out.stdout.matches("  verified ").count(),
        2,
        "{}",
        out.stdout
    );
    assert_vms_off(&data);
}
