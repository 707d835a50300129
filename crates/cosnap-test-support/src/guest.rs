//! The running-VM test guest: finds (or builds, with `scripts/guest/build.sh`, which also
//! installs QEMU) the busybox guest's kernel and initramfs, waits for text on a serial log, and
//! kills a started QEMU by pid when a guard goes away.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Under TCG on two loaded cores the guest needs 2–25 s to reach its /init.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have_qemu_system() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The guest's kernel and initrd (`$COSNAP_GUEST_DIR`, else `target/guest`), building them when
/// absent. `None`, with a message, only where QEMU is absent and could not be installed; a
/// machine with QEMU whose guest cannot be built fails the test.
pub fn guest() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("COSNAP_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest"));
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.gz");
    if !(kernel.is_file() && initrd.is_file() && have_qemu_system()) {
        build_guest(&dir);
    }

    if kernel.is_file() && initrd.is_file() && have_qemu_system() {
        return Some((kernel, initrd));
    }
    assert!(
        !have_qemu_system(),
        "qemu-system-x86_64 is installed but the test guest could not be built in {}",
        dir.display()
    );
    eprintln!(
        "SKIP: qemu-system-x86_64 is absent and scripts/guest/build.sh could not install it \
         (it needs root or sudo and a Debian package source)"
    );
    None
}

/// One build at a time across test processes (nextest runs each test in its own).
fn build_guest(dir: &Path) {
    std::fs::create_dir_all(dir).expect("guest directory");
    let lock = File::create(dir.join(".build-lock")).expect("guest build lock");
    lock.lock().expect("lock the guest build");
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/guest/build.sh"))
        .arg(dir)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("scripts/guest/build.sh failed: {status:?}");
    }
}

/// Waits until the file shows `pattern` (a VM's serial log); panics with the text after
/// [`BOOT_TIMEOUT`].
pub fn wait_for_text(file: &Path, pattern: &str) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(pattern) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {pattern:?}:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILLs a process by pid when dropped: every VM a test starts is stopped on every exit
/// path, panics included.
pub struct PidGuard(pub i32);

impl PidGuard {
    /// A guard for the pid written in `pidfile` (QEMU's `-pidfile`), if there is one.
    pub fn from_pidfile(pidfile: &Path) -> Option<PidGuard> {
        let text = std::fs::read_to_string(pidfile).ok()?;
        text.trim().parse().ok().map(PidGuard)
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
