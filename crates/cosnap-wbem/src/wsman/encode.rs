//! Writing WS-Man responses: the envelope and its addressing headers, instances in the
//! DSP0230 XML form, endpoint references, method output, faults and Identify.
//!
//! Prefixes: the envelope declares `s`, `wsa`, `wsman` (and `w`, the same namespace, for
//! fault subcodes), `wsen`, `xsi` and `cim`; each instance or `_OUTPUT` element declares
//! its class namespace as `p` locally. EPRs always use `wsa:`/`wsman:` (the wsl tools
//! paste an EPR's text into their own envelope, which declares exactly those).
//! Properties and output parameters come in alphabetical order, as WinRM sends them.

use cosnap_cim::xml::{escape_attr, escape_text, scalar_text};
use cosnap_cim::{Instance, ObjectPath, Property, Value};

use super::fault::Fault;
use super::names::{ANONYMOUS, CIM, SOAP, WSA, WSEN, WSMAN, WSMID, XSI};
use super::resource::class_uri;
use super::values::datetime_element;

/// The start of every response envelope, up to and including `<s:Header>`.
fn envelope_start(out: &mut String) {
    out.push_str("<s:Envelope xml:lang=\"en-US\"");
    for (prefix, ns) in [
        ("s", SOAP),
        ("wsa", WSA),
        ("wsman", WSMAN),
        ("w", WSMAN),
        ("wsen", WSEN),
        ("xsi", XSI),
        ("cim", CIM),
    ] {
        out.push_str(&format!(" xmlns:{prefix}=\"{ns}\""));
    }
    out.push_str("><s:Header>");
}

/// A response envelope: addressing headers (Action, a fresh MessageID, To anonymous,
/// RelatesTo = the request's MessageID verbatim) and `body` inside `s:Body`.
pub fn envelope(action: &str, relates_to: Option<&str>, message_id: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    envelope_start(&mut out);
    out.push_str("<wsa:To>");
    out.push_str(ANONYMOUS);
    out.push_str("</wsa:To><wsa:Action s:mustUnderstand=\"true\">");
    out.push_str(&escape_text(action));
    out.push_str("</wsa:Action><wsa:MessageID s:mustUnderstand=\"true\">");
    out.push_str(&escape_text(message_id));
    out.push_str("</wsa:MessageID>");
    if let Some(id) = relates_to {
        out.push_str("<wsa:RelatesTo s:mustUnderstand=\"true\">");
        out.push_str(&escape_text(id));
        out.push_str("</wsa:RelatesTo>");
    }
    out.push_str("</s:Header><s:Body>");
    out.push_str(body);
    out.push_str("</s:Body></s:Envelope>");
    out
}

/// A fault envelope.
pub fn fault_envelope(
    f: &Fault,
    relates_to: Option<&str>,
    message_id: &str,
    machine: &str,
) -> String {
    let mut body = String::with_capacity(1024);
    f.write_body(&mut body, machine);
    envelope(f.action(), relates_to, message_id, &body)
}

/// The Identify response (no addressing headers, as WinRM answers).
pub fn identify_envelope(version: &str) -> String {
    let mut out = String::with_capacity(1024);
    envelope_start(&mut out);
    out.push_str("</s:Header><s:Body><wsmid:IdentifyResponse xmlns:wsmid=\"");
    out.push_str(WSMID);
    out.push_str("\"><wsmid:ProtocolVersion>");
    out.push_str(WSMAN);
    out.push_str("</wsmid:ProtocolVersion><wsmid:ProductVendor>cosnap</wsmid:ProductVendor><wsmid:ProductVersion>");
    out.push_str(&escape_text(version));
    out.push_str("</wsmid:ProductVersion><wsmid:SecurityProfiles><wsmid:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/basic</wsmid:SecurityProfileName><wsmid:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/basic</wsmid:SecurityProfileName></wsmid:SecurityProfiles></wsmid:IdentifyResponse></s:Body></s:Envelope>");
    out
}

