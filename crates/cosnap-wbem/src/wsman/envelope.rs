//! Decoding one WS-Management request envelope into an owned [`WsRequest`], by namespace
//! URI (never by prefix), without touching any provider. Pure, bounded and fuzzed.
//!
//! The XML goes through the same bounded parser as `/cimom` ([`crate::request::parse_bounded`]:
//! size, depth, node and attribute limits, no DTD). Header text is trimmed (MS-WSMV's own
//! examples wrap URIs and UUIDs over lines). Unknown headers are ignored unless marked
//! `s:mustUnderstand` in the SOAP namespace; pywinrm's unqualified attribute is not SOAP's.

use std::time::Duration;

use cosnap_cim::xml::{Node, text_of};

use super::fault::{self, Fault};
use super::names::{self, CIM, CIMBINDING, SOAP, WSA, WSEN, WSMAN, WSMID, XSI};
use crate::request::{DecodeLimits, parse_bounded};

/// Most parameters (repeated array elements included) in one Invoke body, and most
/// selectors in one selector set.
pub const MAX_ITEMS: usize = 4096;

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WsRequest {
    pub message_id: Option<String>,
    pub action: Option<String>,
    pub resource_uri: Option<String>,
    pub reply_to: Option<String>,
    pub selectors: Vec<Selector>,
    /// `wsman:OptionSet` options (name, value); `__cimnamespace` is the one cosnap reads.
    pub options: Vec<(String, String)>,
    pub max_envelope_size: Option<u64>,
    pub operation_timeout: Option<Duration>,
    pub body: Body,
}

/// A `wsman:Selector`: a key name and a text value or an endpoint reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub name: String,
    pub value: SelectorValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectorValue {
    Text(String),
    Epr(Epr),
}

/// An endpoint reference: the resource URI and selectors of its reference parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Epr {
    pub resource_uri: String,
    pub selectors: Vec<Selector>,
}

/// What the body asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Body {
    #[default]
    Empty,
    Identify,
    Enumerate(EnumerateBody),
    Pull {
        context: String,
        max_elements: Option<u64>,
    },
    Release {
        context: String,
    },
    /// A custom action's `<Method>_INPUT` element (or any other single element).
    Element {
        local_name: String,
        namespace: Option<String>,
        params: Vec<Param>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnumerationMode {
    #[default]
    Objects,
    Epr,
    ObjectAndEpr,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnumerateBody {
    pub mode: EnumerationMode,
    pub optimize: bool,
    pub max_elements: Option<u64>,
    pub filter: Option<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Wql(String),
    Selectors(Vec<Selector>),
    Association(AssociationFilter),
    Unsupported(String),
}

/// `b:AssociatedInstances` (associators) or `b:AssociationInstances` (references).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AssociationFilter {
    pub associators: bool,
    pub object: Epr,
    pub association_class: Option<String>,
    pub result_class: Option<String>,
    pub role: Option<String>,
    pub result_role: Option<String>,
}

/// One parameter element of an `_INPUT` body (arrays come as repeated names).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: ParamValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Nil,
    Text(String),
    Epr(Epr),
    /// A `cim:Datetime` / `cim:Interval` / `cim:CIM_DateTime` child, already in CIM text form.
    Datetime(String),
    /// The DSP0230 element form of an embedded instance: class from `xsi:type`, members.
    Instance {
        class_name: Option<String>,
        properties: Vec<Param>,
    },
}

type Result<T> = std::result::Result<T, Fault>;

