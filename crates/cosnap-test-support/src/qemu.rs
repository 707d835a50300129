//! qemu-img as the oracle: an image cosnap wrote must pass `check`, and must read the same
//! guest bytes as the expected image under `compare`.

use std::path::Path;
use std::process::{Command, Output};

use crate::process::{p, run};

/// True when qemu-img and qemu-io are installed; otherwise prints why the test skips.
pub fn have_qemu() -> bool {
    let installed = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };

    let ok = installed("qemu-img") && installed("qemu-io");
    if !ok {
        eprintln!("SKIPPED: qemu-img/qemu-io not installed; this test needs them as the oracle");
    }
    ok
}

/// Returns from the calling test (which then passes as skipped) when qemu is absent.
#[macro_export]
macro_rules! require_qemu {
    () => {
        if !$crate::have_qemu() {
            return;
        }
    };
}

/// Runs `qemu-img` with `args`, which must succeed; returns its output.
pub fn qemu_img(args: &[&str]) -> Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img check` (format probed) must report a clean image.
pub fn qemu_check_clean(img: &Path) {
    let (code, out) = run("qemu-img", &["check", p(img)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
}

/// `qemu-img check -f fmt` must report a clean image.
pub fn qemu_check_as(img: &Path, fmt: &str) {
    let (code, out) = run("qemu-img", &["check", "-f", fmt, p(img)]);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
}

/// `qemu-img compare` of two images (formats probed) must say identical.
pub fn qemu_compare(a: &Path, b: &Path) {
    let (code, out) = run("qemu-img", &["compare", p(a), p(b)]);
    assert_eq!(
        code,
        0,
        "qemu-img compare {} {}: {out}",
        a.display(),
        b.display()
    );
}

/// `qemu-img compare -f fmt -F raw img raw` must say identical.
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

/// `qemu-img compare -f vhdx -F raw img raw` must say identical.
pub fn qemu_compare_raw(img: &Path, raw: &Path) {
    qemu_same(img, "vhdx", raw);
}

/// Chain builder: `qemu-img create` of a qcow2 overlay of `size` (qemu-img's size syntax)
/// over `backing`, whose format is stated as `backing_fmt`.
pub fn qcow2_overlay(overlay: &Path, backing: &Path, backing_fmt: &str, size: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        p(backing),
        "-F",
        backing_fmt,
        p(overlay),
        size,
    ]);
}

/// Writes guest bytes the way a guest would: `qemu-io -f fmt -c cmd … image`, one `-c` per
/// command (`write -P 0xaa 0 1M`, `write -z 5M 1M`, …), which must all succeed.
pub fn qemu_io(image: &Path, fmt: &str, commands: &[&str]) {
    let mut args = vec!["-f", fmt];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(p(image));
    crate::process::ok("qemu-io", &args);
}

/// Points a qcow2 layer at another backing file without touching its data
/// (`qemu-img rebase -u`), the way anything that can write the layer could.
pub fn qcow2_rebase_unsafe(layer: &Path, backing: &Path, backing_fmt: &str) {
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        p(backing),
        "-F",
        backing_fmt,
        p(layer),
    ]);
}
