//! Choosing the accelerator: KVM only where a quick probe boot under it works, else TCG. A host
//! can expose `/dev/kvm` and still fail a stock kernel (nested PVM traps on `cmpxchg16b`, see
//! docs/decisions.md), so the presence of the device alone decides nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::model::Accelerator;
use crate::qemu::process::QEMU_PROGRAM;

/// Where KVM works a kernel without a root panics and QEMU exits (`-no-reboot`) in about a
/// second; where it does not, the guest stalls or dies with an emulation failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Overrides the probe for every VM of the process: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "COSNAP_ACCEL";

/// The accelerator to run `kernel` with: the environment override, else a probe (done once per
/// process), TCG without a kernel to probe with or without `/dev/kvm`.
pub fn choose(kernel: Option<&Path>) -> Accelerator {
    match std::env::var(ACCEL_ENV).as_deref() {
        Ok("kvm") => return Accelerator::Kvm,
        Ok("tcg") => return Accelerator::Tcg,
        _ => {}
    }

    static PROBED: OnceLock<Accelerator> = OnceLock::new();
    match kernel {
        Some(kernel) => *PROBED.get_or_init(|| probe(kernel)),
        None => PROBED.get().copied().unwrap_or(Accelerator::Tcg),
    }
}

/// Boots `kernel` under KVM with no root file system and no initramfs: the kernel panics,
/// `panic=-1` reboots and `-no-reboot` makes QEMU exit 0. Anything else within the timeout
/// means KVM cannot run this guest.
pub fn probe(kernel: &Path) -> Accelerator {
    if !Path::new("/dev/kvm").exists() {
        return Accelerator::Tcg;
    }

    let spawned = Command::new(QEMU_PROGRAM)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "128",
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "panic=-1 root=/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = spawned else {
        return Accelerator::Tcg;
    };

    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Accelerator::Kvm,
            Ok(Some(_)) | Err(_) => return Accelerator::Tcg,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Accelerator::Tcg;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
