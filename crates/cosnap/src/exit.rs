//! What every command shares: the global options, and how failures become exit codes.
//!
//! Exit codes: 0 success; 1 the operation failed; 2 usage error (clap's own); 3 the named
//! object was not found; 4 the object is in a state (or in use) that forbids the operation.
//! `disk compare` and `disk check` keep qemu-img's codes instead (see their help).

use std::path::PathBuf;
use std::process::ExitCode;

use cosnap_host::HostError;

/// Global options every command sees.
pub struct Context {
    pub data_dir: PathBuf,
    pub json: bool,
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const INVALID_STATE: u8 = 4;

impl Failure {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: FAILED,
            error: error.into(),
        }
    }
}

/// `Ok(code)` lets a command choose a non-zero code without an error message
/// (e.g. `disk compare` exits 1 for "different").
pub type CmdResult = Result<u8, Failure>;

/// Prints a one-line message on stderr for failures and turns the result into an exit code.
pub fn finish(result: CmdResult) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("cosnap: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// Maps a host error to an exit code.
pub fn fail(e: HostError) -> Failure {
    let code = match &e {
        HostError::NotFound(_) => NOT_FOUND,
        HostError::InvalidState(_)
        | HostError::InUse(_)
        | HostError::AlreadyExists(_)
        | HostError::ChangeInfoGone(_) => INVALID_STATE,
        HostError::InvalidParameter(_) | HostError::InvalidType(_) => USAGE,
        _ => FAILED,
    };
    Failure::new(code, e)
}
