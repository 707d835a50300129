//! Decoding one CIM-XML operation request (DSP0200 headers + DSP0201 message) into a
//! [`Request`], without touching any provider. Pure, so the fuzz target can drive it.
//!
//! What is checked here, and the HTTP answer for each failure (DSP0200 §7, and what
//! pywbem's own listener answers):
//!
//! | failure | status | `CIMError` header |
//! |---|---|---|
//! | Content-Type not `application/xml`/`text/xml` (charset, if given, utf-8), Content-Encoding not identity | 406 | `header-mismatch` |
//! | `CIMOperation` missing or not `MethodCall`; `CIMMethod`/`CIMObject` missing | 400 | `header-mismatch` |
//! | `CIMMethod` differs from the method in the body, `CIMObject` names another namespace | 400 | `header-mismatch` |
//! | not UTF-8, not well-formed XML, a DTD, too deep, too many nodes | 400 | `request-not-well-formed` |
//! | well-formed but not a valid CIM-XML request | 400 | `request-not-valid` |
//! | `CIMVERSION` / `DTDVERSION` / `PROTOCOLVERSION` not 2.x / 2.x / 1.x | 400 | `unsupported-cim-version` / `unsupported-dtd-version` / `unsupported-protocol-version` |
//! | `MULTIREQ` | 501 | `multiple-requests-unsupported` |
//!
//! Decisions: header names are matched case-insensitively (HTTP), header values are
//! percent-decoded (wbemcli escapes `CIMObject`), `CIMProtocolVersion` is optional (pywbem
//! does not send it) but must be 1.x when present, `CIMMethod` is compared with the body's
//! method name case-insensitively (CIM names are case-insensitive), and the `CIMObject`
//! header is only checked for naming the same namespace as the body (its key part is
//! informational; the body is authoritative). Unknown attributes in requests are ignored.

use cosnap_cim::ObjectPath;
use cosnap_cim::xml::{self, Node, ParamValue, elements, tag};

/// Hard limits on what one request may contain, independent of the HTTP body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest body in bytes.
    pub max_body: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
    /// Most XML nodes (elements, text, attributes do not count) in one request.
    pub max_nodes: u32,
    /// Most parameters in one call.
    pub max_params: usize,
}

impl DecodeLimits {
    /// The XML reader's caps for a request body.
    pub fn xml(&self) -> xml::XmlLimits {
        xml::XmlLimits {
            max_bytes: self.max_body,
            max_depth: self.max_depth,
            max_attributes: self.max_attributes,
            max_nodes: self.max_nodes,
            ..xml::XmlLimits::default()
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_body: 4 * 1024 * 1024,
            max_depth: 64,
            // DSP0201 elements carry at most 8; the parser's duplicate check costs the
            // square of this per element.
            max_attributes: 16,
            max_nodes: 200_000,
            max_params: 256,
        }
    }
}

/// One decoded CIM operation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `MESSAGE ID`, echoed in the response (not required to be unique).
    pub message_id: String,
    pub call: Call,
}

/// The two kinds of CIM operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `IMETHODCALL`: GetClass, EnumerateInstances, …
    Intrinsic {
        /// The method name exactly as sent (echoed byte for byte in the response).
        name: String,
        /// The namespace as sent, slash form (not yet checked against the served one).
        namespace: String,
        params: Vec<ParamValue>,
    },
    /// `METHODCALL` on an instance (`LOCALINSTANCEPATH`) or a class (`LOCALCLASSPATH`).
    Extrinsic {
        name: String,
        /// The target, with its namespace in [`ObjectPath::namespace`] and untyped keys.
        target: ObjectPath,
        params: Vec<ParamValue>,
    },
}

impl Call {
    /// The method name as sent.
    pub fn name(&self) -> &str {
        match self {
            Call::Intrinsic { name, .. } | Call::Extrinsic { name, .. } => name,
        }
    }
}

