//! Running VMs through the CLI, in the forms outside checks use: `vm define --kernel --initrd
//! --cmdline --com2 --json`, `vm start|pause|resume|stop [--force]`, `vm show --json` state and
//! active layers, `vm list` state, `vm console`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cosnap_test_support::{PidGuard, guest, qemu_img, wait_for_text};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cosnap");

fn cosnap(data: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn ok_json(data: &Path, args: &[&str]) -> Value {
    let (code, stdout, stderr) = cosnap(data, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn state(data: &Path, vm: &str) -> String {
    ok_json(data, &["vm", "show", vm, "--json"])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_vm_defined_with_a_kernel_starts_pauses_resumes_answers_on_its_console_and_stops() {
    let Some((kernel, initrd)) = guest() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("a.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    let com2 = dir.path().join("com2.sock");
    let defined = ok_json(
        &data,
        &[
            "vm",
            "define",
            "--name",
            "clivm",
            "--cpus",
            "1",
            "--memory-mb",
            "256",
            "--disk",
            disk.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=-1 cosnap.vm=clivm cosnap.mode=idle cosnap.disks=vda",
            "--com2",
            com2.to_str().unwrap(),
            "--json",
        ],
    );
    let id = defined["id"].as_str().unwrap().to_string();
    assert_eq!(state(&data, &id), "off");

    assert_eq!(cosnap(&data, &["vm", "start", &id]).0, 0);
    let _qemu = PidGuard::from_pidfile(&data.join("run").join(&id).join("qemu.pid")).unwrap();
    let shown = ok_json(&data, &["vm", "show", &id, "--json"]);
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["disks"][0]["path"], disk.to_str().unwrap());
    assert!(
        com2.exists(),
        "COM2 is a Unix socket server at the given path"
    );
    assert_eq!(
        cosnap(&data, &["vm", "start", &id]).0,
        4,
        "starting a running VM"
    );

    assert_eq!(cosnap(&data, &["vm", "pause", &id]).0, 0);
    assert_eq!(
        ok_json(&data, &["vm", "list", "--json"])[0]["state"],
        "paused"
    );
    assert_eq!(cosnap(&data, &["vm", "resume", &id]).0, 0);
    assert_eq!(state(&data, &id), "running");

    wait_for_text(
        &data.join("run").join(&id).join("serial.log"),
        "COSNAP-READY vm=clivm",
    );
    assert!(
        console_answers(&data, &id),
        "the console runs the guest's shell"
    );

    assert_eq!(cosnap(&data, &["vm", "stop", &id, "--force"]).0, 0);
    assert_eq!(state(&data, &id), "off");
    assert_eq!(
        cosnap(&data, &["vm", "stop", &id, "--force"]).0,
        4,
        "stopping a VM that is off"
    );
}

/// Types a command into `vm console` and looks for its output.
fn console_answers(data: &Path, id: &str) -> bool {
    let mut console = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["vm", "console", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = console.stdin.take().unwrap();
    let mut stdout = console.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 1024];
        while let Ok(read) = stdout.read(&mut buffer) {
            if read == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..read]);
            if String::from_utf8_lossy(&seen).contains("CONSOLE-42") {
                return true;
            }
        }
        false
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() && Instant::now() < deadline {
        let _ = stdin.write_all(b"echo CONSOLE-$((6*7))\n");
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(stdin);
    let _ = console.kill();
    let _ = console.wait();
    reader.join().unwrap_or(false)
}
