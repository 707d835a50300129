//! Running a command-line program under test (the `cosnap` binary, given by its path):
//! fixed leading arguments, an optional umask, and its exit code and output kept apart.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, Output};

/// What one run of the program said: exit code (-1 when killed by a signal), stdout, stderr.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit code; -1 when a signal ended the program.
    pub code: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// A program with the arguments every run starts with (e.g. `--data-dir <dir>`).
#[derive(Debug, Clone)]
pub struct Cli {
    program: PathBuf,
    leading: Vec<OsString>,
    umask: Option<u32>,
    envs: Vec<(OsString, OsString)>,
}

impl Cli {
    /// The program at `program` (in a test: `env!("CARGO_BIN_EXE_<name>")`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            leading: Vec::new(),
            umask: None,
            envs: Vec::new(),
        }
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Adds an argument every run starts with, after the ones added before.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.leading.push(arg.as_ref().to_owned());
        self
    }

    /// Runs the program under this umask (through `sh`, so the test process keeps its own).
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Runs with `args` after the leading ones; the raw process output.
    pub fn output(&self, args: &[&str]) -> Output {
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {mask:03o}; exec \"$0\" \"$@\""))
                    .arg(&self.program);
                sh
            }
            None => Command::new(&self.program),
        };

        cmd.args(&self.leading)
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.program.display()))
    }

    /// Runs with `args`; the exit code and the decoded output.
    pub fn run(&self, args: &[&str]) -> Outcome {
        let out = self.output(args);
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs with `args`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.code,
            0,
            "{} {:?} {args:?} failed: {}{}",
            self.program.display(),
            self.leading,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs with `args`, which must succeed and print JSON; returns it parsed.
    pub fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
    }
}