/// The children of an EPR (Address + ReferenceParameters) naming `path`.
pub fn write_epr_content(out: &mut String, path: &ObjectPath) {
    out.push_str("<wsa:Address>");
    out.push_str(ANONYMOUS);
    out.push_str("</wsa:Address><wsa:ReferenceParameters><wsman:ResourceURI>");
    out.push_str(&escape_text(&class_uri(&path.class_name)));
    out.push_str("</wsman:ResourceURI><wsman:SelectorSet>");
    for (name, value) in &path.keys {
        out.push_str("<wsman:Selector Name=\"");
        out.push_str(&escape_attr(name));
        out.push_str("\">");
        match value {
            Value::Reference(p) => write_epr(out, p),
            v => out.push_str(&escape_text(&scalar_text(v))),
        }
        out.push_str("</wsman:Selector>");
    }
    out.push_str("</wsman:SelectorSet></wsa:ReferenceParameters>");
}

/// `<wsa:EndpointReference>` naming `path`.
pub fn write_epr(out: &mut String, path: &ObjectPath) {
    out.push_str("<wsa:EndpointReference>");
    write_epr_content(out, path);
    out.push_str("</wsa:EndpointReference>");
}

/// The name of an element in the `p:` namespace, escaped for safety (names come from the
/// schema or the provider, never from the request).
fn open(out: &mut String, name: &str) {
    out.push_str("<p:");
    out.push_str(name);
}

/// One value inside an already opened property or parameter element, then its close.
fn write_value_element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Reference(p) => {
            out.push('>');
            write_epr_content(out, p);
        }
        Value::Datetime(text) => {
            let (element, text) = datetime_element(text);
            out.push_str(&format!(
                "><cim:{element}>{}</cim:{element}>",
                escape_text(&text)
            ));
        }
        Value::Boolean(b) => {
            out.push('>');
            out.push_str(if *b { "true" } else { "false" });
        }
        v => {
            // Embedded instances travel as their CIM-XML text, escaped (as Hyper-V's
            // string properties qualified EmbeddedInstance do).
            out.push('>');
            out.push_str(&escape_text(&scalar_text(v)));
        }
    }
    out.push_str("</p:");
    out.push_str(name);
    out.push('>');
}

/// A property or parameter: NULL as `xsi:nil`, arrays as repeated elements (an empty or
/// NULL array as one nil element), anything else as one element.
pub fn write_member(out: &mut String, name: &str, value: Option<&Value>) {
    match value {
        None => {
            open(out, name);
            out.push_str(" xsi:nil=\"true\"/>");
        }
        Some(Value::Array(items)) if items.is_empty() => {
            open(out, name);
            out.push_str(" xsi:nil=\"true\"/>");
        }
        Some(Value::Array(items)) => {
            for item in items {
                open(out, name);
                write_value_element(out, name, item);
            }
        }
        Some(v) => {
            open(out, name);
            write_value_element(out, name, v);
        }
    }
}

fn sorted_properties(inst: &Instance) -> Vec<&Property> {
    let mut props: Vec<&Property> = inst.properties.iter().collect();
    props.sort_by_key(|p| p.name.to_ascii_lowercase());
    props
}

/// An instance: `<p:Class xmlns:p="<class URI>" xsi:type="p:Class_Type">` with its
/// properties in alphabetical order.
pub fn write_instance(out: &mut String, inst: &Instance) {
    let class = &inst.class_name;
    out.push_str("<p:");
    out.push_str(class);
    out.push_str(" xmlns:p=\"");
    out.push_str(&escape_attr(&class_uri(class)));
    out.push_str("\" xsi:type=\"p:");
    out.push_str(class);
    out.push_str("_Type\">");
    for p in sorted_properties(inst) {
        write_member(out, &p.name, p.value.as_ref());
    }
    out.push_str("</p:");
    out.push_str(class);
    out.push('>');
}

/// `<p:M_OUTPUT>` with out parameters and ReturnValue, alphabetical.
pub fn write_method_output(
    out: &mut String,
    class_name: &str,
    method: &str,
    return_value: u32,
    params: &[(String, Value)],
) {
    out.push_str("<p:");
    out.push_str(method);
    out.push_str("_OUTPUT xmlns:p=\"");
    out.push_str(&escape_attr(&class_uri(class_name)));
    out.push_str("\">");
    let rv = Value::Uint32(return_value);
    let mut all: Vec<(&str, &Value)> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
    all.push(("ReturnValue", &rv));
    all.sort_by_key(|(n, _)| n.to_ascii_lowercase());
    for (name, value) in all {
        write_member(out, name, Some(value));
    }
    out.push_str("</p:");
    out.push_str(method);
    out.push_str("_OUTPUT>");
}
