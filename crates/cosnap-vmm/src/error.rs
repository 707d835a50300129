//! The errors of the hypervisor layer, typed so that callers can tell a dead VM from a refused command.

use std::path::PathBuf;

/// Everything that can go wrong while running or freezing VMs.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("VM {vm}: QEMU exited before its QMP socket was ready (see {log})")]
    EarlyExit { vm: String, log: PathBuf },

    #[error("VM {vm}: QMP socket {socket} did not come up within {seconds} s")]
    SocketTimeout {
        vm: String,
        socket: PathBuf,
        seconds: u64,
    },

    #[error("VM {vm} is not running (QEMU process gone)")]
    NotRunning { vm: String },

    #[error("no running VM recorded in {run_dir}: {reason}")]
    NotAttached { run_dir: PathBuf, reason: String },

    #[error("VM {vm}: QMP {command} failed: {desc}")]
    Qmp {
        vm: String,
        command: String,
        desc: String,
    },

    #[error("VM {vm}: QMP connection lost during {command}: {source}")]
    QmpIo {
        vm: String,
        command: String,
        source: std::io::Error,
    },

    #[error("VM {vm}: {what}")]
    Graph { vm: String, what: String },

    #[error("VM {vm}: block job {job} failed: {desc}")]
    Job {
        vm: String,
        job: String,
        desc: String,
    },

    #[error("VM {vm}: {what} timed out after {seconds} s")]
    Timeout {
        vm: String,
        what: String,
        seconds: u64,
    },

    #[error("invalid VM launch: {0}")]
    InvalidLaunch(String),

    #[error(
        "group freeze failed at VM {vm} (VMs already switched to their new layers: {switched:?}); \
         all VMs were resumed: {source}"
    )]
    Freeze {
        vm: String,
        switched: Vec<String>,
        source: Box<VmmError>,
    },
}

/// Results of this crate.
pub type Result<T, E = VmmError> = std::result::Result<T, E>;

impl VmmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        VmmError::Io {
            path: path.into(),
            source,
        }
    }
}
