//! The bounded XML reader every untrusted document goes through: one linear pre-scan of
//! the raw text checks nesting depth, attributes and namespace declarations per element and
//! namespace declarations per document, then `roxmltree` builds the tree with DTDs (and so
//! entity definitions) refused and the node count bounded.
//!
//! Why a pre-scan: `roxmltree` compares each attribute with every earlier one of its
//! element, each namespace declaration with every earlier one, and copies the in-scope
//! namespaces into every element that declares one — quadratic in the counts. With the
//! counts capped before it runs, each of those scans is bounded by a constant and the whole
//! parse stays linear in the input (80,000 attributes on one element or 2,000 namespace
//! declarations are refused in about a millisecond instead of costing seconds).

use super::{CodecError, CodecErrorKind, Document, Result};

/// Largest document [`parse_document`](super::parse_document) accepts by default.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Most XML nodes in one document (bounds memory independently of the byte size).
pub const MAX_NODES: u32 = 1_000_000;
/// Deepest XML element nesting accepted (checked before building the tree, so deep
/// input cannot exhaust the stack; real CIM-XML stays under 30).
pub const MAX_XML_DEPTH: usize = 256;
/// Most attributes (namespace declarations included) accepted on one element.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most namespace declarations on one element (a SOAP envelope has about ten).
pub const MAX_ELEMENT_NAMESPACES: usize = 32;
/// Most namespace declarations in one document.
pub const MAX_DOCUMENT_NAMESPACES: usize = 256;

/// The caps of one read. `Default` gives the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlLimits {
    /// Most bytes in one document.
    pub max_bytes: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Most namespace declarations on one element.
    pub max_element_namespaces: usize,
    /// Most namespace declarations in one document.
    pub max_document_namespaces: usize,
    /// Most XML nodes in one document.
    pub max_nodes: u32,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_DOCUMENT_BYTES,
            max_depth: MAX_XML_DEPTH,
            max_attributes: MAX_ATTRIBUTES,
            max_element_namespaces: MAX_ELEMENT_NAMESPACES,
            max_document_namespaces: MAX_DOCUMENT_NAMESPACES,
            max_nodes: MAX_NODES,
        }
    }
}

/// Parses untrusted XML text within `limits`.
pub fn parse_document_with<'i>(text: &'i str, limits: &XmlLimits) -> Result<Document<'i>> {
    if text.len() > limits.max_bytes {
        return Err(CodecError::new(CodecErrorKind::TooLarge {
            len: text.len(),
            max: limits.max_bytes,
        }));
    }
    prescan(text, limits)?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: limits.max_nodes,
    };
    Document::parse_with_options(text, opts)
        .map_err(|e| CodecError::new(CodecErrorKind::Xml(e.to_string())))
}

/// Whether elements nest deeper than `max` (the pre-scan's depth check alone, for text
/// that is parsed elsewhere, such as an embedded instance's before it is unescaped).
pub fn nesting_exceeds(text: &str, max: usize) -> bool {
    let limits = XmlLimits {
        max_depth: max,
        max_attributes: usize::MAX,
        max_element_namespaces: usize::MAX,
        max_document_namespaces: usize::MAX,
        ..XmlLimits::default()
    };
    matches!(
        prescan(text, &limits).map_err(|e| e.kind),
        Err(CodecErrorKind::TooDeep { .. })
    )
}

fn too_many(what: &'static str, max: usize) -> CodecError {
    CodecError::new(CodecErrorKind::TooMany { what, max })
}

/// The linear pre-scan: start tags open, end tags and `/>` close; quoted attribute values,
/// comments, CDATA, PIs and declarations are skipped. It only needs to over-approximate
/// well-formed input; malformed input fails in the parser.
fn prescan(text: &str, limits: &XmlLimits) -> Result<()> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut namespaces = 0usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_past(b, i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_past(b, i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_past(b, i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_past(b, i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_past(b, i + 2, b">");
        } else {
            let tag = start_tag(b, i + 1);
            check_tag(&tag, limits)?;
            namespaces += tag.namespaces;
            if namespaces > limits.max_document_namespaces {
                return Err(too_many(
                    "namespace declarations in one document",
                    limits.max_document_namespaces,
                ));
            }
            if !tag.self_closing {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(CodecError::new(CodecErrorKind::TooDeep {
                        max: limits.max_depth,
                    }));
                }
            }
            i = tag.end + 1;
        }
    }
    Ok(())
}

fn check_tag(tag: &StartTag, limits: &XmlLimits) -> Result<()> {
    if tag.attributes > limits.max_attributes {
        return Err(too_many("attributes on one element", limits.max_attributes));
    }
    if tag.namespaces > limits.max_element_namespaces {
        return Err(too_many(
            "namespace declarations on one element",
            limits.max_element_namespaces,
        ));
    }
    Ok(())
}