/// Why a request was refused at the HTTP level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {detail}", kind.cim_error_header(), kind.http_status())]
pub struct RequestError {
    pub kind: RequestErrorKind,
    /// A sentence for a person (sent in the `CIMErrorDetails` header, shortened).
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestErrorKind {
    HeaderMismatch,
    ContentNotAcceptable,
    NotWellFormed,
    NotValid,
    UnsupportedCimVersion,
    UnsupportedDtdVersion,
    UnsupportedProtocolVersion,
    MultipleRequestsUnsupported,
    TooLarge,
}

impl RequestErrorKind {
    /// The HTTP status to answer with.
    pub fn http_status(self) -> u16 {
        match self {
            RequestErrorKind::ContentNotAcceptable => 406,
            RequestErrorKind::MultipleRequestsUnsupported => 501,
            RequestErrorKind::TooLarge => 413,
            _ => 400,
        }
    }

    /// The DSP0200 `CIMError` header value.
    pub fn cim_error_header(self) -> &'static str {
        match self {
            RequestErrorKind::HeaderMismatch | RequestErrorKind::ContentNotAcceptable => {
                "header-mismatch"
            }
            RequestErrorKind::NotWellFormed | RequestErrorKind::TooLarge => {
                "request-not-well-formed"
            }
            RequestErrorKind::NotValid => "request-not-valid",
            RequestErrorKind::UnsupportedCimVersion => "unsupported-cim-version",
            RequestErrorKind::UnsupportedDtdVersion => "unsupported-dtd-version",
            RequestErrorKind::UnsupportedProtocolVersion => "unsupported-protocol-version",
            RequestErrorKind::MultipleRequestsUnsupported => "multiple-requests-unsupported",
        }
    }
}

fn err(kind: RequestErrorKind, detail: impl Into<String>) -> RequestError {
    let mut detail: String = detail.into();
    if detail.len() > 300 {
        let mut cut = 300;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    RequestError { kind, detail }
}

/// Decodes `%XX` escapes. Invalid escapes are kept as they are; the result must be UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The CIM headers of a request, found case-insensitively and percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CimHeaders {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub cim_operation: Option<String>,
    pub cim_method: Option<String>,
    pub cim_object: Option<String>,
    pub cim_protocol_version: Option<String>,
}

impl CimHeaders {
    /// Picks the CIM headers from `(name, raw value)` pairs. Values that are not UTF-8
    /// after percent-decoding are a header mismatch.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<CimHeaders, RequestError> {
        let mut h = CimHeaders::default();
        for (name, raw) in pairs {
            let slot = match name.to_ascii_lowercase().as_str() {
                "content-type" => &mut h.content_type,
                "content-encoding" => &mut h.content_encoding,
                "cimoperation" => &mut h.cim_operation,
                "cimmethod" => &mut h.cim_method,
                "cimobject" => &mut h.cim_object,
                "cimprotocolversion" => &mut h.cim_protocol_version,
                _ => continue,
            };
            let text = std::str::from_utf8(raw)
                .ok()
                .and_then(percent_decode)
                .ok_or_else(|| {
                    err(
                        RequestErrorKind::HeaderMismatch,
                        format!("header {name} is not UTF-8 text"),
                    )
                })?;
            *slot = Some(text.trim().to_string());
        }
        Ok(h)
    }

    fn check(&self) -> Result<(), RequestError> {
        use RequestErrorKind::*;
        match &self.content_type {
            None => return Err(err(ContentNotAcceptable, "Content-Type header is required")),
            Some(ct) if !content_type_ok(ct) => {
                return Err(err(
                    ContentNotAcceptable,
                    format!(
                        "Content-Type {ct:?}: need application/xml or text/xml with charset utf-8"
                    ),
                ));
            }
            _ => {}
        }
        if let Some(enc) = &self.content_encoding
            && !enc.eq_ignore_ascii_case("identity")
        {
            return Err(err(
                ContentNotAcceptable,
                format!("Content-Encoding {enc:?}: only identity is supported"),
            ));
        }
        match &self.cim_operation {
            None => return Err(err(HeaderMismatch, "CIMOperation header is required")),
            Some(op) if !op.eq_ignore_ascii_case("MethodCall") => {
                return Err(err(
                    HeaderMismatch,
                    format!("CIMOperation {op:?}: only MethodCall is accepted"),
                ));
            }
            _ => {}
        }
        if self.cim_method.as_deref().is_none_or(str::is_empty) {
            return Err(err(HeaderMismatch, "CIMMethod header is required"));
        }
        if self.cim_object.as_deref().is_none_or(str::is_empty) {
            return Err(err(HeaderMismatch, "CIMObject header is required"));
        }
        if let Some(v) = &self.cim_protocol_version
            && !v.starts_with("1.")
        {
            return Err(err(
                UnsupportedProtocolVersion,
                format!("CIMProtocolVersion {v:?}: only 1.x is supported"),
            ));
        }
        Ok(())
    }
}

