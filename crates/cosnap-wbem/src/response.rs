//! Writing CIM-XML responses: the message envelope (`CIM`/`MESSAGE`/`SIMPLERSP`), the
//! `IMETHODRESPONSE`/`METHODRESPONSE` around a result or an `ERROR`, `RETURNVALUE` and out
//! `PARAMVALUE`s. Elements inside (instances, paths, classes) come from
//! [`cosnap_cim::xml`].
//!
//! Every attribute written is one DSP0201 allows on its element, because pywbem 1.9.1
//! rejects anything else; `RETURNVALUE` always carries `PARAMTYPE` (pywbem crashes
//! without it); the response's method NAME is the request's, byte for byte.

use cosnap_cim::xml::{self, escape_attr};
use cosnap_cim::{CimError, CimType, Value};

/// Opens the envelope; `id` is the request's MESSAGE ID.
fn open_envelope(out: &mut String, id: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\" ?>\n<CIM CIMVERSION=\"2.0\" DTDVERSION=\"2.0\"><MESSAGE ID=\"");
    out.push_str(&escape_attr(id));
    out.push_str("\" PROTOCOLVERSION=\"1.0\"><SIMPLERSP>");
}

fn close_envelope(out: &mut String) {
    out.push_str("</SIMPLERSP></MESSAGE></CIM>\n");
}

/// Whether the response is to an intrinsic or an extrinsic call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Intrinsic,
    Extrinsic,
}

impl Kind {
    fn element(self) -> &'static str {
        match self {
            Kind::Intrinsic => "IMETHODRESPONSE",
            Kind::Extrinsic => "METHODRESPONSE",
        }
    }
}

/// A response body under construction: envelope and method response already open.
pub struct ResponseWriter {
    out: String,
    kind: Kind,
}

impl ResponseWriter {
    pub fn new(id: &str, kind: Kind, method: &str) -> Self {
        let mut out = String::with_capacity(1024);
        open_envelope(&mut out, id);
        out.push('<');
        out.push_str(kind.element());
        out.push_str(" NAME=\"");
        out.push_str(&escape_attr(method));
        out.push_str("\">");
        Self { out, kind }
    }

    /// The buffer, to append the result's elements with [`cosnap_cim::xml`] writers.
    pub fn buf(&mut self) -> &mut String {
        &mut self.out
    }

    /// The response so far and the text that closes it, for a result list whose rest is
    /// still to be produced (the caller streams that rest between the two).
    pub fn into_head_and_tail(self) -> (String, String) {
        let mut tail = String::with_capacity(64);
        tail.push_str("</");
        tail.push_str(self.kind.element());
        tail.push('>');
        close_envelope(&mut tail);
        (self.out, tail)
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("</");
        self.out.push_str(self.kind.element());
        self.out.push('>');
        close_envelope(&mut self.out);
        self.out
    }
}

/// A complete response carrying `<ERROR CODE DESCRIPTION>`.
pub fn error_response(id: &str, kind: Kind, method: &str, e: &CimError) -> String {
    let mut w = ResponseWriter::new(id, kind, method);
    let out = w.buf();
    out.push_str("<ERROR CODE=\"");
    out.push_str(&e.status.code().to_string());
    out.push_str("\" DESCRIPTION=\"");
    out.push_str(&escape_attr(&e.description));
    out.push_str("\"/>");
    w.finish()
}

/// `<RETURNVALUE PARAMTYPE=ty><VALUE>…</VALUE></RETURNVALUE>`.
pub fn write_return_value(out: &mut String, ty: CimType, value: u32) {
    out.push_str("<RETURNVALUE PARAMTYPE=\"");
    out.push_str(ty.name());
    out.push_str("\"><VALUE>");
    out.push_str(&value.to_string());
    out.push_str("</VALUE></RETURNVALUE>");
}

fn holds_instance(v: &Value) -> bool {
    match v {
        Value::Instance(_) => true,
        Value::Array(items) => items.first().is_some_and(holds_instance),
        _ => false,
    }
}

/// An out `PARAMVALUE`. `declared` is the parameter's type from the method definition
/// (used for PARAMTYPE when the value is NULL); references get `PARAMTYPE="reference"`
/// and a `VALUE.REFERENCE`, embedded instances `PARAMTYPE="string"
/// EmbeddedObject="instance"` and their escaped CIM-XML text.
pub fn write_out_param(
    out: &mut String,
    name: &str,
    declared: Option<(CimType, bool)>,
    value: Option<&Value>,
) {
    let ty = match value {
        Some(v) if holds_instance(v) => CimType::String,
        Some(v) => xml::type_of(v),
        None => declared.map_or(CimType::String, |d| d.0),
    };
    out.push_str("<PARAMVALUE NAME=\"");
    out.push_str(&escape_attr(name));
    out.push_str("\" PARAMTYPE=\"");
    out.push_str(ty.name());
    out.push('"');
    if value.is_some_and(holds_instance) {
        out.push_str(" EmbeddedObject=\"instance\"");
    }
    out.push('>');
    if let Some(v) = value {
        let is_array = declared.is_some_and(|d| d.1);
        match v {
            Value::Array(_) => xml::write_value(out, v),
            _ if is_array => xml::write_value(out, &Value::Array(vec![v.clone()])),
            _ => xml::write_value(out, v),
        }
    }
    out.push_str("</PARAMVALUE>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosnap_cim::{CimStatus, ObjectPath};

    #[test]
    fn error_envelope_echoes_id_and_name() {
        let body = error_response(
            "4711",
            Kind::Intrinsic,
            "getInstance",
            &CimError::new(CimStatus::NotFound, "no \"such\" <job>"),
        );
        assert!(body.contains("<MESSAGE ID=\"4711\" PROTOCOLVERSION=\"1.0\">"));
        assert!(body.contains("<IMETHODRESPONSE NAME=\"getInstance\"><ERROR CODE=\"6\" DESCRIPTION=\"no &quot;such&quot; &lt;job&gt;\"/></IMETHODRESPONSE>"));
        roxmltree::Document::parse(&body).unwrap();
    }

    #[test]
    fn method_response_with_ref_out_param() {
        let mut w = ResponseWriter::new("1001", Kind::Extrinsic, "ExportSnapshot");
        write_return_value(w.buf(), CimType::Uint32, 4096);
        let job = ObjectPath::new("Msvm_ConcreteJob")
            .with_key("InstanceID", Value::String("J-1".into()))
            .with_namespace("root/virtualization/v2");
        write_out_param(
            w.buf(),
            "Job",
            Some((CimType::Reference, false)),
            Some(&Value::Reference(job)),
        );
        let body = w.finish();
        assert!(body.contains("<RETURNVALUE PARAMTYPE=\"uint32\"><VALUE>4096</VALUE></RETURNVALUE><PARAMVALUE NAME=\"Job\" PARAMTYPE=\"reference\"><VALUE.REFERENCE>"));
        roxmltree::Document::parse(&body).unwrap();
    }
}