/// The index just past the first `pat` at or after `from`, or the end of the text.
fn skip_past(b: &[u8], from: usize, pat: &[u8]) -> usize {
    let from = from.min(b.len());
    b[from..]
        .windows(pat.len())
        .position(|w| w == pat)
        .map_or(b.len(), |p| from + p + pat.len())
}

/// What the pre-scan learns about one start tag.
struct StartTag {
    /// Index of its closing `>` (or the end of the text).
    end: usize,
    self_closing: bool,
    /// `name=` pairs outside quotes, namespace declarations included.
    attributes: usize,
    /// `xmlns=` and `xmlns:p=` pairs.
    namespaces: usize,
}

/// Scans a start tag from just after its `<` to its `>`, outside quoted values.
fn start_tag(b: &[u8], from: usize) -> StartTag {
    let mut tag = StartTag {
        end: b.len(),
        self_closing: false,
        attributes: 0,
        namespaces: 0,
    };
    let mut quote = 0u8;
    // The last unquoted name-like token: the attribute name when an `=` follows.
    let mut token = from..from;
    let mut in_token = false;
    let mut j = from;
    while j < b.len() {
        let c = b[j];
        if quote != 0 {
            if c == quote {
                quote = 0;
            }
        } else if c == b'>' {
            tag.end = j;
            tag.self_closing = j > from && b[j - 1] == b'/';
            break;
        } else if c == b'"' || c == b'\'' {
            quote = c;
            in_token = false;
        } else if c == b'=' {
            in_token = false;
            tag.attributes += 1;
            if is_namespace_declaration(&b[token.clone()]) {
                tag.namespaces += 1;
            }
        } else if c.is_ascii_whitespace() || c == b'/' {
            in_token = false;
        } else if in_token {
            token.end = j + 1;
        } else {
            in_token = true;
            token = j..j + 1;
        }
        j += 1;
    }
    tag
}

fn is_namespace_declaration(name: &[u8]) -> bool {
    name == b"xmlns" || name.starts_with(b"xmlns:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn kind(text: &str) -> CodecErrorKind {
        parse_document_with(text, &XmlLimits::default())
            .unwrap_err()
            .kind
    }

    #[test]
    fn counts_attributes_and_namespace_declarations() {
        let t = start_tag(br#"<a x = "1" xmlns='u' xmlns:p="v=w" y="a>b"/>"#, 1);
        assert_eq!((t.attributes, t.namespaces, t.self_closing), (4, 2, true));
        let t = start_tag(b"<a>", 1);
        assert_eq!((t.attributes, t.namespaces, t.self_closing), (0, 0, false));
    }

    #[test]
    fn attribute_and_namespace_caps() {
        let ok: String = (0..MAX_ATTRIBUTES).map(|i| format!(" a{i}='x'")).collect();
        parse_document_with(&format!("<A{ok}/>"), &XmlLimits::default()).unwrap();
        let over: String = (0..=MAX_ATTRIBUTES).map(|i| format!(" a{i}='x'")).collect();
        assert_eq!(
            kind(&format!("<A{over}/>")),
            CodecErrorKind::TooMany {
                what: "attributes on one element",
                max: MAX_ATTRIBUTES
            }
        );
        let ns: String = (0..=MAX_ELEMENT_NAMESPACES)
            .map(|i| format!(" xmlns:p{i}='u{i}'"))
            .collect();
        assert!(kind(&format!("<A{ns}/>")).to_string().contains("namespace"));
        let spread: String = (0..=MAX_DOCUMENT_NAMESPACES)
            .map(|i| format!("<B xmlns:p='u{i}'/>"))
            .collect();
        assert!(
            kind(&format!("<A>{spread}</A>"))
                .to_string()
                .contains("in one document")
        );
        // Duplicates under the caps are still caught (by the parser).
        assert!(matches!(kind("<A a='1' a='2'/>"), CodecErrorKind::Xml(_)));
        assert!(matches!(
            kind("<A xmlns:p='1' xmlns:p='2'/>"),
            CodecErrorKind::Xml(_)
        ));
    }

    /// The shapes that cost seconds before the caps are refused at once.
    #[test]
    fn quadratic_shapes_are_refused_fast() {
        let attrs: String = (0..80_000).map(|i| format!(" a{i}=\"\"")).collect();
        let many_attrs = format!("<CIM{attrs}/>");
        let decls: String = (0..2_000).map(|i| format!(" xmlns:n{i}=\"u\"")).collect();
        let many_ns = format!("<CIM{decls}/>");
        for text in [many_attrs, many_ns] {
            let t = Instant::now();
            assert!(matches!(kind(&text), CodecErrorKind::TooMany { .. }));
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        }
    }

    #[test]
    fn nesting_only_check() {
        assert!(nesting_exceeds("<a><b><c/></b></a>", 1));
        assert!(!nesting_exceeds("<a><b><c/></b></a>", 2));
        assert!(!nesting_exceeds(
            "<a><![CDATA[<b><c><d>]]><!-- <e><f> --><g/><h/></a>",
            1
        ));
    }
}
