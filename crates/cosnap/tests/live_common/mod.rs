//! What the kill -9 tests of live collection snapshots share: the `cosnap` CLI runner with
//! crash-point controls, a running two-disk test guest (qcow2 and VHDX bases) in collection
//! `group`, and the chain checks after recovery.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use cosnap_test_support::{PidGuard, guest, qemu_img, wait_for_text};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

pub fn cosnap(data: &Path, env: Option<(&str, String)>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.arg("--data-dir").arg(data).args(args);
    if let Some((key, value)) = env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

pub fn ok_json(data: &Path, args: &[&str]) -> Value {
    let (code, stdout, stderr) = cosnap(data, None, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

pub fn active_layers(data: &Path, vm: &str) -> Vec<PathBuf> {
    ok_json(data, &["vm", "show", vm, "--json"])["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d["path"].as_str().unwrap()))
        .collect()
}

/// A running two-disk VM (qcow2 and VHDX bases) in collection `group`; returns its id and
/// the guard that kills its QEMU.
pub fn running_vm(dir: &Path, data: &Path, name: &str) -> (String, PidGuard) {
    let (kernel, initrd) = guest().expect("checked by the caller");
    let a = dir.join("a.qcow2");
    let b = dir.join("b.vhdx");
    qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "32M"]);
    qemu_img(&["create", "-q", "-f", "vhdx", b.to_str().unwrap(), "32M"]);
    let vm = ok_json(
        data,
        &[
            "vm",
            "define",
            "--name",
            name,
            "--cpus",
            "1",
            "--memory-mb",
            "256",
            "--disk",
            a.to_str().unwrap(),
            "--disk",
            b.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            &format!("console=ttyS0 quiet panic=-1 cosnap.vm={name} cosnap.disks=vda,vdb"),
            "--json",
        ],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _, stderr) = cosnap(data, None, &["collection", "define", "group"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = cosnap(data, None, &["collection", "add-member", "group", &vm]);
    assert_eq!(code, 0, "{stderr}");

    let (code, _, stderr) = cosnap(data, None, &["vm", "start", &vm]);
    assert_eq!(code, 0, "{stderr}");
    let run_dir = data.join("run").join(&vm);
    let guard = PidGuard::from_pidfile(&run_dir.join("qemu.pid")).expect("pid file");
    wait_for_text(&run_dir.join("serial.log"), "COSNAP-READY");
    (vm, guard)
}

/// The crash-point number of `label` in a traced run of `cosnap ARGS` that must succeed.
pub fn crash_point_of(data: &Path, label: &str, args: &[&str]) -> u64 {
    let env = Some(("COSNAP_CRASH_TRACE", "1".to_string()));
    let (code, _, stderr) = cosnap(data, env, args);
    assert_eq!(code, 0, "{stderr}");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("cosnap-crash-point "))
        .find_map(|l| {
            let (n, name) = l.split_once(' ')?;
            (name == label).then(|| n.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no crash point {label}: {stderr}"))
}

/// Runs `cosnap ARGS` killed (SIGKILL) at crash point `at`.
pub fn killed_at(data: &Path, at: u64, args: &[&str]) {
    let env = Some(("COSNAP_CRASH_AT", at.to_string()));
    let (code, _, stderr) = cosnap(data, env, args);
    assert_eq!(
        code, -1,
        "cosnap should have been killed at crash point {at}: {stderr}"
    );
}

pub fn chains_check(data: &Path, vm: &str) {
    for layer in active_layers(data, vm) {
        let (code, stdout, stderr) =
            cosnap(data, None, &["disk", "check", layer.to_str().unwrap()]);
        assert_eq!(
            code,
            0,
            "cosnap disk check {}: {stdout}{stderr}",
            layer.display()
        );
        qemu_img(&["check", layer.to_str().unwrap()]);
    }
}
