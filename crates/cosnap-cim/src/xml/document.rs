//! Document and node helpers: parsing a document with limits and reading nodes.

use super::*;

/// Parses CIM-XML text with the default [`XmlLimits`] (see [`reader`]).
pub fn parse_document(text: &str) -> Result<Document<'_>> {
    parse_document_with(text, &XmlLimits::default())
}

/// [`parse_document`] with a caller-chosen byte limit.
pub fn parse_document_limited(text: &str, max_bytes: usize) -> Result<Document<'_>> {
    let limits = XmlLimits {
        max_bytes,
        ..XmlLimits::default()
    };
    parse_document_with(text, &limits)
}

/// Element children of a node (text, comments and processing instructions skipped).
pub fn elements<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(Node::is_element)
}

/// The element's tag name (CIM-XML uses no XML namespaces).
pub fn tag<'a>(node: &Node<'a, '_>) -> &'a str {
    node.tag_name().name()
}

/// A required attribute.
pub fn attr<'a>(node: &Node<'a, '_>, name: &'static str) -> Result<&'a str> {
    check_attr_count(node)?;
    node.attribute(name).ok_or_else(|| {
        CodecError::new(CodecErrorKind::MissingAttribute {
            element: tag(node).to_string(),
            attribute: name,
        })
    })
}

/// An attribute looked up case-insensitively (`EmbeddedObject` / `EMBEDDEDOBJECT`).
pub fn attr_ci<'a>(node: &Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name().eq_ignore_ascii_case(name))
        .map(|a| a.value())
}

pub(super) fn check_attr_count(node: &Node) -> Result<()> {
    if node.attributes().len() > MAX_ATTRIBUTES {
        return Err(CodecError::new(CodecErrorKind::TooMany {
            what: "attributes",
            max: MAX_ATTRIBUTES,
        }));
    }
    Ok(())
}

pub(super) fn expect(node: &Node, names: &[&str]) -> Result<()> {
    check_attr_count(node)?;
    if names.contains(&tag(node)) {
        Ok(())
    } else {
        Err(CodecError::new(CodecErrorKind::UnexpectedElement {
            expected: names.join(" or "),
            found: tag(node).to_string(),
        }))
    }
}

/// The element's text (concatenated text and CDATA children).
pub fn text_of(node: &Node) -> String {
    let mut s = String::new();
    for c in node.children() {
        if c.is_text() {
            s.push_str(c.text().unwrap_or(""));
        }
    }
    s
}

pub(super) fn single_child<'a, 'i>(node: Node<'a, 'i>) -> Result<Node<'a, 'i>> {
    let mut it = elements(node);
    let first = it
        .next()
        .ok_or_else(|| CodecError::other(format!("<{}> is empty", tag(&node))))?;
    if it.next().is_some() {
        return Err(CodecError::other(format!(
            "<{}> has more than one child element",
            tag(&node)
        )));
    }
    Ok(first)
}
