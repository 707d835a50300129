//! How a [`HostError`] reads to a CIM client: its `CIM_ERR_*` status for intrinsic
//! operations (GetInstance of a missing object, ...).

use cosnap_cim::{CimError, CimStatus};

use crate::error::HostError;

impl HostError {
    /// CIM_ERR_* status for intrinsic operations (GetInstance of a missing object, …).
    pub fn cim_status(&self) -> CimStatus {
        match self {
            HostError::NotFound(_) => CimStatus::NotFound,
            HostError::InvalidParameter(_) | HostError::InvalidType(_) => {
                CimStatus::InvalidParameter
            }
            HostError::AlreadyExists(_) => CimStatus::AlreadyExists,
            HostError::AccessDenied(_) => CimStatus::AccessDenied,
            HostError::NotSupported(_) => CimStatus::NotSupported,
            _ => CimStatus::Failed,
        }
    }

    /// The CIM error an intrinsic operation answers with.
    pub fn to_cim(&self) -> CimError {
        CimError::new(self.cim_status(), self.to_string())
    }
}
