//! The host's typed errors and how each maps onto the two return-code families of
//! docs/decisions.md, "Method return-code families" (DMTF style 1..6, Msvm style
//! 32768..32779, CIM_ConcreteJob 4096..4098) and onto CLI exit codes. The CIM status of each lives in the CIM face
//! (`cim::errors`): this module stays free of protocol types.

use thiserror::Error;

pub type Result<T, E = HostError> = std::result::Result<T, E>;

/// What went wrong, in a form every front end can map to its own code.
#[derive(Debug, Error)]
pub enum HostError {
    /// The named object (VM, collection, snapshot, reference point, job, membership) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A parameter is malformed or out of range (bad object path, bad embedded instance, bad value).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// An object with that identity exists already (duplicate collection id, member added twice).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The object is in a state that forbids the operation (e.g. converting a standard snapshot).
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The object is in use by another operation (e.g. an export reads the snapshot).
    #[error("in use: {0}")]
    InUse(String),
    /// The object exists but is of the wrong class for this method.
    #[error("invalid type: {0}")]
    InvalidType(String),
    /// The change information a differential export needs is gone: the base layer is no
    /// longer an ancestor of the exported snapshot's layer (e.g. after applying an older
    /// snapshot, the new branch does not descend from the base).
    #[error("change information gone: {0}")]
    ChangeInfoGone(String),
    /// The caller may not name this object (a disk image outside the storage roots, an
    /// export directory outside the export roots).
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The request is well formed but cosnap does not do it (e.g. modifying a resource
    /// setting other than a COM port).
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("operation cancelled")]
    Cancelled,
    #[error("disk operation failed: {0}")]
    Disk(#[from] cosnap_disk::DiskError),
    #[error("repository error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// DMTF-style method return codes (collection snapshot Create/Apply/Destroy/Convert, RP Create/Destroy).
pub mod dmtf {
    pub const COMPLETED: u32 = 0;
    pub const NOT_SUPPORTED: u32 = 1;
    pub const FAILED: u32 = 2;
    pub const TIMEOUT: u32 = 3;
    pub const INVALID_PARAMETER: u32 = 4;
    pub const INVALID_STATE: u32 = 5;
    pub const INVALID_TYPE: u32 = 6;
    pub const JOB_STARTED: u32 = 4096;
}

/// CIM_ConcreteJob method return codes (RequestStateChange, KillJob): the third family,
/// with its own 4097–4099 range (see docs/decisions.md, "Method return-code families").
pub mod concrete_job {
    /// The request completed.
    pub const COMPLETED: u32 = 0;
    /// The method is not supported (KillJob: cosnap jobs stop through RequestStateChange).
    pub const NOT_SUPPORTED: u32 = 1;
    /// A parameter is missing or out of range (RequestedState other than 4 or 5).
    pub const INVALID_PARAMETER: u32 = 5;
    /// The state transition has started.
    pub const TRANSITION_STARTED: u32 = 4096;
    /// The job already ended or passed its point of no return.
    pub const INVALID_STATE_TRANSITION: u32 = 4097;
    /// A non-zero TimeoutPeriod was given; cosnap does not time transitions out.
    pub const TIMEOUT_NOT_SUPPORTED: u32 = 4098;
}

/// Msvm-style method return codes (collection management, DefineSystem/DestroySystem, job GetError).
pub mod msvm {
    pub const COMPLETED: u32 = 0;
    pub const JOB_STARTED: u32 = 4096;
    pub const FAILED: u32 = 32768;
    pub const ACCESS_DENIED: u32 = 32769;
    pub const NOT_SUPPORTED: u32 = 32770;
    pub const UNKNOWN: u32 = 32771;
    pub const TIMEOUT: u32 = 32772;
    pub const INVALID_PARAMETER: u32 = 32773;
    pub const IN_USE: u32 = 32774;
    pub const INVALID_STATE: u32 = 32775;
    pub const INCORRECT_TYPE: u32 = 32776;
    pub const NOT_AVAILABLE: u32 = 32777;
    pub const OUT_OF_MEMORY: u32 = 32778;
    /// "File not found" on the collection-management pages (docs/decisions.md, "Method return-code families": we use the
    /// not-found reading for every not-found object in Msvm-style methods).
    pub const NOT_FOUND: u32 = 32779;
}

impl HostError {
    /// The DMTF-style code. There is no DMTF "not found" or "in use": a missing object
    /// named by a parameter is an invalid parameter (4); an object in use by an export is
    /// in an invalid state for the operation (5).
    pub fn dmtf_code(&self) -> u32 {
        match self {
            HostError::NotFound(_)
            | HostError::InvalidParameter(_)
            | HostError::AlreadyExists(_) => dmtf::INVALID_PARAMETER,
            HostError::InvalidState(_) | HostError::InUse(_) | HostError::ChangeInfoGone(_) => {
                dmtf::INVALID_STATE
            }
            HostError::InvalidType(_) => dmtf::INVALID_TYPE,
            HostError::NotSupported(_) => dmtf::NOT_SUPPORTED,
            _ => dmtf::FAILED,
        }
    }

    /// The Msvm-style code. A duplicate id or a member added twice is an invalid parameter.
    pub fn msvm_code(&self) -> u32 {
        match self {
            HostError::NotFound(_) => msvm::NOT_FOUND,
            HostError::InvalidParameter(_) | HostError::AlreadyExists(_) => msvm::INVALID_PARAMETER,
            HostError::InvalidState(_) | HostError::ChangeInfoGone(_) => msvm::INVALID_STATE,
            HostError::InUse(_) => msvm::IN_USE,
            HostError::InvalidType(_) => msvm::INCORRECT_TYPE,
            HostError::AccessDenied(_) => msvm::ACCESS_DENIED,
            HostError::NotSupported(_) => msvm::NOT_SUPPORTED,
            _ => msvm::FAILED,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        HostError::NotFound(what.into())
    }
    pub fn invalid(what: impl Into<String>) -> Self {
        HostError::InvalidParameter(what.into())
    }
    pub fn state(what: impl Into<String>) -> Self {
        HostError::InvalidState(what.into())
    }
}
