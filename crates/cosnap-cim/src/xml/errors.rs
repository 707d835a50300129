//! Errors: what a CIM-XML document or element was refused for.

use super::*;

/// What went wrong while decoding CIM-XML or typing a value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CodecErrorKind {
    #[error("not well-formed XML: {0}")]
    /// The bytes are not well-formed XML.
    Xml(String),
    #[error("input is {len} bytes; at most {max} are accepted")]
    /// The document is larger than the reader accepts.
    TooLarge {
        /// The document's size, in bytes.
        len: usize,
        /// The most bytes accepted.
        max: usize,
    },
    #[error("nested deeper than {max} levels")]
    /// Elements nest deeper than the reader accepts.
    TooDeep {
        /// The deepest nesting accepted.
        max: usize,
    },
    #[error("more than {max} {what}")]
    /// The document holds more of something (attributes, nodes, properties, …) than accepted.
    TooMany {
        /// What there are too many of.
        what: &'static str,
        /// The most accepted.
        max: usize,
    },
    #[error("expected {expected}, found element <{found}>")]
    /// An element stands where CIM-XML allows another.
    UnexpectedElement {
        /// What the grammar allows there.
        expected: String,
        /// The element's name.
        found: String,
    },
    #[error("element <{element}> lacks attribute {attribute}")]
    /// An element lacks an attribute CIM-XML requires on it.
    MissingAttribute {
        /// The element's name.
        element: String,
        /// The missing attribute.
        attribute: &'static str,
    },
    #[error("expected {expected}, got {text:?}")]
    /// A value's text does not parse as its declared type.
    BadValue {
        /// The type or form expected.
        expected: String,
        /// The text received (at most 120 characters of it).
        text: String,
    },
    #[error("{0}")]
    /// An object path in the document could not be parsed.
    Path(PathError),
    #[error("{0}")]
    /// Any other refusal, described in words.
    Other(String),
}

/// A decoding error with the chain of places it happened in, outermost first, e.g.
/// `ExportSettingData: property BackupIntent: expected uint16, got "abc"`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{}{kind}", context_prefix(.context))]
pub struct CodecError {
    /// Where the error happened, outermost first (`"ExportSettingData"`, `"property BackupIntent"`).
    pub context: Vec<String>,
    /// What went wrong.
    pub kind: CodecErrorKind,
}

pub(super) fn context_prefix(ctx: &[String]) -> String {
    ctx.iter().map(|c| format!("{c}: ")).collect()
}

impl CodecError {
    /// An error with no context yet; callers add it with [`CodecError::within`].
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
    /// An [`CodecErrorKind::Other`] error with the given message.
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
