//! Helpers shared by the VHDX integration tests: qemu oracles and expected-bytes models.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// True when qemu-img and qemu-io are installed; otherwise prints why the test skips.
pub fn have_qemu() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && Command::new("qemu-io")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: qemu-img/qemu-io not installed; this test needs them as the oracle");
    }
    ok
}

/// Runs a command, returning (exit code, stdout+stderr).
pub fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

pub fn qemu_check(img: &Path) {
    let (rc, out) = run("qemu-img", &["check", "-f", "vhdx", img.to_str().unwrap()]);
    assert_eq!(rc, 0, "qemu-img check {}: {out}", img.display());
}

/// `qemu-img compare -f vhdx -F raw img expected` must say identical.
pub fn qemu_compare_raw(img: &Path, raw: &Path) {
    let (rc, out) = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "vhdx",
            "-F",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    assert_eq!(
        rc,
        0,
        "qemu-img compare {} {}: {out}",
        img.display(),
        raw.display()
    );
}

/// Sparse model of guest bytes: writes recorded as (offset, bytes).
#[derive(Default, Clone)]
pub struct Model {
    pub size: u64,
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Model {
    pub fn new(size: u64) -> Self {
        Model {
            size,
            writes: Vec::new(),
        }
    }
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.writes.push((off, data.to_vec()));
    }
    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for (o, d) in &self.writes {
            let lo = (*o).max(off);
            let hi = (o + d.len() as u64).min(off + len as u64);
            if lo < hi {
                out[(lo - off) as usize..(hi - off) as usize]
                    .copy_from_slice(&d[(lo - o) as usize..(hi - o) as usize]);
            }
        }
        out
    }
    /// Writes the model as a sparse raw file.
    pub fn to_raw(&self, path: &Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(path).unwrap();
        f.set_len(self.size).unwrap();
        for (o, d) in &self.writes {
            f.write_all_at(d, *o).unwrap();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
