//! The running-VM test rig on top of cosnap-test-support's guest: launches of the guest, a
//! guard that kills every started VM by pid on every exit path, and a reader of the guest's
//! records in a frozen image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cosnap_vmm::{
    Accelerator, Boot, DiskChain, DiskLayer, Hypervisor, LayerFormat, QemuHypervisor, VmHandle,
    VmLaunch,
};

pub use cosnap_test_support::guest;

/// A started VM that is SIGKILLed by pid when the guard goes away, whatever the test did.
pub struct VmGuard {
    pub handle: VmHandle,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) by the pid this test started; a gone process makes it a no-op (ESRCH).
        unsafe { libc::kill(self.handle.pid, libc::SIGKILL) };
    }
}

/// A VM launch of the test guest: `cmdline` adds the guest's `cosnap.*` knobs.
pub fn launch(name: &str, run_dir: &Path, disks: Vec<DiskChain>, cmdline: &str) -> VmLaunch {
    let (kernel, initrd) = guest().expect("guest checked by the caller");
    VmLaunch {
        name: name.into(),
        run_dir: run_dir.into(),
        cpus: 1,
        memory_mb: 256,
        disks,
        boot: Boot::Kernel {
            kernel,
            initrd: Some(initrd),
            cmdline: format!("console=ttyS0 quiet panic=-1 cosnap.vm={name} {cmdline}"),
        },
        com2: None,
        user_nic: false,
        accelerator: Some(Accelerator::Tcg),
    }
}

pub fn start(hv: &QemuHypervisor, launch: &VmLaunch) -> VmGuard {
    VmGuard {
        handle: hv.start(launch).expect("start VM"),
    }
}

/// Waits until the serial log shows `pattern`.
pub fn wait_serial(hv: &QemuHypervisor, vm: &VmHandle, pattern: &str) {
    cosnap_test_support::wait_for_text(&hv.serial_log(vm), pattern);
}

/// An empty image of 64 MiB in `format`.
pub fn image(dir: &Path, name: &str, format: LayerFormat) -> DiskLayer {
    let path = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        format.driver(),
        path.to_str().unwrap(),
        "64M",
    ]);
    DiskLayer { path, format }
}

/// A qcow2 overlay over `backing`, created without opening the backing (the VM holds it).
pub fn overlay(path: &Path, backing: &DiskLayer) -> PathBuf {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing.path.to_str().unwrap(),
        "-F",
        backing.format.driver(),
        path.to_str().unwrap(),
        "64M",
    ]);
    path.to_path_buf()
}

pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Number of intact records at the start of the image (read as raw by qemu-img, sharing the
/// image with a running VM), after checking that only zeros follow them and none is torn.
pub fn record_count(image: &Path, format: &str, vm: &str, disk: &str) -> u64 {
    let raw = image.with_extension("records.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        format,
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();

    let mut count = 0u64;
    for block in bytes.chunks(4096) {
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let expected = format!("COSNAP vm={vm} disk={disk} seq={count:010}");
        let first = String::from_utf8_lossy(&block[..64]);
        assert!(
            first.starts_with(&expected),
            "{}: record {count} is {first:?}",
            image.display()
        );
        assert!(
            block.chunks(64).all(|line| line == &block[..64]),
            "{}: record {count} torn",
            image.display()
        );
        count += 1;
    }
    let rest = &bytes[(count as usize * 4096).min(bytes.len())..];
    assert!(
        rest.iter().all(|b| *b == 0),
        "{}: data after record {count}",
        image.display()
    );
    count
}