fn content_type_ok(ct: &str) -> bool {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/xml") && !media.eq_ignore_ascii_case("text/xml") {
        return false;
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("charset")
        {
            let v = v.trim().trim_matches('"');
            if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                return false;
            }
        }
    }
    true
}

/// Whether the element nesting of XML `text` goes deeper than `max` (the reader's linear
/// pre-scan, see [`cosnap_cim::xml::reader`]).
pub use cosnap_cim::xml::nesting_exceeds;

/// Parses request XML under the limits shared by every protocol front end (the bounded
/// reader of [`cosnap_cim::xml`] with [`DecodeLimits::xml`]: size, depth, attributes and
/// namespace declarations capped by a linear pre-scan, no DTD, bounded node count).
/// Failures are [`RequestErrorKind::NotWellFormed`].
pub fn parse_bounded<'t>(
    text: &'t str,
    limits: &DecodeLimits,
) -> Result<xml::Document<'t>, RequestError> {
    xml::parse_document_with(text, &limits.xml())
        .map_err(|e| err(RequestErrorKind::NotWellFormed, e.to_string()))
}

/// The `<CIM>` root must declare CIMVERSION and DTDVERSION 2.x.
fn check_cim_versions(cim: &Node) -> Result<(), RequestError> {
    use RequestErrorKind::*;
    let cimversion = cim
        .attribute("CIMVERSION")
        .ok_or_else(|| err(NotValid, "<CIM> lacks CIMVERSION"))?;
    if !cimversion.starts_with("2.") {
        return Err(err(
            UnsupportedCimVersion,
            format!("CIMVERSION {cimversion:?}: only 2.x is supported"),
        ));
    }
    let dtdversion = cim
        .attribute("DTDVERSION")
        .ok_or_else(|| err(NotValid, "<CIM> lacks DTDVERSION"))?;
    if !dtdversion.starts_with("2.") {
        return Err(err(
            UnsupportedDtdVersion,
            format!("DTDVERSION {dtdversion:?}: only 2.x is supported"),
        ));
    }
    Ok(())
}

