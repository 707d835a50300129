//! Errors: what a CIM-XML document or element was refused for.

use super::*;

/// What went wrong while decoding CIM-XML or typing a value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecErrorKind {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("input is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("more than {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("expected {expected}, found element <{found}>")]
    UnexpectedElement { expected: String, found: String },
    #[error("element <{element}> lacks attribute {attribute}")]
    MissingAttribute {
        element: String,
        attribute: &'static str,
    },
    #[error("expected {expected}, got {text:?}")]
    BadValue { expected: String, text: String },
    #[error("{0}")]
    Path(PathError),
    #[error("{0}")]
    Other(String),
}

/// A decoding error with the chain of places it happened in, outermost first, e.g.
/// `ExportSettingData: property BackupIntent: expected uint16, got "abc"`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{}{kind}", context_prefix(.context))]
pub struct CodecError {
    pub context: Vec<String>,
    pub kind: CodecErrorKind,
}

pub(super) fn context_prefix(ctx: &[String]) -> String {
    ctx.iter().map(|c| format!("{c}: ")).collect()
}

impl CodecError {
    pub fn new(kind: CodecErrorKind) -> Self {
        Self {
            context: Vec::new(),
            kind,
        }
    }
    /// Adds an outer context (`"property BackupIntent"`, `"ExportSettingData"`).
    pub fn within(mut self, ctx: impl Into<String>) -> Self {
        self.context.insert(0, ctx.into());
        self
    }
    pub fn other(msg: impl Into<String>) -> Self {
        Self::new(CodecErrorKind::Other(msg.into()))
    }
    pub(super) fn bad(expected: impl Into<String>, text: &str) -> Self {
        let text: String = text.chars().take(120).collect();
        Self::new(CodecErrorKind::BadValue {
            expected: expected.into(),
            text,
        })
    }
    /// The CIM status a server should answer with when this error is in a request:
    /// type problems are `CIM_ERR_TYPE_MISMATCH`-like but DSP0200 asks for
    /// `CIM_ERR_INVALID_PARAMETER` for bad parameter values, so that is used throughout.
    pub fn cim_status(&self) -> crate::CimStatus {
        crate::CimStatus::InvalidParameter
    }
}

impl From<CodecError> for crate::CimError {
    fn from(e: CodecError) -> Self {
        crate::CimError::new(e.cim_status(), e.to_string())
    }
}

impl From<PathError> for CodecError {
    fn from(e: PathError) -> Self {
        Self::new(CodecErrorKind::Path(e))
    }
}

pub(super) type Result<T> = std::result::Result<T, CodecError>;
