//! CIM status codes (DSP0200) and the error type every provider call returns.

use thiserror::Error;

/// Standard CIM status codes (`CIM_ERR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CimStatus {
    /// `CIM_ERR_FAILED`: a general failure not covered by another code.
    Failed = 1,
    /// `CIM_ERR_ACCESS_DENIED`: the client may not perform the operation.
    AccessDenied = 2,
    /// `CIM_ERR_INVALID_NAMESPACE`: the namespace does not exist.
    InvalidNamespace = 3,
    /// `CIM_ERR_INVALID_PARAMETER`: a parameter is missing, unknown or out of range.
    InvalidParameter = 4,
    /// `CIM_ERR_INVALID_CLASS`: the class does not exist.
    InvalidClass = 5,
    /// `CIM_ERR_NOT_FOUND`: no instance has the given path.
    NotFound = 6,
    /// `CIM_ERR_NOT_SUPPORTED`: the operation is not implemented.
    NotSupported = 7,
    /// `CIM_ERR_CLASS_HAS_CHILDREN`: the class cannot be deleted while it has subclasses.
    ClassHasChildren = 8,
    /// `CIM_ERR_CLASS_HAS_INSTANCES`: the class cannot be deleted while it has instances.
    ClassHasInstances = 9,
    /// `CIM_ERR_INVALID_SUPERCLASS`: the named superclass does not exist.
    InvalidSuperclass = 10,
    /// `CIM_ERR_ALREADY_EXISTS`: an object with that name already exists.
    AlreadyExists = 11,
    /// `CIM_ERR_NO_SUCH_PROPERTY`: the class has no property of that name.
    NoSuchProperty = 12,
    /// `CIM_ERR_TYPE_MISMATCH`: a value does not have the property's type.
    TypeMismatch = 13,
    /// `CIM_ERR_QUERY_LANGUAGE_NOT_SUPPORTED`: the query language is not supported.
    QueryLanguageNotSupported = 14,
    /// `CIM_ERR_INVALID_QUERY`: the query is not valid.
    InvalidQuery = 15,
    /// `CIM_ERR_METHOD_NOT_AVAILABLE`: the extrinsic method cannot run now.
    MethodNotAvailable = 16,
    /// `CIM_ERR_METHOD_NOT_FOUND`: the class has no extrinsic method of that name.
    MethodNotFound = 17,
    /// `CIM_ERR_INVALID_ENUMERATION_CONTEXT`: a pull operation's context is unknown or expired.
    InvalidEnumerationContext = 21,
    /// `CIM_ERR_INVALID_OPERATION_TIMEOUT`: an OperationTimeout the server does not accept.
    InvalidOperationTimeout = 22,
    /// `CIM_ERR_FILTERED_ENUMERATION_NOT_SUPPORTED`: pull enumerations take no filter query.
    FilteredEnumerationNotSupported = 25,
    /// `CIM_ERR_CONTINUATION_ON_ERROR_NOT_SUPPORTED`: an enumeration ends at its first error.
    ContinuationOnErrorNotSupported = 26,
    /// `CIM_ERR_SERVER_LIMITS_EXCEEDED`: too many open enumerations.
    ServerLimitsExceeded = 27,
}

impl CimStatus {
    /// The numeric status code sent on the wire (`CIMStatusCode`).
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
    /// The status code of the failure.
    pub status: CimStatus,
    /// What failed, for a person to read (`CIMStatusCodeDescription`).
    pub description: String,
}

impl CimError {
    /// A CIM error with the given status and description.
    pub fn new(status: CimStatus, description: impl Into<String>) -> Self {
        Self {
            status,
            description: description.into(),
        }
    }
    /// `CIM_ERR_NOT_FOUND` with a description.
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(CimStatus::NotFound, description)
    }
    /// `CIM_ERR_INVALID_PARAMETER` with a description.
    pub fn invalid_parameter(description: impl Into<String>) -> Self {
        Self::new(CimStatus::InvalidParameter, description)
    }
    /// `CIM_ERR_INVALID_CLASS` with a description.
    pub fn invalid_class(description: impl Into<String>) -> Self {
        Self::new(CimStatus::InvalidClass, description)
    }
    /// `CIM_ERR_FAILED` with a description.
    pub fn failed(description: impl Into<String>) -> Self {
        Self::new(CimStatus::Failed, description)
    }
    /// `CIM_ERR_NOT_SUPPORTED` with a description.
    pub fn not_supported(description: impl Into<String>) -> Self {
        Self::new(CimStatus::NotSupported, description)
    }
}

/// Why a path text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The text is empty.
    #[error("object path is empty")]
    Empty,
    #[error("object path is {len} bytes long; at most {max} are accepted")]
    /// The text is longer than the parser accepts.
    TooLong {
        /// The length of the text, in bytes.
        len: usize,
        /// The most bytes accepted.
        max: usize,
    },
    #[error("object path has more than {max} keys")]
    /// The path binds more keys than the parser accepts.
    TooManyKeys {
        /// The most key bindings accepted.
        max: usize,
    },
    #[error("object path {path:?}: {reason}")]
    /// The text is not a WMI object path or WBEM URI.
    Syntax {
        /// The path text as received.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}