/// Decodes one request from its headers (`(name, raw value)` pairs in any case) and body.
pub fn decode_request<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
    limits: &DecodeLimits,
) -> Result<Request, RequestError> {
    use RequestErrorKind::*;
    let h = CimHeaders::from_pairs(headers)?;
    h.check()?;
    if body.len() > limits.max_body {
        return Err(err(
            TooLarge,
            format!(
                "body is {} bytes; at most {} are accepted",
                body.len(),
                limits.max_body
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| err(NotWellFormed, format!("body is not UTF-8: {e}")))?;
    let doc = parse_bounded(text, limits)?;
    let cim = doc.root_element();
    if tag(&cim) != "CIM" {
        return Err(err(
            NotValid,
            format!("root element is <{}>, not <CIM>", tag(&cim)),
        ));
    }
    check_cim_versions(&cim)?;

    let message = single(cim, "MESSAGE")?;
    let message_id = message
        .attribute("ID")
        .ok_or_else(|| err(NotValid, "<MESSAGE> lacks ID"))?
        .to_string();
    let protocol = message
        .attribute("PROTOCOLVERSION")
        .ok_or_else(|| err(NotValid, "<MESSAGE> lacks PROTOCOLVERSION"))?;
    if !protocol.starts_with("1.") {
        return Err(err(
            UnsupportedProtocolVersion,
            format!("PROTOCOLVERSION {protocol:?}: only 1.x is supported"),
        ));
    }
    let req = only_child(message)?;
    match tag(&req) {
        "SIMPLEREQ" => {}
        "MULTIREQ" => {
            return Err(err(
                MultipleRequestsUnsupported,
                "MULTIREQ is not supported; send one SIMPLEREQ per request",
            ));
        }
        other => {
            return Err(err(
                NotValid,
                format!("<MESSAGE> holds <{other}>, expected <SIMPLEREQ>"),
            ));
        }
    }
    let mut call_node = None;
    for c in elements(req) {
        match tag(&c) {
            "IMETHODCALL" | "METHODCALL" if call_node.is_none() => call_node = Some(c),
            // DSP0201 2.4 allows a CORRELATOR list after the call; it carries nothing we use.
            "CORRELATOR" => {}
            other => {
                return Err(err(
                    NotValid,
                    format!("unexpected <{other}> in <SIMPLEREQ>"),
                ));
            }
        }
    }
    let call_node =
        call_node.ok_or_else(|| err(NotValid, "<SIMPLEREQ> holds no IMETHODCALL or METHODCALL"))?;
    let name = call_node
        .attribute("NAME")
        .ok_or_else(|| err(NotValid, format!("<{}> lacks NAME", tag(&call_node))))?;
    let header_method = h.cim_method.as_deref().unwrap_or_default();
    if !header_method.eq_ignore_ascii_case(name) {
        return Err(err(
            HeaderMismatch,
            format!("CIMMethod header {header_method:?} differs from the body's method {name:?}"),
        ));
    }
    let call = if tag(&call_node) == "IMETHODCALL" {
        decode_intrinsic(call_node, name, limits)?
    } else {
        decode_extrinsic(call_node, name, limits)?
    };
    check_cim_object(h.cim_object.as_deref().unwrap_or_default(), &call)?;
    Ok(Request { message_id, call })
}

fn invalid(e: impl std::fmt::Display) -> RequestError {
    err(RequestErrorKind::NotValid, e.to_string())
}

fn single<'a, 'i>(node: Node<'a, 'i>, want: &str) -> Result<Node<'a, 'i>, RequestError> {
    let c = only_child(node)?;
    if tag(&c) != want {
        return Err(err(
            RequestErrorKind::NotValid,
            format!("<{}> holds <{}>, expected <{want}>", tag(&node), tag(&c)),
        ));
    }
    Ok(c)
}

fn only_child<'a, 'i>(node: Node<'a, 'i>) -> Result<Node<'a, 'i>, RequestError> {
    let mut it = elements(node);
    let c = it.next().ok_or_else(|| {
        err(
            RequestErrorKind::NotValid,
            format!("<{}> is empty", tag(&node)),
        )
    })?;
    if let Some(extra) = it.next() {
        return Err(err(
            RequestErrorKind::NotValid,
            format!("unexpected <{}> in <{}>", tag(&extra), tag(&node)),
        ));
    }
    Ok(c)
}

fn decode_params<'a, 'i: 'a>(
    nodes: impl Iterator<Item = Node<'a, 'i>>,
    want: &str,
    limits: &DecodeLimits,
) -> Result<Vec<ParamValue>, RequestError> {
    let mut params: Vec<ParamValue> = Vec::new();
    for n in nodes {
        if tag(&n) != want {
            return Err(err(
                RequestErrorKind::NotValid,
                format!("unexpected <{}>, expected <{want}>", tag(&n)),
            ));
        }
        if params.len() >= limits.max_params {
            return Err(err(
                RequestErrorKind::NotValid,
                format!("more than {} parameters", limits.max_params),
            ));
        }
        params.push(xml::parse_paramvalue(n).map_err(invalid)?);
    }
    Ok(params)
}

fn decode_intrinsic(node: Node, name: &str, limits: &DecodeLimits) -> Result<Call, RequestError> {
    let mut children = elements(node);
    let ns_node = children.next().ok_or_else(|| {
        err(
            RequestErrorKind::NotValid,
            "<IMETHODCALL> lacks LOCALNAMESPACEPATH",
        )
    })?;
    if tag(&ns_node) != "LOCALNAMESPACEPATH" {
        return Err(err(
            RequestErrorKind::NotValid,
            format!(
                "<IMETHODCALL> starts with <{}>, expected <LOCALNAMESPACEPATH>",
                tag(&ns_node)
            ),
        ));
    }
    let namespace = xml::parse_local_namespace_path(ns_node).map_err(invalid)?;
    let params = decode_params(children, "IPARAMVALUE", limits)?;
    Ok(Call::Intrinsic {
        name: name.to_string(),
        namespace,
        params,
    })
}

fn decode_extrinsic(node: Node, name: &str, limits: &DecodeLimits) -> Result<Call, RequestError> {
    let mut children = elements(node);
    let target_node = children.next().ok_or_else(|| {
        err(
            RequestErrorKind::NotValid,
            "<METHODCALL> lacks its target path",
        )
    })?;
    if !matches!(tag(&target_node), "LOCALINSTANCEPATH" | "LOCALCLASSPATH") {
        return Err(err(
            RequestErrorKind::NotValid,
            format!(
                "<METHODCALL> starts with <{}>, expected LOCALINSTANCEPATH or LOCALCLASSPATH",
                tag(&target_node)
            ),
        ));
    }
    let target = xml::parse_path_element(target_node).map_err(invalid)?;
    if target.namespace.is_none() {
        return Err(err(
            RequestErrorKind::NotValid,
            "the method's target has no namespace",
        ));
    }
    let params = decode_params(children, "PARAMVALUE", limits)?;
    Ok(Call::Extrinsic {
        name: name.to_string(),
        target,
        params,
    })
}

/// The `CIMObject` header must name the namespace the body names (before any `:`).
fn check_cim_object(header: &str, call: &Call) -> Result<(), RequestError> {
    let body_ns = match call {
        Call::Intrinsic { namespace, .. } => namespace.as_str(),
        Call::Extrinsic { target, .. } => target.namespace.as_deref().unwrap_or_default(),
    };
    let header_ns = header.split_once(':').map_or(header, |(ns, _)| ns);
    if cosnap_cim::normalize_namespace(header_ns) != cosnap_cim::normalize_namespace(body_ns) {
        return Err(err(
            RequestErrorKind::HeaderMismatch,
            format!("CIMObject header names namespace {header_ns:?}, the body {body_ns:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(method: &'a str, object: &'a str) -> Vec<(&'a str, &'a [u8])> {
        vec![
            (
                "content-type",
                b"application/xml; charset=\"utf-8\"".as_slice(),
            ),
            ("CIMOperation", b"MethodCall".as_slice()),
            ("CIMMethod", method.as_bytes()),
            ("CIMObject", object.as_bytes()),
        ]
    }

    const ENUM_NAMES: &str = r#"<?xml version="1.0" encoding="utf-8" ?>
<CIM CIMVERSION="2.0" DTDVERSION="2.0"><MESSAGE ID="1001" PROTOCOLVERSION="1.0"><SIMPLEREQ><IMETHODCALL NAME="EnumerateInstanceNames"><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH><IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Msvm_ConcreteJob"/></IPARAMVALUE></IMETHODCALL></SIMPLEREQ></MESSAGE></CIM>"#;

    #[test]
    fn decodes_intrinsic_with_escaped_cimobject() {
        let h = headers("EnumerateInstanceNames", "root%2Fvirtualization%2Fv2");
        let r = decode_request(h, ENUM_NAMES.as_bytes(), &DecodeLimits::default()).unwrap();
        assert_eq!(r.message_id, "1001");
        match r.call {
            Call::Intrinsic {
                name,
                namespace,
                params,
            } => {
                assert_eq!(name, "EnumerateInstanceNames");
                assert_eq!(namespace, "root/virtualization/v2");
                assert_eq!(params.len(), 1);
                assert_eq!(params[0].name, "ClassName");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_faults() {
        let l = DecodeLimits::default();
        let body = ENUM_NAMES.as_bytes();
        let mut h = headers("GetInstance", "root/virtualization/v2");
        assert_eq!(
            decode_request(h.clone(), body, &l).unwrap_err().kind,
            RequestErrorKind::HeaderMismatch
        );
        h = headers("EnumerateInstanceNames", "root/other");
        assert_eq!(
            decode_request(h.clone(), body, &l).unwrap_err().kind,
            RequestErrorKind::HeaderMismatch
        );
        h = headers("EnumerateInstanceNames", "root/virtualization/v2");
        h.retain(|(n, _)| *n != "CIMOperation");
        assert_eq!(
            decode_request(h.clone(), body, &l).unwrap_err().kind,
            RequestErrorKind::HeaderMismatch
        );
        h = headers("EnumerateInstanceNames", "root/virtualization/v2");
        h[0].1 = b"text/plain";
        let e = decode_request(h, body, &l).unwrap_err();
        assert_eq!(e.kind.http_status(), 406);
    }

    #[test]
    fn refuses_dtd_and_bad_xml_and_depth() {
        let l = DecodeLimits::default();
        let h = headers("EnumerateInstanceNames", "root/virtualization/v2");
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE CIM [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><CIM CIMVERSION="2.0" DTDVERSION="2.0">&b;</CIM>"#;
        assert_eq!(
            decode_request(h.clone(), laughs.as_bytes(), &l)
                .unwrap_err()
                .kind,
            RequestErrorKind::NotWellFormed
        );
        assert_eq!(
            decode_request(h.clone(), &ENUM_NAMES.as_bytes()[..200], &l)
                .unwrap_err()
                .kind,
            RequestErrorKind::NotWellFormed
        );
        let deep = format!(
            "<CIM CIMVERSION=\"2.0\" DTDVERSION=\"2.0\">{}{}</CIM>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert_eq!(
            decode_request(h.clone(), deep.as_bytes(), &l)
                .unwrap_err()
                .kind,
            RequestErrorKind::NotWellFormed
        );
        let v3 = ENUM_NAMES.replace("CIMVERSION=\"2.0\"", "CIMVERSION=\"3.0\"");
        assert_eq!(
            decode_request(h, v3.as_bytes(), &l).unwrap_err().kind,
            RequestErrorKind::UnsupportedCimVersion
        );
    }

    #[test]
    fn very_deep_nesting_is_refused_before_parsing() {
        for depth in [65usize, 10_000, 200_000] {
            let deep = format!("{}{}", "<a x='>'>".repeat(depth), "</a>".repeat(depth));
            // A small stack: the refusal must not recurse.
            let kind = std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let h = headers("EnumerateInstanceNames", "root/virtualization/v2");
                    decode_request(h, deep.as_bytes(), &DecodeLimits::default())
                        .unwrap_err()
                        .kind
                })
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(kind, RequestErrorKind::NotWellFormed);
        }
        assert!(!nesting_exceeds(ENUM_NAMES, 8));
        assert!(nesting_exceeds(ENUM_NAMES, 4));
        assert!(!nesting_exceeds(ENUM_NAMES, 5));
        assert!(!nesting_exceeds(
            "<a><![CDATA[<b><c><d>]]><!-- <e><f> --><g/><h/></a>",
            1
        ));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%3aC").unwrap(), "a/b:C");
        assert_eq!(percent_decode("100%").unwrap(), "100%");
        assert_eq!(percent_decode("%zz%4").unwrap(), "%zz%4");
        assert!(percent_decode("%ff").is_none());
    }
}
