//! Where the live demo finds QEMU and the test guest, and what to install or build when it
//! cannot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable the test suite sets to the built guest's directory.
const GUEST_DIR_ENV: &str = "COSNAP_GUEST_DIR";

/// The test guest's boot files.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Why the live story cannot run here, and what to do about it.
#[derive(Debug)]
pub enum Missing {
    Qemu { codename: String, dir: PathBuf },
    Guest { dir: PathBuf },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Qemu { codename, dir } => write!(
                f,
                "note: qemu-system-x86_64 is not installed, so the demo runs its VMs offline.\n\
                 To see running guests, install QEMU from {codename}-backports (the release \
                 qemu-utils comes from):\n  \
                 sudo apt-get install -t {codename}-backports qemu-system-x86\n\
                 (bash scripts/guest/install-packages.sh adds that source, derived from your \
                 machine's own Debian source, and installs it), then build the test guest and run the demo again:\n  \
                 bash scripts/guest/build.sh {dir}\n\
                 or let ./scripts/demo do all of it.",
                dir = dir.display()
            ),
            Missing::Guest { dir } => write!(
                f,
                "note: no test guest (vmlinuz, initrd.gz) in {dir}, so the demo runs its VMs offline.\n\
                 To see running guests, build it (from Debian packages; installs what it needs):\n  \
                 bash scripts/guest/build.sh {dir}\n\
                 and run `cosnap demo --guest-dir {dir}`, or let ./scripts/demo do all of it.",
                dir = dir.display()
            ),
        }
    }
}

/// QEMU and the guest, or what is missing. The guest directory is `explicit`, else
/// `$COSNAP_GUEST_DIR`, else `target/guest` beside this binary's target directory.
pub fn find(explicit: Option<&Path>) -> Result<Guest, Missing> {
    let dir = guest_dir(explicit);
    if !have_qemu_system() {
        return Err(Missing::Qemu {
            codename: debian_codename(),
            dir,
        });
    }

    let guest = Guest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
    };
    match guest.kernel.is_file() && guest.initrd.is_file() {
        true => Ok(guest),
        false => Err(Missing::Guest { dir }),
    }
}

fn guest_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return absolute(dir);
    }
    if let Some(dir) = std::env::var_os(GUEST_DIR_ENV).filter(|d| !d.is_empty()) {
        return absolute(Path::new(&dir));
    }

    // The binary is <target>/<profile>/cosnap; scripts/guest/build.sh builds into <target>/guest.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("guest")))
        .unwrap_or_else(|| PathBuf::from("target/guest"))
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

fn have_qemu_system() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Debian release name (`VERSION_CODENAME` of /etc/os-release), for the backports hint.
fn debian_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}