/// Reads the request body as text: UTF-8, or UTF-16 with a byte-order mark (WinRM
/// accepts both).
pub fn body_text(body: &[u8]) -> Result<std::borrow::Cow<'_, str>> {
    let utf16 = |big: bool| -> Result<String> {
        let units: Vec<u16> = body[2..]
            .chunks_exact(2)
            .map(|c| {
                if big {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16(&units)
            .map_err(|_| Fault::schema_validation("the UTF-16 body is not valid UTF-16"))
    };
    match body {
        [0xFF, 0xFE, ..] => utf16(false).map(Into::into),
        [0xFE, 0xFF, ..] => utf16(true).map(Into::into),
        _ => {
            let b = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
            std::str::from_utf8(b)
                .map(Into::into)
                .map_err(|e| Fault::schema_validation(format!("the body is not UTF-8: {e}")))
        }
    }
}

/// Decodes a request body. A fault carries the MessageID read so far (for RelatesTo) in
/// the second tuple member.
pub fn decode(
    body: &[u8],
    limits: &DecodeLimits,
) -> std::result::Result<WsRequest, (Fault, Option<String>)> {
    let text = body_text(body).map_err(|f| (f, None))?;
    let doc =
        parse_bounded(&text, limits).map_err(|e| (Fault::schema_validation(e.detail), None))?;
    let env = doc.root_element();
    if !is(&env, SOAP, "Envelope") {
        return Err((
            Fault::schema_validation("the root element is not a SOAP 1.2 s:Envelope"),
            None,
        ));
    }
    let mut req = WsRequest::default();
    let header = child(env, SOAP, "Header");
    if let Some(h) = header {
        req.message_id = child(h, WSA, "MessageID").map(|n| trimmed(&n));
    }
    let id = req.message_id.clone();
    decode_headers(header, &mut req).map_err(|f| (f, id.clone()))?;
    req.body = match child(env, SOAP, "Body") {
        Some(b) => decode_body(b, req.action.as_deref()).map_err(|f| (f, id.clone()))?,
        None => return Err((Fault::schema_validation("the envelope has no s:Body"), id)),
    };
    Ok(req)
}

fn is(n: &Node, ns: &str, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(ns)
}

fn child<'a, 'i>(n: Node<'a, 'i>, ns: &str, local: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| is(c, ns, local))
}

fn trimmed(n: &Node) -> String {
    text_of(n).trim().to_string()
}

fn must_understand(n: &Node) -> bool {
    n.attribute((SOAP, "mustUnderstand"))
        .is_some_and(|v| matches!(v.trim(), "true" | "1"))
}

fn decode_headers(header: Option<Node>, req: &mut WsRequest) -> Result<()> {
    let Some(header) = header else {
        return Ok(());
    };
    for h in header.children().filter(Node::is_element) {
        let ns = h.tag_name().namespace().unwrap_or("");
        match (ns, h.tag_name().name()) {
            (WSA, "Action") => req.action = Some(trimmed(&h)),
            (WSA, "MessageID") => {}
            (WSA, "To") | (WSA, "From") | (WSA, "FaultTo") => {}
            (WSA, "ReplyTo") => {
                req.reply_to = child(h, WSA, "Address").map(|a| trimmed(&a));
            }
            (WSMAN, "ResourceURI") => req.resource_uri = Some(trimmed(&h)),
            (WSMAN, "SelectorSet") => req.selectors = selectors(h, 0)?,
            (WSMAN, "OptionSet") => req.options = options(h)?,
            (WSMAN, "MaxEnvelopeSize") => req.max_envelope_size = Some(max_envelope(&h)?),
            (WSMAN, "OperationTimeout") => req.operation_timeout = Some(duration(&h)?),
            (WSMAN, "Locale" | "RequestEPR" | "FragmentTransfer") => {}
            (names::MS_WSMAN, _) => {}
            _ if must_understand(&h) => {
                return Err(Fault::must_understand(format!(
                    "the header {{{ns}}}{} is marked mustUnderstand and cosnap does not know it",
                    h.tag_name().name()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn max_envelope(n: &Node) -> Result<u64> {
    let v: u64 = trimmed(n).parse().map_err(|_| {
        Fault::schema_validation(format!(
            "MaxEnvelopeSize {:?} is not a whole number",
            trimmed(n)
        ))
    })?;
    if v < 8192 {
        return Err(Fault::encoding_limit(
            fault::CODE_MAX_ENVELOPE_SIZE,
            format!("MaxEnvelopeSize {v} is below the minimum of 8192 bytes"),
        ));
    }
    Ok(v)
}

fn duration(n: &Node) -> Result<Duration> {
    let text = trimmed(n);
    super::values::parse_xs_duration(&text).ok_or_else(|| {
        Fault::schema_validation(format!(
            "OperationTimeout {text:?} is not an xs:duration such as PT20S"
        ))
    })
}

fn options(set: Node) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for o in set.children().filter(|c| is(c, WSMAN, "Option")) {
        if out.len() >= MAX_ITEMS {
            return Err(Fault::schema_validation("too many options"));
        }
        let name = o.attribute("Name").unwrap_or("").trim().to_string();
        out.push((name, trimmed(&o)));
    }
    Ok(out)
}

/// Selectors of a `wsman:SelectorSet`; `depth` counts EPRs nested in selector values.
fn selectors(set: Node, depth: usize) -> Result<Vec<Selector>> {
    let mut out = Vec::new();
    for s in set.children().filter(Node::is_element) {
        if !is(&s, WSMAN, "Selector") {
            return Err(Fault::invalid_selectors(
                fault::CODE_INVALID_SELECTORS,
                format!("unexpected <{}> in the SelectorSet", s.tag_name().name()),
            ));
        }
        if out.len() >= MAX_ITEMS {
            return Err(Fault::invalid_selectors(
                fault::CODE_INVALID_SELECTORS,
                "too many selectors",
            ));
        }
        let Some(name) = s.attribute("Name").map(str::trim).filter(|n| !n.is_empty()) else {
            return Err(Fault::invalid_selectors(
                fault::CODE_INVALID_SELECTORS,
                "a Selector has no Name",
            ));
        };
        let value = match child(s, WSA, "EndpointReference") {
            Some(epr) => SelectorValue::Epr(endpoint_reference(epr, depth + 1)?),
            None => SelectorValue::Text(trimmed(&s)),
        };
        out.push(Selector {
            name: name.to_string(),
            value,
        });
    }
    Ok(out)
}

/// Deepest nesting of EPRs inside selector values (references in keys).
const MAX_EPR_DEPTH: usize = 8;

/// An EPR's content: `wsa:Address` + `wsa:ReferenceParameters{ResourceURI, SelectorSet}`
/// given directly in `node` (as parameters carry it) or inside `wsa:EndpointReference`.
pub fn endpoint_reference(node: Node, depth: usize) -> Result<Epr> {
    if depth > MAX_EPR_DEPTH {
        return Err(Fault::schema_validation(
            "endpoint references nested too deeply",
        ));
    }
    let node = child(node, WSA, "EndpointReference").unwrap_or(node);
    let params = child(node, WSA, "ReferenceParameters")
        .or_else(|| child(node, WSA, "ReferenceProperties"))
        .ok_or_else(|| {
            Fault::schema_validation("an endpoint reference lacks wsa:ReferenceParameters")
        })?;
    let resource_uri = child(params, WSMAN, "ResourceURI")
        .map(|n| trimmed(&n))
        .ok_or_else(|| Fault::schema_validation("an endpoint reference lacks wsman:ResourceURI"))?;
    let selectors = match child(params, WSMAN, "SelectorSet") {
        Some(set) => selectors(set, depth)?,
        None => Vec::new(),
    };
    Ok(Epr {
        resource_uri,
        selectors,
    })
}

fn decode_body(body: Node, action: Option<&str>) -> Result<Body> {
    use names::StandardAction as A;
    let Some(first) = body.children().find(Node::is_element) else {
        // An empty Enumerate body asks for the defaults (pypsrp sends one when given no
        // options).
        return Ok(match action.and_then(A::from_uri) {
            Some(A::Enumerate) => Body::Enumerate(EnumerateBody::default()),
            _ => Body::Empty,
        });
    };
    if is(&first, WSMID, "Identify") {
        return Ok(Body::Identify);
    }
    match action.and_then(A::from_uri) {
        Some(A::Enumerate) => enumerate(first).map(Body::Enumerate),
        Some(A::Pull) => Ok(Body::Pull {
            context: context(first)?,
            max_elements: max_elements(first, &[WSEN, WSMAN])?,
        }),
        Some(A::Release) => Ok(Body::Release {
            context: context(first)?,
        }),
        Some(_) => Ok(Body::Empty),
        None => method_input(first),
    }
}

fn context(op: Node) -> Result<String> {
    child(op, WSEN, "EnumerationContext")
        .map(|n| trimmed(&n))
        .ok_or_else(|| Fault::schema_validation("wsen:EnumerationContext is missing"))
}

fn max_elements(op: Node, namespaces: &[&str]) -> Result<Option<u64>> {
    let Some(n) = op
        .children()
        .find(|c| namespaces.iter().any(|ns| is(c, ns, "MaxElements")))
    else {
        return Ok(None);
    };
    match trimmed(&n).parse::<u64>() {
        Ok(0) | Err(_) => Err(Fault::schema_validation(format!(
            "MaxElements {:?} is not a positive whole number",
            trimmed(&n)
        ))),
        Ok(v) => Ok(Some(v)),
    }
}

fn enumerate(op: Node) -> Result<EnumerateBody> {
    if !is(&op, WSEN, "Enumerate") {
        return Err(Fault::schema_validation(
            "the body of Enumerate is not wsen:Enumerate",
        ));
    }
    let mut e = EnumerateBody {
        optimize: child(op, WSMAN, "OptimizeEnumeration").is_some(),
        max_elements: max_elements(op, &[WSMAN])?,
        ..Default::default()
    };
    if let Some(m) = child(op, WSMAN, "EnumerationMode") {
        e.mode = match trimmed(&m).as_str() {
            "EnumerateEPR" => EnumerationMode::Epr,
            "EnumerateObjectAndEPR" => EnumerationMode::ObjectAndEpr,
            other => {
                return Err(Fault::unsupported_feature(
                    fault::CODE_ENUMERATION_MODE_UNSUPPORTED,
                    format!(
                        "EnumerationMode {other:?} is not EnumerateEPR or EnumerateObjectAndEPR"
                    ),
                )
                .with_detail("EnumerationMode"));
            }
        };
    }
    let filter = child(op, WSMAN, "Filter").or_else(|| child(op, WSEN, "Filter"));
    if let Some(f) = filter {
        e.filter = Some(decode_filter(f)?);
    }
    Ok(e)
}

fn decode_filter(f: Node) -> Result<Filter> {
    let dialect = f
        .attribute("Dialect")
        .map(str::trim)
        .unwrap_or(names::DIALECT_WQL);
    Ok(match dialect {
        names::DIALECT_WQL => Filter::Wql(trimmed(&f)),
        names::DIALECT_SELECTOR => match child(f, WSMAN, "SelectorSet") {
            Some(set) => Filter::Selectors(selectors(set, 0)?),
            None => Filter::Selectors(Vec::new()),
        },
        names::DIALECT_ASSOCIATION => Filter::Association(association(f)?),
        other => Filter::Unsupported(other.chars().take(200).collect()),
    })
}

fn association(f: Node) -> Result<AssociationFilter> {
    let (node, associators) = match child(f, CIMBINDING, "AssociatedInstances") {
        Some(n) => (n, true),
        None => match child(f, CIMBINDING, "AssociationInstances") {
            Some(n) => (n, false),
            None => {
                return Err(Fault::cannot_process_filter(
                    fault::CODE_CANNOT_PROCESS_FILTER,
                    "an association filter needs b:AssociatedInstances or b:AssociationInstances",
                ));
            }
        },
    };
    let object = child(node, CIMBINDING, "Object").ok_or_else(|| {
        Fault::cannot_process_filter(
            fault::CODE_CANNOT_PROCESS_FILTER,
            "an association filter needs b:Object",
        )
    })?;
    let text = |name: &str| {
        child(node, CIMBINDING, name)
            .map(|n| trimmed(&n))
            .filter(|s| !s.is_empty())
    };
    Ok(AssociationFilter {
        associators,
        object: endpoint_reference(object, 0)?,
        association_class: text("AssociationClassName"),
        result_class: text("ResultClassName"),
        role: text("Role"),
        result_role: text("ResultRole"),
    })
}

fn method_input(input: Node) -> Result<Body> {
    let mut params = Vec::new();
    for p in input.children().filter(Node::is_element) {
        if params.len() >= MAX_ITEMS {
            return Err(Fault::schema_validation("too many parameters"));
        }
        params.push(param(p, 0)?);
    }
    Ok(Body::Element {
        local_name: input.tag_name().name().to_string(),
        namespace: input.tag_name().namespace().map(str::to_string),
        params,
    })
}

/// Deepest nesting of element-form embedded instances.
const MAX_INSTANCE_DEPTH: usize = 8;

fn param(p: Node, depth: usize) -> Result<Param> {
    let name = p.tag_name().name().to_string();
    let nil = p
        .attribute((XSI, "nil"))
        .is_some_and(|v| matches!(v.trim(), "true" | "1"));
    let value = if nil {
        ParamValue::Nil
    } else if child(p, WSA, "ReferenceParameters").is_some()
        || child(p, WSA, "EndpointReference").is_some()
        || child(p, WSA, "Address").is_some()
    {
        ParamValue::Epr(endpoint_reference(p, 1)?)
    } else if let Some(dt) = p.children().find(|c| c.tag_name().namespace() == Some(CIM)) {
        ParamValue::Datetime(datetime(&dt)?)
    } else if p.children().any(|c| c.is_element()) {
        instance_element(p, depth)?
    } else {
        ParamValue::Text(text_of(&p))
    };
    Ok(Param { name, value })
}

fn datetime(n: &Node) -> Result<String> {
    let text = trimmed(n);
    let converted = match n.tag_name().name() {
        "Datetime" => super::values::xs_datetime_to_cim(&text),
        "Interval" => super::values::parse_xs_duration(&text)
            .and_then(|d| cosnap_cim::datetime::try_format_interval(d).ok()),
        "CIM_DateTime" => Some(text.clone()),
        _ => None,
    };
    converted.ok_or_else(|| {
        Fault::schema_validation(format!(
            "cim:{} value {text:?} is not a valid date, time or interval",
            n.tag_name().name()
        ))
    })
}

fn instance_element(p: Node, depth: usize) -> Result<ParamValue> {
    if depth >= MAX_INSTANCE_DEPTH {
        return Err(Fault::schema_validation(
            "embedded instances nested too deeply",
        ));
    }
    let class_name = p.attribute((XSI, "type")).map(|t| {
        let local = t.rsplit(':').next().unwrap_or(t);
        local.strip_suffix("_Type").unwrap_or(local).to_string()
    });
    let mut properties = Vec::new();
    for c in p.children().filter(Node::is_element) {
        if properties.len() >= MAX_ITEMS {
            return Err(Fault::schema_validation("too many properties"));
        }
        properties.push(param(c, depth + 1)?);
    }
    Ok(ParamValue::Instance {
        class_name,
        properties,
    })
}
