//! CIM status codes (DSP0200) and the error type every provider call returns.

use thiserror::Error;

/// Standard CIM status codes (`CIM_ERR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CimStatus {
    Failed = 1,
    AccessDenied = 2,
    InvalidNamespace = 3,
    InvalidParameter = 4,
    InvalidClass = 5,
    NotFound = 6,
    NotSupported = 7,
    ClassHasChildren = 8,
    ClassHasInstances = 9,
    InvalidSuperclass = 10,
    AlreadyExists = 11,
    NoSuchProperty = 12,
    TypeMismatch = 13,
    QueryLanguageNotSupported = 14,
    InvalidQuery = 15,
    MethodNotAvailable = 16,
    MethodNotFound = 17,
    InvalidEnumerationContext = 21,
    InvalidOperationTimeout = 22,
    FilteredEnumerationNotSupported = 25,
    ContinuationOnErrorNotSupported = 26,
    ServerLimitsExceeded = 27,
}

impl CimStatus {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The DSP0200 symbolic name, e.g. `CIM_ERR_NOT_FOUND`.
    pub fn symbol(self) -> &'static str {
        match self {
            CimStatus::Failed => "CIM_ERR_FAILED",
            CimStatus::AccessDenied => "CIM_ERR_ACCESS_DENIED",
            CimStatus::InvalidNamespace => "CIM_ERR_INVALID_NAMESPACE",
            CimStatus::InvalidParameter => "CIM_ERR_INVALID_PARAMETER",
            CimStatus::InvalidClass => "CIM_ERR_INVALID_CLASS",
            CimStatus::NotFound => "CIM_ERR_NOT_FOUND",
            CimStatus::NotSupported => "CIM_ERR_NOT_SUPPORTED",
            CimStatus::ClassHasChildren => "CIM_ERR_CLASS_HAS_CHILDREN",
            CimStatus::ClassHasInstances => "CIM_ERR_CLASS_HAS_INSTANCES",
            CimStatus::InvalidSuperclass => "CIM_ERR_INVALID_SUPERCLASS",
            CimStatus::AlreadyExists => "CIM_ERR_ALREADY_EXISTS",
            CimStatus::NoSuchProperty => "CIM_ERR_NO_SUCH_PROPERTY",
            CimStatus::TypeMismatch => "CIM_ERR_TYPE_MISMATCH",
            CimStatus::QueryLanguageNotSupported => "CIM_ERR_QUERY_LANGUAGE_NOT_SUPPORTED",
            CimStatus::InvalidQuery => "CIM_ERR_INVALID_QUERY",
            CimStatus::MethodNotAvailable => "CIM_ERR_METHOD_NOT_AVAILABLE",
            CimStatus::MethodNotFound => "CIM_ERR_METHOD_NOT_FOUND",
            CimStatus::InvalidEnumerationContext => "CIM_ERR_INVALID_ENUMERATION_CONTEXT",
            CimStatus::InvalidOperationTimeout => "CIM_ERR_INVALID_OPERATION_TIMEOUT",
            CimStatus::FilteredEnumerationNotSupported => {
                "CIM_ERR_FILTERED_ENUMERATION_NOT_SUPPORTED"
            }
            CimStatus::ContinuationOnErrorNotSupported => {
                "CIM_ERR_CONTINUATION_ON_ERROR_NOT_SUPPORTED"
            }
            CimStatus::ServerLimitsExceeded => "CIM_ERR_SERVER_LIMITS_EXCEEDED",
        }
    }
}

/// A CIM-level failure: a status code and a description a person can read.
///
/// Method calls that run and fail are *not* CIM errors: they return a method return code
/// inside [`crate::MethodOutcome`]. A `CimError` is for protocol and model faults (no such
/// instance, class or method, a parameter of the wrong type).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} ({}): {description}", status.symbol(), status.code())]
pub struct CimError {
    pub status: CimStatus,
    pub description: String,
}

impl CimError {
    pub fn new(status: CimStatus, description: impl Into<String>) -> Self {
        Self {
            status,
            description: description.into(),
        }
    }
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(CimStatus::NotFound, description)
    }
    pub fn invalid_parameter(description: impl Into<String>) -> Self {
        Self::new(CimStatus::InvalidParameter, description)
    }
    pub fn invalid_class(description: impl Into<String>) -> Self {
        Self::new(CimStatus::InvalidClass, description)
    }
    pub fn failed(description: impl Into<String>) -> Self {
        Self::new(CimStatus::Failed, description)
    }
    pub fn not_supported(description: impl Into<String>) -> Self {
        Self::new(CimStatus::NotSupported, description)
    }
}
