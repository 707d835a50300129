//! Helpers shared by the disk tests: running qemu-img/qemu-io as oracles.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs a command, returns (exit code, stdout + stderr).
pub fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
}

/// Runs a command that must succeed; returns its stdout + stderr.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let (code, out) = run(cmd, args);
    assert_eq!(code, 0, "{cmd} {args:?} failed: {out}");
    out
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` must report a clean image.
pub fn qemu_check_clean(img: &Path) {
    let (code, out) = run("qemu-img", &["check", p(img)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
}

/// `qemu-img compare` of an image (auto format) against a raw file must say identical.
pub fn qemu_same(img: &Path, fmt: &str, raw: &Path) {
    let (code, out) = run(
        "qemu-img",
        &["compare", "-f", fmt, "-F", "raw", p(img), p(raw)],
    );
    assert_eq!(
        code,
        0,
        "qemu-img compare {} {}: {out}",
        img.display(),
        raw.display()
    );
}

/// A model of guest bytes kept in a sparse raw file (the expected-bytes oracle).
pub struct RawModel {
    pub file: std::fs::File,
}

impl RawModel {
    pub fn new(path: &Path, size: u64) -> RawModel {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        file.set_len(size).unwrap();
        RawModel { file }
    }
    pub fn write(&self, off: u64, len: u64, byte: u8) {
        use std::os::unix::fs::FileExt;
        let buf = vec![byte; len as usize];
        self.file.write_all_at(&buf, off).unwrap();
    }
}
