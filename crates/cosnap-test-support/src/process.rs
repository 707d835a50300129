//! Running a command and capturing what it says.

use std::path::Path;
use std::process::Command;

/// Runs a command, returns (exit code, stdout + stderr); -1 when killed by a signal.
pub fn run(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));

    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs a command that must succeed; returns its stdout + stderr.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let (code, out) = run(cmd, args);
    assert_eq!(code, 0, "{cmd} {args:?} failed: {out}");
    out
}

/// A path as a command argument (test paths are always UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
